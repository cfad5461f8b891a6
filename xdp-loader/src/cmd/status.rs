//! `status`: program, mode, queue, rules, pins and sockets of each attached interface.
use std::path::Path;

use steer_bpf::Steering;

use crate::CliError;

pub(crate) fn status(
    iface: Option<String>,
    root: Option<&Path>,
    json: bool,
) -> Result<(), CliError> {
    let ifaces = match iface {
        Some(i) => vec![i],
        None => Steering::pinned_interfaces(root),
    };
    let mut all = Vec::new();
    for i in &ifaces {
        all.push(Steering::status(i, root)?);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all).expect("status serializes")
        );
        return Ok(());
    }
    if all.is_empty() {
        println!("no interface has the steering program attached");
    }
    for s in all {
        let prog = match (s.prog_id, s.ours) {
            (Some(id), true) => format!("id {id} (ours)"),
            (Some(id), false) => format!("id {id} (FOREIGN: not the pinned program)"),
            (None, _) => "none attached".into(),
        };
        println!("{}:", s.iface);
        println!("  program   {prog}");
        println!(
            "  mode      {}",
            s.mode.map_or("-".into(), |m| m.to_string())
        );
        println!(
            "  queue     {} of {} RX queues",
            s.queue.map_or("-".into(), |q| q.to_string()),
            s.rx_queues.map_or("?".into(), |n| n.to_string())
        );
        println!("  pins      {}", s.pin_dir.display());
        if s.rules.is_empty() {
            println!("  rules     none");
        }
        for (n, r) in s.rules.iter().enumerate() {
            let dead = r
                .pid
                .is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists());
            let note = if dead {
                ", not running: stale, fails open"
            } else {
                ""
            };
            println!(
                "  {}{} ({}{note})",
                if n == 0 { "rules     " } else { "          " },
                r.rule,
                r.owner
            );
        }
        let line: Vec<String> = s
            .xsks
            .iter()
            .map(|x| {
                let state = match (x.registered, x.bound) {
                    (Some(true), _) => "xsk",
                    (Some(false), Some(n)) if n > 0 => "bound-unregistered",
                    (Some(false), _) => "-",
                    (None, Some(n)) if n > 0 => "bound",
                    (None, _) => "?",
                };
                format!("{}:{state}", x.queue)
            })
            .collect();
        println!("  sockets   {}", line.join(" "));
    }
    Ok(())
}
