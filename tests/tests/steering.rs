//! The steering foundation end to end: xdp-loader, the XDP program, an XSK on the steered
//! queue, and kernel peers in a network namespace. Root only (skips loudly otherwise, fails
//! under CI=true).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    time::Duration,
};

use steer_bpf::{QueueCounters, Steering};
use testbed::{
    loader, loader_env, loader_ok, netns::in_netns, require_root, run_ok, xsk::XskReceiver,
    Testbed, TestbedOptions,
};

const PORT: u16 = 8080;

fn counters(iface: &str, queue: u32) -> QueueCounters {
    Steering::open(iface, None)
        .expect("pins open")
        .counters(queue)
        .expect("counters read")
}

/// Sends `n` UDP datagrams from the namespace to `to`, each carrying `marker` and its index.
fn send_udp(tb: &Testbed, to: SocketAddr, n: usize, marker: &'static str) {
    in_netns(&tb.ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..n {
            s.send_to(format!("{marker}-{i}").as_bytes(), to).unwrap();
            // Paced so a copy-mode XSK with a small fill ring never runs dry.
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .expect("enter netns");
}

fn count_marked(frames: &[Vec<u8>], marker: &str) -> usize {
    frames
        .iter()
        .filter(|f| f.windows(marker.len()).any(|w| w == marker.as_bytes()))
        .count()
}

/// A kernel UDP socket in the root namespace on `addr`, collecting what arrives for `wait`.
fn kernel_udp_receive(sock: &UdpSocket, marker: &str, want: usize, wait: Duration) -> usize {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = std::time::Instant::now() + wait;
    let mut got = 0;
    let mut buf = [0u8; 2048];
    while got < want && std::time::Instant::now() < deadline {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if buf[..n].starts_with(marker.as_bytes()) {
                got += 1;
            }
        }
    }
    got
}

fn tb_for(generic: bool) -> Testbed {
    // Generic XDP on veth is off by one (rx = tx - 1): give it a spare queue to steer from.
    let queues = if generic { 5 } else { 4 };
    Testbed::with(TestbedOptions {
        queues,
        steer_queue: 3,
        generic,
    })
}

fn mode(generic: bool) -> &'static str {
    if generic {
        "generic"
    } else {
        "native"
    }
}

fn link_state(iface: &str) -> String {
    run_ok("ip", &["-d", "link", "show", "dev", iface])
}

#[test]
fn attach_detach_round_trip_leaves_link_and_bpffs_clean() {
    if !require_root("attach_detach_round_trip") {
        return;
    }
    for generic in [false, true] {
        let tb = tb_for(generic);
        let before = link_state(&tb.host_if);
        let out = loader_ok(&[
            "attach",
            &tb.host_if,
            "--queue",
            "3",
            "--mode",
            mode(generic),
            "--tcp",
            "8080",
        ]);
        assert!(out.contains(&format!("mode {}", mode(generic))), "{out}");
        let during = link_state(&tb.host_if);
        assert!(
            during.contains(if generic { "xdpgeneric" } else { "xdp" })
                && during.contains("xdp_steer"),
            "{during}"
        );
        let pins = steer_bpf::PinDir::new(None, &tb.host_if);
        for name in ["prog", "probe", "xsks", "rules", "config", "counters"] {
            let meta =
                std::fs::metadata(pins.map(name)).unwrap_or_else(|e| panic!("pin {name}: {e}"));
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                meta.permissions().mode() & 0o777,
                0o600,
                "pin {name} is root-only"
            );
        }
        let status = loader_ok(&["status", &tb.host_if]);
        assert!(
            status.contains("(ours)")
                && status.contains("tcp:8080 (static)")
                && status.contains("queue     3 of"),
            "{status}"
        );

        loader_ok(&["detach", &tb.host_if]);
        assert_eq!(
            link_state(&tb.host_if),
            before,
            "interface back as before attach"
        );
        assert!(!pins.dir().exists(), "pins removed");
    }
}

#[test]
fn steered_queue_redirects_to_xsk() {
    if !require_root("steered_queue_redirects_to_xsk") {
        return;
    }
    for generic in [false, true] {
        let tb = tb_for(generic);
        loader_ok(&[
            "attach",
            &tb.host_if,
            "--queue",
            "3",
            "--mode",
            mode(generic),
            "--tcp",
            "8080",
            "--udp",
            "8080",
        ]);
        let mut xsk = XskReceiver::bind(&tb.host_if, 3).expect("bind XSK");
        let status = loader_ok(&["status", &tb.host_if]);
        assert!(
            status.contains("3:xsk"),
            "status shows the registered XSK: {status}"
        );

        send_udp(&tb, SocketAddr::from((tb.host_ip, PORT)), 20, "udp-steer");
        // A TCP SYN to the steered port is redirected too (the kernel never answers it).
        let to = SocketAddr::from((tb.host_ip, PORT));
        in_netns(&tb.ns, move || {
            TcpStream::connect_timeout(&to, Duration::from_millis(300)).is_err()
        })
        .unwrap();

        let frames = xsk.receive(21, Duration::from_secs(3));
        assert_eq!(
            count_marked(&frames, "udp-steer"),
            20,
            "every datagram reached the XSK ({})",
            mode(generic)
        );
        let syns = frames
            .iter()
            .filter(|f| {
                f.len() >= 54
                    && f[23] == 6
                    && u16::from_be_bytes([f[36], f[37]]) == PORT
                    && f[47] & 0x02 != 0
            })
            .count();
        assert!(syns >= 1, "the TCP SYN reached the XSK");
        let c = counters(&tb.host_if, 3);
        assert_eq!(
            c.redirected as usize,
            frames.len(),
            "redirected counts what the XSK got: {c:?}"
        );
        assert_eq!(c.no_xsk, 0, "{c:?}");
        assert_eq!(c.seen, c.redirected + c.passed, "{c:?}");
        loader_ok(&["detach", &tb.host_if]);
    }
}

#[test]
fn wrong_queue_is_counted_and_passed_to_kernel() {
    if !require_root("wrong_queue_is_counted_and_passed_to_kernel") {
        return;
    }
    for generic in [false, true] {
        let tb = tb_for(generic);
        loader_ok(&[
            "attach",
            &tb.host_if,
            "--queue",
            "3",
            "--mode",
            mode(generic),
            "--udp",
            "8080",
        ]);
        let mut xsk = XskReceiver::bind(&tb.host_if, 3).expect("bind XSK");
        let kernel = UdpSocket::bind((tb.host_ip, PORT)).unwrap();
        tb.steer_to(1, generic);

        send_udp(&tb, SocketAddr::from((tb.host_ip, PORT)), 20, "wrongq");
        assert_eq!(
            kernel_udp_receive(&kernel, "wrongq", 20, Duration::from_secs(3)),
            20,
            "kernel got them all"
        );
        assert_eq!(
            count_marked(&xsk.receive(1, Duration::from_millis(300)), "wrongq"),
            0
        );
        let c1 = counters(&tb.host_if, 1);
        assert_eq!(c1.matched, 20, "{c1:?}");
        assert_eq!(c1.no_xsk, 20, "{c1:?}");
        assert_eq!(c1.redirected, 0, "{c1:?}");
        let stats = loader_ok(&["stats", &tb.host_if, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
        let q1 = v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["queue"] == 1)
            .expect("queue 1 listed");
        assert_eq!(q1["counters"]["no_xsk"], 20, "{stats}");
        loader_ok(&["detach", &tb.host_if]);
    }
}

#[test]
fn kernel_keeps_serving_ping_and_other_ports() {
    if !require_root("kernel_keeps_serving_ping_and_other_ports") {
        return;
    }
    let tb = Testbed::new();
    loader_ok(&["attach", &tb.host_if, "--queue", "3", "--tcp", "8080"]);
    let _xsk = XskReceiver::bind(&tb.host_if, 3).expect("bind XSK");

    let ping = tb.ns(
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "1", &tb.host_ip.to_string()],
    );
    assert!(
        ping.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    let listener = TcpListener::bind((tb.host_ip, 9090)).unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
    });
    let to = SocketAddr::from((tb.host_ip, 9090));
    let echoed = in_netns(&tb.ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        buf
    })
    .unwrap();
    assert_eq!(&echoed, b"hello");
    server.join().unwrap();
    let c = counters(&tb.host_if, 3);
    assert_eq!(c.redirected, 0, "nothing of ping/9090 was steered: {c:?}");
    assert!(c.passed > 0, "{c:?}");
    loader_ok(&["detach", &tb.host_if]);
}

#[test]
fn closing_the_xsk_hands_flows_back_to_the_kernel() {
    if !require_root("closing_the_xsk_hands_flows_back_to_the_kernel") {
        return;
    }
    let tb = Testbed::new();
    loader_ok(&[
        "attach",
        &tb.host_if,
        "--queue",
        "3",
        "--udp",
        "8080",
        "--tcp",
        "8080",
    ]);
    let kernel = UdpSocket::bind((tb.host_ip, PORT)).unwrap();
    let tcp = TcpListener::bind((tb.host_ip, PORT)).unwrap();
    let to = SocketAddr::from((tb.host_ip, PORT));
    {
        let mut xsk = XskReceiver::bind(&tb.host_if, 3).expect("bind XSK");
        send_udp(&tb, to, 10, "before");
        assert_eq!(
            count_marked(&xsk.receive(10, Duration::from_secs(3)), "before"),
            10
        );
        assert_eq!(
            kernel_udp_receive(&kernel, "before", 1, Duration::from_millis(300)),
            0,
            "kernel saw none"
        );
        let refused = in_netns(&tb.ns, move || {
            TcpStream::connect_timeout(&to, Duration::from_millis(300)).is_err()
        })
        .unwrap();
        assert!(
            refused,
            "the kernel listener is bypassed while the XSK runs"
        );
    }
    // A process spawned by a parallel test between socket() and FD_CLOEXEC may still hold the
    // socket for a moment; wait (bounded) until the kernel has really released it.
    let released = (0..100).any(|_| {
        let s = loader_ok(&["status", &tb.host_if]);
        s.contains("3:-") || {
            std::thread::sleep(Duration::from_millis(50));
            false
        }
    });
    assert!(released, "the closed XSK left the XSKMAP");
    let redirected_before = counters(&tb.host_if, 3).redirected;
    // The XSK is closed: the kernel drops it from the XSKMAP and bpf_redirect_map falls back.
    send_udp(&tb, to, 10, "after");
    assert_eq!(
        kernel_udp_receive(&kernel, "after", 10, Duration::from_secs(3)),
        10,
        "kernel got them all"
    );
    let connected = in_netns(&tb.ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok()
    })
    .unwrap();
    assert!(connected, "the kernel listener answers again");
    drop(tcp);
    let c = counters(&tb.host_if, 3);
    assert_eq!(
        c.redirected, redirected_before,
        "nothing redirected once the XSK is gone: {c:?}"
    );
    assert!(
        c.no_xsk >= 11,
        "10 datagrams and a SYN counted as matched without a socket: {c:?}"
    );
    loader_ok(&["detach", &tb.host_if]);
}

#[test]
fn reattach_keeps_a_bound_xsk_receiving() {
    if !require_root("reattach_keeps_a_bound_xsk_receiving") {
        return;
    }
    for generic in [false, true] {
        let tb = tb_for(generic);
        let first = loader_ok(&[
            "attach",
            &tb.host_if,
            "--queue",
            "3",
            "--mode",
            mode(generic),
            "--udp",
            "8080",
        ]);
        let mut xsk = XskReceiver::bind(&tb.host_if, 3).expect("bind XSK");
        let to = SocketAddr::from((tb.host_ip, PORT));
        send_udp(&tb, to, 5, "one");
        assert_eq!(
            count_marked(&xsk.receive(5, Duration::from_secs(3)), "one"),
            5
        );

        // Same queue, an extra rule, auto mode (keeps the current mode).
        let second = loader_ok(&[
            "attach",
            &tb.host_if,
            "--queue",
            "3",
            "--udp",
            "8080",
            "--udp",
            "8081",
        ]);
        assert!(
            second.starts_with("re-attached")
                && second.contains(&format!("mode {}", mode(generic))),
            "{second}"
        );
        let id = |s: &str| {
            s.split("prog id ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .map(str::to_string)
        };
        assert_ne!(id(&first), id(&second), "a new program was loaded");
        send_udp(&tb, to, 5, "two");
        send_udp(&tb, SocketAddr::from((tb.host_ip, 8081)), 5, "three");
        let frames = xsk.receive(10, Duration::from_secs(3));
        assert_eq!(
            count_marked(&frames, "two"),
            5,
            "the bound XSK still receives after re-attach"
        );
        assert_eq!(count_marked(&frames, "three"), 5, "the new rule steers too");
        // Counters survive a re-attach because the counter map is reused.
        assert_eq!(counters(&tb.host_if, 3).redirected, 15);
        loader_ok(&["detach", &tb.host_if]);
    }
}

#[test]
fn rules_can_be_edited_while_attached() {
    if !require_root("rules_can_be_edited_while_attached") {
        return;
    }
    let tb = Testbed::new();
    loader_ok(&["attach", &tb.host_if, "--queue", "3"]);
    let mut xsk = XskReceiver::bind(&tb.host_if, 3).expect("bind XSK");
    let to = SocketAddr::from((tb.host_ip, 7000));
    send_udp(&tb, to, 3, "norule");
    assert_eq!(
        count_marked(&xsk.receive(3, Duration::from_millis(500)), "norule"),
        0
    );
    loader_ok(&["rule", "add", &tb.host_if, "--udp", "7000"]);
    let dup = loader(&["rule", "add", &tb.host_if, "--udp", "7000"]);
    assert_eq!(dup.code, 1);
    assert!(dup.stderr.contains("already present"), "{}", dup.stderr);
    send_udp(&tb, to, 3, "rule");
    assert_eq!(
        count_marked(&xsk.receive(3, Duration::from_secs(3)), "rule"),
        3
    );
    // An address-specific rule only steers its address.
    loader_ok(&[
        "rule",
        "add",
        &tb.host_if,
        "--udp",
        "7001",
        "--ip",
        "198.19.255.1",
    ]);
    send_udp(&tb, SocketAddr::from((tb.host_ip, 7001)), 3, "otherip");
    assert_eq!(
        count_marked(&xsk.receive(3, Duration::from_millis(500)), "otherip"),
        0
    );
    loader_ok(&["rule", "del", &tb.host_if, "--udp", "7000"]);
    let missing = loader(&["rule", "del", &tb.host_if, "--udp", "7000"]);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("not present"), "{}", missing.stderr);
    send_udp(&tb, to, 3, "deleted");
    assert_eq!(
        count_marked(&xsk.receive(3, Duration::from_millis(500)), "deleted"),
        0
    );
    loader_ok(&["detach", &tb.host_if]);
}

/// A bad command must fail with a clear one-line message and change nothing.
fn assert_refused(args: &[&str], code: i32, message: &str, watched: &[&str]) {
    let before: Vec<String> = watched.iter().map(|i| world(i)).collect();
    let r = loader(args);
    assert_eq!(r.code, code, "xdp-loader {}: {r:?}", args.join(" "));
    assert!(
        r.stderr.contains(message),
        "xdp-loader {}: expected {message:?} in {:?}",
        args.join(" "),
        r.stderr
    );
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE"),
        "{}",
        r.stderr
    );
    let after: Vec<String> = watched.iter().map(|i| world(i)).collect();
    assert_eq!(
        before,
        after,
        "xdp-loader {} changed something",
        args.join(" ")
    );
}

/// Everything an attach could change about an interface: the link and its XDP program, the
/// pins, and the rules/queue recorded in them.
fn world(iface: &str) -> String {
    let pins = steer_bpf::PinDir::new(None, iface);
    let mut files: Vec<String> = std::fs::read_dir(pins.dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let status = loader(&["status", iface, "--json"]).stdout;
    format!("{}\n{files:?}\n{status}", link_state(iface))
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    if !require_root("bad_input_is_refused_and_changes_nothing") {
        return;
    }
    let tb = Testbed::new();
    let h = tb.host_if.as_str();
    let w = &[h][..];
    // Before anything is attached.
    assert_refused(
        &["attach", "nosuchif0", "--queue", "0", "--tcp", "80"],
        1,
        "interface \"nosuchif0\" does not exist",
        w,
    );
    assert_refused(
        &["attach", h, "--queue", "4", "--tcp", "80"],
        1,
        "queue 4 out of range",
        w,
    );
    assert_refused(
        &["attach", h, "--queue", "3", "--tcp", "0"],
        2,
        "port 0 cannot be steered",
        w,
    );
    assert_refused(
        &["attach", h, "--queue", "3", "--udp", "65536"],
        2,
        "out of range (1..=65535)",
        w,
    );
    assert_refused(
        &["attach", h, "--queue", "3", "--mode", "offload"],
        2,
        "invalid value 'offload'",
        w,
    );
    assert_refused(&["detach", h], 1, "nothing is attached", w);
    assert_refused(&["rule", "add", h, "--tcp", "80"], 1, "not attached", w);
    assert_refused(&["stats", h], 1, "not attached", w);

    // Without privileges (uid nobody, no capabilities).
    let xl = testbed::workspace_bin("xdp-loader");
    let r = testbed::run(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            xl.to_str().unwrap(),
            "attach",
            h,
            "--queue",
            "3",
        ],
    );
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("missing privilege") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
    assert!(
        world(h).contains("\"prog_id\": null"),
        "nothing attached without privileges"
    );

    // A foreign program (ours, loaded under another pin root, is foreign to the default root).
    let other_root = "/sys/fs/bpf/xsk-steer-foreign-test";
    let foreign_env = [("XSK_STEER_PIN_ROOT", other_root)];
    let r = loader_env(
        &["attach", h, "--queue", "3", "--mode", "generic"],
        &foreign_env,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_refused(
        &["attach", h, "--queue", "3", "--tcp", "80"],
        1,
        "foreign XDP program",
        w,
    );
    assert_refused(&["detach", h], 1, "foreign XDP program", w);
    // --force replaces it.
    let forced = loader_ok(&["attach", h, "--queue", "3", "--tcp", "80", "--force"]);
    assert!(forced.contains("replaced foreign XDP program"), "{forced}");
    let _ = std::fs::remove_dir_all(Path::new(other_root));

    // Attached now: bad edits change nothing either.
    assert_refused(
        &["attach", h, "--queue", "9", "--tcp", "81"],
        1,
        "queue 9 out of range",
        w,
    );
    assert_refused(&["rule", "del", h, "--tcp", "81"], 1, "not present", w);
    assert_refused(&["rule", "add", h, "--tcp", "80"], 1, "already present", w);
    assert_refused(
        &["rule", "add", h, "--tcp", "80", "--udp", "81"],
        2,
        "cannot be used with",
        w,
    );
    loader_ok(&["detach", h]);
    assert_refused(&["detach", h], 1, "nothing is attached", w);
    let _ = Ipv4Addr::LOCALHOST;
}

#[test]
fn a_socket_left_on_a_queue_the_attachment_no_longer_serves_gets_nothing() {
    if !require_root("a_socket_left_on_a_queue_the_attachment_no_longer_serves_gets_nothing") {
        return;
    }
    for generic in [false, true] {
        let tb = tb_for(generic);
        // Attached on queue 1 with a socket there; then re-attached to queue 3 while that socket
        // stays bound and registered in the (reused) XSKMAP. Matching traffic that lands on
        // queue 1 is not this attachment's any more: the kernel gets it, never that socket.
        loader_ok(&[
            "attach",
            &tb.host_if,
            "--queue",
            "1",
            "--mode",
            mode(generic),
            "--udp",
            "8080",
        ]);
        let mut stale = XskReceiver::bind(&tb.host_if, 1).expect("bind XSK on queue 1");
        loader_ok(&[
            "attach",
            &tb.host_if,
            "--queue",
            "3",
            "--mode",
            mode(generic),
            "--udp",
            "8080",
        ]);
        let kernel = UdpSocket::bind((tb.host_ip, PORT)).unwrap();
        tb.steer_to(1, generic);
        send_udp(&tb, SocketAddr::from((tb.host_ip, PORT)), 20, "stale-q");
        assert_eq!(
            kernel_udp_receive(&kernel, "stale-q", 20, Duration::from_secs(3)),
            20,
            "the kernel got every datagram ({})",
            mode(generic)
        );
        assert_eq!(
            count_marked(&stale.receive(1, Duration::from_millis(300)), "stale-q"),
            0,
            "the socket on the unserved queue got none ({})",
            mode(generic)
        );
        let c1 = counters(&tb.host_if, 1);
        assert_eq!(c1.redirected, 0, "{c1:?}");
        loader_ok(&["detach", &tb.host_if]);
    }
}
