//! A snapshot of a shard's counters, as a struct, as JSON (serde) and as Prometheus text.
use std::fmt::Write as _;

use serde::Serialize;
use smoltcp::socket::tcp::State;

use crate::{
    capture::CaptureStatus, device::DeviceCounters, sys::xsk::KernelXskStats, xsk::FrameCounts,
};

/// TCP sockets per state (armed listening sockets count as `listen`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TcpStateCounts {
    /// LISTEN (armed listening sockets).
    pub listen: u32,
    /// SYN-SENT.
    pub syn_sent: u32,
    /// SYN-RECEIVED.
    pub syn_received: u32,
    /// ESTABLISHED.
    pub established: u32,
    /// FIN-WAIT-1 and FIN-WAIT-2.
    pub fin_wait: u32,
    /// CLOSE-WAIT.
    pub close_wait: u32,
    /// CLOSING and LAST-ACK.
    pub closing: u32,
    /// TIME-WAIT.
    pub time_wait: u32,
    /// CLOSED (spare sockets, and sockets about to be freed).
    pub closed: u32,
}

impl TcpStateCounts {
    pub(crate) fn count(&mut self, s: State) {
        let slot = match s {
            State::Listen => &mut self.listen,
            State::SynSent => &mut self.syn_sent,
            State::SynReceived => &mut self.syn_received,
            State::Established => &mut self.established,
            State::FinWait1 | State::FinWait2 => &mut self.fin_wait,
            State::CloseWait => &mut self.close_wait,
            State::Closing | State::LastAck => &mut self.closing,
            State::TimeWait => &mut self.time_wait,
            State::Closed => &mut self.closed,
        };
        *slot += 1;
    }

    fn fields(&self) -> [(&'static str, u32); 9] {
        [
            ("listen", self.listen),
            ("syn_sent", self.syn_sent),
            ("syn_received", self.syn_received),
            ("established", self.established),
            ("fin_wait", self.fin_wait),
            ("close_wait", self.close_wait),
            ("closing", self.closing),
            ("time_wait", self.time_wait),
            ("closed", self.closed),
        ]
    }
}

/// Memory the shard holds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemoryStats {
    /// The UMEM (pinned, so RSS counts it whether or not it is in use).
    pub umem_bytes: u64,
    /// Socket buffers allocated (TCP receive + send, UDP receive + send).
    pub socket_buffer_bytes: u64,
}

/// Counters of the runtime (the device keeps the per-packet ones).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RuntimeCounters {
    /// Incoming connections established (nstat TcpPassiveOpens).
    #[serde(rename = "TcpPassiveOpens")]
    pub passive_opens: u64,
    /// Outgoing connections started (nstat TcpActiveOpens).
    #[serde(rename = "TcpActiveOpens")]
    pub active_opens: u64,
    /// Outgoing connections that failed (nstat TcpAttemptFails).
    #[serde(rename = "TcpAttemptFails")]
    pub attempt_fails: u64,
    /// Established connections reset (nstat TcpEstabResets).
    #[serde(rename = "TcpEstabResets")]
    pub estab_resets: u64,
    /// Connections reset for idleness.
    pub idle_timeouts: u64,
    /// Handshakes aborted for slowness.
    pub handshake_timeouts: u64,
    /// Connections the application had closed that did not finish closing within
    /// `orphan_timeout`, reset.
    pub orphan_timeouts: u64,
    /// Connections the application closed with data still unread, reset instead of closed
    /// (as Linux does; nstat `TCPAbortOnClose`).
    #[serde(rename = "TCPAbortOnClose")]
    pub abort_on_close: u64,
    /// SYNs refused because the accept queue was full.
    pub backlog_full: u64,
    /// SYNs refused because the shard was at its connection limit.
    pub conn_limit: u64,
    /// Half-open handshakes dropped to make room in a full accept queue (SYN flood).
    pub syn_evicted: u64,
    /// Handshakes the peer reset before they completed (SYN → SYN-ACK → RST, as a SYN port scan
    /// does): never queued for accept, the socket re-armed.
    #[serde(rename = "EmbryonicRsts")]
    pub embryonic_rsts: u64,
    /// Poll passes over the queue.
    pub polls: u64,
}

/// What the TCP engine's defences against blind and stale segments did (RFC 5961; our smoltcp
/// patches, `vendor/smoltcp/PATCHES.md`). Names follow Linux's nstat where it has one.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TcpDefenceCounters {
    /// Challenge ACKs sent.
    #[serde(rename = "TCPChallengeACK")]
    pub challenge_acks: u64,
    /// Challenge ACKs withheld by the per-connection rate limit (one per 500 ms).
    #[serde(rename = "TCPACKSkippedChallenge")]
    pub challenge_acks_skipped: u64,
    /// SYNs on an established connection, answered with a challenge ACK.
    #[serde(rename = "TCPSYNChallenge")]
    pub syn_challenges: u64,
    /// RSTs in the window but not at the expected sequence number, answered with a challenge ACK.
    #[serde(rename = "RstChallenges")]
    pub rst_challenges: u64,
    /// RSTs outside the window, ignored.
    #[serde(rename = "RstOutOfWindow")]
    pub rst_out_of_window: u64,
    /// Segments with an old ACK whose data was kept.
    #[serde(rename = "OldAcks")]
    pub old_acks: u64,
    /// TIME-WAIT connections ended by a new SYN for the same 4-tuple.
    #[serde(rename = "TWRecycled")]
    pub time_wait_recycled: u64,
    /// Segments dropped by PAWS: a timestamp older than the connection's latest (RFC 7323).
    #[serde(rename = "PAWSEstab")]
    pub paws_rejected: u64,
    /// Connections reset because data arrived after the application closed them.
    #[serde(rename = "TCPAbortOnData")]
    pub abort_on_data: u64,
}

impl From<smoltcp::socket::tcp::Counters> for TcpDefenceCounters {
    fn from(c: smoltcp::socket::tcp::Counters) -> Self {
        Self {
            challenge_acks: c.challenge_acks,
            challenge_acks_skipped: c.challenge_acks_skipped,
            syn_challenges: c.syn_challenges,
            rst_challenges: c.rst_challenges,
            rst_out_of_window: c.rst_out_of_window,
            old_acks: c.old_acks,
            time_wait_recycled: c.time_wait_recycled,
            paws_rejected: c.paws_rejected,
            abort_on_data: c.abort_on_data,
        }
    }
}

/// How the TCP engine recovered from loss. nstat's names.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TcpRecoveryCounters {
    /// Retransmission timeouts that fired.
    #[serde(rename = "TCPTimeouts")]
    pub timeouts: u64,
    /// Fast-recovery episodes (three duplicate ACKs; NewReno).
    #[serde(rename = "TCPRenoRecovery")]
    pub recoveries: u64,
    /// Segments retransmitted in fast recovery (partial-ACK ones included).
    #[serde(rename = "TCPFastRetrans")]
    pub fast_retransmits: u64,
    /// Zero-window probes sent.
    #[serde(rename = "TCPWinProbe")]
    pub window_probes: u64,
}

impl From<smoltcp::socket::tcp::Counters> for TcpRecoveryCounters {
    fn from(c: smoltcp::socket::tcp::Counters) -> Self {
        Self {
            timeouts: c.timeouts,
            recoveries: c.recoveries,
            fast_retransmits: c.fast_retransmits,
            window_probes: c.window_probes,
        }
    }
}

/// One TCP connection as the operator sees it (the stack's `ss -ti`: these flows never reach
/// the kernel's socket tables).
#[derive(Debug, Clone, Serialize)]
pub struct TcpConnInfo {
    /// The local address.
    pub local: std::net::SocketAddr,
    /// The peer's address.
    pub remote: std::net::SocketAddr,
    /// The TCP state.
    pub state: String,
    /// Smoothed round-trip time, µs (`None` before the first sample; ms resolution).
    pub srtt_us: Option<u64>,
    /// Round-trip time variation, µs.
    pub rttvar_us: Option<u64>,
    /// The current retransmission timeout, ms.
    pub rto_ms: u64,
    /// Segments retransmitted on this connection.
    pub retransmits: u32,
    /// Congestion window, bytes (`None`: no congestion control).
    pub cwnd: Option<usize>,
    /// The peer's window, bytes.
    pub peer_window: usize,
    /// The peer's maximum segment size.
    pub peer_mss: usize,
    /// Bytes sent and not yet acknowledged, or not yet sent.
    pub send_queue: usize,
    /// Bytes received and not yet read by the application.
    pub recv_queue: usize,
}

/// Everything a shard counts.
#[derive(Debug, Clone, Serialize)]
pub struct StackStats {
    /// The interface.
    pub iface: String,
    /// The queue.
    pub queue: u32,
    /// The serving process.
    pub pid: u32,
    /// Per-packet counters of the device layer.
    pub device: DeviceCounters,
    /// Connection counters of the runtime.
    pub runtime: RuntimeCounters,
    /// What the TCP engine's defences did.
    pub tcp_defence: TcpDefenceCounters,
    /// How the TCP engine recovered from loss.
    pub tcp_recovery: TcpRecoveryCounters,
    /// UMEM frames by owner, and the UMEM size in frames.
    pub frames: FrameCounts,
    /// UMEM size in frames.
    pub frames_total: u32,
    /// The kernel's XDP_STATISTICS for the socket.
    pub kernel: KernelXskStats,
    /// Frames not sent because the tx ring was full.
    pub tx_ring_full: u64,
    /// TCP sockets by state.
    pub tcp_states: TcpStateCounts,
    /// Established or close-wait (nstat's CurrEstab).
    #[serde(rename = "TcpCurrEstab")]
    pub curr_estab: u32,
    /// Open TCP connections (handshaking, queued for accept, or accepted).
    pub connections: usize,
    /// Memory the shard holds.
    pub memory: MemoryStats,
    /// The running (or last) capture.
    pub capture: CaptureStatus,
    /// What the fault injector did, when one is configured (tests).
    pub faults: Option<crate::FaultCounters>,
}

/// One metric of the Prometheus exposition.
struct Metric {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    value: u64,
}

impl StackStats {
    fn metrics(&self) -> Vec<Metric> {
        let d = &self.device;
        let r = &self.runtime;
        let k = &self.kernel;
        let c = |name, help, value| Metric {
            name,
            help,
            kind: "counter",
            value,
        };
        let g = |name, help, value| Metric {
            name,
            help,
            kind: "gauge",
            value,
        };
        vec![
            c(
                "xsk_rx_packets_total",
                "Frames received from the AF_XDP socket.",
                d.rx_packets,
            ),
            c(
                "xsk_rx_bytes_total",
                "Bytes received from the AF_XDP socket.",
                d.rx_bytes,
            ),
            c(
                "xsk_tx_packets_total",
                "Frames sent through the AF_XDP socket.",
                d.tx_packets,
            ),
            c(
                "xsk_tx_bytes_total",
                "Bytes sent through the AF_XDP socket.",
                d.tx_bytes,
            ),
            c(
                "xsk_rx_drop_not_ipv4_total",
                "Received frames dropped: not IPv4 over Ethernet.",
                d.rx_not_ipv4,
            ),
            c(
                "xsk_rx_drop_malformed_total",
                "Received packets dropped: malformed headers.",
                d.rx_malformed,
            ),
            c(
                "xsk_rx_drop_bad_checksum_total",
                "Received packets dropped: bad IPv4/TCP/UDP checksum.",
                d.rx_bad_checksum,
            ),
            c(
                "xsk_rx_drop_fragment_total",
                "Received packets dropped: IPv4 fragments.",
                d.rx_fragments,
            ),
            c(
                "xsk_rx_drop_not_ours_total",
                "Received packets dropped: destination not the stack's address.",
                d.rx_not_ours,
            ),
            c(
                "xsk_rx_drop_martian_total",
                "Received packets dropped: impossible source address.",
                d.rx_martian,
            ),
            c(
                "xsk_tx_drop_no_frame_total",
                "Packets not sent: no free UMEM frame.",
                d.tx_no_frame,
            ),
            c(
                "xsk_tx_drop_no_neighbour_total",
                "Packets not sent: next hop not resolved yet.",
                d.tx_no_neighbour,
            ),
            c(
                "xsk_tx_drop_no_route_total",
                "Packets not sent: no route out of this interface.",
                d.tx_no_route,
            ),
            c(
                "xsk_tx_ring_full_total",
                "Packets not sent: tx ring full.",
                self.tx_ring_full,
            ),
            c(
                "xsk_kernel_rx_dropped_total",
                "XDP_STATISTICS rx_dropped.",
                k.rx_dropped,
            ),
            c(
                "xsk_kernel_rx_ring_full_total",
                "XDP_STATISTICS rx_ring_full.",
                k.rx_ring_full,
            ),
            c(
                "xsk_kernel_rx_fill_ring_empty_total",
                "XDP_STATISTICS rx_fill_ring_empty_descs.",
                k.rx_fill_ring_empty,
            ),
            c(
                "xsk_kernel_rx_invalid_descs_total",
                "XDP_STATISTICS rx_invalid_descs.",
                k.rx_invalid_descs,
            ),
            c(
                "xsk_kernel_tx_invalid_descs_total",
                "XDP_STATISTICS tx_invalid_descs.",
                k.tx_invalid_descs,
            ),
            c(
                "xsk_tcp_in_segs_total",
                "TCP segments received (nstat TcpInSegs).",
                d.tcp_in_segs,
            ),
            c(
                "xsk_tcp_out_segs_total",
                "TCP segments sent (nstat TcpOutSegs).",
                d.tcp_out_segs,
            ),
            c(
                "xsk_tcp_retrans_segs_total",
                "TCP segments retransmitted (nstat TcpRetransSegs).",
                d.tcp_retrans_segs,
            ),
            c(
                "xsk_tcp_out_rsts_total",
                "TCP resets sent (nstat TcpOutRsts).",
                d.tcp_out_rsts,
            ),
            c(
                "xsk_tcp_in_errs_total",
                "TCP segments received with errors (nstat TcpInErrs).",
                d.tcp_in_errs,
            ),
            c(
                "xsk_tcp_active_opens_total",
                "Outgoing connections started (nstat TcpActiveOpens).",
                r.active_opens,
            ),
            c(
                "xsk_tcp_passive_opens_total",
                "Incoming connections established (nstat TcpPassiveOpens).",
                r.passive_opens,
            ),
            c(
                "xsk_tcp_attempt_fails_total",
                "Outgoing connections that failed (nstat TcpAttemptFails).",
                r.attempt_fails,
            ),
            c(
                "xsk_tcp_estab_resets_total",
                "Established connections reset (nstat TcpEstabResets).",
                r.estab_resets,
            ),
            c(
                "xsk_tcp_backlog_full_total",
                "SYNs refused: accept queue full.",
                r.backlog_full,
            ),
            c(
                "xsk_tcp_conn_limit_total",
                "SYNs refused: connection limit reached.",
                r.conn_limit,
            ),
            c(
                "xsk_tcp_syn_evicted_total",
                "Half-open handshakes dropped from a full accept queue (SYN flood).",
                r.syn_evicted,
            ),
            c(
                "xsk_tcp_embryonic_rsts_total",
                "Handshakes reset by the peer before they completed (nstat EmbryonicRsts).",
                r.embryonic_rsts,
            ),
            c(
                "xsk_tcp_challenge_acks_total",
                "Challenge ACKs sent (RFC 5961; nstat TCPChallengeACK).",
                self.tcp_defence.challenge_acks,
            ),
            c(
                "xsk_tcp_challenge_acks_skipped_total",
                "Challenge ACKs withheld by the per-connection rate limit (nstat TCPACKSkippedChallenge).",
                self.tcp_defence.challenge_acks_skipped,
            ),
            c(
                "xsk_tcp_syn_challenges_total",
                "SYNs on established connections, answered with a challenge ACK (nstat TCPSYNChallenge).",
                self.tcp_defence.syn_challenges,
            ),
            c(
                "xsk_tcp_rst_challenges_total",
                "In-window RSTs not at the expected sequence number, answered with a challenge ACK.",
                self.tcp_defence.rst_challenges,
            ),
            c(
                "xsk_tcp_rst_out_of_window_total",
                "RSTs outside the receive window, ignored.",
                self.tcp_defence.rst_out_of_window,
            ),
            c(
                "xsk_tcp_old_acks_total",
                "Segments with an ACK below SND.UNA whose data was kept.",
                self.tcp_defence.old_acks,
            ),
            c(
                "xsk_tcp_time_wait_recycled_total",
                "TIME-WAIT connections ended by a new SYN for the same 4-tuple.",
                self.tcp_defence.time_wait_recycled,
            ),
            c(
                "xsk_tcp_timeouts_total",
                "TCP retransmission timeouts that fired (nstat TCPTimeouts).",
                self.tcp_recovery.timeouts,
            ),
            c(
                "xsk_tcp_recoveries_total",
                "TCP fast-recovery episodes (nstat TCPRenoRecovery).",
                self.tcp_recovery.recoveries,
            ),
            c(
                "xsk_tcp_fast_retransmits_total",
                "TCP segments retransmitted in fast recovery (nstat TCPFastRetrans).",
                self.tcp_recovery.fast_retransmits,
            ),
            c(
                "xsk_tcp_window_probes_total",
                "TCP zero-window probes sent (nstat TCPWinProbe).",
                self.tcp_recovery.window_probes,
            ),
            c(
                "xsk_tcp_paws_rejected_total",
                "Segments dropped by PAWS: timestamp older than the connection's latest (nstat PAWSEstab).",
                self.tcp_defence.paws_rejected,
            ),
            c(
                "xsk_tcp_orphan_timeouts_total",
                "Closed connections that did not finish closing within orphan_timeout, reset.",
                r.orphan_timeouts,
            ),
            c(
                "xsk_tcp_abort_on_close_total",
                "Connections closed with unread data, reset (nstat TCPAbortOnClose).",
                r.abort_on_close,
            ),
            c(
                "xsk_tcp_abort_on_data_total",
                "Connections reset because data arrived after the application closed them (nstat TCPAbortOnData).",
                self.tcp_defence.abort_on_data,
            ),
            c(
                "xsk_tcp_idle_timeouts_total",
                "Connections reset for idleness.",
                r.idle_timeouts,
            ),
            c(
                "xsk_tcp_handshake_timeouts_total",
                "Handshakes aborted for slowness.",
                r.handshake_timeouts,
            ),
            c(
                "xsk_udp_in_datagrams_total",
                "UDP datagrams delivered (nstat UdpInDatagrams).",
                d.udp_in_datagrams,
            ),
            c(
                "xsk_udp_out_datagrams_total",
                "UDP datagrams sent (nstat UdpOutDatagrams).",
                d.udp_out_datagrams,
            ),
            c(
                "xsk_udp_no_ports_total",
                "UDP datagrams to unbound ports (nstat UdpNoPorts).",
                d.udp_no_ports,
            ),
            c(
                "xsk_udp_in_errors_total",
                "UDP datagrams received with errors (nstat UdpInErrors).",
                d.udp_in_errors,
            ),
            c(
                "xsk_udp_rcvbuf_errors_total",
                "UDP datagrams dropped: receive buffer full (nstat UdpRcvbufErrors).",
                d.udp_rcvbuf_errors,
            ),
            g(
                "xsk_tcp_curr_estab",
                "TCP connections established or in close-wait (nstat TcpCurrEstab).",
                self.curr_estab as u64,
            ),
            g(
                "xsk_tcp_connections",
                "Open TCP connections, including those waiting for accept().",
                self.connections as u64,
            ),
            g(
                "xsk_umem_bytes",
                "UMEM size in bytes (pinned memory).",
                self.memory.umem_bytes,
            ),
            g(
                "xsk_socket_buffer_bytes",
                "Socket buffer memory in bytes.",
                self.memory.socket_buffer_bytes,
            ),
            c(
                "xsk_capture_written_total",
                "Frames written to the capture file.",
                self.capture.written,
            ),
            c(
                "xsk_capture_dropped_total",
                "Frames the capture dropped (writer behind).",
                self.capture.dropped,
            ),
        ]
    }

    /// Prometheus text exposition (format 0.0.4), labelled with the interface and queue.
    pub fn to_prometheus(&self) -> String {
        let labels = format!("iface=\"{}\",queue=\"{}\"", escape(&self.iface), self.queue);
        let mut out = String::with_capacity(8192);
        for m in self.metrics() {
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} {}\n{}{{{labels}}} {}",
                m.name, m.help, m.name, m.kind, m.name, m.value
            );
        }
        let _ = writeln!(
            out,
            "# HELP xsk_tcp_sockets TCP sockets by state.\n# TYPE xsk_tcp_sockets gauge"
        );
        for (state, n) in self.tcp_states.fields() {
            let _ = writeln!(out, "xsk_tcp_sockets{{{labels},state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP xsk_umem_frames UMEM frames by owner.\n# TYPE xsk_umem_frames gauge"
        );
        let f = &self.frames;
        for (owner, n) in [
            ("free", f.free),
            ("kernel", f.kernel),
            ("stack", f.stack),
            ("tx", f.tx),
        ] {
            let _ = writeln!(out, "xsk_umem_frames{{{labels},owner=\"{owner}\"}} {n}");
        }
        out
    }

    /// `name value` lines like nstat/ethtool -S, for `xdp-loader stats`.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        for m in self.metrics() {
            if m.value != 0 || m.kind == "gauge" {
                let _ = writeln!(
                    out,
                    "  {:<40} {:>14}",
                    m.name.trim_start_matches("xsk_").trim_end_matches("_total"),
                    m.value
                );
            }
        }
        let states: Vec<String> = self
            .tcp_states
            .fields()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{s}={n}"))
            .collect();
        let _ = writeln!(out, "  {:<40} {}", "tcp_states", states.join(" "));
        let f = &self.frames;
        let _ = writeln!(
            out,
            "  {:<40} free={} kernel={} stack={} tx={} (of {})",
            "umem_frames", f.free, f.kernel, f.stack, f.tx, self.frames_total
        );
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
