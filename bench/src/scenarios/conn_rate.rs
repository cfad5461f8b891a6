//! Connection rate (`connrate`): connect, 1-byte request and answer, close, on 4 client threads.
use super::{add, each_backend, num, port_of, Bed};
use crate::{Better, Column, Metrics, Results, Series};

/// `connrate`.
pub(super) fn run(bed: &Bed, r: &mut Results) {
    let secs = bed.s.seconds;
    let res = conn_rate(bed);
    add(
        r,
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
