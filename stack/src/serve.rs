//! Who serves the queue, and how they wait.
//!
//! A shard's queue is served by exactly one thread at a time, which runs to completion: an rx
//! batch → smoltcp → the wake-ups of the sockets it touched → one tx flush. Three kinds of
//! thread take turns:
//!
//! 1. **The shard thread** ([`shard_thread`]) serves whenever no application thread does. It
//!    also keeps time: housekeeping, smoltcp's timers, and the check that the interface and the
//!    steering program are still there.
//! 2. **A blocked caller** ([`block_on`] with [`Serve::Yes`]: read, write, send, receive).
//!    Instead of parking while the shard handles its packets and then waking it (two
//!    wake-ups per request), the caller serves the queue itself (at most one caller at a time,
//!    flagged in `Shared::serving`), so the packet that completes its call is handled on its
//!    own thread. When the packets it handled were for other threads (it woke some: the
//!    shard's `handovers` count moved), it hands over: one of them serves next, with its own
//!    packets reaching it directly, and the caller parks.
//! 3. **Everyone else** parks ([`block_on`] with [`Serve::No`]: accept and connect, which
//!    must not serve: an accepting thread serving a SYN flood would starve the connections it
//!    accepted), woken by smoltcp's socket wakers (`wake::parked_waker`).
//!
//! How a serving thread waits between passes is the [`Driver`]: it sleeps in poll(2) on the
//! XSK and its bell, or it busy-polls (spins, yielding the CPU between passes). While an
//! application thread serves, the shard thread only keeps time.
//!
//! Who wakes whom is `wake.rs`; every interval here is in `timing.rs`.
use std::{
    io,
    sync::{atomic::Ordering, Arc},
    task::Waker,
    thread,
    time::{Duration, Instant},
};

use crate::{shard::Core, shared::Shared, timing::TIMING, wake::parked_waker};

/// How a serving thread waits for more work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    /// Sleep in poll(2) until a packet, a wake-up or a timer.
    Sleep,
    /// Spin (the kernel's SO_BUSY_POLL idea), yielding the CPU between passes: a spinner that
    /// never yields delays ksoftirqd, which delivers our transmitted frames, by a whole
    /// scheduler slice.
    BusyPoll,
}

impl Driver {
    pub fn of(core: &Core) -> Self {
        if core.config().busy_poll {
            Driver::BusyPoll
        } else {
            Driver::Sleep
        }
    }

    /// The bounded spell a blocked caller serves before it looks at its deadline again.
    fn spell(self) -> Duration {
        match self {
            Driver::Sleep => TIMING.spell_sleeping,
            Driver::BusyPoll => TIMING.spell_spinning,
        }
    }
}

/// Whether a blocked call may serve the queue while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Serve {
    /// Data calls: read, write, send, receive.
    Yes,
    /// accept and connect.
    No,
}

/// How a spell of serving the queue ended.
enum Served<T> {
    /// The caller's call completed.
    Ready(io::Result<T>),
    /// The spell ran out (or the stack is stopping): look again.
    SpellEnded,
    /// The packets were for other threads, now woken: one of them takes over the queue when it
    /// next blocks, and the caller parks.
    HandedOver,
    /// Another thread serves the queue: the caller parks.
    Taken,
}

/// A blocked caller serves the queue until `f` is ready or a bounded spell ends.
fn serve_queue<T>(
    shared: &Shared,
    deadline: Option<Instant>,
    driver: Driver,
    f: &mut impl FnMut(&mut Core, &Waker) -> Option<io::Result<T>>,
    parked: &Waker,
) -> Served<T> {
    if shared
        .serving
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Served::Taken;
    }
    let until = Instant::now() + driver.spell();
    let until = deadline.map_or(until, |d| d.min(until));
    let mut out = Served::SpellEnded;
    loop {
        let now = Instant::now();
        if now >= until || shared.stop.load(Ordering::Acquire) {
            break;
        }
        let more = {
            let mut g = shared.lock();
            let Some(core) = g.as_mut() else { break };
            let woken_before = shared.handovers.load(Ordering::Relaxed);
            let more = core.poll(now);
            let woke_others = shared.handovers.load(Ordering::Relaxed) != woken_before;
            // Sleeping, this thread waits in poll(2), not parked: its socket's wake-ups go to
            // the server bell it sleeps on (a spinner needs none).
            let w = match driver {
                Driver::BusyPoll => parked,
                Driver::Sleep => &shared.server_waker,
            };
            if let Some(r) = f(core, w) {
                out = Served::Ready(r);
                break;
            }
            if woke_others && driver == Driver::Sleep {
                out = Served::HandedOver;
                break;
            }
            more
        };
        if more {
            continue;
        }
        match driver {
            // The lock is free between passes, for the other threads; the CPU is offered to
            // whatever else is runnable on it.
            Driver::BusyPoll => thread::yield_now(),
            Driver::Sleep => shared.server_bell.sleep(shared.xsk_fd, until - now),
        }
    }
    // No bell for the shard here: it checks within `shard_watch` whether someone still serves
    // (ringing it on every return would put it on the CPU right when this thread sends its
    // response).
    shared.serving.store(false, Ordering::Release);
    out
}

/// Runs `f` under the core lock until it returns `Some`, serving the queue (when `serve`
/// allows) or parking in between. `f` registers the waker it is given with the sockets it
/// waits on. Returns `TimedOut` at `deadline`, and `NotConnected` (saying why, when known) once
/// the stack stops.
pub(crate) fn block_on<T>(
    shared: &Shared,
    deadline: Option<Instant>,
    serve: Serve,
    mut f: impl FnMut(&mut Core, &Waker) -> Option<io::Result<T>>,
) -> io::Result<T> {
    let parked = parked_waker(shared.id, &shared.handovers);
    let mut may_serve = serve == Serve::Yes;
    loop {
        let driver = {
            let mut g = shared.lock();
            let core = g.as_mut().ok_or_else(|| shared.stopped())?;
            if let Some(r) = f(core, &parked) {
                return r;
            }
            Driver::of(core)
        };
        if may_serve {
            match serve_queue(shared, deadline, driver, &mut f, &parked) {
                Served::Ready(r) => return r,
                Served::SpellEnded
                    if !shared.stop.load(Ordering::Acquire)
                        && !shared.closing.load(Ordering::Acquire)
                        && deadline.is_none_or(|d| Instant::now() < d) =>
                {
                    continue
                }
                Served::HandedOver => {
                    // Register this thread's parked waker again (serving registered the
                    // server bell's), then park.
                    may_serve = false;
                    continue;
                }
                Served::SpellEnded | Served::Taken => {}
            }
        }
        may_serve = serve == Serve::Yes;
        if shared.stop.load(Ordering::Acquire) || shared.closing.load(Ordering::Acquire) {
            return Err(shared.stopped());
        }
        match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
                }
                thread::park_timeout((d - now).min(TIMING.park_nap));
            }
            None => thread::park_timeout(TIMING.park_nap),
        }
    }
}

/// The shard thread: serves the queue whenever no application thread does, keeps time, and
/// stops the shard if its interface or the steering program goes away.
pub(crate) fn shard_thread(shared: Arc<Shared>, driver: Driver) {
    let mut last_check = Instant::now();
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        if last_check.elapsed() >= TIMING.attachment_check {
            last_check = Instant::now();
            let lost = shared.lock().as_ref().and_then(Core::lost_attachment);
            if let Some(why) = lost {
                tracing::error!("{why}");
                shared.fail(why);
                shared.close_all(true, true);
                break;
            }
        }
        let (progress, next_timer) = {
            let mut g = shared.lock();
            let Some(core) = g.as_mut() else { break };
            let progress = core.poll(Instant::now());
            (progress, core.next_timer(Instant::now()))
        };
        // While an application thread serves the queue (blocked in a call), the shard only
        // keeps time: spinning too would fight it for the CPU, and sleeping on the XSK would
        // wake the shard for every packet that thread already handles.
        let app_serving = shared.serving.load(Ordering::Acquire);
        if progress || (driver == Driver::BusyPoll && !app_serving) {
            if driver == Driver::BusyPoll {
                thread::yield_now();
            }
            continue;
        }
        let d = next_timer.map_or(TIMING.shard_nap, |d| d.min(TIMING.shard_nap));
        if d.is_zero() {
            continue;
        }
        if app_serving {
            shared.shard_bell.sleep(None, d.min(TIMING.shard_watch));
        } else {
            // The XSK (packets), the bell (application calls) or smoltcp's next timer, whichever
            // comes first; the ceiling keeps housekeeping going.
            shared.shard_bell.sleep(Some(shared.xsk_fd), d);
        }
    }
}
