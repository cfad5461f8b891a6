//! Seeded property tests of the ingress path without root or a NIC: random and mutated frames go
//! through the same validation the device applies (`wire::check_rx`, destination and martian
//! checks) and the accepted ones into smoltcp with TCP and UDP sockets open. Nothing may panic,
//! and everything smoltcp sends goes to the source of a packet it accepted (no reflection to a
//! third party). A stable-Rust stand-in for cargo-fuzz, which needs nightly.
use std::collections::{HashSet, VecDeque};

use smoltcp::{
    iface::{Config, Interface, SocketSet},
    phy::{self, Checksum, DeviceCapabilities, Medium},
    socket::{tcp, udp},
    time::Instant,
    wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint, Ipv4Address},
};

use crate::wire::{self, RxKind};

const OURS: [u8; 4] = [198, 18, 0, 1];

#[derive(Default)]
struct Queue {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}

impl phy::Device for Queue {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = 1500;
        c.checksum.ipv4 = Checksum::Tx;
        c.checksum.tcp = Checksum::Tx;
        c.checksum.udp = Checksum::Tx;
        c
    }
}

struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

fn csum(data: &[u8]) -> u16 {
    let mut a: u32 = 0;
    for c in data.chunks(2) {
        a += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while a > 0xffff {
        a = (a & 0xffff) + (a >> 16);
    }
    !(a as u16)
}

/// A valid IPv4 packet from `src` to us: TCP (with `flags`) to port 80, or UDP to port 53.
fn packet(src: [u8; 4], tcp: bool, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut l4 = if tcp {
        let mut t = vec![
            0x9c, 0x40, 0, 80, 0, 0, 0x10, 0, 0, 0, 0, 0, 0x50, flags, 0x20, 0, 0, 0, 0, 0,
        ];
        t.extend_from_slice(payload);
        t
    } else {
        let mut u = vec![0x9c, 0x40, 0, 53, 0, (8 + payload.len()) as u8, 0, 0];
        u.extend_from_slice(payload);
        u
    };
    let proto = if tcp { 6 } else { 17 };
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&OURS);
    pseudo.extend_from_slice(&[0, proto, 0, l4.len() as u8]);
    pseudo.extend_from_slice(&l4);
    let c = csum(&pseudo);
    let at = if tcp { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    let total = 20 + l4.len();
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        proto,
        0,
        0,
    ];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&OURS);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&l4);
    ip
}

/// The device's admission rule, without the XSK around it.
fn admit(p: &[u8]) -> bool {
    matches!(
        wire::check_rx(p),
        Ok(RxKind::Tcp { .. } | RxKind::Udp { .. } | RxKind::Other)
    ) && p[16..20] == OURS
        && !wire::martian_source([p[12], p[13], p[14], p[15]], OURS)
}

#[test]
fn random_and_mutated_ingress_never_panics_nor_reflects() {
    let mut dev = Queue::default();
    let mut cfg = Config::new(HardwareAddress::Ip);
    cfg.random_seed = 1;
    let mut iface = Interface::new(cfg, &mut dev, Instant::ZERO);
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::from(OURS)), 24))
            .unwrap()
    });
    iface
        .routes_mut()
        .add_default_ipv4_route(Ipv4Address::from(OURS))
        .unwrap();
    let mut sockets = SocketSet::new(Vec::new());
    for _ in 0..4 {
        let mut t = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 2048]),
            tcp::SocketBuffer::new(vec![0; 2048]),
        );
        t.listen(80).unwrap();
        sockets.add(t);
    }
    let mut u = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
    );
    u.bind(IpListenEndpoint {
        addr: None,
        port: 53,
    })
    .unwrap();
    sockets.add(u);

    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut accepted_sources: HashSet<[u8; 4]> = HashSet::new();
    let (mut admitted, mut refused) = (0u32, 0u32);
    for i in 0..40_000u64 {
        let src = [198, 18, 0, 2 + rng.below(50) as u8];
        let tcp = rng.below(2) == 0;
        let flags = [0x02, 0x10, 0x18, 0x11, 0x04, 0x14, 0x03, 0x06, 0xff, 0][rng.below(10)];
        let mut p = packet(src, tcp, flags, &[b'x'; 7][..rng.below(8)]);
        match rng.below(4) {
            0 => {}
            1 => {
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(p.len());
                    p[at] = rng.next_u64() as u8;
                }
            }
            2 => p.truncate(rng.below(p.len() + 1)),
            _ => p = (0..rng.below(80)).map(|_| rng.next_u64() as u8).collect(),
        }
        if admit(&p) {
            admitted += 1;
            accepted_sources.insert([p[12], p[13], p[14], p[15]]);
            dev.rx.push_back(p);
        } else {
            refused += 1;
        }
        if i % 16 == 0 {
            iface.poll(Instant::from_millis(i as i64), &mut dev, &mut sockets);
            // Drain what the sockets received so they keep accepting.
            for (_, s) in sockets.iter_mut() {
                if let smoltcp::socket::Socket::Udp(u) = s {
                    while u.recv().is_ok() {}
                }
            }
            for out in dev.tx.drain(..) {
                assert!(out.len() >= 20, "a runt was sent");
                let dst = [out[16], out[17], out[18], out[19]];
                assert_eq!(&out[12..16], &OURS, "sent from our address");
                assert!(
                    accepted_sources.contains(&dst),
                    "reply to {dst:?}, which never sent us an accepted packet"
                );
            }
        }
    }
    assert!(
        admitted > 5_000 && refused > 5_000,
        "both paths exercised: {admitted} admitted, {refused} refused"
    );
}
