//! HTTP/1.1 with keep-alive over the AF_XDP stack: `GET /` answers a small fixed body, anything
//! else 404. curl and ab work unchanged.
use std::{
    io::{Read, Write},
    process::ExitCode,
};

use clap::Parser;
use demos::{
    http::{step, Step},
    init_logging, Common,
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
    let stack = match cli.common.start("http-hello") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let listener = match stack.tcp_listen(cli.common.port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("http-hello: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "http-hello: serving http://{}/ on {} queue {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        cli.common.iface,
        cli.common.queue
    );
    std::thread::spawn(move || loop {
        match listener.accept() {
            Ok((c, _)) => {
                std::thread::spawn(move || serve(c));
            }
            Err(e) => {
                eprintln!("http-hello: accept: {e}");
                break;
            }
        }
    });
    cli.common.wait(&stack, "http-hello")
}
