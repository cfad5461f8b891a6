//! The shard's bookkeeping of what it serves: listeners and their accept queues, TCP
//! connections (who holds each, how it is ending, when the shard gives up on it), UDP bindings,
//! closed sockets kept for reuse, ephemeral ports, and the timeouts that free them all. Sans-IO:
//! the caller passes the socket set, the configuration and the time, so it is tested here
//! without root.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use smoltcp::{
    iface::{SocketHandle, SocketSet},
    socket::{tcp, udp},
};

use crate::{
    accept::AcceptQueue,
    config::{Config, Congestion},
    error::StackError,
    ports::PortClaim,
    timing::TIMING,
};

/// Closed TCP sockets kept for reuse by listeners: a new socket means allocating and zeroing
/// both buffers (2 MiB with 1 MiB buffers), which dominated the cost of a connection.
pub(crate) const SPARE_TCP_SOCKETS: usize = 64;

/// A listening port: its accept queue and its port claim.
pub(crate) struct Listener {
    pub queue: AcceptQueue,
    _claim: PortClaim,
}

impl Listener {
    pub fn new(claim: PortClaim) -> Self {
        Self {
            queue: AcceptQueue::default(),
            _claim: claim,
        }
    }
}

/// How a connection's end looks so far: what tells a reset from a clean close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Neither side has closed.
    Open,
    /// The peer's FIN came in.
    PeerClosed,
    /// We closed our side (shutdown or drop).
    WeClosed,
}

/// Who holds a connection, and when the shard gives up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// The application holds a handle. The shard resets the connection once nothing has moved
    /// since `active` for `idle_timeout` (when one is set).
    App { active: Instant },
    /// The application dropped its handle: freed once closed, reset at `deadline` if still
    /// closing then.
    Orphan { deadline: Instant },
}

/// An accepted or outgoing TCP connection.
pub(crate) struct Conn {
    pub holder: Holder,
    pub ending: Ending,
    /// Receive queue, send queue and state at the last look: a change is activity.
    last_seen: (usize, usize, tcp::State),
    _claim: Option<PortClaim>,
}

impl Conn {
    /// A connection the application holds.
    pub fn held(state: tcp::State, claim: Option<PortClaim>, now: Instant) -> Self {
        Self {
            holder: Holder::App { active: now },
            ending: Ending::Open,
            last_seen: (0, 0, state),
            _claim: claim,
        }
    }

    /// A connection nobody holds (reset or never accepted): freed once closed.
    pub fn orphan(deadline: Instant) -> Self {
        Self {
            holder: Holder::Orphan { deadline },
            ending: Ending::WeClosed,
            last_seen: (0, 0, tcp::State::Closed),
            _claim: None,
        }
    }

    /// Notes what a state says about how the connection ends.
    pub fn observe(&mut self, state: tcp::State) {
        if self.ending == Ending::Open
            && matches!(
                state,
                tcp::State::CloseWait
                    | tcp::State::LastAck
                    | tcp::State::Closing
                    | tcp::State::TimeWait
            )
        {
            self.ending = Ending::PeerClosed;
        }
    }

    /// We closed our side.
    pub fn close(&mut self) {
        if self.ending == Ending::Open {
            self.ending = Ending::WeClosed;
        }
    }

    /// The application let go of it.
    pub fn abandon(&mut self, deadline: Instant) {
        self.close();
        self.holder = Holder::Orphan { deadline };
    }

    /// A socket that went to CLOSED while neither side had closed was reset.
    pub fn was_reset(&self, state: tcp::State) -> bool {
        state == tcp::State::Closed && self.ending == Ending::Open
    }
}

/// A bound UDP socket.
pub(crate) struct UdpBinding {
    /// Datagrams in its receive buffer (admitted by the device, not yet read): smoltcp does not
    /// say, and the device needs it to drop, and count, what the buffer would not hold.
    pub queued: usize,
    /// The application dropped the socket while datagrams were still waiting to be sent.
    pub closed_at: Option<Instant>,
    _claim: PortClaim,
}

impl UdpBinding {
    pub fn new(claim: PortClaim) -> Self {
        Self {
            queued: 0,
            closed_at: None,
            _claim: claim,
        }
    }
}

/// What one expiry pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired {
    pub handshake_timeouts: u64,
    pub idle_timeouts: u64,
    pub orphan_timeouts: u64,
}

/// Everything the shard serves, by kind.
#[derive(Default)]
pub(crate) struct Conns {
    pub listeners: HashMap<u16, Listener>,
    pub tcp: HashMap<SocketHandle, Conn>,
    pub udp: HashMap<SocketHandle, UdpBinding>,
    /// Closed TCP sockets kept in the set for reuse (see `SPARE_TCP_SOCKETS`).
    spare_tcp: Vec<SocketHandle>,
    next_ephemeral: u16,
}

/// A TCP socket with the configured buffers and options.
pub(crate) fn new_tcp_socket(cfg: &Config) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; cfg.tcp_rx_buffer]),
        tcp::SocketBuffer::new(vec![0; cfg.tcp_tx_buffer]),
    );
    apply_options(&mut s, cfg);
    s
}

/// A UDP socket with the configured buffers.
pub(crate) fn new_udp_socket(cfg: &Config) -> udp::Socket<'static> {
    let per = cfg.udp_packets;
    udp::Socket::new(
        udp::PacketBuffer::new(
            vec![udp::PacketMetadata::EMPTY; per],
            vec![0; cfg.udp_buffer],
        ),
        udp::PacketBuffer::new(
            vec![udp::PacketMetadata::EMPTY; per],
            vec![0; cfg.udp_buffer],
        ),
    )
}

/// The configured per-connection options (a recycled socket may carry its last user's).
fn apply_options(s: &mut tcp::Socket<'static>, cfg: &Config) {
    let smol = |d: Duration| smoltcp::time::Duration::from_micros(d.as_micros() as u64);
    s.set_nagle_enabled(cfg.nagle);
    s.set_ack_delay(cfg.ack_delay.map(smol));
    s.set_keep_alive(cfg.keep_alive.map(smol));
    s.set_min_rto(smol(cfg.min_rto));
    // A fresh controller per connection (a recycled socket must not inherit the last one's
    // window).
    s.set_congestion_control(match cfg.congestion {
        Congestion::Cubic => tcp::CongestionControl::Cubic,
        Congestion::Reno => tcp::CongestionControl::Reno,
        Congestion::None => tcp::CongestionControl::None,
    });
    // TCP timestamps (RFC 7323): RTT measurement, and what lets a client reuse its TIME-WAIT
    // ports (tcp_tw_reuse) when it opens many short connections to us.
    s.set_tsval_generator(Some(tcp_tsval));
}

/// TCP timestamp clock: milliseconds, from a random origin chosen once per process (RFC 7323
/// §5.4: a clock starting at 0 tells every peer how long the service has been up, and makes the
/// first connections' TSvals predictable).
fn tcp_tsval() -> u32 {
    static ORIGIN: std::sync::OnceLock<(Instant, u32)> = std::sync::OnceLock::new();
    let (start, base) = *ORIGIN.get_or_init(|| (Instant::now(), super::open::os_seed() as u32));
    base.wrapping_add(start.elapsed().as_millis() as u32)
}

impl Conns {
    pub fn new(ephemeral_start: u16) -> Self {
        Self {
            next_ephemeral: ephemeral_start,
            ..Self::default()
        }
    }

    /// Open TCP connections (not counting armed listening sockets).
    pub fn open_connections(&self) -> usize {
        self.tcp.len()
            + self
                .listeners
                .values()
                .map(|l| l.queue.queued())
                .sum::<usize>()
    }

    /// A closed TCP socket for a listener to arm: a spare, options re-applied, or a new one.
    pub fn socket_for_listener(
        spare: &mut Vec<SocketHandle>,
        sockets: &mut SocketSet<'static>,
        cfg: &Config,
    ) -> SocketHandle {
        match spare.pop() {
            Some(h) => {
                apply_options(sockets.get_mut::<tcp::Socket>(h), cfg);
                h
            }
            None => sockets.add(new_tcp_socket(cfg)),
        }
    }

    /// The listeners and the spares, borrowed apart (arming takes from the spares).
    pub fn listeners_and_spares(
        &mut self,
    ) -> (&mut HashMap<u16, Listener>, &mut Vec<SocketHandle>) {
        (&mut self.listeners, &mut self.spare_tcp)
    }

    /// Timeouts for untrusted clients (handshakes that take too long, idle connections,
    /// orphans that never finish closing); frees the sockets of closed orphans (keeping a
    /// few for reuse) and of dropped UDP sockets that have drained.
    pub fn expire(
        &mut self,
        sockets: &mut SocketSet<'static>,
        cfg: &Config,
        now: Instant,
    ) -> Expired {
        let mut out = Expired::default();
        for l in self.listeners.values_mut() {
            for h in l.queue.expire(sockets, now, cfg.handshake_timeout) {
                out.handshake_timeouts += 1;
                // The RST goes out on the next poll; the socket is then freed below.
                self.tcp.insert(h, Conn::orphan(now));
            }
        }
        let mut freed = Vec::new();
        for (&h, c) in self.tcp.iter_mut() {
            let s = sockets.get_mut::<tcp::Socket>(h);
            let seen = (s.recv_queue(), s.send_queue(), s.state());
            c.observe(seen.2);
            let moved = seen != c.last_seen;
            c.last_seen = seen;
            match (c.holder, s.state()) {
                (Holder::Orphan { .. }, tcp::State::Closed | tcp::State::TimeWait) => freed.push(h),
                (_, tcp::State::Closed) => {}
                // An orphan still closing at its deadline (a peer that never sends its FIN, or
                // never opens its window to take our last data) is reset: nothing can keep a
                // connection nobody owns alive (Linux: tcp_fin_timeout).
                (Holder::Orphan { deadline }, state) if now >= deadline => {
                    tracing::debug!(?h, ?state, "orphan timeout: resetting");
                    s.abort();
                    out.orphan_timeouts += 1;
                }
                (Holder::Orphan { .. }, _) => {}
                (Holder::App { active }, _) => {
                    let active = if moved { now } else { active };
                    c.holder = Holder::App { active };
                    if let Some(limit) = cfg.idle_timeout {
                        if now.duration_since(active) >= limit {
                            tracing::debug!(?h, "idle timeout: resetting");
                            s.abort();
                            out.idle_timeouts += 1;
                            c.holder = Holder::App { active: now };
                        }
                    }
                }
            }
        }
        for h in freed {
            self.tcp.remove(&h);
            // A closed socket (not one in TIME-WAIT) stays in the set for the next listener.
            let closed = sockets.get::<tcp::Socket>(h).state() == tcp::State::Closed;
            if closed && self.spare_tcp.len() < SPARE_TCP_SOCKETS {
                self.spare_tcp.push(h);
            } else {
                sockets.remove(h);
            }
        }
        let drained: Vec<SocketHandle> = self
            .udp
            .iter()
            .filter(|(h, b)| {
                b.closed_at.is_some_and(|t| {
                    now.duration_since(t) >= TIMING.udp_drain
                        || sockets.get::<udp::Socket>(**h).send_queue() == 0
                })
            })
            .map(|(h, _)| *h)
            .collect();
        for h in drained {
            self.udp.remove(&h);
            sockets.remove(h);
        }
        out
    }

    /// The next free ephemeral port of `lo..=hi` (round robin).
    pub fn ephemeral_port(
        &mut self,
        sockets: &SocketSet<'static>,
        (lo, hi): (u16, u16),
    ) -> Result<u16, StackError> {
        let span = (hi - lo) as u32 + 1;
        for _ in 0..span {
            let p = self.next_ephemeral.clamp(lo, hi);
            self.next_ephemeral = if p >= hi { lo } else { p + 1 };
            let used = self.tcp.keys().any(|&h| {
                sockets
                    .get::<tcp::Socket>(h)
                    .local_endpoint()
                    .is_some_and(|e| e.port == p)
            }) || self.listeners.contains_key(&p);
            if !used {
                return Ok(p);
            }
        }
        Err(StackError::NoEphemeralPort(lo, hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::{
        iface::{Config as IfaceConfig, Interface},
        phy::{Loopback, Medium},
        time::Instant as SmolInstant,
        wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address},
    };

    const ADDR: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);

    /// A shard's sockets over a loopback device, in simulated time.
    struct Net {
        iface: Interface,
        dev: Loopback,
        sockets: SocketSet<'static>,
        cfg: Config,
        t0: Instant,
        now: Instant,
    }

    impl Net {
        fn new() -> Self {
            let mut dev = Loopback::new(Medium::Ip);
            let mut c = IfaceConfig::new(HardwareAddress::Ip);
            c.random_seed = 3;
            let mut iface = Interface::new(c, &mut dev, SmolInstant::ZERO);
            iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::Ipv4(ADDR), 24)).unwrap());
            let mut cfg = Config::new("lo", 0);
            cfg.tcp_rx_buffer = 4096;
            cfg.tcp_tx_buffer = 4096;
            cfg.idle_timeout = Some(Duration::from_secs(5));
            cfg.orphan_timeout = Duration::from_secs(2);
            let t0 = Instant::now();
            Self {
                iface,
                dev,
                sockets: SocketSet::new(Vec::new()),
                cfg,
                t0,
                now: t0,
            }
        }
        fn advance(&mut self, d: Duration) {
            self.now += d;
            let ts = SmolInstant::from_micros((self.now - self.t0).as_micros() as i64);
            for _ in 0..5 {
                self.iface.poll(ts, &mut self.dev, &mut self.sockets);
            }
        }
        /// A connected pair: (server side, client side).
        fn pair(&mut self, port: u16) -> (SocketHandle, SocketHandle) {
            let mut l = new_tcp_socket(&self.cfg);
            l.listen(port).unwrap();
            let server = self.sockets.add(l);
            let mut c = new_tcp_socket(&self.cfg);
            c.connect(
                self.iface.context(),
                (IpAddress::Ipv4(ADDR), port),
                50000 + port,
            )
            .unwrap();
            let client = self.sockets.add(c);
            self.advance(Duration::from_millis(1));
            assert_eq!(
                self.sockets.get::<tcp::Socket>(server).state(),
                tcp::State::Established
            );
            (server, client)
        }
        /// `s` was held by the application, which has now dropped it (our FIN is queued).
        fn held_then_dropped(&mut self, conns: &mut Conns, s: SocketHandle) {
            conns
                .tcp
                .insert(s, Conn::held(tcp::State::Established, None, self.now));
            self.sockets.get_mut::<tcp::Socket>(s).close();
            conns
                .tcp
                .get_mut(&s)
                .unwrap()
                .abandon(self.now + self.cfg.orphan_timeout);
        }
    }

    #[test]
    fn a_closed_orphan_is_freed_and_kept_for_reuse() {
        let mut net = Net::new();
        let mut conns = Conns::new(61000);
        let (s, c) = net.pair(80);
        // The application drops it; the peer closes too.
        net.held_then_dropped(&mut conns, s);
        net.sockets.get_mut::<tcp::Socket>(c).close();
        net.advance(Duration::from_millis(1));
        net.sockets.get_mut::<tcp::Socket>(s).abort();
        net.advance(Duration::from_millis(1));
        let out = conns.expire(&mut net.sockets, &net.cfg, net.now);
        assert_eq!(out, Expired::default());
        assert!(conns.tcp.is_empty(), "freed");
        let mut spare = std::mem::take(&mut conns.spare_tcp);
        assert_eq!(spare, vec![s], "kept for reuse");
        let again = Conns::socket_for_listener(&mut spare, &mut net.sockets, &net.cfg);
        assert_eq!(again, s, "a listener takes the spare before allocating");
    }

    #[test]
    fn an_orphan_that_never_finishes_closing_is_reset_at_its_deadline() {
        let mut net = Net::new();
        let mut conns = Conns::new(61000);
        let (s, _c) = net.pair(81);
        // We close; the peer ACKs our FIN but never sends its own: FIN-WAIT-2.
        net.held_then_dropped(&mut conns, s);
        net.advance(Duration::from_millis(1));
        assert_eq!(
            net.sockets.get::<tcp::Socket>(s).state(),
            tcp::State::FinWait2
        );
        net.advance(Duration::from_millis(1990));
        assert_eq!(
            conns.expire(&mut net.sockets, &net.cfg, net.now),
            Expired::default()
        );
        net.advance(Duration::from_millis(20));
        let out = conns.expire(&mut net.sockets, &net.cfg, net.now);
        assert_eq!(out.orphan_timeouts, 1);
        assert_eq!(
            net.sockets.get::<tcp::Socket>(s).state(),
            tcp::State::Closed
        );
        // Freed at the next pass.
        conns.expire(&mut net.sockets, &net.cfg, net.now);
        assert!(conns.tcp.is_empty());
    }

    #[test]
    fn an_idle_connection_is_reset_and_activity_postpones_it() {
        let mut net = Net::new();
        let mut conns = Conns::new(61000);
        let (s, c) = net.pair(82);
        conns
            .tcp
            .insert(s, Conn::held(tcp::State::Established, None, net.now));
        net.advance(Duration::from_secs(4));
        // Data moves: the idle clock starts again.
        net.sockets
            .get_mut::<tcp::Socket>(c)
            .send_slice(b"x")
            .unwrap();
        net.advance(Duration::from_millis(1));
        assert_eq!(
            conns
                .expire(&mut net.sockets, &net.cfg, net.now)
                .idle_timeouts,
            0
        );
        net.advance(Duration::from_secs(4));
        assert_eq!(
            conns
                .expire(&mut net.sockets, &net.cfg, net.now)
                .idle_timeouts,
            0
        );
        net.advance(Duration::from_millis(1100));
        assert_eq!(
            conns
                .expire(&mut net.sockets, &net.cfg, net.now)
                .idle_timeouts,
            1
        );
        assert_eq!(
            net.sockets.get::<tcp::Socket>(s).state(),
            tcp::State::Closed
        );
        assert!(conns.tcp[&s].was_reset(tcp::State::Closed));
    }

    #[test]
    fn a_clean_end_is_not_a_reset() {
        let mut c = Conn::held(tcp::State::Established, None, Instant::now());
        assert!(c.was_reset(tcp::State::Closed));
        c.observe(tcp::State::CloseWait);
        assert!(!c.was_reset(tcp::State::Closed));
        let mut c = Conn::held(tcp::State::Established, None, Instant::now());
        c.close();
        assert!(!c.was_reset(tcp::State::Closed));
    }

    #[test]
    fn ephemeral_ports_skip_ports_in_use_and_run_out_cleanly() {
        let mut net = Net::new();
        let mut conns = Conns::new(61000);
        let (s, _c) = net.pair(83);
        conns
            .tcp
            .insert(s, Conn::held(tcp::State::Established, None, net.now));
        // The server side of the pair uses port 83: a range of just 83..=84 yields 84 only.
        assert_eq!(conns.ephemeral_port(&net.sockets, (83, 84)).unwrap(), 84);
        assert_eq!(conns.ephemeral_port(&net.sockets, (83, 84)).unwrap(), 84);
        assert!(matches!(
            conns.ephemeral_port(&net.sockets, (83, 83)),
            Err(StackError::NoEphemeralPort(83, 83))
        ));
    }
}
