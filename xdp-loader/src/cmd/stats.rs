//! `stats`: the program's per-queue counters or rates, and the counters of the services.
use std::time::Duration;

use steer_bpf::{QueueCounters, SteerError, Steering};

use crate::CliError;

/// Counters of the services running on `iface`, from their control sockets.
fn service_stats(iface: &str) -> Vec<(u32, Result<serde_json::Value, String>)> {
    xsk_stack::control::sockets_of(iface)
        .into_iter()
        .filter_map(|(q, path)| {
            match xsk_stack::control::request(&path, &serde_json::json!({"cmd": "stats"})) {
                Ok(v) => Some((q, Ok(v))),
                // A socket file nobody listens on: left by a service that was killed.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => None,
                Err(e) => Some((q, Err(format!("{}: {e}", path.display())))),
            }
        })
        .collect()
}

/// `stats --connections`: every running service's TCP connections, from its control socket.
pub(crate) fn connections(iface: &str, json: bool) -> Result<(), CliError> {
    if steer_bpf::sys::ifindex(iface).is_none() {
        return Err(SteerError::NoSuchInterface(iface.to_string()).into());
    }
    let mut services = Vec::new();
    for (q, path) in xsk_stack::control::sockets_of(iface) {
        match xsk_stack::control::request(&path, &serde_json::json!({"cmd": "connections"})) {
            Ok(v) => {
                services.push(serde_json::json!({"queue": q, "connections": v["connections"]}))
            }
            // A socket file nobody listens on: left by a service that was killed.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => services
                .push(serde_json::json!({"queue": q, "error": format!("{}: {e}", path.display())})),
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"iface": iface, "services": services})
        );
        return Ok(());
    }
    if services.is_empty() {
        println!("{iface}: no service running");
    }
    let opt = |v: &serde_json::Value, div: f64| {
        v.as_f64()
            .map_or("-".to_string(), |x| format!("{:.1}", x / div))
    };
    for s in &services {
        let q = &s["queue"];
        let Some(conns) = s["connections"].as_array() else {
            println!("stack on queue {q}: unreachable ({})", s["error"]);
            continue;
        };
        println!("stack on queue {q}: {} TCP connection(s)", conns.len());
        println!(
            "  {:<12} {:<22} {:<22} {:>9} {:>9} {:>7} {:>6} {:>9} {:>9} {:>8} {:>8}",
            "state",
            "local",
            "remote",
            "srtt_ms",
            "rttvar_ms",
            "rto_ms",
            "retx",
            "cwnd",
            "peer_win",
            "send_q",
            "recv_q"
        );
        for c in conns {
            println!(
                "  {:<12} {:<22} {:<22} {:>9} {:>9} {:>7} {:>6} {:>9} {:>9} {:>8} {:>8}",
                c["state"].as_str().unwrap_or("?"),
                c["local"].as_str().unwrap_or("?"),
                c["remote"].as_str().unwrap_or("?"),
                opt(&c["srtt_us"], 1000.0),
                opt(&c["rttvar_us"], 1000.0),
                c["rto_ms"].to_string(),
                c["retransmits"].to_string(),
                c["cwnd"]
                    .as_u64()
                    .map_or("-".to_string(), |w| w.to_string()),
                c["peer_window"].to_string(),
                c["send_queue"].to_string(),
                c["recv_queue"].to_string(),
            );
        }
    }
    Ok(())
}

fn read_all(s: &Steering, queues: u32) -> Result<Vec<QueueCounters>, SteerError> {
    (0..queues).map(|q| s.counters(q)).collect()
}

pub(crate) fn stats(
    iface: &str,
    root: Option<&std::path::Path>,
    interval: Option<f64>,
    count: Option<u64>,
    all: bool,
    json: bool,
) -> Result<(), CliError> {
    if steer_bpf::sys::ifindex(iface).is_none() {
        return Err(SteerError::NoSuchInterface(iface.to_string()).into());
    }
    let s = Steering::open(iface, root)?;
    let queues = steer_bpf::sys::rx_queue_count(iface)
        .unwrap_or(steer_bpf::MAX_QUEUES)
        .min(steer_bpf::MAX_QUEUES);
    let steered = s.queue()?;
    let show = |q: u32, c: &QueueCounters| all || q == steered || c.seen > 0;
    let Some(secs) = interval else {
        let now = read_all(&s, queues)?;
        if json {
            let v: Vec<_> = now
                .iter()
                .enumerate()
                .filter(|(q, c)| show(*q as u32, c))
                .map(|(q, c)| serde_json::json!({"queue": q, "counters": c}))
                .collect();
            let services: Vec<_> = service_stats(iface)
                .into_iter()
                .map(|(q, r)| match r {
                    Ok(v) => serde_json::json!({"queue": q, "stats": v["stats"]}),
                    Err(e) => serde_json::json!({"queue": q, "error": e}),
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"iface": iface, "steered_queue": steered, "queues": v, "services": services})
            );
        } else {
            print_table(iface, steered, &now, None, show);
            for (q, r) in service_stats(iface) {
                match r {
                    Ok(v) => {
                        println!("\nstack on queue {q} (pid {}):", v["stats"]["pid"]);
                        print!("{}", v["table"].as_str().unwrap_or(""));
                    }
                    Err(e) => println!("\nstack on queue {q}: unreachable ({e})"),
                }
            }
        }
        return Ok(());
    };
    let mut prev = read_all(&s, queues)?;
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(Duration::from_secs_f64(secs));
        let now = read_all(&s, queues)?;
        let rates: Vec<QueueCounters> = now.iter().zip(&prev).map(|(a, b)| a.delta(b)).collect();
        if json {
            let v: Vec<_> = rates
                .iter()
                .enumerate()
                .filter(|(q, _)| show(*q as u32, &now[*q]))
                .map(|(q, r)| {
                    let per_sec: serde_json::Map<String, serde_json::Value> = r
                        .fields()
                        .iter()
                        .map(|(k, v)| (k.to_string(), serde_json::json!(*v as f64 / secs)))
                        .collect();
                    serde_json::json!({"queue": q, "per_sec": per_sec, "totals": now[q]})
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"iface": iface, "interval": secs, "queues": v})
            );
        } else {
            print_table(iface, steered, &now, Some((&rates, secs)), show);
        }
        prev = now;
        n += 1;
    }
    Ok(())
}

fn print_table(
    iface: &str,
    steered: u32,
    now: &[QueueCounters],
    rates: Option<(&[QueueCounters], f64)>,
    show: impl Fn(u32, &QueueCounters) -> bool,
) {
    let header: Vec<&str> = QueueCounters::default()
        .fields()
        .iter()
        .map(|(k, _)| *k)
        .collect();
    let unit = if rates.is_some() { " (per second)" } else { "" };
    println!("{iface}: steered queue {steered}{unit}");
    print!("{:>7}", "queue");
    for h in &header {
        print!(" {h:>12}");
    }
    println!();
    for (q, c) in now.iter().enumerate() {
        if !show(q as u32, c) {
            continue;
        }
        let mark = if q as u32 == steered { "*" } else { " " };
        print!("{:>6}{mark}", q);
        let vals = match rates {
            Some((r, secs)) => r[q]
                .fields()
                .map(|(_, v)| format!("{:.0}", v as f64 / secs)),
            None => c.fields().map(|(_, v)| v.to_string()),
        };
        for v in vals {
            print!(" {v:>12}");
        }
        println!();
    }
}
