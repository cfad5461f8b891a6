//! Names of the steering program's maps, as pinned in an interface's pin directory.

/// The XSKMAP: the AF_XDP socket of each queue.
pub(crate) const XSKS: &str = "xsks";
/// The steering rules and who owns each.
pub(crate) const RULES: &str = "rules";
/// Queue, mode and ifindex recorded at attach time.
pub(crate) const CONFIG: &str = "config";
/// The per-queue, per-CPU counters.
pub(crate) const COUNTERS: &str = "counters";
/// Every map, as pinned inside a [`PinDir`](crate::PinDir).
pub(crate) const ALL: [&str; 4] = [XSKS, RULES, CONFIG, COUNTERS];
