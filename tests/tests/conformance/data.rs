//! Data: reassembly, duplicates, acceptable ACKs, timestamps.

use super::*;

pub(super) fn ooo_reassembly_sack(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    ensure!(c.conn.sack, "SACK not negotiated");
    let a = vec![b'a'; 100];
    let b = vec![b'b'; 100];
    let s1 = c.conn.snd_nxt;
    let s2 = s1.wrapping_add(100);
    let ack = c.conn.rcv_nxt;
    c.send(ACK | PSH, s2, ack, &b, None)?;
    let d = c.expect(Duration::from_secs(1), "duplicate ACK", |s| s.ack == s1)?;
    ensure!(
        d.opts.sack.contains(&(s2, s2.wrapping_add(100))),
        "the duplicate ACK has no SACK block for the out-of-order segment: {d}"
    );
    app_reads_nothing(c, ms(200))?;
    c.send(ACK | PSH, s1, ack, &a, None)?;
    c.conn.snd_nxt = s2.wrapping_add(100);
    let end = c.conn.snd_nxt;
    c.expect(Duration::from_secs(1), "cumulative ACK of both", |s| {
        s.ack == end
    })?;
    let got = c.app_read_exact(200, Duration::from_secs(2))?;
    ensure!(
        got[..100] == a[..] && got[100..] == b[..],
        "app read out of order"
    );
    Ok(())
}

pub(super) fn ooo_without_sack(c: &mut Ctx) -> Result<(), String> {
    // Without SACK-permitted: the duplicate ACK carries no SACK blocks; reassembly still works.
    c.handshake(SynOpts {
        sack: false,
        ..SynOpts::default()
    })?;
    let s1 = c.conn.snd_nxt;
    let ack = c.conn.rcv_nxt;
    c.send(ACK | PSH, s1.wrapping_add(10), ack, b"later", None)?;
    let d = c.expect(Duration::from_secs(1), "duplicate ACK", |s| s.ack == s1)?;
    ensure!(
        d.opts.sack.is_empty(),
        "SACK blocks without SACK-permitted: {d}"
    );
    c.send(ACK | PSH, s1, ack, b"0123456789", None)?;
    c.conn.snd_nxt = s1.wrapping_add(15);
    let end = c.conn.snd_nxt;
    c.expect(Duration::from_secs(1), "cumulative ACK", |s| s.ack == end)?;
    let got = c.app_read_exact(15, Duration::from_secs(1))?;
    ensure!(got == b"0123456789later", "app read {got:?}");
    Ok(())
}

pub(super) fn old_duplicate_data(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    let seq = c.conn.snd_nxt;
    c.send_data(b"hello")?;
    let end = c.conn.snd_nxt;
    c.expect(Duration::from_secs(1), "ACK of the data", |s| s.ack == end)?;
    let got = c.app_read_exact(5, Duration::from_secs(2))?;
    ensure!(got == b"hello", "read {got:?}");
    let ack = c.conn.rcv_nxt;
    c.send(ACK | PSH, seq, ack, b"hello", None)?;
    c.expect(Duration::from_secs(1), "ACK of the duplicate", |s| {
        s.is_pure_ack() && s.ack == end
    })?;
    app_reads_nothing(c, ms(300))?;
    lives(c)
}

pub(super) fn dsack_on_duplicate(c: &mut Ctx) -> Result<(), String> {
    // RFC 2883: with SACK on, the ACK of a wholly duplicate segment reports it as the first
    // SACK block (Linux: tcp_dsack=1, the default).
    c.handshake(SynOpts::default())?;
    ensure!(c.conn.sack, "SACK not negotiated");
    let seq = c.conn.snd_nxt;
    c.send_data(b"hello")?;
    let end = c.conn.snd_nxt;
    c.expect(Duration::from_secs(1), "ACK of the data", |s| s.ack == end)?;
    let ack = c.conn.rcv_nxt;
    c.send(ACK | PSH, seq, ack, b"hello", None)?;
    let d = c.expect(Duration::from_secs(1), "ACK of the duplicate", |s| {
        s.is_pure_ack() && s.ack == end
    })?;
    ensure!(
        d.opts.sack.first() == Some(&(seq, end)),
        "no D-SACK block for the duplicate {seq}..{end}: {d}"
    );
    c.app_read_exact(5, Duration::from_secs(1))?;
    app_reads_nothing(c, ms(200))
}

pub(super) fn fin_out_of_order(c: &mut Ctx) -> Result<(), String> {
    // A FIN that arrives before the data in front of it is kept (Linux queues it with the
    // out-of-order data): once the hole fills, the data and the FIN are acknowledged together
    // and the application reads the data, then end of stream. No retransmission of the FIN.
    c.handshake(SynOpts::default())?;
    let s1 = c.conn.snd_nxt;
    let ack = c.conn.rcv_nxt;
    c.send(ACK | PSH | FIN, s1.wrapping_add(5), ack, b"world", None)?;
    c.expect(Duration::from_secs(1), "duplicate ACK", |s| s.ack == s1)?;
    c.send(ACK | PSH, s1, ack, b"hello", None)?;
    let end = s1.wrapping_add(11);
    c.conn.snd_nxt = end;
    c.expect(
        Duration::from_millis(500),
        "ACK of the data and the FIN once the hole fills",
        |s| s.ack == end,
    )?;
    let got = c.app_read_exact(10, Duration::from_secs(1))?;
    ensure!(got == b"helloworld", "read {got:?}");
    match c.app_read(Duration::from_secs(1)) {
        Ok(v) if v.is_empty() => Ok(()),
        other => Err(format!("server read after the FIN: {other:?}, want EOF")),
    }
}

pub(super) fn paws_old_timestamp_dropped(c: &mut Ctx) -> Result<(), String> {
    // RFC 7323 §5.3 R1: a segment whose TSval is older than TS.Recent is dropped and answered
    // with an ACK that echoes TS.Recent; the data is not delivered. The same data with a current
    // timestamp is then taken.
    c.handshake(SynOpts::default())?;
    ensure!(c.conn.ts, "timestamps not negotiated");
    let seq = c.conn.snd_nxt;
    let ack = c.conn.rcv_nxt;
    let recent = c.peer.tsval();
    c.send(
        ACK | PSH,
        seq,
        ack,
        b"fresh",
        Some(opt::ts(recent, c.conn.ts_recent)),
    )?;
    c.conn.snd_nxt = seq.wrapping_add(5);
    let end = c.conn.snd_nxt;
    c.expect(Duration::from_secs(1), "ACK of the data", |s| s.ack == end)?;
    c.app_read_exact(5, Duration::from_secs(1))?;
    let old = recent.wrapping_sub(100_000);
    c.send(
        ACK | PSH,
        end,
        ack,
        b"stale",
        Some(opt::ts(old, c.conn.ts_recent)),
    )?;
    let d = c.expect(
        Duration::from_secs(1),
        "ACK answering the old segment",
        |s| s.is_pure_ack(),
    )?;
    ensure!(d.ack == end, "the old segment's data was acknowledged: {d}");
    let (_, ecr) = d.opts.ts.ok_or(format!("ACK without timestamps: {d}"))?;
    ensure!(
        ecr == recent,
        "the ACK echoes {ecr}, TS.Recent is {recent}: {d}"
    );
    app_reads_nothing(c, ms(200))?;
    let now = c.peer.tsval();
    c.send(
        ACK | PSH,
        end,
        ack,
        b"fresh",
        Some(opt::ts(now, c.conn.ts_recent)),
    )?;
    c.conn.snd_nxt = end.wrapping_add(5);
    let end2 = c.conn.snd_nxt;
    c.expect(Duration::from_secs(1), "ACK of the current data", |s| {
        s.ack == end2
    })?;
    let got = c.app_read_exact(5, Duration::from_secs(1))?;
    ensure!(got == b"fresh", "read {got:?}");
    Ok(())
}

pub(super) fn overlapping_retransmission_trimmed(c: &mut Ctx) -> Result<(), String> {
    // A segment that starts left of RCV.NXT: the old part is trimmed, the new part accepted.
    c.handshake(SynOpts::default())?;
    c.send_data(b"01234")?;
    let end = c.conn.snd_nxt;
    c.expect(Duration::from_secs(1), "ACK", |s| s.ack == end)?;
    let seq = end.wrapping_sub(5);
    let ack = c.conn.rcv_nxt;
    c.send(ACK | PSH, seq, ack, b"0123456789", None)?;
    c.conn.snd_nxt = seq.wrapping_add(10);
    let end = c.conn.snd_nxt;
    c.expect(Duration::from_secs(1), "ACK of the new part", |s| {
        s.ack == end
    })?;
    let got = c.app_read_exact(10, Duration::from_secs(1))?;
    ensure!(got == b"0123456789", "read {got:?}");
    app_reads_nothing(c, ms(200))
}

pub(super) fn data_beyond_window_acked(c: &mut Ctx) -> Result<(), String> {
    // Unacceptable segment (right of the window): answered with an ACK, dropped.
    let sa = c.handshake(SynOpts::default())?;
    let seq = c.conn.snd_nxt.wrapping_add(sa.window as u32 * 4 + 1000);
    let ack = c.conn.rcv_nxt;
    c.send(ACK | PSH, seq, ack, b"far", None)?;
    let pred = exact_ack(c);
    c.expect(Duration::from_secs(1), "ACK", pred)?;
    app_reads_nothing(c, ms(200))?;
    lives(c)
}

pub(super) fn keepalive_probe_answered(c: &mut Ctx) -> Result<(), String> {
    // A keep-alive (SEG.SEQ = RCV.NXT-1, no data) is answered with an ACK of RCV.NXT.
    c.handshake(SynOpts::default())?;
    lives(c)?;
    let seq = c.conn.snd_nxt.wrapping_sub(1);
    let ack = c.conn.rcv_nxt;
    c.send(ACK, seq, ack, &[], None)?;
    let pred = exact_ack(c);
    c.expect(Duration::from_secs(1), "ACK of the keep-alive", pred)?;
    lives(c)
}

/// Linux (6.18) answers SEG.ACK > SND.NXT with an ACK and drops the segment, data included.
pub(super) fn ack_for_unsent_data(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    lives(c)?;
    let (seq, good) = (c.conn.snd_nxt, c.conn.rcv_nxt);
    let bogus = good.wrapping_add(100_000);
    c.send(ACK | PSH, seq, bogus, b"bogus", None)?;
    let pred = exact_ack(c);
    c.expect(Duration::from_secs(1), "ACK (data not accepted)", pred)?;
    app_reads_nothing(c, ms(300))?;
    lives(c)
}

pub(super) fn old_ack_data_accepted(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    let data = pattern(2000, 7);
    c.app_write(&data)?;
    let got = c.recv_data(2000, Duration::from_secs(3))?;
    ensure!(got == data, "data differs");
    // SND.UNA is now IRS+2001; an ACK of IRS+1001 is old but within the peer's max window.
    let old = c.conn.irs.wrapping_add(1001);
    let seq = c.conn.snd_nxt;
    c.send(ACK | PSH, seq, old, b"old-ack data", None)?;
    c.conn.snd_nxt = seq.wrapping_add(12);
    let end = c.conn.snd_nxt;
    c.expect(Duration::from_secs(1), "ACK of the data", |s| s.ack == end)?;
    let got = c.app_read_exact(12, Duration::from_secs(2))?;
    ensure!(got == b"old-ack data", "read {got:?}");
    lives(c)
}

pub(super) fn timestamps_echo(c: &mut Ctx) -> Result<(), String> {
    let sa = c.handshake(SynOpts::default())?;
    ensure!(c.conn.ts, "timestamps not negotiated");
    let sa_val = sa.opts.ts.map_or(0, |t| t.0);
    for (i, p) in [b"a", b"b"].iter().enumerate() {
        thread::sleep(ms(30));
        let val = c.peer.tsval();
        let (seq, ack, recent) = (c.conn.snd_nxt, c.conn.rcv_nxt, c.conn.ts_recent);
        c.send(ACK | PSH, seq, ack, &p[..], Some(opt::ts(val, recent)))?;
        c.conn.snd_nxt = seq.wrapping_add(1);
        let end = c.conn.snd_nxt;
        let s = c.expect(Duration::from_secs(1), "ACK", |s| s.ack == end)?;
        let (_, ecr) = s.opts.ts.ok_or(format!("ACK {i} has no timestamps: {s}"))?;
        ensure!(
            ecr == val,
            "ACK {i} echoes TSecr {ecr}, our TSval was {val}"
        );
    }
    c.app_read_exact(2, Duration::from_secs(1))?;
    let mut vals = Vec::new();
    for p in [b"x", b"y"] {
        thread::sleep(ms(100));
        // TS.Recent is the TSval of our latest segment (the last ACK we sent).
        let recent = c.conn.last_tsval;
        c.app_write(p)?;
        c.recv_data(1, Duration::from_secs(2))?;
        let s = c.data_segs.last().cloned().ok_or("no data segment")?;
        let (val, ecr) = s.opts.ts.ok_or(format!("data without timestamps: {s}"))?;
        ensure!(
            ecr == recent,
            "data segment echoes {ecr}, our latest TSval was {recent}"
        );
        vals.push(val);
    }
    ensure!(
        !seq_lt(vals[0], sa_val) && seq_lt(vals[0], vals[1]),
        "server TSval does not move forward: SYN-ACK {sa_val}, then {}, then {} (100 ms later)",
        vals[0],
        vals[1]
    );
    Ok(())
}
