//! The testbed guard.
use std::{
    net::Ipv4Addr,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

/// Runs a command and returns its output (never panics on a non-zero exit).
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (run scripts/install-deps.sh)"))
}

/// Runs a command and panics with its stderr unless it succeeds.
pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Returns true when the process may build testbeds. Without root it skips loudly, except
/// under `CI=true`, where a missing privilege fails the test.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root (netns, veth, XDP, AF_XDP) and CI=true forbids skipping");
    }
    eprintln!("\n!!!!!!!! SKIPPED {test}: needs root (netns, veth, XDP, AF_XDP) !!!!!!!!\n");
    false
}

/// Shape of a testbed.
#[derive(Debug, Clone)]
pub struct TestbedOptions {
    /// RX/TX queues on both veth ends.
    pub queues: u32,
    /// RX queue of the host end that the peer's traffic lands on.
    pub steer_queue: u32,
    /// Steering for generic XDP (which is off by one on veth: rx = tx - 1).
    pub generic: bool,
}

impl Default for TestbedOptions {
    fn default() -> Self {
        Self {
            queues: 4,
            steer_queue: 3,
            generic: false,
        }
    }
}

/// A netns + veth pair. The host end (`host_if`, `host_ip`) is in the root namespace; the peer
/// (`peer_if`, `peer_ip`) is in namespace `ns`, which has no default route.
#[derive(Debug)]
pub struct Testbed {
    pub ns: String,
    pub host_if: String,
    pub peer_if: String,
    pub host_ip: Ipv4Addr,
    pub peer_ip: Ipv4Addr,
    pub queues: u32,
    keep: bool,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Testbed {
    /// Builds a testbed with 4 queues steered to RX queue 3 (native-mode steering).
    pub fn new() -> Self {
        Self::with(TestbedOptions::default())
    }

    pub fn with(opts: TestbedOptions) -> Self {
        assert!(opts.queues >= 1 && opts.steer_queue < opts.queues);
        // Unique per process and per testbed so tests can run in parallel; the subnet comes
        // from 198.18.0.0/15 and is chosen so concurrent testbeds do not overlap.
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let slot = (std::process::id().wrapping_mul(7).wrapping_add(seq * 13)) % 500 + 1;
        let (ns, tag) = Self::free_slot(slot);
        let (b2, b3) = (18 + (tag / 256) as u8, (tag % 256) as u8);
        let tb = Testbed {
            host_if: format!("{ns}h"),
            peer_if: format!("{ns}p"),
            ns,
            host_ip: Ipv4Addr::new(198, b2, b3, 1),
            peer_ip: Ipv4Addr::new(198, b2, b3, 2),
            queues: opts.queues,
            keep: false,
        };
        // From here on Drop cleans up whatever part got built.
        tb.build(&opts);
        tb
    }

    /// Picks a slot whose subnet and names are unused.
    fn free_slot(start: u32) -> (String, u32) {
        let addrs = run_ok("ip", &["-o", "-4", "addr"]);
        let netns = run_ok("ip", &["netns", "list"]);
        for i in 0..500 {
            let tag = (start + i) % 500 + 1;
            let ns = format!("xt{:x}{tag}", std::process::id() % 4096);
            let (b2, b3) = (18 + tag / 256, tag % 256);
            if !addrs.contains(&format!("198.{b2}.{b3}.")) && !netns.contains(&ns) {
                return (ns, tag);
            }
        }
        panic!("no free testbed slot in 198.18.0.0/15");
    }

    fn build(&self, opts: &TestbedOptions) {
        let q = opts.queues.to_string();
        run_ok("ip", &["netns", "add", &self.ns]);
        run_ok(
            "ip",
            &[
                "link",
                "add",
                &self.host_if,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                &self.peer_if,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "netns",
                &self.ns,
            ],
        );
        run_ok(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", self.host_ip),
                "dev",
                &self.host_if,
            ],
        );
        // No IPv6 on either end: the kernel's own router solicitations and MLD reports would
        // otherwise land on the steered queue at random moments and show up in exact counts.
        run_ok(
            "sysctl",
            &[
                "-q",
                "-w",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", self.host_if),
            ],
        );
        self.ns_ok(
            "sysctl",
            &[
                "-q",
                "-w",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", self.peer_if),
            ],
        );
        run_ok("ip", &["link", "set", &self.host_if, "up"]);
        self.ns_ok("ip", &["link", "set", "lo", "up"]);
        self.ns_ok(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", self.peer_ip),
                "dev",
                &self.peer_if,
            ],
        );
        self.ns_ok("ip", &["link", "set", &self.peer_if, "up"]);
        // The peer computes its own checksums (a veth peer otherwise sends CHECKSUM_PARTIAL
        // frames with no valid checksum) and sends no GSO super-frames larger than a UMEM frame.
        self.ns_ok(
            "ethtool",
            &["-K", &self.peer_if, "tx", "off", "tso", "off", "gso", "off"],
        );
        self.steer_to(opts.steer_queue, opts.generic);
    }

    /// Steers the peer's traffic onto RX queue `queue` of the host end by giving only the
    /// matching peer TX queue CPUs in XPS (native: tx-Q -> rx-Q; generic: tx-(Q+1) -> rx-Q).
    pub fn steer_to(&self, queue: u32, generic: bool) {
        let txq = if generic { queue + 1 } else { queue };
        assert!(
            txq < self.queues,
            "queue {queue} cannot be steered to in this testbed (generic needs Q+1 < queues)"
        );
        // Every online CPU maps to tx-txq; a mask naming absent CPUs is refused by the kernel.
        let cpus = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(32);
        let all = format!("{:x}", (1u64 << cpus) - 1);
        let mut script = String::new();
        for i in 0..self.queues {
            let mask = if i == txq { all.as_str() } else { "0" };
            script.push_str(&format!(
                "echo {mask} > /sys/class/net/{}/queues/tx-{i}/xps_cpus; ",
                self.peer_if
            ));
        }
        self.ns_ok("sh", &["-c", &script]);
    }

    /// Runs a command inside the namespace (`ip netns exec NS ...`).
    pub fn ns(&self, cmd: &str, args: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", &self.ns, cmd];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// As [`Testbed::ns`], panicking on failure.
    pub fn ns_ok(&self, cmd: &str, args: &[&str]) -> String {
        let mut a = vec!["netns", "exec", &self.ns, cmd];
        a.extend_from_slice(args);
        run_ok("ip", &a)
    }

    /// Keeps the testbed after the guard is dropped (for the by-hand `testbed up`).
    pub fn keep(mut self) -> Self {
        self.keep = true;
        self
    }

    /// Removes a testbed by namespace name (what Drop does), for `testbed down`.
    pub fn remove(ns: &str) {
        let host_if = format!("{ns}h");
        // Deleting the namespace deletes the peer, which deletes the host end with its XDP program.
        let _ = run("ip", &["netns", "del", ns]);
        let _ = run("ip", &["link", "del", &host_if]);
        // Control sockets a killed service left for the host end.
        for (_, sock) in xsk_stack::control::sockets_of(&host_if) {
            let _ = std::fs::remove_file(sock);
        }
        // Pins of an attachment to the host end outlive the interface; remove them too.
        let pins = steer_bpf::PinDir::new(None, &host_if);
        if pins.exists() {
            let _ = std::fs::remove_dir_all(pins.dir());
            let _ = std::fs::remove_dir(pins.root());
        }
    }
}

impl Default for Testbed {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if !self.keep {
            Self::remove(&self.ns);
        }
    }
}
