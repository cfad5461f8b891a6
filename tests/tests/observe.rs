//! Observability end to end: counters for a scripted exchange, the connection-state hook,
//! pcap capture read back by tcpdump and a pcap parser, stats over the control socket from
//! another process, and the Prometheus endpoint. Root only (skips loudly otherwise, fails under
//! CI=true).

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream as KTcpStream, UdpSocket as KUdpSocket},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use testbed::{loader_ok, netns::in_netns, require_root, Service, Testbed};
use xsk_stack::{ConnEvent, Stack, TcpState};

fn bed() -> Testbed {
    let tb = Testbed::new();
    loader_ok(&["attach", &tb.host_if, "--queue", "3"]);
    tb
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn counters_and_state_hook_for_a_scripted_exchange() {
    if !require_root("counters_and_state_hook_for_a_scripted_exchange") {
        return;
    }
    let tb = bed();
    // A static rule for a UDP port nobody binds: its datagrams reach the stack, which answers
    // port unreachable (UdpNoPorts).
    loader_ok(&["rule", "add", &tb.host_if, "--udp", "9999"]);
    let events: Arc<Mutex<Vec<ConnEvent>>> = Arc::default();
    let ev = events.clone();
    let stack = Stack::builder(&tb.host_if, 3)
        .on_conn_state(move |e| ev.lock().unwrap().push(e.clone()))
        .start()
        .unwrap();
    let listener = stack.tcp_listen(7100).unwrap();
    let udp = stack.udp_bind(9100).unwrap();
    let server = thread::spawn(move || {
        let (mut c, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap(); // the client's FIN
        drop(c);
        let mut b = [0u8; 64];
        for _ in 0..3 {
            let (n, SocketAddr::V4(from)) = udp.recv_from(&mut b).unwrap() else {
                panic!("v4")
            };
            udp.send_to(&b[..n], from).unwrap();
        }
        peer
    });
    let (tcp_to, udp_to, noport) = (
        SocketAddr::from((tb.host_ip, 7100)),
        SocketAddr::from((tb.host_ip, 9100)),
        SocketAddr::from((tb.host_ip, 9999)),
    );
    let client_port = in_netns(&tb.ns, move || {
        let mut s = KTcpStream::connect(tcp_to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        let port = s.local_addr().unwrap().port();
        let u = KUdpSocket::bind("0.0.0.0:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for i in 0..3 {
            u.send_to(format!("d{i}").as_bytes(), udp_to).unwrap();
            u.recv_from(&mut [0u8; 64]).unwrap();
        }
        u.send_to(b"nobody", noport).unwrap();
        port
    })
    .unwrap();
    server.join().unwrap();
    eventually("the connection to close and the ICMP to go out", || {
        let s = stack.stats().unwrap();
        s.connections == 0 && s.curr_estab == 0 && s.device.udp_no_ports == 1
    });
    let s = stack.stats().unwrap();
    let (d, r) = (s.device, s.runtime);
    // One connection, one request, closed by the client first.
    assert_eq!(
        (
            r.passive_opens,
            r.active_opens,
            r.attempt_fails,
            r.estab_resets
        ),
        (1, 0, 0, 0),
        "{r:?}"
    );
    assert_eq!(s.curr_estab, 0);
    // SYN, ACK, data, ACK of the echo, FIN, ACK of our FIN: at least 5 in; SYN-ACK, echo,
    // ACKs, FIN out. Nothing was lost on a veth, so nothing was retransmitted.
    assert!(d.tcp_in_segs >= 5 && d.tcp_out_segs >= 4, "{d:?}");
    assert_eq!(
        (d.tcp_retrans_segs, d.tcp_out_rsts, d.tcp_in_errs),
        (0, 0, 0),
        "{d:?}"
    );
    assert_eq!(
        (
            d.udp_in_datagrams,
            d.udp_out_datagrams,
            d.udp_no_ports,
            d.udp_in_errors,
            d.udp_rcvbuf_errors
        ),
        (3, 3, 1, 0, 0),
        "{d:?}"
    );
    assert_eq!(
        (d.rx_malformed, d.rx_bad_checksum, d.rx_not_ipv4),
        (0, 0, 0),
        "{d:?}"
    );
    assert_eq!(s.frames.stack + s.frames.tx, 0, "{:?}", s.frames);

    // The hook saw the whole life of the connection, in order.
    let seen: Vec<(TcpState, TcpState)> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.remote.port() == client_port && e.local.port() == 7100)
        .map(|e| (e.from, e.to))
        .collect();
    let states: Vec<TcpState> = std::iter::once(seen[0].0)
        .chain(seen.iter().map(|x| x.1))
        .collect();
    assert_eq!(
        states,
        vec![
            TcpState::Listen,
            TcpState::SynReceived,
            TcpState::Established,
            TcpState::CloseWait,
            TcpState::LastAck,
            TcpState::Closed
        ],
        "{seen:?}"
    );
}

#[test]
fn capture_shows_the_handshake_in_order() {
    if !require_root("capture_shows_the_handshake_in_order") {
        return;
    }
    let tb = bed();
    let _svc = Service::start(
        "tcp-echo",
        &["--iface", &tb.host_if, "--queue", "3", "--port", "7200"],
    );
    let file = std::env::temp_dir().join(format!("{}-capture.pcap", tb.ns));
    let out = loader_ok(&[
        "capture",
        &tb.host_if,
        "--queue",
        "3",
        "-w",
        file.to_str().unwrap(),
        "--count",
        "8",
    ]);
    assert!(out.contains("capturing up to 8 frames"), "{out}");
    let to = SocketAddr::from((tb.host_ip, 7200));
    in_netns(&tb.ns, move || {
        let mut s = KTcpStream::connect(to).unwrap();
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
    })
    .unwrap();
    // The writer closes the file once 8 frames are in.
    eventually("8 frames in the capture", || {
        std::fs::read(&file)
            .map(|b| b.len() > 24 + 8 * 16 + 8 * 54)
            .unwrap_or(false)
    });
    thread::sleep(Duration::from_millis(300));

    // Read back with a pcap parser: SYN in, SYN-ACK out, ACK in, in that order.
    let mut reader = pcap_file::pcap::PcapReader::new(std::fs::File::open(&file).unwrap()).unwrap();
    let mut flags = Vec::new();
    while let Some(p) = reader.next_packet() {
        let p = p.unwrap();
        let d = &p.data;
        assert_eq!(&d[12..14], &[0x08, 0x00], "Ethernet + IPv4 on the wire");
        if d[23] == 6 {
            let ihl = ((d[14] & 0x0f) * 4) as usize;
            let tcp = &d[14 + ihl..];
            flags.push((
                u16::from_be_bytes([tcp[0], tcp[1]]),
                u16::from_be_bytes([tcp[2], tcp[3]]),
                tcp[13],
            ));
        }
    }
    assert!(flags.len() >= 3, "{flags:?}");
    assert_eq!(flags[0].1, 7200);
    assert_eq!(
        flags[0].2 & 0x12,
        0x02,
        "first: SYN from the client {flags:?}"
    );
    assert_eq!(
        (flags[1].0, flags[1].2 & 0x12),
        (7200, 0x12),
        "then: SYN-ACK from the stack {flags:?}"
    );
    assert_eq!(flags[2].2 & 0x12, 0x10, "then: the client's ACK {flags:?}");
    // tcpdump reads it too.
    let td = testbed::run("tcpdump", &["-n", "-r", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&td.stdout);
    assert!(
        td.status.success(),
        "{}",
        String::from_utf8_lossy(&td.stderr)
    );
    let first: Vec<&str> = text.lines().take(3).collect();
    assert!(
        first[0].contains("> ") && first[0].contains(".7200: Flags [S]"),
        "{text}"
    );
    assert!(
        first[1].contains(&format!("{}.7200 >", tb.host_ip)) && first[1].contains("Flags [S.]"),
        "{text}"
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn stats_over_the_control_socket_and_prometheus() {
    if !require_root("stats_over_the_control_socket_and_prometheus") {
        return;
    }
    let tb = bed();
    let metrics_port = 20000 + (std::process::id() % 20000) as u16;
    let metrics = format!("127.0.0.1:{metrics_port}");
    let _svc = Service::start(
        "http-hello",
        &[
            "--iface",
            &tb.host_if,
            "--queue",
            "3",
            "--port",
            "8080",
            "--metrics",
            &metrics,
        ],
    );
    let url = format!("http://{}:8080/", tb.host_ip);
    for _ in 0..3 {
        assert!(tb.ns("curl", &["-s", "-m", "5", &url]).status.success());
    }
    // Another process (xdp-loader) reads the service's counters through its control socket.
    eventually("three passive opens", || {
        let v: serde_json::Value =
            serde_json::from_str(&loader_ok(&["stats", &tb.host_if, "--json"])).unwrap();
        v["services"][0]["stats"]["runtime"]["TcpPassiveOpens"] == 3
    });
    let v: serde_json::Value =
        serde_json::from_str(&loader_ok(&["stats", &tb.host_if, "--json"])).unwrap();
    let svc = &v["services"][0];
    assert_eq!(svc["queue"], 3);
    assert!(
        svc["stats"]["device"]["TcpInSegs"].as_u64().unwrap() > 0,
        "{svc}"
    );
    assert_eq!(svc["stats"]["frames_total"], 4096);
    let text = loader_ok(&["stats", &tb.host_if]);
    assert!(
        text.contains("stack on queue 3 (pid ")
            && text.contains("tcp_passive_opens")
            && text.contains("umem_frames"),
        "{text}"
    );

    // Prometheus: parses, every sample has HELP and TYPE and the iface/queue labels.
    let body = {
        let mut s = std::net::TcpStream::connect(&metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    };
    let (head, text) = body.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && head.contains("text/plain; version=0.0.4"),
        "{head}"
    );
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(scrape.samples.len() > 40, "{}", scrape.samples.len());
    for s in &scrape.samples {
        assert_eq!(s.labels.get("iface"), Some(tb.host_if.as_str()), "{s:?}");
        assert_eq!(s.labels.get("queue"), Some("3"), "{s:?}");
        assert!(scrape.docs.contains_key(&s.metric), "HELP for {}", s.metric);
    }
    let opens = scrape
        .samples
        .iter()
        .find(|s| s.metric == "xsk_tcp_passive_opens_total")
        .unwrap();
    assert!(
        matches!(opens.value, prometheus_parse::Value::Counter(v) if v == 3.0),
        "{opens:?}"
    );
    let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
    assert_eq!(types, helps);
    // A second scrape still works (the endpoint keeps serving).
    assert!(std::net::TcpStream::connect(&metrics).is_ok());
}

#[test]
fn connections_with_rtt_and_rto_from_another_process() {
    if !require_root("connections_with_rtt_and_rto_from_another_process") {
        return;
    }
    let tb = bed();
    let _svc = Service::start(
        "tcp-echo",
        &["--iface", &tb.host_if, "--queue", "3", "--port", "7100"],
    );
    let to = SocketAddr::from((tb.host_ip, 7100));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let ns = tb.ns.clone();
    // A client that echoes a few rounds (so the server has RTT samples), then stays connected.
    let client = thread::spawn(move || {
        in_netns(&ns, move || {
            let mut s = KTcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            for i in 0..5u8 {
                s.write_all(&[i; 2000]).unwrap();
                let mut b = [0u8; 2000];
                s.read_exact(&mut b).unwrap();
            }
            addr_tx.send(s.local_addr().unwrap()).unwrap();
            let _ = rx.recv_timeout(Duration::from_secs(20));
        })
        .unwrap()
    });
    let client_addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&loader_ok(&[
        "stats",
        &tb.host_if,
        "--connections",
        "--json",
    ]))
    .unwrap();
    let conns = v["services"][0]["connections"].as_array().unwrap().clone();
    assert_eq!(conns.len(), 1, "{v}");
    let c = &conns[0];
    assert_eq!(c["state"], "ESTABLISHED", "{c}");
    assert_eq!(c["remote"], client_addr.to_string(), "{c}");
    assert_eq!(c["local"], to.to_string(), "{c}");
    assert!(c["srtt_us"].is_u64(), "an RTT was measured: {c}");
    assert!(
        c["rto_ms"].as_u64().unwrap() >= 200,
        "the 200 ms floor: {c}"
    );
    assert_eq!(c["retransmits"], 0, "{c}");
    let text = loader_ok(&["stats", &tb.host_if, "--connections"]);
    assert!(
        text.contains("stack on queue 3: 1 TCP connection(s)")
            && text.contains("ESTABLISHED")
            && text.contains(&client_addr.to_string()),
        "{text}"
    );
    let _ = tx.send(());
    client.join().unwrap();
}
