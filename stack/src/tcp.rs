//! TCP with std::net-shaped types: a listener with a real, bounded accept queue, and streams
//! that implement `Read` and `Write`, usable from any thread.
use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use smoltcp::{
    iface::SocketHandle,
    socket::tcp,
    wire::{IpAddress, IpEndpoint},
};

use crate::{
    error::StackError,
    serve::{block_on, Serve},
    shard::Flushed,
    shared::Shared,
    stack::Stack,
};

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
        core.listen(port)?;
        drop(g);
        self.shared.shard_bell.ring();
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
        let (h, local) = {
            let mut g = self.shared.lock();
            let core = g.as_mut().ok_or_else(|| self.shared.stopped())?;
            core.connect(addr)?
        };
        self.shared.shard_bell.ring();
        let deadline = timeout.map(|t| Instant::now() + t);
        let stream = TcpStream {
            shared: self.shared.clone(),
            handle: h,
            local: SocketAddr::V4(local),
            peer: SocketAddr::V4(addr),
            read_timeout: None,
            write_timeout: None,
        };
        let r = block_on(&self.shared, deadline, Serve::No, |core, w| {
            let s = core.tcp(h);
            match s.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    s.register_send_waker(w);
                    None
                }
                tcp::State::Closed => {
                    core.connect_failed(h);
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
                        core.connect_failed(h);
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
        let ready = block_on(&self.shared, deadline, Serve::No, |core, w| {
            core.accept(port, w).map(Ok)
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

    /// The address it listens on (the stack's address and its port).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        let g = self.shared.lock();
        let core = g.as_ref().ok_or_else(|| self.shared.stopped())?;
        Ok(SocketAddr::V4(SocketAddrV4::new(core.addr(), self.port)))
    }

    /// Connections waiting in the accept queue (established, not yet accepted).
    pub fn queued(&self) -> usize {
        self.shared
            .lock()
            .as_ref()
            .map_or(0, |c| c.queued(self.port))
    }
}

impl Drop for TcpListener {
    /// Stops listening; connections nobody accepted are reset.
    fn drop(&mut self) {
        if let Some(core) = self.shared.lock().as_mut() {
            core.unlisten(self.port);
        }
        self.shared.shard_bell.ring();
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
        let core = g.as_mut().ok_or_else(|| self.shared.stopped())?;
        let r = f(core.tcp(self.handle));
        drop(g);
        self.shared.shard_bell.ring();
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

    /// Whether Nagle's algorithm is off.
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

    /// How long a read may block (`None`: forever; zero is refused, as in std).
    pub fn set_read_timeout(&mut self, d: Option<Duration>) -> io::Result<()> {
        if d == Some(Duration::ZERO) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero timeout"));
        }
        self.read_timeout = d;
        Ok(())
    }

    /// How long a write may block (`None`: forever; zero is refused, as in std).
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
        let core = g.as_mut().ok_or_else(|| self.shared.stopped())?;
        core.shutdown_write(self.handle);
        drop(g);
        self.shared.shard_bell.ring();
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
            Serve::No,
            |core, w| {
                let s = core.tcp(h);
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
        let mut flushed = Flushed::Done;
        let r = block_on(
            &self.shared,
            self.read_timeout.map(|t| Instant::now() + t),
            Serve::Yes,
            |core, w| {
                let st = core.tcp(h).state();
                if let Some(c) = core.conn(h) {
                    c.observe(st);
                }
                let s = core.tcp(h);
                if s.can_recv() {
                    // A read that frees much of a nearly full buffer opens the window: send the
                    // update now. Small reads leave it to the next poll (no cost per request).
                    let was_full = 2 * s.recv_queue() >= s.recv_capacity();
                    let r = s
                        .recv_slice(buf)
                        .map_err(|e| io::Error::other(e.to_string()));
                    if was_full {
                        flushed = core.flush_from_app();
                    }
                    return Some(r);
                }
                if !s.may_recv() {
                    // FIN received (CloseWait, LastAck, TimeWait, Closing) is a clean EOF; a socket
                    // that went straight to Closed without either side closing was reset.
                    let reset = core.conn(h).is_some_and(|c| c.was_reset(st));
                    return Some(if reset { Err(closed_error(st)) } else { Ok(0) });
                }
                s.register_recv_waker(w);
                None
            },
        );
        self.shared.ring_if(flushed);
        r
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let h = self.handle;
        let mut flushed = Flushed::Done;
        let r = block_on(
            &self.shared,
            self.write_timeout.map(|t| Instant::now() + t),
            Serve::Yes,
            |core, w| {
                let s = core.tcp(h);
                if s.can_send() {
                    let r = s
                        .send_slice(buf)
                        .map_err(|e| io::Error::other(e.to_string()));
                    // Send from this thread: no shard wake-up on the request's critical path.
                    flushed = core.flush_from_app();
                    return Some(r);
                }
                if !s.may_send() {
                    return Some(Err(closed_error(s.state())));
                }
                s.register_send_waker(w);
                None
            },
        );
        self.shared.ring_if(flushed);
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for TcpStream {
    /// Closes the connection (FIN). As in Linux, data the application never read turns the
    /// close into a reset (the peer must not believe its data arrived), and data that arrives
    /// after the close resets the connection too (see `Core::release_tcp`).
    fn drop(&mut self) {
        if let Some(core) = self.shared.lock().as_mut() {
            core.release_tcp(self.handle);
        }
        self.shared.shard_bell.ring();
    }
}
