//! Loading, attaching, re-attaching and detaching the steering program, and the handle a
//! running attachment is edited and read through.
use std::{
    collections::BTreeSet,
    fs,
    mem::MaybeUninit,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    MapCore, MapFlags, MapHandle, Xdp, XdpFlags,
};
use serde::Serialize;

use crate::{
    counters::QueueCounters,
    pins::{self, PinDir},
    rule::{RuleOwner, SteeringRule, KEY_LEN},
    skel::SteerSkelBuilder,
    sys, SteerError, MAX_QUEUES, MAX_RULES,
};

/// How the program is attached to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver (XDP_FLAGS_DRV_MODE): fastest, needs driver support.
    Native,
    /// In the generic network path (XDP_FLAGS_SKB_MODE): works everywhere, slower.
    Generic,
}

impl XdpMode {
    fn flags(self) -> XdpFlags {
        match self {
            XdpMode::Native => XdpFlags::DRV_MODE,
            XdpMode::Generic => XdpFlags::SKB_MODE,
        }
    }
    fn code(self) -> u32 {
        match self {
            XdpMode::Native => 1,
            XdpMode::Generic => 2,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `xdp-loader attach` asks for.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    pub iface: String,
    pub queue: u32,
    /// `None` = auto: native, else generic (keeping the current mode on a re-attach).
    pub mode: Option<XdpMode>,
    /// The static rules; on a re-attach they replace the previous static rules.
    pub rules: Vec<SteeringRule>,
    /// Replace a foreign XDP program.
    pub force: bool,
    /// Pin root; `None` = [`pins::default_root`].
    pub pin_root: Option<PathBuf>,
}

/// What an attach did.
#[derive(Debug, Clone, Serialize)]
pub struct AttachReport {
    pub iface: String,
    pub queue: u32,
    pub mode: XdpMode,
    pub prog_id: u32,
    /// The maps were already pinned and were reused (a re-attach).
    pub reused_maps: bool,
    /// Native was tried first and failed (auto mode only).
    pub native_error: Option<String>,
    /// Id of a foreign program that `--force` replaced.
    pub replaced_foreign: Option<u32>,
    pub pin_dir: PathBuf,
}

/// A snapshot of one interface's attachment for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct SteeringStatus {
    pub iface: String,
    pub ifindex: Option<u32>,
    /// The program the kernel has attached, if any (ours or not).
    pub prog_id: Option<u32>,
    pub mode: Option<XdpMode>,
    /// Whether the attached program is the one pinned under `pin_dir`.
    pub ours: bool,
    pub queue: Option<u32>,
    pub rx_queues: Option<u32>,
    pub rules: Vec<RuleEntry>,
    pub pin_dir: PathBuf,
    /// AF_XDP sockets bound on this interface, by queue.
    pub xsks: Vec<XskEntry>,
}

/// A rule as `status` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleEntry {
    pub rule: String,
    pub owner: String,
    /// The service that added it, for service rules.
    pub pid: Option<u32>,
}

/// AF_XDP sockets of one queue of an interface.
#[derive(Debug, Clone, Serialize)]
pub struct XskEntry {
    pub queue: u32,
    /// A socket is in the XSKMAP at this queue, so matched packets are redirected to it
    /// (`None`: the probe program could not be run).
    pub registered: Option<bool>,
    /// Sockets bound to this queue according to sock_diag (`None`: the kernel lacks
    /// CONFIG_XDP_SOCKETS_DIAG).
    pub bound: Option<u32>,
}

/// Bitmap of the queues with a socket in the XSKMAP, from the pinned probe program.
fn registered_queues(pins: &PinDir) -> Result<u64, SteerError> {
    let fd = libbpf_rs::Program::fd_from_pinned_path(pins.probe()).map_err(SteerError::bpf(
        format!("opening {}", pins.probe().display()),
    ))?;
    let (ret, out) = sys::xdp_test_run(fd.as_fd(), &[0u8; 64])
        .map_err(|e| SteerError::io("running the XSKMAP probe", e))?;
    const XDP_PASS: u32 = 2;
    match out.get(..8) {
        Some(b) if ret == XDP_PASS => Ok(u64::from_ne_bytes(b.try_into().expect("8 bytes"))),
        _ => Err(SteerError::io(
            "running the XSKMAP probe",
            std::io::Error::other(format!("verdict {ret}")),
        )),
    }
}

/// Privileges the control path needs; named in the error when missing.
const CONTROL_CAPS: [(u32, &str); 3] = [
    (sys::CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    (sys::CAP_BPF, "CAP_BPF (or CAP_SYS_ADMIN)"),
    (sys::CAP_SYS_ADMIN, "CAP_SYS_ADMIN (for bpffs and pinning)"),
];

fn check_privileges() -> Result<(), SteerError> {
    let missing =
        sys::missing_caps(&CONTROL_CAPS).map_err(|e| SteerError::io("reading capabilities", e))?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SteerError::Privilege(format!(
            "{} (run as root, or grant them: setcap cap_net_admin,cap_bpf,cap_sys_admin+ep)",
            missing.join(", ")
        )))
    }
}

/// Interface names end up in paths: refuse anything that is not a plain kernel name.
fn check_iface_name(iface: &str) -> Result<(), SteerError> {
    let ok = !iface.is_empty()
        && iface.len() < 16
        && iface != "."
        && iface != ".."
        && !iface
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(SteerError::NoSuchInterface(iface.to_string()))
    }
}

fn lookup_ifindex(iface: &str) -> Result<u32, SteerError> {
    check_iface_name(iface)?;
    sys::ifindex(iface).ok_or_else(|| SteerError::NoSuchInterface(iface.to_string()))
}

/// The program the kernel has attached, with its mode.
fn attached(ifindex: u32) -> Result<Option<(u32, XdpMode)>, SteerError> {
    let a = sys::xdp_query(ifindex).map_err(|e| SteerError::io("querying XDP attachment", e))?;
    Ok(if a.drv_prog_id != 0 {
        Some((a.drv_prog_id, XdpMode::Native))
    } else if a.skb_prog_id != 0 {
        Some((a.skb_prog_id, XdpMode::Generic))
    } else {
        None
    })
}

/// Id of the program pinned in `pins`, if any.
fn pinned_prog_id(pins: &PinDir) -> Option<u32> {
    let fd = libbpf_rs::Program::fd_from_pinned_path(pins.prog()).ok()?;
    libbpf_rs::Program::id_from_fd(fd.as_fd()).ok()
}

fn prog_name(id: u32) -> String {
    libbpf_rs::query::ProgInfoIter::default()
        .find(|p| p.id == id)
        .map(|p| p.name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "?".into())
}

fn detach_mode(ifindex: u32, mode: XdpMode) -> Result<(), SteerError> {
    // The fd is not used by a detach; any valid descriptor satisfies the type.
    let stdin = std::io::stdin();
    Xdp::new(stdin.as_fd())
        .detach(ifindex as i32, mode.flags())
        .map_err(SteerError::bpf(format!("detaching the {mode} XDP program")))
}

/// A handle on an attached steering program, through its pinned maps.
pub struct Steering {
    iface: String,
    pins: PinDir,
    xsks: MapHandle,
    rules: MapHandle,
    config: MapHandle,
    counters: MapHandle,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("iface", &self.iface)
            .field("pins", &self.pins)
            .finish()
    }
}

impl Steering {
    /// Loads and attaches the program (or re-attaches it, reusing the pinned maps so bound
    /// sockets keep receiving). Every check runs before anything is changed.
    pub fn attach(opts: &AttachOptions) -> Result<AttachReport, SteerError> {
        check_privileges()?;
        let ifindex = lookup_ifindex(&opts.iface)?;
        let count = sys::rx_queue_count(&opts.iface)
            .map_err(|e| SteerError::io(format!("reading the RX queues of {}", opts.iface), e))?;
        if opts.queue >= count {
            return Err(SteerError::QueueOutOfRange {
                iface: opts.iface.clone(),
                queue: opts.queue,
                count,
            });
        }
        if opts.queue >= MAX_QUEUES {
            return Err(SteerError::QueueTooHigh {
                queue: opts.queue,
                max: MAX_QUEUES,
            });
        }
        let rules: BTreeSet<SteeringRule> = opts.rules.iter().copied().collect();
        if rules.len() > MAX_RULES as usize {
            return Err(SteerError::RulesFull(MAX_RULES));
        }
        let pins = PinDir::new(opts.pin_root.as_deref(), &opts.iface);
        let current = attached(ifindex)?;
        let ours_id = pinned_prog_id(&pins);
        let foreign = current.filter(|(id, _)| Some(*id) != ours_id);
        if let Some((prog_id, _)) = foreign {
            if !opts.force {
                return Err(SteerError::ForeignProgram {
                    iface: opts.iface.clone(),
                    prog_id,
                    name: prog_name(prog_id),
                });
            }
        }

        // Past this point things change; a fresh attach undoes its pins on failure.
        let fresh = !pins.exists();
        pins.create()?;
        let result = Self::load_and_attach(opts, ifindex, &pins, &rules, current, foreign);
        if result.is_err() && fresh {
            let _ = pins.remove();
        }
        result
    }

    fn load_and_attach(
        opts: &AttachOptions,
        ifindex: u32,
        pins: &PinDir,
        rules: &BTreeSet<SteeringRule>,
        current: Option<(u32, XdpMode)>,
        foreign: Option<(u32, XdpMode)>,
    ) -> Result<AttachReport, SteerError> {
        let reuse = pins.maps_complete();
        let mut obj = MaybeUninit::uninit();
        let mut open = SteerSkelBuilder::default()
            .open(&mut obj)
            .map_err(SteerError::bpf("opening the steering program"))?;
        if reuse {
            let maps = &mut open.maps;
            for (m, name) in [
                (&mut maps.xsks, "xsks"),
                (&mut maps.rules, "rules"),
                (&mut maps.config, "config"),
                (&mut maps.counters, "counters"),
            ] {
                m.reuse_pinned_map(pins.map(name))
                    .map_err(SteerError::bpf(format!(
                        "reusing pinned map {}",
                        pins.map(name).display()
                    )))?;
            }
        }
        let mut skel = open
            .load()
            .map_err(SteerError::bpf("loading the steering program"))?;
        if !reuse {
            let maps = &mut skel.maps;
            for (m, name) in [
                (&mut maps.xsks, "xsks"),
                (&mut maps.rules, "rules"),
                (&mut maps.config, "config"),
                (&mut maps.counters, "counters"),
            ] {
                let path = pins.map(name);
                let _ = fs::remove_file(&path); // a stale partial pin from a crash
                m.pin(&path)
                    .map_err(SteerError::bpf(format!("pinning {}", path.display())))?;
                PinDir::restrict(&path)?;
            }
        }

        // A program in the other mode (or a foreign one being forced out) must go first: the
        // kernel keeps one mode per interface.
        let wanted = opts
            .mode
            .or_else(|| current.filter(|_| foreign.is_none()).map(|(_, m)| m));
        if let Some((_, mode)) = current {
            if foreign.is_some() || wanted.is_some_and(|w| w != mode) {
                detach_mode(ifindex, mode)?;
            }
        }
        let xdp = Xdp::new(skel.progs.xdp_steer.as_fd());
        let mut native_error = None;
        let mode = match wanted {
            Some(m) => {
                xdp.attach(ifindex as i32, m.flags()).map_err(|e| match m {
                    XdpMode::Native => SteerError::NativeUnsupported {
                        iface: opts.iface.clone(),
                        source: std::io::Error::other(e.to_string()),
                    },
                    XdpMode::Generic => SteerError::bpf("attaching in generic mode")(e),
                })?;
                m
            }
            None => match xdp.attach(ifindex as i32, XdpFlags::DRV_MODE) {
                Ok(()) => XdpMode::Native,
                Err(e) => {
                    native_error = Some(e.to_string());
                    xdp.attach(ifindex as i32, XdpFlags::SKB_MODE)
                        .map_err(SteerError::bpf(
                            "attaching in generic mode (native failed too)",
                        ))?;
                    XdpMode::Generic
                }
            },
        };
        let prog_path = pins.prog();
        let _ = fs::remove_file(&prog_path);
        let prog = &mut skel.progs.xdp_steer;
        prog.pin(&prog_path)
            .map_err(SteerError::bpf(format!("pinning {}", prog_path.display())))?;
        PinDir::restrict(&prog_path)?;
        let prog_id = libbpf_rs::Program::id_from_fd(prog.as_fd())
            .map_err(SteerError::bpf("reading the program id"))?;
        let probe_path = pins.probe();
        let _ = fs::remove_file(&probe_path);
        skel.progs
            .xsk_probe
            .pin(&probe_path)
            .map_err(SteerError::bpf(format!("pinning {}", probe_path.display())))?;
        PinDir::restrict(&probe_path)?;

        let steering = Self::open_pins(&opts.iface, pins.clone())?;
        steering.write_config(opts.queue, mode, ifindex)?;
        steering.replace_static_rules(rules)?;
        tracing::info!(iface = %opts.iface, queue = opts.queue, %mode, prog_id, reuse, "attached");
        Ok(AttachReport {
            iface: opts.iface.clone(),
            queue: opts.queue,
            mode,
            prog_id,
            reused_maps: reuse,
            native_error,
            replaced_foreign: foreign.map(|(id, _)| id),
            pin_dir: pins.dir().to_path_buf(),
        })
    }

    /// Removes the program and the pins; the interface is left as it was before attach.
    pub fn detach(iface: &str, pin_root: Option<&Path>, force: bool) -> Result<(), SteerError> {
        check_privileges()?;
        check_iface_name(iface)?;
        let pins = PinDir::new(pin_root, iface);
        let Some(ifindex) = sys::ifindex(iface) else {
            // The interface is gone (a veth deleted under us): only the pins are left to clean.
            if pins.exists() {
                return pins.remove();
            }
            return Err(SteerError::NoSuchInterface(iface.to_string()));
        };
        let current = attached(ifindex)?;
        let ours_id = pinned_prog_id(&pins);
        match current {
            Some((id, mode)) if Some(id) == ours_id || force => detach_mode(ifindex, mode)?,
            Some((prog_id, _)) => {
                return Err(SteerError::ForeignProgram {
                    iface: iface.to_string(),
                    prog_id,
                    name: prog_name(prog_id),
                })
            }
            None if !pins.exists() => return Err(SteerError::NotAttached(iface.to_string())),
            None => {}
        }
        pins.remove()?;
        tracing::info!(iface, "detached");
        Ok(())
    }

    /// Opens the pinned maps of an attachment (what a service or `xdp-loader` does).
    pub fn open(iface: &str, pin_root: Option<&Path>) -> Result<Self, SteerError> {
        check_iface_name(iface)?;
        let pins = PinDir::new(pin_root, iface);
        if !pins.maps_complete() {
            return Err(SteerError::NoPins {
                iface: iface.to_string(),
                pin_dir: pins.dir().display().to_string(),
            });
        }
        Self::open_pins(iface, pins)
    }

    fn open_pins(iface: &str, pins: PinDir) -> Result<Self, SteerError> {
        let open = |name: &str| {
            let path = pins.map(name);
            MapHandle::from_pinned_path(&path).map_err(|e| {
                let hint = if e.kind() == libbpf_rs::ErrorKind::PermissionDenied {
                    " (pins are root-only; a service needs root, or read access to the pin plus CAP_BPF)"
                } else {
                    ""
                };
                SteerError::Bpf { what: format!("opening {}{hint}", path.display()), source: e }
            })
        };
        Ok(Self {
            iface: iface.to_string(),
            xsks: open("xsks")?,
            rules: open("rules")?,
            config: open("config")?,
            counters: open("counters")?,
            pins,
        })
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }
    pub fn pin_dir(&self) -> &Path {
        self.pins.dir()
    }

    fn write_config(&self, queue: u32, mode: XdpMode, ifindex: u32) -> Result<(), SteerError> {
        let mut v = [0u8; 16];
        v[0..4].copy_from_slice(&queue.to_ne_bytes());
        v[4..8].copy_from_slice(&mode.code().to_ne_bytes());
        v[8..12].copy_from_slice(&ifindex.to_ne_bytes());
        self.config
            .update(&0u32.to_ne_bytes(), &v, MapFlags::ANY)
            .map_err(SteerError::bpf("writing the config map"))
    }

    /// `(queue, ifindex)` the attachment serves, as recorded at attach time.
    pub fn config(&self) -> Result<(u32, u32), SteerError> {
        let v = self
            .config
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(SteerError::bpf("reading the config map"))?
            .unwrap_or_default();
        let word = |i: usize| {
            v.get(i..i + 4)
                .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        Ok((word(0), word(8)))
    }

    /// The queue this attachment steers.
    pub fn queue(&self) -> Result<u32, SteerError> {
        Ok(self.config()?.0)
    }

    /// Every rule in the map, sorted. Entries that do not decode are skipped with a warning.
    pub fn rules(&self) -> Result<Vec<(SteeringRule, RuleOwner)>, SteerError> {
        let mut out = Vec::new();
        for key in self.rules.keys() {
            let rule = match SteeringRule::from_key(&key) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("skipping undecodable rule entry: {e}");
                    continue;
                }
            };
            if let Some(v) = self
                .rules
                .lookup(&key, MapFlags::ANY)
                .map_err(SteerError::bpf("reading a rule"))?
            {
                out.push((rule, RuleOwner::from_val(&v)));
            }
        }
        out.sort_by_key(|(r, _)| *r);
        Ok(out)
    }

    /// Adds a rule; fails if it is already there (whoever added it).
    pub fn add_rule(&self, rule: SteeringRule, owner: RuleOwner) -> Result<(), SteerError> {
        let key = rule.to_key();
        if self
            .rules
            .lookup(&key, MapFlags::ANY)
            .map_err(SteerError::bpf("reading a rule"))?
            .is_some()
        {
            return Err(SteerError::RuleExists(rule.to_string()));
        }
        if self.rules.keys().count() >= MAX_RULES as usize {
            return Err(SteerError::RulesFull(MAX_RULES));
        }
        self.rules
            .update(&key, &owner.to_val(), MapFlags::NO_EXIST)
            .map_err(SteerError::bpf(format!("adding rule {rule}")))
    }

    /// Removes a rule; fails if it is not there.
    pub fn remove_rule(&self, rule: SteeringRule) -> Result<(), SteerError> {
        let key = rule.to_key();
        if self
            .rules
            .lookup(&key, MapFlags::ANY)
            .map_err(SteerError::bpf("reading a rule"))?
            .is_none()
        {
            return Err(SteerError::RuleMissing(rule.to_string()));
        }
        self.rules
            .delete(&key)
            .map_err(SteerError::bpf(format!("removing rule {rule}")))
    }

    fn replace_static_rules(&self, rules: &BTreeSet<SteeringRule>) -> Result<(), SteerError> {
        for (rule, owner) in self.rules()? {
            if owner == RuleOwner::Static && !rules.contains(&rule) {
                self.rules
                    .delete(&rule.to_key())
                    .map_err(SteerError::bpf(format!("removing rule {rule}")))?;
            }
        }
        for rule in rules {
            let key: [u8; KEY_LEN] = rule.to_key();
            // A service's rule for the same flow stays the service's.
            let existing = self
                .rules
                .lookup(&key, MapFlags::ANY)
                .map_err(SteerError::bpf("reading a rule"))?;
            if existing.is_none() {
                self.rules
                    .update(&key, &RuleOwner::Static.to_val(), MapFlags::ANY)
                    .map_err(SteerError::bpf(format!("adding rule {rule}")))?;
            }
        }
        Ok(())
    }

    /// Counters of one RX queue, summed over CPUs.
    pub fn counters(&self, queue: u32) -> Result<QueueCounters, SteerError> {
        let v = self
            .counters
            .lookup_percpu(&queue.to_ne_bytes(), MapFlags::ANY)
            .map_err(SteerError::bpf(format!(
                "reading counters of queue {queue}"
            )))?
            .unwrap_or_default();
        Ok(QueueCounters::sum_per_cpu(&v))
    }

    /// Puts an AF_XDP socket into the XSKMAP at `queue`, so the program redirects to it.
    pub fn register_xsk(&self, queue: u32, xsk: BorrowedFd<'_>) -> Result<(), SteerError> {
        if queue >= MAX_QUEUES {
            return Err(SteerError::QueueTooHigh {
                queue,
                max: MAX_QUEUES,
            });
        }
        let fd = xsk.as_raw_fd() as u32;
        self.xsks
            .update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(SteerError::bpf(format!(
                "registering the XSK at queue {queue}"
            )))
    }

    /// Takes the socket at `queue` out of the XSKMAP (the kernel also does so when it closes).
    pub fn unregister_xsk(&self, queue: u32) -> Result<(), SteerError> {
        match self.xsks.delete(&queue.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SteerError::bpf(format!(
                "unregistering the XSK at queue {queue}"
            ))(e)),
        }
    }

    /// Whether the attachment's pins are still there (`xdp-loader detach` removes them).
    pub fn still_attached(&self) -> bool {
        self.pins.maps_complete()
    }

    /// The attached steering program, for BPF_PROG_TEST_RUN (see [`sys::xdp_test_run_on`]).
    pub fn program_fd(&self) -> Result<std::os::fd::OwnedFd, SteerError> {
        libbpf_rs::Program::fd_from_pinned_path(self.pins.prog()).map_err(SteerError::bpf(format!(
            "opening {}",
            self.pins.prog().display()
        )))
    }

    /// Bitmap of the queues that have an AF_XDP socket in the XSKMAP (bit q = queue q).
    pub fn registered_queues(&self) -> Result<u64, SteerError> {
        registered_queues(&self.pins)
    }

    /// The status of `iface`'s attachment (also when it is only partly there).
    pub fn status(iface: &str, pin_root: Option<&Path>) -> Result<SteeringStatus, SteerError> {
        check_iface_name(iface)?;
        let pins = PinDir::new(pin_root, iface);
        let ifindex = sys::ifindex(iface);
        if ifindex.is_none() && !pins.exists() {
            return Err(SteerError::NoSuchInterface(iface.to_string()));
        }
        let current = match ifindex {
            Some(i) => attached(i)?,
            None => None,
        };
        let ours_id = pinned_prog_id(&pins);
        let (queue, rules) = match Self::open(iface, pin_root) {
            Ok(s) => (
                Some(s.queue()?),
                s.rules()?
                    .into_iter()
                    .map(|(r, o)| RuleEntry {
                        rule: r.to_string(),
                        owner: o.to_string(),
                        pid: match o {
                            RuleOwner::Service { pid } => Some(pid),
                            RuleOwner::Static => None,
                        },
                    })
                    .collect(),
            ),
            Err(_) => (None, Vec::new()),
        };
        let registered = registered_queues(&pins).ok();
        // sock_diag for AF_XDP (CONFIG_XDP_SOCKETS_DIAG) is optional; without it, `bound` is unknown.
        let diag = ifindex.and_then(|i| {
            sys::list_xsks()
                .ok()
                .map(|v| v.into_iter().filter(|x| x.ifindex == i).collect::<Vec<_>>())
        });
        let queues = sys::rx_queue_count(iface).unwrap_or(0).min(MAX_QUEUES);
        let xsks = (0..queues)
            .map(|q| XskEntry {
                queue: q,
                registered: registered.map(|bits| bits & (1u64 << q) != 0),
                bound: diag
                    .as_ref()
                    .map(|d| d.iter().filter(|x| x.queue == q).count() as u32),
            })
            .collect();
        Ok(SteeringStatus {
            iface: iface.to_string(),
            ifindex,
            prog_id: current.map(|(id, _)| id),
            mode: current.map(|(_, m)| m),
            ours: current.is_some() && current.map(|(id, _)| id) == ours_id,
            queue,
            rx_queues: sys::rx_queue_count(iface).ok(),
            rules,
            pin_dir: pins.dir().to_path_buf(),
            xsks,
        })
    }

    /// Interfaces with pins under the root.
    pub fn pinned_interfaces(pin_root: Option<&Path>) -> Vec<String> {
        let root = pin_root
            .map(Path::to_path_buf)
            .unwrap_or_else(pins::default_root);
        pins::pinned_interfaces(&root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_cannot_escape_the_pin_root() {
        for bad in ["", ".", "..", "a/b", "../etc", "x y", "sixteen-chars-xx"] {
            assert!(check_iface_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["eth0", "veth-a.10", "xt-01ab-h"] {
            assert!(check_iface_name(good).is_ok(), "{good:?} refused");
        }
    }
}
