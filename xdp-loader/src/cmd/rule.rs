//! `rule add` / `rule del`: edit the steering rules of a running attachment.
use std::path::Path;

use steer_bpf::{Protocol, SteerError, Steering, SteeringRule};

use crate::{cli::RuleOp, CliError};

pub(crate) fn rule(op: RuleOp, root: Option<&Path>) -> Result<(), CliError> {
    let (add, a) = match op {
        RuleOp::Add(a) => (true, a),
        RuleOp::Del(a) => (false, a),
    };
    let (proto, p) = match (a.tcp, a.udp) {
        (Some(p), None) => (Protocol::Tcp, p),
        (None, Some(p)) => (Protocol::Udp, p),
        _ => {
            return Err(CliError::Usage(
                "give exactly one of --tcp PORT or --udp PORT".into(),
            ))
        }
    };
    let rule = SteeringRule::new(proto, p, a.ip).map_err(|e| CliError::Usage(e.to_string()))?;
    if steer_bpf::sys::ifindex(&a.iface).is_none() {
        return Err(SteerError::NoSuchInterface(a.iface).into());
    }
    let s = Steering::open(&a.iface, root)?;
    if add {
        s.add_rule(rule, steer_bpf::RuleOwner::Static)?;
        println!("added {rule} on {}", a.iface);
    } else {
        s.remove_rule(rule)?;
        println!("deleted {rule} on {}", a.iface);
    }
    Ok(())
}
