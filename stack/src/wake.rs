//! Who wakes whom. Three kinds of wake-up, named after the sleeper:
//!
//! - [`ShardBell`]: application handles → the shard thread. Rung after a call changed
//!   something the shard must act on (a new listener, a closed socket); the shard sleeps in
//!   poll(2) on its XSK and this eventfd.
//! - [`ServerBell`]: smoltcp socket wakers → the application thread that serves the queue
//!   while blocked in a call (see `serve.rs`). It sleeps in poll(2) on the XSK and this eventfd;
//!   most wake-ups come while it is awake (it handled the very packet that caused them) and
//!   only leave a note, costing no syscall.
//! - [`parked_waker`]: smoltcp socket wakers → an application thread parked in a call. Each
//!   wake is counted on the shard's `handovers`, which is how a serving thread learns that the
//!   packets it handled were for someone else.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{Wake, Waker},
    thread::{self, Thread},
    time::Duration,
};

use crate::sys::wake::EventFd;

/// Application handles → the shard thread (an eventfd it sleeps on with the XSK).
#[derive(Debug)]
pub(crate) struct ShardBell(EventFd);

impl ShardBell {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self(EventFd::new()?))
    }
    /// Wakes the shard (many rings before it runs coalesce into one).
    pub fn ring(&self) {
        self.0.signal();
    }
    /// Sleeps until `xsk` (when given) is readable, the bell rings or `timeout` passes.
    pub fn sleep(&self, xsk: Option<i32>, timeout: Duration) {
        self.0.wait(xsk, Some(timeout));
    }
}

/// smoltcp socket wakers → the application thread serving the queue.
#[derive(Debug)]
pub(crate) struct ServerBell {
    efd: EventFd,
    asleep: AtomicBool,
    notified: AtomicBool,
}

impl ServerBell {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            efd: EventFd::new()?,
            asleep: AtomicBool::new(false),
            notified: AtomicBool::new(false),
        }))
    }

    fn ring(&self) {
        self.notified.store(true, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) {
            self.efd.signal();
        }
    }

    /// Sleeps on the XSK and the bell unless a wake-up came since the last look.
    pub fn sleep(&self, xsk_fd: i32, timeout: Duration) {
        self.asleep.store(true, Ordering::SeqCst);
        if !self.notified.swap(false, Ordering::SeqCst) {
            self.efd.wait(Some(xsk_fd), Some(timeout));
        }
        self.asleep.store(false, Ordering::SeqCst);
        self.notified.store(false, Ordering::SeqCst);
    }

    /// The waker a serving thread registers with its sockets.
    pub fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(Arc::new(ServerWake(self.clone())))
    }
}

struct ServerWake(Arc<ServerBell>);

impl Wake for ServerWake {
    fn wake(self: Arc<Self>) {
        self.0.ring();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.ring();
    }
}

/// smoltcp socket wakers → a parked application thread; counts each wake on its shard.
struct ParkedWake {
    thread: Thread,
    handovers: Arc<AtomicU64>,
}

impl Wake for ParkedWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.handovers.fetch_add(1, Ordering::Relaxed);
        self.thread.unpark();
    }
}

/// The calling thread's waker for the shard whose wake counter is `handovers` (identified by
/// `shard`). Cached per thread and shard: no allocation per blocking call.
pub(crate) fn parked_waker(shard: u64, handovers: &Arc<AtomicU64>) -> Waker {
    thread_local! {
        static WAKERS: std::cell::RefCell<Vec<(u64, Waker)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    WAKERS.with(|w| {
        let mut w = w.borrow_mut();
        if let Some((_, waker)) = w.iter().find(|(id, _)| *id == shard) {
            return waker.clone();
        }
        // A thread that outlives many stacks keeps only its latest few.
        if w.len() >= 8 {
            w.remove(0);
        }
        let waker = Waker::from(Arc::new(ParkedWake {
            thread: thread::current(),
            handovers: handovers.clone(),
        }));
        w.push((shard, waker.clone()));
        waker
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parked_wakes_count_on_their_own_shard_only() {
        let (a, b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let wa = parked_waker(1, &a);
        let wb = parked_waker(2, &b);
        wa.wake_by_ref();
        wa.wake_by_ref();
        wb.wake_by_ref();
        assert_eq!(
            (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed)),
            (2, 1)
        );
        assert!(
            parked_waker(1, &a).will_wake(&wa),
            "cached per thread and shard"
        );
    }

    #[test]
    fn a_server_bell_rung_while_awake_costs_no_sleep() {
        let bell = ServerBell::new().unwrap();
        bell.waker().wake_by_ref();
        let t = std::time::Instant::now();
        // No XSK here: -1 is skipped by poll(2). The note left by the ring ends the sleep at once.
        bell.sleep(-1, Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
