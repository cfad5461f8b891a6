//! A UDP receiver that counts ("how to receive a million packets", the receiving half): the
//! kernel with recvmmsg(2) batches, or the AF_XDP stack's UdpSocket. Prints one JSON line of
//! cumulative counters on SIGUSR1 and at exit (`served` = datagrams received).
use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    process::ExitCode,
    sync::atomic::Ordering,
};

use clap::Parser;
use demos::report::{serve_until_signalled, BackendArgs, SERVED};

#[global_allocator]
static ALLOC: demos::alloc_count::Counting = demos::alloc_count::Counting;

#[derive(Parser)]
#[command(
    about = "UDP sink: counts datagrams received by the kernel (recvmmsg) or by the stack",
    after_help = "Example (as root):\n  udp-sink --backend kernel --port 9100 &\n  xdp-loader attach eth0 --queue 3 && udp-sink --backend stack --iface eth0 --queue 3 --port 9000 &\n  # from a peer: udp-flood --to <addr>:9000 --seconds 2; then kill -USR1 <pid> prints the count"
)]
struct Cli {
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long)]
    port: u16,
    /// Kernel: datagrams per recvmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Receive buffer: kernel SO_RCVBUF bytes; the stack gets the same bytes and BUFFER/64
    /// datagram slots.
    #[arg(long, default_value_t = 4 << 20)]
    buffer: usize,
}

/// Receives in batches of `batch` until the socket fails.
fn kernel_loop(sock: UdpSocket, batch: usize) {
    let mut bufs = vec![[0u8; 2048]; batch];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; batch];
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    loop {
        // SAFETY: `msgs` holds `batch` headers, each pointing at its own live iovec and buffer;
        // nothing else touches them during the call.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                batch as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("udp-sink: recvmmsg: {e}");
            return;
        }
        SERVED.fetch_add(r as u64, Ordering::Relaxed);
    }
}

fn set_rcvbuf(sock: &UdpSocket, bytes: usize) -> std::io::Result<()> {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: passes a pointer to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn main() -> ExitCode {
    demos::init_logging();
    let cli = Cli::parse();
    if cli.port == 0 || cli.batch == 0 || cli.batch > 1024 || cli.buffer < 4096 {
        eprintln!("udp-sink: error: need --port 1..=65535, --batch 1..=1024, --buffer >= 4096");
        return ExitCode::from(2);
    }
    let buffer = cli.buffer;
    let stack = match cli
        .backend
        .start_stack("udp-sink", |b| b.udp_buffers((buffer / 64).max(1), buffer))
    {
        Ok(s) => s,
        Err(code) => return code,
    };
    match &stack {
        None => {
            let sock = match UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], cli.port))) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("udp-sink: error: binding port {}: {e}", cli.port);
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = set_rcvbuf(&sock, cli.buffer) {
                eprintln!("udp-sink: warning: SO_RCVBUFFORCE: {e} (keeping the default)");
            }
            let batch = cli.batch;
            std::thread::spawn(move || kernel_loop(sock, batch));
        }
        Some(stack) => {
            let sock = match stack.udp_bind(cli.port) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("udp-sink: error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                loop {
                    match sock.recv_from(&mut buf) {
                        Ok(_) => {
                            SERVED.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("udp-sink: recv: {e}");
                            return;
                        }
                    }
                }
            });
        }
    }
    println!(
        "udp-sink: serving udp port {} on {}",
        cli.port,
        cli.backend.describe()
    );
    if serve_until_signalled(stack.as_ref(), cli.backend.duration, "udp-sink") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
