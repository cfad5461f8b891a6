//! Segments: parsing what arrives (checked), building what we send, and TCP options.
#![allow(unsafe_code)]

use super::*;

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

/// The fields every segment line shows, sent or received.
#[allow(clippy::too_many_arguments)]
fn header(
    f: &mut fmt::Formatter<'_>,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    len: usize,
) -> fmt::Result {
    write!(
        f,
        "{sport}->{dport} [{}] seq={seq} ack={ack} win={window} len={len}",
        flag_str(flags)
    )
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        header(
            f,
            self.sport,
            self.dport,
            self.flags,
            self.seq,
            self.ack,
            self.window,
            self.payload.len(),
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
        header(
            f,
            self.sport,
            self.dport,
            self.flags,
            self.seq,
            self.ack,
            self.window,
            self.payload.len(),
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
