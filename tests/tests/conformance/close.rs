//! Closing.

use super::*;

pub(super) fn server_active_close_time_wait(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    lives(c)?;
    c.server()?.shutdown_write().map_err(|e| e.to_string())?;
    let nxt = c.server_nxt();
    let f = c.expect(Duration::from_secs(2), "FIN", |s| s.has(FIN))?;
    ensure!(
        f.seq == nxt && f.payload.is_empty(),
        "FIN at {} (want {nxt}): {f}",
        f.seq
    );
    c.conn.rcv_nxt = nxt.wrapping_add(1);
    c.send_ack()?;
    c.expect_none(ms(300), "FIN retransmission", |s| s.has(FIN))?;
    let (seq, ack) = (c.conn.snd_nxt, c.conn.rcv_nxt);
    c.send(FIN | ACK, seq, ack, &[], None)?;
    c.conn.snd_nxt = seq.wrapping_add(1);
    let pred = exact_ack(c);
    c.expect(Duration::from_secs(1), "ACK of our FIN", &pred)?;
    match c.app_read(Duration::from_secs(1)) {
        Ok(v) if v.is_empty() => {}
        other => return Err(format!("server read after our FIN: {other:?}, want EOF")),
    }
    // TIME-WAIT: a retransmitted FIN is acknowledged again.
    c.send(FIN | ACK, seq, ack, &[], None)?;
    c.expect(
        Duration::from_secs(1),
        "re-ACK of the FIN in TIME-WAIT",
        &pred,
    )?;
    c.conn.closed = true;
    Ok(())
}

pub(super) fn close_with_unread_data_resets(c: &mut Ctx) -> Result<(), String> {
    // RFC 9293 §3.6 / RFC 1122 §4.2.2.13: an application that closes with received data still
    // unread makes the connection send RST, not FIN (Linux: TCPAbortOnClose), so the peer
    // does not take its data for delivered.
    c.handshake(SynOpts::default())?;
    c.send_data(b"never read")?;
    let end = c.conn.snd_nxt;
    c.expect(Duration::from_secs(1), "ACK of the data", |s| s.ack == end)?;
    let server = c.take_server().ok_or("no server side")?;
    drop(server);
    c.conn.closed = true;
    let s = c.expect(Duration::from_secs(2), "RST", |s| s.has(RST) || s.has(FIN))?;
    ensure!(s.has(RST), "a FIN instead of an RST: {s}");
    Ok(())
}

pub(super) fn data_after_close_resets(c: &mut Ctx) -> Result<(), String> {
    // The application read everything and closed: FIN. The peer ACKs the FIN but keeps
    // sending: nobody will ever read that data, so the connection is reset (Linux:
    // TCPAbortOnData in FIN-WAIT-2 for an orphan).
    c.handshake(SynOpts::default())?;
    lives(c)?;
    let server = c.take_server().ok_or("no server side")?;
    drop(server);
    let nxt = c.server_nxt();
    c.expect(Duration::from_secs(2), "FIN", |s| s.has(FIN))?;
    c.conn.rcv_nxt = nxt.wrapping_add(1);
    c.send_ack()?;
    c.expect_none(
        ms(200),
        "anything but silence after our ACK of the FIN",
        |s| s.has(RST),
    )?;
    c.send_data(b"late")?;
    c.conn.closed = true;
    let s = c.expect(Duration::from_secs(1), "RST for the late data", |s| {
        s.has(RST)
    })?;
    ensure!(
        s.seq == nxt.wrapping_add(1),
        "RST at {} (want {}): {s}",
        s.seq,
        nxt.wrapping_add(1)
    );
    Ok(())
}

pub(super) fn peer_active_close(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    lives(c)?;
    let (seq, ack) = (c.conn.snd_nxt, c.conn.rcv_nxt);
    c.send(FIN | ACK, seq, ack, &[], None)?;
    c.conn.snd_nxt = seq.wrapping_add(1);
    let pred = exact_ack(c);
    c.expect(Duration::from_secs(1), "ACK of our FIN", pred)?;
    match c.app_read(Duration::from_secs(1)) {
        Ok(v) if v.is_empty() => {}
        other => return Err(format!("server read after our FIN: {other:?}, want EOF")),
    }
    drop(c.take_server());
    let nxt = c.server_nxt();
    let f = c.expect(Duration::from_secs(2), "FIN", |s| s.has(FIN))?;
    ensure!(f.seq == nxt, "FIN at {} (want {nxt}): {f}", f.seq);
    c.conn.rcv_nxt = nxt.wrapping_add(1);
    c.send_ack()?;
    c.conn.closed = true;
    c.expect_none(ms(400), "segment after the last ACK", |_| true)
}

pub(super) fn simultaneous_close(c: &mut Ctx) -> Result<(), String> {
    // Both FINs cross (ours does not acknowledge the server's): FIN-WAIT-1 -> CLOSING ->
    // TIME-WAIT on the server; it ACKs our FIN and stops retransmitting once we ACK its FIN.
    c.handshake(SynOpts::default())?;
    lives(c)?;
    c.server()?.shutdown_write().map_err(|e| e.to_string())?;
    let nxt = c.server_nxt();
    c.expect(Duration::from_secs(2), "FIN", |s| {
        s.has(FIN) && s.seq == nxt
    })?;
    let (seq, ack) = (c.conn.snd_nxt, c.conn.rcv_nxt);
    c.send(FIN | ACK, seq, ack, &[], None)?;
    c.conn.snd_nxt = seq.wrapping_add(1);
    let want = c.conn.snd_nxt;
    let s = c.expect(Duration::from_secs(1), "ACK of our FIN", |s| {
        s.has(RST) || s.ack == want
    })?;
    ensure!(!s.has(RST), "RST in a simultaneous close: {s}");
    c.conn.rcv_nxt = nxt.wrapping_add(1);
    c.send_ack()?;
    c.conn.closed = true;
    c.expect_none(ms(300), "FIN retransmission or RST", |s| {
        s.has(FIN) || s.has(RST)
    })
}

pub(super) fn fin_with_data(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    let (seq, ack) = (c.conn.snd_nxt, c.conn.rcv_nxt);
    c.send(FIN | ACK | PSH, seq, ack, b"bye", None)?;
    c.conn.snd_nxt = seq.wrapping_add(4);
    let end = c.conn.snd_nxt;
    c.expect(Duration::from_secs(1), "ACK of data and FIN", |s| {
        s.ack == end
    })?;
    let got = c.app_read_exact(3, Duration::from_secs(1))?;
    ensure!(got == b"bye", "read {got:?}");
    match c.app_read(Duration::from_secs(1)) {
        Ok(v) if v.is_empty() => {}
        other => return Err(format!("server read after the FIN: {other:?}, want EOF")),
    }
    c.server()?.shutdown_write().map_err(|e| e.to_string())?;
    let nxt = c.server_nxt();
    c.expect(Duration::from_secs(2), "FIN", |s| {
        s.has(FIN) && s.seq == nxt
    })?;
    c.conn.rcv_nxt = nxt.wrapping_add(1);
    c.send_ack()?;
    c.conn.closed = true;
    Ok(())
}
