//! Errors of the stack, one enum for setup and one conversion into io::Error for sockets.
use std::io;

/// Why the stack could not start or a socket operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("interface {0} has no IPv4 address (shared-IP mode serves on the kernel's address)")]
    NoAddress(String),
    #[error(transparent)]
    Steering(#[from] steer_bpf::SteerError),
    #[error("the steering program is attached to queue {attached} of {iface}, not {wanted}; run `xdp-loader attach {iface} --queue {wanted}`")]
    WrongQueue {
        iface: String,
        attached: u32,
        wanted: u32,
    },
    #[error("the pinned steering maps belong to interface index {pinned}, not {iface} (index {ifindex})")]
    ForeignPins {
        iface: String,
        ifindex: u32,
        pinned: u32,
    },
    #[error("queue {queue} of {iface} is already served by another AF_XDP socket (another service running?)")]
    QueueBusy { iface: String, queue: u32 },
    #[error("AF_XDP: {0}")]
    Xsk(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("port {0} is already in use")]
    PortInUse(u16),
    #[error("no free ephemeral port in {0}..={1}")]
    NoEphemeralPort(u16, u16),
    #[error("the stack has stopped")]
    Stopped,
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
