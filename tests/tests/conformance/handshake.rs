//! Handshake and options.

use super::*;

pub(super) fn peer_kernel_stays_silent(c: &mut Ctx) -> Result<(), String> {
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

pub(super) fn handshake_options(c: &mut Ctx) -> Result<(), String> {
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

pub(super) fn no_options_no_extensions(c: &mut Ctx) -> Result<(), String> {
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

pub(super) fn mss_respected(c: &mut Ctx) -> Result<(), String> {
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

pub(super) fn synack_retransmitted(c: &mut Ctx) -> Result<(), String> {
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
pub(super) fn syn_with_data(c: &mut Ctx) -> Result<(), String> {
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

pub(super) fn closed_port_rst(c: &mut Ctx) -> Result<(), String> {
    // No listener on port+100 (on the stack's host that port is not steered: the kernel answers
    // for the host either way).
    c.port += 100;
    let r = closed_port_answer(c);
    c.port -= 100;
    r
}

pub(super) fn closed_port_answer(c: &mut Ctx) -> Result<(), String> {
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
