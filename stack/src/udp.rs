//! UDP with a std::net-shaped socket.
use std::{
    io,
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use smoltcp::{
    iface::SocketHandle,
    socket::udp,
    wire::{IpAddress, IpEndpoint},
};

use crate::{
    error::StackError,
    serve::{block_on, Serve},
    shard::Flushed,
    shared::Shared,
    stack::Stack,
};

/// A UDP socket bound to a port of the stack's address.
pub struct UdpSocket {
    shared: Arc<Shared>,
    handle: SocketHandle,
    port: u16,
    read_timeout: Option<Duration>,
}

impl Stack {
    /// Binds `port` of the stack's address (reserving it in the kernel and steering it).
    pub fn udp_bind(&self, port: u16) -> Result<UdpSocket, StackError> {
        if port == 0 {
            return Err(StackError::Config("port 0: give the port to bind".into()));
        }
        let mut g = self.shared.lock();
        let core = g.as_mut().ok_or(StackError::Stopped)?;
        let handle = core.udp_bind(port)?;
        drop(g);
        self.shared.shard_bell.ring();
        Ok(UdpSocket {
            shared: self.shared.clone(),
            handle,
            port,
            read_timeout: None,
        })
    }
}

impl std::fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSocket")
            .field("port", &self.port)
            .finish()
    }
}

impl UdpSocket {
    /// The address it is bound to (the stack's address and its port).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        let g = self.shared.lock();
        let core = g.as_ref().ok_or_else(|| self.shared.stopped())?;
        Ok(SocketAddr::V4(SocketAddrV4::new(core.addr(), self.port)))
    }

    /// How long `recv_from` may block (`None`: forever; zero is refused, as in std).
    pub fn set_read_timeout(&mut self, d: Option<Duration>) -> io::Result<()> {
        if d == Some(Duration::ZERO) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero timeout"));
        }
        self.read_timeout = d;
        Ok(())
    }

    /// Sends one datagram, waiting while the send buffer is full.
    pub fn send_to(&self, buf: &[u8], to: SocketAddrV4) -> io::Result<usize> {
        let h = self.handle;
        let ep = IpEndpoint::new((*to.ip()).into(), to.port());
        if to.port() == 0 || to.ip().is_unspecified() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "destination address or port is 0",
            ));
        }
        let mut flushed = Flushed::Done;
        let r = block_on(
            &self.shared,
            Some(Instant::now() + Duration::from_secs(5)),
            Serve::Yes,
            |core, w| {
                let s = core.udp(h);
                if buf.len() > s.payload_send_capacity() {
                    return Some(Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "datagram larger than the send buffer",
                    )));
                }
                match s.send_slice(buf, ep) {
                    Ok(()) => {
                        flushed = core.flush_from_app();
                        Some(Ok(buf.len()))
                    }
                    Err(udp::SendError::BufferFull) => {
                        s.register_send_waker(w);
                        None
                    }
                    Err(e) => Some(Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        e.to_string(),
                    ))),
                }
            },
        );
        self.shared.ring_if(flushed);
        r
    }

    /// Receives one datagram. A datagram larger than `buf` is truncated to it (like std).
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let h = self.handle;
        block_on(
            &self.shared,
            self.read_timeout.map(|t| Instant::now() + t),
            Serve::Yes,
            |core, w| {
                let s = core.udp(h);
                match s.recv() {
                    Ok((data, meta)) => {
                        let n = data.len().min(buf.len());
                        buf[..n].copy_from_slice(&data[..n]);
                        let IpAddress::Ipv4(a) = meta.endpoint.addr;
                        let from = SocketAddr::V4(SocketAddrV4::new(a, meta.endpoint.port));
                        core.udp_took_one(h);
                        Some(Ok((n, from)))
                    }
                    Err(_) => {
                        s.register_recv_waker(w);
                        None
                    }
                }
            },
        )
    }
}

impl Drop for UdpSocket {
    /// Datagrams already accepted by `send_to` still go out: a socket with a non-empty send
    /// buffer is freed by the shard once it has drained (or after a second).
    fn drop(&mut self) {
        if let Some(core) = self.shared.lock().as_mut() {
            core.udp_release(self.handle);
        }
        self.shared.shard_bell.ring();
    }
}
