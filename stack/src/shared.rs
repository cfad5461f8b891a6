//! What every party to a shard holds: the core behind its lock, the flags that stop it, why it
//! failed, and the bells that wake its threads. Handles, the serving code, the control socket
//! and the `Stack` all hold an `Arc<Shared>`; it sits below all of them and imports none.
use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Mutex, MutexGuard,
};

use crate::{
    error::Failure,
    shard::{Core, Flushed},
    wake::{ServerBell, ShardBell},
};

/// One shard's shared state.
pub(crate) struct Shared {
    core: Mutex<Option<Core>>,
    /// Identifies this shard to the per-thread waker cache (`wake::parked_waker`).
    pub id: u64,
    /// Handles → the shard thread.
    pub shard_bell: ShardBell,
    /// Socket wakers → the application thread serving the queue, and the waker it registers.
    pub server_bell: Arc<ServerBell>,
    pub server_waker: std::task::Waker,
    /// Parked application threads woken so far: a serving thread compares it before and after
    /// a pass to learn whether the packets it handled were for others.
    pub handovers: Arc<AtomicU64>,
    /// An application thread is serving the queue (sleeping on it or spinning): at most one at
    /// a time, and the shard thread only keeps time meanwhile.
    pub serving: AtomicBool,
    /// The shard thread must stop.
    pub stop: AtomicBool,
    /// The stack is going down: blocked calls return instead of waiting again.
    pub closing: AtomicBool,
    failure: Mutex<Option<Failure>>,
    /// The AF_XDP socket, which a serving thread sleeps on.
    pub xsk_fd: i32,
}

impl Shared {
    pub fn new(core: Core, xsk_fd: i32) -> std::io::Result<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let server_bell = ServerBell::new()?;
        Ok(Self {
            core: Mutex::new(Some(core)),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shard_bell: ShardBell::new()?,
            server_waker: server_bell.waker(),
            server_bell,
            handovers: Arc::new(AtomicU64::new(0)),
            serving: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            failure: Mutex::new(None),
            xsk_fd,
        })
    }

    /// The core, for the length of one call or one batch (`None` once the stack has stopped).
    pub fn lock(&self) -> MutexGuard<'_, Option<Core>> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the shard stopped on its own, if it did.
    pub fn failure(&self) -> Option<Failure> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records why the shard stops and stops it.
    pub fn fail(&self, why: Failure) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.stop.store(true, Ordering::Release);
    }

    /// Going down: every blocked call returns. Closing a socket fires its smoltcp wakers, so
    /// each parked thread wakes, sees `closing` and gives up (instead of sleeping out its nap).
    /// TCP sockets close gracefully (FIN, sent by the polls that follow) unless `abort`; UDP
    /// sockets are closed only when `udp` (a clean stop lets their queued datagrams out first).
    pub fn close_all(&self, abort: bool, udp: bool) {
        self.closing.store(true, Ordering::Release);
        if let Some(core) = self.lock().as_mut() {
            core.close_all(abort, udp);
        }
    }

    /// Rings the shard's bell when an application thread's flush left it work.
    pub fn ring_if(&self, flushed: Flushed) {
        if flushed == Flushed::ShardNeeded {
            self.shard_bell.ring();
        }
    }

    /// The error a call reports once the stack has stopped, saying why when the shard knows.
    pub fn stopped(&self) -> std::io::Error {
        match self.failure() {
            Some(why) => std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("the stack has stopped: {why}"),
            ),
            None => std::io::Error::new(std::io::ErrorKind::NotConnected, "the stack has stopped"),
        }
    }
}
