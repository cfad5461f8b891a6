//! The raw TCP peer: an AF_PACKET sender and receiver inside the namespace.
#![allow(unsafe_code)]

use super::*;

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
