//! The one module that talks to the OS: the AF_XDP socket and its rings (xsk-rs/libxdp),
//! netlink (addresses, routes, neighbours), kernel port reservations and the wakeup fd.
//! Every unsafe block of the crate lives here, each with a `// SAFETY:` comment.
#![allow(unsafe_code)]

pub mod netlink;
pub mod ports;
pub mod wake;
pub mod xsk;
