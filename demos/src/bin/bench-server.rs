//! The server side of the benchmark suite: one server logic, served either by the kernel
//! (std::net) or by the AF_XDP stack, so a benchmark compares stacks and nothing else.
//!
//! Ports: PORT echoes (request/response, connection rate, scale), PORT+1 swallows a stream and
//! answers its byte count at EOF (bulk, the server receiving), PORT+2 streams until the peer
//! closes (bulk, the server sending). One thread per connection on both backends.
use std::{
    io::{self, Read, Write},
    net::SocketAddr,
    process::ExitCode,
    sync::atomic::Ordering,
};

use clap::Parser;
use demos::report::{serve_until_signalled, BackendArgs, SERVED};

#[global_allocator]
static ALLOC: demos::alloc_count::Counting = demos::alloc_count::Counting;

#[derive(Parser)]
#[command(
    about = "Benchmark server: echo on PORT, sink on PORT+1, source on PORT+2, over the kernel or the stack",
    after_help = "Prints one JSON line of cumulative counters (allocations, requests served, packets) on SIGUSR1 and at exit.\n\nExample (as root):\n  xdp-loader attach eth0 --queue 3\n  bench-server --backend stack --iface eth0 --queue 3 --port 7000 --cpu 0 &\n  bench-server --backend kernel --port 7100 &\n  # from a peer: bench-client rr --to <eth0's address>:7000 --conns 1"
)]
struct Cli {
    #[command(flatten)]
    backend: BackendArgs,
    /// Echo port; PORT+1 and PORT+2 are the sink and the source.
    #[arg(long)]
    port: u16,
    /// Stack: TCP receive and send buffer per connection, bytes (the window; the kernel
    /// autotunes its own up to several MiB).
    #[arg(long, default_value_t = 1024 * 1024)]
    tcp_buffer: usize,
    /// Stack: accept queue bound per listener (past it, SYNs are refused with RST).
    #[arg(long, default_value_t = 1024)]
    backlog: usize,
    /// Stack: open connections allowed.
    #[arg(long, default_value_t = 20_000)]
    max_connections: usize,
    /// Stack: delayed-ACK timeout in microseconds (0: ACK at once; default: the stack's).
    #[arg(long)]
    ack_delay_us: Option<u64>,
}

/// Echoes whatever arrives; every read answered counts as one request served.
fn echo(mut c: impl Read + Write) {
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
                SERVED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Swallows the stream; at EOF answers the byte count (8 bytes, little endian).
fn sink(mut c: impl Read + Write) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    let _ = c.write_all(&total.to_le_bytes());
    SERVED.fetch_add(1, Ordering::Relaxed);
}

/// Streams until the peer goes away.
fn source(mut c: impl Read + Write) {
    let buf = vec![0x5au8; 64 * 1024];
    while c.write_all(&buf).is_ok() {}
    SERVED.fetch_add(1, Ordering::Relaxed);
}

const HANDLERS: [(u16, fn(Conn)); 3] = [(0, |c| echo(c)), (1, |c| sink(c)), (2, |c| source(c))];

/// A connection of either backend.
enum Conn {
    Kernel(std::net::TcpStream),
    Stack(xsk_stack::TcpStream),
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Kernel(s) => s.read(b),
            Conn::Stack(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Kernel(s) => s.write(b),
            Conn::Stack(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serves each accepted connection on its own (small-stacked) thread, until accept fails.
fn accept_loop(mut accept: impl FnMut() -> io::Result<Conn> + Send + 'static, handle: fn(Conn)) {
    std::thread::spawn(move || loop {
        match accept() {
            Ok(c) => {
                let spawned = std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || handle(c));
                if let Err(e) = spawned {
                    eprintln!("bench-server: cannot spawn a connection thread: {e}");
                }
            }
            Err(e) if demos::accept_error_is_fatal(&e) => {
                eprintln!("bench-server: accept: {e}");
                return;
            }
            // One connection's trouble never stops the server.
            Err(e) => {
                tracing::debug!("accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    });
}

fn main() -> ExitCode {
    demos::init_logging();
    let cli = Cli::parse();
    if cli.port == 0 || cli.port > u16::MAX - 2 {
        eprintln!("bench-server: error: --port must be 1..=65533 (it uses PORT..=PORT+2)");
        return ExitCode::from(2);
    }
    let stack = match cli.backend.start_stack("bench-server", |b| {
        let b = match cli.ack_delay_us {
            Some(us) => b.ack_delay((us > 0).then(|| std::time::Duration::from_micros(us))),
            None => b,
        };
        b.tcp_buffers(cli.tcp_buffer, cli.tcp_buffer)
            .max_connections(cli.max_connections)
            .backlog(cli.backlog)
    }) {
        Ok(s) => s,
        Err(code) => return code,
    };
    for (offset, handle) in HANDLERS {
        let port = cli.port + offset;
        match &stack {
            None => {
                let l = match std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("bench-server: error: binding port {port}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                accept_loop(
                    move || {
                        let (c, _) = l.accept()?;
                        c.set_nodelay(true)?;
                        Ok(Conn::Kernel(c))
                    },
                    handle,
                );
            }
            Some(s) => {
                let l = match s.tcp_listen(port) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("bench-server: error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                accept_loop(move || Ok(Conn::Stack(l.accept()?.0)), handle);
            }
        }
    }
    println!(
        "bench-server: serving ports {}..={} on {}",
        cli.port,
        cli.port + 2,
        cli.backend.describe()
    );
    if serve_until_signalled(stack.as_ref(), cli.backend.duration, "bench-server") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
