//! The client side of the benchmark suite, the same binary against either server: kernel
//! sockets only, so what differs between two runs is the server's stack. Prints one JSON line.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::json;

#[derive(Parser)]
#[command(
    about = "Benchmark client (kernel sockets): request/response latency, bulk, connection rate",
    after_help = "Example (from the peer namespace; bench-server serves echo on PORT, sink on PORT+1, source on PORT+2):\n  bench-client rr --to 198.18.1.1:7000 --conns 1 --seconds 2\n  bench-client rr --to 198.18.1.1:7000 --conns 1 --idle 1000\n  bench-client bulk-send --to 198.18.1.1:7001 --seconds 2\n  bench-client bulk-recv --to 198.18.1.1:7002 --seconds 2\n  bench-client conn-rate --to 198.18.1.1:7000 --threads 4 --seconds 2"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Bounds every run: a benchmark loop never runs longer than this.
const MAX_SECONDS: f64 = 60.0;

#[derive(Subcommand)]
enum Cmd {
    /// Ping-pong SIZE bytes on CONNS connections: latency percentiles and requests/s.
    Rr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: usize,
        #[arg(long, default_value_t = 1)]
        size: usize,
        /// Measuring time (after the warm-up).
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        #[arg(long, default_value_t = 0.2)]
        warmup: f64,
        /// Connections opened first and left idle for the whole run.
        #[arg(long, default_value_t = 0)]
        idle: usize,
        /// Measure this many times over the same idle connections (one JSON line each).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Streams to a sink for SECONDS, then reads back the count it received: Gbit/s.
    BulkSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Reads from a source for SECONDS: Gbit/s.
    BulkRecv {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Connect, one 1-byte request and its answer, close; on THREADS threads: connections/s.
    ConnRate {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 4)]
        threads: usize,
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
}

fn check_seconds(s: f64) -> Result<Duration, String> {
    if !(s > 0.0 && s <= MAX_SECONDS) {
        return Err(format!("--seconds/--warmup must be in (0, {MAX_SECONDS}]"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    let c = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(c)
}

/// Latency quantiles reported and plotted (a CDF).
const QUANTILES: [f64; 16] = [
    0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999,
];

fn rr(
    to: SocketAddr,
    conns: usize,
    size: usize,
    measure: Duration,
    warmup: Duration,
    idle: usize,
    repeat: usize,
) -> Result<Vec<serde_json::Value>, String> {
    if !(1..=100).contains(&repeat) {
        return Err("--repeat must be 1..=100".into());
    }
    if conns == 0 || conns > 4096 || size == 0 || size > 65536 {
        return Err("--conns must be 1..=4096 and --size 1..=65536".into());
    }
    let mut idle_conns = Vec::with_capacity(idle);
    let t0 = Instant::now();
    for i in 0..idle {
        // A server whose accept queue is full refuses (the stack answers RST where the kernel
        // drops the SYN): back off and retry, as a client would.
        let mut tries = 0;
        let c = loop {
            match connect(to) {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries < 500 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(format!("idle connection {i}: {e}")),
            }
        };
        idle_conns.push(c);
        if t0.elapsed() > Duration::from_secs(120) {
            return Err(format!("opening {idle} idle connections took over 120 s"));
        }
    }
    let open_idle_s = t0.elapsed().as_secs_f64();
    let mut lines = Vec::new();
    for _ in 0..repeat {
        lines.push(rr_once(
            to,
            conns,
            size,
            measure,
            warmup,
            idle,
            open_idle_s,
        )?);
    }
    drop(idle_conns);
    Ok(lines)
}

fn rr_once(
    to: SocketAddr,
    conns: usize,
    size: usize,
    measure: Duration,
    warmup: Duration,
    idle: usize,
    open_idle_s: f64,
) -> Result<serde_json::Value, String> {
    let start = Instant::now() + Duration::from_millis(50);
    let (measure_from, end) = (start + warmup, start + warmup + measure);
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || -> Result<(Histogram<u64>, u64), String> {
                let mut c = connect(to).map_err(|e| format!("connect: {e}"))?;
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                    .map_err(|e| e.to_string())?;
                let req = vec![0x42u8; size];
                let mut resp = vec![0u8; size];
                let mut n = 0;
                while Instant::now() < start {
                    std::thread::sleep(Duration::from_millis(1));
                }
                loop {
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    c.write_all(&req).map_err(|e| format!("write: {e}"))?;
                    c.read_exact(&mut resp).map_err(|e| format!("read: {e}"))?;
                    if t >= measure_from {
                        h.saturating_record(t.elapsed().as_nanos() as u64);
                        n += 1;
                    }
                }
                Ok((h, n))
            })
        })
        .collect();
    let mut all =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut requests = 0;
    for w in workers {
        let (h, n) = w.join().map_err(|_| "a client thread panicked")??;
        all.add(&h).map_err(|e| e.to_string())?;
        requests += n;
    }
    let us = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    let cdf: Vec<(f64, f64)> = QUANTILES.iter().map(|&q| (q, us(q))).collect();
    Ok(json!({
        "requests": requests,
        "seconds": measure.as_secs_f64(),
        "rps": requests as f64 / measure.as_secs_f64(),
        "p50_us": us(0.5), "p99_us": us(0.99), "p999_us": us(0.999),
        "mean_us": all.mean() / 1000.0, "max_us": all.max() as f64 / 1000.0,
        "cdf": cdf,
        "idle": idle, "open_idle_s": open_idle_s,
    }))
}

fn bulk_send(to: SocketAddr, d: Duration) -> Result<serde_json::Value, String> {
    let mut c = connect(to).map_err(|e| format!("connect: {e}"))?;
    let buf = vec![0xa5u8; 64 * 1024];
    let t = Instant::now();
    let mut sent: u64 = 0;
    while t.elapsed() < d {
        c.write_all(&buf).map_err(|e| format!("write: {e}"))?;
        sent += buf.len() as u64;
    }
    c.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut count = [0u8; 8];
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    c.read_exact(&mut count)
        .map_err(|e| format!("reading the sink's count: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    let got = u64::from_le_bytes(count);
    if got != sent {
        return Err(format!("the sink counted {got} bytes, {sent} were sent"));
    }
    Ok(json!({"bytes": got, "seconds": secs, "gbps": got as f64 * 8.0 / secs / 1e9}))
}

fn bulk_recv(to: SocketAddr, d: Duration) -> Result<serde_json::Value, String> {
    let mut c = connect(to).map_err(|e| format!("connect: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let t = Instant::now();
    let mut got: u64 = 0;
    while t.elapsed() < d {
        match c.read(&mut buf) {
            Ok(0) => return Err("the source closed early".into()),
            Ok(n) => got += n as u64,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(json!({"bytes": got, "seconds": secs, "gbps": got as f64 * 8.0 / secs / 1e9}))
}

fn conn_rate(to: SocketAddr, threads: usize, d: Duration) -> Result<serde_json::Value, String> {
    if threads == 0 || threads > 256 {
        return Err("--threads must be 1..=256".into());
    }
    let t = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut b = [0u8; 1];
                while t.elapsed() < d {
                    let r = connect(to).and_then(|mut c| {
                        c.write_all(b"x")?;
                        c.read_exact(&mut b)
                    });
                    match r {
                        Ok(()) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.join().map_err(|_| "a client thread panicked")?;
        ok += o;
        failed += f;
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(json!({"connections": ok, "failed": failed, "seconds": secs, "rate": ok as f64 / secs}))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Rr {
            to,
            conns,
            size,
            seconds,
            warmup,
            idle,
            repeat,
        } => check_seconds(seconds)
            .and_then(|m| Ok((m, check_seconds(warmup)?)))
            .and_then(|(m, w)| rr(to, conns, size, m, w, idle, repeat))
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            }),
        Cmd::BulkSend { to, seconds } => check_seconds(seconds)
            .and_then(|d| bulk_send(to, d))
            .map(|v| v.to_string()),
        Cmd::BulkRecv { to, seconds } => check_seconds(seconds)
            .and_then(|d| bulk_recv(to, d))
            .map(|v| v.to_string()),
        Cmd::ConnRate {
            to,
            threads,
            seconds,
        } => check_seconds(seconds)
            .and_then(|d| conn_rate(to, threads, d))
            .map(|v| v.to_string()),
    };
    match r {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-client: error: {e}");
            ExitCode::FAILURE
        }
    }
}
