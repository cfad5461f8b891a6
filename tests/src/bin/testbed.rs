//! Build or remove the test network by hand: `testbed up` prints what it made, `testbed down NS`
//! removes it (netns, veth pair, and any pins of the host end).
use clap::{Parser, Subcommand};
use testbed::{Testbed, TestbedOptions};

#[derive(Parser)]
#[command(
    about = "netns + veth testbed for the AF_XDP stack (run as root)",
    after_help = "Example:\n  testbed up --queues 4 --queue 3\n  xdp-loader attach <host_if> --queue 3 --tcp 8080\n  ip netns exec <ns> ping -c1 <host_ip>\n  testbed down <ns>"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a namespace and a veth pair; the peer's traffic lands on RX queue --queue.
    Up {
        #[arg(long, default_value_t = 4)]
        queues: u32,
        #[arg(long, default_value_t = 3)]
        queue: u32,
        /// Steer for generic-mode XDP (off by one on veth).
        #[arg(long)]
        generic: bool,
    },
    /// Remove a testbed made by `up`.
    Down { ns: String },
}

fn main() {
    let cli = Cli::parse();
    if !testbed::require_root("testbed") {
        std::process::exit(1);
    }
    match cli.cmd {
        Cmd::Up {
            queues,
            queue,
            generic,
        } => {
            if queues == 0 || queue >= queues || (generic && queue + 1 >= queues) {
                eprintln!(
                    "testbed: error: --queue must be < --queues (generic: queue + 1 < queues)"
                );
                std::process::exit(1);
            }
            let tb = Testbed::with(TestbedOptions {
                queues,
                steer_queue: queue,
                generic,
            })
            .keep();
            println!(
                "ns={} host_if={} host_ip={} peer_if={} peer_ip={}",
                tb.ns, tb.host_if, tb.host_ip, tb.peer_if, tb.peer_ip
            );
        }
        Cmd::Down { ns } => {
            if !ns.starts_with("xt") || ns.contains('/') {
                eprintln!(
                    "testbed: error: {ns:?} is not a testbed namespace (they are named xt...)"
                );
                std::process::exit(1);
            }
            Testbed::remove(&ns);
            println!("removed {ns}");
        }
    }
}
