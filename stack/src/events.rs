//! Connection state changes, reported to an application hook (the ConnState idea of Go's
//! http.Server): one event per observed transition, with the connection's addresses.
use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use smoltcp::{
    iface::{SocketHandle, SocketSet},
    socket::{tcp, Socket},
    wire::{IpAddress, IpEndpoint},
};

/// One observed TCP state change. States are sampled after each batch of packets, so a
/// transition that starts and ends inside one batch shows as one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnEvent {
    /// The connection's local address.
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The state before.
    pub from: tcp::State,
    /// The state after.
    pub to: tcp::State,
}

/// The application's hook; called on the shard thread, so it must be quick and must not call
/// back into the stack.
pub type ConnHook = Arc<dyn Fn(&ConnEvent) + Send + Sync>;

fn to_std(e: IpEndpoint) -> SocketAddr {
    match e.addr {
        IpAddress::Ipv4(a) => SocketAddr::from((a, e.port)),
    }
}

struct Seen {
    state: tcp::State,
    local: SocketAddr,
    remote: SocketAddr,
    generation: u64,
}

/// Remembers the last state of every connected TCP socket.
#[derive(Default)]
pub(crate) struct StateTracker {
    seen: HashMap<SocketHandle, Seen>,
    generation: u64,
    /// Sockets found closed with no addresses left this scan (kept to avoid an allocation per
    /// scan): smoltcp forgets a connection's tuple when an RST closes it.
    closed: Vec<SocketHandle>,
}

/// What a scan found besides the events.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ScanResult {
    /// Established/close-wait connections that went straight to closed (reset).
    pub estab_resets: u64,
}

impl StateTracker {
    /// Compares every TCP socket (armed listeners excepted) with its last state and reports
    /// each change to `emit`; sockets that disappeared are reported as closed.
    pub fn scan(&mut self, sockets: &SocketSet<'_>, mut emit: impl FnMut(ConnEvent)) -> ScanResult {
        self.generation += 1;
        let generation = self.generation;
        let mut result = ScanResult::default();
        self.closed.clear();
        for (h, s) in sockets.iter() {
            let Socket::Tcp(t) = s else { continue };
            let state = t.state();
            let (Some(l), Some(r)) = (t.local_endpoint(), t.remote_endpoint()) else {
                // Listening or closed without a connection: nothing to report (a stale entry
                // for this handle is closed out below).
                if state == tcp::State::Closed {
                    self.closed.push(h);
                }
                continue;
            };
            let (local, remote) = (to_std(l), to_std(r));
            let prev = self.seen.get_mut(&h);
            match prev {
                Some(p) if p.local == local && p.remote == remote => {
                    p.generation = generation;
                    if p.state != state {
                        if matches!(p.state, tcp::State::Established | tcp::State::CloseWait)
                            && state == tcp::State::Closed
                        {
                            result.estab_resets += 1;
                        }
                        emit(ConnEvent {
                            local,
                            remote,
                            from: p.state,
                            to: state,
                        });
                        p.state = state;
                    }
                }
                other => {
                    // A new connection (or a reused handle carrying a new one).
                    if let Some(old) = other {
                        if old.state != tcp::State::Closed {
                            emit(ConnEvent {
                                local: old.local,
                                remote: old.remote,
                                from: old.state,
                                to: tcp::State::Closed,
                            });
                        }
                    }
                    let from = match state {
                        tcp::State::SynSent => tcp::State::Closed,
                        _ => tcp::State::Listen,
                    };
                    if from != state {
                        emit(ConnEvent {
                            local,
                            remote,
                            from,
                            to: state,
                        });
                    }
                    self.seen.insert(
                        h,
                        Seen {
                            state,
                            local,
                            remote,
                            generation,
                        },
                    );
                }
            }
        }
        let closed = &self.closed;
        self.seen.retain(|h, s| {
            if s.generation == generation {
                return true;
            }
            // An established connection whose socket is now closed with its tuple gone was
            // reset (an RST received clears the tuple before any scan can see it closed).
            if matches!(s.state, tcp::State::Established | tcp::State::CloseWait)
                && closed.contains(h)
            {
                result.estab_resets += 1;
            }
            if s.state != tcp::State::Closed {
                emit(ConnEvent {
                    local: s.local,
                    remote: s.remote,
                    from: s.state,
                    to: tcp::State::Closed,
                });
            }
            false
        });
        result
    }
}
