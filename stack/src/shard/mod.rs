//! One shard = one queue: the AF_XDP socket and its UMEM (in the device), the smoltcp
//! interface, the sockets and their bookkeeping, behind one lock (`Shared`). This module is the
//! core's work: the poll pass over a batch of frames, the egress-only flush an application
//! thread does after a write, housekeeping, and the operations handles perform on their
//! sockets. Who runs these passes, and how threads wait between them, is `serve.rs`.
//!
//! - `open.rs`: start-up (checks, addresses, XSK bind, smoltcp interface).
//! - `conns.rs`: listeners, connections, UDP bindings, spare sockets, timeouts (sans-IO).
mod conns;
mod open;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
    task::Waker,
    time::{Duration, Instant},
};

use smoltcp::{
    iface::{Interface, PollResult, SocketHandle, SocketSet},
    socket::{tcp, udp},
    time::Instant as SmolInstant,
    wire::{IpAddress, IpEndpoint, IpListenEndpoint},
};
use steer_bpf::{Protocol, Steering};

pub(crate) use conns::Conn;
use conns::{Conns, Listener, UdpBinding};

use crate::{
    accept::Ready,
    capture::{Capture, CaptureSpec},
    config::Config,
    device::{UdpRoom, XskDevice},
    error::{Failure, StackError},
    events::{ConnHook, StateTracker},
    ports::PortClaim,
    stats::{MemoryStats, RuntimeCounters, StackStats, TcpConnInfo, TcpStateCounts},
    timing::TIMING,
    xsk::FrameCounts,
};

fn smol_now(start: Instant, now: Instant) -> SmolInstant {
    SmolInstant::from_micros(now.duration_since(start).as_micros() as i64)
}

/// What an application thread's flush left for the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Flushed {
    /// Everything went out; nothing is due before the shard's next timed look.
    Done,
    /// Frames wait in the rx ring, or a smoltcp timer is due soon: ring the shard's bell.
    ShardNeeded,
}

/// Everything the shard owns, behind one lock.
pub(crate) struct Core {
    cfg: Config,
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: XskDevice,
    start: Instant,
    addr: Ipv4Addr,
    conns: Conns,
    steering: Arc<Steering>,
    counters: RuntimeCounters,
    states: StateTracker,
    hook: Option<ConnHook>,
    last_maintenance: Instant,
}

impl Core {
    /// The stack's address (the interface's own).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The XSK's descriptor, which the serving threads sleep on.
    pub fn xsk_fd(&self) -> i32 {
        self.dev.inner.borrow().xsk.fd()
    }

    pub fn set_hook(&mut self, hook: Option<ConnHook>) {
        self.hook = hook;
    }

    pub fn set_faults(&mut self, plan: crate::FaultPlan) {
        self.dev.inner.get_mut().faults = Some(crate::faults::Faults::new(plan));
    }

    /// One pass: smoltcp over up to one batch of frames, then housekeeping. Returns whether
    /// anything happened (so the caller goes round again before sleeping).
    pub fn poll(&mut self, now: Instant) -> bool {
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
            if self.conns.open_connections() >= self.cfg.max_connections {
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
        // idle, handshake and orphan timeouts, freeing orphans) waits for maintenance, whose
        // interval grows with the connection count.
        let ctl = std::mem::take(&mut self.dev.inner.get_mut().ctl_seen);
        let interval =
            TIMING.maintenance_base + TIMING.maintenance_per_conn * self.conns.tcp.len() as u32;
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
    /// context switch per request). Egress only, so the lock is held as briefly as possible
    /// (receiving and housekeeping stay with whoever serves the queue).
    pub fn flush_from_app(&mut self) -> Flushed {
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
            .is_some_and(|d| {
                d < smoltcp::time::Duration::from_micros(TIMING.timer_soon.as_micros() as u64)
            });
        if progress || soon {
            Flushed::ShardNeeded
        } else {
            Flushed::Done
        }
    }

    /// How long until smoltcp's next timer (`None`: no timer; zero: at once).
    pub fn next_timer(&mut self, now: Instant) -> Option<Duration> {
        self.iface
            .poll_delay(smol_now(self.start, now), &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

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
        for (&h, b) in &self.conns.udp {
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
        for (&h, b) in self.conns.udp.iter_mut() {
            let s = self.sockets.get::<udp::Socket>(h);
            let before = s.packet_recv_capacity().saturating_sub(b.queued);
            if let Some(after) = self.dev.udp_room.get(&s.endpoint().port) {
                b.queued += before.saturating_sub(after.packets);
            }
        }
    }

    /// Keeps each listener's armed sockets topped up, within its backlog and the shard's
    /// connection limit; publishes the armed counts to the device for SYN accounting.
    fn arm_listeners(&mut self) {
        let open = self.conns.open_connections();
        let mut room = self.cfg.max_connections.saturating_sub(open);
        let (depth, backlog) = (self.cfg.listen_depth, self.cfg.backlog);
        // Runs on every poll: no allocation here (the fields are borrowed apart).
        let cfg = &self.cfg;
        let (listeners, spare) = self.conns.listeners_and_spares();
        for (&port, listener) in listeners.iter_mut() {
            let want = listener.queue.want(depth, backlog, room);
            room = room.saturating_sub(want);
            listener.queue.arm(&mut self.sockets, port, want, |set| {
                Conns::socket_for_listener(spare, set, cfg)
            });
            self.dev
                .listen_capacity
                .insert(port, listener.queue.armed() as u32);
        }
    }

    /// Moves sockets along each accept queue. Returns whether anything moved.
    fn track_listeners(&mut self, now: Instant) -> bool {
        let mut moved = false;
        for l in self.conns.listeners.values_mut() {
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

    /// Timeouts and freeing (see `Conns::expire`), then the device's per-flow state of flows
    /// that are gone.
    fn expire(&mut self, now: Instant) {
        let e = self.conns.expire(&mut self.sockets, &self.cfg, now);
        self.counters.handshake_timeouts += e.handshake_timeouts;
        self.counters.idle_timeouts += e.idle_timeouts;
        self.counters.orphan_timeouts += e.orphan_timeouts;
        // Sequence tracking for retransmission counting: drop flows that are gone.
        let inner = self.dev.inner.get_mut();
        if inner.tracked_flows() > 2 * self.conns.tcp.len() + 64 {
            let mut live = std::collections::HashSet::new();
            for (_, s) in self.sockets.iter() {
                if let smoltcp::socket::Socket::Tcp(t) = s {
                    if let (Some(l), Some(r)) = (t.local_endpoint(), t.remote_endpoint()) {
                        let IpAddress::Ipv4(a) = r.addr;
                        live.insert((l.port, a.octets(), r.port));
                    }
                }
            }
            inner.retain_flows(|k| live.contains(k));
        }
    }

    /// Why the shard must stop on its own, if it must: the interface went away, or the
    /// steering program was detached (its pins are gone).
    pub fn lost_attachment(&self) -> Option<Failure> {
        if steer_bpf::sys::ifindex(&self.cfg.iface).is_none() {
            return Some(Failure::InterfaceGone(self.cfg.iface.clone()));
        }
        if !self.steering.still_attached() {
            return Some(Failure::Detached {
                iface: self.cfg.iface.clone(),
                queue: self.cfg.queue,
            });
        }
        None
    }

    /// Closes every socket (see `Shared::close_all`).
    pub fn close_all(&mut self, abort: bool, udp: bool) {
        for (_, s) in self.sockets.iter_mut() {
            match s {
                smoltcp::socket::Socket::Tcp(t) if abort => t.abort(),
                smoltcp::socket::Socket::Tcp(t) => t.close(),
                smoltcp::socket::Socket::Udp(u) if udp => u.close(),
                _ => {}
            }
        }
    }

    /// Takes the XSK out of the steering program's map: the kernel gets the flows back.
    pub fn unregister(&self) {
        let _ = self.steering.unregister_xsk(self.cfg.queue);
    }

    // ---- what handles do to their sockets --------------------------------------------------

    /// A TCP socket of a handle.
    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// A UDP socket of a handle.
    pub fn udp(&mut self, h: SocketHandle) -> &mut udp::Socket<'static> {
        self.sockets.get_mut::<udp::Socket>(h)
    }

    /// The shard's record of a TCP connection a handle holds.
    pub fn conn(&mut self, h: SocketHandle) -> Option<&mut Conn> {
        self.conns.tcp.get_mut(&h)
    }

    /// Listens on `port`: claims it (kernel reservation + steering rule).
    pub fn listen(&mut self, port: u16) -> Result<(), StackError> {
        if self.conns.listeners.contains_key(&port) {
            return Err(StackError::PortInUse(port));
        }
        let claim = PortClaim::new(&self.steering, Protocol::Tcp, self.addr, port)?;
        self.conns.listeners.insert(port, Listener::new(claim));
        Ok(())
    }

    /// Stops listening on `port`: withdraws its armed sockets and resets the connections nobody
    /// accepted (the shard frees them).
    pub fn unlisten(&mut self, port: u16) {
        let Some(mut l) = self.conns.listeners.remove(&port) else {
            return;
        };
        self.dev.listen_capacity.remove(&port);
        l.queue.arm(&mut self.sockets, port, 0, |_| {
            unreachable!("arming nothing")
        });
        let now = Instant::now();
        for h in l.queue.drain_connections() {
            self.sockets.get_mut::<tcp::Socket>(h).abort();
            self.conns.tcp.insert(h, Conn::orphan(now));
        }
    }

    /// The next connection waiting on `port`'s accept queue, now held by the application; or
    /// `None`, with `w` registered to wake when one is ready.
    pub fn accept(&mut self, port: u16, w: &Waker) -> Option<Ready> {
        let l = self.conns.listeners.get_mut(&port)?;
        match l.queue.pop() {
            Some(r) => {
                let st = self.sockets.get::<tcp::Socket>(r.handle).state();
                self.conns
                    .tcp
                    .insert(r.handle, Conn::held(st, None, Instant::now()));
                Some(r)
            }
            None => {
                l.queue.wait(w);
                None
            }
        }
    }

    /// Connections waiting in `port`'s accept queue.
    pub fn queued(&self, port: u16) -> usize {
        self.conns
            .listeners
            .get(&port)
            .map_or(0, |l| l.queue.ready.len())
    }

    /// Starts connecting to `to` from an ephemeral port (claimed: reserved in the kernel, with a
    /// steering rule for the return traffic). Returns the socket and the local address.
    pub fn connect(&mut self, to: SocketAddrV4) -> std::io::Result<(SocketHandle, SocketAddrV4)> {
        let port = self
            .conns
            .ephemeral_port(&self.sockets, self.cfg.ephemeral_ports)?;
        let claim = PortClaim::new(&self.steering, Protocol::Tcp, self.addr, port)?;
        let mut s = conns::new_tcp_socket(&self.cfg);
        let local = IpEndpoint::new(self.addr.into(), port);
        s.connect(
            self.iface.context(),
            IpEndpoint::new((*to.ip()).into(), to.port()),
            local,
        )
        .map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("connect: {e}"))
        })?;
        let h = self.sockets.add(s);
        self.conns.tcp.insert(
            h,
            Conn::held(tcp::State::SynSent, Some(claim), Instant::now()),
        );
        self.counters.active_opens += 1;
        Ok((h, SocketAddrV4::new(self.addr, port)))
    }

    /// An outgoing connection failed (refused, or timed out: then it is aborted).
    pub fn connect_failed(&mut self, h: SocketHandle) {
        self.counters.attempt_fails += 1;
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        if s.state() != tcp::State::Closed {
            s.abort();
        }
    }

    /// Our side closes (FIN).
    pub fn shutdown_write(&mut self, h: SocketHandle) {
        self.sockets.get_mut::<tcp::Socket>(h).close();
        if let Some(c) = self.conns.tcp.get_mut(&h) {
            c.close();
        }
    }

    /// The application dropped its handle. As in Linux, data it never read turns the close
    /// into a reset (the peer must not believe its data arrived), data that arrives later
    /// resets the connection too, and it must finish closing within `orphan_timeout`.
    pub fn release_tcp(&mut self, h: SocketHandle) {
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        if s.recv_queue() > 0 {
            s.abort();
            self.counters.abort_on_close += 1;
        } else {
            s.close();
            s.set_abort_on_data(true);
        }
        let deadline = Instant::now() + self.cfg.orphan_timeout;
        if let Some(c) = self.conns.tcp.get_mut(&h) {
            c.abandon(deadline);
        }
    }

    /// Binds UDP `port` of the stack's address (claimed like a TCP port).
    pub fn udp_bind(&mut self, port: u16) -> Result<SocketHandle, StackError> {
        let taken = self
            .conns
            .udp
            .keys()
            .any(|&h| self.sockets.get::<udp::Socket>(h).endpoint().port == port);
        if taken {
            return Err(StackError::PortInUse(port));
        }
        let claim = PortClaim::new(&self.steering, Protocol::Udp, self.addr, port)?;
        let mut s = conns::new_udp_socket(&self.cfg);
        s.bind(IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(self.addr)),
            port,
        })
        .map_err(|e| StackError::Config(format!("bind: {e}")))?;
        let h = self.sockets.add(s);
        self.conns.udp.insert(h, UdpBinding::new(claim));
        Ok(h)
    }

    /// The application read one datagram of `h`.
    pub fn udp_took_one(&mut self, h: SocketHandle) {
        if let Some(b) = self.conns.udp.get_mut(&h) {
            b.queued = b.queued.saturating_sub(1);
        }
    }

    /// The application dropped UDP socket `h`: datagrams it already sent still go out (the
    /// shard frees it once drained, or after `udp_drain`).
    pub fn udp_release(&mut self, h: SocketHandle) {
        if self.sockets.get::<udp::Socket>(h).send_queue() > 0 {
            if let Some(b) = self.conns.udp.get_mut(&h) {
                b.closed_at = Some(Instant::now());
            }
        } else {
            self.conns.udp.remove(&h);
            self.sockets.remove(h);
        }
    }

    // ---- observing it ----------------------------------------------------------------------

    /// Checks the frame ledger against the real free pool (see `Xsk::audit`).
    pub fn audit_frames(&mut self) -> Result<(), String> {
        self.dev.inner.get_mut().xsk.audit()
    }

    /// Where the UMEM frames are right now, and how many there are.
    pub fn frames(&mut self) -> (FrameCounts, u32) {
        let x = &self.dev.inner.get_mut().xsk;
        (x.frames(), x.ledger().total())
    }

    /// Every TCP connection (handshaking, queued for accept, held or closing), with its
    /// round-trip and retransmission state. Walks every socket: for operators, not per packet.
    pub fn connections(&self) -> Vec<TcpConnInfo> {
        let to_std = |e: IpEndpoint| {
            let IpAddress::Ipv4(a) = e.addr;
            std::net::SocketAddr::from((a, e.port))
        };
        let mut out = Vec::new();
        for (_, s) in self.sockets.iter() {
            let smoltcp::socket::Socket::Tcp(t) = s else {
                continue;
            };
            let (Some(l), Some(r)) = (t.local_endpoint(), t.remote_endpoint()) else {
                continue;
            };
            let i = t.info();
            out.push(TcpConnInfo {
                local: to_std(l),
                remote: to_std(r),
                state: t.state().to_string(),
                srtt_us: i.srtt.map(|d| d.total_micros()),
                rttvar_us: i.rttvar.map(|d| d.total_micros()),
                rto_ms: i.rto.total_millis(),
                retransmits: i.retransmits,
                cwnd: i.cwnd,
                peer_window: i.peer_window,
                peer_mss: i.peer_mss,
                send_queue: t.send_queue(),
                recv_queue: t.recv_queue(),
            });
        }
        out.sort_by_key(|c| (c.local, c.remote));
        out
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
        let connections = self.conns.open_connections();
        let tcp_defence = self.iface.tcp_counters().into();
        let tcp_recovery = self.iface.tcp_counters().into();
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
            tcp_defence,
            tcp_recovery,
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
