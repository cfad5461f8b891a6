//! Entering a network namespace from one thread (setns(2) is per thread), so a test can open
//! std::net sockets that live in the peer namespace.
#![allow(unsafe_code)]

use std::{fs::File, io, os::fd::AsRawFd, thread};

/// Runs `f` on a new thread that has entered the network namespace `ns` (by name, as created by
/// `ip netns add`). Sockets created there stay in that namespace.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let file = File::open(format!("/var/run/netns/{ns}"))?;
    let h = thread::spawn(move || -> io::Result<T> {
        // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    });
    match h.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Spawns a thread inside `ns` and returns its handle (for servers that run while the test goes on).
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<thread::JoinHandle<io::Result<T>>> {
    let file = File::open(format!("/var/run/netns/{ns}"))?;
    Ok(thread::spawn(move || -> io::Result<T> {
        // SAFETY: as in `in_netns`.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    }))
}
