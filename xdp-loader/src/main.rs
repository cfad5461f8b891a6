//! `xdp-loader`: attach the steering program to one RX queue of an interface, inspect it,
//! edit its rules, read its counters and take it all back.
#![deny(unsafe_code)]

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;
use steer_bpf::SteerError;

use crate::cli::{Cli, Cmd};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdp-loader: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
enum CliError {
    Steer(SteerError),
    Usage(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Steer(e) => write!(f, "{e}"),
            CliError::Usage(s) => f.write_str(s),
        }
    }
}

impl From<SteerError> for CliError {
    fn from(e: SteerError) -> Self {
        CliError::Steer(e)
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let root = cli.pin_root.as_deref();
    match cli.cmd {
        Cmd::Attach(a) => cmd::attach::attach(a, root),
        Cmd::Detach { iface, force } => cmd::attach::detach(&iface, root, force),
        Cmd::Status { iface, json } => cmd::status::status(iface, root, json),
        Cmd::Stats {
            iface,
            connections: true,
            json,
            ..
        } => cmd::stats::connections(&iface, json),
        Cmd::Stats {
            iface,
            interval,
            count,
            all,
            json,
            ..
        } => cmd::stats::stats(&iface, root, interval, count, all, json),
        Cmd::Capture {
            iface,
            queue,
            file,
            count,
            snaplen,
            stop,
        } => cmd::capture::capture(&iface, queue, file, count, snaplen, stop),
        Cmd::Rule { op } => cmd::rule::rule(op, root),
    }
}
