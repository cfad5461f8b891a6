//! The command line: clap definitions of `xdp-loader`, its subcommands and their value parsers.
use std::{net::Ipv4Addr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use steer_bpf::{Protocol, SteeringRule};

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
pub(crate) struct Cli {
    /// bpffs directory holding one pin directory per interface [env: XSK_STEER_PIN_ROOT]
    /// [default: /sys/fs/bpf/xsk-steer]
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) pin_root: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
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
        /// Show the services' TCP connections instead (state, RTT, RTO, retransmissions,
        /// windows, queues): what `ss -ti` shows for kernel sockets, which cannot see these.
        #[arg(long, conflicts_with = "interval")]
        connections: bool,
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
pub(crate) struct AttachArgs {
    pub(crate) iface: String,
    /// The RX queue whose matching flows are steered.
    #[arg(long, short)]
    pub(crate) queue: u32,
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub(crate) mode: ModeArg,
    /// Steer TCP to this destination port (repeatable).
    #[arg(long = "tcp", value_name = "PORT", value_parser = port)]
    pub(crate) tcp: Vec<u16>,
    /// Steer UDP to this destination port (repeatable).
    #[arg(long = "udp", value_name = "PORT", value_parser = port)]
    pub(crate) udp: Vec<u16>,
    /// Only steer packets to this local IPv4 address (default: any address).
    #[arg(long, value_name = "ADDR")]
    pub(crate) ip: Option<Ipv4Addr>,
    /// Replace an XDP program that is not ours.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ModeArg {
    /// Native if the driver supports it, else generic.
    Auto,
    Native,
    Generic,
}

#[derive(Subcommand, Debug)]
pub(crate) enum RuleOp {
    /// Add a rule: `rule add IFACE --tcp PORT [--ip ADDR]`.
    Add(RuleArgs),
    /// Delete a rule: `rule del IFACE --udp PORT [--ip ADDR]`.
    Del(RuleArgs),
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("proto").required(true).args(["tcp", "udp"])))]
pub(crate) struct RuleArgs {
    pub(crate) iface: String,
    #[arg(long, value_name = "PORT", value_parser = port)]
    pub(crate) tcp: Option<u16>,
    #[arg(long, value_name = "PORT", value_parser = port)]
    pub(crate) udp: Option<u16>,
    #[arg(long, value_name = "ADDR")]
    pub(crate) ip: Option<Ipv4Addr>,
}

pub(crate) fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("port 0 cannot be steered (ports are 1..=65535)".into()),
        Ok(p) if p <= 65535 => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is out of range (1..=65535)")),
        Err(_) => Err(format!("{s:?} is not a port number (1..=65535)")),
    }
}

pub(crate) fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?}: interval must be between 0.1 and 3600 seconds"
        )),
    }
}

pub(crate) fn rules_of(
    tcp: &[u16],
    udp: &[u16],
    ip: Option<Ipv4Addr>,
) -> Result<Vec<SteeringRule>, String> {
    let mut v = Vec::new();
    for (proto, ports) in [(Protocol::Tcp, tcp), (Protocol::Udp, udp)] {
        for &p in ports {
            v.push(SteeringRule::new(proto, p, ip).map_err(|e| e.to_string())?);
        }
    }
    Ok(v)
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
