//! Processes the suite starts: a server pinned to a CPU whose counters are read through SIGUSR1,
//! and clients run to completion in the peer namespace. Drop stops a server by its own PID.
use std::{
    io::BufRead,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

/// A server started for a scenario.
pub struct Server {
    child: Child,
    lines: Receiver<String>,
    name: String,
}

impl Server {
    /// Starts `bin args` pinned to `cpu` and waits for its "serving" line.
    pub fn start(cpu: usize, bin: &str, args: &[String]) -> Result<Self, String> {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &cpu.to_string(), bin]).args(args);
        die_with_parent(&mut cmd);
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {bin}: {e}"))?;
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let name = std::path::Path::new(bin)
            .file_name()
            .map_or(bin.to_string(), |n| n.to_string_lossy().into_owned());
        let mut s = Server { child, lines, name };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match s.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.contains("serving") || l.contains("to block on socket") => return Ok(s),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(st)) = s.child.try_wait() {
                        let e = s.stderr();
                        return Err(format!("{} exited ({st}): {e}", s.name));
                    }
                }
                Err(_) => {
                    let e = s.stderr();
                    return Err(format!("{} did not start: {e}", s.name));
                }
            }
        }
    }

    fn stderr(&mut self) -> String {
        use std::io::Read;
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut s = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// The server's cumulative counters (its SIGUSR1 report line).
    pub fn report(&mut self) -> Result<serde_json::Value, String> {
        while self.lines.try_recv().is_ok() {}
        signal(&self.child, libc::SIGUSR1);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                if l.starts_with("{\"report\"") {
                    return serde_json::from_str(&l).map_err(|e| e.to_string());
                }
            }
        }
        Err(format!("{} gave no report", self.name))
    }
}

/// The child gets SIGTERM when the suite dies (Ctrl-C included): no server outlives it.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(2) is async-signal-safe and touches only the child's own state.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: signals our own child by its PID; it is not reaped while `child` lives.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(&self.child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bin args` in namespace `ns` pinned to `cpu`; returns its stdout, or its stderr as the
/// error. Every client the suite runs is bounded in time by its own arguments.
pub fn client(ns: &str, cpu: usize, bin: &str, args: &[String]) -> Result<String, String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "taskset", "-c", &cpu.to_string(), bin])
        .args(args);
    die_with_parent(&mut cmd);
    let o = cmd.output().map_err(|e| format!("running {bin}: {e}"))?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        return Err(format!(
            "{bin} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim(),
            out.trim()
        ));
    }
    Ok(out)
}

/// Busy and total CPU ticks of the whole machine (/proc/stat), for CPU time per packet.
pub fn cpu_ticks() -> (u64, u64) {
    ticks_of("cpu ")
}

/// Busy and total CPU ticks of one CPU.
pub fn cpu_ticks_of(cpu: usize) -> (u64, u64) {
    ticks_of(&format!("cpu{cpu} "))
}

fn ticks_of(prefix: &str) -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with(prefix)) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}
