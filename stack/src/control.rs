//! The shard's control socket: a root-only Unix socket per shard (path from interface and
//! queue) through which other processes read the counters and start or stop a capture.
//! One JSON request line in, one JSON reply line out.
use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{
        fs::{DirBuilderExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Weak,
    },
    thread::JoinHandle,
    time::Duration,
};

use serde_json::{json, Value};

use crate::{capture::CaptureSpec, error::StackError, shared::Shared};

/// Directory of the control sockets unless `XSK_STACK_RUN_DIR` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/xsk-stack";

/// The directory holding the control sockets.
pub fn run_dir() -> PathBuf {
    std::env::var_os("XSK_STACK_RUN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// The control socket of the shard serving `iface`/`queue`.
pub fn socket_path(iface: &str, queue: u32) -> PathBuf {
    run_dir().join(format!("{iface}-q{queue}.sock"))
}

/// Control sockets of every shard on `iface`, by queue.
pub fn sockets_of(iface: &str) -> Vec<(u32, PathBuf)> {
    let prefix = format!("{iface}-q");
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(run_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let q = name
                        .strip_prefix(&prefix)?
                        .strip_suffix(".sock")?
                        .parse()
                        .ok()?;
                    Some((q, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Sends one request to a control socket and returns the reply.
pub fn request(path: &Path, req: &Value) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{req}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s.take(16 << 20)).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The server side, running on its own thread while the stack runs.
pub(crate) struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    pub fn start(path: PathBuf, shared: Weak<Shared>) -> Result<Self, StackError> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| StackError::io(format!("creating {}", dir.display()), e))?;
        }
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(StackError::Config(format!(
                    "control socket {} is served by another process",
                    path.display()
                )));
            }
            // Left behind by a process that died.
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| StackError::io(format!("binding {}", path.display()), e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StackError::io(format!("chmod {}", path.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| StackError::io("control socket", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("xsk-control".into())
            .spawn(move || {
                while !stop2.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let Some(shared) = shared.upgrade() else {
                                break;
                            };
                            serve(conn, &shared);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(25));
                        }
                        Err(e) => {
                            tracing::warn!("control socket: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map_err(|e| StackError::io("spawning the control thread", e))?;
        tracing::info!(path = %path.display(), "control socket");
        Ok(Self {
            path,
            stop,
            thread: Some(thread),
        })
    }
}

impl ControlServer {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: UnixStream, shared: &Shared) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let mut reader = BufReader::new((&conn).take(64 * 1024));
    let reply = match reader.read_line(&mut line) {
        Ok(_) => match serde_json::from_str::<Value>(&line) {
            Ok(req) => handle(&req, shared),
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        },
        Err(e) => json!({"ok": false, "error": format!("reading request: {e}")}),
    };
    let _ = (&conn).write_all(format!("{reply}\n").as_bytes());
}

fn handle(req: &Value, shared: &Shared) -> Value {
    let mut g = shared.lock();
    let Some(core) = g.as_mut() else {
        return json!({"ok": false, "error": "the stack has stopped"});
    };
    match req.get("cmd").and_then(Value::as_str) {
        Some("stats") => {
            let st = core.stats();
            json!({"ok": true, "table": st.to_table(), "stats": st})
        }
        Some("prometheus") => json!({"ok": true, "text": core.stats().to_prometheus()}),
        Some("connections") => json!({"ok": true, "connections": core.connections()}),
        Some("capture") => {
            let Some(path) = req.get("path").and_then(Value::as_str) else {
                return json!({"ok": false, "error": "capture needs \"path\""});
            };
            let mut spec = CaptureSpec::new(path);
            if let Some(n) = req.get("count").and_then(Value::as_u64) {
                spec.count = n;
            }
            if let Some(n) = req.get("snaplen").and_then(Value::as_u64) {
                spec.snaplen = n.min(u32::MAX as u64) as u32;
            }
            if let Some(n) = req.get("max_bytes").and_then(Value::as_u64) {
                spec.max_bytes = n;
            }
            match core.start_capture(spec) {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            }
        }
        Some("capture_stop") => json!({"ok": true, "stopped": core.stop_capture()}),
        other => {
            json!({"ok": false, "error": format!("unknown command {other:?} (stats, prometheus, connections, capture, capture_stop)")})
        }
    }
}
