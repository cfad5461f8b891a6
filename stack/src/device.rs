//! The smoltcp device over the AF_XDP socket, in shared-IP mode: smoltcp sees IP packets
//! (`Medium::Ip`); this layer strips the Ethernet header on receive and adds it on transmit.
//! An RxToken hands smoltcp the frame in place; a TxToken takes its frame only in `consume`.
//! Every received packet is validated here once (headers, checksums) so each drop is counted
//! under its reason, and both directions feed the nstat-style counters and the capture.
use std::{cell::RefCell, collections::HashMap, net::Ipv4Addr, time::Instant};

use serde::Serialize;
use smoltcp::{
    phy::{self, Checksum, DeviceCapabilities, Medium},
    time::Instant as SmolInstant,
};
use xsk_rs::{FrameDesc, Umem};

use crate::{
    capture::{Capture, CaptureProgress, CaptureSpec},
    faults::{Fault, Faults},
    l2::{KernelNeighbours, L2Miss, L2},
    sys::xsk::{self as xsk_sys, Xsk},
    wire::{self, RxDrop, RxKind, TxKind, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];

/// Per-packet counters of a shard (plain integers: only the shard thread writes them).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DeviceCounters {
    /// Frames received from the AF_XDP socket.
    pub rx_packets: u64,
    /// Bytes received from the AF_XDP socket.
    pub rx_bytes: u64,
    /// Frames sent through the AF_XDP socket.
    pub tx_packets: u64,
    /// Bytes sent through the AF_XDP socket.
    pub tx_bytes: u64,
    /// Dropped on receive: not IPv4 over Ethernet (VLAN-tagged, ARP, runts).
    pub rx_not_ipv4: u64,
    /// Dropped on receive: truncated or inconsistent IPv4/TCP/UDP headers.
    pub rx_malformed: u64,
    /// Dropped on receive: IPv4, TCP or UDP checksum wrong.
    pub rx_bad_checksum: u64,
    /// Dropped on receive: IPv4 fragments.
    pub rx_fragments: u64,
    /// Dropped on receive: destination is not the stack's address (broadcast, multicast, other).
    pub rx_not_ours: u64,
    /// Dropped on receive: impossible source (0/8, 127/8, multicast, broadcast, our own address),
    /// which the stack must never answer.
    pub rx_martian: u64,
    /// Dropped on transmit: no free UMEM frame.
    pub tx_no_frame: u64,
    /// Dropped on transmit: next hop's MAC unknown (being resolved).
    pub tx_no_neighbour: u64,
    /// Dropped on transmit: no route out of this interface.
    pub tx_no_route: u64,
    /// SYNs to a listening port with no armed socket (answered with RST).
    pub syn_refused: u64,
    /// TCP segments received (nstat TcpInSegs).
    #[serde(rename = "TcpInSegs")]
    pub tcp_in_segs: u64,
    /// TCP segments sent (nstat TcpOutSegs).
    #[serde(rename = "TcpOutSegs")]
    pub tcp_out_segs: u64,
    /// TCP segments retransmitted (nstat TcpRetransSegs).
    #[serde(rename = "TcpRetransSegs")]
    pub tcp_retrans_segs: u64,
    /// TCP resets sent (nstat TcpOutRsts).
    #[serde(rename = "TcpOutRsts")]
    pub tcp_out_rsts: u64,
    /// TCP segments received with errors (nstat TcpInErrs).
    #[serde(rename = "TcpInErrs")]
    pub tcp_in_errs: u64,
    /// UDP datagrams delivered (nstat UdpInDatagrams).
    #[serde(rename = "UdpInDatagrams")]
    pub udp_in_datagrams: u64,
    /// UDP datagrams sent (nstat UdpOutDatagrams).
    #[serde(rename = "UdpOutDatagrams")]
    pub udp_out_datagrams: u64,
    /// UDP datagrams to unbound ports (nstat UdpNoPorts).
    #[serde(rename = "UdpNoPorts")]
    pub udp_no_ports: u64,
    /// UDP datagrams received with errors (nstat UdpInErrors).
    #[serde(rename = "UdpInErrors")]
    pub udp_in_errors: u64,
    /// UDP datagrams dropped: receive buffer full (nstat UdpRcvbufErrors).
    #[serde(rename = "UdpRcvbufErrors")]
    pub udp_rcvbuf_errors: u64,
}

/// Room left in a bound UDP socket's receive buffer, published by the shard before each batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpRoom {
    pub packets: usize,
    pub bytes: usize,
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
    /// Highest sequence number sent per flow (local port, remote address, remote port), to
    /// tell retransmissions apart.
    snd_max: HashMap<(u16, [u8; 4], u16), u32>,
    /// A TCP segment with SYN, FIN or RST went through since the shard last looked: the only
    /// segments that change connection states (timers aside), so the only reason to scan them.
    pub ctl_seen: bool,
    pub capture: Option<Capture>,
    /// The fault injector, if a test asked for one.
    pub faults: Option<Faults>,
    /// Transmit frames the fault injector holds back (released at the end of the batch).
    pub held_tx: Vec<FrameDesc>,
    /// The last capture, kept for status after it finished.
    pub last_capture: Option<(CaptureSpec, std::sync::Arc<CaptureProgress>)>,
}

impl DeviceInner {
    /// Queues the transmit frames the fault injector held back (end of a batch).
    pub fn release_held_tx(&mut self) {
        for d in self.held_tx.drain(..) {
            self.xsk.queue_tx(d);
        }
    }

    fn capture(&mut self, frame: &[u8]) {
        if let Some(c) = &mut self.capture {
            if !c.record(frame) {
                self.capture = None;
            }
        }
    }

    /// Forgets sequence tracking for flows that no longer exist.
    pub fn retain_flows(&mut self, keep: impl Fn(&(u16, [u8; 4], u16)) -> bool) {
        self.snd_max.retain(|k, _| keep(k));
    }

    pub fn tracked_flows(&self) -> usize {
        self.snd_max.len()
    }

    fn account_tx(&mut self, ip: &[u8]) {
        match wire::classify_tx(ip) {
            TxKind::Tcp {
                src_port,
                dst,
                dst_port,
                seq,
                seq_len,
                flags,
            } => {
                self.counters.tcp_out_segs += 1;
                self.ctl_seen |= flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0;
                if flags & TCP_RST != 0 {
                    self.counters.tcp_out_rsts += 1;
                } else if seq_len > 0 {
                    let end = seq.wrapping_add(seq_len);
                    let key = (src_port, dst, dst_port);
                    match self.snd_max.get_mut(&key) {
                        // A segment ending at or before what was already sent is a resend.
                        Some(max)
                            if flags & TCP_SYN == 0 && (max.wrapping_sub(end) as i32) >= 0 =>
                        {
                            self.counters.tcp_retrans_segs += 1;
                        }
                        Some(max) => {
                            if (end.wrapping_sub(*max) as i32) > 0 {
                                *max = end;
                            }
                        }
                        None => {
                            self.snd_max.insert(key, end);
                        }
                    }
                }
            }
            TxKind::Udp => self.counters.udp_out_datagrams += 1,
            TxKind::IcmpPortUnreachable => self.counters.udp_no_ports += 1,
            TxKind::Other => {}
        }
    }
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
    /// Receive room of each bound UDP port, decremented by each datagram this batch.
    pub udp_room: HashMap<u16, UdpRoom>,
    /// The stack's address: packets for anything else are dropped.
    our_ip: [u8; 4],
    /// Frames to hand smoltcp before new ones (fault injector: duplicates, released holds).
    injected: std::collections::VecDeque<FrameDesc>,
    held_rx: std::collections::VecDeque<FrameDesc>,
}

impl XskDevice {
    pub fn new(
        xsk: Xsk,
        l2: L2<KernelNeighbours>,
        our_mac: [u8; 6],
        our_ip: Ipv4Addr,
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
                snd_max: HashMap::new(),
                ctl_seen: false,
                capture: None,
                last_capture: None,
                faults: None,
                held_tx: Vec::new(),
            }),
            rx_batch: Vec::with_capacity(ring),
            rx_pos: 0,
            rx_budget: 64,
            rx_taken: 0,
            mtu,
            listen_capacity: HashMap::new(),
            udp_room: HashMap::new(),
            our_ip: our_ip.octets(),
            injected: std::collections::VecDeque::new(),
            held_rx: std::collections::VecDeque::new(),
        }
    }

    /// Starts a new `Interface::poll` round: resets the frame budget.
    pub fn begin_batch(&mut self) {
        self.rx_taken = 0;
    }

    /// Frames taken off the rx ring and not yet handed to smoltcp.
    pub fn rx_backlog(&self) -> usize {
        self.rx_batch.len() - self.rx_pos + self.injected.len() + self.held_rx.len()
    }

    /// Applies the fault plan to a fresh received frame: `None` if it is dropped or held back.
    fn inject_rx(&mut self, mut desc: FrameDesc) -> Option<FrameDesc> {
        let inner = self.inner.get_mut();
        let Some(f) = inner.faults.as_mut().filter(|f| f.plan.on_receive) else {
            return Some(desc);
        };
        // A frame held back earlier follows this one: reordered by one position.
        if let Some(h) = self.held_rx.pop_front() {
            self.injected.push_back(h);
        }
        let len = xsk_sys::frame(&self.umem, &desc).len();
        match f.decide() {
            Fault::None => {}
            Fault::Drop => {
                inner.xsk.release(desc);
                return None;
            }
            Fault::Reorder => {
                self.held_rx.push_back(desc);
                return None;
            }
            Fault::Corrupt => {
                if let (Some(at), Some(b)) = (
                    f.corrupt_at(len),
                    xsk_sys::frame_mut(&self.umem, &mut desc, len),
                ) {
                    b[at] ^= 0xff;
                }
            }
            Fault::Duplicate => {
                if let Some(mut copy) = inner.xsk.alloc_stack() {
                    let src = xsk_sys::frame(&self.umem, &desc);
                    match xsk_sys::frame_mut(&self.umem, &mut copy, len) {
                        Some(dst) => {
                            dst.copy_from_slice(src);
                            self.injected.push_back(copy);
                        }
                        None => inner.xsk.release(copy),
                    }
                }
            }
        }
        Some(desc)
    }

    /// Accounts one valid packet; returns false if it must be dropped here (UDP socket full).
    fn admit(&mut self, kind: RxKind) -> bool {
        let inner = self.inner.get_mut();
        let counters = &mut inner.counters;
        match kind {
            RxKind::Tcp { dst_port, flags } => {
                counters.tcp_in_segs += 1;
                inner.ctl_seen |= flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0;
                if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
                    if let Some(cap) = self.listen_capacity.get_mut(&dst_port) {
                        if *cap == 0 {
                            counters.syn_refused += 1;
                        } else {
                            *cap -= 1;
                        }
                    }
                }
                true
            }
            RxKind::Udp { dst_port, payload } => match self.udp_room.get_mut(&dst_port) {
                // Unbound ports are left to smoltcp, which answers port unreachable (UdpNoPorts).
                None => true,
                // Twice the payload: the ring may pad to wrap around (smoltcp's PacketBuffer).
                Some(room) if room.packets > 0 && room.bytes >= 2 * payload => {
                    room.packets -= 1;
                    room.bytes -= payload;
                    counters.udp_in_datagrams += 1;
                    true
                }
                Some(_) => {
                    counters.udp_rcvbuf_errors += 1;
                    false
                }
            },
            RxKind::Other => true,
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
            let desc = match self.injected.pop_front() {
                Some(d) => d,
                None => {
                    if self.rx_pos == self.rx_batch.len() {
                        self.rx_batch.clear();
                        self.rx_pos = 0;
                        if self.inner.get_mut().xsk.receive(&mut self.rx_batch) == 0 {
                            // Frames held back by the fault injector go out at the end of a batch.
                            if self.held_rx.is_empty() {
                                return None;
                            }
                            self.injected.extend(self.held_rx.drain(..));
                            continue;
                        }
                    }
                    let d = self.rx_batch[self.rx_pos];
                    self.rx_pos += 1;
                    match self.inject_rx(d) {
                        Some(d) => d,
                        None => continue,
                    }
                }
            };
            let frame = xsk_sys::frame(&self.umem, &desc);
            let len = frame.len();
            let inner = self.inner.get_mut();
            inner.counters.rx_packets += 1;
            inner.counters.rx_bytes += len as u64;
            inner.capture(frame);
            let verdict = if len < ETH_HLEN || frame[12..14] != ETHERTYPE_IPV4 {
                inner.counters.rx_not_ipv4 += 1;
                None
            } else {
                let ip = &frame[ETH_HLEN..];
                let proto = ip.get(9).copied().unwrap_or(0);
                let ours = self.our_ip;
                match wire::check_rx(ip) {
                    Ok(_) if ip[16..20] != ours => {
                        inner.counters.rx_not_ours += 1;
                        None
                    }
                    Ok(_) if wire::martian_source([ip[12], ip[13], ip[14], ip[15]], ours) => {
                        inner.counters.rx_martian += 1;
                        None
                    }
                    Ok(kind) => Some(kind),
                    Err(why) => {
                        let c = &mut inner.counters;
                        match why {
                            RxDrop::Malformed => c.rx_malformed += 1,
                            RxDrop::BadIpChecksum | RxDrop::BadL4Checksum => c.rx_bad_checksum += 1,
                            RxDrop::Fragment => c.rx_fragments += 1,
                        }
                        if matches!(why, RxDrop::Malformed | RxDrop::BadL4Checksum) {
                            match proto {
                                6 => c.tcp_in_errs += 1,
                                17 => c.udp_in_errors += 1,
                                _ => {}
                            }
                        }
                        None
                    }
                }
            };
            match verdict {
                Some(kind) if self.admit(kind) => {
                    self.rx_taken += 1;
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
                _ => self.inner.get_mut().xsk.release(desc),
            }
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
        // IPv4/TCP/UDP checksums are verified in `receive` (and counted); smoltcp only computes
        // them on transmit. ICMP is left to smoltcp both ways.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps.checksum.udp = Checksum::Tx;
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
            if scratch.len() < len {
                scratch.resize(len, 0);
            }
            let r = f(&mut scratch[..len]);
            self.inner.borrow_mut().scratch = scratch;
            return r;
        };
        let total = ETH_HLEN + len;
        let Some(buf) = xsk_sys::frame_mut(self.umem, &mut desc, total) else {
            // Cannot happen with a validated config (the MTU fits a frame); drop the packet.
            self.inner.borrow_mut().xsk.cancel_tx(desc);
            let mut scratch = vec![0u8; len];
            return f(&mut scratch);
        };
        let r = f(&mut buf[ETH_HLEN..]);
        let dst = buf
            .get(ETH_HLEN + 16..ETH_HLEN + 20)
            .map(|d| Ipv4Addr::new(d[0], d[1], d[2], d[3]));
        let mut inner = self.inner.borrow_mut();
        let now = inner.now;
        let mac = match dst {
            Some(d) => inner.l2.resolve(d, now).map_err(Some),
            None => Err(None),
        };
        match mac {
            Ok(mac) => {
                let our = inner.our_mac;
                buf[0..6].copy_from_slice(&mac);
                buf[6..12].copy_from_slice(&our);
                buf[12..14].copy_from_slice(&ETHERTYPE_IPV4);
                inner.counters.tx_packets += 1;
                inner.counters.tx_bytes += total as u64;
                inner.account_tx(&buf[ETH_HLEN..]);
                inner.capture(buf);
                let fault = match inner.faults.as_mut().filter(|f| f.plan.on_transmit) {
                    Some(f) => {
                        let d = f.decide();
                        if d == Fault::Corrupt {
                            if let Some(at) = f.corrupt_at(total) {
                                buf[at] ^= 0xff;
                            }
                        }
                        d
                    }
                    None => Fault::None,
                };
                match fault {
                    Fault::Drop => inner.xsk.cancel_tx(desc),
                    Fault::Reorder => inner.held_tx.push(desc),
                    Fault::Duplicate => {
                        if let Some(mut copy) = inner.xsk.alloc_tx() {
                            match xsk_sys::frame_mut(self.umem, &mut copy, total) {
                                Some(dst) => {
                                    dst.copy_from_slice(buf);
                                    inner.xsk.queue_tx(copy);
                                }
                                None => inner.xsk.cancel_tx(copy),
                            }
                        }
                        inner.xsk.queue_tx(desc);
                    }
                    Fault::None | Fault::Corrupt => {
                        inner.xsk.queue_tx(desc);
                        // A frame held back earlier goes after this one.
                        if let Some(h) = inner.held_tx.pop() {
                            inner.xsk.queue_tx(h);
                        }
                    }
                }
            }
            Err(miss) => {
                match miss {
                    Some(L2Miss::NoRoute) => inner.counters.tx_no_route += 1,
                    _ => inner.counters.tx_no_neighbour += 1,
                }
                inner.xsk.cancel_tx(desc);
            }
        }
        r
    }
}
