//! Loading, attaching, re-attaching and detaching the steering program.
use std::{
    collections::BTreeSet,
    fs,
    mem::MaybeUninit,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    Xdp, XdpFlags,
};
use serde::Serialize;

use crate::{
    maps, pins::PinDir, rule::SteeringRule, skel::SteerSkelBuilder, sys, SteerError, Steering,
    MAX_QUEUES, MAX_RULES,
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
    pub(crate) fn code(self) -> u32 {
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
    /// Pin root; `None` = [`pins::default_root`](crate::pins::default_root).
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
pub(crate) fn check_iface_name(iface: &str) -> Result<(), SteerError> {
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
pub(crate) fn attached(ifindex: u32) -> Result<Option<(u32, XdpMode)>, SteerError> {
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
pub(crate) fn pinned_prog_id(pins: &PinDir) -> Option<u32> {
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

// Attaching and detaching; the handle itself (opening, rules, XSKs, counters, status) is in
// steering.rs.
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
                (&mut maps.xsks, maps::XSKS),
                (&mut maps.rules, maps::RULES),
                (&mut maps.config, maps::CONFIG),
                (&mut maps.counters, maps::COUNTERS),
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
                (&mut maps.xsks, maps::XSKS),
                (&mut maps.rules, maps::RULES),
                (&mut maps.config, maps::CONFIG),
                (&mut maps.counters, maps::COUNTERS),
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
