//! [`Steering`]: editing and reading a running attachment (rules, XSKs, counters, status).
use std::{
    collections::BTreeSet,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::Serialize;

use crate::{
    attach::{attached, check_iface_name, pinned_prog_id},
    counters::QueueCounters,
    maps,
    pins::{self, PinDir},
    rule::{RuleOwner, SteeringRule, KEY_LEN},
    sys, SteerError, XdpMode, MAX_QUEUES, MAX_RULES,
};

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

// `Steering::attach` and `Steering::detach` are in attach.rs.
impl Steering {
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

    pub(crate) fn open_pins(iface: &str, pins: PinDir) -> Result<Self, SteerError> {
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
            xsks: open(maps::XSKS)?,
            rules: open(maps::RULES)?,
            config: open(maps::CONFIG)?,
            counters: open(maps::COUNTERS)?,
            pins,
        })
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }
    pub fn pin_dir(&self) -> &Path {
        self.pins.dir()
    }

    pub(crate) fn write_config(
        &self,
        queue: u32,
        mode: XdpMode,
        ifindex: u32,
    ) -> Result<(), SteerError> {
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

    pub(crate) fn replace_static_rules(
        &self,
        rules: &BTreeSet<SteeringRule>,
    ) -> Result<(), SteerError> {
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
