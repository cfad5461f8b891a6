//! A seeded fault injector in the device layer, for tests of loss, duplication, reordering and
//! corruption in either direction (the stack's own transmit path bypasses qdiscs, so tc cannot
//! impair it). Off unless a [`FaultPlan`] is given.
use serde::Serialize;

/// What to do to frames, in parts per million, and in which direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Seed of the generator, so a failing run reproduces.
    pub seed: u64,
    /// Frames dropped, per million.
    pub drop_ppm: u32,
    /// Frames duplicated, per million.
    pub duplicate_ppm: u32,
    /// Held back behind the next frames (released at the end of the batch at the latest).
    pub reorder_ppm: u32,
    /// One byte of the packet flipped (checksums then fail at the receiver).
    pub corrupt_ppm: u32,
    /// Apply to received frames.
    pub on_receive: bool,
    /// Apply to transmitted frames.
    pub on_transmit: bool,
}

/// What the injector did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FaultCounters {
    /// Frames dropped.
    pub dropped: u64,
    /// Frames duplicated.
    pub duplicated: u64,
    /// Frames delayed behind later ones.
    pub reordered: u64,
    /// Frames with a flipped payload byte.
    pub corrupted: u64,
}

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Drop,
    Duplicate,
    Reorder,
    Corrupt,
}

/// The injector's state: the plan and a xorshift generator (deterministic per seed).
#[derive(Debug, Clone)]
pub struct Faults {
    pub plan: FaultPlan,
    state: u64,
    pub counters: FaultCounters,
}

impl Faults {
    pub fn new(plan: FaultPlan) -> Self {
        Self {
            plan,
            state: plan.seed | 1,
            counters: FaultCounters::default(),
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// A byte position to corrupt in a frame of `len` bytes: past the Ethernet and IPv4
    /// headers, so the damage is found by an L4 checksum (and the frame still gets there).
    pub fn corrupt_at(&mut self, len: usize) -> Option<usize> {
        (len > 34).then(|| 34 + (self.next() as usize) % (len - 34))
    }

    pub fn decide(&mut self) -> Fault {
        let r = (self.next() % 1_000_000) as u32;
        let p = self.plan;
        let mut edge = p.drop_ppm;
        if r < edge {
            self.counters.dropped += 1;
            return Fault::Drop;
        }
        edge += p.duplicate_ppm;
        if r < edge {
            self.counters.duplicated += 1;
            return Fault::Duplicate;
        }
        edge += p.reorder_ppm;
        if r < edge {
            self.counters.reordered += 1;
            return Fault::Reorder;
        }
        edge += p.corrupt_ppm;
        if r < edge {
            self.counters.corrupted += 1;
            return Fault::Corrupt;
        }
        Fault::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_follow_the_plan_and_the_seed_repeats() {
        let plan = FaultPlan {
            seed: 42,
            drop_ppm: 50_000,
            duplicate_ppm: 10_000,
            reorder_ppm: 20_000,
            corrupt_ppm: 1_000,
            ..Default::default()
        };
        let mut a = Faults::new(plan);
        let mut b = Faults::new(plan);
        for _ in 0..1_000_000 {
            assert_eq!(a.decide(), b.decide());
        }
        let c = a.counters;
        let near =
            |got: u64, ppm: u64| (got as i64 - ppm as i64).abs() < (ppm as i64 / 10).max(100);
        assert!(
            near(c.dropped, 50_000)
                && near(c.duplicated, 10_000)
                && near(c.reordered, 20_000)
                && near(c.corrupted, 1_000),
            "{c:?}"
        );
    }
}
