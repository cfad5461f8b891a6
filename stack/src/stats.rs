//! A snapshot of a shard's counters.
use smoltcp::socket::tcp::State;

use crate::{
    device::DeviceCounters, shard::RuntimeCounters, sys::xsk::KernelXskStats, xsk::FrameCounts,
};

/// TCP sockets per state (armed listening sockets count as `listen`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStateCounts {
    pub listen: u32,
    pub syn_sent: u32,
    pub syn_received: u32,
    pub established: u32,
    pub fin_wait: u32,
    pub close_wait: u32,
    pub closing: u32,
    pub time_wait: u32,
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
}

/// Everything a shard counts.
#[derive(Debug, Clone, Copy)]
pub struct StackStats {
    pub device: DeviceCounters,
    pub runtime: RuntimeCounters,
    /// UMEM frames by owner, and the UMEM size in frames.
    pub frames: FrameCounts,
    pub frames_total: u32,
    /// The kernel's XDP_STATISTICS for the socket.
    pub kernel: KernelXskStats,
    pub tx_ring_full: u64,
    pub neighbour_misses: u64,
    pub tcp_states: TcpStateCounts,
    /// Open TCP connections (handshaking, queued for accept, or accepted).
    pub connections: usize,
}
