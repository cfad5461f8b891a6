//! TCP request/response: `rr1` (one connection) and `rr64` (64), with allocations per packet.
use std::time::Duration;

use serde_json::Value;

use super::{add, num, port_of, Bed};
use crate::{Better, Column, Metrics, Results, Series};

/// `rr1`: the kernel, the stack and the busy-polling stack on one connection.
pub(super) fn rr1(bed: &Bed, r: &mut Results, allocs: &mut Vec<(String, f64)>) {
    let secs = bed.s.seconds;
    let res = rr(bed, &["kernel", "stack", "stack-busy"], 1, allocs);
    add(r, "rr1", "TCP request/response, 1 connection".into(),
        format!("1-byte ping-pong, {secs} s per run after 0.2 s warm-up; latency is the client's round trip"),
        lat_columns(true), res);
}

/// `rr64`: the kernel, the stack and the busy-polling stack on 64 connections.
pub(super) fn rr64(bed: &Bed, r: &mut Results, allocs: &mut Vec<(String, f64)>) {
    let secs = bed.s.seconds;
    let res = rr(bed, &["kernel", "stack", "stack-busy"], 64, allocs);
    add(
        r,
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

/// Request/response on `conns` connections, per backend; also the stack server's allocations
/// per packet over the measured runs.
fn rr(
    bed: &Bed,
    backends: &[&str],
    conns: usize,
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
        for _ in 0..bed.s.runs {
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
            let m = rr_metrics(&v);
            let cdf: Vec<(f64, f64)> = v
                .get("cdf")
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .unwrap_or_default();
            cdfs.push((num(&v, "p50_us"), cdf));
            runs.push(m);
        }
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

/// Requests/s and latency percentiles out of one `bench-client rr` result line.
pub(super) fn rr_metrics(v: &Value) -> Metrics {
    Metrics::from([
        ("rps", num(v, "rps")),
        ("p50", num(v, "p50_us")),
        ("p99", num(v, "p99_us")),
        ("p999", num(v, "p999_us")),
    ])
}

/// The latency columns of an RR table, with requests/s if `with_rps`.
pub(super) fn lat_columns(with_rps: bool) -> Vec<Column> {
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
