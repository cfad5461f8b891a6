//! Start-up: from a configuration to a running shard core. Checks the attachment (pins of
//! this interface, the right queue, no other socket on it), reads the interface's address, MAC
//! and MTU, binds the AF_XDP socket and builds the smoltcp interface.
use std::{sync::Arc, time::Instant};

use smoltcp::{
    iface::{Config as IfaceConfig, Interface, SocketSet},
    wire::{HardwareAddress, IpCidr},
};
use steer_bpf::Steering;

use super::{conns::Conns, smol_now, Core};
use crate::{
    config::Config,
    device::XskDevice,
    error::StackError,
    events::StateTracker,
    l2::{KernelNeighbours, L2Timing, L2},
    stats::RuntimeCounters,
    sys::{self, xsk::Xsk},
};

/// A random seed from the OS (smoltcp's default seed is 0: every ISN sequence would repeat).
pub(crate) fn os_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_ne_bytes(b),
        // Never 0 (smoltcp's default): fall back to time and pid.
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32) | 1
        }
    }
}

fn read_sysfs(iface: &str, what: &str) -> Result<String, StackError> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/{what}"))
        .map(|s| s.trim().to_string())
        .map_err(|e| StackError::io(format!("reading /sys/class/net/{iface}/{what}"), e))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    v.try_into().ok()
}

impl Core {
    /// Checks the setup, binds the XSK and registers it with the steering program: from the
    /// moment this returns, the XDP program redirects the steered flows to this shard.
    pub fn open(cfg: Config) -> Result<Self, StackError> {
        cfg.validate().map_err(StackError::Config)?;
        let ifindex = steer_bpf::sys::ifindex(&cfg.iface)
            .ok_or_else(|| StackError::NoSuchInterface(cfg.iface.clone()))?;
        let steering = Steering::open(&cfg.iface, cfg.pin_root.as_deref())?;
        let (queue, pinned_ifindex) = steering.config()?;
        // A pin directory is named after an interface, but names can be reused: check the
        // index recorded at attach time.
        if pinned_ifindex != ifindex {
            return Err(StackError::ForeignPins {
                iface: cfg.iface.clone(),
                ifindex,
                pinned: pinned_ifindex,
            });
        }
        if queue != cfg.queue {
            return Err(StackError::WrongQueue {
                iface: cfg.iface.clone(),
                attached: queue,
                wanted: cfg.queue,
            });
        }
        // One shard per queue: a second socket would take the XSKMAP slot from the first.
        if steering.registered_queues()? & (1u64 << cfg.queue.min(63)) != 0 {
            return Err(StackError::QueueBusy {
                iface: cfg.iface.clone(),
                queue: cfg.queue,
            });
        }
        let (addr, prefix) = sys::netlink::addresses(ifindex)
            .map_err(|e| StackError::io("reading interface addresses (netlink)", e))?
            .into_iter()
            .next()
            .ok_or_else(|| StackError::NoAddress(cfg.iface.clone()))?;
        let mac = parse_mac(&read_sysfs(&cfg.iface, "address")?)
            .ok_or_else(|| StackError::Config(format!("{} has no Ethernet address", cfg.iface)))?;
        let link_mtu: usize = read_sysfs(&cfg.iface, "mtu")?.parse().unwrap_or(1500);
        // A packet and its Ethernet header must fit a frame after the kernel's headroom.
        let frame_room = cfg.frame_size as usize - 256 - 14;
        let mtu = link_mtu.min(frame_room);

        let xsk = Xsk::bind(
            &cfg.iface,
            cfg.queue,
            sys::xsk::XskConfig {
                frames: cfg.frames,
                frame_size: cfg.frame_size,
                ring_size: cfg.ring_size,
                bind: cfg.bind,
                need_wakeup: cfg.need_wakeup,
            },
        )?;
        let l2 = L2::new(
            KernelNeighbours { ifindex },
            ifindex,
            addr,
            prefix,
            L2Timing::default(),
        );
        let mut dev = XskDevice::new(xsk, l2, mac, addr, mtu, cfg.ring_size as usize);
        dev.rx_budget = cfg.listen_depth.max(8);

        let start = Instant::now();
        let mut icfg = IfaceConfig::new(HardwareAddress::Ip);
        icfg.random_seed = os_seed();
        let mut iface = Interface::new(icfg, &mut dev, smol_now(start, start));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(addr.into(), prefix));
        });
        // smoltcp only needs to know an off-link destination is reachable; the real next hop
        // comes from the kernel's routes in the L2 layer.
        let _ = iface.routes_mut().add_default_ipv4_route(addr);

        // Registered last: from here on the XDP program redirects to us.
        steering.register_xsk(cfg.queue, dev.inner.get_mut().xsk.borrowed_fd())?;
        tracing::info!(iface = %cfg.iface, queue = cfg.queue, %addr, mtu, zero_copy = dev.inner.get_mut().xsk.zero_copy, "shard up");
        Ok(Self {
            conns: Conns::new(cfg.ephemeral_ports.0),
            cfg,
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            start,
            addr,
            steering: Arc::new(steering),
            counters: RuntimeCounters::default(),
            states: StateTracker::default(),
            hook: None,
            last_maintenance: start,
        })
    }
}
