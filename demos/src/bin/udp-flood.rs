//! A sendmmsg UDP flooder ("how to receive a million packets", the sending half): FLOWS sockets
//! with distinct source ports, BATCH datagrams per sendmmsg(2), an optional offered rate, bounded
//! in time. Prints one JSON line: datagrams sent, seconds, send errors.
use std::{
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "UDP flooder: sendmmsg(2) batches from several source ports, at a fixed rate or flat out",
    after_help = "Example (from the peer namespace):\n  udp-flood --to 198.18.1.1:9000 --flows 4 --batch 32 --rate 200000 --seconds 2\n  udp-flood --to 198.18.1.1:9000 --seconds 2          # flat out"
)]
struct Cli {
    /// Destination address:port.
    #[arg(long)]
    to: SocketAddrV4,
    /// Source ports (one socket each), used round robin per batch.
    #[arg(long, default_value_t = 1)]
    flows: usize,
    /// Datagrams per sendmmsg call.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Offered datagrams per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// UDP payload bytes.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// How long to send (at most 60).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

/// Sends `n` copies of `payload` to `to` in one sendmmsg; returns how many went.
fn send_batch(
    sock: &UdpSocket,
    to: &SocketAddrV4,
    payload: &[u8],
    n: usize,
) -> std::io::Result<usize> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
    let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
    hdr.msg_hdr.msg_name = &addr as *const libc::sockaddr_in as *mut libc::c_void;
    hdr.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    hdr.msg_hdr.msg_iov = &mut iov;
    hdr.msg_hdr.msg_iovlen = 1;
    let mut msgs = vec![hdr; n];
    // SAFETY: `msgs` holds `n` headers whose name and iovec point at `addr`, `iov` and `payload`,
    // all alive and unchanged for the duration of the call; the kernel only reads them (and
    // writes msg_len).
    let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !(cli.seconds > 0.0 && cli.seconds <= 60.0)
        || cli.flows == 0
        || cli.flows > 1024
        || cli.batch == 0
        || cli.batch > 1024
        || cli.size > 1472
    {
        eprintln!("udp-flood: error: need 0 < --seconds <= 60, --flows 1..=1024, --batch 1..=1024, --size <= 1472");
        return ExitCode::from(2);
    }
    let mut socks = Vec::new();
    for _ in 0..cli.flows {
        match UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))) {
            Ok(s) => socks.push(s),
            Err(e) => {
                eprintln!("udp-flood: error: bind: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let payload = vec![0x55u8; cli.size];
    let d = Duration::from_secs_f64(cli.seconds);
    let t = Instant::now();
    let (mut sent, mut errors, mut i) = (0u64, 0u64, 0usize);
    loop {
        let elapsed = t.elapsed();
        if elapsed >= d {
            break;
        }
        if cli.rate > 0 {
            // Pace: never ahead of rate × elapsed; sleep off a lead of over a millisecond.
            let due = (elapsed.as_secs_f64() * cli.rate as f64) as u64;
            if sent >= due {
                let ahead = (sent + cli.batch as u64 - due) as f64 / cli.rate as f64;
                if ahead > 0.001 {
                    std::thread::sleep(Duration::from_secs_f64(ahead.min(0.01)));
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
        }
        match send_batch(&socks[i % socks.len()], &cli.to, &payload, cli.batch) {
            Ok(n) => sent += n as u64,
            Err(e)
                if e.raw_os_error() == Some(libc::ENOBUFS)
                    || e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                errors += 1
            }
            Err(e) => {
                eprintln!("udp-flood: error: sendmmsg: {e}");
                return ExitCode::FAILURE;
            }
        }
        i += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"sent\":{sent},\"seconds\":{secs:.4},\"pps\":{:.0},\"send_errors\":{errors}}}",
        sent as f64 / secs
    );
    ExitCode::SUCCESS
}
