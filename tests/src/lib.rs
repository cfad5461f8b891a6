//! The netns/veth testbed: one guard that builds a network namespace and a veth pair whose host
//! end stays in the root namespace (where the loader, bpffs pins and the stack live) and whose
//! peer lives in the namespace, with its traffic steered onto a chosen RX queue of the host end.
//! Drop removes everything, also when a test panics.

pub mod netns;
mod testbed;
pub mod xsk;

pub use testbed::{require_root, run, run_ok, Testbed, TestbedOptions};

use std::path::PathBuf;

/// Path of a workspace binary (`xdp-loader`, demos), built by `cargo build --bins` before the
/// tests run (`make test` does).
pub fn workspace_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let p = target.join(profile).join(name);
    assert!(
        p.exists(),
        "{} not found: build the workspace binaries first (`cargo build --workspace --bins`; `make test` does)",
        p.display()
    );
    p
}

/// What a CLI run printed and how it ended.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `xdp-loader` with `args`.
pub fn loader(args: &[&str]) -> CliRun {
    loader_env(args, &[])
}

/// Runs `xdp-loader` with `args` and extra environment variables.
pub fn loader_env(args: &[&str], env: &[(&str, &str)]) -> CliRun {
    let o = std::process::Command::new(workspace_bin("xdp-loader"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("xdp-loader runs");
    CliRun {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs `xdp-loader` and panics unless it exits 0.
pub fn loader_ok(args: &[&str]) -> String {
    let r = loader(args);
    assert_eq!(
        r.code,
        0,
        "xdp-loader {} failed: {}{}",
        args.join(" "),
        r.stdout,
        r.stderr
    );
    r.stdout
}
