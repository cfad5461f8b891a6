//! Hostile input: a corpus of malformed and spoofed frames sent with a raw AF_PACKET socket
//! from the namespace to the steered ports, while a legitimate connection keeps echoing.
//! Nothing crashes or hangs, every bad frame is counted under its reason (by the XDP program or
//! by the stack), the legitimate connection stays byte-exact. Root only.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream as KTcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use steer_bpf::Steering;
use testbed::{
    frames::{Frame, Rng},
    loader_ok,
    netns::spawn_in_netns,
    raw::RawSender,
    require_root, Testbed,
};
use xsk_stack::Stack;

const K: u64 = 20;

/// Rewrites the IPv4 header checksum after a deliberate change.
fn fix_ip_checksum(f: &mut [u8], ip: usize) {
    let ihl = ((f[ip] & 0x0f) as usize * 4).max(20);
    f[ip + 10] = 0;
    f[ip + 11] = 0;
    let c = testbed::frames::checksum(&f[ip..ip + ihl]);
    f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn malformed_and_spoofed_frames_are_counted_and_harmless() {
    if !require_root("malformed_and_spoofed_frames_are_counted_and_harmless") {
        return;
    }
    let tb = Testbed::new();
    // Any-address static rules, so frames for other destinations reach the stack too.
    loader_ok(&[
        "attach",
        &tb.host_if,
        "--queue",
        "3",
        "--tcp",
        "7300",
        "--udp",
        "9300",
    ]);
    let stack = Stack::builder(&tb.host_if, 3).start().unwrap();
    let listener = stack.tcp_listen(7300).unwrap();
    let _udp = stack.udp_bind(9300).unwrap();
    thread::spawn(move || {
        while let Ok((mut c, _)) = listener.accept() {
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let steering = Steering::open(&tb.host_if, None).unwrap();
    let xdp_before = steering.counters(3).unwrap();
    let dev_before = stack.stats().unwrap().device;

    // The legitimate client: echo rounds until told to stop, each checked byte for byte.
    let stop = Arc::new(AtomicBool::new(false));
    let (port_tx, port_rx) = mpsc::channel();
    let to = SocketAddr::from((tb.host_ip, 7300));
    let stop2 = stop.clone();
    let client = spawn_in_netns(&tb.ns, move || {
        let mut s = KTcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        port_tx.send(s.local_addr().unwrap().port()).unwrap();
        let mut rng = Rng::new(7);
        let mut rounds = 0u64;
        while !stop2.load(Ordering::Relaxed) || rounds < 10 {
            let data = rng.bytes(1024);
            s.write_all(&data).unwrap();
            let mut back = vec![0u8; 1024];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, data, "round {rounds} echoed byte-exact");
            rounds += 1;
            thread::sleep(Duration::from_millis(2));
        }
        rounds
    })
    .unwrap();
    let client_port = port_rx.recv_timeout(Duration::from_secs(5)).unwrap();

    let host_mac = testbed::mac_of(&tb.host_if);
    let (peer, host, peer_if) = (tb.peer_ip, tb.host_ip, tb.peer_if.clone());
    let corpus = spawn_in_netns(&tb.ns, move || {
        let raw = RawSender::open(&peer_if).unwrap();
        let base = |f: Frame| Frame {
            dst_mac: host_mac,
            ..f
        };
        let tcp = || base(Frame::tcp(peer, host, 50000, 7300));
        let udp = || Frame {
            payload: b"x".to_vec(),
            ..base(Frame::udp(peer, host, 50000, 9300))
        };
        let ip = 14;
        let mut xdp_malformed: Vec<Vec<u8>> = Vec::new();
        let mut f = tcp().build();
        f[ip] = 0x44; // IHL 4
        xdp_malformed.push(f);
        xdp_malformed.push(tcp().build()[..ip + 12].to_vec()); // IPv4 header cut
        xdp_malformed.push(tcp().build()[..ip + 20 + 10].to_vec()); // TCP header cut
        xdp_malformed.push(udp().build()[..ip + 20 + 4].to_vec()); // UDP header cut
        let fragments = vec![
            Frame {
                frag: 0x2000,
                ..tcp()
            }
            .build(),
            Frame {
                frag: 0x0008,
                ..udp()
            }
            .build(),
        ];
        let tagged = vec![Frame {
            vlans: vec![10],
            ..tcp()
        }
        .build()];
        let mut stack_malformed: Vec<Vec<u8>> = Vec::new();
        let mut f = tcp().build();
        let total = u16::from_be_bytes([f[ip + 2], f[ip + 3]]);
        f[ip + 2..ip + 4].copy_from_slice(&(total + 100).to_be_bytes()); // longer than the frame
        fix_ip_checksum(&mut f, ip);
        stack_malformed.push(f);
        let mut f = tcp().build();
        f[ip + 2..ip + 4].copy_from_slice(&10u16.to_be_bytes()); // shorter than the header
        fix_ip_checksum(&mut f, ip);
        stack_malformed.push(f);
        let mut f = tcp().build();
        f[ip + 20 + 12] = 0x40; // data offset 4
        stack_malformed.push(f);
        let mut f = tcp().build();
        f[ip + 20 + 12] = 0xf0; // data offset 15 in a 20-byte header
        stack_malformed.push(f);
        stack_malformed.push(
            Frame {
                tcp_options: vec![2, 0, 0, 0],
                ..tcp()
            }
            .build(),
        ); // zero-length option
        stack_malformed.push(
            Frame {
                tcp_options: vec![8, 10, 0, 0],
                ..tcp()
            }
            .build(),
        ); // overlong option
        stack_malformed.push(
            Frame {
                tcp_flags: 0x03,
                ..tcp()
            }
            .build(),
        ); // SYN+FIN
        stack_malformed.push(
            Frame {
                tcp_flags: 0x06,
                ..tcp()
            }
            .build(),
        ); // SYN+RST
        let mut bad_sum: Vec<Vec<u8>> = Vec::new();
        let mut f = tcp().build();
        f[ip + 10] ^= 0x55; // IPv4 header checksum
        bad_sum.push(f);
        let mut f = tcp().build();
        f[ip + 20 + 16] ^= 0x55; // TCP checksum
        bad_sum.push(f);
        let mut f = udp().build();
        f[ip + 20 + 6] ^= 0x55; // UDP checksum
        bad_sum.push(f);
        let not_ours = vec![
            Frame {
                dst: Ipv4Addr::BROADCAST,
                dst_mac: [0xff; 6],
                ..tcp()
            }
            .build(),
            Frame {
                dst: Ipv4Addr::new(224, 0, 0, 1),
                dst_mac: [1, 0, 0x5e, 0, 0, 1],
                ..udp()
            }
            .build(),
        ];
        let martian = vec![
            Frame {
                src: Ipv4Addr::UNSPECIFIED,
                ..tcp()
            }
            .build(),
            Frame {
                src: Ipv4Addr::LOCALHOST,
                ..udp()
            }
            .build(),
            Frame { src: host, ..tcp() }.build(),
        ];
        // TTL 0, an ACK for no connection: a valid segment smoltcp answers with RST.
        let ttl0 = vec![Frame {
            ttl: 0,
            tcp_flags: 0x10,
            ack: 5,
            ..tcp()
        }
        .build()];
        let groups = [
            &xdp_malformed,
            &fragments,
            &tagged,
            &stack_malformed,
            &bad_sum,
            &not_ours,
            &martian,
            &ttl0,
        ];
        for _ in 0..K {
            for g in groups {
                for f in g.iter() {
                    raw.send(f).unwrap();
                }
            }
            thread::sleep(Duration::from_millis(5));
        }
        // A storm of RST/ACKs with wrong sequence numbers against the live connection.
        let mut rng = Rng::new(99);
        for _ in 0..300 {
            let f = Frame {
                src_port: client_port,
                tcp_flags: 0x14,
                seq: rng.next_u64() as u32,
                ack: rng.next_u64() as u32,
                ..tcp()
            };
            raw.send(&f.build()).unwrap();
        }
        // Frames larger than the link allows never leave the sender.
        let oversized = Frame {
            payload: vec![0; 1600],
            ..tcp()
        }
        .build();
        let refused = raw.send(&oversized).is_err();
        (
            [
                xdp_malformed.len(),
                fragments.len(),
                tagged.len(),
                stack_malformed.len(),
                bad_sum.len(),
                not_ours.len(),
                martian.len(),
                ttl0.len(),
            ],
            refused,
        )
    })
    .unwrap();
    let (sizes, oversized_refused) = corpus.join().unwrap().unwrap();
    assert!(oversized_refused, "the kernel refuses frames over the MTU");
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let rounds = client.join().unwrap().unwrap();
    assert!(
        rounds >= 10,
        "the legitimate connection kept echoing ({rounds} rounds)"
    );

    let k = K;
    let x = steering.counters(3).unwrap().delta(&xdp_before);
    assert_eq!(x.malformed, k * sizes[0] as u64, "XDP malformed: {x:?}");
    assert_eq!(x.fragments, k * sizes[1] as u64, "XDP fragments: {x:?}");
    assert_eq!(x.vlan, k * sizes[2] as u64, "XDP vlan: {x:?}");
    let eventually = Instant::now() + Duration::from_secs(3);
    let d = loop {
        let d = stack.stats().unwrap().device;
        if d.rx_martian - dev_before.rx_martian >= k * sizes[6] as u64
            || Instant::now() > eventually
        {
            break d;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        d.rx_malformed - dev_before.rx_malformed,
        k * sizes[3] as u64,
        "{d:?}"
    );
    assert_eq!(
        d.rx_bad_checksum - dev_before.rx_bad_checksum,
        k * sizes[4] as u64,
        "{d:?}"
    );
    assert_eq!(
        d.rx_not_ours - dev_before.rx_not_ours,
        k * sizes[5] as u64,
        "{d:?}"
    );
    assert_eq!(
        d.rx_martian - dev_before.rx_martian,
        k * sizes[6] as u64,
        "{d:?}"
    );
    assert_eq!(
        d.rx_fragments - dev_before.rx_fragments,
        0,
        "fragments never reach the stack"
    );
    assert!(
        d.tcp_out_rsts - dev_before.tcp_out_rsts >= k,
        "the TTL-0 ACKs were answered with RST: {d:?}"
    );
    // nstat's view of the same: every malformed TCP frame plus the bad TCP checksum are TcpInErrs,
    // the bad UDP checksum is UdpInErrors (a bad IPv4 header checksum is neither).
    assert_eq!(
        d.tcp_in_errs - dev_before.tcp_in_errs,
        k * (sizes[3] as u64 + 1),
        "{d:?}"
    );
    assert_eq!(d.udp_in_errors - dev_before.udp_in_errors, k, "{d:?}");

    // Still serving new connections afterwards, with every frame back home.
    let again = spawn_in_netns(&tb.ns, move || {
        let mut s = KTcpStream::connect(to).unwrap();
        s.write_all(b"after").unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        b
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(&again, b"after");
    assert!(stack.failure().is_none());
    testbed::assert_frames_home(&stack);
}
