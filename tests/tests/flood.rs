//! A SYN flood from unreachable spoofed sources against a listening port: memory stays bounded,
//! the accept queue bound holds, and a legitimate client keeps completing requests during and
//! after. Bounded to a few seconds and a fixed number of frames. Root only.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream as KTcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use testbed::{
    frames::{Frame, Rng},
    loader_ok,
    netns::spawn_in_netns,
    raw::RawSender,
    require_root, Testbed,
};
use xsk_stack::Stack;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One request on a fresh connection.
fn request(to: SocketAddr) -> bool {
    let Ok(mut s) = KTcpStream::connect_timeout(&to, Duration::from_secs(3)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let mut b = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ping"
}

#[test]
fn syn_flood_keeps_memory_bounded_and_legitimate_clients_served() {
    if !require_root("syn_flood_keeps_memory_bounded_and_legitimate_clients_served") {
        return;
    }
    let tb = Testbed::new();
    loader_ok(&["attach", &tb.host_if, "--queue", "3"]);
    let backlog = 128;
    let stack = Stack::builder(&tb.host_if, 3)
        .backlog(backlog)
        .start()
        .unwrap();
    let listener = stack.tcp_listen(7400).unwrap();
    thread::spawn(move || {
        while let Ok((mut c, _)) = listener.accept() {
            thread::spawn(move || {
                let mut b = [0u8; 64];
                while let Ok(n) = c.read(&mut b) {
                    if n == 0 || c.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let to = SocketAddr::from((tb.host_ip, 7400));
    // Warm up allocator and caches before measuring memory.
    assert!(spawn_in_netns(&tb.ns, move || request(to))
        .unwrap()
        .join()
        .unwrap()
        .unwrap());
    let rss_before = rss_kib();

    let host_mac = testbed::mac_of(&tb.host_if);
    let flooding = Arc::new(AtomicBool::new(true));
    let (f2, host, net, peer_if) = (
        flooding.clone(),
        tb.host_ip,
        tb.peer_ip.octets(),
        tb.peer_if.clone(),
    );
    // ~20k SYN/s for 4 s from addresses of the subnet that nobody has (no RST comes back).
    let flood = spawn_in_netns(&tb.ns, move || {
        let raw = RawSender::open(&peer_if).unwrap();
        let mut rng = Rng::new(0xf100d);
        let (start, mut sent) = (Instant::now(), 0u64);
        while start.elapsed() < Duration::from_secs(4) && sent < 100_000 {
            for _ in 0..20 {
                let src = Ipv4Addr::new(net[0], net[1], net[2], 100 + rng.below(150) as u8);
                let f = Frame {
                    dst_mac: host_mac,
                    seq: rng.next_u64() as u32,
                    ..Frame::tcp(src, host, 1024 + rng.below(60000) as u16, 7400)
                };
                if raw.send(&f.build()).is_ok() {
                    sent += 1;
                }
            }
            thread::sleep(Duration::from_millis(1));
        }
        f2.store(false, Ordering::Relaxed);
        sent
    })
    .unwrap();
    let legit = spawn_in_netns(&tb.ns, {
        let flooding = flooding.clone();
        move || {
            let (mut ok, mut tried) = (0, 0);
            while flooding.load(Ordering::Relaxed) && tried < 200 {
                tried += 1;
                ok += u32::from(request(to));
                thread::sleep(Duration::from_millis(20));
            }
            (ok, tried)
        }
    })
    .unwrap();
    let mut max_queued = 0;
    while flooding.load(Ordering::Relaxed) {
        let s = stack.stats().unwrap();
        max_queued = max_queued.max(s.connections);
        thread::sleep(Duration::from_millis(50));
    }
    let sent = flood.join().unwrap().unwrap();
    let (ok, tried) = legit.join().unwrap().unwrap();
    let rss_after = rss_kib();
    let s = stack.stats().unwrap();
    eprintln!(
        "flood: {sent} SYNs, legit {ok}/{tried} during, evicted {}, refused {}, rss {rss_before} -> {rss_after} KiB, peak open {max_queued}",
        s.runtime.syn_evicted, s.device.syn_refused
    );
    assert!(sent > 20_000, "the flood ran ({sent} SYNs)");
    assert!(
        s.runtime.syn_evicted > 1000,
        "handshakes were evicted: {:?}",
        s.runtime
    );
    assert!(
        max_queued <= backlog + 64,
        "the accept queue bound held (peak {max_queued} open, backlog {backlog})"
    );
    assert!(
        tried >= 10 && ok * 10 >= tried * 9,
        "legitimate requests during the flood: {ok}/{tried}"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 64 * 1024,
        "RSS grew {} KiB",
        rss_after.saturating_sub(rss_before)
    );
    // And after it.
    let after = spawn_in_netns(&tb.ns, move || (0..10).filter(|_| request(to)).count())
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(after, 10, "all requests after the flood");
    assert!(stack.failure().is_none());
    testbed::assert_frames_home(&stack);
}
