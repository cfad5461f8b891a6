//! Echoes every byte of every TCP connection, over the AF_XDP stack.
use std::{
    io::{Read, Write},
    process::ExitCode,
};

use clap::Parser;
use demos::{init_logging, Common};

#[derive(Parser)]
#[command(
    about = "TCP echo server on the AF_XDP stack (one thread per connection)",
    after_help = "Example (as root):\n  xdp-loader attach eth0 --queue 3\n  tcp-echo --iface eth0 --queue 3 --port 7000\n  # from a peer: nc <eth0's address> 7000"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let stack = match cli.common.start("tcp-echo") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let listener = match stack.tcp_listen(cli.common.port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tcp-echo: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "tcp-echo: serving {} on {} queue {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        cli.common.iface,
        cli.common.queue
    );
    std::thread::spawn(move || loop {
        match listener.accept() {
            Ok((mut c, peer)) => {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(%peer, "read: {e}");
                                break;
                            }
                        }
                    }
                });
            }
            Err(e) => {
                eprintln!("tcp-echo: accept: {e}");
                break;
            }
        }
    });
    cli.common.wait(&stack, "tcp-echo")
}
