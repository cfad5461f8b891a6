//! Running a family of cases against both targets, and the results table.
#![allow(unsafe_code)]

use super::*;

#[derive(Debug, Clone)]
enum Outcome {
    Pass,
    Fail(String),
    XFail(&'static str),
    XPass,
}

impl Outcome {
    fn cell(&self) -> String {
        match self {
            Outcome::Pass => "PASS".into(),
            Outcome::Fail(_) => "FAIL".into(),
            Outcome::XFail(why) => format!("XFAIL ({why})"),
            Outcome::XPass => "XPASS (!)".into(),
        }
    }
}

/// Builds a testbed, a kernel listener and a stack listener, and runs every case first against
/// the kernel, then against the stack. Prints the table; panics on an unexpected FAIL.
pub fn run_family(family: &str, cases: &[Case]) {
    let tb = Testbed::new();
    loader_ok(&["attach", &tb.host_if, "--queue", "3"]);
    let peer = Peer::open(&tb);
    let kernel = std::net::TcpListener::bind(SocketAddr::from((tb.host_ip, KERNEL_PORT)))
        .expect("kernel listener");
    kernel.set_nonblocking(true).expect("non-blocking listener");
    let stack = xsk_stack::Stack::builder(&tb.host_if, 3)
        .control_socket(None)
        .start()
        .expect("stack starts");
    let stack_listener = stack.tcp_listen(STACK_PORT).expect("stack listens");
    let kernel: Arc<dyn Acceptor> = Arc::new(kernel);
    let stack_acc: Arc<dyn Acceptor> = Arc::new(stack_listener);
    let ports = AtomicU16::new(20000);
    let started = Instant::now();

    let mut results: Vec<(Outcome, Outcome)> = Vec::new();
    let mut details = Vec::new();
    for target in [Target::Kernel, Target::Stack] {
        let (port, acceptor) = match target {
            Target::Kernel => (KERNEL_PORT, kernel.clone()),
            Target::Stack => (STACK_PORT, stack_acc.clone()),
        };
        for (i, case) in cases.iter().enumerate() {
            peer.drain();
            let mut ctx = Ctx {
                target,
                peer: &peer,
                port,
                conn: Conn::default(),
                server: None,
                pending_accept: None,
                acceptor: acceptor.clone(),
                ports: &ports,
                backlog: VecDeque::new(),
                others: Vec::new(),
                data_segs: Vec::new(),
                t0: Instant::now(),
                trace: Vec::new(),
            };
            let t = Instant::now();
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.body)(&mut ctx)))
                    .unwrap_or_else(|p| {
                        Err(format!(
                            "panicked: {}",
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default()
                        ))
                    });
            ctx.teardown();
            let outcome = match (target, &r, case.stack) {
                (_, Ok(()), Expect::Pass) | (Target::Kernel, Ok(()), _) => Outcome::Pass,
                (Target::Stack, Ok(()), Expect::ExpectedFail { .. }) => Outcome::XPass,
                (Target::Stack, Err(_), Expect::ExpectedFail { why }) => Outcome::XFail(why),
                (_, Err(e), _) => Outcome::Fail(e.clone()),
            };
            eprintln!(
                "[{family}] {target:?} {} ({:.2}s): {}{}",
                case.name,
                t.elapsed().as_secs_f64(),
                outcome.cell(),
                r.as_ref()
                    .err()
                    .map(|e| format!(" — {e}"))
                    .unwrap_or_default()
            );
            if std::env::var_os("CONFORMANCE_TRACE").is_some() {
                eprintln!("{}", ctx.trace.join("\n"));
            }
            if let Err(e) = &r {
                let tail: Vec<_> = ctx.trace.iter().rev().take(40).rev().cloned().collect();
                details.push(format!(
                    "--- {family}/{} on {target:?}: {e}\n{}",
                    case.name,
                    tail.join("\n")
                ));
            }
            if target == Target::Kernel {
                results.push((outcome, Outcome::Pass));
            } else {
                results[i].1 = outcome;
            }
        }
    }
    if peer.foreign_rsts.get() > 0 {
        details.push(format!(
            "the peer kernel sent {} RST(s) from {}: it answers for the fake address",
            peer.foreign_rsts.get(),
            peer.ip
        ));
    }

    // The table.
    let w0 = cases.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
    let w1 = cases.iter().map(|c| c.rfc.len()).max().unwrap_or(3).max(3);
    let mut out = format!(
        "\n== conformance: {family} ({:.1} s) ==\n{:w0$} | {:w1$} | {:6} | stack\n",
        started.elapsed().as_secs_f64(),
        "case",
        "RFC",
        "kernel"
    );
    for (c, (k, s)) in cases.iter().zip(&results) {
        out.push_str(&format!(
            "{:w0$} | {:w1$} | {:6} | {}\n",
            c.name,
            c.rfc,
            k.cell(),
            s.cell()
        ));
    }
    eprintln!("{out}");
    for d in &details {
        eprintln!("{d}\n");
    }
    for (c, (_, s)) in cases.iter().zip(&results) {
        if matches!(s, Outcome::XPass) {
            eprintln!(
                "!!!!!!!! XPASS {family}/{}: expected to fail on the stack, passed: update the table !!!!!!!!",
                c.name
            );
        }
    }
    let failed: Vec<String> = cases
        .iter()
        .zip(&results)
        .flat_map(|(c, (k, s))| {
            let mut v = Vec::new();
            if let Outcome::Fail(e) = k {
                v.push(format!(
                    "{} on the kernel (the expectation is wrong): {e}",
                    c.name
                ));
            }
            if let Outcome::Fail(e) = s {
                v.push(format!("{} on the stack: {e}", c.name));
            }
            v
        })
        .collect();
    assert!(
        failed.is_empty() && peer.foreign_rsts.get() == 0,
        "{family}: unexpected failures:\n  {}",
        failed.join("\n  ")
    );
}
