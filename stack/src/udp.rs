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
    wire::{IpAddress, IpEndpoint, IpListenEndpoint},
};
use steer_bpf::Protocol;

use crate::{
    error::StackError,
    ports::PortClaim,
    shard::{Shared, Stack, UdpBinding},
    tcp::block_on,
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
        let taken = core
            .udp
            .keys()
            .any(|&h| core.sockets.get::<udp::Socket>(h).endpoint().port == port);
        if taken {
            return Err(StackError::PortInUse(port));
        }
        let claim = PortClaim::new(&core.steering, Protocol::Udp, core.addr, port)?;
        let mut s = core.new_udp_socket();
        s.bind(IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(core.addr)),
            port,
        })
        .map_err(|e| StackError::Config(format!("bind: {e}")))?;
        let handle = core.sockets.add(s);
        core.udp.insert(
            handle,
            UdpBinding {
                queued: 0,
                closed_at: None,
                _claim: claim,
            },
        );
        drop(g);
        self.shared.waker.wake();
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
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        let g = self.shared.lock();
        let core = g
            .as_ref()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        Ok(SocketAddr::V4(SocketAddrV4::new(core.addr, self.port)))
    }

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
        block_on(
            &self.shared,
            Some(Instant::now() + Duration::from_secs(5)),
            true,
            |core, w| {
                let s = core.sockets.get_mut::<udp::Socket>(h);
                if buf.len() > s.payload_send_capacity() {
                    return Some(Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "datagram larger than the send buffer",
                    )));
                }
                match s.send_slice(buf, ep) {
                    Ok(()) => {
                        core.flush_from_app();
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
        )
    }

    /// Receives one datagram. A datagram larger than `buf` is truncated to it (like std).
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let h = self.handle;
        block_on(
            &self.shared,
            self.read_timeout.map(|t| Instant::now() + t),
            true,
            |core, w| {
                let s = core.sockets.get_mut::<udp::Socket>(h);
                match s.recv() {
                    Ok((data, meta)) => {
                        let n = data.len().min(buf.len());
                        buf[..n].copy_from_slice(&data[..n]);
                        let IpAddress::Ipv4(a) = meta.endpoint.addr;
                        let from = SocketAddr::V4(SocketAddrV4::new(a, meta.endpoint.port));
                        if let Some(b) = core.udp.get_mut(&h) {
                            b.queued = b.queued.saturating_sub(1);
                        }
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
            let pending = core.sockets.get::<udp::Socket>(self.handle).send_queue() > 0;
            if pending {
                if let Some(b) = core.udp.get_mut(&self.handle) {
                    b.closed_at = Some(Instant::now());
                }
            } else {
                core.udp.remove(&self.handle);
                core.sockets.remove(self.handle);
            }
        }
        self.shared.waker.wake();
    }
}
