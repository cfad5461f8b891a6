//! Echoes UDP datagrams back to their sender, over the AF_XDP stack.
use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use demos::{init_logging, Common};

#[derive(Parser)]
#[command(
    about = "UDP echo server on the AF_XDP stack",
    after_help = "Example (as root):\n  xdp-loader attach eth0 --queue 3\n  udp-echo --iface eth0 --queue 3 --port 9000\n  # from a peer: echo hi | nc -u -w1 <eth0's address> 9000"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let stack = match cli.common.start("udp-echo") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let sock = match stack.udp_bind(cli.common.port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("udp-echo: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "udp-echo: serving {} on {} queue {}",
        sock.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        cli.common.iface,
        cli.common.queue
    );
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, SocketAddr::V4(from))) => {
                    if let Err(e) = sock.send_to(&buf[..n], from) {
                        tracing::debug!(%from, "send: {e}");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("udp-echo: recv: {e}");
                    break;
                }
            }
        }
    });
    cli.common.wait(&stack, "udp-echo")
}
