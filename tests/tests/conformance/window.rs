//! Windows: scaling and zero-window probes.

use super::*;

/// Linux sends only full-MSS segments into the small window (3 x 524 of 2048 bytes, then
/// probes); the stack fills it exactly. Both stay within the scaled window.
pub(super) fn window_scale_respected(c: &mut Ctx) -> Result<(), String> {
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
pub(super) fn zero_window_probe(c: &mut Ctx) -> Result<(), String> {
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
