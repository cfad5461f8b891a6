//! The scenarios, each run against the kernel and the stack with alternating runs where both
//! servers can stay up, and in blocks where one would disturb the other (a busy-polling stack
//! spins on the servers' CPU). One module per scenario family; this one holds the settings, the
//! testbed wrapper they share and the order they run in.
mod bulk;
mod conn_rate;
mod rr;
mod scale;
mod sockperf;
mod targets;
mod udp;

use std::time::Instant;

use serde_json::Value;
use testbed::{workspace_bin, Testbed};

use crate::{
    proc::{client, Server},
    Column, Metrics, Results, Scenario, Series,
};

/// How long and how often.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    /// Runs per backend and scenario.
    pub runs: usize,
    /// Runs of sockperf per backend (each TCP run has sockperf's fixed 2 s connect pause).
    pub sockperf_runs: usize,
    /// Measuring time of one run, seconds.
    pub seconds: f64,
    /// Idle connections for the scale scenario.
    pub scale: Vec<usize>,
    /// Offered rates for UDP receive (0: as fast as the flooder goes).
    pub udp_rates: Vec<u64>,
    pub server_cpu: usize,
    pub client_cpu: usize,
    /// Scenario keys to run (empty: all).
    pub only: Vec<String>,
}

impl Settings {
    pub fn full() -> Self {
        Self {
            quick: false,
            runs: 5,
            sockperf_runs: 5,
            seconds: 2.0,
            scale: vec![10, 1_000, 10_000],
            udp_rates: vec![100_000, 0],
            server_cpu: 0,
            client_cpu: 1,
            only: Vec::new(),
        }
    }

    pub fn quick() -> Self {
        Self {
            quick: true,
            runs: 3,
            sockperf_runs: 1,
            seconds: 0.3,
            scale: vec![10, 1_000],
            udp_rates: vec![0],
            ..Self::full()
        }
    }

    fn wants(&self, key: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == key)
    }
}

const QUEUE: u32 = 3;
/// Echo/sink/source ports: the kernel's server and the stack's.
const KERNEL_PORT: u16 = 7100;
const STACK_PORT: u16 = 7000;

struct Bed {
    tb: Testbed,
    s: Settings,
}

impl Bed {
    fn bin(name: &str) -> String {
        workspace_bin(name).display().to_string()
    }

    fn server(&self, backend: &str, extra: &[&str]) -> Result<Server, String> {
        let mut args: Vec<String> = match backend {
            "kernel" => vec!["--backend".into(), "kernel".into()],
            _ => vec![
                "--backend".into(),
                "stack".into(),
                "--iface".into(),
                self.tb.host_if.clone(),
                "--queue".into(),
                QUEUE.to_string(),
                "--cpu".into(),
                self.s.server_cpu.to_string(),
            ],
        };
        if backend == "stack-busy" {
            args.push("--busy-poll".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let bin = if extra.contains(&"--udp") {
            args.retain(|a| a != "--udp");
            "udp-sink"
        } else {
            args.extend(["--port".to_string(), port_of(backend).to_string()]);
            "bench-server"
        };
        Server::start(self.s.server_cpu, &Self::bin(bin), &args)
    }

    fn client(&self, args: &[String]) -> Result<Value, String> {
        let out = client(
            &self.tb.ns,
            self.s.client_cpu,
            &Self::bin("bench-client"),
            args,
        )?;
        serde_json::from_str(out.trim()).map_err(|e| format!("bench-client output {out:?}: {e}"))
    }

    fn to(&self, port: u16) -> String {
        format!("{}:{port}", self.tb.host_ip)
    }

    fn secs(&self) -> String {
        self.s.seconds.to_string()
    }
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn port_of(backend: &str) -> u16 {
    if backend == "kernel" {
        KERNEL_PORT
    } else {
        STACK_PORT
    }
}

/// For the kernel, then the stack: starts the server (with `extra` arguments), measures it
/// `runs` times with `run`, and stops it.
fn each_backend(
    bed: &Bed,
    extra: impl Fn(&str) -> Vec<String>,
    mut run: impl FnMut(&str, &mut Server) -> Result<Metrics, String>,
) -> Result<Vec<Series>, String> {
    let mut out = Vec::new();
    for b in ["kernel", "stack"] {
        let args = extra(b);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut srv = bed.server(b, &args)?;
        let runs = (0..bed.s.runs)
            .map(|_| run(b, &mut srv))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Series {
            backend: b.to_string(),
            runs,
            cdf: None,
        });
    }
    Ok(out)
}

/// Adds a scenario's results to `r`, or a note if it failed.
fn add(
    r: &mut Results,
    key: &'static str,
    title: String,
    what: String,
    columns: Vec<Column>,
    res: Result<Vec<Series>, String>,
) {
    match res {
        Ok(series) => r.scenarios.push(Scenario {
            key,
            title,
            what,
            columns,
            series,
        }),
        Err(e) => r.notes.push(format!("{title}: FAILED: {e}")),
    }
}

/// Runs every wanted scenario; a scenario that fails is reported as a note, the others go on.
pub fn run_suite(tb: Testbed, s: Settings) -> Results {
    let t0 = Instant::now();
    let bed = Bed { tb, s };
    let mut r = Results::default();
    let mut allocs = Vec::new();
    if bed.s.wants("rr1") {
        rr::rr1(&bed, &mut r, &mut allocs);
    }
    if bed.s.wants("rr64") {
        rr::rr64(&bed, &mut r, &mut allocs);
    }
    if bed.s.wants("udp") {
        udp::run(&bed, &mut r);
    }
    if bed.s.wants("bulk") {
        bulk::run(&bed, &mut r);
    }
    if bed.s.wants("connrate") {
        conn_rate::run(&bed, &mut r);
    }
    if bed.s.wants("scale") {
        scale::run(&bed, &mut r);
    }
    if bed.s.wants("sockperf") {
        sockperf::run(&bed, &mut r);
    }
    r.allocations = allocs;
    r.targets = targets::targets(&r);
    r.elapsed_s = t0.elapsed().as_secs_f64();
    r
}
