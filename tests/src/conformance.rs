//! A packetdrill-style TCP conformance harness: a raw TCP peer in the testbed namespace sends
//! hand-made segments from an address no kernel owns and reads the replies with an AF_PACKET
//! socket; every case runs first against the Linux kernel (the reference) and then against the
//! stack, on the same testbed.
//!
//! - The peer's address is the testbed subnet's `.77`. The host reaches it through a permanent
//!   neighbour entry (the kernel and the stack both resolve through the kernel's table); the peer
//!   kernel drops frames for an address it does not own, so only our code answers (checked by the
//!   `peer_kernel_stays_silent` case, which looks for RSTs leaving the peer that we did not send).
//! - Targets: [`Target::Kernel`] is a `std::net::TcpListener` on `host_ip:KERNEL_PORT` (not
//!   steered); [`Target::Stack`] is `stack.tcp_listen(STACK_PORT)` with the XDP program on queue 3.
//! - A case is a `fn(&mut Ctx) -> Result<(), String>`: `Err` says what differed. After
//!   [`Ctx::handshake`] the case also holds the server side of the connection
//!   ([`ServerConn`]), accepted on a helper thread, to make the server application read, write,
//!   close or abort.
//! - [`run_family`] runs a table of cases against both targets and prints
//!   `case | RFC | kernel | stack`; it panics on any unexpected FAIL (a kernel failure means the
//!   expectation itself is wrong).
//!
//! `CONFORMANCE_TRACE=1` prints every case's exchange (failures always print their last 40 lines).
//!
//! Every wait is bounded. The host end gets TX checksum offload, TSO and GSO turned off (the
//! testbed removes the interface, and with it the setting): the kernel then sends real segments
//! with computed checksums, as over a real NIC, and the parser checks the IPv4 and TCP checksums
//! of everything it accepts (a frame with a bad checksum counts as not received).
#![allow(unsafe_code)]

use std::{
    collections::VecDeque,
    fmt,
    io::{self, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicU16, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{frames::checksum, loader_ok, netns::in_netns, raw::RawSender, Testbed};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// Port of the kernel listener (not steered to the stack).
pub const KERNEL_PORT: u16 = 8080;
/// Port of the stack listener (steered to queue 3).
pub const STACK_PORT: u16 = 8090;

// ---------------------------------------------------------------------------------------------
// Segments: parsing what arrives, building what we send.

/// TCP options of a segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpOpts {
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_ok: bool,
    /// SACK blocks, as (left, right) edges.
    pub sack: Vec<(u32, u32)>,
    /// (TSval, TSecr).
    pub ts: Option<(u32, u32)>,
}

impl TcpOpts {
    /// Parses an option block; `None` when it is malformed.
    pub fn parse(mut b: &[u8]) -> Option<Self> {
        let mut o = TcpOpts::default();
        while let Some(&kind) = b.first() {
            match kind {
                0 => break,
                1 => {
                    b = &b[1..];
                    continue;
                }
                _ => {}
            }
            let len = *b.get(1)? as usize;
            if len < 2 || len > b.len() {
                return None;
            }
            let v = &b[2..len];
            match (kind, v.len()) {
                (2, 2) => o.mss = Some(u16::from_be_bytes([v[0], v[1]])),
                (3, 1) => o.wscale = Some(v[0]),
                (4, 0) => o.sack_ok = true,
                (5, n) if n % 8 == 0 => {
                    o.sack = v
                        .chunks(8)
                        .map(|c| {
                            (
                                u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                                u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                            )
                        })
                        .collect()
                }
                (8, 8) => {
                    o.ts = Some((
                        u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                        u32::from_be_bytes([v[4], v[5], v[6], v[7]]),
                    ))
                }
                _ => {}
            }
            b = &b[len..];
        }
        Some(o)
    }
}

/// A received TCP segment.
#[derive(Debug, Clone)]
pub struct Segment {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub opts: TcpOpts,
    pub payload: Vec<u8>,
    /// When it was read from the socket.
    pub at: Instant,
}

impl Segment {
    pub fn has(&self, f: u8) -> bool {
        self.flags & f == f
    }
    /// Sequence space the segment occupies (payload, SYN and FIN).
    pub fn seg_len(&self) -> u32 {
        self.payload.len() as u32 + self.has(SYN) as u32 + self.has(FIN) as u32
    }
    /// A pure ACK: ACK only (PSH allowed), no payload.
    pub fn is_pure_ack(&self) -> bool {
        self.flags & !PSH == ACK && self.payload.is_empty()
    }

    /// Parses an Ethernet frame with checked bounds; `None` unless it is a well-formed IPv4/TCP
    /// frame with a correct IPv4 header checksum.
    pub fn parse(f: &[u8], at: Instant) -> Option<Self> {
        if f.len() < 14 || u16::from_be_bytes([f[12], f[13]]) != 0x0800 {
            return None;
        }
        let ip = &f[14..];
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return None;
        }
        let ihl = (ip[0] & 0x0f) as usize * 4;
        let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        if ihl < 20 || total < ihl || total > ip.len() || ip[9] != 6 {
            return None;
        }
        if checksum(&ip[..ihl]) != 0 {
            return None;
        }
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        if frag & 0x3fff != 0 {
            return None;
        }
        let tcp = &ip[ihl..total];
        if tcp.len() < 20 {
            return None;
        }
        let mut pseudo = Vec::with_capacity(12 + tcp.len());
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(tcp);
        if checksum(&pseudo) != 0 {
            return None;
        }
        let off = (tcp[12] >> 4) as usize * 4;
        if off < 20 || off > tcp.len() {
            return None;
        }
        let be32 = |i: usize| u32::from_be_bytes([tcp[i], tcp[i + 1], tcp[i + 2], tcp[i + 3]]);
        Some(Segment {
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            sport: u16::from_be_bytes([tcp[0], tcp[1]]),
            dport: u16::from_be_bytes([tcp[2], tcp[3]]),
            seq: be32(4),
            ack: be32(8),
            flags: tcp[13],
            window: u16::from_be_bytes([tcp[14], tcp[15]]),
            opts: TcpOpts::parse(&tcp[20..off])?,
            payload: tcp[off..].to_vec(),
            at,
        })
    }
}

/// Flags as letters, tcpdump style: S F R P A ('.' for a bare ACK).
pub fn flag_str(flags: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [(SYN, 'S'), (FIN, 'F'), (RST, 'R'), (PSH, 'P')] {
        if flags & bit != 0 {
            s.push(c);
        }
    }
    if flags & ACK != 0 {
        s.push('.');
    }
    s
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}->{} [{}] seq={} ack={} win={} len={}",
            self.sport,
            self.dport,
            flag_str(self.flags),
            self.seq,
            self.ack,
            self.window,
            self.payload.len()
        )?;
        let o = &self.opts;
        if let Some(m) = o.mss {
            write!(f, " mss={m}")?;
        }
        if let Some(w) = o.wscale {
            write!(f, " ws={w}")?;
        }
        if o.sack_ok {
            write!(f, " sackOK")?;
        }
        if !o.sack.is_empty() {
            write!(f, " sack={:?}", o.sack)?;
        }
        if let Some((v, e)) = o.ts {
            write!(f, " ts={v}/{e}")?;
        }
        Ok(())
    }
}

/// A segment to send.
#[derive(Debug, Clone)]
pub struct Out {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Raw option bytes (padded to 4 with EOL).
    pub opts: Vec<u8>,
    pub payload: Vec<u8>,
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}->{} [{}] seq={} ack={} win={} len={}",
            self.sport,
            self.dport,
            flag_str(self.flags),
            self.seq,
            self.ack,
            self.window,
            self.payload.len()
        )?;
        if let Some(o) = TcpOpts::parse(&self.opts) {
            if o != TcpOpts::default() {
                write!(f, " opts={o:?}")?;
            }
        }
        Ok(())
    }
}

/// Option builders.
pub mod opt {
    pub fn mss(m: u16) -> Vec<u8> {
        let b = m.to_be_bytes();
        vec![2, 4, b[0], b[1]]
    }
    pub fn wscale(s: u8) -> Vec<u8> {
        vec![1, 3, 3, s]
    }
    pub fn sack_ok() -> Vec<u8> {
        vec![1, 1, 4, 2]
    }
    pub fn ts(val: u32, ecr: u32) -> Vec<u8> {
        let mut v = vec![1, 1, 8, 10];
        v.extend_from_slice(&val.to_be_bytes());
        v.extend_from_slice(&ecr.to_be_bytes());
        v
    }
    pub fn sack(blocks: &[(u32, u32)]) -> Vec<u8> {
        let mut v = vec![1, 1, 5, 2 + 8 * blocks.len() as u8];
        for (l, r) in blocks {
            v.extend_from_slice(&l.to_be_bytes());
            v.extend_from_slice(&r.to_be_bytes());
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// The raw peer.

/// The raw TCP peer: an AF_PACKET sender and receiver on the peer end of the veth, inside the
/// namespace, speaking for `ip`, an address no kernel owns.
pub struct Peer {
    tx: RawSender,
    rx: OwnedFd,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub host_ip: Ipv4Addr,
    pub host_mac: [u8; 6],
    /// Outgoing RSTs from `ip` seen on the wire that we did not send (the peer kernel answering).
    pub foreign_rsts: std::cell::Cell<u32>,
    /// (source port, destination port, seq) of every RST we sent.
    sent_rsts: std::cell::RefCell<std::collections::HashSet<(u16, u16, u32)>>,
    t0: Instant,
}

impl Peer {
    /// Opens the peer on `tb` as `.77` of the testbed subnet and adds the host's permanent
    /// neighbour entry for it (removed with the veth when the testbed drops).
    pub fn open(tb: &Testbed) -> Self {
        let o = tb.host_ip.octets();
        let ip = Ipv4Addr::new(o[0], o[1], o[2], 77);
        let mac_s = tb.ns_ok("cat", &[&format!("/sys/class/net/{}/address", tb.peer_if)]);
        let mac: [u8; 6] = mac_s
            .trim()
            .split(':')
            .map(|p| u8::from_str_radix(p, 16).expect("hex MAC"))
            .collect::<Vec<_>>()
            .try_into()
            .expect("6-byte MAC");
        crate::run_ok(
            "ip",
            &[
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                mac_s.trim(),
                "dev",
                &tb.host_if,
                "nud",
                "permanent",
            ],
        );
        // The host sends real segments, not GSO super-frames that only veth would carry whole,
        // with their checksums computed (no CHECKSUM_PARTIAL), and the peer sees them unmerged.
        crate::run_ok(
            "ethtool",
            &["-K", &tb.host_if, "tx", "off", "tso", "off", "gso", "off"],
        );
        tb.ns_ok("ethtool", &["-K", &tb.peer_if, "gro", "off"]);
        let peer_if = tb.peer_if.clone();
        let (tx, rx) = in_netns(&tb.ns, move || -> io::Result<(RawSender, OwnedFd)> {
            let tx = RawSender::open(&peer_if)?;
            let rx = open_rx(&peer_if)?;
            Ok((tx, rx))
        })
        .expect("enter netns")
        .expect("raw sockets in the netns");
        Peer {
            tx,
            rx,
            ip,
            mac,
            host_ip: tb.host_ip,
            host_mac: crate::mac_of(&tb.host_if),
            foreign_rsts: Default::default(),
            sent_rsts: Default::default(),
            t0: Instant::now(),
        }
    }

    /// Our timestamp clock (ms, never 0).
    pub fn tsval(&self) -> u32 {
        self.t0.elapsed().as_millis() as u32 + 1000
    }

    /// Sends one segment from `ip` to the host.
    pub fn send(&self, s: &Out) -> io::Result<()> {
        let mut opts = s.opts.clone();
        while opts.len() & 3 != 0 {
            opts.push(0);
        }
        let mut tcp = Vec::with_capacity(20 + opts.len() + s.payload.len());
        tcp.extend_from_slice(&s.sport.to_be_bytes());
        tcp.extend_from_slice(&s.dport.to_be_bytes());
        tcp.extend_from_slice(&s.seq.to_be_bytes());
        tcp.extend_from_slice(&s.ack.to_be_bytes());
        tcp.push((((20 + opts.len()) / 4) as u8) << 4);
        tcp.push(s.flags);
        tcp.extend_from_slice(&s.window.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(&opts);
        tcp.extend_from_slice(&s.payload);
        let mut pseudo = Vec::with_capacity(12 + tcp.len());
        pseudo.extend_from_slice(&self.ip.octets());
        pseudo.extend_from_slice(&self.host_ip.octets());
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&tcp);
        let c = checksum(&pseudo);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
        ip.extend_from_slice(&self.ip.octets());
        ip.extend_from_slice(&self.host_ip.octets());
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = Vec::with_capacity(14 + ip.len() + tcp.len());
        f.extend_from_slice(&self.host_mac);
        f.extend_from_slice(&self.mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&tcp);
        if s.flags & RST != 0 {
            self.sent_rsts
                .borrow_mut()
                .insert((s.sport, s.dport, s.seq));
        }
        self.tx.send(&f)
    }

    /// The next TCP segment from the host to `ip`, or `None` at `deadline`. Outgoing frames are
    /// not returned; RSTs among them are counted (ours and foreign ones).
    pub fn recv(&self, deadline: Instant) -> Option<Segment> {
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.rx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(60_000) as i32) };
            if n <= 0 {
                if Instant::now() >= deadline {
                    return None;
                }
                continue;
            }
            while let Some((len, outgoing)) = self.recv_frame(&mut buf) {
                let Some(s) = Segment::parse(&buf[..len], Instant::now()) else {
                    continue;
                };
                if outgoing {
                    let ours = self.sent_rsts.borrow().contains(&(s.sport, s.dport, s.seq));
                    if s.src == self.ip && s.has(RST) && !ours {
                        self.foreign_rsts.set(self.foreign_rsts.get() + 1);
                    }
                    continue;
                }
                if s.dst == self.ip && s.src == self.host_ip {
                    return Some(s);
                }
            }
        }
    }

    /// One frame without blocking: (length, outgoing).
    fn recv_frame(&self, buf: &mut [u8]) -> Option<(usize, bool)> {
        // SAFETY: all-zero sockaddr_ll is valid; recvfrom writes at most its size.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut sl = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `sa` are live and their sizes are given.
        let n = unsafe {
            libc::recvfrom(
                self.rx.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut sa as *mut libc::sockaddr_ll).cast(),
                &mut sl,
            )
        };
        if n <= 0 {
            return None;
        }
        Some((n as usize, sa.sll_pkttype == libc::PACKET_OUTGOING))
    }

    /// Throws away whatever is queued.
    pub fn drain(&self) {
        let mut buf = vec![0u8; 65536];
        while self.recv_frame(&mut buf).is_some() {}
    }
}

/// An AF_PACKET socket bound to `iface` of the calling thread's namespace, non-blocking.
fn open_rx(iface: &str) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            proto as i32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero sockaddr_ll is valid; the fields set describe the binding.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto;
    sa.sll_ifindex = ifindex;
    // SAFETY: `sa` is live and its size is given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let rcvbuf: libc::c_int = 4 << 20;
    // SAFETY: an int option of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&rcvbuf as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
    Ok(fd)
}

// ---------------------------------------------------------------------------------------------
// Targets: the server side.

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
trait Acceptor: Send + Sync {
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

// ---------------------------------------------------------------------------------------------
// Cases and their context.

/// What a case is expected to do on the stack (the kernel must always pass).
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    Pass,
    ExpectedFail { why: &'static str },
}

/// One conformance case.
pub struct Case {
    pub name: &'static str,
    /// The RFC section it checks.
    pub rfc: &'static str,
    pub body: fn(&mut Ctx) -> Result<(), String>,
    /// Expectation for the stack.
    pub stack: Expect,
}

/// Options of the SYN a handshake sends.
#[derive(Debug, Clone)]
pub struct SynOpts {
    pub mss: Option<u16>,
    pub sack: bool,
    pub ts: bool,
    pub wscale: Option<u8>,
    /// Raw window of the SYN (never scaled) and of the handshake's final ACK (scaled).
    pub window: u16,
}

impl Default for SynOpts {
    fn default() -> Self {
        Self {
            mss: Some(1460),
            sack: true,
            ts: true,
            wscale: None,
            window: 65535,
        }
    }
}

impl SynOpts {
    pub fn bytes(&self, tsval: u32) -> Vec<u8> {
        let mut v = Vec::new();
        if let Some(m) = self.mss {
            v.extend(opt::mss(m));
        }
        if self.sack {
            v.extend(opt::sack_ok());
        }
        if self.ts {
            v.extend(opt::ts(tsval, 0));
        }
        if let Some(s) = self.wscale {
            v.extend(opt::wscale(s));
        }
        v
    }
}

/// Bookkeeping of the connection under test (peer = us, server = the target).
#[derive(Debug, Clone, Default)]
pub struct Conn {
    /// Our port.
    pub sport: u16,
    /// Our initial sequence number.
    pub iss: u32,
    /// The server's initial sequence number (from its SYN-ACK).
    pub irs: u32,
    /// Our next sequence number.
    pub snd_nxt: u32,
    /// Next sequence number we expect from the server.
    pub rcv_nxt: u32,
    /// Raw window we advertise.
    pub window: u16,
    /// Timestamps negotiated; the server's latest TSval.
    pub ts: bool,
    pub ts_recent: u32,
    /// The TSval of the last segment we sent on this connection.
    pub last_tsval: u32,
    pub sack: bool,
    pub synack: Option<Segment>,
    /// The server's connection is gone (reset or fully closed): no RST at teardown.
    pub closed: bool,
}

/// What a case body works with.
pub struct Ctx<'a> {
    pub target: Target,
    pub peer: &'a Peer,
    /// The server port of this target.
    pub port: u16,
    pub conn: Conn,
    server: Option<Box<dyn ServerConn>>,
    pending_accept: Option<mpsc::Receiver<Result<Box<dyn ServerConn>, String>>>,
    acceptor: Arc<dyn Acceptor>,
    ports: &'a AtomicU16,
    /// Received segments not yet consumed (kept by `expect` for later expectations).
    backlog: VecDeque<Segment>,
    /// Segments to the peer that belong to other connections (other ports), in arrival order.
    pub others: Vec<Segment>,
    /// Data segments `recv_data` consumed, in arrival order.
    pub data_segs: Vec<Segment>,
    t0: Instant,
    trace: Vec<String>,
}

impl<'a> Ctx<'a> {
    /// A fresh source port (unique per testbed).
    pub fn fresh_port(&self) -> u16 {
        self.ports.fetch_add(1, Ordering::Relaxed)
    }

    pub fn note(&mut self, s: impl Into<String>) {
        let line = format!("{:>8.1}ms  {}", self.ms(), s.into());
        self.trace.push(line);
    }

    fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1e3
    }

    /// Sends a segment as given.
    pub fn send_out(&mut self, s: Out) -> Result<(), String> {
        self.note(format!(">> {s}"));
        if s.sport == self.conn.sport {
            if let Some((v, _)) = TcpOpts::parse(&s.opts).and_then(|o| o.ts) {
                self.conn.last_tsval = v;
            }
        }
        self.peer.send(&s).map_err(|e| format!("send: {e}"))
    }

    /// Sends a segment of the current connection with the given fields; `opts` None adds the
    /// timestamp option when negotiated.
    pub fn send(
        &mut self,
        flags: u8,
        seq: u32,
        ack: u32,
        payload: &[u8],
        opts: Option<Vec<u8>>,
    ) -> Result<(), String> {
        let opts = opts.unwrap_or_else(|| self.ts_opt());
        let s = Out {
            sport: self.conn.sport,
            dport: self.port,
            seq,
            ack,
            flags,
            window: self.conn.window,
            opts,
            payload: payload.to_vec(),
        };
        self.send_out(s)
    }

    /// The timestamp option for our next segment (empty without timestamps).
    pub fn ts_opt(&self) -> Vec<u8> {
        if self.conn.ts {
            opt::ts(self.peer.tsval(), self.conn.ts_recent)
        } else {
            Vec::new()
        }
    }

    /// Sends `payload` at SND.NXT with ACK|PSH and advances SND.NXT.
    pub fn send_data(&mut self, payload: &[u8]) -> Result<(), String> {
        let (seq, ack) = (self.conn.snd_nxt, self.conn.rcv_nxt);
        self.send(ACK | PSH, seq, ack, payload, None)?;
        self.conn.snd_nxt = seq.wrapping_add(payload.len() as u32);
        Ok(())
    }

    /// Sends a bare ACK of RCV.NXT.
    pub fn send_ack(&mut self) -> Result<(), String> {
        let (seq, ack) = (self.conn.snd_nxt, self.conn.rcv_nxt);
        self.send(ACK, seq, ack, &[], None)
    }

    /// The next segment of the current connection (ports match), from the backlog first.
    fn next_seg(&mut self, deadline: Instant) -> Option<Segment> {
        if let Some(s) = self.backlog.pop_front() {
            return Some(s);
        }
        loop {
            let s = self.peer.recv(deadline)?;
            if s.sport == self.port && s.dport == self.conn.sport {
                if let Some((v, _)) = s.opts.ts {
                    if self.conn.ts {
                        self.conn.ts_recent = v;
                    }
                }
                self.note(format!("<< {s}"));
                return Some(s);
            }
            self.note(format!("   (other) {s}"));
            self.others.push(s);
        }
    }

    /// Waits up to `timeout` for a segment of the connection matching `pred`; segments that do
    /// not match are skipped (and traced).
    pub fn expect(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Segment) -> bool,
    ) -> Result<Segment, String> {
        let deadline = Instant::now() + timeout;
        while let Some(s) = self.next_seg(deadline) {
            if pred(&s) {
                return Ok(s);
            }
        }
        Err(format!("no {what} within {timeout:?}"))
    }

    /// Fails if any segment of the connection matching `pred` arrives within `d`; others are
    /// skipped.
    pub fn expect_none(
        &mut self,
        d: Duration,
        what: &str,
        pred: impl Fn(&Segment) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + d;
        while let Some(s) = self.next_seg(deadline) {
            if pred(&s) {
                return Err(format!("unexpected {what}: {s}"));
            }
        }
        Ok(())
    }

    /// Collects every segment of the connection for `d` (without answering).
    pub fn collect(&mut self, d: Duration) -> Vec<Segment> {
        let deadline = Instant::now() + d;
        let mut v = Vec::new();
        while let Some(s) = self.next_seg(deadline) {
            v.push(s);
        }
        v
    }

    /// Puts a segment back so the next `expect` sees it first.
    pub fn unread(&mut self, s: Segment) {
        self.backlog.push_front(s);
    }

    /// Three-way handshake from a fresh port: SYN with `o`, expect SYN-ACK (ack = ISS+1), ACK;
    /// then accepts the server side on a helper thread. Returns the SYN-ACK.
    pub fn handshake(&mut self, o: SynOpts) -> Result<Segment, String> {
        let synack = self.syn_only(&o)?;
        self.conn.window = o.window;
        self.send_ack()?;
        self.accept()?;
        Ok(synack)
    }

    /// Sends a SYN from a fresh port and waits for the SYN-ACK; records ISS/IRS. No ACK.
    pub fn syn_only(&mut self, o: &SynOpts) -> Result<Segment, String> {
        let sport = self.fresh_port();
        let iss = 0x1000_0000u32
            .wrapping_mul(sport as u32 % 7 + 1)
            .wrapping_add(12345);
        self.conn = Conn {
            sport,
            iss,
            snd_nxt: iss.wrapping_add(1),
            window: o.window,
            ..Conn::default()
        };
        let tsval = self.peer.tsval();
        self.send(SYN, iss, 0, &[], Some(o.bytes(tsval)))?;
        let sa = self.expect(Duration::from_secs(3), "SYN-ACK", |s| s.has(SYN | ACK))?;
        if sa.ack != iss.wrapping_add(1) {
            return Err(format!("SYN-ACK acks {} (ISS+1 = {})", sa.ack, iss + 1));
        }
        self.conn.irs = sa.seq;
        self.conn.rcv_nxt = sa.seq.wrapping_add(1);
        self.conn.ts = o.ts && sa.opts.ts.is_some();
        self.conn.sack = o.sack && sa.opts.sack_ok;
        if let Some((v, _)) = sa.opts.ts {
            self.conn.ts_recent = v;
        }
        self.conn.synack = Some(sa.clone());
        Ok(sa)
    }

    /// Accepts the server side of the current connection (helper thread, 3 s). Connections from
    /// other ports that the listener hands out first are dropped and traced.
    pub fn accept(&mut self) -> Result<(), String> {
        self.accept_start(Some(self.conn.sport));
        self.accept_wait()
    }

    /// Starts the server application's accept on a helper thread, as a server blocked in accept
    /// before any SYN arrives. `want`: the peer port to wait for (others are dropped and traced);
    /// `None`: the first connection the listener hands out, and any accept error is a failure.
    /// Finish with [`Ctx::accept_wait`].
    pub fn accept_start(&mut self, want: Option<u16>) {
        let acceptor = self.acceptor.clone();
        let (tx, rx) = mpsc::channel::<Result<Box<dyn ServerConn>, String>>();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(3);
            let r = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break Err("accept timed out".to_string());
                }
                match acceptor.accept(left) {
                    Ok(c) => match (c.peer_port(), want) {
                        (Ok(p), Some(w)) if p == w => break Ok(c),
                        (_, None) => break Ok(c),
                        // Not ours: a leftover of an earlier exchange.
                        (other, _) => {
                            let _ = tx.send(Err(format!("skipped a connection from {other:?}")));
                        }
                    },
                    // A server loops over accept errors; ordinary cases do too, so that
                    // only the case about the listener fails on a broken accept queue.
                    Err(e) if want.is_some() && e.kind() != io::ErrorKind::TimedOut => {
                        let _ = tx.send(Err(format!("skipped an accept error: {e}")));
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => break Err(format!("accept: {e}")),
                }
            };
            let _ = tx.send(r);
        });
        self.pending_accept = Some(rx);
    }

    /// Waits for the accept started by [`Ctx::accept_start`]; the connection must be the
    /// current one (peer port = our port).
    pub fn accept_wait(&mut self) -> Result<(), String> {
        let rx = self
            .pending_accept
            .take()
            .ok_or("accept_wait without accept_start")?;
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(c)) => {
                    let port = c.peer_port();
                    if port.as_ref().ok() != Some(&self.conn.sport) {
                        return Err(format!(
                            "accept returned the connection from port {port:?}, not the live one \
                             from {}",
                            self.conn.sport
                        ));
                    }
                    self.server = Some(c);
                    return Ok(());
                }
                Ok(Err(m)) if m.starts_with("skipped") => self.note(format!("accept: {m}")),
                Ok(Err(m)) => return Err(m),
                Err(_) => return Err("accept did not return".into()),
            }
        }
    }

    /// The server side of the connection.
    pub fn server(&mut self) -> Result<&mut Box<dyn ServerConn>, String> {
        self.server
            .as_mut()
            .ok_or_else(|| "no accepted connection".to_string())
    }

    /// Takes the server side (to drop or reset it).
    pub fn take_server(&mut self) -> Option<Box<dyn ServerConn>> {
        self.server.take()
    }

    /// The server application writes `data` (all of it).
    pub fn app_write(&mut self, data: &[u8]) -> Result<(), String> {
        self.note(format!("app writes {} bytes", data.len()));
        self.server()?
            .write_all(data)
            .map_err(|e| format!("server write: {e}"))
    }

    /// The server application reads exactly `n` bytes within `timeout`.
    pub fn app_read_exact(&mut self, n: usize, timeout: Duration) -> Result<Vec<u8>, String> {
        let s = self.server()?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut v = vec![0u8; n];
        s.read_exact(&mut v)
            .map_err(|e| format!("server read of {n} bytes: {e}"))?;
        Ok(v)
    }

    /// One read by the server application, waiting up to `timeout`.
    pub fn app_read(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        let s = self.server().map_err(io::Error::other)?;
        s.set_read_timeout(Some(timeout))?;
        let mut v = vec![0u8; 65536];
        let n = s.read(&mut v)?;
        v.truncate(n);
        Ok(v)
    }

    /// Receives `n` bytes of in-order server data within `timeout`, ACKing each data segment.
    pub fn recv_data(&mut self, n: usize, timeout: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let Some(s) = self.next_seg(deadline) else {
                return Err(format!("received {} of {n} bytes", got.len()));
            };
            if s.payload.is_empty() {
                continue;
            }
            self.data_segs.push(s.clone());
            let off = self.conn.rcv_nxt.wrapping_sub(s.seq) as usize;
            if off < s.payload.len() {
                got.extend_from_slice(&s.payload[off..]);
                self.conn.rcv_nxt = s.seq.wrapping_add(s.payload.len() as u32);
            }
            self.send_ack()?;
        }
        Ok(got)
    }

    /// An echo round through the server application: we send, the app reads and writes it
    /// back, we receive it byte-exact.
    pub fn echo(&mut self, tag: &str) -> Result<(), String> {
        let data = format!("echo {tag} {}", self.conn.snd_nxt).into_bytes();
        self.send_data(&data)?;
        let got = self.app_read_exact(data.len(), Duration::from_secs(3))?;
        if got != data {
            return Err(format!("server read {got:?}, sent {data:?}"));
        }
        self.app_write(&got)?;
        let back = self.recv_data(data.len(), Duration::from_secs(3))?;
        if back != data {
            return Err(format!("echo returned {back:?}, sent {data:?}"));
        }
        Ok(())
    }

    /// Server-side sequence number of the next byte it sends (what it must ACK/RST with).
    pub fn server_nxt(&self) -> u32 {
        self.conn.rcv_nxt
    }

    /// Ends the case: a RST at RCV.NXT of the server for a connection that may still live, then
    /// drops the server side.
    fn teardown(&mut self) {
        if self.conn.sport != 0 && !self.conn.closed {
            let (seq, ack) = (self.conn.snd_nxt, self.conn.rcv_nxt);
            let _ = self.send(RST | ACK, seq, ack, &[], Some(Vec::new()));
        }
        self.server = None;
        self.conn = Conn::default();
    }
}

/// Asserts a condition inside a case body.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Running a family of cases.

#[derive(Debug, Clone)]
enum Outcome {
    Pass,
    Fail(String),
    XFail(&'static str),
    XPass,
}

impl Outcome {
    fn cell(&self) -> String {
        match self {
            Outcome::Pass => "PASS".into(),
            Outcome::Fail(_) => "FAIL".into(),
            Outcome::XFail(why) => format!("XFAIL ({why})"),
            Outcome::XPass => "XPASS (!)".into(),
        }
    }
}

/// Builds a testbed, a kernel listener and a stack listener, and runs every case first against
/// the kernel, then against the stack. Prints the table; panics on an unexpected FAIL.
pub fn run_family(family: &str, cases: &[Case]) {
    let tb = Testbed::new();
    loader_ok(&["attach", &tb.host_if, "--queue", "3"]);
    let peer = Peer::open(&tb);
    let kernel = std::net::TcpListener::bind(SocketAddr::from((tb.host_ip, KERNEL_PORT)))
        .expect("kernel listener");
    kernel.set_nonblocking(true).expect("non-blocking listener");
    let stack = xsk_stack::Stack::builder(&tb.host_if, 3)
        .control_socket(None)
        .start()
        .expect("stack starts");
    let stack_listener = stack.tcp_listen(STACK_PORT).expect("stack listens");
    let kernel: Arc<dyn Acceptor> = Arc::new(kernel);
    let stack_acc: Arc<dyn Acceptor> = Arc::new(stack_listener);
    let ports = AtomicU16::new(20000);
    let started = Instant::now();

    let mut results: Vec<(Outcome, Outcome)> = Vec::new();
    let mut details = Vec::new();
    for target in [Target::Kernel, Target::Stack] {
        let (port, acceptor) = match target {
            Target::Kernel => (KERNEL_PORT, kernel.clone()),
            Target::Stack => (STACK_PORT, stack_acc.clone()),
        };
        for (i, case) in cases.iter().enumerate() {
            peer.drain();
            let mut ctx = Ctx {
                target,
                peer: &peer,
                port,
                conn: Conn::default(),
                server: None,
                pending_accept: None,
                acceptor: acceptor.clone(),
                ports: &ports,
                backlog: VecDeque::new(),
                others: Vec::new(),
                data_segs: Vec::new(),
                t0: Instant::now(),
                trace: Vec::new(),
            };
            let t = Instant::now();
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.body)(&mut ctx)))
                    .unwrap_or_else(|p| {
                        Err(format!(
                            "panicked: {}",
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default()
                        ))
                    });
            ctx.teardown();
            let outcome = match (target, &r, case.stack) {
                (_, Ok(()), Expect::Pass) | (Target::Kernel, Ok(()), _) => Outcome::Pass,
                (Target::Stack, Ok(()), Expect::ExpectedFail { .. }) => Outcome::XPass,
                (Target::Stack, Err(_), Expect::ExpectedFail { why }) => Outcome::XFail(why),
                (_, Err(e), _) => Outcome::Fail(e.clone()),
            };
            eprintln!(
                "[{family}] {target:?} {} ({:.2}s): {}{}",
                case.name,
                t.elapsed().as_secs_f64(),
                outcome.cell(),
                r.as_ref()
                    .err()
                    .map(|e| format!(" — {e}"))
                    .unwrap_or_default()
            );
            if std::env::var_os("CONFORMANCE_TRACE").is_some() {
                eprintln!("{}", ctx.trace.join("\n"));
            }
            if let Err(e) = &r {
                let tail: Vec<_> = ctx.trace.iter().rev().take(40).rev().cloned().collect();
                details.push(format!(
                    "--- {family}/{} on {target:?}: {e}\n{}",
                    case.name,
                    tail.join("\n")
                ));
            }
            if target == Target::Kernel {
                results.push((outcome, Outcome::Pass));
            } else {
                results[i].1 = outcome;
            }
        }
    }
    if peer.foreign_rsts.get() > 0 {
        details.push(format!(
            "the peer kernel sent {} RST(s) from {}: it answers for the fake address",
            peer.foreign_rsts.get(),
            peer.ip
        ));
    }

    // The table.
    let w0 = cases.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
    let w1 = cases.iter().map(|c| c.rfc.len()).max().unwrap_or(3).max(3);
    let mut out = format!(
        "\n== conformance: {family} ({:.1} s) ==\n{:w0$} | {:w1$} | {:6} | stack\n",
        started.elapsed().as_secs_f64(),
        "case",
        "RFC",
        "kernel"
    );
    for (c, (k, s)) in cases.iter().zip(&results) {
        out.push_str(&format!(
            "{:w0$} | {:w1$} | {:6} | {}\n",
            c.name,
            c.rfc,
            k.cell(),
            s.cell()
        ));
    }
    eprintln!("{out}");
    for d in &details {
        eprintln!("{d}\n");
    }
    for (c, (_, s)) in cases.iter().zip(&results) {
        if matches!(s, Outcome::XPass) {
            eprintln!(
                "!!!!!!!! XPASS {family}/{}: expected to fail on the stack, passed: update the table !!!!!!!!",
                c.name
            );
        }
    }
    let failed: Vec<String> = cases
        .iter()
        .zip(&results)
        .flat_map(|(c, (k, s))| {
            let mut v = Vec::new();
            if let Outcome::Fail(e) = k {
                v.push(format!(
                    "{} on the kernel (the expectation is wrong): {e}",
                    c.name
                ));
            }
            if let Outcome::Fail(e) = s {
                v.push(format!("{} on the stack: {e}", c.name));
            }
            v
        })
        .collect();
    assert!(
        failed.is_empty() && peer.foreign_rsts.get() == 0,
        "{family}: unexpected failures:\n  {}",
        failed.join("\n  ")
    );
}
