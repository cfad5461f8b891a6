//! Steering rules: what they mean, how they are written, and their encoding in the rule map.
use std::{fmt, net::Ipv4Addr, str::FromStr};

/// Transport protocols the program can steer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
    fn from_ip_proto(p: u8) -> Option<Self> {
        match p {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Steer packets with this protocol and destination port (and, if given, destination IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SteeringRule {
    pub protocol: Protocol,
    pub port: u16,
    pub addr: Option<Ipv4Addr>,
}

/// Who installed a rule; re-attaching replaces the loader's rules and keeps the services'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOwner {
    /// From `xdp-loader attach --tcp/--udp` or `xdp-loader rule add`.
    Static,
    /// Added by a running service for a port it uses.
    Service { pid: u32 },
}

/// Why a rule could not be built or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleParseError {
    #[error("port 0 cannot be steered (ports are 1..=65535)")]
    PortZero,
    #[error("{0:?} is not a rule; expected PROTO:PORT[@IPV4], e.g. tcp:8080 or udp:53@198.18.0.1")]
    Syntax(String),
    #[error("unknown protocol {0:?} (tcp or udp)")]
    Protocol(String),
    #[error("bad port {0:?} (1..=65535)")]
    Port(String),
    #[error("bad IPv4 address {0:?}")]
    Addr(String),
    #[error("{0}.0.0.0/8-style address 0.0.0.0 is reserved to mean \"any\"; omit it")]
    AnyAddr(u8),
    #[error("rule map entry has {0} bytes, expected 8")]
    KeyLength(usize),
    #[error("rule map entry has unknown protocol {0}")]
    KeyProtocol(u8),
}

/// Size of `struct rule_key` and `struct rule_val` in steer.h.
pub(crate) const KEY_LEN: usize = 8;
pub(crate) const VAL_LEN: usize = 8;
const OWNER_STATIC: u32 = 1;
const OWNER_SERVICE: u32 = 2;

impl SteeringRule {
    /// A rule for `protocol` to `port` on any local address, or on `addr` only.
    pub fn new(
        protocol: Protocol,
        port: u16,
        addr: Option<Ipv4Addr>,
    ) -> Result<Self, RuleParseError> {
        if port == 0 {
            return Err(RuleParseError::PortZero);
        }
        if addr == Some(Ipv4Addr::UNSPECIFIED) {
            return Err(RuleParseError::AnyAddr(0));
        }
        Ok(Self {
            protocol,
            port,
            addr,
        })
    }
    pub fn tcp(port: u16) -> Result<Self, RuleParseError> {
        Self::new(Protocol::Tcp, port, None)
    }
    pub fn udp(port: u16) -> Result<Self, RuleParseError> {
        Self::new(Protocol::Udp, port, None)
    }

    /// The `struct rule_key` bytes: proto, pad, port (network order), addr (network order).
    pub(crate) fn to_key(self) -> [u8; KEY_LEN] {
        let mut k = [0u8; KEY_LEN];
        k[0] = self.protocol.ip_proto();
        k[2..4].copy_from_slice(&self.port.to_be_bytes());
        k[4..8].copy_from_slice(&self.addr.map_or([0; 4], |a| a.octets()));
        k
    }

    /// Decodes a key read back from the map; the map is root-writable, so check everything.
    pub(crate) fn from_key(k: &[u8]) -> Result<Self, RuleParseError> {
        if k.len() != KEY_LEN {
            return Err(RuleParseError::KeyLength(k.len()));
        }
        let protocol = Protocol::from_ip_proto(k[0]).ok_or(RuleParseError::KeyProtocol(k[0]))?;
        let port = u16::from_be_bytes([k[2], k[3]]);
        let a = Ipv4Addr::new(k[4], k[5], k[6], k[7]);
        let addr = (!a.is_unspecified()).then_some(a);
        Self::new(protocol, port, addr)
    }
}

impl RuleOwner {
    pub(crate) fn to_val(self) -> [u8; VAL_LEN] {
        let (owner, pid) = match self {
            RuleOwner::Static => (OWNER_STATIC, 0),
            RuleOwner::Service { pid } => (OWNER_SERVICE, pid),
        };
        let mut v = [0u8; VAL_LEN];
        v[0..4].copy_from_slice(&owner.to_ne_bytes());
        v[4..8].copy_from_slice(&pid.to_ne_bytes());
        v
    }
    pub(crate) fn from_val(v: &[u8]) -> Self {
        let word = |i: usize| {
            v.get(i..i + 4)
                .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        match word(0) {
            OWNER_SERVICE => RuleOwner::Service { pid: word(4) },
            _ => RuleOwner::Static,
        }
    }
}

impl fmt::Display for SteeringRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.protocol, self.port)?;
        if let Some(a) = self.addr {
            write!(f, "@{a}")?;
        }
        Ok(())
    }
}

impl fmt::Display for RuleOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleOwner::Static => f.write_str("static"),
            RuleOwner::Service { pid } => write!(f, "service pid {pid}"),
        }
    }
}

impl FromStr for SteeringRule {
    type Err = RuleParseError;
    /// `tcp:8080`, `udp:53@198.18.0.1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (proto, rest) = s
            .split_once(':')
            .ok_or_else(|| RuleParseError::Syntax(s.to_string()))?;
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(RuleParseError::Protocol(proto.to_string())),
        };
        let (port, addr) = match rest.split_once('@') {
            Some((p, a)) => (p, Some(a)),
            None => (rest, None),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| RuleParseError::Port(port.to_string()))?;
        let addr = addr
            .map(|a| {
                a.parse::<Ipv4Addr>()
                    .map_err(|_| RuleParseError::Addr(a.to_string()))
            })
            .transpose()?;
        Self::new(protocol, port, addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_matches_struct_rule_key() {
        let r = SteeringRule::new(Protocol::Tcp, 8080, Some(Ipv4Addr::new(198, 18, 0, 1))).unwrap();
        assert_eq!(r.to_key(), [6, 0, 0x1f, 0x90, 198, 18, 0, 1]);
        let r = SteeringRule::udp(53).unwrap();
        assert_eq!(r.to_key(), [17, 0, 0, 53, 0, 0, 0, 0]);
    }

    #[test]
    fn key_round_trips() {
        for r in [
            SteeringRule::tcp(1).unwrap(),
            SteeringRule::udp(65535).unwrap(),
            SteeringRule::new(Protocol::Udp, 9000, Some(Ipv4Addr::new(198, 19, 255, 254))).unwrap(),
        ] {
            assert_eq!(SteeringRule::from_key(&r.to_key()).unwrap(), r);
        }
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert_eq!(
            SteeringRule::from_key(&[6, 0, 0]),
            Err(RuleParseError::KeyLength(3))
        );
        assert_eq!(
            SteeringRule::from_key(&[1, 0, 0, 80, 0, 0, 0, 0]),
            Err(RuleParseError::KeyProtocol(1))
        );
        assert_eq!(
            SteeringRule::from_key(&[6, 0, 0, 0, 0, 0, 0, 0]),
            Err(RuleParseError::PortZero)
        );
    }

    #[test]
    fn owner_round_trips() {
        for o in [RuleOwner::Static, RuleOwner::Service { pid: 4242 }] {
            assert_eq!(RuleOwner::from_val(&o.to_val()), o);
        }
    }

    /// Seeded property test: arbitrary text and arbitrary map entries never panic, and whatever
    /// parses round-trips through its text and key forms.
    #[test]
    fn arbitrary_rules_and_keys() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"tcpudTCPUD:@.0123456789 -x";
        for _ in 0..50_000 {
            let s: String = (0..next() % 24)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                .collect();
            if let Ok(r) = s.parse::<SteeringRule>() {
                assert_eq!(r.to_string().parse::<SteeringRule>(), Ok(r));
                assert_eq!(SteeringRule::from_key(&r.to_key()), Ok(r));
            }
            let key: Vec<u8> = (0..next() % 10).map(|_| next() as u8).collect();
            if let Ok(r) = SteeringRule::from_key(&key) {
                assert_eq!(r.to_key().to_vec(), {
                    let mut k = key.clone();
                    k[1] = 0;
                    k
                });
            }
            let _ = RuleOwner::from_val(&key);
        }
    }

    #[test]
    fn parses_text_rules() {
        assert_eq!(
            "tcp:8080".parse::<SteeringRule>().unwrap(),
            SteeringRule::tcp(8080).unwrap()
        );
        assert_eq!(
            "UDP:53@198.18.0.1"
                .parse::<SteeringRule>()
                .unwrap()
                .to_string(),
            "udp:53@198.18.0.1"
        );
        assert_eq!(
            "tcp:0".parse::<SteeringRule>(),
            Err(RuleParseError::PortZero)
        );
        assert!(matches!(
            "tcp:65536".parse::<SteeringRule>(),
            Err(RuleParseError::Port(_))
        ));
        assert!(matches!(
            "sctp:1".parse::<SteeringRule>(),
            Err(RuleParseError::Protocol(_))
        ));
        assert!(matches!(
            "8080".parse::<SteeringRule>(),
            Err(RuleParseError::Syntax(_))
        ));
        assert!(matches!(
            "tcp:80@1.2.3".parse::<SteeringRule>(),
            Err(RuleParseError::Addr(_))
        ));
        assert!(matches!(
            "tcp:80@0.0.0.0".parse::<SteeringRule>(),
            Err(RuleParseError::AnyAddr(_))
        ));
    }
}
