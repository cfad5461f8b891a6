//! Checked parsing of the untrusted bytes the stack receives, and of what it sends, for
//! accounting: IPv4/TCP/UDP header sanity and checksums (verified here, once, so every bad
//! packet is counted under its reason), and the facts the nstat-style counters need.

/// Why a received IPv4 packet is not handed to smoltcp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxDrop {
    /// Truncated header, IHL < 5, total length beyond the frame or shorter than the header,
    /// bad TCP data offset, or a UDP length that does not fit.
    Malformed,
    /// IPv4 header checksum wrong.
    BadIpChecksum,
    /// TCP or UDP checksum wrong.
    BadL4Checksum,
    /// An IPv4 fragment (the stack does not reassemble; the XDP program never steers them).
    Fragment,
}

/// What a valid received packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxKind {
    Tcp { dst_port: u16, flags: u8 },
    Udp { dst_port: u16, payload: usize },
    Other,
}

/// What a transmitted packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxKind {
    /// A TCP segment: ports, remote address, sequence number, sequence space it takes.
    Tcp {
        src_port: u16,
        dst: [u8; 4],
        dst_port: u16,
        seq: u32,
        seq_len: u32,
        flags: u8,
    },
    Udp,
    /// ICMP destination unreachable, port unreachable: a datagram to a port nobody bound.
    IcmpPortUnreachable,
    Other,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// One's-complement sum of `data` (as big-endian 16-bit words) added to `acc`.
fn sum(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes(c.try_into().expect("8 bytes"));
        acc += (v >> 48) + ((v >> 32) & 0xffff) + ((v >> 16) & 0xffff) + (v & 0xffff);
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u16::from_be_bytes([p[0], p[1]]) as u64;
    }
    if let [b] = pairs.remainder() {
        acc += (*b as u64) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
/// The Internet checksum of `data` (RFC 1071); a buffer that includes its own correct checksum
/// sums to 0xffff.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Validates a received IPv4 packet (`ip` may carry Ethernet padding past its total length).
pub fn check_rx(ip: &[u8]) -> Result<RxKind, RxDrop> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Err(RxDrop::Malformed);
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let total = be16(ip, 2) as usize;
    if ihl < 20 || total < ihl || total > ip.len() {
        return Err(RxDrop::Malformed);
    }
    if fold(sum(0, &ip[..ihl])) != 0xffff {
        return Err(RxDrop::BadIpChecksum);
    }
    if be16(ip, 6) & 0x3fff != 0 {
        return Err(RxDrop::Fragment);
    }
    let proto = ip[9];
    let l4 = &ip[ihl..total];
    let pseudo = |len: usize| {
        let mut acc = sum(0, &ip[12..20]);
        acc += proto as u64 + len as u64;
        acc
    };
    match proto {
        6 => {
            if l4.len() < 20 {
                return Err(RxDrop::Malformed);
            }
            let off = ((l4[12] >> 4) as usize) * 4;
            if off < 20 || off > l4.len() || !tcp_options_ok(&l4[20..off]) {
                return Err(RxDrop::Malformed);
            }
            let flags = l4[13];
            // SYN with FIN or RST is no legitimate segment (scanner fingerprints).
            if flags & TCP_SYN != 0 && flags & (TCP_FIN | TCP_RST) != 0 {
                return Err(RxDrop::Malformed);
            }
            if fold(sum(pseudo(l4.len()), l4)) != 0xffff {
                return Err(RxDrop::BadL4Checksum);
            }
            Ok(RxKind::Tcp {
                dst_port: be16(l4, 2),
                flags,
            })
        }
        17 => {
            if l4.len() < 8 {
                return Err(RxDrop::Malformed);
            }
            let ulen = be16(l4, 4) as usize;
            if ulen < 8 || ulen > l4.len() {
                return Err(RxDrop::Malformed);
            }
            // A zero UDP checksum means "none" over IPv4.
            if be16(l4, 6) != 0 && fold(sum(pseudo(ulen), &l4[..ulen])) != 0xffff {
                return Err(RxDrop::BadL4Checksum);
            }
            Ok(RxKind::Udp {
                dst_port: be16(l4, 2),
                payload: ulen - 8,
            })
        }
        _ => Ok(RxKind::Other),
    }
}

/// TCP options are a list of (kind, length, data) with single-byte NOP and EOL: every length
/// must be at least 2 and stay inside the header.
fn tcp_options_ok(opts: &[u8]) -> bool {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return true,
            1 => i += 1,
            _ => {
                let Some(&len) = opts.get(i + 1) else {
                    return false;
                };
                if len < 2 || i + len as usize > opts.len() {
                    return false;
                }
                i += len as usize;
            }
        }
    }
    true
}

/// Whether a source address can never be a real peer (RFC 1122 martians) or is our own.
pub fn martian_source(src: [u8; 4], ours: [u8; 4]) -> bool {
    src == ours || src[0] == 0 || src[0] == 127 || src[0] >= 224 || src == [255; 4]
}

/// Classifies a packet smoltcp is sending (trusted bytes, still read with bounds checks).
pub fn classify_tx(ip: &[u8]) -> TxKind {
    if ip.len() < 20 {
        return TxKind::Other;
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let total = (be16(ip, 2) as usize).min(ip.len());
    let Some(l4) = ip.get(ihl..total) else {
        return TxKind::Other;
    };
    match ip[9] {
        6 if l4.len() >= 20 => {
            let off = ((l4[12] >> 4) as usize) * 4;
            let flags = l4[13];
            let data = l4.len().saturating_sub(off) as u32;
            let seq_len = data + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
            TxKind::Tcp {
                src_port: be16(l4, 0),
                dst: [ip[16], ip[17], ip[18], ip[19]],
                dst_port: be16(l4, 2),
                seq: u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
                seq_len,
                flags,
            }
        }
        17 => TxKind::Udp,
        1 if l4.len() >= 2 && l4[0] == 3 && l4[1] == 3 => TxKind::IcmpPortUnreachable,
        _ => TxKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid IPv4/UDP packet 198.18.0.2:5000 -> 198.18.0.1:9000 with payload "hello".
    fn udp_packet() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 33, 0, 1, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 18, 0, 1, 0x13, 0x88,
            0x23, 0x28, 0, 13, 0, 0,
        ];
        p.extend_from_slice(b"hello");
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, 17, 0, 13]);
        pseudo.extend_from_slice(&p[20..]);
        let c = checksum(&pseudo);
        p[26..28].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn tcp_packet(flags: u8, payload: &[u8]) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0x40,
            0,
            64,
            6,
            0,
            0,
            198,
            18,
            0,
            1,
            198,
            18,
            0,
            2,
        ];
        p.extend_from_slice(&[
            0x1f, 0x90, 0xc3, 0x50, 0, 0, 0x10, 0, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        p.extend_from_slice(payload);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, 6, 0, (total - 20) as u8]);
        pseudo.extend_from_slice(&p[20..]);
        let c = checksum(&pseudo);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071's example words 0001 f203 f4f5 f6f7 sum to ddf2 (checksum 220d).
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // Odd length pads with a zero byte.
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn valid_packets_pass_with_padding() {
        let mut p = udp_packet();
        assert_eq!(
            check_rx(&p),
            Ok(RxKind::Udp {
                dst_port: 9000,
                payload: 5
            })
        );
        p.extend_from_slice(&[0; 13]); // Ethernet minimum-size padding
        assert!(check_rx(&p).is_ok());
        let t = tcp_packet(TCP_SYN, b"");
        assert_eq!(
            check_rx(&t),
            Ok(RxKind::Tcp {
                dst_port: 50000,
                flags: TCP_SYN
            })
        );
    }

    #[test]
    fn each_defect_is_named() {
        let good = udp_packet();
        let mut bad = good.clone();
        bad[28] ^= 1; // payload bit flip
        assert_eq!(check_rx(&bad), Err(RxDrop::BadL4Checksum));
        let mut bad = good.clone();
        bad[8] = 1; // TTL changed without fixing the header checksum
        assert_eq!(check_rx(&bad), Err(RxDrop::BadIpChecksum));
        let mut bad = good.clone();
        bad[0] = 0x44; // IHL 4
        assert_eq!(check_rx(&bad), Err(RxDrop::Malformed));
        let mut bad = good.clone();
        bad[3] = 200; // total length past the frame
        assert_eq!(check_rx(&bad), Err(RxDrop::Malformed));
        let mut bad = good.clone();
        bad[6] = 0x20; // MF
        let c = {
            bad[10] = 0;
            bad[11] = 0;
            checksum(&bad[..20])
        };
        bad[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(check_rx(&bad), Err(RxDrop::Fragment));
        assert_eq!(check_rx(&good[..19]), Err(RxDrop::Malformed));
        let mut t = tcp_packet(TCP_ACK, b"x");
        t[32] = 0x40; // data offset 16 bytes
        assert_eq!(check_rx(&t), Err(RxDrop::Malformed));
    }

    #[test]
    fn tcp_checksums_are_verified() {
        let good = tcp_packet(TCP_ACK, b"payload");
        assert!(matches!(check_rx(&good), Ok(RxKind::Tcp { .. })));
        // A flipped bit anywhere the TCP checksum covers: payload, header, pseudo-header.
        for (at, what) in [
            (40, "payload"),
            (21, "source port"),
            (27, "sequence number"),
            (15, "source address"),
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            if at < 20 {
                // Keep the IPv4 header checksum right, so only the TCP one can catch it.
                bad[10] = 0;
                bad[11] = 0;
                let c = checksum(&bad[..20]);
                bad[10..12].copy_from_slice(&c.to_be_bytes());
            }
            assert_eq!(check_rx(&bad), Err(RxDrop::BadL4Checksum), "{what}");
        }
    }

    #[test]
    fn tcp_options_and_flag_combinations() {
        let mut t = tcp_packet(TCP_SYN | TCP_FIN, b"");
        assert_eq!(check_rx(&t), Err(RxDrop::Malformed));
        t = tcp_packet(TCP_SYN | TCP_RST, b"");
        assert_eq!(check_rx(&t), Err(RxDrop::Malformed));
        assert!(tcp_options_ok(&[2, 4, 5, 0xb4, 1, 1, 0, 9]));
        assert!(!tcp_options_ok(&[2, 0, 0, 0]), "zero length");
        assert!(!tcp_options_ok(&[1, 8, 10, 1]), "overlong");
        assert!(!tcp_options_ok(&[1, 1, 1, 3]), "length byte missing");
        assert!(martian_source([0, 0, 0, 0], [198, 18, 0, 1]));
        assert!(martian_source([224, 0, 0, 1], [198, 18, 0, 1]));
        assert!(martian_source([198, 18, 0, 1], [198, 18, 0, 1]));
        assert!(!martian_source([198, 18, 0, 2], [198, 18, 0, 1]));
    }

    #[test]
    fn no_input_panics() {
        // Every prefix and every single-byte corruption of valid packets.
        for p in [udp_packet(), tcp_packet(TCP_SYN | TCP_ACK, b"payload")] {
            for n in 0..=p.len() {
                let _ = check_rx(&p[..n]);
                let _ = classify_tx(&p[..n]);
            }
            for i in 0..p.len() {
                for v in [0u8, 0xff, 0x0f, 0xf0] {
                    let mut q = p.clone();
                    q[i] = v;
                    let _ = check_rx(&q);
                    let _ = classify_tx(&q);
                }
            }
        }
    }

    #[test]
    fn tx_classification() {
        match classify_tx(&tcp_packet(TCP_SYN, b"")) {
            TxKind::Tcp {
                seq_len: 1,
                src_port: 8080,
                dst_port: 50000,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
        match classify_tx(&tcp_packet(TCP_ACK | TCP_FIN, b"abc")) {
            TxKind::Tcp { seq_len: 4, .. } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(classify_tx(&udp_packet()), TxKind::Udp);
    }
}
