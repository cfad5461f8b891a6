//! Ports the stack uses: reserved in the kernel (so it never hands them out) and steered to our
//! queue by a rule the stack adds itself and removes when the port is released.
use std::{net::Ipv4Addr, os::fd::OwnedFd, sync::Arc};

use steer_bpf::{Protocol, RuleOwner, SteerError, Steering, SteeringRule};

use crate::{
    error::StackError,
    sys::ports::{self, Transport},
};

/// The steering rules a claim reads and edits: the attachment's pinned rule map (`Steering`),
/// or a table in memory for unit tests.
pub(crate) trait RuleTable: Send + Sync {
    fn rules(&self) -> Result<Vec<(SteeringRule, RuleOwner)>, SteerError>;
    fn add_rule(&self, rule: SteeringRule, owner: RuleOwner) -> Result<(), SteerError>;
    fn remove_rule(&self, rule: SteeringRule) -> Result<(), SteerError>;
}

impl RuleTable for Steering {
    fn rules(&self) -> Result<Vec<(SteeringRule, RuleOwner)>, SteerError> {
        Steering::rules(self)
    }
    fn add_rule(&self, rule: SteeringRule, owner: RuleOwner) -> Result<(), SteerError> {
        Steering::add_rule(self, rule, owner)
    }
    fn remove_rule(&self, rule: SteeringRule) -> Result<(), SteerError> {
        Steering::remove_rule(self, rule)
    }
}

/// A port in use by the stack. Dropping it removes the rule (if we added it) and releases the
/// kernel reservation.
pub(crate) struct PortClaim {
    steering: Arc<dyn RuleTable>,
    rule: SteeringRule,
    added_rule: bool,
    _reservation: OwnedFd,
}

impl std::fmt::Debug for PortClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortClaim({})", self.rule)
    }
}

impl PortClaim {
    pub fn new(
        steering: &Arc<impl RuleTable + 'static>,
        protocol: Protocol,
        addr: Ipv4Addr,
        port: u16,
    ) -> Result<Self, StackError> {
        let transport = match protocol {
            Protocol::Tcp => Transport::Tcp,
            Protocol::Udp => Transport::Udp,
        };
        let reservation = ports::reserve(transport, addr, port).map_err(|e| {
            if e.raw_os_error() == Some(libc::EADDRINUSE) {
                StackError::PortInUse(port)
            } else {
                StackError::io(format!("reserving {protocol}:{port} in the kernel"), e)
            }
        })?;
        let rule = SteeringRule::new(protocol, port, Some(addr))
            .map_err(|e| StackError::Config(e.to_string()))?;
        // A rule for this flow may already be there (a static one from the loader, or an
        // any-address one): then it is not ours to add or remove.
        let existing = steering.rules()?;
        let mut covered = false;
        for (r, owner) in existing {
            if r.protocol != protocol || r.port != port || r.addr.is_some_and(|a| a != addr) {
                continue;
            }
            match owner {
                // Left behind by a service that died without cleaning up: ours now.
                RuleOwner::Service { pid } if !process_alive(pid) => {
                    steering.remove_rule(r)?;
                    tracing::info!(rule = %r, pid, "took over the rule of a dead service");
                }
                _ => covered = true,
            }
        }
        let added_rule = if covered {
            false
        } else {
            steering.add_rule(
                rule,
                RuleOwner::Service {
                    pid: std::process::id(),
                },
            )?;
            true
        };
        tracing::debug!(%rule, added_rule, "port claimed");
        Ok(Self {
            steering: steering.clone(),
            rule,
            added_rule,
            _reservation: reservation,
        })
    }
}

impl Drop for PortClaim {
    fn drop(&mut self) {
        if self.added_rule {
            if let Err(e) = self.steering.remove_rule(self.rule) {
                tracing::warn!(rule = %self.rule, "removing steering rule: {e}");
            }
        }
    }
}

/// Whether a process with this pid exists (in our pid namespace).
pub(crate) fn process_alive(pid: u32) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    //! Claims against a rule table in memory: no root needed (the kernel reservation binds a
    //! socket on loopback).
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Table(Mutex<Vec<(SteeringRule, RuleOwner)>>);

    impl RuleTable for Table {
        fn rules(&self) -> Result<Vec<(SteeringRule, RuleOwner)>, SteerError> {
            Ok(self.0.lock().unwrap().clone())
        }
        fn add_rule(&self, rule: SteeringRule, owner: RuleOwner) -> Result<(), SteerError> {
            self.0.lock().unwrap().push((rule, owner));
            Ok(())
        }
        fn remove_rule(&self, rule: SteeringRule) -> Result<(), SteerError> {
            self.0.lock().unwrap().retain(|(r, _)| *r != rule);
            Ok(())
        }
    }

    const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

    /// A TCP port free on loopback right now.
    fn free_port() -> u16 {
        std::net::TcpListener::bind((LO, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn a_claim_adds_its_rule_and_removes_it_when_released() {
        let table = Arc::new(Table::default());
        let port = free_port();
        let claim = PortClaim::new(&table, Protocol::Tcp, LO, port).unwrap();
        let rules = table.rules().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!((rules[0].0.port, rules[0].0.addr), (port, Some(LO)));
        assert_eq!(
            rules[0].1,
            RuleOwner::Service {
                pid: std::process::id()
            }
        );
        // The kernel will not hand the port out while it is claimed.
        assert!(std::net::TcpListener::bind((LO, port)).is_err());
        drop(claim);
        assert!(table.rules().unwrap().is_empty(), "rule removed on release");
        assert!(
            std::net::TcpListener::bind((LO, port)).is_ok(),
            "reservation released"
        );
    }

    #[test]
    fn a_rule_someone_else_owns_is_left_alone() {
        let table = Arc::new(Table::default());
        let port = free_port();
        let any = SteeringRule::new(Protocol::Tcp, port, None).unwrap();
        table.add_rule(any, RuleOwner::Static).unwrap();
        let claim = PortClaim::new(&table, Protocol::Tcp, LO, port).unwrap();
        assert_eq!(table.rules().unwrap(), vec![(any, RuleOwner::Static)]);
        drop(claim);
        assert_eq!(
            table.rules().unwrap(),
            vec![(any, RuleOwner::Static)],
            "not ours to remove"
        );
    }

    #[test]
    fn a_dead_services_rule_is_taken_over() {
        let table = Arc::new(Table::default());
        let port = free_port();
        let rule = SteeringRule::new(Protocol::Tcp, port, Some(LO)).unwrap();
        // pid 0 never names a live process.
        table.add_rule(rule, RuleOwner::Service { pid: 0 }).unwrap();
        let claim = PortClaim::new(&table, Protocol::Tcp, LO, port).unwrap();
        assert_eq!(
            table.rules().unwrap(),
            vec![(
                rule,
                RuleOwner::Service {
                    pid: std::process::id()
                }
            )]
        );
        drop(claim);
        assert!(table.rules().unwrap().is_empty());
    }
}
