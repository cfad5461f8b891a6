//! RST processing (RFC 5961 §3).

use super::*;

pub(super) fn rst_out_of_window_ignored(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    let seq = c.conn.snd_nxt.wrapping_add(0x4000_0000);
    let ack = c.conn.rcv_nxt;
    c.send(RST | ACK, seq, ack, &[], None)?;
    c.expect_none(ms(300), "answer to an out-of-window RST", |_| true)?;
    lives(c)
}

pub(super) fn rst_in_window_challenge_ack(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    let seq = c.conn.snd_nxt.wrapping_add(1);
    let ack = c.conn.rcv_nxt;
    c.send(RST | ACK, seq, ack, &[], None)?;
    let pred = exact_ack(c);
    c.expect(Duration::from_secs(1), "challenge ACK", |s| {
        s.has(RST) || pred(s)
    })
    .and_then(|s| {
        if s.has(RST) {
            Err(format!("RST instead of a challenge ACK: {s}"))
        } else {
            Ok(())
        }
    })?;
    lives(c)
}

pub(super) fn rst_exact_resets(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    let (seq, ack) = (c.conn.snd_nxt, c.conn.rcv_nxt);
    c.send(RST | ACK, seq, ack, &[], None)?;
    c.conn.closed = true;
    c.expect_none(ms(200), "answer to a RST", |_| true)?;
    match c.app_read(Duration::from_secs(2)) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
        other => Err(format!(
            "server read after RST: {other:?}, not ConnectionReset"
        )),
    }
}

pub(super) fn server_abort_sends_rst(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    lives(c)?;
    let server = c.take_server().ok_or("no server side")?;
    server.reset().map_err(|e| format!("reset: {e}"))?;
    c.conn.closed = true;
    let nxt = c.server_nxt();
    let s = c.expect(Duration::from_secs(2), "RST", |s| s.has(RST))?;
    ensure!(s.seq == nxt, "RST seq {} is not SND.NXT {nxt}", s.seq);
    Ok(())
}
