//! Shared-IP mode's link layer: smoltcp runs `Medium::Ip`, and this module finds the Ethernet
//! destination of each outgoing packet from the kernel's routes and neighbour table (mirrored
//! over netlink and refreshed, never read just once). Unknown neighbours are resolved by the
//! kernel on request; meanwhile their packets are dropped and counted (TCP retransmits).
use std::{
    collections::HashMap,
    io,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use crate::sys::netlink::{self, Neighbour, Route};

/// Where neighbours and routes come from: the kernel over netlink, or a fake in tests.
pub trait NeighbourSource {
    fn neighbours(&mut self) -> io::Result<Vec<Neighbour>>;
    fn routes(&mut self) -> io::Result<Vec<Route>>;
    /// Asks for `ip` to be resolved (the answer shows up in a later `neighbours()`).
    fn resolve(&mut self, ip: Ipv4Addr) -> io::Result<()>;
}

/// The kernel's tables for one interface.
#[derive(Debug)]
pub struct KernelNeighbours {
    pub ifindex: u32,
}

impl NeighbourSource for KernelNeighbours {
    fn neighbours(&mut self) -> io::Result<Vec<Neighbour>> {
        netlink::neighbours(self.ifindex)
    }
    fn routes(&mut self) -> io::Result<Vec<Route>> {
        netlink::routes()
    }
    fn resolve(&mut self, ip: Ipv4Addr) -> io::Result<()> {
        netlink::resolve(self.ifindex, ip)
    }
}

/// How often the mirror is refreshed, and how often a miss may trigger work.
#[derive(Debug, Clone, Copy)]
pub struct L2Timing {
    pub refresh: Duration,
    pub miss_refresh: Duration,
    pub resolve_interval: Duration,
}

impl Default for L2Timing {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(1),
            miss_refresh: Duration::from_millis(20),
            resolve_interval: Duration::from_millis(200),
        }
    }
}

/// Why an outgoing packet has no Ethernet destination (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Miss {
    /// No route: neither on-link nor via a gateway of this interface.
    NoRoute,
    /// The next hop is being resolved.
    NoNeighbour(Ipv4Addr),
}

/// The neighbour/route mirror of one interface.
#[derive(Debug)]
pub struct L2<S> {
    source: S,
    ifindex: u32,
    addr: Ipv4Addr,
    prefix: u8,
    cache: HashMap<Ipv4Addr, [u8; 6]>,
    routes: Vec<Route>,
    last_refresh: Option<Instant>,
    last_miss_refresh: Option<Instant>,
    resolving: HashMap<Ipv4Addr, Instant>,
    timing: L2Timing,
    /// Packets dropped because their next hop was unknown.
    pub no_neighbour: u64,
    /// Packets dropped because no route led out of this interface.
    pub no_route: u64,
}

fn in_prefix(a: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - prefix.min(32) as u32);
    u32::from(a) & mask == u32::from(net) & mask
}

impl<S: NeighbourSource> L2<S> {
    pub fn new(source: S, ifindex: u32, addr: Ipv4Addr, prefix: u8, timing: L2Timing) -> Self {
        Self {
            source,
            ifindex,
            addr,
            prefix,
            cache: HashMap::with_capacity(64),
            routes: Vec::new(),
            last_refresh: None,
            last_miss_refresh: None,
            resolving: HashMap::new(),
            timing,
            no_neighbour: 0,
            no_route: 0,
        }
    }

    fn refresh(&mut self, now: Instant) {
        if let Ok(n) = self.source.neighbours() {
            self.cache.clear();
            self.cache.extend(n.into_iter().map(|n| (n.ip, n.mac)));
        }
        if let Ok(r) = self.source.routes() {
            self.routes = r.into_iter().filter(|r| r.oif == self.ifindex).collect();
        }
        self.last_refresh = Some(now);
    }

    /// Keeps the mirror fresh; call once per poll loop.
    pub fn tick(&mut self, now: Instant) {
        if self
            .last_refresh
            .is_none_or(|t| now.duration_since(t) >= self.timing.refresh)
        {
            self.refresh(now);
        }
        self.resolving
            .retain(|_, t| now.duration_since(*t) < Duration::from_secs(3));
    }

    /// The next hop for `dst`: itself when on-link, else the gateway of the longest matching
    /// route out of this interface.
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if in_prefix(dst, self.addr, self.prefix) || dst.is_broadcast() {
            return Some(dst);
        }
        self.routes
            .iter()
            .filter(|r| in_prefix(dst, r.dst, r.prefix))
            .max_by_key(|r| r.prefix)
            .map(|r| r.gateway.unwrap_or(dst))
    }

    /// The MAC to send a packet for `dst` to.
    pub fn resolve(&mut self, dst: Ipv4Addr, now: Instant) -> Result<[u8; 6], L2Miss> {
        if dst.is_broadcast() {
            return Ok([0xff; 6]);
        }
        let Some(hop) = self.next_hop(dst) else {
            self.no_route += 1;
            return Err(L2Miss::NoRoute);
        };
        if let Some(mac) = self.cache.get(&hop) {
            return Ok(*mac);
        }
        if self
            .last_miss_refresh
            .is_none_or(|t| now.duration_since(t) >= self.timing.miss_refresh)
        {
            self.last_miss_refresh = Some(now);
            self.refresh(now);
            if let Some(mac) = self.cache.get(&hop) {
                return Ok(*mac);
            }
        }
        let due = self
            .resolving
            .get(&hop)
            .is_none_or(|t| now.duration_since(*t) >= self.timing.resolve_interval);
        if due {
            self.resolving.insert(hop, now);
            if let Err(e) = self.source.resolve(hop) {
                tracing::debug!(%hop, "neighbour resolution request failed: {e}");
            }
        }
        self.no_neighbour += 1;
        Err(L2Miss::NoNeighbour(hop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        table: Vec<Neighbour>,
        routes: Vec<Route>,
        resolved: Vec<Ipv4Addr>,
        dumps: u32,
        learn_on_resolve: Option<[u8; 6]>,
    }

    impl NeighbourSource for Fake {
        fn neighbours(&mut self) -> io::Result<Vec<Neighbour>> {
            self.dumps += 1;
            Ok(self.table.clone())
        }
        fn routes(&mut self) -> io::Result<Vec<Route>> {
            Ok(self.routes.clone())
        }
        fn resolve(&mut self, ip: Ipv4Addr) -> io::Result<()> {
            self.resolved.push(ip);
            if let Some(mac) = self.learn_on_resolve {
                self.table.push(Neighbour { ip, mac });
            }
            Ok(())
        }
    }

    const IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn on_link_neighbour_is_found() {
        let fake = Fake {
            table: vec![Neighbour { ip: PEER, mac: MAC }],
            ..Default::default()
        };
        let mut l2 = L2::new(fake, 7, IP, 24, L2Timing::default());
        let now = Instant::now();
        l2.tick(now);
        assert_eq!(l2.resolve(PEER, now), Ok(MAC));
        assert_eq!(l2.no_neighbour, 0);
    }

    #[test]
    fn off_link_goes_via_the_gateway_of_this_interface() {
        let fake = Fake {
            table: vec![Neighbour { ip: GW, mac: MAC }],
            routes: vec![
                Route {
                    dst: Ipv4Addr::new(198, 19, 0, 0),
                    prefix: 16,
                    gateway: Some(GW),
                    oif: 7,
                },
                Route {
                    dst: Ipv4Addr::new(198, 19, 5, 0),
                    prefix: 24,
                    gateway: Some(PEER),
                    oif: 9,
                },
            ],
            ..Default::default()
        };
        let mut l2 = L2::new(fake, 7, IP, 24, L2Timing::default());
        let now = Instant::now();
        l2.tick(now);
        // The /24 is out of another interface, so the /16 of ours wins.
        assert_eq!(l2.next_hop(Ipv4Addr::new(198, 19, 5, 5)), Some(GW));
        assert_eq!(l2.resolve(Ipv4Addr::new(198, 19, 5, 5), now), Ok(MAC));
        assert_eq!(
            l2.resolve(Ipv4Addr::new(203, 0, 113, 1), now),
            Err(L2Miss::NoRoute)
        );
        assert_eq!(l2.no_route, 1);
    }

    #[test]
    fn unknown_neighbour_is_resolved_rate_limited_and_counted() {
        let fake = Fake {
            learn_on_resolve: Some(MAC),
            ..Default::default()
        };
        let timing = L2Timing::default();
        let mut l2 = L2::new(fake, 7, IP, 24, timing);
        let t0 = Instant::now();
        l2.tick(t0);
        assert_eq!(l2.resolve(PEER, t0), Err(L2Miss::NoNeighbour(PEER)));
        // A burst of misses asks the kernel once and dumps at most once per miss_refresh.
        for _ in 0..100 {
            assert!(l2.resolve(PEER, t0).is_err());
        }
        assert_eq!(l2.source.resolved, vec![PEER]);
        assert_eq!(l2.no_neighbour, 101);
        // Once the kernel has learnt it, the next refresh finds it.
        let t1 = t0 + timing.miss_refresh;
        assert_eq!(l2.resolve(PEER, t1), Ok(MAC));
    }

    #[test]
    fn mirror_is_refreshed_not_read_once() {
        let fake = Fake {
            table: vec![Neighbour { ip: PEER, mac: MAC }],
            ..Default::default()
        };
        let timing = L2Timing::default();
        let mut l2 = L2::new(fake, 7, IP, 24, timing);
        let t0 = Instant::now();
        l2.tick(t0);
        let new_mac = [2, 0, 0, 0, 0, 9];
        l2.source.table = vec![Neighbour {
            ip: PEER,
            mac: new_mac,
        }];
        l2.tick(t0 + timing.refresh / 2);
        assert_eq!(
            l2.resolve(PEER, t0),
            Ok(MAC),
            "cached until the refresh interval"
        );
        l2.tick(t0 + timing.refresh);
        assert_eq!(
            l2.resolve(PEER, t0 + timing.refresh),
            Ok(new_mac),
            "a changed MAC is picked up"
        );
    }
}
