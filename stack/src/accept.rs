//! The accept backlog smoltcp lacks. A listener keeps a few sockets armed in LISTEN; each SYN
//! takes one. Sockets that left LISTEN are tracked through the handshake into a bounded queue of
//! established connections that `accept()` pops. With the queue full (or the shard at its
//! connection limit) no socket is armed, so smoltcp answers new SYNs with RST: a full backlog
//! refuses, it never silently drops. A handshake the peer resets (SYN → SYN-ACK → RST: every
//! SYN port scan) never reaches the queue: smoltcp puts that socket back into LISTEN, and it is
//! re-armed and counted. A connection is queued with its addresses, so `accept()` hands it out
//! even if it died while it waited (as Linux does; its first read then reports the reset).
//! Sans-IO: the caller passes the socket set and the time.
use std::{
    collections::VecDeque,
    task::Waker,
    time::{Duration, Instant},
};

use smoltcp::{
    iface::{SocketHandle, SocketSet},
    socket::tcp,
    wire::IpEndpoint,
};

/// An established connection waiting for `accept()`, with the addresses it had when its
/// handshake completed (a connection reset since has none left in smoltcp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub handle: SocketHandle,
    pub local: IpEndpoint,
    pub remote: IpEndpoint,
}

/// One listener's armed sockets, handshakes in flight and established connections.
#[derive(Debug, Default)]
pub struct AcceptQueue {
    pub(crate) listening: Vec<SocketHandle>,
    pub(crate) handshaking: Vec<(SocketHandle, Instant)>,
    pub(crate) ready: VecDeque<Ready>,
    waiters: Vec<Waker>,
}

/// What a [`AcceptQueue::track`] pass saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    /// Sockets that moved between stages.
    pub moved: bool,
    /// Connections that completed their handshake (passive opens).
    pub established: u64,
    /// Handshakes the peer reset (or that closed) before they completed: the socket went back
    /// to LISTEN and was re-armed, or was freed. nstat's `EmbryonicRsts`.
    pub aborted: u64,
}

impl AcceptQueue {
    /// Connections counted against the backlog: in handshake or waiting for accept().
    pub fn queued(&self) -> usize {
        self.handshaking.len() + self.ready.len()
    }

    /// Sockets armed in LISTEN.
    pub fn armed(&self) -> usize {
        self.listening.len()
    }

    /// How many sockets to keep armed: the SYNs one batch may take, within the backlog and the
    /// room `room` left under the shard's connection limit. While handshakes are in flight,
    /// that many extra sockets stay armed even with the backlog full: a new SYN then gets in and
    /// the oldest half-open handshake makes way for it ([`AcceptQueue::trim`]), which is what
    /// keeps a SYN flood from locking legitimate clients out.
    pub fn want(&self, depth: usize, backlog: usize, room: usize) -> usize {
        let spare = self.handshaking.len();
        depth
            .min(backlog.saturating_sub(self.queued()).max(spare))
            .min(room)
    }

    /// Brings the queue back within `backlog` by dropping the oldest half-open handshakes;
    /// returns how many went.
    pub fn trim(&mut self, sockets: &mut SocketSet<'static>, backlog: usize) -> usize {
        let over = self.queued().saturating_sub(backlog);
        self.evict_oldest(sockets, over)
    }

    /// Arms or withdraws listening sockets until exactly `want` are armed.
    pub fn arm(
        &mut self,
        sockets: &mut SocketSet<'static>,
        port: u16,
        want: usize,
        mut make: impl FnMut(&mut SocketSet<'static>) -> SocketHandle,
    ) {
        while self.listening.len() < want {
            // A closed socket in the set: fresh, or recycled from a finished connection.
            let h = make(sockets);
            if sockets.get_mut::<tcp::Socket>(h).listen(port).is_err() {
                sockets.remove(h);
                break;
            }
            self.listening.push(h);
        }
        while self.listening.len() > want {
            if let Some(h) = self.listening.pop() {
                sockets.remove(h);
            }
        }
    }

    /// Moves sockets along: LISTEN → handshake → ready (or freed if the handshake failed).
    pub fn track(&mut self, sockets: &mut SocketSet<'static>, now: Instant) -> Tracked {
        let mut t = Tracked::default();
        let mut i = 0;
        while i < self.listening.len() {
            let h = self.listening[i];
            if sockets.get::<tcp::Socket>(h).state() != tcp::State::Listen {
                self.listening.swap_remove(i);
                self.handshaking.push((h, now));
                t.moved = true;
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.handshaking.len() {
            let (h, _) = self.handshaking[i];
            let s = sockets.get::<tcp::Socket>(h);
            match (s.state(), s.local_endpoint(), s.remote_endpoint()) {
                (tcp::State::SynReceived, ..) => i += 1,
                // An RST in SYN-RECEIVED puts smoltcp's socket back into LISTEN on the same
                // port: it is a listening socket again, never a connection.
                (tcp::State::Listen, ..) => {
                    self.handshaking.swap_remove(i);
                    self.listening.push(h);
                    t.moved = true;
                    t.aborted += 1;
                }
                (tcp::State::Closed, ..) | (_, None, _) | (_, _, None) => {
                    self.handshaking.swap_remove(i);
                    sockets.remove(h);
                    t.moved = true;
                    t.aborted += 1;
                }
                (_, Some(local), Some(remote)) => {
                    self.handshaking.swap_remove(i);
                    self.ready.push_back(Ready {
                        handle: h,
                        local,
                        remote,
                    });
                    t.moved = true;
                    t.established += 1;
                }
            }
        }
        if t.established > 0 {
            for w in self.waiters.drain(..) {
                w.wake();
            }
        }
        t
    }

    /// Aborts handshakes older than `timeout` (half-open connections of slow or hostile
    /// clients) and returns them; the caller frees them once the RST is out.
    pub fn expire(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now: Instant,
        timeout: Duration,
    ) -> Vec<SocketHandle> {
        let mut expired = Vec::new();
        self.handshaking.retain(|&(h, since)| {
            if now.duration_since(since) >= timeout {
                sockets.get_mut::<tcp::Socket>(h).abort();
                expired.push(h);
                false
            } else {
                true
            }
        });
        expired
    }

    /// Drops up to `n` of the oldest handshakes (silently: no RST to a possibly spoofed source)
    /// and returns how many went.
    pub fn evict_oldest(&mut self, sockets: &mut SocketSet<'static>, n: usize) -> usize {
        let n = n.min(self.handshaking.len());
        self.handshaking.sort_unstable_by_key(|&(_, since)| since);
        for (h, _) in self.handshaking.drain(..n) {
            sockets.remove(h);
        }
        n
    }

    /// The next established connection, if any.
    pub fn pop(&mut self) -> Option<Ready> {
        self.ready.pop_front()
    }

    /// Wakes `w` when a connection becomes ready.
    pub fn wait(&mut self, w: &Waker) {
        if !self.waiters.iter().any(|x| x.will_wake(w)) {
            self.waiters.push(w.clone());
        }
    }

    /// Everything the queue holds that is not armed, for teardown.
    pub fn drain_connections(&mut self) -> Vec<SocketHandle> {
        self.handshaking
            .drain(..)
            .map(|(h, _)| h)
            .chain(self.ready.drain(..).map(|r| r.handle))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::{
        iface::{Config, Interface},
        phy::ChecksumCapabilities,
        phy::{Loopback, Medium},
        time::Instant as SmolInstant,
        wire::{
            HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
            TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
        },
    };

    const ADDR: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);

    struct Net {
        iface: Interface,
        dev: Loopback,
        sockets: SocketSet<'static>,
        t0: Instant,
        now: Instant,
    }

    impl Net {
        fn new() -> Self {
            let mut dev = Loopback::new(Medium::Ip);
            let mut cfg = Config::new(HardwareAddress::Ip);
            cfg.random_seed = 7;
            let mut iface = Interface::new(cfg, &mut dev, SmolInstant::ZERO);
            iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::Ipv4(ADDR), 24)).unwrap());
            let t0 = Instant::now();
            Self {
                iface,
                dev,
                sockets: SocketSet::new(Vec::new()),
                t0,
                now: t0,
            }
        }
        /// Simulated time: each step advances 1 ms.
        fn step(&mut self) {
            self.now += Duration::from_millis(1);
            let ts = SmolInstant::from_micros((self.now - self.t0).as_micros() as i64);
            self.iface.poll(ts, &mut self.dev, &mut self.sockets);
        }
        fn client(&mut self, local_port: u16) -> SocketHandle {
            let mut s = socket();
            s.connect(
                self.iface.context(),
                (IpAddress::Ipv4(ADDR), 80),
                local_port,
            )
            .unwrap();
            self.sockets.add(s)
        }
        fn state(&self, h: SocketHandle) -> tcp::State {
            self.sockets.get::<tcp::Socket>(h).state()
        }
    }

    fn socket() -> tcp::Socket<'static> {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 1024]),
            tcp::SocketBuffer::new(vec![0; 1024]),
        )
    }

    /// One shard loop iteration, as the runtime does it.
    fn cycle(
        net: &mut Net,
        q: &mut AcceptQueue,
        depth: usize,
        backlog: usize,
        room: usize,
    ) -> Tracked {
        let want = q.want(depth, backlog, room);
        q.arm(&mut net.sockets, 80, want, |s| s.add(socket()));
        net.step();
        q.track(&mut net.sockets, net.now)
    }

    #[test]
    fn connections_queue_up_to_the_backlog_and_the_rest_are_reset() {
        let mut net = Net::new();
        let mut q = AcceptQueue::default();
        let clients: Vec<_> = (0..5).map(|i| net.client(40000 + i)).collect();
        let mut established = 0;
        for _ in 0..50 {
            established += cycle(&mut net, &mut q, 8, 3, usize::MAX).established;
        }
        assert_eq!(established, 3);
        assert_eq!(q.ready.len(), 3);
        assert_eq!(q.armed(), 0, "a full queue arms nothing");
        let states: Vec<_> = clients.iter().map(|&h| net.state(h)).collect();
        assert_eq!(
            states
                .iter()
                .filter(|s| **s == tcp::State::Established)
                .count(),
            3,
            "{states:?}"
        );
        assert_eq!(
            states.iter().filter(|s| **s == tcp::State::Closed).count(),
            2,
            "refused with RST: {states:?}"
        );

        // accept() makes room: the next client gets in.
        let h = q.pop().unwrap().handle;
        assert_eq!(net.state(h), tcp::State::Established);
        let late = net.client(41000);
        for _ in 0..50 {
            cycle(&mut net, &mut q, 8, 3, usize::MAX);
        }
        assert_eq!(net.state(late), tcp::State::Established);
        assert_eq!(q.ready.len(), 3);
    }

    #[test]
    fn no_room_under_the_connection_limit_refuses() {
        let mut net = Net::new();
        let mut q = AcceptQueue::default();
        let c = net.client(40000);
        for _ in 0..20 {
            cycle(&mut net, &mut q, 8, 128, 0);
        }
        assert_eq!(net.state(c), tcp::State::Closed);
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn a_batch_takes_at_most_the_armed_depth() {
        // Why the device hands smoltcp at most `listen_depth` frames per poll: within one
        // batch, SYNs beyond the armed sockets are refused (here the loopback delivers all six
        // SYNs in one poll, with two sockets armed).
        let mut net = Net::new();
        let mut q = AcceptQueue::default();
        let clients: Vec<_> = (0..6).map(|i| net.client(42000 + i)).collect();
        let mut est = 0;
        for _ in 0..100 {
            est += cycle(&mut net, &mut q, 2, 64, usize::MAX).established;
        }
        let count = |st: tcp::State| clients.iter().filter(|&&h| net.state(h) == st).count();
        assert_eq!(
            (
                est,
                count(tcp::State::Established),
                count(tcp::State::Closed)
            ),
            (2, 2, 4)
        );
    }

    #[test]
    fn a_full_queue_of_handshakes_gives_way_oldest_first() {
        let mut net = Net::new();
        let mut q = AcceptQueue::default();
        q.arm(&mut net.sockets, 80, 3, |s| s.add(socket()));
        let t0 = net.now;
        let armed: Vec<_> = q.listening.drain(..).collect();
        for (i, h) in armed.into_iter().enumerate() {
            q.handshaking
                .push((h, t0 + Duration::from_millis(10 - i as u64)));
        }
        let oldest = q.handshaking[2].0;
        // Backlog 2 with 3 half-open: the oldest goes.
        assert_eq!(q.trim(&mut net.sockets, 2), 1);
        assert!(
            q.handshaking.iter().all(|&(h, _)| h != oldest),
            "the oldest went"
        );
        // A full backlog of half-open handshakes still arms spares for new SYNs.
        assert_eq!(q.want(8, 2, usize::MAX), 2);
        assert_eq!(q.trim(&mut net.sockets, 0), 2);
        assert_eq!(q.queued(), 0);
        // A full backlog of established connections arms nothing.
        assert_eq!(q.want(8, 0, usize::MAX), 0);
    }

    #[test]
    fn slow_handshakes_expire() {
        let mut net = Net::new();
        let mut q = AcceptQueue::default();
        q.arm(&mut net.sockets, 80, 1, |s| s.add(socket()));
        // Fake a socket stuck in SYN-RECEIVED: a client that never completes the handshake is
        // modelled by moving the armed socket into the handshake list directly.
        let h = q.listening.pop().unwrap();
        q.handshaking.push((h, net.now));
        assert!(q
            .expire(
                &mut net.sockets,
                net.now + Duration::from_millis(500),
                Duration::from_secs(1)
            )
            .is_empty());
        let expired = q.expire(
            &mut net.sockets,
            net.now + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert_eq!(expired, vec![h]);
        assert_eq!(q.queued(), 0);
    }

    /// A peer made of hand-made segments (what a port scanner or a raw socket sends), talking
    /// to the interface through the loopback device.
    struct RawPeer {
        port: u16,
        isn: u32,
    }

    const PEER: Ipv4Address = Ipv4Address::new(198, 18, 0, 2);

    impl RawPeer {
        fn send(&self, net: &mut Net, control: TcpControl, seq: u32, ack: Option<u32>) {
            use smoltcp::phy::{Device, TxToken};
            let tcp = TcpRepr {
                src_port: self.port,
                dst_port: 80,
                control,
                seq_number: TcpSeqNumber(seq as i32),
                ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
                window_len: 1024,
                window_scale: None,
                max_seg_size: Some(1460),
                sack_permitted: false,
                sack_ranges: [None, None, None],
                timestamp: None,
                payload: &[],
            };
            let ip = Ipv4Repr {
                src_addr: PEER,
                dst_addr: ADDR,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            };
            let caps = ChecksumCapabilities::default();
            let tx = net.dev.transmit(SmolInstant::ZERO).unwrap();
            tx.consume(ip.buffer_len() + tcp.buffer_len(), |buf| {
                let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
                ip.emit(&mut p, &caps);
                tcp.emit(
                    &mut TcpPacket::new_unchecked(p.payload_mut()),
                    &PEER.into(),
                    &ADDR.into(),
                    &caps,
                );
            });
        }

        /// Takes what the interface sent to the peer; returns (control, seq, ack) per segment.
        fn replies(net: &mut Net) -> Vec<(TcpControl, u32, Option<u32>)> {
            use smoltcp::phy::{Device, RxToken};
            let mut out = Vec::new();
            while let Some((rx, _)) = net.dev.receive(SmolInstant::ZERO) {
                rx.consume(|f| {
                    let Ok(ip) = Ipv4Packet::new_checked(f) else {
                        panic!("not IPv4: {f:02x?}")
                    };
                    if ip.dst_addr() != PEER {
                        return;
                    }
                    let t = TcpPacket::new_checked(ip.payload()).unwrap();
                    let r = TcpRepr::parse(
                        &t,
                        &ip.src_addr().into(),
                        &ip.dst_addr().into(),
                        // The loopback device leaves checksums to "hardware".
                        &ChecksumCapabilities::ignored(),
                    )
                    .unwrap();
                    out.push((
                        r.control,
                        r.seq_number.0 as u32,
                        r.ack_number.map(|a| a.0 as u32),
                    ));
                });
            }
            out
        }

        /// SYN in, SYN-ACK out: returns the listener's ISN.
        fn syn(&self, net: &mut Net, q: &mut AcceptQueue) -> u32 {
            let want = q.want(8, 8, usize::MAX);
            q.arm(&mut net.sockets, 80, want, |s| s.add(socket()));
            self.send(net, TcpControl::Syn, self.isn, None);
            net.step();
            q.track(&mut net.sockets, net.now);
            let r = Self::replies(net);
            assert_eq!(r.len(), 1, "{r:?}");
            assert_eq!(r[0].0, TcpControl::Syn);
            assert_eq!(r[0].2, Some(self.isn.wrapping_add(1)));
            r[0].1
        }
    }

    #[test]
    fn a_handshake_reset_by_the_peer_is_never_queued_and_the_socket_is_rearmed() {
        let mut net = Net::new();
        let mut q = AcceptQueue::default();
        let scanner = RawPeer {
            port: 50000,
            isn: 7000,
        };
        // SYN → SYN-ACK → RST (nmap -sS, or a client kernel with no socket for the SYN-ACK).
        let _ = scanner.syn(&mut net, &mut q);
        assert_eq!(q.handshaking.len(), 1);
        let armed_before = q.armed();
        scanner.send(&mut net, TcpControl::Rst, scanner.isn + 1, None);
        net.step();
        let t = q.track(&mut net.sockets, net.now);
        assert_eq!((t.established, t.aborted), (0, 1));
        assert_eq!(q.ready.len(), 0, "never queued for accept");
        assert_eq!(q.handshaking.len(), 0);
        assert_eq!(q.armed(), armed_before + 1, "the socket listens again");
        assert!(q
            .listening
            .iter()
            .all(|&h| net.state(h) == tcp::State::Listen));

        // And the listener goes on serving: a real client connects.
        let c = net.client(41000);
        for _ in 0..20 {
            cycle(&mut net, &mut q, 8, 8, usize::MAX);
        }
        assert_eq!(net.state(c), tcp::State::Established);
        let r = q.pop().expect("the real client is queued");
        assert_eq!(r.remote.port, 41000);
    }

    #[test]
    fn a_connection_reset_while_queued_is_still_handed_out_with_its_addresses() {
        let mut net = Net::new();
        let mut q = AcceptQueue::default();
        let peer = RawPeer {
            port: 50001,
            isn: 9000,
        };
        let ours = peer.syn(&mut net, &mut q);
        peer.send(
            &mut net,
            TcpControl::None,
            peer.isn + 1,
            Some(ours.wrapping_add(1)),
        );
        net.step();
        let t = q.track(&mut net.sockets, net.now);
        assert_eq!(t.established, 1);
        // Reset before anyone accepted it.
        peer.send(&mut net, TcpControl::Rst, peer.isn + 1, None);
        net.step();
        q.track(&mut net.sockets, net.now);
        let r = q.pop().expect("still handed out");
        assert_eq!(net.state(r.handle), tcp::State::Closed);
        assert_eq!(r.remote, IpEndpoint::new(PEER.into(), 50001));
        assert_eq!(r.local, IpEndpoint::new(ADDR.into(), 80));
    }
}
