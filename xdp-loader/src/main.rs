//! `xdp-loader`: attach the steering program to one RX queue of an interface, inspect it,
//! edit its rules, read its counters and take it all back.
#![deny(unsafe_code)]

use std::{net::Ipv4Addr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use steer_bpf::{
    AttachOptions, Protocol, QueueCounters, SteerError, Steering, SteeringRule, XdpMode,
};

#[derive(Parser, Debug)]
#[command(
    name = "xdp-loader",
    version,
    about = "Steer chosen TCP/UDP flows of one RX queue into an AF_XDP socket; the kernel keeps the rest",
    after_help = "Examples (as root):\n  \
        xdp-loader attach eth0 --queue 3 --tcp 8080 --udp 9000\n  \
        xdp-loader status eth0\n  \
        xdp-loader stats eth0 --interval 1 --count 5\n  \
        xdp-loader capture eth0 --queue 3 -w /tmp/q3.pcap --count 100\n  \
        xdp-loader rule add eth0 --tcp 8081\n  \
        xdp-loader detach eth0"
)]
struct Cli {
    /// bpffs directory holding one pin directory per interface [env: XSK_STEER_PIN_ROOT]
    /// [default: /sys/fs/bpf/xsk-steer]
    #[arg(long, global = true, value_name = "DIR")]
    pin_root: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Load and attach the program, pin its maps, and exit; the attachment outlives the process.
    /// Attaching again updates the queue and the static rules and reuses the pinned maps, so a
    /// running service keeps receiving.
    Attach(AttachArgs),
    /// Remove the program and its pins; the interface is left as before attach.
    Detach {
        iface: String,
        /// Also detach an XDP program that is not ours.
        #[arg(long)]
        force: bool,
    },
    /// Show program id, mode, queue, rules, pin path and the AF_XDP sockets bound per queue.
    Status {
        /// Interface; all attached interfaces if omitted.
        iface: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Per-queue counters of the program, then the counters of each service running on the
    /// interface (from its control socket), like ethtool -S / nstat. With --interval: the
    /// program's rates per second.
    Stats {
        iface: String,
        /// Print rates every SECS seconds instead of totals once.
        #[arg(long, value_name = "SECS", value_parser = parse_interval)]
        interval: Option<f64>,
        /// With --interval: stop after N reports (default: until interrupted).
        #[arg(long, value_name = "N", requires = "interval")]
        count: Option<u64>,
        /// Show every queue, not only those that saw traffic.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Capture what a running service on IFACE/--queue receives and sends to a pcap file
    /// (through the service's control socket; the service writes the file).
    Capture {
        iface: String,
        #[arg(long, short)]
        queue: u32,
        /// The pcap file to write (created root-only; readable by tcpdump -r / tshark -r).
        #[arg(
            short = 'w',
            long = "write",
            value_name = "FILE",
            required_unless_present = "stop"
        )]
        file: Option<PathBuf>,
        /// Stop after N frames.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        count: u64,
        /// Bytes kept of each frame.
        #[arg(long, default_value_t = 262144, value_parser = clap::value_parser!(u32).range(64..))]
        snaplen: u32,
        /// Stop the running capture instead.
        #[arg(long, conflicts_with = "file")]
        stop: bool,
    },
    /// Add or delete a steering rule while attached.
    Rule {
        #[command(subcommand)]
        op: RuleOp,
    },
}

#[derive(Args, Debug)]
struct AttachArgs {
    iface: String,
    /// The RX queue whose matching flows are steered.
    #[arg(long, short)]
    queue: u32,
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    /// Steer TCP to this destination port (repeatable).
    #[arg(long = "tcp", value_name = "PORT", value_parser = port)]
    tcp: Vec<u16>,
    /// Steer UDP to this destination port (repeatable).
    #[arg(long = "udp", value_name = "PORT", value_parser = port)]
    udp: Vec<u16>,
    /// Only steer packets to this local IPv4 address (default: any address).
    #[arg(long, value_name = "ADDR")]
    ip: Option<Ipv4Addr>,
    /// Replace an XDP program that is not ours.
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    /// Native if the driver supports it, else generic.
    Auto,
    Native,
    Generic,
}

#[derive(Subcommand, Debug)]
enum RuleOp {
    /// Add a rule: `rule add IFACE --tcp PORT [--ip ADDR]`.
    Add(RuleArgs),
    /// Delete a rule: `rule del IFACE --udp PORT [--ip ADDR]`.
    Del(RuleArgs),
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("proto").required(true).args(["tcp", "udp"])))]
struct RuleArgs {
    iface: String,
    #[arg(long, value_name = "PORT", value_parser = port)]
    tcp: Option<u16>,
    #[arg(long, value_name = "PORT", value_parser = port)]
    udp: Option<u16>,
    #[arg(long, value_name = "ADDR")]
    ip: Option<Ipv4Addr>,
}

fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("port 0 cannot be steered (ports are 1..=65535)".into()),
        Ok(p) if p <= 65535 => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is out of range (1..=65535)")),
        Err(_) => Err(format!("{s:?} is not a port number (1..=65535)")),
    }
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?}: interval must be between 0.1 and 3600 seconds"
        )),
    }
}

fn rules_of(tcp: &[u16], udp: &[u16], ip: Option<Ipv4Addr>) -> Result<Vec<SteeringRule>, String> {
    let mut v = Vec::new();
    for (proto, ports) in [(Protocol::Tcp, tcp), (Protocol::Udp, udp)] {
        for &p in ports {
            v.push(SteeringRule::new(proto, p, ip).map_err(|e| e.to_string())?);
        }
    }
    Ok(v)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdp-loader: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
enum CliError {
    Steer(SteerError),
    Usage(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Steer(e) => write!(f, "{e}"),
            CliError::Usage(s) => f.write_str(s),
        }
    }
}

impl From<SteerError> for CliError {
    fn from(e: SteerError) -> Self {
        CliError::Steer(e)
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let root = cli.pin_root.as_deref();
    match cli.cmd {
        Cmd::Attach(a) => {
            let rules = rules_of(&a.tcp, &a.udp, a.ip).map_err(CliError::Usage)?;
            if rules.is_empty() && a.ip.is_some() {
                return Err(CliError::Usage(
                    "--ip needs at least one --tcp or --udp port".into(),
                ));
            }
            let opts = AttachOptions {
                iface: a.iface,
                queue: a.queue,
                mode: match a.mode {
                    ModeArg::Auto => None,
                    ModeArg::Native => Some(XdpMode::Native),
                    ModeArg::Generic => Some(XdpMode::Generic),
                },
                rules: rules.clone(),
                force: a.force,
                pin_root: cli.pin_root.clone(),
            };
            let r = Steering::attach(&opts)?;
            if let Some(e) = &r.native_error {
                println!(
                    "native mode unavailable on {} ({e}); using generic",
                    r.iface
                );
            }
            if let Some(id) = r.replaced_foreign {
                println!("replaced foreign XDP program id {id}");
            }
            let rules: Vec<String> = rules.iter().map(ToString::to_string).collect();
            println!(
                "{} {} queue {} mode {} prog id {} rules [{}] pins {}",
                if r.reused_maps {
                    "re-attached"
                } else {
                    "attached"
                },
                r.iface,
                r.queue,
                r.mode,
                r.prog_id,
                rules.join(", "),
                r.pin_dir.display()
            );
            Ok(())
        }
        Cmd::Detach { iface, force } => {
            Steering::detach(&iface, root, force)?;
            println!("detached {iface}");
            Ok(())
        }
        Cmd::Status { iface, json } => {
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
        Cmd::Stats {
            iface,
            interval,
            count,
            all,
            json,
        } => stats(&iface, root, interval, count, all, json),
        Cmd::Capture {
            iface,
            queue,
            file,
            count,
            snaplen,
            stop,
        } => capture(&iface, queue, file, count, snaplen, stop),
        Cmd::Rule { op } => {
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
            let rule =
                SteeringRule::new(proto, p, a.ip).map_err(|e| CliError::Usage(e.to_string()))?;
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
    }
}

fn capture(
    iface: &str,
    queue: u32,
    file: Option<PathBuf>,
    count: u64,
    snaplen: u32,
    stop: bool,
) -> Result<(), CliError> {
    let sock = xsk_stack::control::socket_path(iface, queue);
    if !sock.exists() {
        return Err(CliError::Usage(format!(
            "no service runs on {iface} queue {queue} (no control socket at {})",
            sock.display()
        )));
    }
    let req = if stop {
        serde_json::json!({"cmd": "capture_stop"})
    } else {
        let file = file.ok_or_else(|| CliError::Usage("-w FILE is required".into()))?;
        let path = std::path::absolute(&file)
            .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
        serde_json::json!({"cmd": "capture", "path": path, "count": count, "snaplen": snaplen})
    };
    let reply = xsk_stack::control::request(&sock, &req)
        .map_err(|e| CliError::Usage(format!("asking the service at {}: {e}", sock.display())))?;
    if reply["ok"] != true {
        return Err(CliError::Usage(format!(
            "the service refused: {}",
            reply["error"].as_str().unwrap_or("?")
        )));
    }
    if stop {
        println!(
            "{}",
            if reply["stopped"] == true {
                "capture stopped"
            } else {
                "no capture was running"
            }
        );
    } else {
        println!(
            "capturing up to {count} frames on {iface} queue {queue} to {}",
            req["path"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// Counters of the services running on `iface`, from their control sockets.
fn service_stats(iface: &str) -> Vec<(u32, Result<serde_json::Value, String>)> {
    xsk_stack::control::sockets_of(iface)
        .into_iter()
        .filter_map(|(q, path)| {
            match xsk_stack::control::request(&path, &serde_json::json!({"cmd": "stats"})) {
                Ok(v) => Some((q, Ok(v))),
                // A socket file nobody listens on: left by a service that was killed.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => None,
                Err(e) => Some((q, Err(format!("{}: {e}", path.display())))),
            }
        })
        .collect()
}

fn read_all(s: &Steering, queues: u32) -> Result<Vec<QueueCounters>, SteerError> {
    (0..queues).map(|q| s.counters(q)).collect()
}

fn stats(
    iface: &str,
    root: Option<&std::path::Path>,
    interval: Option<f64>,
    count: Option<u64>,
    all: bool,
    json: bool,
) -> Result<(), CliError> {
    if steer_bpf::sys::ifindex(iface).is_none() {
        return Err(SteerError::NoSuchInterface(iface.to_string()).into());
    }
    let s = Steering::open(iface, root)?;
    let queues = steer_bpf::sys::rx_queue_count(iface)
        .unwrap_or(steer_bpf::MAX_QUEUES)
        .min(steer_bpf::MAX_QUEUES);
    let steered = s.queue()?;
    let show = |q: u32, c: &QueueCounters| all || q == steered || c.seen > 0;
    let Some(secs) = interval else {
        let now = read_all(&s, queues)?;
        if json {
            let v: Vec<_> = now
                .iter()
                .enumerate()
                .filter(|(q, c)| show(*q as u32, c))
                .map(|(q, c)| serde_json::json!({"queue": q, "counters": c}))
                .collect();
            let services: Vec<_> = service_stats(iface)
                .into_iter()
                .map(|(q, r)| match r {
                    Ok(v) => serde_json::json!({"queue": q, "stats": v["stats"]}),
                    Err(e) => serde_json::json!({"queue": q, "error": e}),
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"iface": iface, "steered_queue": steered, "queues": v, "services": services})
            );
        } else {
            print_table(iface, steered, &now, None, show);
            for (q, r) in service_stats(iface) {
                match r {
                    Ok(v) => {
                        println!("\nstack on queue {q} (pid {}):", v["stats"]["pid"]);
                        print!("{}", v["table"].as_str().unwrap_or(""));
                    }
                    Err(e) => println!("\nstack on queue {q}: unreachable ({e})"),
                }
            }
        }
        return Ok(());
    };
    let mut prev = read_all(&s, queues)?;
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(Duration::from_secs_f64(secs));
        let now = read_all(&s, queues)?;
        let rates: Vec<QueueCounters> = now.iter().zip(&prev).map(|(a, b)| a.delta(b)).collect();
        if json {
            let v: Vec<_> = rates
                .iter()
                .enumerate()
                .filter(|(q, _)| show(*q as u32, &now[*q]))
                .map(|(q, r)| {
                    let per_sec: serde_json::Map<String, serde_json::Value> = r
                        .fields()
                        .iter()
                        .map(|(k, v)| (k.to_string(), serde_json::json!(*v as f64 / secs)))
                        .collect();
                    serde_json::json!({"queue": q, "per_sec": per_sec, "totals": now[q]})
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"iface": iface, "interval": secs, "queues": v})
            );
        } else {
            print_table(iface, steered, &now, Some((&rates, secs)), show);
        }
        prev = now;
        n += 1;
    }
    Ok(())
}

fn print_table(
    iface: &str,
    steered: u32,
    now: &[QueueCounters],
    rates: Option<(&[QueueCounters], f64)>,
    show: impl Fn(u32, &QueueCounters) -> bool,
) {
    let header: Vec<&str> = QueueCounters::default()
        .fields()
        .iter()
        .map(|(k, _)| *k)
        .collect();
    let unit = if rates.is_some() { " (per second)" } else { "" };
    println!("{iface}: steered queue {steered}{unit}");
    print!("{:>7}", "queue");
    for h in &header {
        print!(" {h:>12}");
    }
    println!();
    for (q, c) in now.iter().enumerate() {
        if !show(q as u32, c) {
            continue;
        }
        let mark = if q as u32 == steered { "*" } else { " " };
        print!("{:>6}{mark}", q);
        let vals = match rates {
            Some((r, secs)) => r[q]
                .fields()
                .map(|(_, v)| format!("{:.0}", v as f64 / secs)),
            None => c.fields().map(|(_, v)| v.to_string()),
        };
        for v in vals {
            print!(" {v:>12}");
        }
        println!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn attach_parses_rules_and_mode() {
        let cli = Cli::try_parse_from([
            "xdp-loader",
            "attach",
            "eth0",
            "--queue",
            "3",
            "--tcp",
            "8080",
            "--udp",
            "53",
            "--udp",
            "9000",
            "--mode",
            "generic",
            "--ip",
            "198.18.0.1",
        ])
        .unwrap();
        let Cmd::Attach(a) = cli.cmd else {
            panic!("not attach")
        };
        assert_eq!(a.queue, 3);
        assert!(matches!(a.mode, ModeArg::Generic));
        let rules = rules_of(&a.tcp, &a.udp, a.ip).unwrap();
        let text: Vec<String> = rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "tcp:8080@198.18.0.1",
                "udp:53@198.18.0.1",
                "udp:9000@198.18.0.1"
            ]
        );
    }

    #[test]
    fn bad_ports_and_modes_are_refused() {
        for args in [
            &["xdp-loader", "attach", "eth0", "--queue", "3", "--tcp", "0"][..],
            &[
                "xdp-loader",
                "attach",
                "eth0",
                "--queue",
                "3",
                "--tcp",
                "65536",
            ],
            &[
                "xdp-loader",
                "attach",
                "eth0",
                "--queue",
                "3",
                "--udp",
                "http",
            ],
            &["xdp-loader", "attach", "eth0", "--queue", "-1"],
            &[
                "xdp-loader",
                "attach",
                "eth0",
                "--queue",
                "1",
                "--mode",
                "offload",
            ],
            &["xdp-loader", "attach", "eth0"],
            &["xdp-loader", "rule", "add", "eth0"],
            &[
                "xdp-loader",
                "rule",
                "add",
                "eth0",
                "--tcp",
                "1",
                "--udp",
                "2",
            ],
            &["xdp-loader", "stats", "eth0", "--interval", "0"],
            &["xdp-loader", "stats", "eth0", "--count", "3"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} accepted");
        }
    }

    #[test]
    fn port_error_names_the_range() {
        assert!(port("0").unwrap_err().contains("1..=65535"));
        assert!(port("70000").unwrap_err().contains("out of range"));
        assert_eq!(port("8080"), Ok(8080));
    }
}
