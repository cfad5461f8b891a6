//! The benchmark suite: the kernel and the stack serving the same logic on the same veth pair,
//! in one run, with ratios. Servers run on CPU 0, the client in the peer namespace on CPU 1; the
//! client binary is the same for both servers. `bench` (the binary) drives it and writes
//! BENCHMARKS.md and the plots.
mod plot;
mod proc;
mod report;
mod scenarios;

pub use report::write_report;
pub use scenarios::{run_suite, Settings};

use std::collections::BTreeMap;

/// One run's figures, by metric name.
pub type Metrics = BTreeMap<&'static str, f64>;

/// The runs of one backend in one scenario.
#[derive(Debug, Clone)]
pub struct Series {
    pub backend: String,
    pub runs: Vec<Metrics>,
    /// Latency CDF (quantile, µs) of the median run, when the scenario has one.
    pub cdf: Option<Vec<(f64, f64)>>,
}

impl Series {
    /// Median and (min, max) of `metric` over the runs.
    pub fn stat(&self, metric: &str) -> Option<(f64, f64, f64)> {
        let mut v: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|m| m.get(metric).copied())
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some((median, v[0], v[v.len() - 1]))
    }
}

/// Which way is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// One metric shown in a scenario's table.
#[derive(Debug, Clone)]
pub struct Column {
    pub metric: &'static str,
    pub title: &'static str,
    pub better: Better,
}

/// A scenario's results.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub key: &'static str,
    pub title: String,
    pub what: String,
    pub columns: Vec<Column>,
    /// The baseline is `series[0]` (the kernel).
    pub series: Vec<Series>,
}

/// A target from the issue, checked against a measured ratio.
#[derive(Debug, Clone)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub ratio: Option<f64>,
    pub met: Option<bool>,
}

/// Everything a suite run produced.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub scenarios: Vec<Scenario>,
    pub targets: Vec<Target>,
    pub allocations: Vec<(String, f64)>,
    pub notes: Vec<String>,
    pub elapsed_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Series {
            backend: "x".into(),
            runs: [3.0, 1.0, 2.0, 10.0]
                .iter()
                .map(|&v| Metrics::from([("m", v)]))
                .collect(),
            cdf: None,
        };
        assert_eq!(s.stat("m"), Some((2.5, 1.0, 10.0)));
        assert_eq!(s.stat("other"), None);
    }
}
