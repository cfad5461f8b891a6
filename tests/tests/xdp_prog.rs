//! The XDP program under BPF_PROG_TEST_RUN: crafted frames at every header boundary and
//! seeded random frames, run as if they arrived on a queue with an XSK (and on one without).
//! The verdict is only ever PASS or REDIRECT, REDIRECT exactly when a reference parser in this
//! file says a rule matches, and the counters add up. Root only.

use std::net::Ipv4Addr;

use steer_bpf::{sys, QueueCounters, Steering};
use testbed::{
    frames::{Frame, Rng},
    loader_ok, require_root,
    xsk::XskReceiver,
    Testbed,
};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 9);

/// What the program should do, computed independently: steer iff an untagged, unfragmented
/// IPv4 TCP/UDP frame with complete headers matches a rule (exact address first, then any).
fn reference(frame: &[u8], rules: &[(u8, u16, Option<Ipv4Addr>)]) -> bool {
    let mut off = 12;
    let mut tagged = false;
    let mut ethertype = match frame.get(12..14) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => return false,
    };
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        tagged = true;
        off += 4;
        ethertype = match frame.get(off..off + 2) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]),
            None => return false,
        };
    }
    let ip_at = off + 2;
    let Some(ip) = frame.get(ip_at..ip_at + 20) else {
        return false;
    };
    if ethertype != 0x0800 || ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return false;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if frame.len() < ip_at + ihl || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return false;
    }
    let proto = ip[9];
    let l4 = ip_at + ihl;
    let need = match proto {
        6 => 20,
        17 => 8,
        _ => return false,
    };
    let Some(h) = frame.get(l4..l4 + need) else {
        return false;
    };
    let port = u16::from_be_bytes([h[2], h[3]]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let hit = rules
        .iter()
        .any(|&(p, rp, a)| p == proto && rp == port && (a.is_none() || a == Some(dst)));
    hit && !tagged
}

struct Bench {
    tb: Testbed,
    steering: Steering,
    prog: std::os::fd::OwnedFd,
    ifindex: u32,
    rules: Vec<(u8, u16, Option<Ipv4Addr>)>,
    _xsk: XskReceiver,
}

impl Bench {
    fn new() -> Self {
        let tb = Testbed::new();
        loader_ok(&[
            "attach",
            &tb.host_if,
            "--queue",
            "3",
            "--tcp",
            "8080",
            "--udp",
            "9000",
        ]);
        loader_ok(&[
            "rule",
            "add",
            &tb.host_if,
            "--tcp",
            "7000",
            "--ip",
            &tb.host_ip.to_string(),
        ]);
        let rules = vec![
            (6, 8080, None),
            (17, 9000, None),
            (6, 7000, Some(tb.host_ip)),
        ];
        let xsk = XskReceiver::bind(&tb.host_if, 3).expect("bind XSK");
        let steering = Steering::open(&tb.host_if, None).unwrap();
        let prog = steering.program_fd().unwrap();
        let ifindex = sys::ifindex(&tb.host_if).unwrap();
        Self {
            tb,
            steering,
            prog,
            ifindex,
            rules,
            _xsk: xsk,
        }
    }
    fn run(&self, frame: &[u8], queue: u32) -> u32 {
        use std::os::fd::AsFd;
        sys::xdp_test_run_on(self.prog.as_fd(), frame, self.ifindex, queue)
            .unwrap_or_else(|e| panic!("test run of {} bytes: {e}", frame.len()))
    }
    fn counters(&self, q: u32) -> QueueCounters {
        self.steering.counters(q).unwrap()
    }
    /// Runs on queue 3 (XSK present) and checks the verdict against the reference.
    fn check(&self, frame: &[u8]) -> u32 {
        let v = self.run(frame, 3);
        assert!(
            v == XDP_PASS || v == XDP_REDIRECT,
            "verdict {v} for {frame:02x?}"
        );
        let want = if reference(frame, &self.rules) {
            XDP_REDIRECT
        } else {
            XDP_PASS
        };
        assert_eq!(v, want, "frame {frame:02x?}");
        v
    }
}

#[test]
fn crafted_frames_and_every_header_boundary() {
    if !require_root("crafted_frames_and_every_header_boundary") {
        return;
    }
    let b = Bench::new();
    let src = b.tb.peer_ip;
    let host = b.tb.host_ip;
    let before = b.counters(3);
    let mut runs = 0u64;
    let mut redirects = 0u64;
    let cases: Vec<(&str, Frame, bool)> = vec![
        (
            "tcp 8080 any-address rule",
            Frame::tcp(src, OTHER, 40000, 8080),
            true,
        ),
        ("udp 9000", Frame::udp(src, host, 40000, 9000), true),
        (
            "tcp 7000 to the rule's address",
            Frame::tcp(src, host, 40000, 7000),
            true,
        ),
        (
            "tcp 7000 to another address",
            Frame::tcp(src, OTHER, 40000, 7000),
            false,
        ),
        (
            "udp 8080 (rule is tcp)",
            Frame::udp(src, host, 40000, 8080),
            false,
        ),
        ("tcp 8081", Frame::tcp(src, host, 40000, 8081), false),
        (
            "tcp 8080 with IP options",
            Frame {
                ip_options: vec![1; 12],
                ..Frame::tcp(src, host, 1, 8080)
            },
            true,
        ),
        (
            "tcp 8080 max IHL",
            Frame {
                ip_options: vec![1; 40],
                ..Frame::tcp(src, host, 1, 8080)
            },
            true,
        ),
        (
            "first fragment",
            Frame {
                frag: 0x2000,
                ..Frame::tcp(src, host, 1, 8080)
            },
            false,
        ),
        (
            "later fragment",
            Frame {
                frag: 0x0010,
                ..Frame::tcp(src, host, 1, 8080)
            },
            false,
        ),
        (
            "one VLAN tag",
            Frame {
                vlans: vec![5],
                ..Frame::tcp(src, host, 1, 8080)
            },
            false,
        ),
        (
            "two VLAN tags",
            Frame {
                vlans: vec![5, 6],
                ..Frame::udp(src, host, 1, 9000)
            },
            false,
        ),
        (
            "ARP ethertype",
            Frame {
                ethertype: 0x0806,
                ..Frame::tcp(src, host, 1, 8080)
            },
            false,
        ),
        (
            "ICMP",
            Frame {
                proto: 1,
                ..Frame::tcp(src, host, 1, 8080)
            },
            false,
        ),
    ];
    for (name, f, steer) in &cases {
        let frame = f.build();
        let v = b.check(&frame);
        assert_eq!(v == XDP_REDIRECT, *steer, "{name}");
        runs += 1;
        redirects += u64::from(v == XDP_REDIRECT);
        // Every truncation of every case: never a read past the end, never steered unless the
        // headers the program needs are all there.
        for len in 14..frame.len() {
            let v = b.check(&frame[..len]);
            runs += 1;
            redirects += u64::from(v == XDP_REDIRECT);
        }
        // The same frame on a queue without this attachment's socket is never redirected.
        assert_eq!(b.run(&frame, 1), XDP_PASS, "{name} on queue 1");
    }
    // IHL below 5 and a version other than 4.
    for (name, at, val) in [
        ("IHL 4", 14, 0x44u8),
        ("IHL 0", 14, 0x40),
        ("IPv6 version", 14, 0x65),
    ] {
        let mut frame = Frame::tcp(src, host, 1, 8080).build();
        frame[at] = val;
        assert_eq!(b.check(&frame), XDP_PASS, "{name}");
        runs += 1;
    }
    // Frames shorter than an Ethernet header are refused by the kernel before the program runs.
    for len in 0..14 {
        use std::os::fd::AsFd;
        assert!(
            sys::xdp_test_run_on(b.prog.as_fd(), &vec![0u8; len], b.ifindex, 3).is_err(),
            "len {len}"
        );
    }
    let after = b.counters(3);
    let d = after.delta(&before);
    assert_eq!(d.seen, runs, "{d:?}");
    assert_eq!(d.redirected, redirects, "{d:?}");
    assert_eq!(d.seen, d.redirected + d.passed, "{d:?}");
    assert!(
        d.malformed > 0 && d.fragments >= 2 && d.not_ipv4 > 0,
        "{d:?}"
    );
    assert_eq!((d.vlan, d.no_xsk), (2, 0), "{d:?}");
    let q1 = b.counters(1);
    // 5 steerable cases plus the 2 tagged ones, which match but stay with the kernel.
    assert_eq!(
        (q1.matched, q1.no_xsk, q1.vlan, q1.redirected),
        (7, 5, 2, 0),
        "matched on queue 1, passed: {q1:?}"
    );
}

#[test]
fn random_frames_are_only_passed_or_steered_as_the_rules_say() {
    if !require_root("random_frames_are_only_passed_or_steered_as_the_rules_say") {
        return;
    }
    let b = Bench::new();
    let mut rng = Rng::new(0x5eed_1234);
    let before = b.counters(3);
    let (mut runs, mut redirects) = (0u64, 0u64);
    let templates = [
        Frame::tcp(b.tb.peer_ip, b.tb.host_ip, 1000, 8080).build(),
        Frame::udp(b.tb.peer_ip, b.tb.host_ip, 1000, 9000).build(),
        Frame::tcp(b.tb.peer_ip, b.tb.host_ip, 1000, 7000).build(),
        Frame {
            vlans: vec![7],
            ..Frame::tcp(b.tb.peer_ip, b.tb.host_ip, 1000, 8080)
        }
        .build(),
    ];
    for i in 0..6000 {
        let frame = match i % 3 {
            // Pure noise of any length an Ethernet frame can have here.
            0 => {
                let n = 14 + rng.below(120) as usize;
                rng.bytes(n)
            }
            // A valid template with a few bytes overwritten.
            1 => {
                let mut f = templates[rng.below(templates.len() as u64) as usize].clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(f.len() as u64) as usize;
                    f[at] = rng.next_u64() as u8;
                }
                f
            }
            // A valid template cut anywhere.
            _ => {
                let f = &templates[rng.below(templates.len() as u64) as usize];
                f[..14 + rng.below((f.len() - 13) as u64) as usize].to_vec()
            }
        };
        let v = b.check(&frame);
        runs += 1;
        redirects += u64::from(v == XDP_REDIRECT);
    }
    let d = b.counters(3).delta(&before);
    assert_eq!((d.seen, d.redirected), (runs, redirects), "{d:?}");
    assert_eq!(d.seen, d.redirected + d.passed, "{d:?}");
    assert!(
        redirects > 100 && redirects < runs,
        "both verdicts exercised: {redirects} of {runs}"
    );
}
