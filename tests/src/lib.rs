//! The netns/veth testbed: one guard that builds a network namespace and a veth pair whose host
//! end stays in the root namespace (where the loader, bpffs pins and the stack live) and whose
//! peer lives in the namespace, with its traffic steered onto a chosen RX queue of the host end.
//! Drop removes everything, also when a test panics.

pub mod conformance;
pub mod frames;
pub mod impair;
pub mod netns;
pub mod raw;
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

/// A demo service started for a test; Drop kills it (by its own PID) and reaps it.
pub struct Service {
    child: std::process::Child,
    pub name: String,
}

impl Service {
    /// Starts workspace binary `name` with `args` and waits until it prints its "serving" line.
    pub fn start(name: &str, args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(workspace_bin(name))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let mut svc = Service {
            child,
            name: name.to_string(),
        };
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(line) if line.contains("serving") => svc,
            other => {
                let _ = svc.child.kill();
                let out = svc.child.wait_with_output_ref();
                panic!("{name} did not start: {other:?}; stderr: {out}");
            }
        }
    }

    /// Waits for the process to end and returns its exit code and stderr.
    pub fn finish(&mut self) -> (Option<i32>, String) {
        let code = self.child.wait().ok().and_then(|s| s.code());
        (code, self.child.wait_with_output_ref())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

trait WaitRef {
    fn wait_with_output_ref(&mut self) -> String;
}

impl WaitRef for std::process::Child {
    fn wait_with_output_ref(&mut self) -> String {
        use std::io::Read;
        let _ = self.wait();
        let mut s = String::new();
        if let Some(e) = self.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Service {
    /// SIGKILL: no clean shutdown (its rules and control socket stay behind).
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    /// A clean stop (SIGTERM, as an operator would), then SIGKILL if it has not exited in 3 s.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signals our own child by its PID, which we have not reaped yet.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 5 s) until every UMEM frame of `stack` is back in the free pool or the fill
/// ring, and panics naming where the rest are otherwise.
pub fn assert_frames_home(stack: &xsk_stack::Stack) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (f, total) = stack.frames().expect("stack running");
        if f.stack == 0 && f.tx == 0 {
            assert_eq!(f.free + f.kernel, total, "{f:?}");
            // The ledger agrees with itself; now with the frames it counts.
            if let Some(Err(e)) = stack.audit_frames() {
                panic!("frame ledger: {e}");
            }
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "frames not all home: {f:?} of {total}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The MAC address of an interface in the calling thread's namespace (from sysfs).
pub fn mac_of(iface: &str) -> [u8; 6] {
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .expect("interface exists");
    let v: Vec<u8> = s
        .trim()
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).expect("hex"))
        .collect();
    v.try_into().expect("6 bytes")
}
