//! Building Ethernet/IPv4/TCP/UDP frames byte by byte, valid or deliberately broken, for the
//! XDP program's test runs and the malformed-input corpus.
use std::net::Ipv4Addr;

/// Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    for c in data.chunks(2) {
        acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A frame under construction. Defaults: a valid TCP SYN.
#[derive(Debug, Clone)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlans: Vec<u16>,
    pub ethertype: u16,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    pub ip_options: Vec<u8>,
    pub frag: u16,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub tcp_flags: u8,
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn tcp(src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16) -> Self {
        Self {
            dst_mac: [0xff; 6],
            src_mac: [2, 0, 0, 0, 0, 1],
            vlans: Vec::new(),
            ethertype: 0x0800,
            src,
            dst,
            ttl: 64,
            proto: 6,
            ip_options: Vec::new(),
            frag: 0x4000, // DF
            src_port,
            dst_port,
            seq: 1000,
            ack: 0,
            tcp_flags: 0x02,
            tcp_options: Vec::new(),
            payload: Vec::new(),
        }
    }

    pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16) -> Self {
        Self {
            proto: 17,
            ..Self::tcp(src, dst, src_port, dst_port)
        }
    }

    /// The L4 header and payload with a correct checksum.
    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.proto {
            6 => {
                let off = (20 + self.tcp_options.len()).div_ceil(4);
                l4.extend_from_slice(&self.src_port.to_be_bytes());
                l4.extend_from_slice(&self.dst_port.to_be_bytes());
                l4.extend_from_slice(&self.seq.to_be_bytes());
                l4.extend_from_slice(&self.ack.to_be_bytes());
                l4.push((off as u8) << 4);
                l4.push(self.tcp_flags);
                l4.extend_from_slice(&65535u16.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 0]);
                l4.extend_from_slice(&self.tcp_options);
                while l4.len() < off * 4 {
                    l4.push(0);
                }
            }
            17 => {
                l4.extend_from_slice(&self.src_port.to_be_bytes());
                l4.extend_from_slice(&self.dst_port.to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            _ => {}
        }
        l4.extend_from_slice(&self.payload);
        if self.proto == 6 || self.proto == 17 {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&self.src.octets());
            pseudo.extend_from_slice(&self.dst.octets());
            pseudo.extend_from_slice(&[0, self.proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            pseudo.extend_from_slice(&l4);
            let mut c = checksum(&pseudo);
            if self.proto == 17 && c == 0 {
                c = 0xffff;
            }
            let at = if self.proto == 6 { 16 } else { 6 };
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        l4
    }

    /// The whole frame, every length and checksum correct.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for v in &self.vlans {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&self.ethertype.to_be_bytes());
        let l4 = self.l4();
        let ihl = (20 + self.ip_options.len()).div_ceil(4);
        let mut ip = vec![0x40 | ihl as u8, 0];
        ip.extend_from_slice(&((ihl * 4 + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0x12, 0x34]);
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.ip_options);
        while ip.len() < ihl * 4 {
            ip.push(0);
        }
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }

    /// Offset of the IPv4 header in the built frame.
    pub fn ip_offset(&self) -> usize {
        14 + 4 * self.vlans.len()
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce from the seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
