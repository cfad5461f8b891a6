//! Every interval the runtime waits on, in one place, each with why it has the value it has.
use std::time::Duration;

/// The runtime's timings (how long threads sleep, spin or wait before they look again).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeTiming {
    /// The longest the shard thread sleeps with nobody else serving: housekeeping (handshake,
    /// idle and orphan timeouts) runs at least this often.
    pub shard_nap: Duration,
    /// The longest the shard thread sleeps while an application thread serves the queue: it
    /// takes the queue back within this of the last serving thread leaving.
    pub shard_watch: Duration,
    /// How often the shard checks that its interface and the steering program are still there.
    pub attachment_check: Duration,
    /// Maintenance (timeouts, freeing orphans, state scans) runs at `maintenance_base` plus
    /// `maintenance_per_conn` per connection: it walks every connection, so its cost per
    /// request must not grow with the number of idle ones.
    pub maintenance_base: Duration,
    pub maintenance_per_conn: Duration,
    /// A serving application thread's spell, sleeping / spinning: bounded so the stop flag and
    /// wake-ups that come without a packet (a timer, another thread on this socket) are seen.
    pub spell_sleeping: Duration,
    pub spell_spinning: Duration,
    /// A parked application thread's nap: wakers are reliable, the nap only bounds how long a
    /// lost wake-up (or the stop flag) could go unseen. Short naps cost dearly with many
    /// blocked threads (10 000 idle connections napping every 50 ms is 200 000 wake-ups a second).
    pub park_nap: Duration,
    /// After an application thread sends, a smoltcp timer due sooner than this makes the shard
    /// look at once (rather than at its next timed wake-up).
    pub timer_soon: Duration,
    /// A dropped UDP socket's queued datagrams get this long to leave before it is freed.
    pub udp_drain: Duration,
    /// At shutdown, the FINs of closing connections get this long to leave.
    pub shutdown_grace: Duration,
}

/// The timings in force.
pub(crate) const TIMING: ServeTiming = ServeTiming {
    shard_nap: Duration::from_millis(10),
    shard_watch: Duration::from_millis(5),
    attachment_check: Duration::from_secs(1),
    maintenance_base: Duration::from_millis(10),
    maintenance_per_conn: Duration::from_micros(10),
    spell_sleeping: Duration::from_millis(20),
    spell_spinning: Duration::from_millis(10),
    park_nap: Duration::from_secs(1),
    timer_soon: Duration::from_millis(10),
    udp_drain: Duration::from_secs(1),
    shutdown_grace: Duration::from_millis(20),
};
