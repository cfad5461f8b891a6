//! xsk-stack patch: which socket a TCP segment reaches. A connected socket whose 4-tuple matches
//! always wins over a listener, wherever the two sit in the socket set; a new SYN may end a
//! TIME-WAIT early and then reaches the listener.
use super::*;

use crate::iface::SocketHandle;
use crate::socket::tcp;

const LOCAL: Ipv4Address = Ipv4Address::new(127, 0, 0, 1);
const REMOTE: Ipv4Address = Ipv4Address::new(127, 0, 0, 2);
const PORT: u16 = 1234;
const CLIENT_PORT: u16 = 65000;

fn segment(control: TcpControl, seq: i32, ack: Option<TcpSeqNumber>) -> TcpRepr<'static> {
    TcpRepr {
        src_port: CLIENT_PORT,
        dst_port: PORT,
        control,
        seq_number: TcpSeqNumber(seq),
        ack_number: ack,
        window_len: 1024,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    }
}

/// Feeds one segment from REMOTE to the interface; returns the TCP reply, if any.
fn deliver(
    iface: &mut Interface,
    sockets: &mut SocketSet,
    repr: &TcpRepr,
) -> Option<TcpRepr<'static>> {
    let mut bytes = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut bytes),
        &REMOTE.into(),
        &LOCAL.into(),
        &ChecksumCapabilities::default(),
    );
    let ip = IpRepr::Ipv4(Ipv4Repr {
        src_addr: REMOTE,
        dst_addr: LOCAL,
        next_header: IpProtocol::Tcp,
        payload_len: bytes.len(),
        hop_limit: 64,
    });
    let reply = iface.inner.process_tcp(sockets, false, ip, &bytes)?;
    match reply.payload() {
        IpPayload::Tcp(t) => Some(TcpRepr {
            payload: &[],
            sack_ranges: t.sack_ranges,
            ..*t
        }),
        other => panic!("not a TCP reply: {other:?}"),
    }
}

/// What the interface sends on its own (SYN-ACKs, FINs): polls egress into a loopback and
/// returns each segment's (control, seq, ack).
fn egress(
    iface: &mut Interface,
    sockets: &mut SocketSet<'static>,
) -> Vec<(TcpControl, TcpSeqNumber, Option<TcpSeqNumber>)> {
    use crate::phy::{Device, RxToken};
    let mut dev = Loopback::new(Medium::Ip);
    iface.poll_egress(Instant::from_millis(0), &mut dev, sockets);
    let mut out = Vec::new();
    while let Some((rx, _)) = dev.receive(Instant::from_millis(0)) {
        rx.consume(|frame| {
            let ip = Ipv4Packet::new_checked(frame).unwrap();
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            let repr = TcpRepr::parse(
                &tcp,
                &ip.src_addr().into(),
                &ip.dst_addr().into(),
                &ChecksumCapabilities::default(),
            )
            .unwrap();
            out.push((repr.control, repr.seq_number, repr.ack_number));
        });
    }
    out
}

fn listener(sockets: &mut SocketSet<'static>) -> SocketHandle {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64]),
        tcp::SocketBuffer::new(vec![0; 64]),
    );
    s.set_ack_delay(None);
    s.listen(PORT).unwrap();
    sockets.add(s)
}

/// An established connection (REMOTE:CLIENT_PORT → LOCAL:PORT) whose socket sits in a later
/// slot than a listener on the same port. Returns (listener, connection, our ISN + 1).
fn established_behind_a_listener(
    iface: &mut Interface,
    sockets: &mut SocketSet<'static>,
) -> (SocketHandle, SocketHandle, TcpSeqNumber) {
    // Slot 0 is taken first so the connection lands in slot 1; slot 0 is then freed and
    // reused by a new listener, exactly what a runtime that recycles sockets does.
    let placeholder = listener(sockets);
    let conn = listener(sockets);
    sockets.get_mut::<tcp::Socket>(placeholder).abort();
    sockets.remove(placeholder);
    assert_eq!(
        deliver(iface, sockets, &segment(TcpControl::Syn, 1000, None)),
        None
    );
    let out = egress(iface, sockets);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, TcpControl::Syn);
    let our_next = out[0].1 + 1;
    assert_eq!(
        deliver(
            iface,
            sockets,
            &segment(TcpControl::None, 1001, Some(our_next))
        ),
        None
    );
    assert_eq!(
        sockets.get::<tcp::Socket>(conn).state(),
        tcp::State::Established
    );
    let l = listener(sockets);
    assert!(
        l < conn,
        "the listener must sit in an earlier slot for this test to mean anything"
    );
    (l, conn, our_next)
}

#[test]
fn a_syn_for_an_established_tuple_never_reaches_a_listener() {
    let (mut iface, mut sockets, _) = setup(Medium::Ip);
    let (l, conn, our_next) = established_behind_a_listener(&mut iface, &mut sockets);

    // A second SYN with the same 4-tuple, in window (a duplicated or crossed SYN): the
    // established socket answers with a challenge ACK (RFC 5961 §4), not the listener with a
    // SYN-ACK and a new ISN.
    let reply = deliver(
        &mut iface,
        &mut sockets,
        &segment(TcpControl::Syn, 1001, None),
    )
    .expect("a challenge ACK");
    assert_eq!(reply.control, TcpControl::None);
    assert_eq!(reply.seq_number, our_next);
    assert_eq!(reply.ack_number, Some(TcpSeqNumber(1001)));
    assert!(sockets.get::<tcp::Socket>(l).is_listening());
    assert_eq!(
        sockets.get::<tcp::Socket>(conn).state(),
        tcp::State::Established
    );
    assert_eq!(iface.tcp_counters().syn_challenges, 1);
    assert_eq!(iface.tcp_counters().challenge_acks, 1);
}

#[test]
fn a_segment_for_an_established_tuple_reaches_it_past_a_listener() {
    let (mut iface, mut sockets, _) = setup(Medium::Ip);
    let (l, conn, our_next) = established_behind_a_listener(&mut iface, &mut sockets);
    let mut data = segment(TcpControl::Psh, 1001, Some(our_next));
    data.payload = b"hello";
    assert_eq!(deliver(&mut iface, &mut sockets, &data), None);
    assert_eq!(
        egress(&mut iface, &mut sockets),
        vec![(TcpControl::None, our_next, Some(TcpSeqNumber(1006)))]
    );
    let mut buf = [0u8; 8];
    assert_eq!(
        sockets.get_mut::<tcp::Socket>(conn).recv_slice(&mut buf),
        Ok(5)
    );
    assert_eq!(&buf[..5], b"hello");
    assert!(sockets.get::<tcp::Socket>(l).is_listening());
}

/// Closes `conn` actively (our FIN, their ACK and FIN) so it sits in TIME-WAIT.
fn into_time_wait(
    iface: &mut Interface,
    sockets: &mut SocketSet<'static>,
    conn: SocketHandle,
    our_next: TcpSeqNumber,
) {
    sockets.get_mut::<tcp::Socket>(conn).close();
    let out = egress(iface, sockets);
    assert_eq!(
        out,
        vec![(TcpControl::Fin, our_next, Some(TcpSeqNumber(1001)))]
    );
    let fin_ack = segment(TcpControl::Fin, 1001, Some(our_next + 1));
    assert_eq!(deliver(iface, sockets, &fin_ack), None);
    assert_eq!(
        egress(iface, sockets),
        vec![(TcpControl::None, our_next + 1, Some(TcpSeqNumber(1002)))]
    );
    assert_eq!(
        sockets.get::<tcp::Socket>(conn).state(),
        tcp::State::TimeWait
    );
}

#[test]
fn a_new_syn_ends_time_wait_and_reaches_the_listener() {
    let (mut iface, mut sockets, _) = setup(Medium::Ip);
    let (l, conn, our_next) = established_behind_a_listener(&mut iface, &mut sockets);
    into_time_wait(&mut iface, &mut sockets, conn, our_next);

    // A new SYN from the same port, beyond the old connection's sequence space (Linux's rule).
    assert_eq!(
        deliver(
            &mut iface,
            &mut sockets,
            &segment(TcpControl::Syn, 900_000, None),
        ),
        None
    );
    let out = egress(&mut iface, &mut sockets);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, TcpControl::Syn, "a SYN-ACK from the listener");
    assert_eq!(out[0].2, Some(TcpSeqNumber(900_001)));
    assert_eq!(sockets.get::<tcp::Socket>(conn).state(), tcp::State::Closed);
    assert_eq!(
        sockets.get::<tcp::Socket>(l).state(),
        tcp::State::SynReceived
    );
    assert_eq!(iface.tcp_counters().time_wait_recycled, 1);
}

#[test]
fn an_old_syn_does_not_end_time_wait() {
    let (mut iface, mut sockets, _) = setup(Medium::Ip);
    let (l, conn, our_next) = established_behind_a_listener(&mut iface, &mut sockets);
    into_time_wait(&mut iface, &mut sockets, conn, our_next);

    // The old connection's SYN again (a duplicate from the past): TIME-WAIT is exactly what
    // protects against it. It draws a challenge ACK and the listener never sees it.
    let reply = deliver(
        &mut iface,
        &mut sockets,
        &segment(TcpControl::Syn, 1000, None),
    )
    .expect("a challenge ACK");
    assert_eq!(reply.control, TcpControl::None);
    assert_eq!(
        sockets.get::<tcp::Socket>(conn).state(),
        tcp::State::TimeWait
    );
    assert!(sockets.get::<tcp::Socket>(l).is_listening());
    assert_eq!(iface.tcp_counters().time_wait_recycled, 0);
}
