//! SYN on a synchronized connection (RFC 5961 §4), SYN-RECEIVED reset.

use super::*;

/// Linux rate-limits challenge ACKs for SYNs per socket (`tcp_invalid_ratelimit`, 500 ms), so
/// each case sends one SYN on its own connection.
pub(super) fn syn_challenge(c: &mut Ctx, seq: u32) -> Result<(), String> {
    c.send(
        SYN,
        seq,
        0,
        &[],
        Some(SynOpts::default().bytes(c.peer.tsval())),
    )?;
    let pred = exact_ack(c);
    let s = c.expect(Duration::from_secs(1), "challenge ACK", |s| {
        s.has(SYN) || s.has(RST) || pred(s)
    })?;
    ensure!(
        !s.has(SYN) && !s.has(RST),
        "answered a SYN on an established connection with {s} (want a challenge ACK)"
    );
    c.expect_none(ms(300), "SYN-ACK or RST", |s| s.has(SYN) || s.has(RST))?;
    lives(c)
}

pub(super) fn syn_in_window_on_established(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    lives(c)?;
    let seq = c.conn.snd_nxt.wrapping_add(100);
    syn_challenge(c, seq)
}

pub(super) fn syn_old_isn_on_established(c: &mut Ctx) -> Result<(), String> {
    // A retransmission of the original SYN (out of window now).
    c.handshake(SynOpts::default())?;
    lives(c)?;
    let iss = c.conn.iss;
    syn_challenge(c, iss)
}

pub(super) fn bad_ack_in_syn_received_rst(c: &mut Ctx) -> Result<(), String> {
    // SYN-RECEIVED, the ACK acknowledges something never sent: <SEQ=SEG.ACK><CTL=RST>.
    let sa = c.syn_only(&SynOpts::default())?;
    let bad = sa.seq.wrapping_add(1000);
    let seq = c.conn.snd_nxt;
    c.send(ACK, seq, bad, &[], None)?;
    let s = c.expect(Duration::from_secs(1), "RST", |s| s.has(RST) || s.has(SYN))?;
    ensure!(s.has(RST), "want a RST, got {s}");
    ensure!(s.seq == bad, "RST seq {} (want SEG.ACK {bad})", s.seq);
    Ok(())
}

pub(super) fn syn_rst_then_connect(c: &mut Ctx) -> Result<(), String> {
    // The server application is blocked in accept (as servers are) while three half-open
    // connections are reset by the peer; then a normal connection: the listener keeps
    // answering and accept hands out the live connection, not an error or a dead one.
    c.accept_start(None);
    for _ in 0..3 {
        c.syn_only(&SynOpts::default())?;
        let seq = c.conn.iss.wrapping_add(1);
        c.send(RST, seq, 0, &[], Some(Vec::new()))?;
        c.conn.closed = true;
        thread::sleep(ms(20));
    }
    c.syn_only(&SynOpts::default())
        .map_err(|e| format!("the listener after SYN, SYN-ACK, RST: {e}"))?;
    c.send_ack()?;
    c.accept_wait()?;
    lives(c)
}
