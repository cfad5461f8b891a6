//! The targets from the issue: stack/kernel ratios of the scenarios, checked against their goals.
use crate::{Results, Target};

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

/// Every target with its measured ratio (None where its scenarios did not run or failed).
pub(super) fn targets(r: &Results) -> Vec<Target> {
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
