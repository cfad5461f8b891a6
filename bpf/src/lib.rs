//! The XDP steering program and everything needed to drive it from Rust.
//!
//! The program (`src/bpf/steer.bpf.c`) steers the packets of chosen flows on one RX queue into
//! an AF_XDP socket and hands everything else to the kernel. This crate loads and attaches it,
//! pins its maps per interface on bpffs, edits steering rules and reads the per-queue counters.
//! Both `xdp-loader` and the `stack` crate use it; neither talks to libbpf directly.
#![deny(unsafe_code)]

mod attach;
mod counters;
mod error;
mod maps;
mod pins;
mod rule;
mod skel;
mod steering;
pub mod sys;

pub use attach::{AttachOptions, AttachReport, XdpMode};
pub use counters::QueueCounters;
pub use error::SteerError;
pub use pins::{PinDir, DEFAULT_PIN_ROOT, PIN_ROOT_ENV};
pub use rule::{Protocol, RuleOwner, RuleParseError, SteeringRule};
pub use steering::{RuleEntry, Steering, SteeringStatus, XskEntry};

/// Queues the XSKMAP and the counter map have room for (`STEER_MAX_QUEUES` in steer.h).
pub const MAX_QUEUES: u32 = 64;
/// Rules the rule map has room for (`STEER_MAX_RULES` in steer.h).
pub const MAX_RULES: u32 = 4096;
