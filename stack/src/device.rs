//! The smoltcp device over the AF_XDP socket, in shared-IP mode: smoltcp sees IP packets
//! (`Medium::Ip`); this layer strips the Ethernet header on receive and adds it on transmit.
//! An RxToken hands smoltcp the frame in place; a TxToken takes its frame only in `consume`.
use std::{cell::RefCell, collections::HashMap, net::Ipv4Addr, time::Instant};

use smoltcp::{
    phy::{self, DeviceCapabilities, Medium},
    time::Instant as SmolInstant,
};
use xsk_rs::{FrameDesc, Umem};

use crate::{
    l2::{KernelNeighbours, L2},
    sys::xsk::{self as xsk_sys, Xsk},
};

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];

/// Device-level counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames that were not plain IPv4 over Ethernet (VLAN-tagged, ARP, runts).
    pub rx_not_ipv4: u64,
    /// Outgoing packets dropped because no UMEM frame was free.
    pub tx_no_frame: u64,
    /// Outgoing packets dropped because the next hop's MAC was unknown (being resolved).
    pub tx_no_neighbour: u64,
    /// Outgoing packets dropped because no route leads out of this interface.
    pub tx_no_route: u64,
    /// SYNs to a listening port when no listening socket was armed (refused with RST).
    pub syn_refused: u64,
}

/// The mutable part, shared by the tokens of one `receive` call.
pub(crate) struct DeviceInner {
    pub xsk: Xsk,
    pub l2: L2<KernelNeighbours>,
    pub counters: DeviceCounters,
    pub now: Instant,
    our_mac: [u8; 6],
    /// Where smoltcp writes a packet no frame could be found for; it is then dropped.
    scratch: Vec<u8>,
}

/// A smoltcp `Device` over one XSK.
pub(crate) struct XskDevice {
    umem: Umem,
    pub inner: RefCell<DeviceInner>,
    rx_batch: Vec<FrameDesc>,
    rx_pos: usize,
    /// Frames smoltcp may take per `Interface::poll`, so the shard can re-arm listeners between
    /// batches.
    pub rx_budget: usize,
    rx_taken: usize,
    mtu: usize,
    /// Armed listening sockets per local TCP port, decremented by each SYN seen this batch.
    pub listen_capacity: HashMap<u16, u32>,
}

impl XskDevice {
    pub fn new(
        xsk: Xsk,
        l2: L2<KernelNeighbours>,
        our_mac: [u8; 6],
        mtu: usize,
        ring: usize,
    ) -> Self {
        let umem = xsk.umem().clone();
        Self {
            umem,
            inner: RefCell::new(DeviceInner {
                xsk,
                l2,
                counters: DeviceCounters::default(),
                now: Instant::now(),
                our_mac,
                scratch: vec![0; mtu + ETH_HLEN],
            }),
            rx_batch: Vec::with_capacity(ring),
            rx_pos: 0,
            rx_budget: 64,
            rx_taken: 0,
            mtu,
            listen_capacity: HashMap::new(),
        }
    }

    /// Starts a new `Interface::poll` round: resets the frame budget.
    pub fn begin_batch(&mut self) {
        self.rx_taken = 0;
    }

    /// Frames taken off the rx ring and not yet handed to smoltcp.
    pub fn rx_backlog(&self) -> usize {
        self.rx_batch.len() - self.rx_pos
    }

    /// Counts a SYN to a port with no armed listening socket (smoltcp will answer RST).
    fn watch_syn(&mut self, ip: &[u8]) {
        if ip.len() < 20 || ip[9] != 6 {
            return;
        }
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        let Some(tcp) = ip.get(ihl..ihl + 14) else {
            return;
        };
        let flags = tcp[13];
        if flags & 0x02 == 0 || flags & 0x10 != 0 {
            return;
        }
        let port = u16::from_be_bytes([tcp[2], tcp[3]]);
        if let Some(cap) = self.listen_capacity.get_mut(&port) {
            if *cap == 0 {
                self.inner.get_mut().counters.syn_refused += 1;
            } else {
                *cap -= 1;
            }
        }
    }
}

impl phy::Device for XskDevice {
    type RxToken<'a> = XskRxToken<'a>;
    type TxToken<'a> = XskTxToken<'a>;

    fn receive(&mut self, _ts: SmolInstant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        loop {
            if self.rx_taken >= self.rx_budget {
                return None;
            }
            if self.rx_pos == self.rx_batch.len() {
                self.rx_batch.clear();
                self.rx_pos = 0;
                if self.inner.get_mut().xsk.receive(&mut self.rx_batch) == 0 {
                    return None;
                }
            }
            let desc = self.rx_batch[self.rx_pos];
            self.rx_pos += 1;
            let frame = xsk_sys::frame(&self.umem, &desc);
            if frame.len() < ETH_HLEN + 20 || frame[12..14] != ETHERTYPE_IPV4 {
                let inner = self.inner.get_mut();
                inner.counters.rx_not_ipv4 += 1;
                inner.xsk.release(desc);
                continue;
            }
            let len = frame.len();
            if !self.listen_capacity.is_empty() {
                // Copy out the few header bytes the SYN check needs (the frame borrow must end).
                let mut hdr = [0u8; 80];
                let n = (len - ETH_HLEN).min(hdr.len());
                hdr[..n].copy_from_slice(&frame[ETH_HLEN..ETH_HLEN + n]);
                self.watch_syn(&hdr[..n]);
            }
            self.rx_taken += 1;
            let inner = self.inner.get_mut();
            inner.counters.rx_packets += 1;
            inner.counters.rx_bytes += len as u64;
            return Some((
                XskRxToken {
                    umem: &self.umem,
                    inner: &self.inner,
                    desc: Some(desc),
                },
                XskTxToken {
                    umem: &self.umem,
                    inner: &self.inner,
                    mtu: self.mtu,
                },
            ));
        }
    }

    fn transmit(&mut self, _ts: SmolInstant) -> Option<Self::TxToken<'_>> {
        Some(XskTxToken {
            umem: &self.umem,
            inner: &self.inner,
            mtu: self.mtu,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = None;
        // Checksums: verified on receive and computed on transmit (smoltcp's default, Both).
        caps
    }
}

/// A received frame, handed to smoltcp in place (no copy).
pub(crate) struct XskRxToken<'a> {
    umem: &'a Umem,
    inner: &'a RefCell<DeviceInner>,
    desc: Option<FrameDesc>,
}

impl phy::RxToken for XskRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(mut self, f: F) -> R {
        let desc = self
            .desc
            .take()
            .expect("an rx token holds its frame until consumed");
        // No RefCell borrow is held while smoltcp runs: it may transmit from inside `f`.
        let r = f(&xsk_sys::frame(self.umem, &desc)[ETH_HLEN..]);
        self.inner.borrow_mut().xsk.release(desc);
        r
    }
}

impl Drop for XskRxToken<'_> {
    /// A token dropped without being consumed still gives its frame back.
    fn drop(&mut self) {
        if let Some(desc) = self.desc.take() {
            self.inner.borrow_mut().xsk.release(desc);
        }
    }
}

/// A transmit opportunity; the UMEM frame is taken only when smoltcp really sends.
pub(crate) struct XskTxToken<'a> {
    umem: &'a Umem,
    inner: &'a RefCell<DeviceInner>,
    mtu: usize,
}

impl phy::TxToken for XskTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let taken = if len <= self.mtu {
            self.inner.borrow_mut().xsk.alloc_tx()
        } else {
            None
        };
        let Some(mut desc) = taken else {
            let mut inner = self.inner.borrow_mut();
            inner.counters.tx_no_frame += 1;
            let mut scratch = std::mem::take(&mut inner.scratch);
            drop(inner);
            scratch.resize(len.max(scratch.len()), 0);
            let r = f(&mut scratch[..len]);
            self.inner.borrow_mut().scratch = scratch;
            return r;
        };
        let total = ETH_HLEN + len;
        let (r, dst) = match xsk_sys::frame_mut(self.umem, &mut desc, total) {
            Some(buf) => {
                let r = f(&mut buf[ETH_HLEN..]);
                let dst = buf
                    .get(ETH_HLEN + 16..ETH_HLEN + 20)
                    .map(|d| Ipv4Addr::new(d[0], d[1], d[2], d[3]));
                (r, dst)
            }
            None => {
                // A frame smaller than the MTU cannot happen with a validated config; drop.
                let mut scratch = vec![0u8; len];
                (f(&mut scratch), None)
            }
        };
        let mut inner = self.inner.borrow_mut();
        let now = inner.now;
        let mac = match dst {
            Some(d) => inner.l2.resolve(d, now).map_err(Some),
            None => Err(None),
        };
        match mac {
            Ok(mac) => {
                let our = inner.our_mac;
                if let Some(buf) = xsk_sys::frame_mut(self.umem, &mut desc, total) {
                    buf[0..6].copy_from_slice(&mac);
                    buf[6..12].copy_from_slice(&our);
                    buf[12..14].copy_from_slice(&ETHERTYPE_IPV4);
                }
                inner.counters.tx_packets += 1;
                inner.counters.tx_bytes += total as u64;
                inner.xsk.queue_tx(desc);
            }
            Err(miss) => {
                match miss {
                    Some(crate::l2::L2Miss::NoRoute) => inner.counters.tx_no_route += 1,
                    _ => inner.counters.tx_no_neighbour += 1,
                }
                inner.xsk.cancel_tx(desc);
            }
        }
        r
    }
}
