//! The subcommands, one module each (`detach` lives with `attach`).
pub(crate) mod attach;
pub(crate) mod capture;
pub(crate) mod rule;
pub(crate) mod stats;
pub(crate) mod status;
