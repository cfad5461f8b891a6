//! TCP conformance, packetdrill style: hand-made segments from a raw peer in the namespace,
//! every case checked against the Linux kernel first (the reference), then against the stack.
//! See `testbed::conformance` for the harness. Root only (skips loudly otherwise, fails under
//! CI=true). Each family builds its own testbed, so families run in parallel.
//!
//! Where Linux differs from a plain reading of the RFC, the case follows Linux and says so.

use std::{
    io::ErrorKind,
    thread,
    time::{Duration, Instant},
};

use testbed::{
    conformance::{
        opt, run_family, Case, Ctx, Expect, Out, Segment, SynOpts, ACK, FIN, PSH, RST, SYN,
    },
    ensure, require_root,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `a < b` in sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The connection still works: an echo round through the server application.
fn lives(c: &mut Ctx) -> Result<(), String> {
    c.echo("alive")
        .map_err(|e| format!("connection no longer works: {e}"))
}

/// The server application's next read gets nothing within `d`.
fn app_reads_nothing(c: &mut Ctx, d: Duration) -> Result<(), String> {
    match c.app_read(d) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
        Ok(v) => Err(format!("server application read {} bytes: {v:?}", v.len())),
        Err(e) => Err(format!("server read failed: {e}")),
    }
}

/// An ACK of exactly our SND.NXT from the server's SND.NXT.
fn exact_ack(c: &Ctx) -> impl Fn(&Segment) -> bool {
    let (seq, ack) = (c.server_nxt(), c.conn.snd_nxt);
    move |s: &Segment| s.is_pure_ack() && s.seq == seq && s.ack == ack
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Handshake and options.

fn peer_kernel_stays_silent(c: &mut Ctx) -> Result<(), String> {
    // A SYN-ACK reaches the raw peer; if the peer kernel owned the address it would answer it
    // with a RST (no socket), which the harness would see leaving the peer.
    c.syn_only(&SynOpts::default())?;
    let before = c.peer.foreign_rsts.get();
    let _ = c.collect(ms(300));
    ensure!(
        c.peer.foreign_rsts.get() == before,
        "the peer kernel answered for {} with a RST",
        c.peer.ip
    );
    // Complete the connection (a half-open one would leave the listener to a later case).
    c.send_ack()?;
    c.accept()
}

fn handshake_options(c: &mut Ctx) -> Result<(), String> {
    let t_before = c.peer.tsval();
    let sa = c.handshake(SynOpts {
        wscale: Some(7),
        ..SynOpts::default()
    })?;
    let t_after = c.peer.tsval();
    ensure!(
        sa.flags & !PSH == SYN | ACK,
        "SYN-ACK has flags {:#x}",
        sa.flags
    );
    ensure!(sa.payload.is_empty(), "SYN-ACK carries data");
    ensure!(sa.opts.mss.is_some(), "no MSS in the SYN-ACK: {sa}");
    ensure!(sa.opts.sack_ok, "no SACK-permitted in the SYN-ACK: {sa}");
    ensure!(
        sa.opts.wscale.is_some(),
        "no window scale in the SYN-ACK: {sa}"
    );
    let Some((val, ecr)) = sa.opts.ts else {
        return Err(format!("no timestamps in the SYN-ACK: {sa}"));
    };
    // (TSval 0 is legal: the stack's clock starts at 0 with its first connection.)
    let _ = val;
    ensure!(
        (t_before..=t_after).contains(&ecr),
        "SYN-ACK TSecr {ecr} does not echo our TSval ({t_before}..={t_after})"
    );
    lives(c)
}

fn no_options_no_extensions(c: &mut Ctx) -> Result<(), String> {
    let sa = c.handshake(SynOpts {
        mss: None,
        sack: false,
        ts: false,
        wscale: None,
        window: 65535,
    })?;
    ensure!(
        sa.opts.wscale.is_none() && sa.opts.ts.is_none() && !sa.opts.sack_ok,
        "SYN-ACK offers extensions the SYN did not: {sa}"
    );
    lives(c)
}

fn mss_respected(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts {
        mss: Some(536),
        ..SynOpts::default()
    })?;
    let data = pattern(4000, 1);
    c.app_write(&data)?;
    let got = c.recv_data(data.len(), Duration::from_secs(3))?;
    ensure!(got == data, "data differs");
    // Linux counts the timestamp option against the MSS (524-byte payloads here); either way
    // no payload may exceed the MSS the peer announced.
    let max = c
        .data_segs
        .iter()
        .map(|s| s.payload.len())
        .max()
        .unwrap_or(0);
    ensure!(max <= 536, "a data segment of {max} bytes exceeds MSS 536");
    Ok(())
}

fn synack_retransmitted(c: &mut Ctx) -> Result<(), String> {
    // The handshake's final ACK is lost: the SYN-ACK is retransmitted, same ISN, after the
    // initial RTO (1 s on Linux, RFC 6298 2.1), then the late ACK completes the connection.
    let sa = c.syn_only(&SynOpts::default())?;
    let again = c.expect(Duration::from_secs(4), "SYN-ACK retransmission", |s| {
        s.has(SYN | ACK)
    })?;
    ensure!(
        again.seq == sa.seq,
        "retransmitted SYN-ACK has a new ISN: {again}"
    );
    let dt = again.at - sa.at;
    ensure!(
        dt >= ms(500) && dt <= Duration::from_secs(3),
        "SYN-ACK retransmitted after {dt:?} (initial RTO 1 s)"
    );
    c.send_ack()?;
    c.accept()?;
    lives(c)
}

/// Data on a SYN: Linux (no TCP Fast Open cookie) and the stack both acknowledge only the SYN
/// and drop the data; RFC 9293 3.10.7.2 would also allow queueing it (SEG.SEQ+1+len acked).
/// Either way the application reads the data once the peer resends it.
fn syn_with_data(c: &mut Ctx) -> Result<(), String> {
    const ISS: u32 = 5000;
    c.conn.sport = c.fresh_port();
    c.conn.closed = true;
    c.send(SYN, ISS, 0, b"early", Some(opt::mss(1460)))?;
    let s = c.expect(Duration::from_secs(2), "SYN-ACK", |s| {
        s.has(SYN) || s.has(RST)
    })?;
    ensure!(s.has(SYN | ACK), "want a SYN-ACK, got {s}");
    ensure!(
        s.ack == ISS + 1 || s.ack == ISS + 6,
        "SYN-ACK acks {} (want ISS+1, or ISS+6 with the data)",
        s.ack
    );
    c.conn.closed = false;
    c.conn.snd_nxt = s.ack;
    c.conn.rcv_nxt = s.seq.wrapping_add(1);
    c.conn.window = 65535;
    c.send_ack()?;
    c.accept()?;
    if s.ack == ISS + 1 {
        c.send_data(b"early")?;
    }
    let got = c.app_read_exact(5, Duration::from_secs(1))?;
    ensure!(got == b"early", "read {got:?}");
    app_reads_nothing(c, ms(200))
}

fn closed_port_rst(c: &mut Ctx) -> Result<(), String> {
    // No listener on port+100 (on the stack's host that port is not steered: the kernel answers
    // for the host either way).
    c.port += 100;
    let r = closed_port_answer(c);
    c.port -= 100;
    r
}

fn closed_port_answer(c: &mut Ctx) -> Result<(), String> {
    c.conn.sport = c.fresh_port();
    c.conn.closed = true;
    c.send(SYN, 4242, 0, &[], Some(opt::mss(1460)))?;
    let s = c.expect(Duration::from_secs(2), "answer", |s| {
        s.has(RST) || s.has(SYN)
    })?;
    ensure!(s.flags & !PSH == RST | ACK, "want RST/ACK, got {s}");
    ensure!(
        s.ack == 4243 && s.seq == 0,
        "want seq 0 ack 4243 (SEG.SEQ+1), got {s}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// RST processing (RFC 5961 §3).

fn rst_out_of_window_ignored(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    let seq = c.conn.snd_nxt.wrapping_add(0x4000_0000);
    let ack = c.conn.rcv_nxt;
    c.send(RST | ACK, seq, ack, &[], None)?;
    c.expect_none(ms(300), "answer to an out-of-window RST", |_| true)?;
    lives(c)
}

fn rst_in_window_challenge_ack(c: &mut Ctx) -> Result<(), String> {
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

fn rst_exact_resets(c: &mut Ctx) -> Result<(), String> {
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

fn server_abort_sends_rst(c: &mut Ctx) -> Result<(), String> {
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

// ---------------------------------------------------------------------------------------------
// SYN on a synchronized connection (RFC 5961 §4), SYN-RECEIVED reset.

/// Linux rate-limits challenge ACKs for SYNs per socket (`tcp_invalid_ratelimit`, 500 ms), so
/// each case sends one SYN on its own connection.
fn syn_challenge(c: &mut Ctx, seq: u32) -> Result<(), String> {
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

fn syn_in_window_on_established(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    lives(c)?;
    let seq = c.conn.snd_nxt.wrapping_add(100);
    syn_challenge(c, seq)
}

fn syn_old_isn_on_established(c: &mut Ctx) -> Result<(), String> {
    // A retransmission of the original SYN (out of window now).
    c.handshake(SynOpts::default())?;
    lives(c)?;
    let iss = c.conn.iss;
    syn_challenge(c, iss)
}

fn bad_ack_in_syn_received_rst(c: &mut Ctx) -> Result<(), String> {
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

fn syn_rst_then_connect(c: &mut Ctx) -> Result<(), String> {
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

// ---------------------------------------------------------------------------------------------
// Data: reassembly, duplicates, acceptable ACKs.

fn ooo_reassembly_sack(c: &mut Ctx) -> Result<(), String> {
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

fn ooo_without_sack(c: &mut Ctx) -> Result<(), String> {
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

fn old_duplicate_data(c: &mut Ctx) -> Result<(), String> {
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

fn dsack_on_duplicate(c: &mut Ctx) -> Result<(), String> {
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

fn fin_out_of_order(c: &mut Ctx) -> Result<(), String> {
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

fn paws_old_timestamp_dropped(c: &mut Ctx) -> Result<(), String> {
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

fn overlapping_retransmission_trimmed(c: &mut Ctx) -> Result<(), String> {
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

fn data_beyond_window_acked(c: &mut Ctx) -> Result<(), String> {
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

fn keepalive_probe_answered(c: &mut Ctx) -> Result<(), String> {
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
fn ack_for_unsent_data(c: &mut Ctx) -> Result<(), String> {
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

fn old_ack_data_accepted(c: &mut Ctx) -> Result<(), String> {
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

fn timestamps_echo(c: &mut Ctx) -> Result<(), String> {
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

// ---------------------------------------------------------------------------------------------
// Windows: scaling and zero-window probes.

/// Linux sends only full-MSS segments into the small window (3 x 524 of 2048 bytes, then
/// probes); the stack fills it exactly. Both stay within the scaled window.
fn window_scale_respected(c: &mut Ctx) -> Result<(), String> {
    // Raw window 16 << 7 = 2048 bytes (the SYN's window is never scaled; the ACK's is).
    c.handshake(SynOpts {
        mss: Some(536),
        wscale: Some(7),
        window: 16,
        ..SynOpts::default()
    })?;
    let data = pattern(6000, 3);
    c.app_write(&data)?;
    let segs = c.collect(ms(500));
    let start = c.conn.rcv_nxt;
    let end = segs
        .iter()
        .filter(|s| !s.payload.is_empty())
        .map(|s| {
            s.seq
                .wrapping_add(s.payload.len() as u32)
                .wrapping_sub(start)
        })
        .max()
        .unwrap_or(0);
    ensure!(end > 0, "no data sent into a 2048-byte window");
    ensure!(
        end <= 2048,
        "sent {end} bytes into a 2048-byte (scaled) window"
    );
    for s in segs.into_iter().rev() {
        c.unread(s);
    }
    c.conn.window = 512; // 64 KiB
    c.send_ack()?;
    let got = c.recv_data(data.len(), Duration::from_secs(3))?;
    ensure!(got == data, "data differs");
    Ok(())
}

/// Linux probes with a bare ACK at SND.UNA-1 (no data) about one RTO (~200 ms) after the write,
/// then backs off (~400 ms); RFC 9293 also allows a probe carrying one byte of new data, so a
/// probe is any segment with at most one byte.
fn zero_window_probe(c: &mut Ctx) -> Result<(), String> {
    c.handshake(SynOpts::default())?;
    c.conn.window = 0;
    c.send_ack()?;
    thread::sleep(ms(20));
    let data = pattern(1000, 5);
    let t_write = Instant::now();
    c.app_write(&data)?;
    let mut probes: Vec<Instant> = Vec::new();
    let deadline = t_write + Duration::from_secs(5);
    while probes.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = c
            .expect(left, "zero-window probe", |_| true)
            .map_err(|e| format!("{e} ({} probes seen)", probes.len()))?;
        ensure!(!s.has(RST), "RST while probing: {s}");
        ensure!(
            s.payload.len() <= 1,
            "{} bytes sent into a zero window: {s}",
            s.payload.len()
        );
        probes.push(s.at);
        c.send_ack()?; // the window is still zero
    }
    let first = probes[0] - t_write;
    ensure!(
        first >= ms(100),
        "first probe {first:?} after the write: not after an RTO"
    );
    ensure!(
        first <= Duration::from_secs(3),
        "first probe only after {first:?}"
    );
    c.conn.window = 65535;
    c.send_ack()?;
    let got = c.recv_data(data.len(), Duration::from_secs(3))?;
    ensure!(got == data, "data differs");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Closing.

fn server_active_close_time_wait(c: &mut Ctx) -> Result<(), String> {
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

fn close_with_unread_data_resets(c: &mut Ctx) -> Result<(), String> {
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

fn data_after_close_resets(c: &mut Ctx) -> Result<(), String> {
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

fn peer_active_close(c: &mut Ctx) -> Result<(), String> {
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

fn simultaneous_close(c: &mut Ctx) -> Result<(), String> {
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

fn fin_with_data(c: &mut Ctx) -> Result<(), String> {
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

// ---------------------------------------------------------------------------------------------
// Retransmission.

fn rto_backoff(c: &mut Ctx) -> Result<(), String> {
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
fn five_segments(c: &mut Ctx, sack: bool) -> Result<Vec<u32>, String> {
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

fn fast_retransmit(c: &mut Ctx) -> Result<(), String> {
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

fn sack_recovery(c: &mut Ctx) -> Result<(), String> {
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

// ---------------------------------------------------------------------------------------------
// A port scan next to a live connection.

fn port_scan_while_echo(c: &mut Ctx) -> Result<(), String> {
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

// ---------------------------------------------------------------------------------------------
// The families.

const SACK_WHY: &str =
    "smoltcp ignores received SACK blocks: the second hole waits for the RTO; later issue";

fn family(name: &str, cases: &[Case]) {
    if !require_root(&format!("conformance_{name}")) {
        return;
    }
    run_family(name, cases);
}

macro_rules! case {
    ($f:ident, $rfc:expr) => {
        Case {
            name: stringify!($f),
            rfc: $rfc,
            body: $f,
            stack: Expect::Pass,
        }
    };
    ($f:ident, $rfc:expr, xfail $why:expr) => {
        Case {
            name: stringify!($f),
            rfc: $rfc,
            body: $f,
            stack: Expect::ExpectedFail { why: $why },
        }
    };
}

#[test]
fn conformance_handshake() {
    family(
        "handshake",
        &[
            case!(peer_kernel_stays_silent, "harness"),
            case!(handshake_options, "9293 3.5; 7323 2.2,3.2; 2018 2"),
            case!(no_options_no_extensions, "7323 2.2,3.2; 2018 2"),
            case!(mss_respected, "9293 3.7.1; 6691"),
            case!(synack_retransmitted, "9293 3.8.1; 6298 2.1, 5"),
            case!(syn_with_data, "9293 3.10.7.2"),
            case!(closed_port_rst, "9293 3.10.7.1"),
        ],
    );
}

#[test]
fn conformance_rst() {
    family(
        "rst",
        &[
            case!(rst_out_of_window_ignored, "9293 3.10.7.4; 5961 3.2"),
            case!(rst_in_window_challenge_ack, "5961 3.2"),
            case!(rst_exact_resets, "9293 3.10.7.4; 5961 3.2"),
            case!(server_abort_sends_rst, "9293 3.10.4 (ABORT)"),
        ],
    );
}

#[test]
fn conformance_syn() {
    family(
        "syn",
        &[
            case!(syn_rst_then_connect, "9293 3.10.7.3, 3.5"),
            case!(syn_in_window_on_established, "5961 4.2"),
            case!(syn_old_isn_on_established, "5961 4.2; 9293 3.10.7.4"),
            case!(bad_ack_in_syn_received_rst, "9293 3.10.7.4 (SYN-RECEIVED)"),
        ],
    );
}

#[test]
fn conformance_data() {
    family(
        "data",
        &[
            case!(ooo_reassembly_sack, "9293 3.10.7.4; 2018 4"),
            case!(ooo_without_sack, "9293 3.10.7.4; 2018 3"),
            case!(old_duplicate_data, "9293 3.10.7.4"),
            case!(dsack_on_duplicate, "2883 4"),
            case!(fin_out_of_order, "9293 3.10.7.4 (eighth step); 5681 4.2"),
            case!(overlapping_retransmission_trimmed, "9293 3.10.7.4 (trim)"),
            case!(data_beyond_window_acked, "9293 3.10.7.4 (first check)"),
            case!(keepalive_probe_answered, "1122 4.2.3.6; 9293 3.8.4"),
            case!(ack_for_unsent_data, "9293 3.10.7.4; 5961 5.2"),
            case!(old_ack_data_accepted, "9293 3.10.7.4; 5961 5.2"),
            case!(timestamps_echo, "7323 3.2, 4.3"),
            case!(paws_old_timestamp_dropped, "7323 5.3"),
        ],
    );
}

#[test]
fn conformance_window() {
    family(
        "window",
        &[
            case!(window_scale_respected, "7323 2.3"),
            case!(zero_window_probe, "9293 3.8.6.1; 1122 4.2.2.17"),
        ],
    );
}

#[test]
fn conformance_close() {
    family(
        "close",
        &[
            case!(server_active_close_time_wait, "9293 3.6, 3.10.7.4"),
            case!(peer_active_close, "9293 3.6"),
            case!(close_with_unread_data_resets, "9293 3.6; 1122 4.2.2.13"),
            case!(data_after_close_resets, "9293 3.6; 1122 4.2.2.13"),
            case!(fin_with_data, "9293 3.10.7.4"),
            case!(simultaneous_close, "9293 3.6 (CLOSING)"),
        ],
    );
}

#[test]
fn conformance_retransmission() {
    family(
        "retransmission",
        &[
            case!(rto_backoff, "6298 2, 5.5"),
            case!(fast_retransmit, "5681 3.2"),
            case!(sack_recovery, "6675 5; 2018", xfail SACK_WHY),
        ],
    );
}

#[test]
fn conformance_scan() {
    family("scan", &[case!(port_scan_while_echo, "9293 3.10.7.1")]);
}
