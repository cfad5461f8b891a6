//! A minimal AF_XDP receiver for the steering tests: binds one XSK on a queue (copy mode,
//! no program of its own), registers it in the pinned XSKMAP and collects what arrives.
#![allow(unsafe_code)]

use std::{
    error::Error,
    io,
    num::NonZeroU32,
    os::fd::{AsRawFd, BorrowedFd},
    time::{Duration, Instant},
};

use steer_bpf::Steering;
use xsk_rs::{
    config::{LibxdpFlags, SocketConfig, UmemConfig},
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
};

const FRAMES: u32 = 256;

/// An XSK bound to one queue, receiving into a small UMEM.
pub struct XskReceiver {
    // Field order is drop order: the rings go before the UMEM they map.
    rx: RxQueue,
    fq: FillQueue,
    _tx: TxQueue,
    _cq: CompQueue,
    umem: Umem,
    descs: Vec<FrameDesc>,
    pub queue: u32,
}

impl XskReceiver {
    /// Binds to `iface`/`queue` (retrying EBUSY, which the kernel returns while it still frees a
    /// previous socket of the queue) and registers the socket in the attachment's XSKMAP.
    pub fn bind(iface: &str, queue: u32) -> io::Result<Self> {
        let (umem, descs) = Umem::new(
            UmemConfig::default(),
            NonZeroU32::new(FRAMES).expect("non-zero"),
            false,
        )
        .map_err(|e| io::Error::other(format!("creating UMEM: {e}")))?;
        let cfg = SocketConfig::builder()
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .build();
        let ifname = iface.parse().map_err(io::Error::other)?;
        let mut delay = Duration::from_millis(5);
        let deadline = Instant::now() + Duration::from_secs(5);
        let (tx, rx, fqcq) = loop {
            // SAFETY: the UMEM is not shared with another socket, so the shared-UMEM caveat of
            // Socket::new does not apply.
            match unsafe { Socket::new(cfg, &umem, &ifname, queue) } {
                Ok(s) => break s,
                Err(e) => {
                    let busy = e
                        .source()
                        .and_then(|s| s.downcast_ref::<io::Error>())
                        .is_some_and(|s| s.raw_os_error() == Some(libc::EBUSY));
                    if !busy || Instant::now() > deadline {
                        return Err(io::Error::other(format!(
                            "binding XSK on {iface} queue {queue}: {e} ({:?})",
                            e.source()
                        )));
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
            }
        };
        // libxdp creates the socket without SOCK_CLOEXEC: a process spawned by another thread
        // would inherit it and keep it (and its XSKMAP entry) alive after we close it.
        let fd = rx.fd().as_raw_fd();
        // SAFETY: fcntl on a descriptor we own, setting only FD_CLOEXEC.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (mut fq, cq) = fqcq.ok_or_else(|| io::Error::other("no fill/completion ring"))?;
        // SAFETY: every descriptor belongs to this UMEM and is handed to the kernel once.
        let n = unsafe { fq.produce(&descs) };
        assert_eq!(n, descs.len(), "fill ring takes all frames");
        let me = Self {
            rx,
            fq,
            _tx: tx,
            _cq: cq,
            umem,
            descs,
            queue,
        };
        let steering = Steering::open(iface, None).map_err(io::Error::other)?;
        steering
            .register_xsk(queue, me.fd())
            .map_err(io::Error::other)?;
        Ok(me)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd belongs to the socket, which lives as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.rx.fd().as_raw_fd()) }
    }

    /// Collects frames until `want` arrived or `timeout` passed; returns their bytes.
    pub fn receive(&mut self, want: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let deadline = Instant::now() + timeout;
        while got.len() < want && Instant::now() < deadline {
            // SAFETY: `descs` are this UMEM's frames; those the kernel fills are read, copied out
            // and given back to the fill ring before anything else touches them.
            let n = unsafe { self.rx.poll_and_consume(&mut self.descs, 20) }.unwrap_or(0);
            for d in &self.descs[..n] {
                // SAFETY: as above.
                got.push(unsafe { self.umem.data(d) }.contents().to_vec());
            }
            if n > 0 {
                // SAFETY: as above.
                let back = unsafe { self.fq.produce(&self.descs[..n]) };
                assert_eq!(back, n, "fill ring has room for the frames just consumed");
            }
        }
        got
    }
}
