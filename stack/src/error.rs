//! Errors of the stack, one enum for setup and one conversion into io::Error for sockets.
use std::io;

/// Why the stack could not start or a socket operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A configuration value out of range, or a port 0.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The interface does not exist.
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    /// The interface has no IPv4 address to serve on.
    #[error("interface {0} has no IPv4 address (shared-IP mode serves on the kernel's address)")]
    NoAddress(String),
    /// The steering program is not attached, or its maps cannot be opened.
    #[error(transparent)]
    Steering(#[from] steer_bpf::SteerError),
    /// The steering program serves another queue.
    #[error("the steering program is attached to queue {attached} of {iface}, not {wanted}; run `xdp-loader attach {iface} --queue {wanted}`")]
    WrongQueue {
        /// The interface.
        iface: String,
        /// The queue the program serves.
        attached: u32,
        /// The queue asked for.
        wanted: u32,
    },
    /// The pins belong to an earlier interface of the same name.
    #[error("the pinned steering maps belong to interface index {pinned}, not {iface} (index {ifindex})")]
    ForeignPins {
        /// The interface.
        iface: String,
        /// Its index now.
        ifindex: u32,
        /// The index recorded in the pins.
        pinned: u32,
    },
    /// Another AF_XDP socket serves the queue.
    #[error("queue {queue} of {iface} is already served by another AF_XDP socket (another service running?)")]
    QueueBusy {
        /// The interface.
        iface: String,
        /// The queue.
        queue: u32,
    },
    /// Creating or binding the AF_XDP socket failed.
    #[error("AF_XDP: {0}")]
    Xsk(String),
    /// A system call failed while doing `what`.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        source: io::Error,
    },
    /// The port is already listened on or bound.
    #[error("port {0} is already in use")]
    PortInUse(u16),
    /// Every port of the ephemeral range is in use.
    #[error("no free ephemeral port in {0}..={1}")]
    NoEphemeralPort(u16, u16),
    /// The stack has stopped.
    #[error("the stack has stopped")]
    Stopped,
}

/// Why a shard stopped on its own (it reports it through `Stack::failure` and every call).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The interface went away.
    #[error("interface {0} is gone")]
    InterfaceGone(String),
    /// The steering program was detached (its pins are gone).
    #[error("the steering program was detached from {iface} (its pins are gone); re-attach with `xdp-loader attach {iface} --queue {queue}` and restart the service")]
    Detached {
        /// The interface.
        iface: String,
        /// The queue the shard served.
        queue: u32,
    },
    /// The shard thread panicked (a bug: please report it with the message).
    #[error("the shard thread panicked: {0}")]
    Panicked(String),
}

impl StackError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

impl From<StackError> for io::Error {
    fn from(e: StackError) -> Self {
        let kind = match &e {
            StackError::PortInUse(_) => io::ErrorKind::AddrInUse,
            StackError::NoEphemeralPort(..) => io::ErrorKind::AddrNotAvailable,
            StackError::Stopped => io::ErrorKind::NotConnected,
            StackError::Config(_) => io::ErrorKind::InvalidInput,
            StackError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
