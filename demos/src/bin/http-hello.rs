//! HTTP/1.1 with keep-alive over the AF_XDP stack: `GET /` answers a small fixed body, anything
//! else 404. curl and ab work unchanged.
use std::{
    io::{Read, Write},
    process::ExitCode,
};

use clap::Parser;
use demos::{
    http::{step, Step},
    init_logging, serve_tcp, Common,
};

#[derive(Parser)]
#[command(
    about = "HTTP/1.1 hello server on the AF_XDP stack (keep-alive, one thread per connection)",
    after_help = "Example (as root):\n  xdp-loader attach eth0 --queue 3\n  http-hello --iface eth0 --queue 3 --port 8080\n  # from a peer: curl http://<eth0's address>:8080/   or   ab -n 1000 -c 10 -k http://<addr>:8080/"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
}

fn serve(mut c: xsk_stack::TcpStream) {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match step(&buf) {
            Step::Respond {
                response,
                consumed,
                close,
            } => {
                buf.drain(..consumed);
                if c.write_all(&response).is_err() || close {
                    break;
                }
                continue;
            }
            Step::More => {}
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    // Let the last response go out before the FIN.
    let _ = c.wait_sent(Some(std::time::Duration::from_secs(5)));
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    serve_tcp(&cli.common, "http-hello", Some("http"), serve)
}
