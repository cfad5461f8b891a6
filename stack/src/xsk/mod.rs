//! UMEM frame accounting (pure; the socket itself is in `sys::xsk`).
mod ledger;

pub use ledger::{FrameCounts, FrameLedger, Owner};
