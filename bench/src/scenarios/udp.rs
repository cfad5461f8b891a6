//! UDP receive: `udp-rate` (a fixed offered rate) and `udp-max` (flat out), with CPU per datagram.
use std::time::Duration;

use serde_json::Value;

use super::{add, each_backend, num, Bed};
use crate::{
    proc::{client, cpu_ticks, cpu_ticks_of},
    Better, Column, Metrics, Results, Series,
};

const KERNEL_UDP: u16 = 9100;
const STACK_UDP: u16 = 9000;

/// One scenario per offered rate in the settings.
pub(super) fn run(bed: &Bed, r: &mut Results) {
    let secs = bed.s.seconds;
    for &rate in &bed.s.udp_rates.clone() {
        let name = if rate == 0 {
            "flat out".to_string()
        } else {
            format!("{} kpps offered", rate / 1000)
        };
        let res = udp(bed, rate);
        add(r, if rate == 0 { "udp-max" } else { "udp-rate" }, format!("UDP receive, {name}"),
            format!("udp-flood (sendmmsg, 4 flows, batch 32, 32-byte payload) for {secs} s; CPU is the whole machine's busy time (/proc/stat, both CPUs, the flooder's included) per delivered datagram; server CPU is the servers' CPU alone (the kernel's receive softirq runs on the flooder's CPU over veth, so it is not all there)"),
            vec![
                Column { metric: "delivered", title: "delivered/s", better: Better::Higher },
                Column { metric: "cpu_ns", title: "CPU ns/datagram", better: Better::Lower },
                Column { metric: "cpu0_ns", title: "server CPU ns/datagram", better: Better::Lower },
                Column { metric: "loss", title: "loss", better: Better::Lower },
            ], res);
    }
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
