//! The one module that talks to the OS directly: interface lookups, bpffs, capabilities, the
//! kernel's XDP attachment query and the AF_XDP socket diagnostics. Everything unsafe lives here.
#![allow(unsafe_code)]

use std::{
    ffi::CString,
    fs, io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Kernel index of a network interface, or `None` if it does not exist.
pub fn ifindex(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Number of RX queues of an interface, from sysfs.
pub fn rx_queue_count(iface: &str) -> io::Result<u32> {
    let dir = Path::new("/sys/class/net").join(iface).join("queues");
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        if e?.file_name().to_string_lossy().starts_with("rx-") {
            n += 1;
        }
    }
    Ok(n)
}

/// Whether `path` lies on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: an all-zero statfs is a valid value for the kernel to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid, writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts a bpf filesystem at `path` (`mount -t bpf bpf PATH`).
pub fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings (or null data) for the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An exclusive advisory lock on `path` (created if needed), held until the returned
/// descriptor is dropped: serialises mounting bpffs between concurrent loaders.
pub fn lock_file(path: &Path) -> io::Result<OwnedFd> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let fd = OwnedFd::from(file);
    // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Capabilities the control path needs, with their bit numbers.
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_NET_RAW: u32 = 13;
pub const CAP_IPC_LOCK: u32 = 14;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from /proc/self/status.
pub fn effective_caps() -> io::Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::other("no CapEff line in /proc/self/status"))
}

/// Names of the capabilities in `needed` that this process lacks. CAP_BPF may be stood in for
/// by CAP_SYS_ADMIN, as the kernel allows.
pub fn missing_caps(needed: &[(u32, &'static str)]) -> io::Result<Vec<&'static str>> {
    let eff = effective_caps()?;
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    Ok(needed
        .iter()
        .filter(|(bit, _)| !(has(*bit) || (*bit == CAP_BPF && has(CAP_SYS_ADMIN))))
        .map(|(_, name)| *name)
        .collect())
}

/// What the kernel reports about the XDP program(s) on an interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpAttachment {
    /// Program in native (driver) mode, 0 if none.
    pub drv_prog_id: u32,
    /// Program in generic (skb) mode, 0 if none.
    pub skb_prog_id: u32,
    /// Program offloaded to hardware, 0 if none.
    pub hw_prog_id: u32,
}

/// Asks the kernel which XDP programs are attached to `ifindex`.
pub fn xdp_query(ifindex: u32) -> io::Result<XdpAttachment> {
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: size_of::<libbpf_sys::bpf_xdp_query_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    // SAFETY: `opts` is a valid, correctly sized bpf_xdp_query_opts for libbpf to fill in.
    let rc = unsafe { libbpf_sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok(XdpAttachment {
        drv_prog_id: opts.drv_prog_id,
        skb_prog_id: opts.skb_prog_id,
        hw_prog_id: opts.hw_prog_id,
    })
}

/// Runs a loaded XDP program once on `data` (BPF_PROG_TEST_RUN) and returns its verdict and
/// the packet as the program left it.
pub fn xdp_test_run(prog: BorrowedFd<'_>, data: &[u8]) -> io::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; data.len() + 256];
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: size_of::<libbpf_sys::bpf_test_run_opts>() as libbpf_sys::size_t,
        data_in: data.as_ptr().cast(),
        data_out: out.as_mut_ptr().cast(),
        data_size_in: data.len() as u32,
        data_size_out: out.len() as u32,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: data_in/data_out point to live buffers of the sizes given; the kernel writes at
    // most data_size_out bytes into data_out.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    out.truncate((opts.data_size_out as usize).min(out.len()));
    Ok((opts.retval, out))
}

/// Runs an XDP program once on `data` as if it arrived on `ifindex`/`rx_queue`
/// (BPF_PROG_TEST_RUN with an xdp_md context) and returns its verdict. The kernel refuses
/// frames shorter than an Ethernet header (EINVAL).
pub fn xdp_test_run_on(
    prog: BorrowedFd<'_>,
    data: &[u8],
    ifindex: u32,
    rx_queue: u32,
) -> io::Result<u32> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let mut ctx = [0u32, data.len() as u32, 0, ifindex, rx_queue, 0];
    let mut out = vec![0u8; data.len() + 256];
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: size_of::<libbpf_sys::bpf_test_run_opts>() as libbpf_sys::size_t,
        data_in: data.as_ptr().cast(),
        data_out: out.as_mut_ptr().cast(),
        data_size_in: data.len() as u32,
        data_size_out: out.len() as u32,
        ctx_in: ctx.as_ptr().cast(),
        ctx_out: ctx.as_mut_ptr().cast(),
        ctx_size_in: size_of::<[u32; 6]>() as u32,
        ctx_size_out: size_of::<[u32; 6]>() as u32,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: every pointer refers to a live buffer of the size given next to it.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok(opts.retval)
}

/// One AF_XDP socket as the kernel's sock_diag reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskInfo {
    pub inode: u32,
    pub ifindex: u32,
    pub queue: u32,
    pub uid: Option<u32>,
}

const AF_XDP: u8 = 44;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const XDP_SHOW_INFO: u32 = 1;
const XDP_DIAG_INFO: u16 = 1;
const XDP_DIAG_UID: u16 = 2;

/// Lists every bound AF_XDP socket on the machine (in this network namespace) through
/// NETLINK_SOCK_DIAG, the same source `ss --xdp` reads.
pub fn list_xsks() -> io::Result<Vec<XskInfo>> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };

    // nlmsghdr (16) + xdp_diag_req (16).
    let mut req = Vec::with_capacity(32);
    req.extend_from_slice(&32u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.extend_from_slice(&[AF_XDP, 0, 0, 0]);
    req.extend_from_slice(&0u32.to_ne_bytes()); // ino
    req.extend_from_slice(&XDP_SHOW_INFO.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // cookie: none
                                       // SAFETY: `req` is a valid buffer of the given length.
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: `buf` is a valid writable buffer of the given length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(out);
        }
        if parse_diag(&buf[..n as usize], &mut out)? {
            return Ok(out);
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses one recv() worth of sock_diag replies; returns true at NLMSG_DONE.
fn parse_diag(mut b: &[u8], out: &mut Vec<XskInfo>) -> io::Result<bool> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag reply");
    while b.len() >= 16 {
        let len = u32_at(b, 0).ok_or_else(bad)? as usize;
        let ty = u16_at(b, 4).ok_or_else(bad)?;
        if len < 16 || len > b.len() {
            return Err(bad());
        }
        let msg = &b[16..len];
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(msg, 0).ok_or_else(bad)? as i32;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            _ => {
                // xdp_diag_msg: family, type, pad[2], ino, cookie[2] = 16 bytes, then attributes.
                let inode = u32_at(msg, 4).ok_or_else(bad)?;
                let mut info = XskInfo {
                    inode,
                    ifindex: 0,
                    queue: 0,
                    uid: None,
                };
                let mut attrs = msg.get(16..).unwrap_or(&[]);
                while attrs.len() >= 4 {
                    let alen = u16_at(attrs, 0).ok_or_else(bad)? as usize;
                    let aty = u16_at(attrs, 2).ok_or_else(bad)?;
                    if alen < 4 || alen > attrs.len() {
                        break;
                    }
                    let payload = &attrs[4..alen];
                    match aty {
                        XDP_DIAG_INFO => {
                            info.ifindex = u32_at(payload, 0).ok_or_else(bad)?;
                            info.queue = u32_at(payload, 4).ok_or_else(bad)?;
                        }
                        XDP_DIAG_UID => info.uid = u32_at(payload, 0),
                        _ => {}
                    }
                    let step = (alen + 3) & !3;
                    attrs = attrs.get(step..).unwrap_or(&[]);
                }
                // An unbound socket reports no XDP_DIAG_INFO; it serves no queue.
                if info.ifindex != 0 {
                    out.push(info);
                }
            }
        }
        let step = (len + 3) & !3;
        b = b.get(step..).unwrap_or(&[]);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diag_parser_rejects_garbage_without_panicking() {
        let mut out = Vec::new();
        assert!(parse_diag(&[0xff; 40], &mut out).is_err());
        assert!(!parse_diag(&[1, 2, 3], &mut out).unwrap());
        let mut done = vec![0u8; 16];
        done[0] = 16;
        done[4] = NLMSG_DONE as u8;
        assert!(parse_diag(&done, &mut out).unwrap());
    }

    #[test]
    fn diag_parser_survives_random_replies() {
        let mut x = 0xdead_beef_cafe_f00du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut b: Vec<u8> = (0..next() % 96).map(|_| next() as u8).collect();
            if b.len() >= 16 && next() % 2 == 0 {
                // Make the length field plausible so the attribute walk gets exercised.
                let l = b.len() as u32;
                b[0..4].copy_from_slice(&l.to_ne_bytes());
                b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
            }
            let mut out = Vec::new();
            let _ = parse_diag(&b, &mut out);
        }
    }

    #[test]
    fn diag_parser_reads_info_attribute() {
        let mut m = Vec::new();
        let len = 16 + 16 + 12;
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[AF_XDP, 3, 0, 0]);
        m.extend_from_slice(&77u32.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&12u16.to_ne_bytes());
        m.extend_from_slice(&XDP_DIAG_INFO.to_ne_bytes());
        m.extend_from_slice(&5u32.to_ne_bytes());
        m.extend_from_slice(&3u32.to_ne_bytes());
        let mut out = Vec::new();
        assert!(!parse_diag(&m, &mut out).unwrap());
        assert_eq!(
            out,
            vec![XskInfo {
                inode: 77,
                ifindex: 5,
                queue: 3,
                uid: None
            }]
        );
    }
}
