//! Two (or three) routers exchanging datagrams in memory.

use super::*;
use crate::ip::{ipv4_udp_packet, udp_payload};
use crate::keys::keypair;

const A_ADDR: &str = "198.51.100.1:51820";
const B_ADDR: &str = "198.51.100.2:51820";

fn a_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 42, 1, 1)
}
fn b_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 42, 2, 1)
}

struct Host {
    router: Router,
    addr: SocketAddr,
    public: [u8; 32],
    tun: Vec<Vec<u8>>,
}

struct Pair {
    a: Host,
    b: Host,
}

fn host(addr: &str, psk: Option<[u8; 32]>) -> Host {
    let (private, public) = keypair().unwrap();
    Host {
        router: Router::new(private, psk),
        addr: addr.parse().unwrap(),
        public,
        tun: Vec::new(),
    }
}

fn config(h: &Host, net: Ipv4Addr) -> PeerConfig {
    PeerConfig {
        public_key: h.public,
        endpoint: Some(h.addr),
        allowed: vec![(net, 24)],
    }
}

impl Pair {
    fn new(psk_a: Option<[u8; 32]>, psk_b: Option<[u8; 32]>) -> Pair {
        let mut a = host(A_ADDR, psk_a);
        let mut b = host(B_ADDR, psk_b);
        a.router
            .set_peers(vec![config(&b, Ipv4Addr::new(10, 42, 2, 0))])
            .unwrap();
        b.router
            .set_peers(vec![config(&a, Ipv4Addr::new(10, 42, 1, 0))])
            .unwrap();
        Pair { a, b }
    }

    /// Delivers `outs` produced by the host at `from_a` (true: A) and everything they cause,
    /// until nothing is left in flight.
    fn deliver(&mut self, from_a: bool, outs: Vec<Out>) {
        let mut queue: Vec<(bool, Out)> = outs.into_iter().map(|o| (from_a, o)).collect();
        let mut rounds = 0;
        while let Some((sender_is_a, out)) = queue.pop() {
            rounds += 1;
            assert!(rounds < 10_000, "datagrams ping-pong forever");
            match out {
                Out::Tun(p) => {
                    if sender_is_a {
                        self.a.tun.push(p)
                    } else {
                        self.b.tun.push(p)
                    }
                }
                Out::Network(to, d) => {
                    let from = if sender_is_a {
                        self.a.addr
                    } else {
                        self.b.addr
                    };
                    let (receiver, receiver_is_a) = if to == self.a.addr {
                        (&mut self.a, true)
                    } else if to == self.b.addr {
                        (&mut self.b, false)
                    } else {
                        continue; // sent to nowhere
                    };
                    for o in receiver.router.inbound(from, &d) {
                        queue.insert(0, (receiver_is_a, o));
                    }
                }
            }
        }
    }

    fn a_to_b(&mut self, payload: &[u8]) {
        let p = ipv4_udp_packet(a_ip(), b_ip(), 1000, 2000, payload);
        let outs = self.a.router.outbound(&p);
        self.deliver(true, outs);
    }

    fn b_to_a(&mut self, payload: &[u8]) {
        let p = ipv4_udp_packet(b_ip(), a_ip(), 2000, 1000, payload);
        let outs = self.b.router.outbound(&p);
        self.deliver(false, outs);
    }

    fn tick(&mut self) {
        let outs = self.a.router.tick();
        self.deliver(true, outs);
        let outs = self.b.router.tick();
        self.deliver(false, outs);
    }

    fn established(psk: Option<[u8; 32]>) -> Pair {
        let mut pair = Pair::new(psk, psk);
        pair.a_to_b(b"hello");
        pair.b_to_a(b"hello back");
        assert_eq!(payloads(&pair.b.tun), vec![b"hello".to_vec()]);
        assert_eq!(payloads(&pair.a.tun), vec![b"hello back".to_vec()]);
        pair.a.tun.clear();
        pair.b.tun.clear();
        pair
    }
}

fn payloads(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    packets
        .iter()
        .map(|p| udp_payload(p).unwrap().to_vec())
        .collect()
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SystemRandom::new().fill(&mut v).unwrap();
    v
}

#[test]
fn handshake_then_data_both_ways() {
    let mut pair = Pair::new(None, None);
    // The first packet waits in boringtun's queue during the handshake and is then sent.
    pair.a_to_b(b"first");
    assert_eq!(payloads(&pair.b.tun), vec![b"first".to_vec()]);
    for i in 0..50u32 {
        pair.a_to_b(&i.to_be_bytes());
        pair.b_to_a(&(i + 1000).to_be_bytes());
    }
    assert_eq!(pair.b.tun.len(), 51);
    assert_eq!(pair.a.tun.len(), 50);
    assert_eq!(
        udp_payload(&pair.a.tun[49]).unwrap(),
        &1049u32.to_be_bytes()
    );
    pair.tick();
    let a = &pair.a.router.stats()[0];
    assert_eq!(a.public_key, pair.b.public);
    assert_eq!(a.handshakes, 1);
    assert!(a.last_handshake.is_some());
    assert!(a.tx_bytes > 0 && a.rx_bytes > 0);
    let b = &pair.b.router.stats()[0];
    assert_eq!(b.handshakes, 1);
    assert_eq!(b.endpoint, Some(pair.a.addr));
    assert_eq!(pair.a.router.counters(), Counters::default());
    assert_eq!(pair.b.router.counters(), Counters::default());
}

#[test]
fn with_psk_both_ways() {
    let psk = Some([7u8; 32]);
    let mut pair = Pair::established(psk);
    pair.b_to_a(b"x");
    assert_eq!(payloads(&pair.a.tun), vec![b"x".to_vec()]);
}

#[test]
fn unknown_initiator_is_ignored() {
    let mut pair = Pair::new(None, None);
    // B knows a different key in A's place.
    let (_, stranger) = keypair().unwrap();
    pair.b
        .router
        .set_peers(vec![PeerConfig {
            public_key: stranger,
            endpoint: Some(pair.a.addr),
            allowed: vec![(Ipv4Addr::new(10, 42, 1, 0), 24)],
        }])
        .unwrap();
    for _ in 0..3 {
        pair.a_to_b(b"let me in");
    }
    assert!(pair.b.tun.is_empty());
    assert!(pair.b.router.counters().unknown_peer >= 1);
    assert_eq!(pair.b.router.stats()[0].handshakes, 0);
    assert_eq!(pair.a.router.stats()[0].last_handshake, None);
}

#[test]
fn wrong_responder_key_fails_mac1() {
    let mut pair = Pair::new(None, None);
    // A believes B has another key: its initiation's MAC1 does not verify at B.
    let (_, wrong) = keypair().unwrap();
    pair.a
        .router
        .set_peers(vec![PeerConfig {
            public_key: wrong,
            endpoint: Some(pair.b.addr),
            allowed: vec![(Ipv4Addr::new(10, 42, 2, 0), 24)],
        }])
        .unwrap();
    pair.a_to_b(b"hello?");
    assert!(pair.b.tun.is_empty());
    assert_eq!(pair.b.router.counters().rejected, 1);
}

#[test]
fn psk_mismatch_does_not_establish() {
    let mut pair = Pair::new(Some([1u8; 32]), Some([2u8; 32]));
    for _ in 0..3 {
        pair.a_to_b(b"a");
        pair.b_to_a(b"b");
        pair.tick();
    }
    assert!(pair.a.tun.is_empty());
    assert!(pair.b.tun.is_empty());
    assert!(pair.a.router.counters().rejected >= 1);
    assert!(pair.b.router.counters().rejected >= 1);
    // (Each side holds a responder session for the other's initiation, never confirmed: the
    // initiator cannot verify the response, so no data ever flows.)
}

#[test]
fn removing_a_peer_stops_its_traffic_at_once() {
    let mut pair = Pair::established(None);
    // Keep a valid data datagram from A for a replay after the removal.
    let p = ipv4_udp_packet(a_ip(), b_ip(), 1, 2, b"captured");
    let captured = pair.a.router.outbound(&p);
    pair.b.router.set_peers(vec![]).unwrap();
    pair.a_to_b(b"after removal");
    pair.deliver(true, captured);
    assert!(pair.b.tun.is_empty());
    assert!(pair.b.router.counters().unknown_peer >= 2);
    assert!(pair.b.router.stats().is_empty());
    // And B no longer routes to A.
    let back = ipv4_udp_packet(b_ip(), a_ip(), 1, 2, b"x");
    assert!(pair.b.router.outbound(&back).is_empty());
    assert_eq!(pair.b.router.counters().no_route, 1);
    // A's new handshake attempts are ignored too.
    pair.tick();
    assert!(pair.b.tun.is_empty());
}

#[test]
fn updating_a_peer_keeps_its_session() {
    let mut pair = Pair::established(None);
    let a_conf = PeerConfig {
        public_key: pair.a.public,
        endpoint: Some(pair.a.addr),
        allowed: vec![
            (Ipv4Addr::new(10, 42, 1, 0), 24),
            (Ipv4Addr::new(10, 43, 0, 0), 16),
        ],
    };
    pair.b.router.set_peers(vec![a_conf]).unwrap();
    pair.b_to_a(b"same session");
    let p = ipv4_udp_packet(Ipv4Addr::new(10, 43, 5, 5), b_ip(), 1, 2, b"new range");
    let outs = pair.a.router.outbound(&p);
    pair.deliver(true, outs);
    assert_eq!(payloads(&pair.a.tun), vec![b"same session".to_vec()]);
    assert_eq!(payloads(&pair.b.tun), vec![b"new range".to_vec()]);
    assert_eq!(pair.b.router.stats()[0].handshakes, 1);
}

#[test]
fn garbage_flood_changes_nothing() {
    let mut pair = Pair::established(None);
    let before_a = pair.a.router.stats()[0].clone();
    let from = pair.a.addr;
    let attacker: SocketAddr = "203.0.113.9:4444".parse().unwrap();

    // Material to mangle: a real handshake initiation, a real data packet.
    let (private, _) = keypair().unwrap();
    let mut other = Router::new(private, None);
    other
        .set_peers(vec![config(&pair.b, Ipv4Addr::new(10, 42, 2, 0))])
        .unwrap();
    let init = match other
        .outbound(&ipv4_udp_packet(a_ip(), b_ip(), 1, 2, b"x"))
        .pop()
    {
        Some(Out::Network(_, d)) => d,
        other => panic!("{other:?}"),
    };
    let data = match pair
        .a
        .router
        .outbound(&ipv4_udp_packet(a_ip(), b_ip(), 1, 2, b"real"))
        .pop()
    {
        Some(Out::Network(_, d)) => d,
        other => panic!("{other:?}"),
    };
    // The real one is delivered once.
    pair.deliver(true, vec![Out::Network(pair.b.addr, data.clone())]);
    assert_eq!(payloads(&pair.b.tun), vec![b"real".to_vec()]);
    pair.b.tun.clear();

    let mut flood: Vec<Vec<u8>> = Vec::new();
    for len in [
        0, 1, 3, 4, 5, 31, 32, 33, 64, 92, 148, 149, 1500, 65535, 70000,
    ] {
        flood.push(random(len));
    }
    for ty in 1u8..=4 {
        for len in [4, 32, 64, 92, 148, 200] {
            let mut d = random(len);
            if len >= 4 {
                d[..4].copy_from_slice(&[ty, 0, 0, 0]);
            }
            flood.push(d);
        }
    }
    for cut in [1, 4, 16, 31, 32, 60, data.len() - 1] {
        flood.push(data[..cut].to_vec());
    }
    for cut in [1, 4, 40, 116, 147] {
        flood.push(init[..cut].to_vec());
    }
    // Data with a live receiver index but a forged body, and bit flips of the real one.
    for i in 16..data.len() {
        let mut d = data.clone();
        d[i] ^= 0x55;
        flood.push(d);
    }
    let mut forged = data.clone();
    forged[16..].copy_from_slice(&random(data.len() - 16));
    flood.push(forged);
    // Replays.
    for _ in 0..5 {
        flood.push(data.clone());
    }
    // A handshake initiation with a flipped bit in its encrypted static key.
    let mut bad_init = init.clone();
    bad_init[50] ^= 1;
    flood.push(bad_init);
    // Probes are not WireGuard.
    flood.push(b"CRLPROBE0123456789abcdef".to_vec());

    for _ in 0..20 {
        for d in &flood {
            for src in [from, attacker] {
                let outs = pair.b.router.inbound(src, d);
                assert!(
                    outs.iter().all(|o| !matches!(o, Out::Tun(_))),
                    "garbage reached the TUN"
                );
                // Nothing authenticated the attacker.
                assert!(outs.iter().all(
                    |o| matches!(o, Out::Network(to, d) if *to == src && d.first() == Some(&3))
                ));
            }
        }
    }
    let c = pair.b.router.counters();
    assert!(c.garbage > 0 && c.rejected > 0 && c.probes > 0, "{c:?}");
    assert_eq!(pair.b.router.stats()[0].endpoint, Some(pair.a.addr));
    assert_eq!(pair.b.router.stats()[0].handshakes, 1);

    // The session is undisturbed, both ways.
    pair.a_to_b(b"still here");
    pair.b_to_a(b"me too");
    assert_eq!(payloads(&pair.b.tun), vec![b"still here".to_vec()]);
    assert_eq!(payloads(&pair.a.tun), vec![b"me too".to_vec()]);
    assert_eq!(pair.a.router.stats()[0].handshakes, before_a.handshakes);
}

#[test]
fn inner_source_spoofing_is_dropped() {
    let mut pair = Pair::established(None);
    let spoofed = ipv4_udp_packet(Ipv4Addr::new(10, 42, 9, 9), b_ip(), 1, 2, b"spoof");
    let outs = pair.a.router.outbound(&spoofed);
    pair.deliver(true, outs);
    // B's own range as the source is no better.
    let spoofed = ipv4_udp_packet(Ipv4Addr::new(10, 42, 2, 7), b_ip(), 1, 2, b"spoof");
    let outs = pair.a.router.outbound(&spoofed);
    pair.deliver(true, outs);
    assert!(pair.b.tun.is_empty());
    assert_eq!(pair.b.router.counters().spoofed, 2);
    pair.a_to_b(b"honest");
    assert_eq!(payloads(&pair.b.tun), vec![b"honest".to_vec()]);
}

#[test]
fn psk_rotation_on_both_sides_keeps_traffic_flowing() {
    let old = Some([1u8; 32]);
    let new = Some([2u8; 32]);
    let mut pair = Pair::established(old);

    // Both sides rotate at about the same time.
    let outs_a = pair.a.router.set_psk(new);
    let outs_b = pair.b.router.set_psk(new);
    assert_eq!(outs_a.len(), 1);
    pair.deliver(true, outs_a);
    pair.deliver(false, outs_b);
    pair.a_to_b(b"after rotation");
    pair.b_to_a(b"after rotation too");
    assert_eq!(payloads(&pair.b.tun), vec![b"after rotation".to_vec()]);
    assert_eq!(payloads(&pair.a.tun), vec![b"after rotation too".to_vec()]);
    // Setting the same key again changes nothing.
    assert!(pair.a.router.set_psk(new).is_empty());
}

#[test]
fn psk_rotation_with_one_side_late_recovers() {
    let old = Some([1u8; 32]);
    let new = Some([2u8; 32]);
    let mut pair = Pair::established(old);

    // A rotates first; its handshake reaches B, which still has the old key.
    let outs = pair.a.router.set_psk(new);
    pair.deliver(true, outs);
    pair.a_to_b(b"lost in the window");
    assert!(pair.b.tun.is_empty());
    // B rotates a moment later and initiates: the pair is back.
    let outs = pair.b.router.set_psk(new);
    pair.deliver(false, outs);
    pair.a_to_b(b"back");
    pair.b_to_a(b"back too");
    // A's packet queued during the window may arrive too: it was never lost, only delayed.
    let b_got = payloads(&pair.b.tun);
    assert!(b_got.contains(&b"back".to_vec()), "{b_got:?}");
    assert_eq!(payloads(&pair.a.tun), vec![b"back too".to_vec()]);
}

#[test]
fn roaming_follows_authenticated_traffic_only() {
    let mut pair = Pair::established(None);
    let moved: SocketAddr = "198.51.100.77:40000".parse().unwrap();
    let p = ipv4_udp_packet(a_ip(), b_ip(), 1, 2, b"from elsewhere");
    let data = match pair.a.router.outbound(&p).pop() {
        Some(Out::Network(_, d)) => d,
        other => panic!("{other:?}"),
    };
    // Garbage from a new address does not move the endpoint.
    pair.b.router.inbound(moved, &random(100));
    assert_eq!(pair.b.router.stats()[0].endpoint, Some(pair.a.addr));
    // Authenticated data does.
    let outs = pair.b.router.inbound(moved, &data);
    assert_eq!(outs.len(), 1);
    assert_eq!(pair.b.router.stats()[0].endpoint, Some(moved));
    let back = ipv4_udp_packet(b_ip(), a_ip(), 2, 1, b"reply");
    match pair.b.router.outbound(&back).pop() {
        Some(Out::Network(to, _)) => assert_eq!(to, moved),
        other => panic!("{other:?}"),
    }
    // Re-sending the same configuration keeps the learnt endpoint; changing it replaces it.
    let a_conf = config(&pair.a, Ipv4Addr::new(10, 42, 1, 0));
    pair.b.router.set_peers(vec![a_conf.clone()]).unwrap();
    assert_eq!(pair.b.router.stats()[0].endpoint, Some(moved));
    let elsewhere: SocketAddr = "198.51.100.3:51820".parse().unwrap();
    pair.b
        .router
        .set_peers(vec![PeerConfig {
            endpoint: Some(elsewhere),
            ..a_conf
        }])
        .unwrap();
    assert_eq!(pair.b.router.stats()[0].endpoint, Some(elsewhere));
}

#[test]
fn longest_prefix_wins_and_unrouted_is_counted() {
    let (private, _) = keypair().unwrap();
    let mut r = Router::new(private, None);
    let (_, wide) = keypair().unwrap();
    let (_, narrow) = keypair().unwrap();
    let wide_ep: SocketAddr = "198.51.100.10:51820".parse().unwrap();
    let narrow_ep: SocketAddr = "198.51.100.11:51820".parse().unwrap();
    r.set_peers(vec![
        PeerConfig {
            public_key: wide,
            endpoint: Some(wide_ep),
            allowed: vec![(Ipv4Addr::new(10, 42, 0, 0), 16)],
        },
        PeerConfig {
            public_key: narrow,
            endpoint: Some(narrow_ep),
            allowed: vec![(Ipv4Addr::new(10, 42, 2, 9), 24)],
        },
    ])
    .unwrap();
    let to = |dst: Ipv4Addr, r: &mut Router| match r
        .outbound(&ipv4_udp_packet(a_ip(), dst, 1, 2, b"x"))
        .pop()
    {
        Some(Out::Network(ep, _)) => Some(ep),
        _ => None,
    };
    assert_eq!(to(Ipv4Addr::new(10, 42, 2, 5), &mut r), Some(narrow_ep));
    assert_eq!(to(Ipv4Addr::new(10, 42, 3, 5), &mut r), Some(wide_ep));
    assert_eq!(to(Ipv4Addr::new(10, 43, 0, 1), &mut r), None);
    assert_eq!(r.counters().no_route, 1);
    assert!(r.outbound(&[0x60; 60]).is_empty());
    assert!(r.outbound(&[]).is_empty());
    assert_eq!(r.counters().not_ipv4, 2);
}

#[test]
fn bad_peer_sets_are_refused_whole() {
    let (private, public) = keypair().unwrap();
    let mut r = Router::new(private, None);
    let (_, k1) = keypair().unwrap();
    let (_, k2) = keypair().unwrap();
    let peer = |key, net: [u8; 4], len| PeerConfig {
        public_key: key,
        endpoint: None,
        allowed: vec![(Ipv4Addr::from(net), len)],
    };
    assert!(matches!(
        r.set_peers(vec![peer(public, [10, 0, 0, 0], 8)]),
        Err(OverlayError::OwnKey)
    ));
    assert!(matches!(
        r.set_peers(vec![
            peer(k1, [10, 0, 0, 0], 8),
            peer(k1, [10, 1, 0, 0], 16)
        ]),
        Err(OverlayError::DuplicatePeer(_))
    ));
    assert!(matches!(
        r.set_peers(vec![peer(k1, [10, 0, 0, 0], 33)]),
        Err(OverlayError::PrefixLength(33))
    ));
    assert!(matches!(
        r.set_peers(vec![
            peer(k1, [10, 1, 0, 0], 16),
            peer(k2, [10, 1, 9, 9], 16)
        ]),
        Err(OverlayError::OverlappingRange(_))
    ));
    assert!(r.stats().is_empty());
}

#[test]
fn no_endpoint_yet_is_counted_then_learnt() {
    let mut pair = Pair::new(None, None);
    // B does not know where A is; A knows B.
    let mut a_conf = config(&pair.a, Ipv4Addr::new(10, 42, 1, 0));
    a_conf.endpoint = None;
    pair.b.router.set_peers(vec![]).unwrap();
    pair.b.router.set_peers(vec![a_conf]).unwrap();
    pair.b_to_a(b"nowhere to go");
    assert_eq!(pair.b.router.counters().no_endpoint, 1);
    pair.a_to_b(b"here I am");
    pair.b_to_a(b"found you");
    assert!(payloads(&pair.a.tun).contains(&b"found you".to_vec()));
}

#[test]
fn seal_and_open_work_in_the_callers_buffers_and_refuse_short_ones() {
    let mut pair = Pair::established(None);
    let packet = ipv4_udp_packet(a_ip(), b_ip(), 1000, 2000, &random(1392));
    assert_eq!(packet.len(), 1420);

    // Too short for the sealed datagram: dropped and counted, never a panic.
    let mut short = vec![0u8; sealed_len(packet.len()) - 1];
    assert_eq!(pair.a.router.seal(&packet, &mut short), None);
    assert_eq!(pair.a.router.counters().too_long, 1);

    // Exactly long enough: a data message of the packet's length plus 32, to B.
    let mut sealed = vec![0u8; sealed_len(packet.len())];
    let d = pair.a.router.seal(&packet, &mut sealed).unwrap();
    assert_eq!(
        d,
        Datagram {
            to: pair.b.addr,
            len: packet.len() + DATA_OVERHEAD
        }
    );

    // B opens it in a buffer that has the packet at an offset of its own choosing.
    let mut replies = Vec::new();
    let mut short = vec![0u8; opened_len(d.len) - 1];
    let before = pair.b.router.counters().garbage;
    assert_eq!(
        pair.b
            .router
            .open(pair.a.addr, &sealed[..d.len], &mut short, &mut replies),
        None
    );
    assert_eq!(pair.b.router.counters().garbage, before + 1);
    let mut opened = vec![0u8; opened_len(d.len)];
    let range = pair
        .b
        .router
        .open(pair.a.addr, &sealed[..d.len], &mut opened, &mut replies)
        .unwrap();
    assert_eq!(&opened[range], &packet[..]);
    assert!(replies.is_empty());

    // The same datagram again is a replay.
    let rejected = pair.b.router.counters().rejected;
    assert_eq!(
        pair.b
            .router
            .open(pair.a.addr, &sealed[..d.len], &mut opened, &mut replies),
        None
    );
    assert_eq!(pair.b.router.counters().rejected, rejected + 1);

    // Handshake-sized buffers are the floor, for any datagram.
    assert_eq!(sealed_len(0), 148);
    assert_eq!(opened_len(32), 148);
}
