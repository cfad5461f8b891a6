//! A packetdrill-style TCP conformance harness: a raw TCP peer in the testbed namespace sends
//! hand-made segments from an address no kernel owns and reads the replies with an AF_PACKET
//! socket; every case runs first against the Linux kernel (the reference) and then against the
//! stack, on the same testbed.
//!
//! - The peer's address is the testbed subnet's `.77`. The host reaches it through a permanent
//!   neighbour entry (the kernel and the stack both resolve through the kernel's table); the peer
//!   kernel drops frames for an address it does not own, so only our code answers (checked by the
//!   `peer_kernel_stays_silent` case, which looks for RSTs leaving the peer that we did not send).
//! - Targets: [`Target::Kernel`] is a `std::net::TcpListener` on `host_ip:KERNEL_PORT` (not
//!   steered); [`Target::Stack`] is `stack.tcp_listen(STACK_PORT)` with the XDP program on queue 3.
//! - A case is a `fn(&mut Ctx) -> Result<(), String>`: `Err` says what differed. After
//!   [`Ctx::handshake`] the case also holds the server side of the connection
//!   ([`ServerConn`]), accepted on a helper thread, to make the server application read, write,
//!   close or abort.
//! - [`run_family`] runs a table of cases against both targets and prints
//!   `case | RFC | kernel | stack`; it panics on any unexpected FAIL (a kernel failure means the
//!   expectation itself is wrong).
//!
//! `CONFORMANCE_TRACE=1` prints every case's exchange (failures always print their last 40 lines).
//!
//! Every wait is bounded. The host end gets TX checksum offload, TSO and GSO turned off (the
//! testbed removes the interface, and with it the setting): the kernel then sends real segments
//! with computed checksums, as over a real NIC, and the parser checks the IPv4 and TCP checksums
//! of everything it accepts (a frame with a bad checksum counts as not received).
#![allow(unsafe_code)]

use std::{
    collections::VecDeque,
    fmt,
    io::{self, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicU16, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{frames::checksum, loader_ok, netns::in_netns, raw::RawSender, Testbed};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// Port of the kernel listener (not steered to the stack).
pub const KERNEL_PORT: u16 = 8080;
/// Port of the stack listener (steered to queue 3).
pub const STACK_PORT: u16 = 8090;

mod ctx;
mod peer;
mod run;
mod segment;
mod server;

pub use ctx::*;
pub use peer::*;
pub use run::*;
pub use segment::*;
pub use server::*;
