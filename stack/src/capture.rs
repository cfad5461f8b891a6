//! Packet capture to a pcap file: the frames the stack receives and sends, as they are on the
//! wire. The shard only copies a frame (up to the snap length) into a bounded channel; a writer
//! thread does the file I/O. When the channel is full the frame is dropped and counted: capture
//! never stalls the shard.
use std::{
    io::{BufWriter, Write},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crossbeam_utils::CachePadded;
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};
use serde::Serialize;

use crate::error::StackError;

/// What to capture.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureSpec {
    /// The pcap file to write.
    pub path: PathBuf,
    /// Stop after this many frames.
    pub count: u64,
    /// Bytes kept of each frame.
    pub snaplen: u32,
    /// Stop once the file reaches this size.
    pub max_bytes: u64,
}

impl CaptureSpec {
    /// A capture into `path` with the default limits.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            count: 10_000,
            snaplen: 262_144,
            max_bytes: 256 << 20,
        }
    }
    fn validate(&self) -> Result<(), StackError> {
        if self.count == 0 || self.snaplen < 64 || self.max_bytes < 1024 {
            return Err(StackError::Config(
                "capture: count ≥ 1, snaplen ≥ 64, max bytes ≥ 1024".into(),
            ));
        }
        if !self.path.is_absolute() {
            return Err(StackError::Config(format!(
                "capture path {} must be absolute",
                self.path.display()
            )));
        }
        Ok(())
    }
}

/// Progress of a capture, shared with the writer thread (and read by stats).
#[derive(Debug, Default)]
pub struct CaptureProgress {
    pub queued: CachePadded<AtomicU64>,
    pub written: CachePadded<AtomicU64>,
    pub dropped: CachePadded<AtomicU64>,
    pub done: AtomicBool,
    pub error: Mutex<Option<String>>,
}

/// A capture's state as stats report it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CaptureStatus {
    /// The file of the running (or last) capture.
    pub path: Option<PathBuf>,
    /// Whether a capture is running.
    pub active: bool,
    /// Frames written.
    pub written: u64,
    /// Frames not written (the writer fell behind or a limit was reached).
    pub dropped: u64,
    /// Why the capture stopped, if it failed.
    pub error: Option<String>,
}

/// The buffered file, shared so the writer thread can flush it while PcapWriter owns it.
#[derive(Clone)]
struct SharedFile(Arc<Mutex<BufWriter<std::fs::File>>>);

impl SharedFile {
    fn flush_now(&self) -> std::io::Result<()> {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f.flush()?;
        f.get_ref().sync_data()
    }
}

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

struct Record {
    ts: Duration,
    orig_len: u32,
    data: Vec<u8>,
}

/// The shard's end of a running capture.
pub struct Capture {
    tx: Option<SyncSender<Record>>,
    remaining: u64,
    snaplen: usize,
    pub spec: CaptureSpec,
    pub progress: Arc<CaptureProgress>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").field("spec", &self.spec).finish()
    }
}

/// Frames buffered between the shard and the writer.
const QUEUE: usize = 4096;

impl Capture {
    /// Creates the file (root-only) and starts the writer thread.
    pub fn start(spec: CaptureSpec) -> Result<Self, StackError> {
        spec.validate()?;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&spec.path)
            .map_err(|e| {
                StackError::io(format!("creating capture file {}", spec.path.display()), e)
            })?;
        let header = PcapHeader {
            snaplen: spec.snaplen,
            datalink: DataLink::ETHERNET,
            ..Default::default()
        };
        let out = SharedFile(Arc::new(Mutex::new(BufWriter::new(file))));
        let flusher = out.clone();
        let mut writer = PcapWriter::with_header(out, header)
            .map_err(|e| StackError::Config(format!("pcap header: {e}")))?;
        let (tx, rx) = mpsc::sync_channel::<Record>(QUEUE);
        let progress = Arc::new(CaptureProgress::default());
        let p2 = progress.clone();
        let max_bytes = spec.max_bytes;
        std::thread::Builder::new()
            .name("xsk-capture".into())
            .spawn(move || {
                let mut bytes = 24u64;
                loop {
                    // Flush whenever the shard goes quiet, so the file can be read while the
                    // capture runs.
                    let r = match rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(r) => r,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            let _ = flusher.flush_now();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    bytes += 16 + r.data.len() as u64;
                    if bytes > max_bytes {
                        break;
                    }
                    if let Err(e) = writer.write_packet(&PcapPacket::new(r.ts, r.orig_len, &r.data))
                    {
                        *p2.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        break;
                    }
                    p2.written.fetch_add(1, Ordering::Relaxed);
                }
                drop(writer);
                if let Err(e) = flusher.flush_now() {
                    *p2.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
                p2.done.store(true, Ordering::Release);
            })
            .map_err(|e| StackError::io("spawning the capture writer", e))?;
        tracing::info!(path = %spec.path.display(), count = spec.count, "capture started");
        Ok(Self {
            tx: Some(tx),
            remaining: spec.count,
            snaplen: spec.snaplen as usize,
            spec,
            progress,
        })
    }

    /// Offers one frame; returns false once the capture has finished (count reached or the
    /// writer stopped), so the caller can drop it.
    pub fn record(&mut self, frame: &[u8]) -> bool {
        let Some(tx) = &self.tx else { return false };
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let data = frame[..frame.len().min(self.snaplen)].to_vec();
        match tx.try_send(Record {
            ts,
            orig_len: frame.len() as u32,
            data,
        }) {
            Ok(()) => {
                self.progress.queued.fetch_add(1, Ordering::Relaxed);
                self.remaining -= 1;
            }
            Err(TrySendError::Full(_)) => {
                self.progress.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => self.remaining = 0,
        }
        if self.remaining == 0 {
            self.tx = None; // the writer drains what is queued, then closes the file
            return false;
        }
        true
    }

    pub fn status(&self) -> CaptureStatus {
        status_of(&self.spec, &self.progress, self.tx.is_some())
    }
}

pub(crate) fn status_of(spec: &CaptureSpec, p: &CaptureProgress, active: bool) -> CaptureStatus {
    CaptureStatus {
        path: Some(spec.path.clone()),
        active: active && !p.done.load(Ordering::Acquire),
        written: p.written.load(Ordering::Relaxed),
        dropped: p.dropped.load(Ordering::Relaxed),
        error: p.error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}
