//! Reserving a port in the kernel: a kernel socket bound to it (never listening, never read)
//! keeps the kernel from handing the port to anybody else while the stack uses it.
use std::{
    io,
    net::Ipv4Addr,
    os::fd::{FromRawFd, OwnedFd},
};

/// Transport of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// Binds a kernel socket to `addr:port`. The socket is closed (the port released) on drop.
pub fn reserve(transport: Transport, addr: Ipv4Addr, port: u16) -> io::Result<OwnedFd> {
    let ty = match transport {
        Transport::Tcp => libc::SOCK_STREAM,
        Transport::Udp => libc::SOCK_DGRAM,
    };
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if transport == Transport::Udp {
        // Datagrams that reach this socket (a flow landing on another queue) are not read:
        // keep its buffer minimal.
        let one: libc::c_int = 1;
        // SAFETY: valid option value pointer and length.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&one as *const libc::c_int).cast(),
                4,
            );
        }
    }
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sa` is a valid sockaddr_in of the given length.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}
