//! Retransmission.

use super::*;

pub(super) fn rto_backoff(c: &mut Ctx) -> Result<(), String> {
    // No SACK: Linux would otherwise send a tail loss probe before the RTO.
    c.handshake(SynOpts {
        sack: false,
        ..SynOpts::default()
    })?;
    c.app_write(&pattern(100, 9))?;
    let nxt = c.server_nxt();
    let first = c.expect(Duration::from_secs(2), "data", |s| !s.payload.is_empty())?;
    let mut times = vec![first.at];
    let mut gap = Duration::from_millis(1500);
    while times.len() < 5 {
        let s = c
            .expect(gap * 3, "retransmission", |s| {
                s.seq == nxt && !s.payload.is_empty()
            })
            .map_err(|e| format!("{e} after {} retransmissions", times.len() - 1))?;
        gap = s.at - *times.last().unwrap_or(&s.at);
        times.push(s.at);
        if times.len() == 2 {
            ensure!(
                gap >= ms(150) && gap <= ms(700),
                "first retransmission after {gap:?} (Linux: ~200 ms, 200 ms floor)"
            );
        }
    }
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    for w in gaps.windows(2) {
        let r = w[1] / w[0];
        ensure!(
            (1.5..=2.8).contains(&r),
            "RTO does not double: gaps {:?} ms",
            gaps.iter().map(|g| (g * 1e3) as u64).collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// Handshake with MSS 536, no timestamps, then the server sends 5 full segments; returns their
/// sequence numbers in order.
pub(super) fn five_segments(c: &mut Ctx, sack: bool) -> Result<Vec<u32>, String> {
    c.handshake(SynOpts {
        mss: Some(536),
        sack,
        ts: false,
        wscale: None,
        window: 65535,
    })?;
    c.app_write(&pattern(5 * 536, 11))?;
    let base = c.server_nxt();
    let want: Vec<u32> = (0..5).map(|i| base.wrapping_add(536 * i)).collect();
    let mut seen = [false; 5];
    let deadline = Instant::now() + Duration::from_secs(2);
    while seen.iter().any(|s| !s) {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = c
            .expect(left, "the 5 data segments", |s| !s.payload.is_empty())
            .map_err(|e| format!("{e}: saw {seen:?}"))?;
        match want.iter().position(|&w| w == s.seq) {
            Some(i) if s.payload.len() == 536 => seen[i] = true,
            _ => {
                return Err(format!(
                    "unexpected data segment {s} (want 536-byte segments)"
                ))
            }
        }
    }
    Ok(want)
}

pub(super) fn fast_retransmit(c: &mut Ctx) -> Result<(), String> {
    let seqs = five_segments(c, false)?;
    let snd = c.conn.snd_nxt;
    for _ in 0..3 {
        c.send(ACK, snd, seqs[0], &[], None)?;
    }
    let t_dup = Instant::now();
    let s = c.expect(
        Duration::from_secs(3),
        "retransmission of the first segment",
        |s| s.seq == seqs[0] && !s.payload.is_empty(),
    )?;
    let dt = s.at - t_dup;
    ensure!(
        dt < ms(150),
        "first segment retransmitted {dt:?} after the third duplicate ACK: not a fast retransmit"
    );
    c.conn.rcv_nxt = seqs[4].wrapping_add(536);
    c.send_ack()
}

/// Two holes in one window recovered in one episode, well before an RTO, without resending a
/// SACKed segment: what RFC 6675 recovery achieves here. Linux gets there with its SACK
/// scoreboard; the stack with NewReno partial ACKs (RFC 6582), which suffice for this pattern
/// (it does not yet use SACK blocks to choose what to resend).
pub(super) fn sack_recovery(c: &mut Ctx) -> Result<(), String> {
    // Segments 0 and 2 are lost; 1, 3, 4 arrive and are SACKed.
    let s = five_segments(c, true)?;
    ensure!(c.conn.sack, "SACK not negotiated");
    let end = s[4].wrapping_add(536);
    let snd = c.conn.snd_nxt;
    let dups = [
        vec![(s[1], s[2])],
        vec![(s[3], s[4]), (s[1], s[2])],
        vec![(s[3], end), (s[1], s[2])],
    ];
    for blocks in &dups {
        c.send(ACK, snd, s[0], &[], Some(opt::sack(blocks)))?;
    }
    let t_dup = Instant::now();
    let (mut got0, mut got2) = (false, false);
    let deadline = t_dup + Duration::from_secs(3);
    while !(got0 && got2) {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = c
            .expect(left, "retransmission", |x| !x.payload.is_empty())
            .map_err(|e| format!("{e} (segment 0 resent: {got0}, segment 2 resent: {got2})"))?;
        if r.seq == s[1] || r.seq == s[3] {
            return Err(format!("retransmitted a SACKed segment: {r}"));
        }
        if r.seq == s[0] && !got0 {
            got0 = true;
            c.send(ACK, snd, s[2], &[], Some(opt::sack(&[(s[3], end)])))?;
        } else if r.seq == s[2] {
            got2 = true;
            ensure!(
                r.at - t_dup < ms(150),
                "the second hole was filled {:?} after the duplicate ACKs (after an RTO?)",
                r.at - t_dup
            );
        }
    }
    c.conn.rcv_nxt = end;
    c.send_ack()
}
