//! Link impairment without netem: a tc-BPF program on a clsact egress hook that drops,
//! duplicates or corrupts packets at set rates (`src/bpf/impair.bpf.c`).
#![allow(unsafe_code)]

use std::{io, mem::MaybeUninit, os::fd::AsFd};

use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    MapCore, MapFlags, MapHandle, TcHookBuilder, TC_EGRESS,
};

mod skel {
    #![allow(clippy::all, unused_imports, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/impair.skel.rs"));
}

/// Rates in parts per million.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImpairConfig {
    pub drop_ppm: u32,
    pub dup_ppm: u32,
    pub corrupt_ppm: u32,
}

impl ImpairConfig {
    fn bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.drop_ppm.to_ne_bytes());
        b[4..8].copy_from_slice(&self.dup_ppm.to_ne_bytes());
        b[8..12].copy_from_slice(&self.corrupt_ppm.to_ne_bytes());
        b
    }
}

/// What the program did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImpairCounters {
    pub seen: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub corrupted: u64,
}

/// An impairment attached to one interface; it goes away with the interface (or its netns).
pub struct Impairment {
    cfg: MapHandle,
    stats: MapHandle,
}

impl Impairment {
    /// Attaches to the egress of `iface`, in namespace `ns` (`None`: the root namespace).
    pub fn attach(ns: Option<&str>, iface: &str, cfg: ImpairConfig) -> io::Result<Self> {
        let iface = iface.to_string();
        let work = move || -> io::Result<(u32, u32)> {
            let mut obj = MaybeUninit::uninit();
            let open = skel::ImpairSkelBuilder::default()
                .open(&mut obj)
                .map_err(io::Error::other)?;
            let sk = open.load().map_err(io::Error::other)?;
            sk.maps
                .impair_cfg
                .update(&0u32.to_ne_bytes(), &cfg.bytes(), MapFlags::ANY)
                .map_err(io::Error::other)?;
            let idx = steer_bpf::sys::ifindex(&iface)
                .ok_or_else(|| io::Error::other(format!("no {iface}")))?;
            let mut hook = TcHookBuilder::new(sk.progs.impair.as_fd())
                .ifindex(idx as i32)
                .replace(true)
                .handle(1)
                .priority(1)
                .hook(TC_EGRESS);
            // The clsact qdisc may exist already.
            let _ = hook.create();
            hook.attach().map_err(io::Error::other)?;
            let id =
                |m: &libbpf_rs::MapMut<'_>| libbpf_rs::MapInfo::new(m.as_fd()).map(|i| i.info.id);
            Ok((
                id(&sk.maps.impair_cfg).map_err(io::Error::other)?,
                id(&sk.maps.impair_stats).map_err(io::Error::other)?,
            ))
        };
        let (cfg_id, stats_id) = match ns {
            Some(ns) => crate::netns::in_netns(ns, work)??,
            None => work()?,
        };
        Ok(Self {
            cfg: MapHandle::from_map_id(cfg_id).map_err(io::Error::other)?,
            stats: MapHandle::from_map_id(stats_id).map_err(io::Error::other)?,
        })
    }

    /// Changes the rates.
    pub fn set(&self, cfg: ImpairConfig) -> io::Result<()> {
        self.cfg
            .update(&0u32.to_ne_bytes(), &cfg.bytes(), MapFlags::ANY)
            .map_err(io::Error::other)
    }

    pub fn counters(&self) -> ImpairCounters {
        let per_cpu = self
            .stats
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut c = ImpairCounters::default();
        for v in per_cpu {
            let f = |i: usize| {
                v.get(i * 8..i * 8 + 8)
                    .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap()))
            };
            c.seen += f(0);
            c.dropped += f(1);
            c.duplicated += f(2);
            c.corrupted += f(3);
        }
        c
    }
}
