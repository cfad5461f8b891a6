//! Cases and their context: what a case can do and check.
#![allow(unsafe_code)]

use super::*;

/// What a case is expected to do on the stack (the kernel must always pass).
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    Pass,
    ExpectedFail { why: &'static str },
}

/// One conformance case.
pub struct Case {
    pub name: &'static str,
    /// The RFC section it checks.
    pub rfc: &'static str,
    pub body: fn(&mut Ctx) -> Result<(), String>,
    /// Expectation for the stack.
    pub stack: Expect,
}

/// Options of the SYN a handshake sends.
#[derive(Debug, Clone)]
pub struct SynOpts {
    pub mss: Option<u16>,
    pub sack: bool,
    pub ts: bool,
    pub wscale: Option<u8>,
    /// Raw window of the SYN (never scaled) and of the handshake's final ACK (scaled).
    pub window: u16,
}

impl Default for SynOpts {
    fn default() -> Self {
        Self {
            mss: Some(1460),
            sack: true,
            ts: true,
            wscale: None,
            window: 65535,
        }
    }
}

impl SynOpts {
    pub fn bytes(&self, tsval: u32) -> Vec<u8> {
        let mut v = Vec::new();
        if let Some(m) = self.mss {
            v.extend(opt::mss(m));
        }
        if self.sack {
            v.extend(opt::sack_ok());
        }
        if self.ts {
            v.extend(opt::ts(tsval, 0));
        }
        if let Some(s) = self.wscale {
            v.extend(opt::wscale(s));
        }
        v
    }
}

/// Bookkeeping of the connection under test (peer = us, server = the target).
#[derive(Debug, Clone, Default)]
pub struct Conn {
    /// Our port.
    pub sport: u16,
    /// Our initial sequence number.
    pub iss: u32,
    /// The server's initial sequence number (from its SYN-ACK).
    pub irs: u32,
    /// Our next sequence number.
    pub snd_nxt: u32,
    /// Next sequence number we expect from the server.
    pub rcv_nxt: u32,
    /// Raw window we advertise.
    pub window: u16,
    /// Timestamps negotiated; the server's latest TSval.
    pub ts: bool,
    pub ts_recent: u32,
    /// The TSval of the last segment we sent on this connection.
    pub last_tsval: u32,
    pub sack: bool,
    pub synack: Option<Segment>,
    /// The server's connection is gone (reset or fully closed): no RST at teardown.
    pub closed: bool,
}

/// What a case body works with.
pub struct Ctx<'a> {
    pub target: Target,
    pub peer: &'a Peer,
    /// The server port of this target.
    pub port: u16,
    pub conn: Conn,
    pub(crate) server: Option<Box<dyn ServerConn>>,
    pub(crate) pending_accept: Option<mpsc::Receiver<Result<Box<dyn ServerConn>, String>>>,
    pub(crate) acceptor: Arc<dyn Acceptor>,
    pub(crate) ports: &'a AtomicU16,
    /// Received segments not yet consumed (kept by `expect` for later expectations).
    pub(crate) backlog: VecDeque<Segment>,
    /// Segments to the peer that belong to other connections (other ports), in arrival order.
    pub others: Vec<Segment>,
    /// Data segments `recv_data` consumed, in arrival order.
    pub data_segs: Vec<Segment>,
    pub(crate) t0: Instant,
    pub(crate) trace: Vec<String>,
}

impl<'a> Ctx<'a> {
    /// A fresh source port (unique per testbed).
    pub fn fresh_port(&self) -> u16 {
        self.ports.fetch_add(1, Ordering::Relaxed)
    }

    pub fn note(&mut self, s: impl Into<String>) {
        let line = format!("{:>8.1}ms  {}", self.ms(), s.into());
        self.trace.push(line);
    }

    fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1e3
    }

    /// Sends a segment as given.
    pub fn send_out(&mut self, s: Out) -> Result<(), String> {
        self.note(format!(">> {s}"));
        if s.sport == self.conn.sport {
            if let Some((v, _)) = TcpOpts::parse(&s.opts).and_then(|o| o.ts) {
                self.conn.last_tsval = v;
            }
        }
        self.peer.send(&s).map_err(|e| format!("send: {e}"))
    }

    /// Sends a segment of the current connection with the given fields; `opts` None adds the
    /// timestamp option when negotiated.
    pub fn send(
        &mut self,
        flags: u8,
        seq: u32,
        ack: u32,
        payload: &[u8],
        opts: Option<Vec<u8>>,
    ) -> Result<(), String> {
        let opts = opts.unwrap_or_else(|| self.ts_opt());
        let s = Out {
            sport: self.conn.sport,
            dport: self.port,
            seq,
            ack,
            flags,
            window: self.conn.window,
            opts,
            payload: payload.to_vec(),
        };
        self.send_out(s)
    }

    /// The timestamp option for our next segment (empty without timestamps).
    pub fn ts_opt(&self) -> Vec<u8> {
        if self.conn.ts {
            opt::ts(self.peer.tsval(), self.conn.ts_recent)
        } else {
            Vec::new()
        }
    }

    /// Sends `payload` at SND.NXT with ACK|PSH and advances SND.NXT.
    pub fn send_data(&mut self, payload: &[u8]) -> Result<(), String> {
        let (seq, ack) = (self.conn.snd_nxt, self.conn.rcv_nxt);
        self.send(ACK | PSH, seq, ack, payload, None)?;
        self.conn.snd_nxt = seq.wrapping_add(payload.len() as u32);
        Ok(())
    }

    /// Sends a bare ACK of RCV.NXT.
    pub fn send_ack(&mut self) -> Result<(), String> {
        let (seq, ack) = (self.conn.snd_nxt, self.conn.rcv_nxt);
        self.send(ACK, seq, ack, &[], None)
    }

    /// The next segment of the current connection (ports match), from the backlog first.
    fn next_seg(&mut self, deadline: Instant) -> Option<Segment> {
        if let Some(s) = self.backlog.pop_front() {
            return Some(s);
        }
        loop {
            let s = self.peer.recv(deadline)?;
            if s.sport == self.port && s.dport == self.conn.sport {
                if let Some((v, _)) = s.opts.ts {
                    if self.conn.ts {
                        self.conn.ts_recent = v;
                    }
                }
                self.note(format!("<< {s}"));
                return Some(s);
            }
            self.note(format!("   (other) {s}"));
            self.others.push(s);
        }
    }

    /// Waits up to `timeout` for a segment of the connection matching `pred`; segments that do
    /// not match are skipped (and traced).
    pub fn expect(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Segment) -> bool,
    ) -> Result<Segment, String> {
        let deadline = Instant::now() + timeout;
        while let Some(s) = self.next_seg(deadline) {
            if pred(&s) {
                return Ok(s);
            }
        }
        Err(format!("no {what} within {timeout:?}"))
    }

    /// Fails if any segment of the connection matching `pred` arrives within `d`; others are
    /// skipped.
    pub fn expect_none(
        &mut self,
        d: Duration,
        what: &str,
        pred: impl Fn(&Segment) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + d;
        while let Some(s) = self.next_seg(deadline) {
            if pred(&s) {
                return Err(format!("unexpected {what}: {s}"));
            }
        }
        Ok(())
    }

    /// Collects every segment of the connection for `d` (without answering).
    pub fn collect(&mut self, d: Duration) -> Vec<Segment> {
        let deadline = Instant::now() + d;
        let mut v = Vec::new();
        while let Some(s) = self.next_seg(deadline) {
            v.push(s);
        }
        v
    }

    /// Puts a segment back so the next `expect` sees it first.
    pub fn unread(&mut self, s: Segment) {
        self.backlog.push_front(s);
    }

    /// Three-way handshake from a fresh port: SYN with `o`, expect SYN-ACK (ack = ISS+1), ACK;
    /// then accepts the server side on a helper thread. Returns the SYN-ACK.
    pub fn handshake(&mut self, o: SynOpts) -> Result<Segment, String> {
        let synack = self.syn_only(&o)?;
        self.conn.window = o.window;
        self.send_ack()?;
        self.accept()?;
        Ok(synack)
    }

    /// Sends a SYN from a fresh port and waits for the SYN-ACK; records ISS/IRS. No ACK.
    pub fn syn_only(&mut self, o: &SynOpts) -> Result<Segment, String> {
        let sport = self.fresh_port();
        let iss = 0x1000_0000u32
            .wrapping_mul(sport as u32 % 7 + 1)
            .wrapping_add(12345);
        self.conn = Conn {
            sport,
            iss,
            snd_nxt: iss.wrapping_add(1),
            window: o.window,
            ..Conn::default()
        };
        let tsval = self.peer.tsval();
        self.send(SYN, iss, 0, &[], Some(o.bytes(tsval)))?;
        let sa = self.expect(Duration::from_secs(3), "SYN-ACK", |s| s.has(SYN | ACK))?;
        if sa.ack != iss.wrapping_add(1) {
            return Err(format!("SYN-ACK acks {} (ISS+1 = {})", sa.ack, iss + 1));
        }
        self.conn.irs = sa.seq;
        self.conn.rcv_nxt = sa.seq.wrapping_add(1);
        self.conn.ts = o.ts && sa.opts.ts.is_some();
        self.conn.sack = o.sack && sa.opts.sack_ok;
        if let Some((v, _)) = sa.opts.ts {
            self.conn.ts_recent = v;
        }
        self.conn.synack = Some(sa.clone());
        Ok(sa)
    }

    /// Accepts the server side of the current connection (helper thread, 3 s). Connections from
    /// other ports that the listener hands out first are dropped and traced.
    pub fn accept(&mut self) -> Result<(), String> {
        self.accept_start(Some(self.conn.sport));
        self.accept_wait()
    }

    /// Starts the server application's accept on a helper thread, as a server blocked in accept
    /// before any SYN arrives. `want`: the peer port to wait for (others are dropped and traced);
    /// `None`: the first connection the listener hands out, and any accept error is a failure.
    /// Finish with [`Ctx::accept_wait`].
    pub fn accept_start(&mut self, want: Option<u16>) {
        let acceptor = self.acceptor.clone();
        let (tx, rx) = mpsc::channel::<Result<Box<dyn ServerConn>, String>>();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(3);
            let r = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break Err("accept timed out".to_string());
                }
                match acceptor.accept(left) {
                    Ok(c) => match (c.peer_port(), want) {
                        (Ok(p), Some(w)) if p == w => break Ok(c),
                        (_, None) => break Ok(c),
                        // Not ours: a leftover of an earlier exchange.
                        (other, _) => {
                            let _ = tx.send(Err(format!("skipped a connection from {other:?}")));
                        }
                    },
                    // A server loops over accept errors; ordinary cases do too, so that
                    // only the case about the listener fails on a broken accept queue.
                    Err(e) if want.is_some() && e.kind() != io::ErrorKind::TimedOut => {
                        let _ = tx.send(Err(format!("skipped an accept error: {e}")));
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => break Err(format!("accept: {e}")),
                }
            };
            let _ = tx.send(r);
        });
        self.pending_accept = Some(rx);
    }

    /// Waits for the accept started by [`Ctx::accept_start`]; the connection must be the
    /// current one (peer port = our port).
    pub fn accept_wait(&mut self) -> Result<(), String> {
        let rx = self
            .pending_accept
            .take()
            .ok_or("accept_wait without accept_start")?;
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(c)) => {
                    let port = c.peer_port();
                    if port.as_ref().ok() != Some(&self.conn.sport) {
                        return Err(format!(
                            "accept returned the connection from port {port:?}, not the live one \
                             from {}",
                            self.conn.sport
                        ));
                    }
                    self.server = Some(c);
                    return Ok(());
                }
                Ok(Err(m)) if m.starts_with("skipped") => self.note(format!("accept: {m}")),
                Ok(Err(m)) => return Err(m),
                Err(_) => return Err("accept did not return".into()),
            }
        }
    }

    /// The server side of the connection.
    pub fn server(&mut self) -> Result<&mut Box<dyn ServerConn>, String> {
        self.server
            .as_mut()
            .ok_or_else(|| "no accepted connection".to_string())
    }

    /// Takes the server side (to drop or reset it).
    pub fn take_server(&mut self) -> Option<Box<dyn ServerConn>> {
        self.server.take()
    }

    /// The server application writes `data` (all of it).
    pub fn app_write(&mut self, data: &[u8]) -> Result<(), String> {
        self.note(format!("app writes {} bytes", data.len()));
        self.server()?
            .write_all(data)
            .map_err(|e| format!("server write: {e}"))
    }

    /// The server application reads exactly `n` bytes within `timeout`.
    pub fn app_read_exact(&mut self, n: usize, timeout: Duration) -> Result<Vec<u8>, String> {
        let s = self.server()?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut v = vec![0u8; n];
        s.read_exact(&mut v)
            .map_err(|e| format!("server read of {n} bytes: {e}"))?;
        Ok(v)
    }

    /// One read by the server application, waiting up to `timeout`.
    pub fn app_read(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        let s = self.server().map_err(io::Error::other)?;
        s.set_read_timeout(Some(timeout))?;
        let mut v = vec![0u8; 65536];
        let n = s.read(&mut v)?;
        v.truncate(n);
        Ok(v)
    }

    /// Receives `n` bytes of in-order server data within `timeout`, ACKing each data segment.
    pub fn recv_data(&mut self, n: usize, timeout: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let Some(s) = self.next_seg(deadline) else {
                return Err(format!("received {} of {n} bytes", got.len()));
            };
            if s.payload.is_empty() {
                continue;
            }
            self.data_segs.push(s.clone());
            let off = self.conn.rcv_nxt.wrapping_sub(s.seq) as usize;
            if off < s.payload.len() {
                got.extend_from_slice(&s.payload[off..]);
                self.conn.rcv_nxt = s.seq.wrapping_add(s.payload.len() as u32);
            }
            self.send_ack()?;
        }
        Ok(got)
    }

    /// An echo round through the server application: we send, the app reads and writes it
    /// back, we receive it byte-exact.
    pub fn echo(&mut self, tag: &str) -> Result<(), String> {
        let data = format!("echo {tag} {}", self.conn.snd_nxt).into_bytes();
        self.send_data(&data)?;
        let got = self.app_read_exact(data.len(), Duration::from_secs(3))?;
        if got != data {
            return Err(format!("server read {got:?}, sent {data:?}"));
        }
        self.app_write(&got)?;
        let back = self.recv_data(data.len(), Duration::from_secs(3))?;
        if back != data {
            return Err(format!("echo returned {back:?}, sent {data:?}"));
        }
        Ok(())
    }

    /// Server-side sequence number of the next byte it sends (what it must ACK/RST with).
    pub fn server_nxt(&self) -> u32 {
        self.conn.rcv_nxt
    }

    /// Ends the case: a RST at RCV.NXT of the server for a connection that may still live, then
    /// drops the server side.
    pub(crate) fn teardown(&mut self) {
        if self.conn.sport != 0 && !self.conn.closed {
            let (seq, ack) = (self.conn.snd_nxt, self.conn.rcv_nxt);
            let _ = self.send(RST | ACK, seq, ack, &[], Some(Vec::new()));
        }
        self.server = None;
        self.conn = Conn::default();
    }
}

/// Asserts a condition inside a case body.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}
