//! Echoes every byte of every TCP connection, over the AF_XDP stack.
use std::{
    io::{Read, Write},
    process::ExitCode,
};

use clap::Parser;
use demos::{init_logging, serve_tcp, Common};

#[derive(Parser)]
#[command(
    about = "TCP echo server on the AF_XDP stack (one thread per connection)",
    after_help = "Example (as root):\n  xdp-loader attach eth0 --queue 3\n  tcp-echo --iface eth0 --queue 3 --port 7000\n  # from a peer: nc <eth0's address> 7000"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
}

/// Echoes every byte until the peer closes.
fn echo(mut c: xsk_stack::TcpStream) {
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
                tracing::debug!("read: {e}");
                break;
            }
        }
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    serve_tcp(&cli.common, "tcp-echo", None, echo)
}
