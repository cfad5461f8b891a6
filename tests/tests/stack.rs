//! The stack end to end: smoltcp over AF_XDP on queue 3 of the host end of a veth pair, kernel
//! peers (std::net) in the namespace. Root only (skips loudly otherwise, fails under CI=true).

use std::{
    io::{ErrorKind, Read, Write},
    net::{
        Shutdown, SocketAddr, SocketAddrV4, TcpListener as KTcpListener, TcpStream as KTcpStream,
        UdpSocket as KUdpSocket,
    },
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use testbed::{assert_frames_home, loader_ok, netns::in_netns, require_root, Testbed};
use xsk_stack::{Stack, StackBuilder, TcpListener, TcpStream};

/// A testbed with the program attached on queue 3 (no static rules: the stack adds its own).
struct Bed {
    tb: Testbed,
}

impl Bed {
    fn new() -> Self {
        let tb = Testbed::new();
        loader_ok(&["attach", &tb.host_if, "--queue", "3"]);
        Self { tb }
    }
    fn builder(&self) -> StackBuilder {
        Stack::builder(&self.tb.host_if, 3)
    }
    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.tb.host_ip, port))
    }
    /// Runs `f` on a thread inside the peer namespace.
    fn peer<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.tb.ns, f).expect("enter netns")
    }
}

/// A stack-side echo server: one thread per connection, stops when the listener goes away.
fn echo_server(listener: TcpListener) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut served = 0;
        let mut workers = Vec::new();
        while let Ok((c, _)) = listener.accept_timeout(Some(Duration::from_secs(20))) {
            served += 1;
            workers.push(thread::spawn(move || echo(c)));
            if served == usize::MAX {
                break;
            }
        }
        for w in workers {
            let _ = w.join();
        }
        served
    })
}

fn echo(mut c: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

/// Deterministic pseudo-random bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` and reads the echo back concurrently; returns what came back.
fn echo_roundtrip(mut s: KTcpStream, data: Arc<Vec<u8>>) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let d2 = data.clone();
    let writer = thread::spawn(move || {
        w.write_all(&d2).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(data.len());
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    back
}

#[test]
fn ten_megabytes_echo_byte_exact() {
    if !require_root("ten_megabytes_echo_byte_exact") {
        return;
    }
    let bed = Bed::new();
    let stack = bed.builder().start().unwrap();
    let server = echo_server(stack.tcp_listen(7000).unwrap());
    let data = Arc::new(pattern(10 * 1024 * 1024, 42));
    let to = bed.addr(7000);
    let d = data.clone();
    let back = bed.peer(move || {
        echo_roundtrip(
            KTcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap(),
            d,
        )
    });
    assert_eq!(back.len(), data.len());
    assert!(back == *data, "echo differs");
    let st = stack.stats().unwrap();
    assert_eq!(st.runtime.passive_opens, 1);
    assert!(
        st.device.rx_packets > 10 * 1024 * 1024 / 1500,
        "{:?}",
        st.device
    );
    drop(server);
    assert_frames_home(&stack);
}

/// Busy-poll mode: the blocked application threads take turns spinning on the queue (one at a
/// time) and the shard stands back; data must still be exact on one big and many small
/// connections, and a read timeout must still fire while nothing arrives.
#[test]
fn busy_poll_echoes_byte_exact_and_keeps_timeouts() {
    if !require_root("busy_poll_echoes_byte_exact_and_keeps_timeouts") {
        return;
    }
    let bed = Bed::new();
    let stack = bed.builder().busy_poll(true).start().unwrap();
    let _server = echo_server(stack.tcp_listen(7002).unwrap());
    let to = bed.addr(7002);
    let ok = bed.peer(move || {
        let big = Arc::new(pattern(4 * 1024 * 1024, 7));
        let s = KTcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
        let mut ok = echo_roundtrip(s, big.clone()) == *big;
        let small: Vec<_> = (0..32u64)
            .map(|i| {
                thread::spawn(move || {
                    let s = KTcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
                    let d = Arc::new(pattern(32 * 1024, i + 100));
                    echo_roundtrip(s, d.clone()) == *d
                })
            })
            .collect();
        for c in small {
            ok &= c.join().unwrap();
        }
        ok
    });
    assert!(ok, "an echo differed in busy-poll mode");
    // A connection with nothing to read: the spinning reader must give up at its timeout.
    let l = stack.tcp_listen(7003).unwrap();
    let to = bed.addr(7003);
    let client = bed.tb.ns.clone();
    let _peer = testbed::netns::spawn_in_netns(&client, move || {
        let s = KTcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
        thread::sleep(Duration::from_secs(3));
        drop(s);
    });
    let (mut c, _) = l.accept_timeout(Some(Duration::from_secs(3))).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let t = Instant::now();
    let e = c.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert!(
        t.elapsed() >= Duration::from_millis(290) && t.elapsed() < Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    assert_frames_home(&stack);
}

#[test]
fn two_hundred_concurrent_connections_echo() {
    if !require_root("two_hundred_concurrent_connections_echo") {
        return;
    }
    let bed = Bed::new();
    let stack = bed
        .builder()
        .backlog(256)
        .tcp_buffers(16 * 1024, 16 * 1024)
        .start()
        .unwrap();
    let _server = echo_server(stack.tcp_listen(7001).unwrap());
    let to = bed.addr(7001);
    let ok = bed.peer(move || {
        let barrier = Arc::new(Barrier::new(200));
        let clients: Vec<_> = (0..200u64)
            .map(|i| {
                let b = barrier.clone();
                thread::spawn(move || {
                    let s =
                        KTcpStream::connect_timeout(&to, Duration::from_secs(10)).expect("connect");
                    // All 200 are open at once before any data moves.
                    b.wait();
                    let data = Arc::new(pattern(8 * 1024, i + 1));
                    echo_roundtrip(s, data.clone()) == *data
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .filter(|&ok| ok)
            .count()
    });
    assert_eq!(ok, 200, "every connection echoed byte-exact");
    assert_eq!(stack.stats().unwrap().runtime.passive_opens, 200);
    assert_frames_home(&stack);
}

#[test]
fn ten_thousand_udp_datagrams_echo() {
    if !require_root("ten_thousand_udp_datagrams_echo") {
        return;
    }
    let bed = Bed::new();
    let stack = bed.builder().start().unwrap();
    let sock = stack.udp_bind(9000).unwrap();
    let server = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n_echoed = 0;
        let mut s = sock;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        while let Ok((n, SocketAddr::V4(from))) = s.recv_from(&mut buf) {
            s.send_to(&buf[..n], from).unwrap();
            n_echoed += 1;
        }
        n_echoed
    });
    let to = bed.addr(9000);
    let got = bed.peer(move || {
        let s = KUdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut seen = vec![false; 10_000];
        let mut buf = [0u8; 64];
        let (mut sent, mut outstanding) = (0usize, 0usize);
        while sent < 10_000 || outstanding > 0 {
            // A window of 32 in flight keeps both sides' buffers from overflowing.
            while sent < 10_000 && outstanding < 32 {
                s.send_to(format!("dgram-{sent:05}").as_bytes(), to)
                    .unwrap();
                sent += 1;
                outstanding += 1;
            }
            match s.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let i: usize = std::str::from_utf8(&buf[6..n]).unwrap().parse().unwrap();
                    assert!(!seen[i], "datagram {i} echoed twice");
                    seen[i] = true;
                    outstanding -= 1;
                }
                Err(_) => break,
            }
        }
        seen.iter().filter(|&&x| x).count()
    });
    assert_eq!(got, 10_000, "all datagrams echoed");
    assert_eq!(server.join().unwrap(), 10_000);
    assert_frames_home(&stack);
}

#[test]
fn stack_connects_out_to_a_kernel_server() {
    if !require_root("stack_connects_out_to_a_kernel_server") {
        return;
    }
    let bed = Bed::new();
    let stack = bed.builder().ephemeral_ports(62000, 62010).start().unwrap();
    let peer = SocketAddrV4::new(bed.tb.peer_ip, 5000);
    let listener = bed.peer(move || KTcpListener::bind(peer).unwrap());
    let kernel = thread::spawn(move || {
        let (mut c, from) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
        c.write_all(b"pong").unwrap();
        from
    });
    let mut s = stack
        .tcp_connect(peer, Some(Duration::from_secs(5)))
        .unwrap();
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    let from = kernel.join().unwrap();
    assert_eq!(
        from.ip(),
        bed.tb.host_ip,
        "the stack spoke from the interface's address"
    );
    assert!(
        (62000..=62010).contains(&from.port()),
        "ephemeral port from the configured range: {from}"
    );
    // A port nobody listens on: the kernel answers RST, connect reports it.
    let closed = SocketAddrV4::new(bed.tb.peer_ip, 5001);
    let e = stack
        .tcp_connect(closed, Some(Duration::from_secs(5)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    let st = stack.stats().unwrap();
    assert_eq!((st.runtime.active_opens, st.runtime.attempt_fails), (2, 1));
    drop(s);
    assert_frames_home(&stack);
}

#[test]
fn backlog_overflow_is_refused_with_rst() {
    if !require_root("backlog_overflow_is_refused_with_rst") {
        return;
    }
    let bed = Bed::new();
    let stack = bed.builder().backlog(4).listen_depth(4).start().unwrap();
    let listener = stack.tcp_listen(7002).unwrap();
    let to = bed.addr(7002);
    // Nobody calls accept(): 4 connections fill the queue, the rest are reset.
    let results = bed.peer(move || {
        (0..10)
            .map(|_| {
                let r = KTcpStream::connect_timeout(&to, Duration::from_secs(2));
                thread::sleep(Duration::from_millis(20));
                r
            })
            .collect::<Vec<_>>()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.kind() == ErrorKind::ConnectionRefused))
        .count();
    assert_eq!((ok, refused), (4, 6), "{results:?}");
    assert_eq!(listener.queued(), 4);
    let st = stack.stats().unwrap();
    assert!(
        st.runtime.backlog_full >= 6,
        "{:?} {:?}",
        st.runtime,
        st.device
    );
    // Accepting frees the queue for new connections.
    for _ in 0..4 {
        listener
            .accept_timeout(Some(Duration::from_secs(2)))
            .unwrap();
    }
    let again = bed.peer(move || KTcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok());
    assert!(again, "a connection is accepted once the queue has room");
    drop(results);
}

#[test]
fn connection_limit_refuses_new_connections() {
    if !require_root("connection_limit_refuses_new_connections") {
        return;
    }
    let bed = Bed::new();
    let stack = bed.builder().max_connections(3).start().unwrap();
    let listener = stack.tcp_listen(7003).unwrap();
    let to = bed.addr(7003);
    let acceptor = thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                listener
                    .accept_timeout(Some(Duration::from_secs(5)))
                    .unwrap()
                    .0,
            );
        }
        (listener, held)
    });
    let first = bed.peer(move || {
        (0..3)
            .map(|_| KTcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap())
            .collect::<Vec<_>>()
    });
    let (listener, mut held) = acceptor.join().unwrap();
    let fourth =
        bed.peer(move || KTcpStream::connect_timeout(&to, Duration::from_secs(2)).map(|_| ()));
    assert_eq!(
        fourth.unwrap_err().kind(),
        ErrorKind::ConnectionRefused,
        "over the limit"
    );
    assert!(stack.stats().unwrap().runtime.conn_limit >= 1);
    // One connection ends: there is room again.
    drop(held.pop());
    drop(first);
    thread::sleep(Duration::from_millis(300));
    let fifth = bed.peer(move || KTcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok());
    assert!(fifth, "accepted again below the limit");
    drop((listener, held));
}

#[test]
fn idle_connections_are_reset() {
    if !require_root("idle_connections_are_reset") {
        return;
    }
    let bed = Bed::new();
    let stack = bed
        .builder()
        .idle_timeout(Some(Duration::from_millis(800)))
        .start()
        .unwrap();
    let listener = stack.tcp_listen(7004).unwrap();
    let to = bed.addr(7004);
    let server = thread::spawn(move || {
        listener
            .accept_timeout(Some(Duration::from_secs(5)))
            .unwrap()
            .0
    });
    let started = Instant::now();
    let r = bed.peer(move || {
        let mut s = KTcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        s.read(&mut buf).map_err(|e| e.kind())
    });
    let _held = server.join().unwrap();
    assert_eq!(
        r,
        Err(ErrorKind::ConnectionReset),
        "the idle connection was reset"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "reset after ~0.8 s, took {took:?}"
    );
    assert_eq!(stack.stats().unwrap().runtime.idle_timeouts, 1);
}

#[test]
fn fin_and_rst_both_ways() {
    if !require_root("fin_and_rst_both_ways") {
        return;
    }
    let bed = Bed::new();
    let stack = bed.builder().start().unwrap();
    let listener = stack.tcp_listen(7005).unwrap();
    let to = bed.addr(7005);
    let server = thread::spawn(move || {
        let mut out = Vec::new();
        // 1. client FIN: server sees EOF, answers and closes.
        let (mut c, _) = listener.accept().unwrap();
        let mut v = Vec::new();
        c.read_to_end(&mut v).unwrap();
        out.push(format!("eof after {:?}", String::from_utf8_lossy(&v)));
        c.write_all(b"bye").unwrap();
        drop(c);
        // 2. server FIN first.
        let (c, _) = listener.accept().unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut c = c;
        let mut v = Vec::new();
        c.read_to_end(&mut v).unwrap();
        out.push("server fin done".into());
        // 3. client RST: the client closes with unread data, which the kernel turns into RST.
        let (mut c, _) = listener.accept().unwrap();
        c.write_all(b"unread").unwrap();
        let mut buf = [0u8; 8];
        let r = c.read(&mut buf).map_err(|e| e.kind());
        out.push(format!("client rst: {r:?}"));
        // 4. server RST.
        let (c, _) = listener.accept().unwrap();
        c.reset().unwrap();
        out
    });
    let client = bed.peer(move || {
        let mut out = Vec::new();
        let mut s = KTcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"hi").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        out.push(String::from_utf8_lossy(&v).into_owned());

        let mut s = KTcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut v = Vec::new();
        out.push(format!(
            "server fin: {:?}",
            s.read_to_end(&mut v).map(|_| v.len())
        ));
        drop(s);

        let s = KTcpStream::connect(to).unwrap();
        thread::sleep(Duration::from_millis(300)); // "unread" arrives and stays unread
        drop(s);

        let mut s = KTcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        out.push(format!(
            "server rst: {:?}",
            s.read(&mut buf).map_err(|e| e.kind())
        ));
        out
    });
    let server = server.join().unwrap();
    assert_eq!(
        server,
        vec![
            "eof after \"hi\"",
            "server fin done",
            "client rst: Err(ConnectionReset)"
        ]
    );
    assert_eq!(
        client,
        vec![
            "bye",
            "server fin: Ok(0)",
            "server rst: Err(ConnectionReset)"
        ]
    );
    assert_frames_home(&stack);
}

#[test]
fn kernel_flows_are_unaffected_while_the_stack_serves() {
    if !require_root("kernel_flows_are_unaffected_while_the_stack_serves") {
        return;
    }
    let bed = Bed::new();
    let stack = bed.builder().start().unwrap();
    let _server = echo_server(stack.tcp_listen(7006).unwrap());
    let kernel = KTcpListener::bind((bed.tb.host_ip, 9090)).unwrap();
    let k = thread::spawn(move || {
        let (mut c, _) = kernel.accept().unwrap();
        c.write_all(b"kernel here").unwrap();
    });
    let (stack_to, kernel_to) = (bed.addr(7006), bed.addr(9090));
    let (echoed, from_kernel) = bed.peer(move || {
        let echoed = echo_roundtrip(
            KTcpStream::connect(stack_to).unwrap(),
            Arc::new(b"to the stack".to_vec()),
        );
        let mut k = KTcpStream::connect(kernel_to).unwrap();
        let mut v = Vec::new();
        k.read_to_end(&mut v).unwrap();
        (echoed, v)
    });
    k.join().unwrap();
    assert_eq!(echoed, b"to the stack");
    assert_eq!(from_kernel, b"kernel here");
    let ping = bed.tb.ns(
        "ping",
        &[
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            &bed.tb.host_ip.to_string(),
        ],
    );
    assert!(ping.status.success(), "ping while the stack runs");
    assert_frames_home(&stack);
}

#[test]
fn stack_refuses_bad_setups_with_clear_errors() {
    if !require_root("stack_refuses_bad_setups_with_clear_errors") {
        return;
    }
    let tb = Testbed::new();
    let e = Stack::builder(&tb.host_if, 3)
        .start()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not attached") && e.contains("xdp-loader attach"),
        "{e}"
    );
    let e = Stack::builder("nosuchif0", 3)
        .start()
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    loader_ok(&["attach", &tb.host_if, "--queue", "3"]);
    let e = Stack::builder(&tb.host_if, 2)
        .start()
        .unwrap_err()
        .to_string();
    assert!(e.contains("attached to queue 3"), "{e}");
    let e = Stack::builder(&tb.host_if, 3)
        .ring_size(100)
        .start()
        .unwrap_err()
        .to_string();
    assert!(e.contains("power of two"), "{e}");
    let stack = Stack::builder(&tb.host_if, 3).start().unwrap();
    let e = Stack::builder(&tb.host_if, 3)
        .start()
        .unwrap_err()
        .to_string();
    assert!(e.contains("already served"), "{e}");
    let _l = stack.tcp_listen(7007).unwrap();
    assert!(stack
        .tcp_listen(7007)
        .unwrap_err()
        .to_string()
        .contains("in use"));
    // A port the kernel itself uses is refused too.
    let _k = KTcpListener::bind((tb.host_ip, 7008)).unwrap();
    assert!(stack
        .tcp_listen(7008)
        .unwrap_err()
        .to_string()
        .contains("in use"));
    // The rules the stack added go away with it.
    let status = loader_ok(&["status", &tb.host_if]);
    assert!(status.contains("tcp:7007@"), "{status}");
    drop(_l);
    drop(stack);
    let status = loader_ok(&["status", &tb.host_if]);
    assert!(
        !status.contains("tcp:7007"),
        "rule removed on clean shutdown: {status}"
    );
    assert!(status.contains("3:-"), "XSK gone: {status}");
}

#[test]
fn pins_of_a_recreated_interface_are_refused() {
    if !require_root("pins_of_a_recreated_interface_are_refused") {
        return;
    }
    let tb = Testbed::new();
    loader_ok(&["attach", &tb.host_if, "--queue", "3"]);
    // The interface goes away and a new one takes its name: the pins now describe a stranger.
    testbed::run_ok("ip", &["link", "del", &tb.host_if]);
    testbed::run_ok(
        "ip",
        &[
            "link",
            "add",
            &tb.host_if,
            "numtxqueues",
            "4",
            "numrxqueues",
            "4",
            "type",
            "veth",
            "peer",
            "name",
            &tb.peer_if,
            "netns",
            &tb.ns,
        ],
    );
    testbed::run_ok(
        "ip",
        &[
            "addr",
            "add",
            &format!("{}/24", tb.host_ip),
            "dev",
            &tb.host_if,
        ],
    );
    testbed::run_ok("ip", &["link", "set", &tb.host_if, "up"]);
    let e = Stack::builder(&tb.host_if, 3)
        .start()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pinned steering maps belong to interface index"),
        "{e}"
    );
    // The loader cleans up the stale pins (the program itself went with the old interface).
    loader_ok(&["detach", &tb.host_if]);
    assert!(!steer_bpf::PinDir::new(None, &tb.host_if).exists());
}

#[test]
fn a_connection_reset_before_accept_is_still_accepted_and_reads_the_reset() {
    if !require_root("a_connection_reset_before_accept_is_still_accepted_and_reads_the_reset") {
        return;
    }
    let bed = Bed::new();
    let stack = bed.builder().start().unwrap();
    let listener = stack.tcp_listen(7601).unwrap();
    let to = bed.addr(7601);
    // The client connects, waits until the connection sits in the accept queue, then aborts
    // (SO_LINGER 0: an RST) before the server accepts.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let ns = bed.tb.ns.clone();
    let client = std::thread::spawn(move || {
        in_netns(&ns, move || {
            let s = KTcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
            addr_tx.send(s.local_addr().unwrap()).unwrap();
            go_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid socket and a correctly sized option value.
            #[allow(unsafe_code)]
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as u32,
                )
            };
            assert_eq!(rc, 0);
            drop(s);
        })
        .unwrap()
    });
    let client_addr = addr_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while listener.queued() == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        listener.queued(),
        1,
        "the connection is queued for accept: {:?}",
        stack.stats().unwrap()
    );
    go_tx.send(()).unwrap();
    client.join().unwrap();
    // Let the RST arrive and be processed while the connection sits in the accept queue.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stack.stats().unwrap().runtime.estab_resets == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(stack.stats().unwrap().runtime.estab_resets, 1);
    let (mut c, peer) = listener
        .accept_timeout(Some(Duration::from_secs(5)))
        .expect("accept hands out the dead connection instead of failing");
    assert_eq!(peer, client_addr, "with the address it had");
    assert_eq!(c.peer_addr().unwrap(), client_addr);
    let mut buf = [0u8; 16];
    let err = c
        .read(&mut buf)
        .expect_err("the first read reports the reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);

    // The listener goes on: a new client is accepted and served.
    let server = echo_server(listener);
    let data = Arc::new(pattern(10_000, 3));
    let back = bed.peer(move || {
        echo_roundtrip(
            KTcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap(),
            data,
        )
    });
    assert_eq!(back, pattern(10_000, 3));
    drop(stack);
    let _ = server.join();
}

#[test]
fn an_orphan_that_never_finishes_closing_is_reset() {
    if !require_root("an_orphan_that_never_finishes_closing_is_reset") {
        return;
    }
    let bed = Bed::new();
    let stack = bed
        .builder()
        .orphan_timeout(Duration::from_secs(1))
        .idle_timeout(None)
        .start()
        .unwrap();
    let listener = stack.tcp_listen(7602).unwrap();
    let to = bed.addr(7602);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    // A peer that takes our FIN but never sends its own: the server side sits in FIN-WAIT-2.
    let client = std::thread::spawn({
        let ns = bed.tb.ns.clone();
        move || {
            in_netns(&ns, move || {
                let s = KTcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
                let _ = rx.recv_timeout(Duration::from_secs(20));
                drop(s);
            })
            .unwrap()
        }
    });
    let (c, _) = listener
        .accept_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut st = stack.stats().unwrap();
    while (st.runtime.orphan_timeouts == 0 || st.connections > 0) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        st = stack.stats().unwrap();
    }
    assert_eq!(st.runtime.orphan_timeouts, 1, "{:?}", st.runtime);
    assert_eq!(st.connections, 0, "the orphan's socket was freed");
    let _ = tx.send(());
    client.join().unwrap();
}
