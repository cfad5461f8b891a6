//! The demo services as users run them: real binaries, real clients (curl, ab, nc) in the
//! namespace. Root only (skips loudly otherwise, fails under CI=true).

use testbed::{loader_ok, require_root, Service, Testbed};

fn bed() -> Testbed {
    let tb = Testbed::new();
    loader_ok(&["attach", &tb.host_if, "--queue", "3"]);
    tb
}

fn args<'a>(tb: &'a Testbed, port: &'a str) -> Vec<&'a str> {
    vec!["--iface", &tb.host_if, "--queue", "3", "--port", port]
}

#[test]
fn http_hello_serves_curl_and_ab_without_failures() {
    if !require_root("http_hello_serves_curl_and_ab_without_failures") {
        return;
    }
    let tb = bed();
    let _svc = Service::start("http-hello", &args(&tb, "8080"));
    let url = format!("http://{}:8080/", tb.host_ip);
    let out = tb.ns("curl", &["-s", "-i", "-m", "5", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl: {text}");
    assert!(
        text.starts_with("HTTP/1.1 200 OK")
            && text.contains("Content-Length: 29")
            && text.ends_with("Hello from the AF_XDP stack!\n"),
        "{text}"
    );
    let code = tb.ns(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "5",
            &format!("{url}missing"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&code.stdout), "404");
    // Two requests on one connection (keep-alive).
    let two = tb.ns(
        "curl",
        &["-s", "-m", "5", "-w", "%{num_connects}\n", &url, &url],
    );
    let t = String::from_utf8_lossy(&two.stdout);
    assert_eq!(t.matches("Hello from").count(), 2, "{t}");
    let hello = "Hello from the AF_XDP stack!\n";
    assert_eq!(
        t,
        format!("{hello}1\n{hello}0\n"),
        "the second request reused the connection"
    );
    for extra in [&["-k"][..], &[][..]] {
        let mut a = vec!["-n", "2000", "-c", "16"];
        a.extend_from_slice(extra);
        a.push(&url);
        let ab = tb.ns("ab", &a);
        let t = String::from_utf8_lossy(&ab.stdout);
        assert!(
            ab.status.success(),
            "ab {extra:?}: {t} {}",
            String::from_utf8_lossy(&ab.stderr)
        );
        assert!(t.contains("Complete requests:      2000"), "{t}");
        assert!(t.contains("Failed requests:        0"), "{t}");
        assert!(!t.contains("Non-2xx"), "{t}");
    }
}

#[test]
fn tcp_echo_echoes_with_nc() {
    if !require_root("tcp_echo_echoes_with_nc") {
        return;
    }
    let tb = bed();
    let _svc = Service::start("tcp-echo", &args(&tb, "7000"));
    let script = format!("head -c 200000 /dev/urandom > /tmp/{0}.in; nc -q 2 -w 5 {1} 7000 < /tmp/{0}.in > /tmp/{0}.out; cmp /tmp/{0}.in /tmp/{0}.out && echo SAME; rm -f /tmp/{0}.in /tmp/{0}.out", tb.ns, tb.host_ip);
    let out = tb.ns("bash", &["-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "SAME",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn udp_echo_echoes_with_nc() {
    if !require_root("udp_echo_echoes_with_nc") {
        return;
    }
    let tb = bed();
    let _svc = Service::start("udp-echo", &args(&tb, "9000"));
    let out = tb.ns(
        "bash",
        &[
            "-c",
            &format!("echo datagram-1 | nc -u -w 1 {} 9000", tb.host_ip),
        ],
    );
    // Exact bytes: a lost trailing newline (or any other byte) must fail this.
    assert_eq!(
        out.stdout,
        b"datagram-1\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn demos_explain_a_missing_attachment() {
    if !require_root("demos_explain_a_missing_attachment") {
        return;
    }
    let tb = Testbed::new();
    for demo in ["tcp-echo", "udp-echo", "http-hello"] {
        let out = testbed::run(
            testbed::workspace_bin(demo).to_str().unwrap(),
            &args(&tb, "7000"),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{demo}: {err}");
        assert!(
            err.contains(&format!(
                "hint: attach the steering program first: xdp-loader attach {} --queue 3",
                tb.host_if
            )),
            "{demo}: {err}"
        );
    }
    let out = testbed::run(
        testbed::workspace_bin("tcp-echo").to_str().unwrap(),
        &args(&tb, "0"),
    );
    assert_eq!(out.status.code(), Some(2), "port 0 is a usage error");
}

#[test]
fn killed_service_fails_open_and_a_restart_takes_the_flows_back() {
    if !require_root("killed_service_fails_open_and_a_restart_takes_the_flows_back") {
        return;
    }
    let tb = bed();
    let echo_once = |tb: &Testbed| {
        let out = tb.ns(
            "bash",
            &[
                "-c",
                &format!("echo ping-{0} | nc -q 1 -w 3 {0} 7000", tb.host_ip),
            ],
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    let svc = Service::start("tcp-echo", &args(&tb, "7000"));
    assert_eq!(echo_once(&tb).1, format!("ping-{}", tb.host_ip));
    // Under load: a client keeps opening connections and echoing while the service dies.
    // Runs until the kernel has refused a few connections after the kill (bounded to 5 s).
    let load_until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let to = std::net::SocketAddr::from((tb.host_ip, 7000));
    let load = testbed::netns::spawn_in_netns(&tb.ns, move || {
        use std::io::{Read, Write};
        let (mut ok, mut refused) = (0u32, 0u32);
        while std::time::Instant::now() < load_until && refused < 3 {
            match std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_millis(300)) {
                Ok(mut s) => {
                    let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(300)));
                    let mut b = [0u8; 4];
                    if s.write_all(b"load").is_ok() && s.read_exact(&mut b).is_ok() {
                        ok += 1;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                Err(_) => {}
            }
        }
        (ok, refused)
    })
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    svc.kill9(); // no clean shutdown
    let (ok, refused) = load.join().unwrap().unwrap();
    assert!(
        ok > 0 && refused > 0,
        "served before the kill, refused by the kernel after: {ok} ok, {refused} refused"
    );
    // The kernel closed the XSK, so the flow falls back to the kernel, which has no listener: RST.
    let started = std::time::Instant::now();
    let (code, text) = echo_once(&tb);
    assert!(
        code != Some(0) && text.is_empty(),
        "refused by the kernel: {code:?} {text}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "refused at once, not timed out"
    );
    let status = loader_ok(&["status", &tb.host_if]);
    assert!(
        status.contains("not running: stale"),
        "the dead service's rule is flagged: {status}"
    );
    assert!(status.contains("3:-"), "{status}");
    // Started again, without re-attaching: it takes the flows (and the stale rule) back.
    let _svc = Service::start("tcp-echo", &args(&tb, "7000"));
    assert_eq!(echo_once(&tb).1, format!("ping-{}", tb.host_ip));
    let status = loader_ok(&["status", &tb.host_if]);
    assert!(
        !status.contains("not running") && status.contains("3:xsk"),
        "{status}"
    );
}

#[test]
fn detaching_under_a_running_service_stops_it_with_a_clear_error() {
    if !require_root("detaching_under_a_running_service_stops_it_with_a_clear_error") {
        return;
    }
    let tb = bed();
    let mut svc = Service::start("tcp-echo", &args(&tb, "7000"));
    loader_ok(&["detach", &tb.host_if]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while svc.running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the service noticed within 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, stderr) = svc.finish();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the steering program was detached from")
            && stderr.contains("xdp-loader attach"),
        "{stderr}"
    );
}

/// What `nmap -sS` does to a port, and what any client kernel does when a SYN-ACK reaches it
/// with no socket: SYN, then RST at the SYN's sequence number + 1 (no ACK ever completes the
/// handshake). Sent from `fake`, an address no kernel owns, `per_port` times for each port.
fn syn_scan(
    tb: &Testbed,
    fake: std::net::Ipv4Addr,
    ports: std::ops::RangeInclusive<u16>,
    per_port: u16,
) {
    use testbed::{frames::Frame, netns::in_netns, raw::RawSender};
    let host_mac = testbed::mac_of(&tb.host_if);
    let (host, peer_if) = (tb.host_ip, tb.peer_if.clone());
    in_netns(&tb.ns, move || {
        let raw = RawSender::open(&peer_if).unwrap();
        for n in 0..per_port {
            for port in ports.clone() {
                let sport = 40000 + n * 7 + (port % 7);
                let isn = 1_000_000u32 * (n as u32 + 1) + port as u32;
                let seg = |flags: u8, seq: u32| Frame {
                    dst_mac: host_mac,
                    tcp_flags: flags,
                    seq,
                    ..Frame::tcp(fake, host, sport, port)
                };
                raw.send(&seg(0x02, isn).build()).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(500));
                raw.send(&seg(0x04, isn.wrapping_add(1)).build()).unwrap();
            }
        }
    })
    .unwrap();
}

/// The service's own counters, through `xdp-loader stats --json`.
fn service_runtime(tb: &Testbed) -> serde_json::Value {
    let out = loader_ok(&["stats", &tb.host_if, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["services"][0]["stats"]["runtime"].clone()
}

#[test]
fn demos_survive_a_syn_scan_and_keep_serving() {
    if !require_root("demos_survive_a_syn_scan_and_keep_serving") {
        return;
    }
    use std::io::{Read, Write};
    for (demo, port) in [("tcp-echo", 7400u16), ("http-hello", 8090)] {
        let tb = bed();
        let p = port.to_string();
        let mut svc = Service::start(demo, &args(&tb, &p));
        // Replies to the scanner's address reach the peer's MAC, where no kernel owns the
        // address: nothing answers for the scanner.
        let o = tb.host_ip.octets();
        let fake = std::net::Ipv4Addr::new(o[0], o[1], o[2], 77);
        let peer_mac = tb.ns_ok("cat", &[&format!("/sys/class/net/{}/address", tb.peer_if)]);
        testbed::run_ok(
            "ip",
            &[
                "neigh",
                "replace",
                &fake.to_string(),
                "lladdr",
                peer_mac.trim(),
                "dev",
                &tb.host_if,
                "nud",
                "permanent",
            ],
        );

        // An established connection before the scan (tcp-echo) that must survive it.
        let to = std::net::SocketAddr::from((tb.host_ip, port));
        let live = (demo == "tcp-echo").then(|| {
            testbed::netns::in_netns(&tb.ns, move || {
                let mut s =
                    std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(5))
                        .unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                s.write_all(b"before").unwrap();
                let mut b = [0u8; 6];
                s.read_exact(&mut b).unwrap();
                assert_eq!(&b, b"before");
                s
            })
            .unwrap()
        });

        // The service's port 20 times over, and 200 ports around it once.
        syn_scan(&tb, fake, port..=port, 20);
        syn_scan(&tb, fake, port - 100..=port + 100, 1);

        assert!(
            svc.running(),
            "{demo} died under the scan: {:?}",
            svc.finish()
        );
        if let Some(mut s) = live {
            s.write_all(b"after!").unwrap();
            let mut b = [0u8; 6];
            s.read_exact(&mut b).unwrap();
            assert_eq!(
                &b, b"after!",
                "the established connection lived through the scan"
            );
        }
        // New connections are still accepted and served.
        if demo == "tcp-echo" {
            let echoed = testbed::netns::in_netns(&tb.ns, move || {
                let mut got = Vec::new();
                for i in 0..5u8 {
                    let mut s = std::net::TcpStream::connect_timeout(
                        &to,
                        std::time::Duration::from_secs(5),
                    )
                    .unwrap();
                    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                        .unwrap();
                    s.write_all(&[i; 100]).unwrap();
                    let mut b = [0u8; 100];
                    s.read_exact(&mut b).unwrap();
                    got.push(b == [i; 100]);
                }
                got
            })
            .unwrap();
            assert_eq!(echoed, vec![true; 5], "every new connection echoed");
        } else {
            let url = format!("http://{}:{port}/", tb.host_ip);
            for _ in 0..5 {
                let out = tb.ns("curl", &["-s", "-m", "5", &url]);
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout),
                    "Hello from the AF_XDP stack!\n"
                );
            }
        }
        let rt = service_runtime(&tb);
        assert!(
            rt["EmbryonicRsts"].as_u64().unwrap_or(0) >= 1,
            "{demo}: the aborted handshakes were counted: {rt}"
        );
        assert!(svc.running(), "{demo} still running");
    }
}
