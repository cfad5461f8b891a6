//! Everything a shard can be configured with (set through `StackBuilder`, in `stack.rs`).
use std::{path::PathBuf, time::Duration};

/// TCP congestion control for new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// CUBIC (RFC 9438), as Linux by default.
    #[default]
    Cubic,
    /// Reno (RFC 5681): more conservative.
    Reno,
    /// None: the sender is limited only by the peer's window. Only for links you own end to
    /// end; on a shared path it overruns queues and hurts everyone's traffic.
    None,
}

/// How the AF_XDP socket binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// Zero-copy if the driver supports it, else copy.
    #[default]
    Auto,
    /// Copy mode: the kernel copies frames into the UMEM (works everywhere, veth included).
    Copy,
    /// Zero-copy: the NIC writes into the UMEM (needs driver support).
    ZeroCopy,
}

/// Configuration of one shard (one queue). Built with [`crate::StackBuilder`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The interface whose queue the shard serves.
    pub iface: String,
    /// The steered RX queue.
    pub queue: u32,
    /// Where the steering program's maps are pinned (default: the loader's).
    pub pin_root: Option<PathBuf>,
    /// How to bind the AF_XDP socket.
    pub bind: BindMode,
    /// Use the kernel's need_wakeup flag (fewer syscalls when busy).
    pub need_wakeup: bool,
    /// UMEM frames (half go to the fill ring, half stay for transmit).
    pub frames: u32,
    /// Bytes per UMEM frame (2048 or 4096).
    pub frame_size: u32,
    /// Size of each of the four rings.
    pub ring_size: u32,
    /// TCP receive and send buffer per connection, bytes.
    pub tcp_rx_buffer: usize,
    /// TCP send buffer per connection, in bytes.
    pub tcp_tx_buffer: usize,
    /// UDP buffer per socket: datagrams and bytes.
    pub udp_packets: usize,
    /// UDP receive and send buffers per socket, in bytes.
    pub udp_buffer: usize,
    /// Accepted-but-not-yet-`accept()`ed connections per listener, plus those in handshake.
    pub backlog: usize,
    /// Listening sockets kept armed per listener (the SYNs one poll batch can take).
    pub listen_depth: usize,
    /// Open TCP connections across the shard; beyond it new connections are refused.
    pub max_connections: usize,
    /// A connection with no data moving either way for this long is reset.
    pub idle_timeout: Option<Duration>,
    /// A handshake (SYN received, not yet established) may take this long.
    pub handshake_timeout: Duration,
    /// A connection the application has closed (dropped) must finish closing within this long,
    /// or it is reset (Linux's `tcp_fin_timeout`).
    pub orphan_timeout: Duration,
    /// The floor of the TCP retransmission timeout once an RTT is measured (Linux: 200 ms).
    pub min_rto: Duration,
    /// Congestion control for new connections (initial window: 10 segments, RFC 6928).
    pub congestion: Congestion,
    /// TCP keep-alive interval for new connections.
    pub keep_alive: Option<Duration>,
    /// Nagle's algorithm on new connections (off by default: request/response latency).
    pub nagle: bool,
    /// Delayed-ACK timeout on new connections (`None`: ACK at once).
    pub ack_delay: Option<Duration>,
    /// Ephemeral ports for outgoing connections.
    pub ephemeral_ports: (u16, u16),
    /// Spin instead of sleeping on the XSK when idle.
    pub busy_poll: bool,
    /// Pin the shard thread to this CPU.
    pub cpu: Option<usize>,
}

impl Config {
    pub(crate) fn new(iface: &str, queue: u32) -> Self {
        Self {
            iface: iface.to_string(),
            queue,
            pin_root: None,
            bind: BindMode::Auto,
            need_wakeup: true,
            frames: 4096,
            frame_size: 2048,
            ring_size: 2048,
            tcp_rx_buffer: 64 * 1024,
            tcp_tx_buffer: 64 * 1024,
            udp_packets: 256,
            udp_buffer: 256 * 1024,
            backlog: 128,
            listen_depth: 32,
            max_connections: 10_000,
            idle_timeout: Some(Duration::from_secs(300)),
            handshake_timeout: Duration::from_secs(10),
            orphan_timeout: Duration::from_secs(60),
            min_rto: Duration::from_millis(200),
            congestion: Congestion::Cubic,
            keep_alive: None,
            nagle: false,
            ack_delay: None,
            ephemeral_ports: (61000, 61999),
            busy_poll: false,
            cpu: None,
        }
    }

    /// Checks the values that would otherwise fail deep inside.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let pow2 = |n: u32| n.is_power_of_two();
        if !pow2(self.ring_size) || !(64..=32768).contains(&self.ring_size) {
            return Err(format!(
                "ring size {} must be a power of two in 64..=32768",
                self.ring_size
            ));
        }
        if !pow2(self.frame_size) || !(2048..=4096).contains(&self.frame_size) {
            return Err(format!(
                "frame size {} must be 2048 or 4096",
                self.frame_size
            ));
        }
        if self.frames < 2 * 64 || self.frames > 1 << 20 {
            return Err(format!(
                "UMEM frames {} must be in 128..=1048576",
                self.frames
            ));
        }
        if self.backlog == 0 || self.listen_depth == 0 || self.max_connections == 0 {
            return Err("backlog, listen depth and max connections must be at least 1".into());
        }
        if self.tcp_rx_buffer < 1024
            || self.tcp_tx_buffer < 1024
            || self.udp_buffer < 2048
            || self.udp_packets == 0
        {
            return Err("socket buffers must be at least 1 KiB (UDP: 2 KiB and 1 datagram)".into());
        }
        if self.min_rto < Duration::from_millis(1) || self.min_rto > Duration::from_secs(60) {
            return Err(format!(
                "minimum RTO {:?} must be in 1 ms..=60 s",
                self.min_rto
            ));
        }
        let (lo, hi) = self.ephemeral_ports;
        if lo == 0 || lo > hi {
            return Err(format!(
                "ephemeral port range {lo}..={hi} is empty or starts at 0"
            ));
        }
        Ok(())
    }
}
