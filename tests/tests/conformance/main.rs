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

mod close;
mod data;
mod handshake;
mod retransmission;
mod rst;
mod scan;
mod syn;
mod window;
use close::*;
use data::*;
use handshake::*;
use retransmission::*;
use rst::*;
use scan::*;
use syn::*;
use window::*;

// ---------------------------------------------------------------------------------------------
// The families.

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
            case!(sack_recovery, "6675 5; 6582 3.2; 2018"),
        ],
    );
}

#[test]
fn conformance_scan() {
    family("scan", &[case!(port_scan_while_echo, "9293 3.10.7.1")]);
}
