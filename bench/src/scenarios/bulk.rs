//! TCP bulk transfer, one stream each way: `bulk-rx` (server receiving) and `bulk-tx` (sending).
use super::{add, each_backend, num, port_of, Bed};
use crate::{Better, Column, Metrics, Results, Series};

/// `bulk-rx`, then `bulk-tx`.
pub(super) fn run(bed: &Bed, r: &mut Results) {
    let secs = bed.s.seconds;
    let res = bulk(bed, false);
    add(
        r,
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
    let res = bulk(bed, true);
    add(
        r,
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
