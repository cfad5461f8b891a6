//! Where an attachment's objects live on bpffs: one directory per interface.
use std::{
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::{maps, sys, SteerError};

/// Pins live in `<root>/<iface>/` unless `XSK_STEER_PIN_ROOT` says otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/xsk-steer";
/// Environment variable overriding [`DEFAULT_PIN_ROOT`] (it must lie on a bpffs).
pub const PIN_ROOT_ENV: &str = "XSK_STEER_PIN_ROOT";

/// The bpffs directory of one interface's attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDir {
    root: PathBuf,
    dir: PathBuf,
}

/// Names of the pinned programs inside a [`PinDir`] (the maps' are in [`maps`]).
pub(crate) const PROG_NAME: &str = "prog";
pub(crate) const PROBE_NAME: &str = "probe";

impl PinDir {
    /// The pin directory of `iface` under `root` (or the default / environment root).
    pub fn new(root: Option<&Path>, iface: &str) -> Self {
        let root = root.map(Path::to_path_buf).unwrap_or_else(default_root);
        Self {
            dir: root.join(iface),
            root,
        }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn prog(&self) -> PathBuf {
        self.dir.join(PROG_NAME)
    }
    /// The XSKMAP probe program (see `xsk_probe` in steer.bpf.c).
    pub fn probe(&self) -> PathBuf {
        self.dir.join(PROBE_NAME)
    }
    /// Whether any object of ours is pinned for this interface.
    pub fn exists(&self) -> bool {
        self.dir.exists()
    }
    /// Whether all maps are pinned, so a re-load can reuse them.
    pub(crate) fn maps_complete(&self) -> bool {
        maps::ALL.iter().all(|m| self.map(m).exists())
    }

    /// Makes sure the root lies on a bpffs (mounting one at /sys/fs/bpf if that is where the
    /// root is and nothing is mounted there), then creates the directory, root-only.
    pub(crate) fn create(&self) -> Result<(), SteerError> {
        let sysfs_bpf = Path::new("/sys/fs/bpf");
        if self.root.starts_with(sysfs_bpf) {
            // Two loaders racing to mount would stack two bpffs, hiding the first one's pins.
            let _lock = sys::lock_file(Path::new("/run/xsk-steer.mount.lock"))
                .map_err(|e| SteerError::io("locking /run/xsk-steer.mount.lock", e))?;
            let on_bpffs =
                sys::is_bpffs(sysfs_bpf).map_err(|e| SteerError::io("checking /sys/fs/bpf", e))?;
            if !on_bpffs {
                sys::mount_bpffs(sysfs_bpf)
                    .map_err(|e| SteerError::io("mounting bpffs at /sys/fs/bpf", e))?;
                tracing::info!("mounted bpffs at /sys/fs/bpf");
            }
        } else {
            let parent = self.root.parent().unwrap_or(Path::new("/"));
            let probe = if self.root.exists() {
                &self.root
            } else {
                parent
            };
            let ok = sys::is_bpffs(probe)
                .map_err(|e| SteerError::io(format!("checking {}", probe.display()), e))?;
            if !ok {
                return Err(SteerError::io(
                    format!("pin root {} is not on a bpffs", self.root.display()),
                    std::io::Error::other(format!(
                        "mount one with `mount -t bpf bpf {}`",
                        probe.display()
                    )),
                ));
            }
        }
        // Another attach/detach may remove an empty root at any moment (detach removes it when
        // its last interface goes): create the whole path, and retry if it vanished midway.
        let mut tries = 0;
        loop {
            match fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
            {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 5 => tries += 1,
                Err(e) => {
                    return Err(SteerError::io(
                        format!("creating {}", self.dir.display()),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Makes a freshly pinned object readable and writable by root only.
    pub(crate) fn restrict(path: &Path) -> Result<(), SteerError> {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| SteerError::io(format!("chmod 600 {}", path.display()), e))
    }

    /// Removes every pin of this interface, the directory, and the root if it is left empty.
    pub(crate) fn remove(&self) -> Result<(), SteerError> {
        if self.dir.exists() {
            for e in fs::read_dir(&self.dir)
                .map_err(|e| SteerError::io(format!("reading {}", self.dir.display()), e))?
            {
                let p = e.map_err(|e| SteerError::io("reading pin dir", e))?.path();
                fs::remove_file(&p)
                    .map_err(|e| SteerError::io(format!("removing {}", p.display()), e))?;
            }
            fs::remove_dir(&self.dir)
                .map_err(|e| SteerError::io(format!("removing {}", self.dir.display()), e))?;
        }
        // Another interface may still use the root; remove_dir fails on a non-empty dir.
        let _ = fs::remove_dir(&self.root);
        Ok(())
    }
}

/// The pin root from the environment, or the default.
pub fn default_root() -> PathBuf {
    std::env::var_os(PIN_ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_ROOT))
}

/// Interfaces that have a pin directory under `root`.
pub(crate) fn pinned_interfaces(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
