//! The XDP steering program and everything needed to drive it from Rust.
//!
//! The program (`src/bpf/steer.bpf.c`) steers the packets of chosen flows on one RX queue into
//! an AF_XDP socket and hands everything else to the kernel. This crate loads and attaches it,
//! pins its maps per interface on bpffs, edits steering rules and reads the per-queue counters.
//! Both `xdp-loader` and the `stack` crate use it; neither talks to libbpf directly.
#![deny(unsafe_code)]

mod counters;
mod error;
mod pins;
mod program;
mod rule;
mod skel;
pub mod sys;

pub use counters::QueueCounters;
pub use error::SteerError;
pub use pins::{PinDir, DEFAULT_PIN_ROOT, PIN_ROOT_ENV};
pub use program::{AttachOptions, AttachReport, Steering, SteeringStatus, XdpMode};
pub use program::{RuleEntry, XskEntry};
pub use rule::{Protocol, RuleOwner, RuleParseError, SteeringRule};

/// Queues the XSKMAP and the counter map have room for (`STEER_MAX_QUEUES` in steer.h).
pub const MAX_QUEUES: u32 = 64;
/// Rules the rule map has room for (`STEER_MAX_RULES` in steer.h).
pub const MAX_RULES: u32 = 4096;
