//! Ports the stack uses: reserved in the kernel (so it never hands them out) and steered to our
//! queue by a rule the stack adds itself and removes when the port is released.
use std::{net::Ipv4Addr, os::fd::OwnedFd, sync::Arc};

use steer_bpf::{Protocol, RuleOwner, Steering, SteeringRule};

use crate::{
    error::StackError,
    sys::ports::{self, Transport},
};

/// A port in use by the stack. Dropping it removes the rule (if we added it) and releases the
/// kernel reservation.
pub(crate) struct PortClaim {
    steering: Arc<Steering>,
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
        steering: &Arc<Steering>,
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
