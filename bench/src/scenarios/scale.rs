//! Scale: TCP RR on one connection with 10, 1 000 or 10 000 idle connections open.
use serde_json::Value;

use super::{
    add, port_of,
    rr::{lat_columns, rr_metrics},
    Bed,
};
use crate::{proc::client, Results, Series};

/// `scale-10`, `scale-1k`, `scale-10k` (as many as the settings ask for).
pub(super) fn run(bed: &Bed, r: &mut Results) {
    for &idle in &bed.s.scale.clone() {
        let res = rr_idle(bed, &["kernel", "stack"], idle);
        let key: &'static str = match idle {
            10 => "scale-10",
            1000 => "scale-1k",
            10000 => "scale-10k",
            _ => "scale",
        };
        add(
            r,
            key,
            format!("Scale: RR with {idle} idle connections open"),
            format!("as TCP RR on 1 connection, with {idle} more connections open and idle"),
            lat_columns(false),
            res,
        );
    }
}

/// Request/response on one connection with `idle` idle ones open, per backend.
fn rr_idle(bed: &Bed, backends: &[&str], idle: usize) -> Result<Vec<Series>, String> {
    let mut out = Vec::new();
    for &b in backends {
        let _srv = bed.server(b, &[])?;
        // Idle connections are opened once per backend (10 000 handshakes per run would
        // dominate the suite); the client then measures `runs` times over them.
        let mut measured: Vec<Value> = Vec::new();
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
        let lines = client(
            &bed.tb.ns,
            bed.s.client_cpu,
            &Bed::bin("bench-client"),
            &args,
        )?;
        for l in lines.lines() {
            measured.push(serde_json::from_str(l).map_err(|e| format!("{l:?}: {e}"))?);
        }
        let runs = (0..bed.s.runs)
            .map(|i| rr_metrics(&measured.get(i).cloned().unwrap_or(Value::Null)))
            .collect();
        out.push(Series {
            backend: b.to_string(),
            runs,
            cdf: None,
        });
    }
    Ok(out)
}
