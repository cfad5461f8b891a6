//! sockperf ping-pong, UDP and TCP: the unmodified sockperf client against both servers.
use super::{add, Bed, QUEUE};
use crate::{
    proc::{client, Server},
    Better, Column, Metrics, Results, Series,
};

const KERNEL_SOCKPERF: u16 = 11112;
const STACK_SOCKPERF: u16 = 11111;

/// `sockperf-udp`, then `sockperf-tcp`.
pub(super) fn run(bed: &Bed, r: &mut Results) {
    for tcp in [false, true] {
        let res = sockperf(bed, tcp);
        let proto = if tcp { "TCP" } else { "UDP" };
        add(r, if tcp { "sockperf-tcp" } else { "sockperf-udp" }, format!("sockperf ping-pong, {proto}, 64 bytes"),
            "the unmodified sockperf client; `sockperf server` for the kernel, sockperf-server for the stack; latencies are sockperf's one-way (RTT/2)".into(),
            vec![
                Column { metric: "p50", title: "p50 µs", better: Better::Lower },
                Column { metric: "p99", title: "p99 µs", better: Better::Lower },
                Column { metric: "p999", title: "p99.9 µs", better: Better::Lower },
                Column { metric: "avg", title: "avg µs", better: Better::Lower },
            ], res);
    }
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
