//! The per-queue counters the program keeps in a per-CPU map, summed over CPUs.
use serde::Serialize;

/// Counters of one RX queue. `seen = redirected + passed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounters {
    /// Frames the program looked at on this queue.
    pub seen: u64,
    /// Frames that matched a steering rule.
    pub matched: u64,
    /// Frames handed to the AF_XDP socket of this queue.
    pub redirected: u64,
    /// Frames handed to the kernel.
    pub passed: u64,
    /// Matched a rule but no XSK serves this queue: the flow landed on the wrong queue, or the
    /// service is not running. These frames went to the kernel.
    pub no_xsk: u64,
    /// Truncated or invalid Ethernet/VLAN/IPv4/TCP/UDP headers (passed to the kernel).
    pub malformed: u64,
    /// IPv4 fragments, never steered (passed to the kernel, which reassembles).
    pub fragments: u64,
    /// Frames that are not IPv4 (ARP, IPv6, ...), passed to the kernel.
    pub not_ipv4: u64,
    /// Matched a rule but VLAN-tagged: the stack handles untagged frames only, so the kernel
    /// gets them.
    pub vlan: u64,
}

/// Number of u64 fields in `struct queue_counters`.
const FIELDS: usize = 9;

impl QueueCounters {
    /// Sums the per-CPU values of one map entry; short or odd-sized values are ignored.
    pub(crate) fn sum_per_cpu(values: &[Vec<u8>]) -> Self {
        let mut f = [0u64; FIELDS];
        for v in values {
            for (i, chunk) in v.chunks_exact(8).take(FIELDS).enumerate() {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                f[i] = f[i].wrapping_add(u64::from_ne_bytes(b));
            }
        }
        Self {
            seen: f[0],
            matched: f[1],
            redirected: f[2],
            passed: f[3],
            no_xsk: f[4],
            malformed: f[5],
            fragments: f[6],
            not_ipv4: f[7],
            vlan: f[8],
        }
    }

    /// `(name, value)` pairs in a stable order, for tables and rates.
    pub fn fields(&self) -> [(&'static str, u64); FIELDS] {
        [
            ("seen", self.seen),
            ("matched", self.matched),
            ("redirected", self.redirected),
            ("passed", self.passed),
            ("no_xsk", self.no_xsk),
            ("malformed", self.malformed),
            ("fragments", self.fragments),
            ("not_ipv4", self.not_ipv4),
            ("vlan", self.vlan),
        ]
    }

    /// Field-wise `self - earlier`, for rates.
    pub fn delta(&self, earlier: &Self) -> Self {
        Self {
            seen: self.seen.wrapping_sub(earlier.seen),
            matched: self.matched.wrapping_sub(earlier.matched),
            redirected: self.redirected.wrapping_sub(earlier.redirected),
            passed: self.passed.wrapping_sub(earlier.passed),
            no_xsk: self.no_xsk.wrapping_sub(earlier.no_xsk),
            malformed: self.malformed.wrapping_sub(earlier.malformed),
            fragments: self.fragments.wrapping_sub(earlier.fragments),
            not_ipv4: self.not_ipv4.wrapping_sub(earlier.not_ipv4),
            vlan: self.vlan.wrapping_sub(earlier.vlan),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(vals: [u64; FIELDS]) -> Vec<u8> {
        vals.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    #[test]
    fn sums_over_cpus() {
        let c = QueueCounters::sum_per_cpu(&[
            cpu([3, 2, 1, 2, 1, 0, 0, 0, 0]),
            cpu([5, 4, 4, 1, 0, 1, 0, 0, 0]),
        ]);
        assert_eq!(c.seen, 8);
        assert_eq!(c.matched, 6);
        assert_eq!(c.redirected, 5);
        assert_eq!(c.passed, 3);
        assert_eq!(c.no_xsk, 1);
        assert_eq!(c.malformed, 1);
        assert_eq!(c.delta(&c), QueueCounters::default());
    }

    #[test]
    fn short_values_do_not_panic() {
        let c = QueueCounters::sum_per_cpu(&[vec![1, 0, 0], cpu([1; FIELDS])]);
        assert_eq!(c.seen, 1);
    }
}
