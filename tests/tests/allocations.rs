//! No heap allocation per packet: request/response in steady state through the stack, counted
//! by a counting global allocator in this test binary (its only test, so nothing else allocates
//! alongside). Root only (skips loudly otherwise, fails under CI=true).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream as KTcpStream},
    sync::mpsc,
    time::Duration,
};

use demos::alloc_count::{counts, Counting};
use testbed::{loader_ok, netns::spawn_in_netns, require_root, Testbed};

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn steady_state_request_response_allocates_nothing_per_packet() {
    if !require_root("steady_state_request_response_allocates_nothing_per_packet") {
        return;
    }
    let tb = Testbed::new();
    loader_ok(&["attach", &tb.host_if, "--queue", "3"]);
    for busy in [false, true] {
        let stack = xsk_stack::Stack::builder(&tb.host_if, 3)
            .busy_poll(busy)
            .start()
            .unwrap();
        let listener = stack.tcp_listen(7000).unwrap();
        let to = SocketAddr::from((tb.host_ip, 7000));
        // The peer: warm up, then signal, run the measured requests, signal again.
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let peer = spawn_in_netns(&tb.ns, move || {
            let mut s = KTcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 1];
            let mut round = |n: usize| {
                for _ in 0..n {
                    s.write_all(b"x").unwrap();
                    s.read_exact(&mut b).unwrap();
                }
            };
            round(500);
            tx.send(()).unwrap();
            go_rx.recv().unwrap();
            round(3000);
            tx.send(()).unwrap();
            go_rx.recv().unwrap();
        })
        .unwrap();
        let (mut c, _) = listener
            .accept_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let server = std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while let Ok(n) = c.read(&mut b) {
                if n == 0 || c.write_all(&b[..n]).is_err() {
                    break;
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let p0 = stack.stats().unwrap().device;
        let (a0, _) = counts();
        go_tx.send(()).unwrap();
        rx.recv_timeout(Duration::from_secs(20)).unwrap();
        let (a1, _) = counts();
        let p1 = stack.stats().unwrap().device;
        go_tx.send(()).unwrap();
        peer.join().unwrap().unwrap();
        server.join().unwrap();
        let packets = (p1.rx_packets + p1.tx_packets) - (p0.rx_packets + p0.tx_packets);
        let allocs = a1 - a0;
        eprintln!("busy_poll={busy}: {allocs} allocations over {packets} packets");
        assert!(packets >= 6000, "{packets} packets");
        // `stats()` itself allocates a little (strings in the snapshot); per packet it must be 0.
        assert!(
            allocs < 50,
            "busy_poll={busy}: {allocs} heap allocations over {packets} packets in steady state"
        );
    }
}
