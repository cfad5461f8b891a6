//! A userspace TCP/IP stack over an AF_XDP socket on one NIC queue.
//!
//! The steering program (see the `steer-bpf` crate and `xdp-loader`) redirects the chosen flows
//! of one RX queue to an AF_XDP socket; this crate polls that socket and serves TCP and UDP with
//! smoltcp, on the interface's own IPv4 address (shared-IP mode: the kernel keeps ARP, routes
//! and every other flow). Application code uses std::net-shaped types:
//!
//! ```no_run
//! use std::io::{Read, Write};
//! let stack = xsk_stack::Stack::builder("eth0", 3).start()?;
//! let listener = stack.tcp_listen(8080)?;
//! let (mut conn, _peer) = listener.accept()?;
//! let mut buf = [0u8; 1024];
//! let n = conn.read(&mut buf)?;
//! conn.write_all(&buf[..n])?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod accept;
mod capture;
mod config;
pub mod control;
mod device;
mod error;
mod events;
mod faults;
#[cfg(test)]
mod ingress_tests;
mod l2;
mod ports;
mod serve;
mod shard;
mod shared;
mod stack;
mod stats;
mod sys;
mod tcp;
mod timing;
mod udp;
mod wake;
mod wire;
pub mod xsk;

pub use capture::{CaptureSpec, CaptureStatus};
pub use config::{BindMode, Config, Congestion};
pub use device::DeviceCounters;
pub use error::{Failure, StackError};
pub use events::ConnEvent;
pub use faults::{FaultCounters, FaultPlan};
pub use smoltcp::socket::tcp::State as TcpState;
pub use stack::{Stack, StackBuilder, StatsSource};
pub use stats::{
    MemoryStats, RuntimeCounters, StackStats, TcpConnInfo, TcpDefenceCounters, TcpRecoveryCounters,
    TcpStateCounts,
};
pub use sys::xsk::KernelXskStats;
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;
