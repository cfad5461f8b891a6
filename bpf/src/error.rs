//! Errors of the control path, each phrased for the operator who will read it.
use std::io;

/// What can go wrong while attaching, inspecting or editing the steering program.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("queue {queue} out of range: {iface} has {count} RX queue(s) (0..={max})", max = count.saturating_sub(1))]
    QueueOutOfRange {
        iface: String,
        queue: u32,
        count: u32,
    },
    #[error("queue {queue} out of range: the program supports queues 0..{max}")]
    QueueTooHigh { queue: u32, max: u32 },
    #[error("{iface} already has a foreign XDP program attached (id {prog_id}, name {name:?}); use --force to replace it")]
    ForeignProgram {
        iface: String,
        prog_id: u32,
        name: String,
    },
    #[error("nothing is attached to {0} (no steering program and no pins)")]
    NotAttached(String),
    #[error("the steering program is not attached to {iface}: no pins under {pin_dir}; run `xdp-loader attach {iface} --queue Q` first")]
    NoPins { iface: String, pin_dir: String },
    #[error("missing privilege: {0}")]
    Privilege(String),
    #[error("rule {0} is already present")]
    RuleExists(String),
    #[error("rule {0} is not present")]
    RuleMissing(String),
    #[error("the rule map is full ({0} rules)")]
    RulesFull(u32),
    #[error("native XDP is not supported on {iface}: {source}")]
    NativeUnsupported { iface: String, source: io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        source: libbpf_rs::Error,
    },
}

impl SteerError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
    pub(crate) fn bpf(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> Self {
        let what = what.into();
        move |source| Self::Bpf { what, source }
    }
}
