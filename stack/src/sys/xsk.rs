//! The AF_XDP socket: UMEM, fill/completion/rx/tx rings, batched, with frame ownership kept in
//! a [`FrameLedger`].
use std::{
    error::Error as _,
    io,
    num::NonZeroU32,
    os::fd::{AsRawFd, BorrowedFd, RawFd},
    time::{Duration, Instant},
};

use xsk_rs::{
    config::{BindFlags, FrameSize, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
};

use crate::{
    config::BindMode,
    error::StackError,
    xsk::{FrameCounts, FrameLedger, Owner},
};

/// Ring and UMEM sizes.
#[derive(Debug, Clone, Copy)]
pub struct XskConfig {
    pub frames: u32,
    pub frame_size: u32,
    pub ring_size: u32,
    pub bind: BindMode,
    pub need_wakeup: bool,
}

/// Kernel-side drop counters of the socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelXskStats {
    /// Frames the kernel dropped for this socket (XDP_STATISTICS rx_dropped).
    pub rx_dropped: u64,
    /// Invalid descriptors on the rx ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors on the tx ring.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the rx ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived.
    pub rx_fill_ring_empty: u64,
    /// Times the kernel found the tx ring empty.
    pub tx_ring_empty: u64,
}

/// An AF_XDP socket bound to one queue, with its UMEM.
pub struct Xsk {
    // Drop order: rings before the UMEM they map.
    rx: RxQueue,
    tx: TxQueue,
    fq: FillQueue,
    cq: CompQueue,
    umem: Umem,
    free: Vec<FrameDesc>,
    scratch: Vec<FrameDesc>,
    tx_pending: Vec<FrameDesc>,
    ledger: FrameLedger,
    fill_target: u32,
    ring_size: u32,
    /// Whether the socket was bound in zero-copy mode.
    pub zero_copy: bool,
    /// Frames we could not put on the tx ring because it was full (they were dropped).
    pub tx_ring_full: u64,
}

fn is_errno(e: &xsk_rs::socket::SocketCreateError, errno: i32) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(|s| s.raw_os_error() == Some(errno))
}

impl Xsk {
    /// Creates the UMEM and binds the socket to `iface`/`queue`. EBUSY (the kernel still
    /// releasing the queue's previous socket) is retried with backoff for up to 5 s.
    pub fn bind(iface: &str, queue: u32, cfg: XskConfig) -> Result<Self, StackError> {
        let qsize = |n: u32| {
            QueueSize::new(n).map_err(|e| StackError::Config(format!("ring size {n}: {e}")))
        };
        let umem_cfg = UmemConfig::builder()
            .frame_size(
                FrameSize::new(cfg.frame_size)
                    .map_err(|e| StackError::Config(format!("frame size: {e}")))?,
            )
            .fill_queue_size(qsize(cfg.ring_size)?)
            .comp_queue_size(qsize(cfg.ring_size)?)
            .build()
            .map_err(|e| StackError::Config(format!("UMEM config: {e}")))?;
        let frames = NonZeroU32::new(cfg.frames)
            .ok_or_else(|| StackError::Config("UMEM needs frames".into()))?;
        let (umem, descs) = Umem::new(umem_cfg, frames, false).map_err(|e| {
            StackError::Xsk(format!(
                "creating the UMEM ({} frames of {} B): {e} ({:?}); a non-root service needs CAP_IPC_LOCK or a larger RLIMIT_MEMLOCK",
                cfg.frames,
                cfg.frame_size,
                e.source()
            ))
        })?;
        let ifname = iface
            .parse()
            .map_err(|_| StackError::Config(format!("bad interface name {iface:?}")))?;
        let mut last_err = None;
        let modes: &[BindFlags] = match cfg.bind {
            BindMode::Copy => &[BindFlags::XDP_COPY],
            BindMode::ZeroCopy => &[BindFlags::XDP_ZEROCOPY],
            BindMode::Auto => &[BindFlags::XDP_ZEROCOPY, BindFlags::XDP_COPY],
        };
        for &mode in modes {
            let mut flags = mode;
            if cfg.need_wakeup {
                flags |= BindFlags::XDP_USE_NEED_WAKEUP;
            }
            let sock_cfg = SocketConfig::builder()
                .rx_queue_size(qsize(cfg.ring_size)?)
                .tx_queue_size(qsize(cfg.ring_size)?)
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .bind_flags(flags)
                .build();
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut delay = Duration::from_millis(5);
            loop {
                // SAFETY: the UMEM is not shared with any other socket, so Socket::new's
                // shared-UMEM precondition does not apply.
                match unsafe { Socket::new(sock_cfg, &umem, &ifname, queue) } {
                    Ok((tx, rx, Some((fq, cq)))) => {
                        let mut xsk = Self {
                            rx,
                            tx,
                            fq,
                            cq,
                            umem,
                            ledger: FrameLedger::new(descs.len() as u32),
                            scratch: vec![FrameDesc::default(); cfg.ring_size as usize],
                            tx_pending: Vec::with_capacity(cfg.ring_size as usize),
                            free: descs,
                            fill_target: (cfg.frames / 2).min(cfg.ring_size),
                            ring_size: cfg.ring_size,
                            zero_copy: mode.contains(BindFlags::XDP_ZEROCOPY),
                            tx_ring_full: 0,
                        };
                        set_cloexec(xsk.fd())?;
                        xsk.refill();
                        return Ok(xsk);
                    }
                    Ok(_) => {
                        return Err(StackError::Xsk(
                            "socket bound without fill/completion rings".into(),
                        ))
                    }
                    Err(e) if is_errno(&e, libc::EBUSY) && Instant::now() < deadline => {
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_millis(200));
                    }
                    Err(e) => {
                        let hint = if is_errno(&e, libc::EPERM) {
                            " (needs root, or CAP_NET_RAW + CAP_IPC_LOCK)"
                        } else if is_errno(&e, libc::EOPNOTSUPP) {
                            " (the driver does not support this mode)"
                        } else {
                            ""
                        };
                        last_err = Some(format!("{e}: {:?}{hint}", e.source()));
                        break;
                    }
                }
            }
        }
        Err(StackError::Xsk(format!(
            "binding an AF_XDP socket to {iface} queue {queue}: {}",
            last_err.unwrap_or_default()
        )))
    }

    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    pub fn borrowed_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by the socket, which lives as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.fd()) }
    }

    pub fn umem(&self) -> &Umem {
        &self.umem
    }

    pub fn frames(&self) -> FrameCounts {
        self.ledger.counts()
    }

    pub fn ledger(&self) -> &FrameLedger {
        &self.ledger
    }

    /// Checks the ledger against the frames themselves: the free pool really holds as many
    /// frames as the ledger says, each at most once. (The ledger alone would keep counting a
    /// frame that a bug dropped on the floor.)
    pub fn audit(&self) -> Result<(), String> {
        let counted = self.ledger.counts().free as usize;
        if self.free.len() != counted {
            return Err(format!(
                "the free pool holds {} frames, the ledger counts {counted}",
                self.free.len()
            ));
        }
        let mut addrs: Vec<usize> = self.free.iter().map(|d| d.addr()).collect();
        addrs.sort_unstable();
        if let Some(w) = addrs.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("frame at {:#x} is in the free pool twice", w[0]));
        }
        Ok(())
    }

    /// Tops the fill ring up from the free pool (keeping frames back for transmit).
    pub fn refill(&mut self) {
        let kernel = self.ledger.counts().kernel;
        if kernel >= self.fill_target || self.free.is_empty() {
            return;
        }
        let want = ((self.fill_target - kernel) as usize).min(self.free.len());
        let start = self.free.len() - want;
        // SAFETY: these frames are in our free pool, owned by nobody else; the kernel gets them.
        let n = unsafe { self.fq.produce(&self.free[start..]) };
        if n > 0 {
            // produce() is all-or-nothing: either every frame went or none did.
            self.free.truncate(start);
            self.ledger.moved(Owner::Free, Owner::Kernel, n as u32);
        }
        if self.fq.needs_wakeup() {
            let fd = self.rx.fd_mut();
            let _ = self.fq.wakeup(fd, 0);
        }
    }

    /// Takes up to one batch of received frames from the rx ring, appending to `out`.
    pub fn receive(&mut self, out: &mut Vec<FrameDesc>) -> usize {
        // SAFETY: frames coming off the rx ring were given to the kernel by us; from here on the
        // stack owns them until it releases them.
        let n = unsafe { self.rx.consume(&mut self.scratch) };
        out.extend_from_slice(&self.scratch[..n]);
        self.ledger.moved(Owner::Kernel, Owner::Stack, n as u32);
        n
    }

    /// Gives a frame the stack is done with back to the free pool.
    pub fn release(&mut self, desc: FrameDesc) {
        self.free.push(desc);
        self.ledger.moved(Owner::Stack, Owner::Free, 1);
    }

    /// Takes a free frame for the stack's own use (a received frame's copy), if any.
    pub fn alloc_stack(&mut self) -> Option<FrameDesc> {
        let d = self.free.pop()?;
        self.ledger.moved(Owner::Free, Owner::Stack, 1);
        Some(d)
    }

    /// Takes a free frame to transmit from, if any.
    pub fn alloc_tx(&mut self) -> Option<FrameDesc> {
        let d = self.free.pop()?;
        self.ledger.moved(Owner::Free, Owner::Tx, 1);
        Some(d)
    }

    /// A frame taken with alloc_tx that will not be sent after all.
    pub fn cancel_tx(&mut self, desc: FrameDesc) {
        self.free.push(desc);
        self.ledger.moved(Owner::Tx, Owner::Free, 1);
    }

    /// Queues a written frame for the tx ring (sent at the next flush).
    pub fn queue_tx(&mut self, desc: FrameDesc) {
        if self.tx_pending.len() >= self.ring_size as usize {
            self.flush();
        }
        if self.tx_pending.len() >= self.ring_size as usize {
            self.tx_ring_full += 1;
            self.cancel_tx(desc);
            return;
        }
        self.tx_pending.push(desc);
    }

    /// Submits the queued frames to the tx ring in one batch and kicks the kernel if it asks.
    pub fn flush(&mut self) {
        self.reclaim();
        if !self.tx_pending.is_empty() {
            let free = self.tx.nb_free(self.tx_pending.len() as u32) as usize;
            let n = free.min(self.tx_pending.len());
            if n > 0 {
                // SAFETY: the frames were written by the stack and are handed to the kernel once.
                let done = unsafe { self.tx.produce(&self.tx_pending[..n]) };
                self.tx_pending.drain(..done);
            }
        }
        // Copy mode transmits only on sendto(), so kick while frames are in flight (queued or in
        // the ring, not yet completed); never with none (a syscall per poll on a receive-only
        // load). Zero-copy: the kernel says when through need_wakeup.
        let in_flight = self.ledger.counts().tx > 0;
        let kick = if self.zero_copy {
            !self.tx_pending.is_empty() || self.tx.needs_wakeup()
        } else {
            in_flight
        };
        if kick {
            let _ = self.tx.wakeup();
        }
        self.reclaim();
    }

    /// Frames the kernel has finished transmitting go back to the free pool.
    pub fn reclaim(&mut self) {
        loop {
            // SAFETY: completed frames are ours again.
            let n = unsafe { self.cq.consume(&mut self.scratch) };
            if n == 0 {
                break;
            }
            self.free.extend_from_slice(&self.scratch[..n]);
            self.ledger.moved(Owner::Tx, Owner::Free, n as u32);
        }
    }

    /// Kernel drop counters (`XDP_STATISTICS`).
    pub fn kernel_stats(&self) -> KernelXskStats {
        match self.rx.fd().xdp_statistics() {
            Ok(s) => KernelXskStats {
                rx_dropped: s.rx_dropped(),
                rx_invalid_descs: s.rx_invalid_descs(),
                tx_invalid_descs: s.tx_invalid_descs(),
                rx_ring_full: s.rx_ring_full(),
                rx_fill_ring_empty: s.rx_fill_ring_empty_descs(),
                tx_ring_empty: s.tx_ring_empty_descs(),
            },
            Err(_) => KernelXskStats::default(),
        }
    }
}

fn set_cloexec(fd: RawFd) -> Result<(), StackError> {
    // libxdp creates the socket without SOCK_CLOEXEC; a child process would inherit it and keep
    // the queue (and the XSKMAP entry) alive after we exit, which breaks fail-open.
    // SAFETY: fcntl on a descriptor we own, changing only FD_CLOEXEC.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(StackError::Xsk(format!(
            "FD_CLOEXEC: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// The packet bytes of a received frame. The caller must own `desc` (taken off the rx ring and
/// not yet released): the kernel does not write to such a frame.
pub fn frame<'a>(umem: &'a Umem, desc: &'a FrameDesc) -> &'a [u8] {
    // SAFETY: per the contract above, nobody writes to this frame while the stack holds it.
    unsafe { umem.data(desc) }.contents()
}

/// A writable buffer of `len` bytes in a frame taken with [`Xsk::alloc_tx`] (which the caller
/// must own); `None` if the frame is smaller than `len`.
pub fn frame_mut<'a>(umem: &'a Umem, desc: &'a mut FrameDesc, len: usize) -> Option<&'a mut [u8]> {
    // SAFETY: the frame came from our free pool through alloc_tx, so only the stack touches it
    // until it is queued for transmit.
    let mut data = unsafe { umem.data_mut(desc) };
    let mut cur = data.cursor();
    if cur.buf_len() < len {
        return None;
    }
    cur.set_pos(len);
    let slice = data.contents_mut();
    let (ptr, l) = (slice.as_mut_ptr(), slice.len());
    // SAFETY: the bytes live in the UMEM, which outlives 'a, and `desc` stays mutably borrowed
    // for 'a, so this is the only view of the frame.
    Some(unsafe { std::slice::from_raw_parts_mut(ptr, l) })
}
