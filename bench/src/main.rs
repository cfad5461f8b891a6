//! The benchmark suite (`make bench`, `make bench-quick`): builds a testbed, runs every scenario
//! against the kernel and the stack, writes BENCHMARKS.md and its plots, removes the testbed.
use std::path::PathBuf;

use clap::Parser;
use testbed::{loader_ok, Testbed, TestbedOptions};

#[derive(Parser)]
#[command(
    about = "Benchmarks: the stack against the kernel on the same veth pair, in one run (as root, release build)",
    after_help = "Scenarios: rr1 rr64 udp bulk connrate scale sockperf.\n\nExamples:\n  make bench                     # the full suite (about 6 minutes), writes BENCHMARKS.md\n  make bench-quick               # under a minute, writes target/bench-quick/BENCHMARKS.md\n  target/release/bench --only rr1,sockperf --runs 3 --out /tmp/b.md"
)]
struct Cli {
    /// Short runs (under a minute in all); fewer runs, no 10k-connection scale step.
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Runs per backend and scenario.
    #[arg(long)]
    runs: Option<usize>,
    /// Seconds per run.
    #[arg(long)]
    seconds: Option<f64>,
    /// Where to write the report (plots go to `docs/benchmarks/` next to it).
    #[arg(long)]
    out: Option<PathBuf>,
}

const SCENARIOS: [&str; 7] = [
    "rr1", "rr64", "udp", "bulk", "connrate", "scale", "sockperf",
];

fn main() {
    let cli = Cli::parse();
    if let Some(bad) = cli.only.iter().find(|o| !SCENARIOS.contains(&o.as_str())) {
        eprintln!(
            "bench: error: unknown scenario {bad:?}; known: {}",
            SCENARIOS.join(" ")
        );
        std::process::exit(2);
    }
    if cli.runs.is_some_and(|r| !(1..=50).contains(&r))
        || cli.seconds.is_some_and(|s| !(s > 0.0 && s <= 30.0))
    {
        eprintln!("bench: error: --runs must be 1..=50 and --seconds in (0, 30]");
        std::process::exit(2);
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "bench: warning: a debug build measures debug binaries; use `make bench` (release)"
        );
    }
    if !testbed::require_root("bench") {
        std::process::exit(1);
    }
    if std::process::Command::new("sockperf")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("bench: error: sockperf is not installed (scripts/install-deps.sh installs it)");
        std::process::exit(1);
    }
    let mut s = if cli.quick {
        bench::Settings::quick()
    } else {
        bench::Settings::full()
    };
    s.only = cli.only;
    if let Some(r) = cli.runs {
        s.runs = r;
        s.sockperf_runs = r;
    }
    if let Some(x) = cli.seconds {
        s.seconds = x;
    }
    let out = cli.out.unwrap_or_else(|| {
        if s.quick {
            PathBuf::from("target/bench-quick/BENCHMARKS.md")
        } else {
            PathBuf::from("BENCHMARKS.md")
        }
    });
    let plots = out.parent().map_or(PathBuf::from("docs/benchmarks"), |p| {
        p.join("docs/benchmarks")
    });
    let tb = Testbed::with(TestbedOptions {
        queues: 4,
        steer_queue: 3,
        generic: false,
    });
    // Ctrl-C or SIGTERM: remove the testbed before going (the servers die with us).
    let ns = tb.ns.clone();
    std::thread::spawn(move || {
        use signal_hook::consts::{SIGINT, SIGTERM};
        if let Ok(mut s) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            if let Some(sig) = s.forever().next() {
                eprintln!("bench: signal {sig}: removing testbed {ns}");
                Testbed::remove(&ns);
                std::process::exit(130);
            }
        }
    });
    loader_ok(&["attach", &tb.host_if, "--queue", "3", "--mode", "native"]);
    // Many short connections from the client: a wide port range, and TIME_WAIT ports reused.
    tb.ns_ok(
        "sysctl",
        &[
            "-q",
            "-w",
            "net.ipv4.ip_local_port_range=1024 65000",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    );
    eprintln!(
        "bench: testbed {} ({} <-> {}), {} runs of {} s per backend",
        tb.ns, tb.host_ip, tb.peer_ip, s.runs, s.seconds
    );
    let results = bench::run_suite(tb, s.clone());
    if let Err(e) = bench::write_report(&results, &s, &out, &plots) {
        eprintln!("bench: error: writing {}: {e}", out.display());
        std::process::exit(1);
    }
    println!(
        "bench: wrote {} and plots in {} ({:.0} s)",
        out.display(),
        plots.display(),
        results.elapsed_s
    );
    for t in &results.targets {
        println!(
            "  {:<60} goal {:<6} measured {}",
            t.what,
            t.goal,
            t.ratio.map_or("–".into(), |r| format!("{r:.3}"))
        );
    }
    for n in &results.notes {
        println!("  note: {n}");
    }
    if !results.notes.is_empty() {
        std::process::exit(1);
    }
}
