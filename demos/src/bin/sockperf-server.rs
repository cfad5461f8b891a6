//! A sockperf-compatible server on the AF_XDP stack: UDP and TCP on one port, so the unmodified
//! `sockperf ping-pong` / `under-load` clients measure the stack exactly as they measure
//! `sockperf server` on the kernel.
use std::{
    io::{Read, Write},
    net::SocketAddr,
    process::ExitCode,
    sync::atomic::Ordering,
};

use clap::Parser;
use demos::{
    init_logging,
    report::{serve_until_signalled, SERVED},
    sockperf::{serve_stream, MAX_MESSAGE},
    Common,
};

#[global_allocator]
static ALLOC: demos::alloc_count::Counting = demos::alloc_count::Counting;

#[derive(Parser)]
#[command(
    about = "sockperf server on the AF_XDP stack (UDP and TCP on --port; ping-pong and under-load)",
    after_help = "Example (as root):\n  xdp-loader attach eth0 --queue 3\n  sockperf-server --iface eth0 --queue 3 --port 11111\n  # from a peer: sockperf ping-pong -i <eth0's address> -p 11111 -m 64 -t 5 [--tcp]"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
}

/// Answers the messages of one TCP connection until it closes (sockperf's client ends with RST).
fn serve_tcp(mut c: xsk_stack::TcpStream) {
    let mut buf = vec![0u8; 2 * MAX_MESSAGE];
    let mut have = 0;
    loop {
        match c.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        let mut replies = 0;
        let served = serve_stream(&mut buf[..have], |m| {
            replies += 1;
            c.write_all(m)
        });
        let used = match served {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("closing: {e}");
                return;
            }
        };
        SERVED.fetch_add(replies, Ordering::Relaxed);
        buf.copy_within(used..have, 0);
        have -= used;
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let stack = match cli.common.start("sockperf-server") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let port = cli.common.port;
    let (udp, tcp) = match (stack.udp_bind(port), stack.tcp_listen(port)) {
        (Ok(u), Ok(t)) => (u, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("sockperf-server: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            match udp.recv_from(&mut buf) {
                Ok((n, SocketAddr::V4(from))) => {
                    if demos::sockperf::reply_in_place(&mut buf[..n]) {
                        if let Err(e) = udp.send_to(&buf[..n], from) {
                            tracing::debug!(%from, "send: {e}");
                        }
                        SERVED.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("sockperf-server: udp: {e}");
                    return;
                }
            }
        }
    });
    std::thread::spawn(move || loop {
        match tcp.accept() {
            Ok((c, _)) => {
                let _ = c.set_nodelay(true);
                std::thread::spawn(move || serve_tcp(c));
            }
            Err(e) if demos::accept_error_is_fatal(&e) => {
                eprintln!("sockperf-server: accept: {e}");
                return;
            }
            // One connection's trouble never stops the server.
            Err(e) => {
                tracing::debug!("accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    });
    println!(
        "sockperf-server: serving udp and tcp {}:{port} on {} queue {}",
        stack.local_ip(),
        cli.common.iface,
        cli.common.queue
    );
    if serve_until_signalled(Some(&stack), cli.common.duration, "sockperf-server") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
