//! Who owns each UMEM frame. Every frame is in exactly one place at a time; the ledger counts
//! them per place and checks that the counts always add up to the UMEM size.

/// The places a frame can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// In our free pool, ready for the fill ring or for a transmit.
    Free,
    /// Given to the kernel through the fill ring (or sitting in the rx ring, filled).
    Kernel,
    /// Taken from the rx ring and being processed by the stack.
    Stack,
    /// Written by the stack and queued for the tx ring, or submitted and not yet completed.
    Tx,
}

/// Frame counts per owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FrameCounts {
    /// In the free pool.
    pub free: u32,
    /// With the kernel: the fill and rx rings.
    pub kernel: u32,
    /// Held by the stack (a received frame being processed).
    pub stack: u32,
    /// On the tx or completion ring.
    pub tx: u32,
}

impl FrameCounts {
    /// All frames, wherever they are.
    pub fn total(&self) -> u32 {
        self.free + self.kernel + self.stack + self.tx
    }
}

/// Counts frame moves; a move from an owner that has no frame is a bug and panics in debug builds
/// (and saturates in release, so the counters never wrap).
#[derive(Debug, Clone)]
pub struct FrameLedger {
    total: u32,
    counts: FrameCounts,
}

impl FrameLedger {
    /// All `total` frames start in the free pool.
    pub fn new(total: u32) -> Self {
        Self {
            total,
            counts: FrameCounts {
                free: total,
                ..Default::default()
            },
        }
    }

    fn slot(&mut self, o: Owner) -> &mut u32 {
        match o {
            Owner::Free => &mut self.counts.free,
            Owner::Kernel => &mut self.counts.kernel,
            Owner::Stack => &mut self.counts.stack,
            Owner::Tx => &mut self.counts.tx,
        }
    }

    /// Moves `n` frames from `from` to `to`.
    pub fn moved(&mut self, from: Owner, to: Owner, n: u32) {
        let src = self.slot(from);
        debug_assert!(
            *src >= n,
            "frame ledger: moving {n} frames out of {from:?}, which has {src}"
        );
        *src = src.saturating_sub(n);
        *self.slot(to) += n;
        debug_assert!(
            self.conserved(),
            "frame ledger out of balance: {:?} != {}",
            self.counts,
            self.total
        );
    }

    /// Frames by owner.
    pub fn counts(&self) -> FrameCounts {
        self.counts
    }

    /// All frames, wherever they are.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Every frame is accounted for exactly once.
    pub fn conserved(&self) -> bool {
        self.counts.total() == self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated kernel: frames given to it through the fill ring come back as received
    /// packets, frames submitted for transmit come back as completions, in any interleaving.
    #[test]
    fn conservation_holds_through_a_simulated_kernel() {
        let mut l = FrameLedger::new(64);
        let mut kernel_fill = 0u32;
        let mut rx_ready = 0u32;
        let mut tx_inflight = 0u32;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..100_000 {
            match next() % 6 {
                0 => {
                    let n = (next() % 8) as u32 % (l.counts().free + 1);
                    l.moved(Owner::Free, Owner::Kernel, n);
                    kernel_fill += n;
                }
                1 => {
                    let n = (next() % 4) as u32 % (kernel_fill + 1);
                    kernel_fill -= n;
                    rx_ready += n;
                }
                2 => {
                    let n = (next() % 8) as u32 % (rx_ready + 1);
                    rx_ready -= n;
                    l.moved(Owner::Kernel, Owner::Stack, n);
                }
                3 => {
                    let n = (next() % 8) as u32 % (l.counts().stack + 1);
                    l.moved(Owner::Stack, Owner::Free, n);
                }
                4 => {
                    let n = (next() % 4) as u32 % (l.counts().free + 1);
                    l.moved(Owner::Free, Owner::Tx, n);
                    tx_inflight += n;
                }
                _ => {
                    let n = (next() % 4) as u32 % (tx_inflight + 1);
                    tx_inflight -= n;
                    l.moved(Owner::Tx, Owner::Free, n);
                }
            }
            assert!(l.conserved());
            assert_eq!(l.counts().kernel, kernel_fill + rx_ready);
            assert_eq!(l.counts().tx, tx_inflight);
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "frame ledger")]
    fn moving_frames_that_are_not_there_is_caught() {
        let mut l = FrameLedger::new(4);
        l.moved(Owner::Stack, Owner::Free, 1);
    }
}
