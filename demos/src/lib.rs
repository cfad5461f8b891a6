//! What the demo services share: the common flags, startup with a helpful error, logging, and a
//! bounded run time.
pub mod alloc_count;
pub mod http;
pub mod metrics;
pub mod report;
pub mod sockperf;

use std::{
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use clap::Args;
use xsk_stack::{Stack, StackError};

/// Flags every demo takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Interface whose queue the steering program serves (`xdp-loader attach IFACE --queue Q`).
    #[arg(long)]
    pub iface: String,
    /// The steered RX queue.
    #[arg(long)]
    pub queue: u32,
    /// Port to serve on the interface's own IPv4 address.
    #[arg(long)]
    pub port: u16,
    /// Maximum concurrent TCP connections.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Accept queue bound per listener.
    #[arg(long, default_value_t = 128)]
    pub backlog: usize,
    /// Reset connections idle for this many seconds (0: never).
    #[arg(long, default_value_t = 300)]
    pub idle_timeout: u64,
    /// Spin on the queue instead of sleeping when idle.
    #[arg(long)]
    pub busy_poll: bool,
    /// Pin the stack's thread to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Exit after this many seconds (0: run until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (a kernel socket, e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Capture received and sent frames to this pcap file from the start.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<std::path::PathBuf>,
    /// With --pcap: stop capturing after N frames.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub pcap_count: u64,
}

/// Sets up `RUST_LOG`-filtered logging to stderr.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

impl Common {
    /// Starts the stack, or explains what to do.
    pub fn start(&self, name: &str) -> Result<Stack, ExitCode> {
        if self.port == 0 {
            eprintln!("{name}: error: --port must be 1..=65535");
            return Err(ExitCode::from(2));
        }
        let idle = (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout));
        let mut b = Stack::builder(&self.iface, self.queue);
        if let Some(p) = &self.pcap {
            let path = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            let mut spec = xsk_stack::CaptureSpec::new(path);
            spec.count = self.pcap_count.max(1);
            b = b.pcap(spec);
        }
        let metrics = match self.metrics.map(std::net::TcpListener::bind).transpose() {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{name}: error: --metrics: {e}");
                return Err(ExitCode::FAILURE);
            }
        };
        let r = b
            .max_connections(self.max_connections)
            .backlog(self.backlog)
            .idle_timeout(idle)
            .busy_poll(self.busy_poll)
            .cpu(self.cpu)
            .start();
        if let (Ok(stack), Some(listener)) = (&r, metrics) {
            let source = stack.stats_source();
            std::thread::spawn(move || metrics::serve(listener, source));
        }
        r.map_err(|e| {
            eprintln!("{name}: error: {e}");
            if matches!(e, StackError::Steering(_) | StackError::WrongQueue { .. }) {
                eprintln!(
                    "hint: attach the steering program first: xdp-loader attach {} --queue {}",
                    self.iface, self.queue
                );
            }
            ExitCode::FAILURE
        })
    }

    /// Runs until SIGINT/SIGTERM, `--duration` seconds, or the stack stopping on its own (the
    /// steering program detached, the interface gone): then the caller drops the stack, which
    /// removes its rules and closes its sockets. Returns the process's exit code.
    pub fn wait(&self, stack: &Stack, name: &str) -> ExitCode {
        self.wait_serving(stack, name, &AtomicBool::new(false))
    }

    /// As [`wait`](Self::wait), also ending (non-zero) when `lost` is set: the service's
    /// listener is gone, and a process that lives on without it would look healthy while it
    /// refuses every connection.
    pub fn wait_serving(&self, stack: &Stack, name: &str, lost: &AtomicBool) -> ExitCode {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{name}: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let deadline = (self.duration > 0)
            .then(|| std::time::Instant::now() + Duration::from_secs(self.duration));
        loop {
            if let Some(sig) = signals.pending().next() {
                tracing::info!(sig, "shutting down");
                return ExitCode::SUCCESS;
            }
            if let Some(why) = stack.failure() {
                eprintln!("{name}: error: {why}");
                return ExitCode::FAILURE;
            }
            if lost.load(Ordering::Acquire) {
                eprintln!("{name}: error: the listener stopped accepting");
                return ExitCode::FAILURE;
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return ExitCode::SUCCESS;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs a TCP service: starts the stack, listens on `--port`, serves each connection with
/// `handle` on its own thread until a signal, `--duration` or the stack stopping; returns the
/// exit code. The "serving" line names the address (`scheme://ADDR/` when a scheme is given).
pub fn serve_tcp(
    common: &Common,
    name: &str,
    scheme: Option<&str>,
    handle: fn(xsk_stack::TcpStream),
) -> ExitCode {
    let stack = match common.start(name) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let listener = match stack.tcp_listen(common.port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let shown = scheme.map_or(addr.clone(), |s| format!("{s}://{addr}/"));
    println!(
        "{name}: serving {shown} on {} queue {}",
        common.iface, common.queue
    );
    let label = name.to_string();
    let lost = Arc::new(AtomicBool::new(false));
    let lost2 = lost.clone();
    std::thread::spawn(move || {
        let failed = AtomicU64::new(0);
        loop {
            match listener.accept() {
                Ok((c, _)) => {
                    std::thread::spawn(move || handle(c));
                }
                Err(e) if accept_error_is_fatal(&e) => {
                    eprintln!("{label}: accept: {e}");
                    lost2.store(true, Ordering::Release);
                    break;
                }
                // One connection's trouble (ECONNABORTED-like) never stops the service.
                Err(e) => {
                    let n = failed.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::debug!(failed = n, "accept: {e}");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    });
    common.wait_serving(&stack, name, &lost)
}

/// Whether an `accept()` error means the listener is gone for good. The stack's `accept` fails
/// only when the stack stops (`NotConnected`); anything else concerns one connection.
pub fn accept_error_is_fatal(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotConnected
}
