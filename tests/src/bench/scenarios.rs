//! The scenarios, each run against the kernel and the stack with alternating runs where both
//! servers can stay up, and in blocks where one would disturb the other (a busy-polling stack
//! spins on the servers' CPU).
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    proc::{client, cpu_ticks, cpu_ticks_of, Server},
    Better, Column, Metrics, Results, Scenario, Series, Target,
};
use crate::{workspace_bin, Testbed};

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
const KERNEL_UDP: u16 = 9100;
const STACK_UDP: u16 = 9000;
const KERNEL_SOCKPERF: u16 = 11112;
const STACK_SOCKPERF: u16 = 11111;

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

/// Request/response on `conns` connections with `idle` idle ones open, per backend; also the
/// stack server's allocations per packet over the measured runs.
fn rr(
    bed: &Bed,
    backends: &[&str],
    conns: usize,
    idle: usize,
    allocs: &mut Vec<(String, f64)>,
) -> Result<Vec<Series>, String> {
    let mut out = Vec::new();
    for &b in backends {
        let mut srv = bed.server(b, &[])?;
        let mut runs = Vec::new();
        let mut cdfs = Vec::new();
        // Allocations are counted in the middle half of each run's measuring window: steady
        // state, after the connections are set up and before they close.
        let (mut d_allocs, mut d_served, mut d_packets) = (0.0, 0.0, 0.0);
        // Idle connections are opened once per backend (10 000 handshakes per run would
        // dominate the suite); the client then measures `runs` times over them.
        let mut measured: Vec<Value> = Vec::new();
        if idle > 0 {
            let args: Vec<String> = vec![
                "rr".into(),
                "--to".into(),
                bed.to(port_of(b)),
                "--idle".into(),
                idle.to_string(),
                "--repeat".into(),
                bed.s.runs.to_string(),
                "--seconds".into(),
                bed.secs(),
            ];
            let out = client(
                &bed.tb.ns,
                bed.s.client_cpu,
                &Bed::bin("bench-client"),
                &args,
            )?;
            for l in out.lines() {
                measured.push(serde_json::from_str(l).map_err(|e| format!("{l:?}: {e}"))?);
            }
        }
        for i in 0..bed.s.runs {
            if idle > 0 {
                let v = measured.get(i).cloned().unwrap_or(Value::Null);
                runs.push(Metrics::from([
                    ("rps", num(&v, "rps")),
                    ("p50", num(&v, "p50_us")),
                    ("p99", num(&v, "p99_us")),
                    ("p999", num(&v, "p999_us")),
                ]));
                continue;
            }
            let args: Vec<String> = vec![
                "rr".into(),
                "--to".into(),
                bed.to(port_of(b)),
                "--conns".into(),
                conns.to_string(),
                "--seconds".into(),
                bed.secs(),
                "--warmup".into(),
                "0.2".into(),
            ];
            let v = std::thread::scope(|sc| -> Result<Value, String> {
                let c = sc.spawn(|| bed.client(&args));
                let quarter = Duration::from_secs_f64(bed.s.seconds / 4.0);
                // The client waits 50 ms, warms up 0.2 s, then measures (after opening idle ones).
                std::thread::sleep(Duration::from_millis(250) + quarter);
                let a = srv.report();
                std::thread::sleep(2 * quarter);
                let z = srv.report();
                if let (Ok(a), Ok(z)) = (a, z) {
                    let d = |k: &str| num(&z, k) - num(&a, k);
                    d_allocs += d("allocs");
                    d_served += d("served");
                    d_packets += d("rx_packets") + d("tx_packets");
                }
                c.join().map_err(|_| "client thread panicked".to_string())?
            })?;
            let m = Metrics::from([
                ("rps", num(&v, "rps")),
                ("p50", num(&v, "p50_us")),
                ("p99", num(&v, "p99_us")),
                ("p999", num(&v, "p999_us")),
            ]);
            let cdf: Vec<(f64, f64)> = v
                .get("cdf")
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .unwrap_or_default();
            cdfs.push((num(&v, "p50_us"), cdf));
            runs.push(m);
        }
        if idle == 0 {
            let label = format!("{b}, {conns} connection(s)");
            if b == "kernel" {
                allocs.push((
                    format!("{label}: per request"),
                    d_allocs / d_served.max(1.0),
                ));
            } else {
                allocs.push((
                    format!("{label}: per packet"),
                    d_allocs / d_packets.max(1.0),
                ));
            }
        }
        cdfs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let cdf = cdfs.get(cdfs.len() / 2).map(|c| c.1.clone());
        out.push(Series {
            backend: b.to_string(),
            runs,
            cdf,
        });
    }
    Ok(out)
}

fn lat_columns(with_rps: bool) -> Vec<Column> {
    let mut c = vec![
        Column {
            metric: "p50",
            title: "p50 µs",
            better: Better::Lower,
        },
        Column {
            metric: "p99",
            title: "p99 µs",
            better: Better::Lower,
        },
        Column {
            metric: "p999",
            title: "p99.9 µs",
            better: Better::Lower,
        },
    ];
    if with_rps {
        c.push(Column {
            metric: "rps",
            title: "requests/s",
            better: Better::Higher,
        });
    }
    c
}

fn udp(bed: &Bed, rate: u64) -> Result<Vec<Series>, String> {
    let port_of = |b: &str| if b == "kernel" { KERNEL_UDP } else { STACK_UDP };
    each_backend(
        bed,
        |b| vec!["--udp".into(), "--port".into(), port_of(b).to_string()],
        |b, srv| {
            let port = port_of(b);
            let r0 = srv.report()?;
            let (busy0, _) = cpu_ticks();
            let (srv0, _) = cpu_ticks_of(bed.s.server_cpu);
            let sent = client(
                &bed.tb.ns,
                bed.s.client_cpu,
                &Bed::bin("udp-flood"),
                &[
                    "--to".into(),
                    bed.to(port),
                    "--flows".into(),
                    "4".into(),
                    "--batch".into(),
                    "32".into(),
                    "--rate".into(),
                    rate.to_string(),
                    "--seconds".into(),
                    bed.secs(),
                ],
            )?;
            std::thread::sleep(Duration::from_millis(100));
            let (busy1, _) = cpu_ticks();
            let (srv1, _) = cpu_ticks_of(bed.s.server_cpu);
            let r1 = srv.report()?;
            let v: Value = serde_json::from_str(sent.trim()).map_err(|e| e.to_string())?;
            let got = num(&r1, "served") - num(&r0, "served");
            // USER_HZ is 100: a tick is 10 ms.
            let cpu_us = (busy1 - busy0) as f64 * 10_000.0;
            Ok(Metrics::from([
                ("offered", num(&v, "pps")),
                ("delivered", got / bed.s.seconds),
                ("loss", 1.0 - got / num(&v, "sent").max(1.0)),
                ("cpu_ns", cpu_us * 1000.0 / got.max(1.0)),
                (
                    "cpu0_ns",
                    (srv1 - srv0) as f64 * 10_000_000.0 / got.max(1.0),
                ),
            ]))
        },
    )
}

fn bulk(bed: &Bed, server_sends: bool) -> Result<Vec<Series>, String> {
    each_backend(
        bed,
        |_| Vec::new(),
        |b, _| {
            let (cmd, port) = if server_sends {
                ("bulk-recv", port_of(b) + 2)
            } else {
                ("bulk-send", port_of(b) + 1)
            };
            let v = bed.client(&[
                cmd.into(),
                "--to".into(),
                bed.to(port),
                "--seconds".into(),
                bed.secs(),
            ])?;
            Ok(Metrics::from([("gbps", num(&v, "gbps"))]))
        },
    )
}

fn conn_rate(bed: &Bed) -> Result<Vec<Series>, String> {
    each_backend(
        bed,
        |_| Vec::new(),
        |b, _| {
            let v = bed.client(&[
                "conn-rate".into(),
                "--to".into(),
                bed.to(port_of(b)),
                "--threads".into(),
                "4".into(),
                "--seconds".into(),
                bed.secs(),
            ])?;
            Ok(Metrics::from([
                ("rate", num(&v, "rate")),
                ("failed", num(&v, "failed")),
            ]))
        },
    )
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

/// `sockperf ping-pong` against `sockperf server` (kernel) and sockperf-server (stack).
fn sockperf(bed: &Bed, tcp: bool) -> Result<Vec<Series>, String> {
    let mut out = Vec::new();
    let t = if bed.s.quick {
        1.0
    } else {
        bed.s.seconds.max(1.5)
    };
    for b in ["kernel", "stack"] {
        let (_srv, port) = if b == "kernel" {
            let mut a = vec![
                "server".to_string(),
                "-p".into(),
                KERNEL_SOCKPERF.to_string(),
            ];
            if tcp {
                a.push("--tcp".into());
            }
            (
                Server::start(bed.s.server_cpu, "sockperf", &a)?,
                KERNEL_SOCKPERF,
            )
        } else {
            let a: Vec<String> = [
                "--iface",
                &bed.tb.host_if,
                "--queue",
                &QUEUE.to_string(),
                "--port",
                &STACK_SOCKPERF.to_string(),
                "--cpu",
                &bed.s.server_cpu.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            (
                Server::start(bed.s.server_cpu, &Bed::bin("sockperf-server"), &a)?,
                STACK_SOCKPERF,
            )
        };
        let mut runs = Vec::new();
        for _ in 0..bed.s.sockperf_runs {
            let mut a: Vec<String> = [
                "ping-pong",
                "-i",
                &bed.tb.host_ip.to_string(),
                "-p",
                &port.to_string(),
                "-m",
                "64",
                "-t",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            a.push(format!("{t}"));
            if tcp {
                a.push("--tcp".into());
            }
            let o = client(&bed.tb.ns, bed.s.client_cpu, "sockperf", &a)?;
            runs.push(parse_sockperf(&o)?);
        }
        out.push(Series {
            backend: b.to_string(),
            runs,
            cdf: None,
        });
    }
    Ok(out)
}

/// p50/p99/p99.9 and the average (one-way, µs) out of sockperf's report.
fn parse_sockperf(out: &str) -> Result<Metrics, String> {
    let mut m = Metrics::new();
    for raw in out.lines() {
        let l: String = strip_ansi(raw);
        if let Some(rest) = l.split("percentile").nth(1) {
            let mut it = rest.split('=');
            let (Some(q), Some(v)) = (it.next(), it.next()) else {
                continue;
            };
            let key = match q.trim() {
                "50.000" => "p50",
                "99.000" => "p99",
                "99.900" => "p999",
                _ => continue,
            };
            if let Ok(x) = v.trim().parse() {
                m.insert(key, x);
            }
        } else if let Some(rest) = l.split("avg-latency=").nth(1) {
            if let Some(x) = rest.split_whitespace().next().and_then(|x| x.parse().ok()) {
                m.insert("avg", x);
            }
        }
    }
    if m.len() < 4 {
        return Err(format!("cannot read sockperf's report: {}", out.trim()));
    }
    Ok(m)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs every wanted scenario; a scenario that fails is reported as a note, the others go on.
pub fn run_suite(tb: Testbed, s: Settings) -> Results {
    let t0 = Instant::now();
    let bed = Bed { tb, s };
    let mut r = Results::default();
    let mut allocs = Vec::new();
    let add = |r: &mut Results,
               key: &'static str,
               title: String,
               what: String,
               columns: Vec<Column>,
               res: Result<Vec<Series>, String>| match res {
        Ok(series) => r.scenarios.push(Scenario {
            key,
            title,
            what,
            columns,
            series,
        }),
        Err(e) => r.notes.push(format!("{title}: FAILED: {e}")),
    };
    let secs = bed.s.seconds;
    if bed.s.wants("rr1") {
        let res = rr(&bed, &["kernel", "stack", "stack-busy"], 1, 0, &mut allocs);
        add(&mut r, "rr1", "TCP request/response, 1 connection".into(),
            format!("1-byte ping-pong, {secs} s per run after 0.2 s warm-up; latency is the client's round trip"),
            lat_columns(true), res);
    }
    if bed.s.wants("rr64") {
        let res = rr(&bed, &["kernel", "stack", "stack-busy"], 64, 0, &mut allocs);
        add(
            &mut r,
            "rr64",
            "TCP request/response, 64 connections".into(),
            format!("1-byte ping-pong on 64 client threads, {secs} s per run"),
            vec![
                Column {
                    metric: "rps",
                    title: "requests/s",
                    better: Better::Higher,
                },
                Column {
                    metric: "p99",
                    title: "p99 µs",
                    better: Better::Lower,
                },
            ],
            res,
        );
    }
    if bed.s.wants("udp") {
        for &rate in &bed.s.udp_rates.clone() {
            let name = if rate == 0 {
                "flat out".to_string()
            } else {
                format!("{} kpps offered", rate / 1000)
            };
            let res = udp(&bed, rate);
            add(&mut r, if rate == 0 { "udp-max" } else { "udp-rate" }, format!("UDP receive, {name}"),
                format!("udp-flood (sendmmsg, 4 flows, batch 32, 32-byte payload) for {secs} s; CPU is the whole machine's busy time (/proc/stat, both CPUs, the flooder's included) per delivered datagram; server CPU is the servers' CPU alone (the kernel's receive softirq runs on the flooder's CPU over veth, so it is not all there)"),
                vec![
                    Column { metric: "delivered", title: "delivered/s", better: Better::Higher },
                    Column { metric: "cpu_ns", title: "CPU ns/datagram", better: Better::Lower },
                    Column { metric: "cpu0_ns", title: "server CPU ns/datagram", better: Better::Lower },
                    Column { metric: "loss", title: "loss", better: Better::Lower },
                ], res);
        }
    }
    if bed.s.wants("bulk") {
        let res = bulk(&bed, false);
        add(
            &mut r,
            "bulk-rx",
            "TCP bulk, server receiving".into(),
            format!(
                "one stream, MTU 1500, {secs} s; the sink answers its byte count, which must match"
            ),
            vec![Column {
                metric: "gbps",
                title: "Gbit/s",
                better: Better::Higher,
            }],
            res,
        );
        let res = bulk(&bed, true);
        add(
            &mut r,
            "bulk-tx",
            "TCP bulk, server sending".into(),
            format!("one stream, MTU 1500, {secs} s"),
            vec![Column {
                metric: "gbps",
                title: "Gbit/s",
                better: Better::Higher,
            }],
            res,
        );
    }
    if bed.s.wants("connrate") {
        let res = conn_rate(&bed);
        add(
            &mut r,
            "connrate",
            "Connection rate".into(),
            format!("connect, 1-byte request and answer, close; 4 client threads, {secs} s"),
            vec![
                Column {
                    metric: "rate",
                    title: "connections/s",
                    better: Better::Higher,
                },
                Column {
                    metric: "failed",
                    title: "failed",
                    better: Better::Lower,
                },
            ],
            res,
        );
    }
    if bed.s.wants("scale") {
        for &idle in &bed.s.scale.clone() {
            let res = rr(&bed, &["kernel", "stack"], 1, idle, &mut allocs);
            let key: &'static str = match idle {
                10 => "scale-10",
                1000 => "scale-1k",
                10000 => "scale-10k",
                _ => "scale",
            };
            add(
                &mut r,
                key,
                format!("Scale: RR with {idle} idle connections open"),
                format!("as TCP RR on 1 connection, with {idle} more connections open and idle"),
                lat_columns(false),
                res,
            );
        }
    }
    if bed.s.wants("sockperf") {
        for tcp in [false, true] {
            let res = sockperf(&bed, tcp);
            let proto = if tcp { "TCP" } else { "UDP" };
            add(&mut r, if tcp { "sockperf-tcp" } else { "sockperf-udp" }, format!("sockperf ping-pong, {proto}, 64 bytes"),
                "the unmodified sockperf client; `sockperf server` for the kernel, sockperf-server for the stack; latencies are sockperf's one-way (RTT/2)".into(),
                vec![
                    Column { metric: "p50", title: "p50 µs", better: Better::Lower },
                    Column { metric: "p99", title: "p99 µs", better: Better::Lower },
                    Column { metric: "p999", title: "p99.9 µs", better: Better::Lower },
                    Column { metric: "avg", title: "avg µs", better: Better::Lower },
                ], res);
        }
    }
    r.allocations = allocs;
    r.targets = targets(&r);
    r.elapsed_s = t0.elapsed().as_secs_f64();
    r
}

/// The ratio stack/kernel of `metric` in scenario `key` (medians), for `backend`.
fn ratio(r: &Results, key: &str, backend: &str, metric: &str) -> Option<f64> {
    let sc = r.scenarios.iter().find(|s| s.key == key)?;
    let k = sc
        .series
        .iter()
        .find(|s| s.backend == "kernel")?
        .stat(metric)?
        .0;
    let s = sc
        .series
        .iter()
        .find(|s| s.backend == backend)?
        .stat(metric)?
        .0;
    (k > 0.0).then(|| s / k)
}

fn targets(r: &Results) -> Vec<Target> {
    let t = |what: &str, goal: &str, ratio: Option<f64>, ok: fn(f64) -> bool| Target {
        what: what.into(),
        goal: goal.into(),
        ratio,
        met: ratio.map(ok),
    };
    let best = |a: Option<f64>, b: Option<f64>, lower: bool| match (a, b) {
        (Some(x), Some(y)) => Some(if lower { x.min(y) } else { x.max(y) }),
        (x, y) => x.or(y),
    };
    let rr_p99 = best(
        ratio(r, "rr1", "stack", "p99"),
        ratio(r, "rr1", "stack-busy", "p99"),
        true,
    );
    let rr_p50 = best(
        ratio(r, "rr1", "stack", "p50"),
        ratio(r, "rr1", "stack-busy", "p50"),
        true,
    );
    let rps64 = best(
        ratio(r, "rr64", "stack", "rps"),
        ratio(r, "rr64", "stack-busy", "rps"),
        false,
    );
    let udp = ratio(r, "udp-rate", "stack", "cpu_ns").or(ratio(r, "udp-max", "stack", "cpu_ns"));
    let bulk = match (
        ratio(r, "bulk-rx", "stack", "gbps"),
        ratio(r, "bulk-tx", "stack", "gbps"),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let scale = {
        let sc = |k: &str| {
            r.scenarios
                .iter()
                .find(|s| s.key == k)?
                .series
                .iter()
                .find(|s| s.backend == "stack")?
                .stat("p99")
                .map(|x| x.0)
        };
        let top = sc("scale-10k").or(sc("scale-1k"));
        match (top, sc("scale-10")) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        }
    };
    let allocs = r
        .allocations
        .iter()
        .filter(|(l, _)| l.starts_with("stack"))
        .map(|(_, v)| *v)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    vec![
        t(
            "TCP RR p99, stack/kernel (best stack mode)",
            "≤ 0.5",
            rr_p99,
            |x| x <= 0.5,
        ),
        t(
            "TCP RR p50, stack/kernel (best stack mode)",
            "≤ 0.7",
            rr_p50,
            |x| x <= 0.7,
        ),
        t(
            "64-connection requests/s, stack/kernel",
            "≥ 2",
            rps64,
            |x| x >= 2.0,
        ),
        t("UDP CPU per datagram, stack/kernel", "≤ 0.33", udp, |x| {
            x <= 0.33
        }),
        t(
            "TCP bulk Gbit/s, stack/kernel (worse direction)",
            "≥ 1",
            bulk,
            |x| x >= 1.0,
        ),
        t(
            "connections/s, stack/kernel",
            "≥ 1",
            ratio(r, "connrate", "stack", "rate"),
            |x| x >= 1.0,
        ),
        t(
            "stack RR p99 with most idle connections / with 10",
            "≤ 1.5",
            scale,
            |x| x <= 1.5,
        ),
        t(
            "stack allocations per packet (steady state, worst case)",
            "0",
            allocs,
            |x| x < 0.01,
        ),
    ]
}
