//! What the benchmark servers share: the backend choice, and the report they print on SIGUSR1
//! (one JSON line) so a benchmark can take counter deltas over its measuring window.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use clap::ValueEnum;

/// Which network stack serves: the kernel's (std::net sockets) or ours (AF_XDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Kernel,
    Stack,
}

/// The flags both benchmark servers take to choose and set up their backend.
#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// Who serves: the kernel (std::net on 0.0.0.0) or the AF_XDP stack.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// Stack: the interface whose queue the steering program serves.
    #[arg(long, required_if_eq("backend", "stack"))]
    pub iface: Option<String>,
    /// Stack: the steered RX queue.
    #[arg(long, default_value_t = 0)]
    pub queue: u32,
    /// Stack: spin on the queue instead of sleeping when idle.
    #[arg(long)]
    pub busy_poll: bool,
    /// Stack: pin the shard thread to this CPU (pin the whole process with taskset).
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Exit after this many seconds (0: at SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
}

impl BackendArgs {
    /// The stack for `--backend stack` (`None` for the kernel), built from these flags plus
    /// `configure`; on failure says why (and what to attach) and gives the exit code.
    pub fn start_stack(
        &self,
        name: &str,
        configure: impl FnOnce(xsk_stack::StackBuilder) -> xsk_stack::StackBuilder,
    ) -> Result<Option<xsk_stack::Stack>, std::process::ExitCode> {
        if self.backend == Backend::Kernel {
            return Ok(None);
        }
        let iface = self.iface.as_deref().unwrap_or_default();
        let b = xsk_stack::Stack::builder(iface, self.queue)
            .busy_poll(self.busy_poll)
            .cpu(self.cpu);
        configure(b).start().map(Some).map_err(|e| {
            eprintln!("{name}: error: {e}");
            eprintln!(
                "hint: attach the steering program first: xdp-loader attach {iface} --queue {}",
                self.queue
            );
            std::process::ExitCode::FAILURE
        })
    }

    /// "the kernel" or "the stack (IFACE queue Q[, busy-poll])", for the serving line.
    pub fn describe(&self) -> String {
        match self.backend {
            Backend::Kernel => "the kernel".into(),
            Backend::Stack => format!(
                "the stack ({} queue {}{})",
                self.iface.as_deref().unwrap_or_default(),
                self.queue,
                if self.busy_poll { ", busy-poll" } else { "" }
            ),
        }
    }
}

/// Work items the server's logic completed (requests answered, datagrams received).
pub static SERVED: AtomicU64 = AtomicU64::new(0);

/// One report line: allocations, work served and (stack) packets moved, all cumulative.
pub fn line(stack: Option<&xsk_stack::Stack>) -> String {
    let (allocs, alloc_bytes) = crate::alloc_count::counts();
    let (rx, tx) = stack
        .and_then(|s| s.stats())
        .map_or((0, 0), |s| (s.device.rx_packets, s.device.tx_packets));
    format!(
        "{{\"report\":true,\"allocs\":{allocs},\"alloc_bytes\":{alloc_bytes},\"served\":{},\"rx_packets\":{rx},\"tx_packets\":{tx}}}",
        SERVED.load(Ordering::Relaxed)
    )
}

/// Runs until SIGINT/SIGTERM or `duration` (0: no limit), printing [`line`] on every SIGUSR1
/// and once at the end. Returns false when the stack stopped on its own.
pub fn serve_until_signalled(stack: Option<&xsk_stack::Stack>, duration: u64, name: &str) -> bool {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    use std::io::Write;
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: cannot install signal handlers: {e}");
            return false;
        }
    };
    let deadline =
        (duration > 0).then(|| std::time::Instant::now() + Duration::from_secs(duration));
    let print = || {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", line(stack));
        let _ = out.flush();
    };
    loop {
        for sig in signals.pending() {
            if sig == SIGUSR1 {
                print();
            } else {
                print();
                return true;
            }
        }
        if let Some(why) = stack.and_then(|s| s.failure()) {
            eprintln!("{name}: error: {why}");
            return false;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            print();
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
