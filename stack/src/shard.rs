//! One shard = one queue = one thread that owns the XSK, the UMEM, the smoltcp interface and the
//! sockets, and runs to completion: poll rx in batches → process → wake the application → flush
//! tx → sleep on the XSK fd when idle (or spin, when asked). Application threads reach the shard
//! through handles that lock its core for the length of one call and wake it afterwards; the
//! shard takes the lock once per batch, never per packet.
use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use smoltcp::{
    iface::{Config as IfaceConfig, Interface, PollResult, SocketHandle, SocketSet},
    socket::{tcp, udp},
    time::Instant as SmolInstant,
    wire::{HardwareAddress, IpCidr, IpEndpoint},
};
use steer_bpf::Steering;

use crate::{
    accept::AcceptQueue,
    capture::{Capture, CaptureSpec},
    config::Config,
    control::ControlServer,
    device::UdpRoom,
    device::XskDevice,
    error::StackError,
    events::{ConnHook, StateTracker},
    l2::{KernelNeighbours, L2Timing, L2},
    ports::PortClaim,
    stats::{MemoryStats, StackStats, TcpStateCounts},
    sys::{self, wake::Waker as FdWaker, xsk::Xsk},
    xsk::FrameCounts,
};

/// A listening port: its accept queue and its port claim.
pub(crate) struct Listener {
    pub queue: AcceptQueue,
    pub _claim: PortClaim,
}

/// An accepted or outgoing TCP connection.
pub(crate) struct Conn {
    pub last_activity: Instant,
    pub last_seen: (usize, usize, tcp::State),
    /// The application dropped its handle; the shard frees the socket once it is closed.
    pub orphan: bool,
    /// When it became an orphan: an orphan that has not closed within `orphan_timeout` is reset.
    pub orphaned_at: Option<Instant>,
    /// The peer's FIN was seen: a later Closed is a clean end, not a reset.
    pub fin_seen: bool,
    /// We closed our side (shutdown or drop).
    pub we_closed: bool,
    pub _claim: Option<PortClaim>,
}

impl Conn {
    pub fn new(state: tcp::State, orphan: bool, claim: Option<PortClaim>) -> Self {
        Self {
            last_activity: Instant::now(),
            last_seen: (0, 0, state),
            orphan,
            orphaned_at: orphan.then(Instant::now),
            fin_seen: false,
            we_closed: orphan,
            _claim: claim,
        }
    }

    /// Notes what a state says about how the connection ends.
    pub fn observe(&mut self, state: tcp::State) {
        if matches!(
            state,
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
        ) {
            self.fin_seen = true;
        }
    }
}

/// A bound UDP socket.
pub(crate) struct UdpBinding {
    /// Datagrams in its receive buffer (admitted by the device, not yet read): smoltcp does not
    /// say, and the device needs it to drop, and count, what the buffer would not hold.
    pub queued: usize,
    /// The application dropped the socket while datagrams were still waiting to be sent.
    pub closed_at: Option<Instant>,
    pub _claim: PortClaim,
}

/// Counters of the runtime (the device keeps the per-packet ones).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RuntimeCounters {
    #[serde(rename = "TcpPassiveOpens")]
    pub passive_opens: u64,
    #[serde(rename = "TcpActiveOpens")]
    pub active_opens: u64,
    #[serde(rename = "TcpAttemptFails")]
    pub attempt_fails: u64,
    #[serde(rename = "TcpEstabResets")]
    pub estab_resets: u64,
    pub idle_timeouts: u64,
    pub handshake_timeouts: u64,
    /// Connections the application had closed that did not finish closing within
    /// `orphan_timeout`, reset.
    pub orphan_timeouts: u64,
    /// Connections the application closed with data still unread, reset instead of closed
    /// (as Linux does; nstat `TCPAbortOnClose`).
    #[serde(rename = "TCPAbortOnClose")]
    pub abort_on_close: u64,
    /// SYNs refused because the accept queue was full.
    pub backlog_full: u64,
    /// SYNs refused because the shard was at its connection limit.
    pub conn_limit: u64,
    /// Half-open handshakes dropped to make room in a full accept queue (SYN flood).
    pub syn_evicted: u64,
    /// Handshakes the peer reset before they completed (SYN → SYN-ACK → RST, as a SYN port scan
    /// does): never queued for accept, the socket re-armed.
    #[serde(rename = "EmbryonicRsts")]
    pub embryonic_rsts: u64,
    pub polls: u64,
}

/// Everything the shard owns, behind one lock.
pub(crate) struct Core {
    pub cfg: Config,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub dev: XskDevice,
    pub start: Instant,
    pub addr: Ipv4Addr,
    pub listeners: HashMap<u16, Listener>,
    pub conns: HashMap<SocketHandle, Conn>,
    pub udp: HashMap<SocketHandle, UdpBinding>,
    pub steering: Arc<Steering>,
    pub counters: RuntimeCounters,
    pub states: StateTracker,
    pub hook: Option<ConnHook>,
    next_ephemeral: u16,
    last_maintenance: Instant,
    /// An application thread's inline poll left work for the shard (see `flush_from_app`).
    pub shard_needed: bool,
    /// Closed TCP sockets kept in the set for reuse (see `SPARE_TCP_SOCKETS`).
    spare_tcp: Vec<SocketHandle>,
}

pub(crate) struct Shared {
    pub core: Mutex<Option<Core>>,
    pub waker: FdWaker,
    pub stop: AtomicBool,
    pub failure: Mutex<Option<String>>,
    /// Busy-poll mode: an application thread blocked in a call is spinning on the queue itself
    /// (at most one at a time), so the shard thread sleeps instead of spinning against it.
    pub spinner: AtomicBool,
    /// The stack is going down: blocked calls return instead of waiting again.
    pub closing: AtomicBool,
    /// The AF_XDP socket, which an application thread serving the queue sleeps on.
    pub xsk_fd: i32,
    /// What that thread also sleeps on: its socket's wake-ups arrive here (registered through
    /// `poller_waker`), so a packet that the shard happened to process is not missed.
    pub poller_wake: Arc<PollerWake>,
    pub poller_waker: std::task::Waker,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Option<Core>> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Going down: every blocked call returns. Closing a socket fires its smoltcp wakers, so
    /// each parked thread wakes, sees `closing` and gives up (instead of sleeping out its nap).
    /// TCP sockets close gracefully (FIN, sent by the polls that follow) unless `abort`; UDP
    /// sockets are closed only when `udp` (a clean stop lets their queued datagrams out first).
    fn close_all(&self, abort: bool, udp: bool) {
        self.closing.store(true, Ordering::Release);
        if let Some(core) = self.lock().as_mut() {
            for (_, s) in core.sockets.iter_mut() {
                match s {
                    smoltcp::socket::Socket::Tcp(t) if abort => t.abort(),
                    smoltcp::socket::Socket::Tcp(t) => t.close(),
                    smoltcp::socket::Socket::Udp(u) if udp => u.close(),
                    _ => {}
                }
            }
        }
    }
}

fn smol_now(start: Instant, now: Instant) -> SmolInstant {
    SmolInstant::from_micros(now.duration_since(start).as_micros() as i64)
}

fn os_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_ne_bytes(b),
        // Never 0 (smoltcp's default): fall back to time and pid.
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32) | 1
        }
    }
}

fn read_sysfs(iface: &str, what: &str) -> Result<String, StackError> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/{what}"))
        .map(|s| s.trim().to_string())
        .map_err(|e| StackError::io(format!("reading /sys/class/net/{iface}/{what}"), e))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    v.try_into().ok()
}

/// A TCP socket with the configured buffers and options.
fn tcp_socket(cfg: &Config) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; cfg.tcp_rx_buffer]),
        tcp::SocketBuffer::new(vec![0; cfg.tcp_tx_buffer]),
    );
    apply_options(&mut s, cfg);
    s
}

/// The configured per-connection options (a recycled socket may carry its last user's).
fn apply_options(s: &mut tcp::Socket<'static>, cfg: &Config) {
    let smol = |d: Duration| smoltcp::time::Duration::from_micros(d.as_micros() as u64);
    s.set_nagle_enabled(cfg.nagle);
    s.set_ack_delay(cfg.ack_delay.map(smol));
    s.set_keep_alive(cfg.keep_alive.map(smol));
    // TCP timestamps (RFC 7323): RTT measurement, and what lets a client reuse its TIME-WAIT
    // ports (tcp_tw_reuse) when it opens many short connections to us.
    s.set_tsval_generator(Some(tcp_tsval));
}

/// TCP timestamp clock: milliseconds, from a random origin chosen once per process (RFC 7323
/// §5.4: a clock starting at 0 tells every peer how long the service has been up, and makes the
/// first connections' TSvals predictable).
fn tcp_tsval() -> u32 {
    static ORIGIN: std::sync::OnceLock<(Instant, u32)> = std::sync::OnceLock::new();
    let (start, base) = *ORIGIN.get_or_init(|| (Instant::now(), os_seed() as u32));
    base.wrapping_add(start.elapsed().as_millis() as u32)
}

/// Closed TCP sockets kept for reuse by listeners: a new socket means allocating and zeroing
/// both buffers (2 MiB with 1 MiB buffers), which dominated the cost of a connection.
const SPARE_TCP_SOCKETS: usize = 64;

impl Core {
    pub fn open(cfg: Config) -> Result<Self, StackError> {
        cfg.validate().map_err(StackError::Config)?;
        let ifindex = steer_bpf::sys::ifindex(&cfg.iface)
            .ok_or_else(|| StackError::NoSuchInterface(cfg.iface.clone()))?;
        let steering = Steering::open(&cfg.iface, cfg.pin_root.as_deref())?;
        let (queue, pinned_ifindex) = steering.config()?;
        // A pin directory is named after an interface, but names can be reused: check the
        // index recorded at attach time.
        if pinned_ifindex != ifindex {
            return Err(StackError::ForeignPins {
                iface: cfg.iface.clone(),
                ifindex,
                pinned: pinned_ifindex,
            });
        }
        if queue != cfg.queue {
            return Err(StackError::WrongQueue {
                iface: cfg.iface.clone(),
                attached: queue,
                wanted: cfg.queue,
            });
        }
        // One shard per queue: a second socket would take the XSKMAP slot from the first.
        if steering.registered_queues()? & (1u64 << cfg.queue.min(63)) != 0 {
            return Err(StackError::QueueBusy {
                iface: cfg.iface.clone(),
                queue: cfg.queue,
            });
        }
        let (addr, prefix) = sys::netlink::addresses(ifindex)
            .map_err(|e| StackError::io("reading interface addresses (netlink)", e))?
            .into_iter()
            .next()
            .ok_or_else(|| StackError::NoAddress(cfg.iface.clone()))?;
        let mac = parse_mac(&read_sysfs(&cfg.iface, "address")?)
            .ok_or_else(|| StackError::Config(format!("{} has no Ethernet address", cfg.iface)))?;
        let link_mtu: usize = read_sysfs(&cfg.iface, "mtu")?.parse().unwrap_or(1500);
        // A packet and its Ethernet header must fit a frame after the kernel's headroom.
        let frame_room = cfg.frame_size as usize - 256 - 14;
        let mtu = link_mtu.min(frame_room);

        let xsk = Xsk::bind(
            &cfg.iface,
            cfg.queue,
            sys::xsk::XskConfig {
                frames: cfg.frames,
                frame_size: cfg.frame_size,
                ring_size: cfg.ring_size,
                bind: cfg.bind,
                need_wakeup: cfg.need_wakeup,
            },
        )?;
        let l2 = L2::new(
            KernelNeighbours { ifindex },
            ifindex,
            addr,
            prefix,
            L2Timing::default(),
        );
        let mut dev = XskDevice::new(xsk, l2, mac, addr, mtu, cfg.ring_size as usize);
        dev.rx_budget = cfg.listen_depth.max(8);

        let start = Instant::now();
        let mut icfg = IfaceConfig::new(HardwareAddress::Ip);
        icfg.random_seed = os_seed();
        let mut iface = Interface::new(icfg, &mut dev, smol_now(start, start));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(addr.into(), prefix));
        });
        // smoltcp only needs to know an off-link destination is reachable; the real next hop
        // comes from the kernel's routes in the L2 layer.
        let _ = iface.routes_mut().add_default_ipv4_route(addr);

        // Registered last: from here on the XDP program redirects to us.
        steering.register_xsk(cfg.queue, dev.inner.get_mut().xsk.borrowed_fd())?;
        tracing::info!(iface = %cfg.iface, queue = cfg.queue, %addr, mtu, zero_copy = dev.inner.get_mut().xsk.zero_copy, "shard up");
        Ok(Self {
            next_ephemeral: cfg.ephemeral_ports.0,
            cfg,
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            start,
            addr,
            listeners: HashMap::new(),
            conns: HashMap::new(),
            udp: HashMap::new(),
            steering: Arc::new(steering),
            counters: RuntimeCounters::default(),
            states: StateTracker::default(),
            hook: None,
            last_maintenance: start,
            shard_needed: false,
            spare_tcp: Vec::new(),
        })
    }

    pub fn new_tcp_socket(&self) -> tcp::Socket<'static> {
        tcp_socket(&self.cfg)
    }

    pub fn new_udp_socket(&self) -> udp::Socket<'static> {
        let per = self.cfg.udp_packets;
        udp::Socket::new(
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; per],
                vec![0; self.cfg.udp_buffer],
            ),
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; per],
                vec![0; self.cfg.udp_buffer],
            ),
        )
    }

    /// Open TCP connections (not counting armed listening sockets).
    fn open_connections(&self) -> usize {
        self.conns.len()
            + self
                .listeners
                .values()
                .map(|l| l.queue.queued())
                .sum::<usize>()
    }

    /// One pass: smoltcp over up to one batch of frames, then housekeeping. Returns whether
    /// anything happened (so the loop goes round again before sleeping).
    fn poll(&mut self, now: Instant) -> bool {
        self.counters.polls += 1;
        self.arm_listeners();
        self.publish_udp_room();
        let inner = self.dev.inner.get_mut();
        inner.now = now;
        inner.l2.tick(now);
        inner.xsk.reclaim();
        inner.xsk.refill();
        self.dev.begin_batch();
        let refused_before = self.dev.inner.get_mut().counters.syn_refused;
        let ts = smol_now(self.start, now);
        let changed =
            self.iface.poll(ts, &mut self.dev, &mut self.sockets) == PollResult::SocketStateChanged;
        let refused = self.dev.inner.get_mut().counters.syn_refused - refused_before;
        if refused > 0 {
            // Attribute refusals to the limit that kept the listener unarmed.
            if self.open_connections() >= self.cfg.max_connections {
                self.counters.conn_limit += refused;
            } else {
                self.counters.backlog_full += refused;
            }
        }
        self.collect_udp_room();
        let moved = self.track_listeners(now);
        // Both below walk every connection: O(n) per poll would make each request's cost grow
        // with the number of idle connections. States are scanned when a SYN, FIN or RST went
        // through (or the accept queues moved); everything else (timers: TIME-WAIT, retries,
        // idle and handshake timeouts, freeing orphans) waits for maintenance, whose interval
        // grows with the connection count (10 ms, plus 10 µs per connection).
        let ctl = std::mem::take(&mut self.dev.inner.get_mut().ctl_seen);
        let interval =
            Duration::from_millis(10) + Duration::from_micros(10 * self.conns.len() as u64);
        let maintenance = now.duration_since(self.last_maintenance) >= interval;
        if ctl || moved || maintenance {
            self.scan_states();
        }
        if maintenance {
            self.last_maintenance = now;
            self.expire(now);
        }
        let inner = self.dev.inner.get_mut();
        inner.release_held_tx();
        inner.xsk.flush();
        inner.xsk.refill();
        changed || moved || self.dev.rx_backlog() > 0
    }

    /// Run to completion on an application thread: after a call changed a socket, send what
    /// it produced from this thread instead of waking the shard (which costs a wake-up and a
    /// context switch per request). Returns whether the shard must still look: frames left in
    /// the rx ring, or a timer due before its next timed wake-up.
    pub(crate) fn flush_from_app(&mut self) {
        // Egress only: the lock is held for as short a time as possible (receiving and
        // housekeeping stay with the shard, or the spinner in busy-poll mode).
        let now = Instant::now();
        let inner = self.dev.inner.get_mut();
        inner.now = now;
        inner.xsk.reclaim();
        let ts = smol_now(self.start, now);
        self.iface.poll_egress(ts, &mut self.dev, &mut self.sockets);
        let inner = self.dev.inner.get_mut();
        inner.release_held_tx();
        inner.xsk.flush();
        let progress = self.dev.rx_backlog() > 0;
        let soon = self
            .iface
            .poll_delay(smol_now(self.start, now), &self.sockets)
            .is_some_and(|d| d < smoltcp::time::Duration::from_millis(10));
        self.shard_needed |= progress || soon;
    }

    /// One pass of the shard's work on an application thread serving the queue; returns
    /// whether there is more to do at once.
    pub(crate) fn serve_once(&mut self) -> bool {
        self.poll(Instant::now())
    }

    /// Keeps each listener's armed sockets topped up, within its backlog and the shard's
    /// connection limit; publishes the armed counts to the device for SYN accounting.
    /// Reports state changes to the hook and the logs, and counts resets.
    fn scan_states(&mut self) {
        let hook = self.hook.clone();
        let r = self.states.scan(&self.sockets, |e| {
            tracing::debug!(local = %e.local, remote = %e.remote, from = ?e.from, to = ?e.to, "tcp state");
            if let Some(h) = &hook {
                h(&e);
            }
        });
        self.counters.estab_resets += r.estab_resets;
    }

    /// Tells the device how much each bound UDP socket can still take this batch.
    fn publish_udp_room(&mut self) {
        for (&h, b) in &self.udp {
            let s = self.sockets.get::<udp::Socket>(h);
            let room = UdpRoom {
                packets: s.packet_recv_capacity().saturating_sub(b.queued),
                bytes: s.payload_recv_capacity().saturating_sub(s.recv_queue()),
            };
            self.dev.udp_room.insert(s.endpoint().port, room);
        }
    }

    /// Adds what the device admitted this batch to each UDP socket's queue.
    fn collect_udp_room(&mut self) {
        for (&h, b) in self.udp.iter_mut() {
            let s = self.sockets.get::<udp::Socket>(h);
            let before = s.packet_recv_capacity().saturating_sub(b.queued);
            if let Some(after) = self.dev.udp_room.get(&s.endpoint().port) {
                b.queued += before.saturating_sub(after.packets);
            }
        }
    }

    fn arm_listeners(&mut self) {
        let open = self.open_connections();
        let mut room = self.cfg.max_connections.saturating_sub(open);
        let (depth, backlog) = (self.cfg.listen_depth, self.cfg.backlog);
        // Runs on every poll: no allocation here (the fields are borrowed apart).
        let cfg = &self.cfg;
        let spare = &mut self.spare_tcp;
        for (&port, listener) in self.listeners.iter_mut() {
            let want = listener.queue.want(depth, backlog, room);
            room = room.saturating_sub(want);
            listener
                .queue
                .arm(&mut self.sockets, port, want, |set| match spare.pop() {
                    Some(h) => {
                        apply_options(set.get_mut::<tcp::Socket>(h), cfg);
                        h
                    }
                    None => set.add(tcp_socket(cfg)),
                });
            self.dev
                .listen_capacity
                .insert(port, listener.queue.armed() as u32);
        }
    }

    /// Moves sockets along each accept queue. Returns whether anything moved.
    fn track_listeners(&mut self, now: Instant) -> bool {
        let mut moved = false;
        for l in self.listeners.values_mut() {
            let t = l.queue.track(&mut self.sockets, now);
            moved |= t.moved;
            self.counters.passive_opens += t.established;
            self.counters.embryonic_rsts += t.aborted;
            // SYNs that took the spare sockets pushed the queue over its bound: the oldest
            // half-open handshakes make way (SYN flood defence).
            self.counters.syn_evicted += l.queue.trim(&mut self.sockets, self.cfg.backlog) as u64;
        }
        moved
    }

    /// Timeouts for untrusted clients: handshakes that take too long, idle connections; frees
    /// the sockets of closed orphans.
    fn expire(&mut self, now: Instant) {
        let hs = self.cfg.handshake_timeout;
        for l in self.listeners.values_mut() {
            for h in l.queue.expire(&mut self.sockets, now, hs) {
                self.counters.handshake_timeouts += 1;
                // The RST goes out on the next poll; the socket is then freed below.
                self.conns
                    .insert(h, Conn::new(tcp::State::Closed, true, None));
            }
        }
        let idle = self.cfg.idle_timeout;
        let orphan_limit = self.cfg.orphan_timeout;
        let mut freed = Vec::new();
        for (&h, c) in self.conns.iter_mut() {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            let seen = (s.recv_queue(), s.send_queue(), s.state());
            c.observe(seen.2);
            if seen != c.last_seen {
                c.last_seen = seen;
                c.last_activity = now;
            }
            match s.state() {
                tcp::State::Closed | tcp::State::TimeWait if c.orphan => freed.push(h),
                tcp::State::Closed => {}
                // An orphan still closing after `orphan_timeout` (a peer that never sends its
                // FIN, or never opens its window to take our last data) is reset: nothing can
                // keep a connection nobody owns alive (Linux: tcp_fin_timeout).
                _ if c
                    .orphaned_at
                    .is_some_and(|t| now.duration_since(t) >= orphan_limit) =>
                {
                    tracing::debug!(?h, state = ?s.state(), "orphan timeout: resetting");
                    s.abort();
                    self.counters.orphan_timeouts += 1;
                }
                _ => {
                    if let Some(limit) = idle {
                        if now.duration_since(c.last_activity) >= limit {
                            tracing::debug!(?h, "idle timeout: resetting");
                            s.abort();
                            self.counters.idle_timeouts += 1;
                            c.last_activity = now;
                        }
                    }
                }
            }
        }
        for h in freed {
            self.conns.remove(&h);
            // A closed socket (not one in TIME-WAIT) stays in the set for the next listener.
            let closed = self.sockets.get::<tcp::Socket>(h).state() == tcp::State::Closed;
            if closed && self.spare_tcp.len() < SPARE_TCP_SOCKETS {
                self.spare_tcp.push(h);
            } else {
                self.sockets.remove(h);
            }
        }
        let drained: Vec<SocketHandle> = self
            .udp
            .iter()
            .filter(|(h, b)| {
                b.closed_at.is_some_and(|t| {
                    now.duration_since(t) >= Duration::from_secs(1)
                        || self.sockets.get::<udp::Socket>(**h).send_queue() == 0
                })
            })
            .map(|(h, _)| *h)
            .collect();
        for h in drained {
            self.udp.remove(&h);
            self.sockets.remove(h);
        }
        // Sequence tracking for retransmission counting: drop flows that are gone.
        let inner = self.dev.inner.get_mut();
        if inner.tracked_flows() > 2 * self.conns.len() + 64 {
            let mut live = std::collections::HashSet::new();
            for (_, s) in self.sockets.iter() {
                if let smoltcp::socket::Socket::Tcp(t) = s {
                    if let (Some(l), Some(r)) = (t.local_endpoint(), t.remote_endpoint()) {
                        let smoltcp::wire::IpAddress::Ipv4(a) = r.addr;
                        live.insert((l.port, a.octets(), r.port));
                    }
                }
            }
            inner.retain_flows(|k| live.contains(k));
        }
    }

    /// Picks the next free ephemeral port (round robin).
    pub fn ephemeral_port(&mut self) -> Result<u16, StackError> {
        let (lo, hi) = self.cfg.ephemeral_ports;
        let span = (hi - lo) as u32 + 1;
        for _ in 0..span {
            let p = self.next_ephemeral;
            self.next_ephemeral = if p >= hi { lo } else { p + 1 };
            let used = self.conns.keys().any(|&h| {
                self.sockets
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

    pub fn local_endpoint(&self, port: u16) -> IpEndpoint {
        IpEndpoint::new(self.addr.into(), port)
    }

    pub fn stats(&mut self) -> StackStats {
        let mut states = TcpStateCounts::default();
        let (mut tcp_sockets, mut udp_sockets) = (0u64, 0u64);
        for (_, s) in self.sockets.iter() {
            match s {
                smoltcp::socket::Socket::Tcp(t) => {
                    states.count(t.state());
                    tcp_sockets += 1;
                }
                smoltcp::socket::Socket::Udp(_) => udp_sockets += 1,
            }
        }
        let connections = self.open_connections();
        let inner = self.dev.inner.get_mut();
        let capture = match (&inner.capture, &inner.last_capture) {
            (Some(c), _) => c.status(),
            (None, Some((spec, progress))) => crate::capture::status_of(spec, progress, false),
            (None, None) => Default::default(),
        };
        let cfg = &self.cfg;
        StackStats {
            iface: cfg.iface.clone(),
            queue: cfg.queue,
            pid: std::process::id(),
            device: inner.counters,
            runtime: self.counters,
            tcp_defence: self.iface.tcp_counters().into(),
            frames: inner.xsk.frames(),
            frames_total: inner.xsk.ledger().total(),
            kernel: inner.xsk.kernel_stats(),
            tx_ring_full: inner.xsk.tx_ring_full,
            curr_estab: states.established + states.close_wait,
            tcp_states: states,
            connections,
            memory: MemoryStats {
                umem_bytes: cfg.frames as u64 * cfg.frame_size as u64,
                socket_buffer_bytes: tcp_sockets * (cfg.tcp_rx_buffer + cfg.tcp_tx_buffer) as u64
                    + udp_sockets * 2 * cfg.udp_buffer as u64,
            },
            capture,
            faults: inner.faults.as_ref().map(|f| f.counters),
        }
    }

    /// Starts writing received and sent frames to a pcap file (replacing a running capture).
    pub fn start_capture(&mut self, spec: CaptureSpec) -> Result<(), StackError> {
        let c = Capture::start(spec)?;
        let inner = self.dev.inner.get_mut();
        inner.last_capture = Some((c.spec.clone(), c.progress.clone()));
        inner.capture = Some(c);
        Ok(())
    }

    /// Stops the running capture; the writer flushes and closes the file.
    pub fn stop_capture(&mut self) -> bool {
        self.dev.inner.get_mut().capture.take().is_some()
    }
}

/// Why the shard must stop on its own, checked about once a second: the steering program was
/// detached (its pins are gone) or the interface went away.
fn lost_attachment(core: &Core) -> Option<String> {
    if steer_bpf::sys::ifindex(&core.cfg.iface).is_none() {
        return Some(format!("interface {} is gone", core.cfg.iface));
    }
    if !core.steering.still_attached() {
        return Some(format!(
            "the steering program was detached from {} (its pins are gone); re-attach with `xdp-loader attach {} --queue {}` and restart the service",
            core.cfg.iface, core.cfg.iface, core.cfg.queue
        ));
    }
    None
}

/// How the thread serving the queue is woken: it sleeps in poll(2) on the XSK and an eventfd,
/// not parked. Most wake-ups come while it is awake, handling the very packets that cause them
/// (it looks at its call right after): those only leave a note instead of costing a write and
/// a read of the eventfd.
pub(crate) struct PollerWake {
    efd: FdWaker,
    asleep: AtomicBool,
    notified: AtomicBool,
}

impl PollerWake {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            efd: FdWaker::new()?,
            asleep: AtomicBool::new(false),
            notified: AtomicBool::new(false),
        })
    }

    fn wake(&self) {
        self.notified.store(true, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) {
            self.efd.wake();
        }
    }

    /// Sleeps on the XSK and the eventfd unless a wake-up came since the last look.
    pub fn wait(&self, xsk_fd: i32, timeout: Duration) {
        self.asleep.store(true, Ordering::SeqCst);
        if !self.notified.swap(false, Ordering::SeqCst) {
            self.efd.wait(Some(xsk_fd), Some(timeout));
        }
        self.asleep.store(false, Ordering::SeqCst);
        self.notified.store(false, Ordering::SeqCst);
    }
}

struct EfdWake(Arc<PollerWake>);

impl std::task::Wake for EfdWake {
    fn wake(self: Arc<Self>) {
        self.0.wake();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.wake();
    }
}

/// The shard thread's loop.
fn run(shared: Arc<Shared>, xsk_fd: i32, busy: bool) {
    let mut last_check = Instant::now();
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            let lost = shared.lock().as_ref().and_then(lost_attachment);
            if let Some(why) = lost {
                tracing::error!("{why}");
                *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                shared.stop.store(true, Ordering::Release);
                shared.close_all(true, true);
                break;
            }
        }
        let (progress, delay) = {
            let mut g = shared.lock();
            let Some(core) = g.as_mut() else { break };
            let now = Instant::now();
            let progress = core.poll(now);
            let delay = core
                .iface
                .poll_delay(smol_now(core.start, Instant::now()), &core.sockets);
            (progress, delay)
        };
        // While an application thread serves the queue (blocked in a call), the shard only
        // keeps time: spinning too would fight it for the CPU, and sleeping on the XSK would
        // wake the shard for every packet that thread already handles.
        let app_serving = shared.spinner.load(Ordering::Acquire);
        if progress || (busy && !app_serving) {
            if busy {
                // Spinning, but never starving ksoftirqd or the application threads on this CPU.
                std::thread::yield_now();
            }
            continue;
        }
        let cap = Duration::from_millis(10);
        let d = delay.map_or(cap, |d| Duration::from_micros(d.total_micros()).min(cap));
        if app_serving {
            // Back on watch within a millisecond of the last serving thread leaving.
            let d = d.min(Duration::from_millis(5));
            if !d.is_zero() {
                shared.waker.wait(None, Some(d));
            }
            continue;
        }
        // Sleep on the XSK fd (packets), the eventfd (application calls) or smoltcp's next
        // timer, whichever comes first; a ceiling keeps housekeeping (timeouts) going.
        if !d.is_zero() {
            shared.waker.wait(Some(xsk_fd), Some(d));
        }
    }
}

/// Builds a [`Stack`]: one shard on one queue of one interface.
#[derive(Clone)]
pub struct StackBuilder {
    cfg: Config,
    hook: Option<ConnHook>,
    pcap: Option<CaptureSpec>,
    faults: Option<crate::FaultPlan>,
    control: Option<Option<std::path::PathBuf>>,
}

impl std::fmt::Debug for StackBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackBuilder")
            .field("cfg", &self.cfg)
            .field("pcap", &self.pcap)
            .finish_non_exhaustive()
    }
}

impl StackBuilder {
    /// Serve on `queue` of `iface`, in the interface's own IPv4 address (shared-IP mode). The
    /// steering program must be attached there (`xdp-loader attach IFACE --queue Q`).
    pub fn new(iface: &str, queue: u32) -> Self {
        Self {
            cfg: Config::new(iface, queue),
            hook: None,
            pcap: None,
            faults: None,
            control: None,
        }
    }
    /// Calls `hook` on the shard thread for every observed TCP state change. It must be quick
    /// and must not call back into the stack.
    pub fn on_conn_state(
        mut self,
        hook: impl Fn(&crate::ConnEvent) + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(std::sync::Arc::new(hook));
        self
    }
    /// Injects faults (drop, duplicate, reorder, corrupt) in the device layer: for tests.
    pub fn faults(mut self, plan: crate::FaultPlan) -> Self {
        self.faults = Some(plan);
        self
    }
    /// Captures received and sent frames to a pcap file from the start.
    pub fn pcap(mut self, spec: CaptureSpec) -> Self {
        self.pcap = Some(spec);
        self
    }
    /// Where the control socket goes (`None`: no control socket). Default:
    /// `/run/xsk-stack/IFACE-qQUEUE.sock` (`XSK_STACK_RUN_DIR` moves the directory).
    pub fn control_socket(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.control = Some(path);
        self
    }
    pub fn pin_root(mut self, p: impl Into<std::path::PathBuf>) -> Self {
        self.cfg.pin_root = Some(p.into());
        self
    }
    pub fn bind_mode(mut self, m: crate::config::BindMode) -> Self {
        self.cfg.bind = m;
        self
    }
    pub fn need_wakeup(mut self, on: bool) -> Self {
        self.cfg.need_wakeup = on;
        self
    }
    pub fn umem_frames(mut self, n: u32) -> Self {
        self.cfg.frames = n;
        self
    }
    pub fn frame_size(mut self, n: u32) -> Self {
        self.cfg.frame_size = n;
        self
    }
    pub fn ring_size(mut self, n: u32) -> Self {
        self.cfg.ring_size = n;
        self
    }
    pub fn tcp_buffers(mut self, rx: usize, tx: usize) -> Self {
        self.cfg.tcp_rx_buffer = rx;
        self.cfg.tcp_tx_buffer = tx;
        self
    }
    pub fn udp_buffers(mut self, datagrams: usize, bytes: usize) -> Self {
        self.cfg.udp_packets = datagrams;
        self.cfg.udp_buffer = bytes;
        self
    }
    pub fn backlog(mut self, n: usize) -> Self {
        self.cfg.backlog = n;
        self
    }
    pub fn listen_depth(mut self, n: usize) -> Self {
        self.cfg.listen_depth = n;
        self
    }
    pub fn max_connections(mut self, n: usize) -> Self {
        self.cfg.max_connections = n;
        self
    }
    pub fn idle_timeout(mut self, d: Option<Duration>) -> Self {
        self.cfg.idle_timeout = d;
        self
    }
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.cfg.handshake_timeout = d;
        self
    }
    /// How long a connection the application dropped may take to finish closing before it is
    /// reset (default 60 s, as Linux's `tcp_fin_timeout`).
    pub fn orphan_timeout(mut self, d: Duration) -> Self {
        self.cfg.orphan_timeout = d;
        self
    }
    pub fn keep_alive(mut self, d: Option<Duration>) -> Self {
        self.cfg.keep_alive = d;
        self
    }
    pub fn nagle(mut self, on: bool) -> Self {
        self.cfg.nagle = on;
        self
    }
    pub fn ack_delay(mut self, d: Option<Duration>) -> Self {
        self.cfg.ack_delay = d;
        self
    }
    pub fn ephemeral_ports(mut self, lo: u16, hi: u16) -> Self {
        self.cfg.ephemeral_ports = (lo, hi);
        self
    }
    pub fn busy_poll(mut self, on: bool) -> Self {
        self.cfg.busy_poll = on;
        self
    }
    pub fn cpu(mut self, cpu: Option<usize>) -> Self {
        self.cfg.cpu = cpu;
        self
    }

    /// Binds the XSK, registers it with the steering program and starts the shard thread.
    pub fn start(self) -> Result<Stack, StackError> {
        let busy = self.cfg.busy_poll;
        let cpu = self.cfg.cpu;
        let control_path = match self.control {
            Some(p) => p,
            None => Some(crate::control::socket_path(&self.cfg.iface, self.cfg.queue)),
        };
        let mut core = Core::open(self.cfg)?;
        core.hook = self.hook;
        if let Some(plan) = self.faults {
            core.dev.inner.get_mut().faults = Some(crate::faults::Faults::new(plan));
        }
        if let Some(spec) = self.pcap {
            core.start_capture(spec)?;
        }
        let xsk_fd = core.dev.inner.borrow().xsk.fd();
        let poller_wake = Arc::new(PollerWake::new().map_err(|e| StackError::io("eventfd", e))?);
        let shared = Arc::new(Shared {
            core: Mutex::new(Some(core)),
            waker: FdWaker::new().map_err(|e| StackError::io("eventfd", e))?,
            stop: AtomicBool::new(false),
            failure: Mutex::new(None),
            spinner: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            xsk_fd,
            poller_wake: poller_wake.clone(),
            poller_waker: std::task::Waker::from(Arc::new(EfdWake(poller_wake))),
        });
        let control = match control_path {
            Some(p) => Some(ControlServer::start(p, Arc::downgrade(&shared))?),
            None => None,
        };
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("xsk-shard".into())
            .spawn(move || {
                if let Some(c) = cpu {
                    if let Err(e) = sys::wake::pin_to_cpu(c) {
                        tracing::warn!("pinning the shard to cpu {c}: {e}");
                    }
                }
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(s2.clone(), xsk_fd, busy)
                }));
                if let Err(p) = r {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                    *s2.failure.lock().unwrap_or_else(|p| p.into_inner()) = msg;
                    s2.stop.store(true, Ordering::Release);
                }
            })
            .map_err(|e| StackError::io("spawning the shard thread", e))?;
        Ok(Stack {
            shared,
            thread: Some(thread),
            control,
        })
    }
}

/// Reads a stack's counters from any thread (e.g. a metrics endpoint).
#[derive(Clone)]
pub struct StatsSource {
    shared: std::sync::Weak<Shared>,
}

impl StatsSource {
    /// The counters, or `None` once the stack has stopped.
    pub fn stats(&self) -> Option<StackStats> {
        self.shared.upgrade()?.lock().as_mut().map(|c| c.stats())
    }
}

/// A running shard. Dropping it stops the thread, closes every socket, removes the steering
/// rules the stack added and closes the XSK (the kernel then takes the flows back).
pub struct Stack {
    pub(crate) shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    control: Option<ControlServer>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack").finish_non_exhaustive()
    }
}

impl Stack {
    /// Start configuring a stack on `iface`/`queue`.
    pub fn builder(iface: &str, queue: u32) -> StackBuilder {
        StackBuilder::new(iface, queue)
    }

    /// The IPv4 address the stack serves on (the interface's own).
    pub fn local_ip(&self) -> Ipv4Addr {
        self.shared
            .lock()
            .as_ref()
            .map_or(Ipv4Addr::UNSPECIFIED, |c| c.addr)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Option<StackStats> {
        self.shared.lock().as_mut().map(|c| c.stats())
    }

    /// Where the UMEM frames are right now.
    pub fn frames(&self) -> Option<(FrameCounts, u32)> {
        self.shared.lock().as_mut().map(|c| {
            let x = &c.dev.inner.get_mut().xsk;
            (x.frames(), x.ledger().total())
        })
    }

    /// A handle other threads can read counters through without keeping the stack alive.
    pub fn stats_source(&self) -> StatsSource {
        StatsSource {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Starts capturing frames to a pcap file (replacing a running capture).
    pub fn start_capture(&self, spec: CaptureSpec) -> Result<(), StackError> {
        self.shared
            .lock()
            .as_mut()
            .ok_or(StackError::Stopped)?
            .start_capture(spec)
    }

    /// Stops the running capture (the file is flushed and closed); false if none was running.
    pub fn stop_capture(&self) -> bool {
        self.shared
            .lock()
            .as_mut()
            .is_some_and(|c| c.stop_capture())
    }

    /// Where the control socket is, if there is one.
    pub fn control_socket(&self) -> Option<std::path::PathBuf> {
        self.control.as_ref().map(|c| c.path().to_path_buf())
    }

    /// Why the shard thread stopped on its own, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the shard (same as dropping it).
    pub fn shutdown(self) {}
}

impl Drop for Stack {
    fn drop(&mut self) {
        drop(self.control.take());
        // Let FINs for closed sockets (and queued datagrams) go out: a few polls, bounded.
        self.shared.close_all(false, false);
        self.shared.waker.wake();
        std::thread::sleep(Duration::from_millis(20));
        self.shared.close_all(false, true);
        self.shared.stop.store(true, Ordering::Release);
        self.shared.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(core) = self.shared.lock().take() {
            let _ = core.steering.unregister_xsk(core.cfg.queue);
            tracing::info!(iface = %core.cfg.iface, queue = core.cfg.queue, "shard down");
            drop(core);
        }
    }
}
