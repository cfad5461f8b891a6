//! The targets: the server side of a connection on the kernel and on the stack.
#![allow(unsafe_code)]

use super::*;

/// The server side of one connection, as the server application sees it.
pub trait ServerConn: Read + Write + Send {
    /// Closes the sending side (FIN).
    fn shutdown_write(&mut self) -> io::Result<()>;
    fn set_read_timeout(&mut self, d: Option<Duration>) -> io::Result<()>;
    /// Aborts with a RST (kernel: SO_LINGER 0, then close).
    fn reset(self: Box<Self>) -> io::Result<()>;
    fn peer_port(&self) -> io::Result<u16>;
}

impl ServerConn for std::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn set_read_timeout(&mut self, d: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, d)
    }
    fn reset(self: Box<Self>) -> io::Result<()> {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a linger struct of the right size on our own socket.
        let rc = unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        drop(self);
        Ok(())
    }
    fn peer_port(&self) -> io::Result<u16> {
        Ok(self.peer_addr()?.port())
    }
}

impl ServerConn for xsk_stack::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn set_read_timeout(&mut self, d: Option<Duration>) -> io::Result<()> {
        xsk_stack::TcpStream::set_read_timeout(self, d)
    }
    fn reset(self: Box<Self>) -> io::Result<()> {
        xsk_stack::TcpStream::reset(&self)
    }
    fn peer_port(&self) -> io::Result<u16> {
        Ok(self.peer_addr()?.port())
    }
}

/// A listener of either target.
pub(crate) trait Acceptor: Send + Sync {
    fn accept(&self, timeout: Duration) -> io::Result<Box<dyn ServerConn>>;
}

impl Acceptor for std::net::TcpListener {
    fn accept(&self, timeout: Duration) -> io::Result<Box<dyn ServerConn>> {
        let deadline = Instant::now() + timeout;
        loop {
            match std::net::TcpListener::accept(self) {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    s.set_nodelay(true)?;
                    s.set_write_timeout(Some(Duration::from_secs(5)))?;
                    return Ok(Box::new(s));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Acceptor for xsk_stack::TcpListener {
    fn accept(&self, timeout: Duration) -> io::Result<Box<dyn ServerConn>> {
        let (mut s, _) = self.accept_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(Box::new(s))
    }
}

/// Which implementation a case runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Kernel,
    Stack,
}
