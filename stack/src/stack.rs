//! The stack as a service links it: [`StackBuilder`] (options, then `start`), [`Stack`] (the
//! running shard: listen, connect, bind, observe, stop) and [`StatsSource`] (counters from any
//! thread). The only module that knows about the control socket.
use std::{
    net::Ipv4Addr,
    sync::{atomic::Ordering, Arc},
    thread::JoinHandle,
    time::Duration,
};

use crate::{
    capture::CaptureSpec,
    config::Config,
    control::ControlServer,
    error::{Failure, StackError},
    events::ConnHook,
    serve::{shard_thread, Driver},
    shard::Core,
    shared::Shared,
    stats::StackStats,
    sys,
    timing::TIMING,
    xsk::FrameCounts,
};

/// Builds a [`Stack`]: one shard on one queue of one interface.
#[derive(Clone)]
pub struct StackBuilder {
    cfg: Config,
    hook: Option<ConnHook>,
    pcap: Option<CaptureSpec>,
    faults: Option<crate::FaultPlan>,
    control: Option<Option<std::path::PathBuf>>,
}

impl std::fmt::Debug for StackBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackBuilder")
            .field("cfg", &self.cfg)
            .field("pcap", &self.pcap)
            .finish_non_exhaustive()
    }
}

impl StackBuilder {
    /// Serve on `queue` of `iface`, in the interface's own IPv4 address (shared-IP mode). The
    /// steering program must be attached there (`xdp-loader attach IFACE --queue Q`).
    pub fn new(iface: &str, queue: u32) -> Self {
        Self {
            cfg: Config::new(iface, queue),
            hook: None,
            pcap: None,
            faults: None,
            control: None,
        }
    }
    /// Calls `hook` on the shard thread for every observed TCP state change. It must be quick
    /// and must not call back into the stack.
    pub fn on_conn_state(
        mut self,
        hook: impl Fn(&crate::ConnEvent) + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(std::sync::Arc::new(hook));
        self
    }
    /// Injects faults (drop, duplicate, reorder, corrupt) in the device layer: for tests.
    pub fn faults(mut self, plan: crate::FaultPlan) -> Self {
        self.faults = Some(plan);
        self
    }
    /// Captures received and sent frames to a pcap file from the start.
    pub fn pcap(mut self, spec: CaptureSpec) -> Self {
        self.pcap = Some(spec);
        self
    }
    /// Where the control socket goes (`None`: no control socket). Default:
    /// `/run/xsk-stack/IFACE-qQUEUE.sock` (`XSK_STACK_RUN_DIR` moves the directory).
    pub fn control_socket(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.control = Some(path);
        self
    }
    /// Where the steering program's maps are pinned (default: the loader's, `/sys/fs/bpf/xsk-steer` or `XSK_STEER_PIN_ROOT`).
    pub fn pin_root(mut self, p: impl Into<std::path::PathBuf>) -> Self {
        self.cfg.pin_root = Some(p.into());
        self
    }
    /// Zero-copy, copy, or zero-copy falling back to copy (the default).
    pub fn bind_mode(mut self, m: crate::config::BindMode) -> Self {
        self.cfg.bind = m;
        self
    }
    /// Use the kernel's need_wakeup flag (default on).
    pub fn need_wakeup(mut self, on: bool) -> Self {
        self.cfg.need_wakeup = on;
        self
    }
    /// UMEM frames (default 4096), shared by receive and transmit.
    pub fn umem_frames(mut self, n: u32) -> Self {
        self.cfg.frames = n;
        self
    }
    /// Bytes per UMEM frame: 2048 (default) or 4096.
    pub fn frame_size(mut self, n: u32) -> Self {
        self.cfg.frame_size = n;
        self
    }
    /// Entries per AF_XDP ring (a power of two, default 2048).
    pub fn ring_size(mut self, n: u32) -> Self {
        self.cfg.ring_size = n;
        self
    }
    /// TCP receive and send buffer per connection, in bytes (default 64 KiB each).
    pub fn tcp_buffers(mut self, rx: usize, tx: usize) -> Self {
        self.cfg.tcp_rx_buffer = rx;
        self.cfg.tcp_tx_buffer = tx;
        self
    }
    /// UDP buffers per socket and direction: datagrams and bytes (default 256, 256 KiB).
    pub fn udp_buffers(mut self, datagrams: usize, bytes: usize) -> Self {
        self.cfg.udp_packets = datagrams;
        self.cfg.udp_buffer = bytes;
        self
    }
    /// Accept queue bound per listener: handshaking plus established, not yet accepted (default 128).
    pub fn backlog(mut self, n: usize) -> Self {
        self.cfg.backlog = n;
        self
    }
    /// SYNs one batch can take per listener; also frames per poll (default 32).
    pub fn listen_depth(mut self, n: usize) -> Self {
        self.cfg.listen_depth = n;
        self
    }
    /// Open TCP connections across the shard; beyond it SYNs are refused (default 10 000).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.cfg.max_connections = n;
        self
    }
    /// Reset connections with no data moving either way for this long (default 300 s; `None`: never).
    pub fn idle_timeout(mut self, d: Option<Duration>) -> Self {
        self.cfg.idle_timeout = d;
        self
    }
    /// How long a handshake may take (default 10 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.cfg.handshake_timeout = d;
        self
    }
    /// How long a connection the application dropped may take to finish closing before it is
    /// reset (default 60 s, as Linux's `tcp_fin_timeout`).
    pub fn orphan_timeout(mut self, d: Duration) -> Self {
        self.cfg.orphan_timeout = d;
        self
    }
    /// The floor of the retransmission timeout once an RTT is measured (default 200 ms, as
    /// Linux; smoltcp's own is 1 s). Lower only on links you know.
    pub fn min_rto(mut self, d: Duration) -> Self {
        self.cfg.min_rto = d;
        self
    }
    /// Congestion control for new connections: CUBIC (the default, as Linux), Reno, or
    /// `Congestion::None` (only for links you own end to end). The initial window is 10
    /// segments (RFC 6928).
    pub fn congestion(mut self, c: crate::config::Congestion) -> Self {
        self.cfg.congestion = c;
        self
    }
    /// TCP keep-alive interval for new connections (default off).
    pub fn keep_alive(mut self, d: Option<Duration>) -> Self {
        self.cfg.keep_alive = d;
        self
    }
    /// Nagle's algorithm on new connections (default off: request/response latency).
    pub fn nagle(mut self, on: bool) -> Self {
        self.cfg.nagle = on;
        self
    }
    /// Delayed-ACK timeout on new connections (default `None`: acknowledge at once).
    pub fn ack_delay(mut self, d: Option<Duration>) -> Self {
        self.cfg.ack_delay = d;
        self
    }
    /// Ports for outgoing connections (default 61000..=61999).
    pub fn ephemeral_ports(mut self, lo: u16, hi: u16) -> Self {
        self.cfg.ephemeral_ports = (lo, hi);
        self
    }
    /// Spin on the queue instead of sleeping when idle (lower latency, a busy CPU).
    pub fn busy_poll(mut self, on: bool) -> Self {
        self.cfg.busy_poll = on;
        self
    }
    /// Pin the shard's thread to this CPU.
    pub fn cpu(mut self, cpu: Option<usize>) -> Self {
        self.cfg.cpu = cpu;
        self
    }

    /// Binds the XSK, registers it with the steering program and starts the shard thread.
    pub fn start(self) -> Result<Stack, StackError> {
        let cpu = self.cfg.cpu;
        let control_path = match self.control {
            Some(p) => p,
            None => Some(crate::control::socket_path(&self.cfg.iface, self.cfg.queue)),
        };
        let mut core = Core::open(self.cfg)?;
        core.set_hook(self.hook);
        if let Some(plan) = self.faults {
            core.set_faults(plan);
        }
        if let Some(spec) = self.pcap {
            core.start_capture(spec)?;
        }
        let driver = Driver::of(&core);
        let xsk_fd = core.xsk_fd();
        let shared = Arc::new(Shared::new(core, xsk_fd).map_err(|e| StackError::io("eventfd", e))?);
        let control = match control_path {
            Some(p) => Some(ControlServer::start(p, Arc::downgrade(&shared))?),
            None => None,
        };
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("xsk-shard".into())
            .spawn(move || {
                if let Some(c) = cpu {
                    if let Err(e) = sys::wake::pin_to_cpu(c) {
                        tracing::warn!("pinning the shard to cpu {c}: {e}");
                    }
                }
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    shard_thread(s2.clone(), driver)
                }));
                if let Err(p) = r {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    s2.fail(Failure::Panicked(msg));
                }
            })
            .map_err(|e| StackError::io("spawning the shard thread", e))?;
        Ok(Stack {
            shared,
            thread: Some(thread),
            control,
        })
    }
}

/// Reads a stack's counters from any thread (e.g. a metrics endpoint).
#[derive(Clone)]
pub struct StatsSource {
    shared: std::sync::Weak<Shared>,
}

impl StatsSource {
    /// The counters, or `None` once the stack has stopped.
    pub fn stats(&self) -> Option<StackStats> {
        self.shared.upgrade()?.lock().as_mut().map(|c| c.stats())
    }
}

/// A running shard. Dropping it stops the thread, closes every socket, removes the steering
/// rules the stack added and closes the XSK (the kernel then takes the flows back).
pub struct Stack {
    pub(crate) shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    control: Option<ControlServer>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack").finish_non_exhaustive()
    }
}

impl Stack {
    /// Start configuring a stack on `iface`/`queue`.
    pub fn builder(iface: &str, queue: u32) -> StackBuilder {
        StackBuilder::new(iface, queue)
    }

    /// The IPv4 address the stack serves on (the interface's own).
    pub fn local_ip(&self) -> Ipv4Addr {
        self.shared
            .lock()
            .as_ref()
            .map_or(Ipv4Addr::UNSPECIFIED, |c| c.addr())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Option<StackStats> {
        self.shared.lock().as_mut().map(|c| c.stats())
    }

    /// Where the UMEM frames are right now, and how many there are.
    pub fn frames(&self) -> Option<(FrameCounts, u32)> {
        self.shared.lock().as_mut().map(|c| c.frames())
    }

    /// Every TCP connection with its round-trip and retransmission state (what `ss -ti` shows
    /// for kernel sockets; also `xdp-loader stats IFACE --connections`). `None` once stopped.
    pub fn connections(&self) -> Option<Vec<crate::stats::TcpConnInfo>> {
        self.shared.lock().as_ref().map(|c| c.connections())
    }

    /// Checks the UMEM frame ledger against the real free pool (for tests and debugging): an
    /// error names the mismatch. `None` once the stack has stopped.
    pub fn audit_frames(&self) -> Option<Result<(), String>> {
        self.shared.lock().as_mut().map(|c| c.audit_frames())
    }

    /// A handle other threads can read counters through without keeping the stack alive.
    pub fn stats_source(&self) -> StatsSource {
        StatsSource {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Starts capturing frames to a pcap file (replacing a running capture).
    pub fn start_capture(&self, spec: CaptureSpec) -> Result<(), StackError> {
        self.shared
            .lock()
            .as_mut()
            .ok_or(StackError::Stopped)?
            .start_capture(spec)
    }

    /// Stops the running capture (the file is flushed and closed); false if none was running.
    pub fn stop_capture(&self) -> bool {
        self.shared
            .lock()
            .as_mut()
            .is_some_and(|c| c.stop_capture())
    }

    /// Where the control socket is, if there is one.
    pub fn control_socket(&self) -> Option<std::path::PathBuf> {
        self.control.as_ref().map(|c| c.path().to_path_buf())
    }

    /// Why the shard thread stopped on its own, if it did.
    pub fn failure(&self) -> Option<Failure> {
        self.shared.failure()
    }

    /// Stops the shard (same as dropping it).
    pub fn shutdown(self) {}
}

impl Drop for Stack {
    fn drop(&mut self) {
        drop(self.control.take());
        // Let FINs for closed sockets (and queued datagrams) go out: a few polls, bounded.
        self.shared.close_all(false, false);
        self.shared.shard_bell.ring();
        std::thread::sleep(TIMING.shutdown_grace);
        self.shared.close_all(false, true);
        self.shared.stop.store(true, Ordering::Release);
        self.shared.shard_bell.ring();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(core) = self.shared.lock().take() {
            core.unregister();
            let cfg = core.config();
            tracing::info!(iface = %cfg.iface, queue = cfg.queue, "shard down");
            drop(core);
        }
    }
}
