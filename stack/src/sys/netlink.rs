//! rtnetlink, just what shared-IP mode needs: the interface's IPv4 address, the routes, the
//! neighbour table, and asking the kernel to resolve a neighbour (NTF_USE).
use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
};

const RTM_GETADDR: u16 = 22;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const AF_INET: u8 = 2;

/// A route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: u32,
}

/// A neighbour entry with a usable link-layer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

static SEQ: AtomicU32 = AtomicU32::new(1);

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one request and collects the payloads of the replies (after the nlmsghdr).
fn request(ty: u16, flags: u16, body: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let sock = socket()?;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let len = 16 + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(body);
    // SAFETY: `msg` is a live buffer of the given length.
    if unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let dump = flags & libc::NLM_F_DUMP as u16 != 0;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is a live writable buffer of the given length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut b = &buf[..n as usize];
        if b.is_empty() {
            return Ok(out);
        }
        while b.len() >= 16 {
            let mlen = u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
            let mty = u16::from_ne_bytes([b[4], b[5]]);
            if mlen < 16 || mlen > b.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed netlink reply",
                ));
            }
            let payload = &b[16..mlen];
            match mty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = payload
                        .get(0..4)
                        .map_or(0, |e| i32::from_ne_bytes(e.try_into().expect("4 bytes")));
                    if errno == 0 {
                        return Ok(out); // an ACK
                    }
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ => out.push(payload.to_vec()),
            }
            b = b.get((mlen + 3) & !3..).unwrap_or(&[]);
        }
        if !dump {
            return Ok(out);
        }
    }
}

/// Iterates the rtattrs after a fixed header of `hdr` bytes: (type, payload).
fn attrs(msg: &[u8], hdr: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = msg.get(hdr..).unwrap_or(&[]);
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
        Some((ty, payload))
    })
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

/// IPv4 addresses of an interface with their prefix lengths.
pub fn addresses(ifindex: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
    let body = [AF_INET, 0, 0, 0, 0, 0, 0, 0];
    let mut out = Vec::new();
    for m in request(RTM_GETADDR, libc::NLM_F_DUMP as u16, &body)? {
        if m.len() < 8
            || m[0] != AF_INET
            || u32::from_ne_bytes(m[4..8].try_into().expect("4")) != ifindex
        {
            continue;
        }
        let prefix = m[1];
        let mut local = None;
        let mut address = None;
        for (ty, p) in attrs(&m, 8) {
            match ty {
                1 => address = ipv4(p),
                2 => local = ipv4(p),
                _ => {}
            }
        }
        if let Some(a) = local.or(address) {
            out.push((a, prefix));
        }
    }
    Ok(out)
}

/// The IPv4 routes of the main table.
pub fn routes() -> io::Result<Vec<Route>> {
    let body = [AF_INET, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut out = Vec::new();
    for m in request(RTM_GETROUTE, libc::NLM_F_DUMP as u16, &body)? {
        if m.len() < 12 || m[0] != AF_INET {
            continue;
        }
        let mut r = Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix: m[1],
            gateway: None,
            oif: 0,
        };
        let mut table = m[4] as u32;
        for (ty, p) in attrs(&m, 12) {
            match ty {
                1 => r.dst = ipv4(p).unwrap_or(r.dst),
                4 => {
                    r.oif = p
                        .get(..4)
                        .map_or(0, |b| u32::from_ne_bytes(b.try_into().expect("4")))
                }
                5 => r.gateway = ipv4(p),
                15 => {
                    table = p
                        .get(..4)
                        .map_or(table, |b| u32::from_ne_bytes(b.try_into().expect("4")))
                }
                _ => {}
            }
        }
        // RT_TABLE_MAIN; the local table describes our own addresses, not next hops.
        if table == 254 {
            out.push(r);
        }
    }
    Ok(out)
}

/// Neighbours of `ifindex` with a usable MAC (reachable, stale, delay, probe, permanent, noarp).
pub fn neighbours(ifindex: u32) -> io::Result<Vec<Neighbour>> {
    let body = [AF_INET, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let usable: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;
    let mut out = Vec::new();
    for m in request(RTM_GETNEIGH, libc::NLM_F_DUMP as u16, &body)? {
        if m.len() < 12 || m[0] != AF_INET {
            continue;
        }
        let idx = i32::from_ne_bytes(m[4..8].try_into().expect("4")) as u32;
        let state = u16::from_ne_bytes([m[8], m[9]]);
        if idx != ifindex || state & usable == 0 {
            continue;
        }
        let mut ip = None;
        let mut mac = None;
        for (ty, p) in attrs(&m, 12) {
            match ty {
                1 => ip = ipv4(p),
                2 => mac = p.get(..6).and_then(|b| <[u8; 6]>::try_from(b).ok()),
                _ => {}
            }
        }
        if let (Some(ip), Some(mac)) = (ip, mac) {
            out.push(Neighbour { ip, mac });
        }
    }
    Ok(out)
}

/// Asks the kernel to resolve `ip` on `ifindex` (ARP), like a kernel socket sending to it would.
pub fn resolve(ifindex: u32, ip: Ipv4Addr) -> io::Result<()> {
    const NTF_USE: u8 = 0x01;
    const NUD_NONE: u16 = 0;
    let mut body = Vec::with_capacity(20);
    body.extend_from_slice(&[AF_INET, 0, 0, 0]);
    body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    body.extend_from_slice(&NUD_NONE.to_ne_bytes());
    body.extend_from_slice(&[NTF_USE, 0]);
    body.extend_from_slice(&8u16.to_ne_bytes());
    body.extend_from_slice(&1u16.to_ne_bytes()); // NDA_DST
    body.extend_from_slice(&ip.octets());
    let flags = (libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    request(RTM_NEWNEIGH, flags, &body).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_walk_stops_at_garbage() {
        let msg = [0u8, 0, 0, 0, 8, 0, 1, 0, 198, 18, 0, 1, 0xff, 0xff, 0, 0];
        let v: Vec<_> = attrs(&msg, 4).collect();
        assert_eq!(v.len(), 1);
        assert_eq!(ipv4(v[0].1), Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(attrs(&[1, 2], 0).count(), 0);
    }
}
