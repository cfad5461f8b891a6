//! A port scan next to a live connection.

use super::*;

pub(super) fn port_scan_while_echo(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    lives(c)?;
    let (lo, hi) = (c.port - 100, c.port + 100);
    let mut pending = std::collections::HashMap::new();
    const ISS: u32 = 7777;
    for (i, p) in (lo..hi).enumerate() {
        let sport = c.fresh_port();
        pending.insert(sport, p);
        let o = Out {
            sport,
            dport: p,
            seq: ISS,
            ack: 0,
            flags: SYN,
            window: 65535,
            opts: opt::mss(1460),
            payload: Vec::new(),
        };
        c.send_out(o)?;
        if i % 20 == 19 {
            c.echo(&format!("during the scan at port {p}"))?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut idx, mut synacks) = (0, 0);
    while !pending.is_empty() {
        let s = if idx < c.others.len() {
            idx += 1;
            c.others[idx - 1].clone()
        } else {
            // Anything not of the live connection lands in `others`.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = c.collect(left.min(ms(50)));
            continue;
        };
        let Some(&p) = pending.get(&s.dport) else {
            continue;
        };
        ensure!(
            s.sport == p,
            "answer from port {} to a SYN for {p}",
            s.sport
        );
        ensure!(
            s.ack == ISS + 1,
            "answer acks {} (want {}): {s}",
            s.ack,
            ISS + 1
        );
        if s.has(SYN | ACK) {
            synacks += 1;
            c.send_out(Out {
                sport: s.dport,
                dport: p,
                seq: ISS + 1,
                ack: 0,
                flags: RST,
                window: 0,
                opts: Vec::new(),
                payload: Vec::new(),
            })?;
        } else {
            ensure!(s.has(RST), "unexpected answer {s}");
        }
        pending.remove(&s.dport);
    }
    ensure!(
        pending.is_empty(),
        "{} SYNs unanswered (ports {:?}...)",
        pending.len(),
        pending.values().take(5).collect::<Vec<_>>()
    );
    // At least the listener under test answered with a SYN-ACK (the other target's listener is
    // in the range too); every other port with a RST.
    ensure!(
        synacks >= 1,
        "no SYN-ACK from the listening port during the scan"
    );
    c.note(format!(
        "scan: {} SYNs, {synacks} SYN-ACKs, the rest RSTs",
        hi - lo
    ));
    for i in 0..3 {
        c.echo(&format!("after the scan {i}"))?;
    }
    Ok(())
}
