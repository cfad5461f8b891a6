//! TCP with std::net-shaped types: a listener with a real, bounded accept queue, and streams
//! that implement `Read` and `Write`, usable from any thread.
use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, SocketAddrV4},
    sync::{atomic::Ordering, Arc},
    task::{Wake, Waker},
    thread::{self, Thread},
    time::{Duration, Instant},
};

use smoltcp::{
    iface::SocketHandle,
    socket::tcp,
    wire::{IpAddress, IpEndpoint},
};
use steer_bpf::Protocol;

use crate::{
    accept::AcceptQueue,
    error::StackError,
    ports::PortClaim,
    shard::{Conn, Core, Listener, Shared, Stack},
};

struct ThreadWaker(Thread);

/// Parked threads woken so far; the thread serving the queue watches it to see whether the
/// packets it handled were for someone else.
static PARKED_WAKES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        PARKED_WAKES.fetch_add(1, Ordering::Relaxed);
        self.0.unpark();
    }
}

/// How a spell of serving the queue ended.
enum Served<T> {
    /// The caller's call completed.
    Ready(io::Result<T>),
    /// The spell ran out (or the stack is stopping): look again.
    SpellEnded,
    /// The packets were for other threads, now woken: one of them takes over the queue when it
    /// next blocks (its own packets then reach it with no hop), and the caller parks.
    HandedOver,
    /// Another thread serves the queue: the caller parks.
    Taken,
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the stack has stopped")
}

/// The stack stopped: say why, when the shard knows.
fn stopped_because(shared: &Shared) -> io::Error {
    match shared
        .failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_deref()
    {
        Some(why) => io::Error::new(
            io::ErrorKind::NotConnected,
            format!("the stack has stopped: {why}"),
        ),
        None => stopped(),
    }
}

/// Run to completion for a blocked call: the caller becomes the one thread serving the queue
/// (at most one at a time) until `f` is ready or a bounded spell ends, so the packet that
/// completes its call is handled on its own thread, with no hop through the shard. In
/// busy-poll mode it spins (like the kernel's SO_BUSY_POLL); otherwise it sleeps on the XSK
/// descriptor between passes.
fn serve_queue<T>(
    shared: &Shared,
    deadline: Option<Instant>,
    busy: bool,
    f: &mut impl FnMut(&mut Core, &Waker) -> Option<io::Result<T>>,
    waker: &Waker,
) -> Served<T> {
    if shared
        .spinner
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Served::Taken;
    }
    // A spell is bounded so that the stop flag, and wake-ups that do not come with a packet
    // (a timer or another thread acting on this socket), are seen.
    let spell = Duration::from_millis(if busy { 10 } else { 20 });
    let until = Instant::now() + spell;
    let until = deadline.map_or(until, |d| d.min(until));
    let mut out = Served::SpellEnded;
    loop {
        let now = Instant::now();
        if now >= until || shared.stop.load(Ordering::Acquire) {
            break;
        }
        let more = {
            let mut g = shared.lock();
            let Some(core) = g.as_mut() else { break };
            let woken_before = PARKED_WAKES.load(Ordering::Relaxed);
            let more = core.serve_once();
            let woke_others = PARKED_WAKES.load(Ordering::Relaxed) != woken_before;
            // Sleeping, this thread waits in poll(2), not parked: its socket's wake-ups go to
            // the eventfd it sleeps on (a spinner needs none).
            let w = if busy { waker } else { &shared.poller_waker };
            if let Some(r) = f(core, w) {
                let wake = std::mem::take(&mut core.shard_needed);
                drop(g);
                if wake {
                    shared.waker.wake();
                }
                out = Served::Ready(r);
                break;
            }
            if woke_others && !busy {
                out = Served::HandedOver;
                break;
            }
            more
        };
        if more {
            continue;
        }
        if busy {
            // The lock is free between passes, for the other threads; and the CPU is offered
            // to whatever else is runnable on it (above all ksoftirqd, which delivers our
            // transmitted frames: a spinner that never yields delays them by a scheduler slice).
            std::thread::yield_now();
        } else {
            shared.poller_wake.wait(shared.xsk_fd, until - now);
        }
    }
    // No wake-up for the shard here: it checks every millisecond whether someone still serves
    // the queue (waking it on every return would put it on the CPU right when this thread
    // sends its response).
    shared.spinner.store(false, Ordering::Release);
    out
}

/// Runs `f` under the core lock until it returns `Some`, parking the thread in between (woken by
/// smoltcp's socket wakers or the shard, with a bounded nap as a safety net). With `may_serve`
/// (data calls: read, write, send, receive) the caller may serve the queue itself while it
/// waits; accept and connect never do (an accepting thread serving a SYN flood would hand every
/// connection's first bytes through itself, and leave the queue unserved while it spawns).
pub(crate) fn block_on<T>(
    shared: &Shared,
    deadline: Option<Instant>,
    may_serve: bool,
    mut f: impl FnMut(&mut Core, &Waker) -> Option<io::Result<T>>,
) -> io::Result<T> {
    thread_local! {
        // One waker per thread for its whole life: no allocation per blocking call.
        static WAKER: Waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    }
    let waker = WAKER.with(Waker::clone);
    let mut serve = true;
    loop {
        let busy = {
            let mut g = shared.lock();
            let core = g.as_mut().ok_or_else(stopped)?;
            if let Some(r) = f(core, &waker) {
                let wake = std::mem::take(&mut core.shard_needed);
                drop(g);
                if wake {
                    shared.waker.wake();
                }
                return r;
            }
            core.cfg.busy_poll
        };
        if serve && may_serve {
            match serve_queue(shared, deadline, busy, &mut f, &waker) {
                Served::Ready(r) => return r,
                Served::SpellEnded
                    if !shared.stop.load(Ordering::Acquire)
                        && !shared.closing.load(Ordering::Acquire)
                        && deadline.is_none_or(|d| Instant::now() < d) =>
                {
                    continue
                }
                Served::HandedOver => {
                    // Register this thread's own waker again (serving registered the eventfd
                    // one), then park.
                    serve = false;
                    continue;
                }
                Served::SpellEnded | Served::Taken => {}
            }
        }
        serve = true;
        if shared.stop.load(Ordering::Acquire) || shared.closing.load(Ordering::Acquire) {
            return Err(stopped_because(shared));
        }
        // Wakers are reliable; the nap only bounds how long a lost wake-up (or the stop flag)
        // could go unseen. Short naps cost dearly with many blocked threads (10 000 idle
        // connections napping every 50 ms is 200 000 wake-ups and lock takes a second).
        let nap = Duration::from_secs(1);
        match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
                }
                thread::park_timeout((d - now).min(nap));
            }
            None => thread::park_timeout(nap),
        }
    }
}

fn to_std(e: IpEndpoint) -> SocketAddr {
    match e.addr {
        IpAddress::Ipv4(a) => SocketAddr::V4(SocketAddrV4::new(a, e.port)),
    }
}

/// A TCP listener on the stack's address. Its accept queue holds up to `backlog` connections
/// (handshaking or established); past it, SYNs are answered with RST and counted.
pub struct TcpListener {
    shared: Arc<Shared>,
    port: u16,
}

impl Stack {
    /// Listens on `port` of the stack's address: reserves the port in the kernel and adds the
    /// steering rule for it (unless a rule already covers it).
    pub fn tcp_listen(&self, port: u16) -> Result<TcpListener, StackError> {
        if port == 0 {
            return Err(StackError::Config(
                "port 0: give the port to listen on".into(),
            ));
        }
        let mut g = self.shared.lock();
        let core = g.as_mut().ok_or(StackError::Stopped)?;
        if core.listeners.contains_key(&port) {
            return Err(StackError::PortInUse(port));
        }
        let claim = PortClaim::new(&core.steering, Protocol::Tcp, core.addr, port)?;
        core.listeners.insert(
            port,
            Listener {
                queue: AcceptQueue::default(),
                _claim: claim,
            },
        );
        drop(g);
        self.shared.waker.wake();
        tracing::info!(port, "listening");
        Ok(TcpListener {
            shared: self.shared.clone(),
            port,
        })
    }

    /// Connects to `addr` from an ephemeral port of the configured range (reserved in the kernel,
    /// with a steering rule for the return traffic).
    pub fn tcp_connect(
        &self,
        addr: SocketAddrV4,
        timeout: Option<Duration>,
    ) -> io::Result<TcpStream> {
        let (h, local_ip, local_port) = {
            let mut g = self.shared.lock();
            let core = g.as_mut().ok_or_else(stopped)?;
            let port = core.ephemeral_port()?;
            let claim = PortClaim::new(&core.steering, Protocol::Tcp, core.addr, port)?;
            let mut s = core.new_tcp_socket();
            let local = core.local_endpoint(port);
            s.connect(
                core.iface.context(),
                IpEndpoint::new((*addr.ip()).into(), addr.port()),
                local,
            )
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("connect: {e}")))?;
            let h = core.sockets.add(s);
            core.conns
                .insert(h, Conn::new(tcp::State::SynSent, false, Some(claim)));
            core.counters.active_opens += 1;
            (h, core.addr, port)
        };
        self.shared.waker.wake();
        let deadline = timeout.map(|t| Instant::now() + t);
        let stream = TcpStream {
            shared: self.shared.clone(),
            handle: h,
            local: SocketAddr::V4(SocketAddrV4::new(local_ip, local_port)),
            peer: SocketAddr::V4(addr),
            read_timeout: None,
            write_timeout: None,
        };
        let r = block_on(&self.shared, deadline, false, |core, w| {
            let s = core.sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    s.register_send_waker(w);
                    None
                }
                tcp::State::Closed => {
                    core.counters.attempt_fails += 1;
                    Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "connection refused",
                    )))
                }
                _ => Some(Ok(())),
            }
        });
        match r {
            Ok(()) => Ok(stream),
            Err(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    if let Some(core) = self.shared.lock().as_mut() {
                        core.counters.attempt_fails += 1;
                        core.sockets.get_mut::<tcp::Socket>(h).abort();
                    }
                }
                Err(e)
            }
        }
    }
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener")
            .field("port", &self.port)
            .finish()
    }
}

impl TcpListener {
    /// Waits for the next established connection.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        self.accept_timeout(None)
    }

    /// As [`accept`](Self::accept), giving up after `timeout` (`ErrorKind::TimedOut`).
    pub fn accept_timeout(&self, timeout: Option<Duration>) -> io::Result<(TcpStream, SocketAddr)> {
        let port = self.port;
        let deadline = timeout.map(|t| Instant::now() + t);
        // A queued connection that died while it waited is still handed out, with the addresses
        // it had (as Linux does): its first read reports the reset. accept() fails only when
        // the stack stops or the timeout passes, never because of one connection.
        let ready = block_on(&self.shared, deadline, false, |core, w| {
            let l = core.listeners.get_mut(&port)?;
            match l.queue.pop() {
                Some(r) => {
                    let st = core.sockets.get::<tcp::Socket>(r.handle).state();
                    core.conns.insert(r.handle, Conn::new(st, false, None));
                    Some(Ok(r))
                }
                None => {
                    l.queue.wait(w);
                    None
                }
            }
        })?;
        let peer = to_std(ready.remote);
        let stream = TcpStream {
            shared: self.shared.clone(),
            handle: ready.handle,
            local: to_std(ready.local),
            peer,
            read_timeout: None,
            write_timeout: None,
        };
        Ok((stream, peer))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        let g = self.shared.lock();
        let core = g.as_ref().ok_or_else(stopped)?;
        Ok(SocketAddr::V4(SocketAddrV4::new(core.addr, self.port)))
    }

    /// Connections waiting in the accept queue (established, not yet accepted).
    pub fn queued(&self) -> usize {
        self.shared
            .lock()
            .as_ref()
            .and_then(|c| c.listeners.get(&self.port))
            .map_or(0, |l| l.queue.ready.len())
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        if let Some(core) = self.shared.lock().as_mut() {
            if let Some(mut l) = core.listeners.remove(&self.port) {
                core.dev.listen_capacity.remove(&self.port);
                l.queue.arm(&mut core.sockets, self.port, 0, |_| {
                    unreachable!("arming nothing")
                });
                // Connections nobody accepted are reset, then freed by the shard.
                for h in l.queue.drain_connections() {
                    core.sockets.get_mut::<tcp::Socket>(h).abort();
                    core.conns
                        .insert(h, Conn::new(tcp::State::Closed, true, None));
                }
            }
        }
        self.shared.waker.wake();
    }
}

/// A TCP connection. `Read`/`Write` block like std's (with optional timeouts); dropping it
/// closes the connection gracefully (FIN).
pub struct TcpStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
    /// The connection's addresses, kept: smoltcp forgets them when the connection is reset.
    local: SocketAddr,
    peer: SocketAddr,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("handle", &self.handle)
            .finish()
    }
}

impl TcpStream {
    fn with<T>(&self, f: impl FnOnce(&mut tcp::Socket<'static>) -> T) -> io::Result<T> {
        let mut g = self.shared.lock();
        let core = g.as_mut().ok_or_else(stopped)?;
        let r = f(core.sockets.get_mut::<tcp::Socket>(self.handle));
        drop(g);
        self.shared.waker.wake();
        Ok(r)
    }

    /// The peer's address. Unlike `getpeername(2)` it still answers after a reset: it is the
    /// address the connection had.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }

    /// The local address (the stack's address and the listening or ephemeral port).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// Disables Nagle's algorithm (std's `set_nodelay`).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.with(|s| s.set_nagle_enabled(!nodelay))
    }

    pub fn nodelay(&self) -> io::Result<bool> {
        self.with(|s| !s.nagle_enabled())
    }

    /// Delayed-ACK timeout (`None`: acknowledge at once).
    pub fn set_ack_delay(&self, d: Option<Duration>) -> io::Result<()> {
        self.with(|s| {
            s.set_ack_delay(d.map(|d| smoltcp::time::Duration::from_micros(d.as_micros() as u64)))
        })
    }

    /// TCP keep-alive interval (`None`: off).
    pub fn set_keepalive(&self, d: Option<Duration>) -> io::Result<()> {
        self.with(|s| {
            s.set_keep_alive(d.map(|d| smoltcp::time::Duration::from_micros(d.as_micros() as u64)))
        })
    }

    pub fn set_read_timeout(&mut self, d: Option<Duration>) -> io::Result<()> {
        if d == Some(Duration::ZERO) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero timeout"));
        }
        self.read_timeout = d;
        Ok(())
    }

    pub fn set_write_timeout(&mut self, d: Option<Duration>) -> io::Result<()> {
        if d == Some(Duration::ZERO) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero timeout"));
        }
        self.write_timeout = d;
        Ok(())
    }

    /// `Write` closes our sending side (FIN); `Read`/`Both` also stop reading.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if how == Shutdown::Read {
            return Ok(());
        }
        let mut g = self.shared.lock();
        let core = g.as_mut().ok_or_else(stopped)?;
        core.sockets.get_mut::<tcp::Socket>(self.handle).close();
        if let Some(c) = core.conns.get_mut(&self.handle) {
            c.we_closed = true;
        }
        drop(g);
        self.shared.waker.wake();
        Ok(())
    }

    /// Aborts the connection with a RST (like SO_LINGER 0 then close).
    pub fn reset(&self) -> io::Result<()> {
        self.with(|s| s.abort())
    }

    /// The TCP state, for diagnostics.
    pub fn state(&self) -> io::Result<tcp::State> {
        self.with(|s| s.state())
    }

    /// Sending blocks until everything written has been acknowledged (or the connection dies).
    pub fn wait_sent(&self, timeout: Option<Duration>) -> io::Result<()> {
        let h = self.handle;
        block_on(
            &self.shared,
            timeout.map(|t| Instant::now() + t),
            false,
            |core, w| {
                let s = core.sockets.get_mut::<tcp::Socket>(h);
                if s.send_queue() == 0 || !s.is_open() {
                    Some(Ok(()))
                } else {
                    s.register_send_waker(w);
                    None
                }
            },
        )
    }
}

fn closed_error(state: tcp::State) -> io::Error {
    if state == tcp::State::Closed {
        io::Error::new(io::ErrorKind::ConnectionReset, "connection reset")
    } else {
        io::Error::new(io::ErrorKind::BrokenPipe, "connection closed for sending")
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let h = self.handle;
        block_on(
            &self.shared,
            self.read_timeout.map(|t| Instant::now() + t),
            true,
            |core, w| {
                let s = core.sockets.get_mut::<tcp::Socket>(h);
                let st = s.state();
                if let Some(c) = core.conns.get_mut(&h) {
                    c.observe(st);
                }
                let s = core.sockets.get_mut::<tcp::Socket>(h);
                if s.can_recv() {
                    // A read that frees much of a nearly full buffer opens the window: send the
                    // update now. Small reads leave it to the next poll (no cost per request).
                    let was_full = 2 * s.recv_queue() >= s.recv_capacity();
                    let r = s
                        .recv_slice(buf)
                        .map_err(|e| io::Error::other(e.to_string()));
                    if was_full {
                        core.flush_from_app();
                    }
                    return Some(r);
                }
                if !s.may_recv() {
                    // FIN received (CloseWait, LastAck, TimeWait, Closing) is a clean EOF; a socket
                    // that went straight to Closed without our close() was reset.
                    let st = s.state();
                    let reset = st == tcp::State::Closed
                        && core
                            .conns
                            .get(&h)
                            .is_some_and(|c| !c.fin_seen && !c.we_closed);
                    return Some(if reset { Err(closed_error(st)) } else { Ok(0) });
                }
                s.register_recv_waker(w);
                None
            },
        )
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let h = self.handle;
        block_on(
            &self.shared,
            self.write_timeout.map(|t| Instant::now() + t),
            true,
            |core, w| {
                let s = core.sockets.get_mut::<tcp::Socket>(h);
                if s.can_send() {
                    let r = s
                        .send_slice(buf)
                        .map_err(|e| io::Error::other(e.to_string()));
                    // Send from this thread: no shard wake-up on the request's critical path.
                    core.flush_from_app();
                    return Some(r);
                }
                if !s.may_send() {
                    return Some(Err(closed_error(s.state())));
                }
                s.register_send_waker(w);
                None
            },
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for TcpStream {
    /// Closes the connection (FIN). As in Linux, data the application never read turns the
    /// close into a reset (the peer must not believe its data arrived), and data that arrives
    /// after the close resets the connection too.
    fn drop(&mut self) {
        if let Some(core) = self.shared.lock().as_mut() {
            let s = core.sockets.get_mut::<tcp::Socket>(self.handle);
            if s.recv_queue() > 0 {
                s.abort();
                core.counters.abort_on_close += 1;
            } else {
                s.close();
                s.set_abort_on_data(true);
            }
            if let Some(c) = core.conns.get_mut(&self.handle) {
                c.orphan = true;
                c.orphaned_at = Some(Instant::now());
                c.we_closed = true;
            }
        }
        self.shared.waker.wake();
    }
}
