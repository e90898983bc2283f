//! The rendered nftables rules decide real packets as `evaluate` decides connections, for
//! random documents: a router namespace of the test's own enforces a compiled rule set between
//! a "sources" namespace and a "destinations" namespace, and TCP connections and UDP
//! exchanges from every kind of source (a replica of each service, addresses outside the
//! overlay) to every kind of destination (a replica of each service, outside addresses, an
//! overlay address no replica has) either get through or are dropped exactly as the document
//! says.
//!
//! Each service has one replica on each side (10.42.1.X on the sources' side, 10.42.2.X on
//! the destinations'), so every ordered pair of services, a service with itself included, is
//! a pair of real addresses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use corral_policy::{Action, Class, Document, Endpoint, Proto, Traffic, compile, evaluate, nft};
use corral_testkit::{Netns, require};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const TCP_PORTS: [u16; 3] = [80, 443, 5432];
const UDP_PORTS: [u16; 2] = [53, 85];
const SRC_OUTSIDE: [Ipv4Addr; 2] = [
    Ipv4Addr::new(203, 0, 113, 7),
    Ipv4Addr::new(198, 51, 100, 9),
];
const DST_OUTSIDE: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(8, 8, 8, 8)];
const UNKNOWN: Ipv4Addr = Ipv4Addr::new(10, 42, 3, 250);

fn src_of(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, 1, 10 + i as u8)
}

fn dst_of(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, 2, 10 + i as u8)
}

struct Lab {
    router: Netns,
    sources: Netns,
    _destinations: Netns,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn lab() -> Lab {
    let router = Netns::new("pr");
    let sources = Netns::new("ps");
    let destinations = Netns::new("pd");
    let tag = std::process::id() % 100_000;
    let (rs, rd) = (format!("prs{tag}"), format!("prd{tag}"));
    corral_testkit::netns::run_ok(
        "ip",
        &[
            "link",
            "add",
            &rs,
            "netns",
            router.name(),
            "type",
            "veth",
            "peer",
            "name",
            "s0",
            "netns",
            sources.name(),
        ],
    );
    corral_testkit::netns::run_ok(
        "ip",
        &[
            "link",
            "add",
            &rd,
            "netns",
            router.name(),
            "type",
            "veth",
            "peer",
            "name",
            "d0",
            "netns",
            destinations.name(),
        ],
    );
    router.run_ok(&["ip", "addr", "add", "192.168.100.1/24", "dev", &rs]);
    router.run_ok(&["ip", "addr", "add", "192.168.101.1/24", "dev", &rd]);
    router.run_ok(&["ip", "link", "set", &rs, "up"]);
    router.run_ok(&["ip", "link", "set", &rd, "up"]);
    router.run_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    for net in ["10.42.1.0/24", "203.0.113.0/24", "198.51.100.0/24"] {
        router.run_ok(&["ip", "route", "add", net, "dev", &rs]);
    }
    for net in ["10.42.2.0/24", "10.42.3.0/24", "10.1.2.3/32", "8.8.8.8/32"] {
        router.run_ok(&["ip", "route", "add", net, "dev", &rd]);
    }
    let mut src_addrs: Vec<Ipv4Addr> = (0..9).map(src_of).collect();
    src_addrs.extend(SRC_OUTSIDE);
    let mut dst_addrs: Vec<Ipv4Addr> = (0..9).map(dst_of).collect();
    dst_addrs.extend(DST_OUTSIDE);
    dst_addrs.push(UNKNOWN);
    for (ns, dev, own, gw, addrs) in [
        (
            &sources,
            "s0",
            "192.168.100.2/24",
            "192.168.100.1",
            &src_addrs,
        ),
        (
            &destinations,
            "d0",
            "192.168.101.2/24",
            "192.168.101.1",
            &dst_addrs,
        ),
    ] {
        ns.run_ok(&["ip", "addr", "add", own, "dev", dev]);
        for a in addrs.iter() {
            ns.run_ok(&["ip", "addr", "add", &format!("{a}/32"), "dev", dev]);
        }
        ns.run_ok(&["ip", "link", "set", dev, "up"]);
        ns.run_ok(&["ip", "route", "add", "default", "via", gw]);
    }
    // Listeners on every address of the destinations' side.
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for port in TCP_PORTS {
        let l = destinations
            .enter(|| TcpListener::bind(("0.0.0.0", port)))
            .unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => drop(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }
    // UDP sockets are bound to each address: an answer from a socket bound to 0.0.0.0 would
    // leave from the interface's primary address, a flow of its own.
    for (addr, port) in dst_addrs
        .iter()
        .flat_map(|a| UDP_PORTS.iter().map(move |p| (*a, *p)))
    {
        let u = destinations
            .enter(|| UdpSocket::bind((addr, port)))
            .unwrap();
        u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&buf[..n], from);
                }
            }
        }));
    }
    Lab {
        router,
        sources,
        _destinations: destinations,
        stop,
        threads,
    }
}

fn load(ns: &Netns, script: &str) {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether a new connection from `src` to `dst` gets through the router.
fn through(lab: &Lab, src: Ipv4Addr, dst: Ipv4Addr, traffic: Traffic) -> bool {
    let timeout = Duration::from_millis(400);
    lab.sources.enter(|| match traffic {
        Traffic::Port(Proto::Tcp, port) => {
            match connect_from(src, SocketAddr::from((dst, port)), timeout) {
                Ok(()) => true,
                Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => false,
                Err(e) => panic!("TCP {src} → {dst}:{port}: {e}"),
            }
        }
        Traffic::Port(Proto::Udp, port) => {
            let u = UdpSocket::bind((src, 0)).unwrap();
            u.set_read_timeout(Some(timeout)).unwrap();
            u.send_to(b"probe", (dst, port)).unwrap();
            let mut buf = [0u8; 16];
            u.recv_from(&mut buf).is_ok()
        }
        Traffic::Other => unreachable!("ICMP is not probed here"),
    })
}

/// A TCP connection from a chosen source address (std cannot bind before connecting).
fn connect_from(src: Ipv4Addr, to: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((src, 0)).into())?;
    socket.connect_timeout(&to.into(), timeout)
}

#[test]
fn real_packets_are_decided_as_the_document_says() {
    require::netns();
    require::tool("nft", "nftables");
    let lab = lab();
    let all = workloads();
    let classes: Vec<Class> = all
        .iter()
        .enumerate()
        .map(|(i, w)| Class {
            workload: w.clone(),
            addresses: vec![src_of(i), dst_of(i)],
        })
        .collect();
    let range = "10.42.0.0/16".parse().unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 25,
        failure_persistence: None,
        ..Config::default()
    });
    let probes = (
        0usize..(9 + SRC_OUTSIDE.len()),
        0usize..(9 + DST_OUTSIDE.len() + 1),
        prop::sample::select(vec![
            Traffic::Port(Proto::Tcp, 80),
            Traffic::Port(Proto::Tcp, 443),
            Traffic::Port(Proto::Tcp, 5432),
            Traffic::Port(Proto::Udp, 53),
            Traffic::Port(Proto::Udp, 85),
        ]),
    );
    let generation = std::sync::atomic::AtomicU64::new(0);
    runner
        .run(
            &(document(), prop::collection::vec(probes, 24)),
            |(doc, picks): (Document, Vec<(usize, usize, Traffic)>)| {
                load(
                    &lab.router,
                    &nft::render(&compile(
                        &doc,
                        &classes,
                        range,
                        generation.fetch_add(1, Ordering::Relaxed) + 1,
                    )),
                );
                let verdicts: Vec<(String, bool, bool)> = std::thread::scope(|s| {
                    let handles: Vec<_> = picks
                        .iter()
                        .map(|&(si, di, t)| {
                            let lab = &lab;
                            let all = &all;
                            let doc = &doc;
                            s.spawn(move || {
                                let (src, from) = if si < 9 {
                                    (src_of(si), Some(Endpoint::Replica(&all[si])))
                                } else {
                                    let a = SRC_OUTSIDE[si - 9];
                                    (a, Some(Endpoint::Outside(a)))
                                };
                                let (dst, to) = if di < 9 {
                                    (dst_of(di), Some(Endpoint::Replica(&all[di])))
                                } else if di < 9 + DST_OUTSIDE.len() {
                                    let a = DST_OUTSIDE[di - 9];
                                    (a, Some(Endpoint::Outside(a)))
                                } else {
                                    (UNKNOWN, None)
                                };
                                // An overlay address no replica has is dropped.
                                let want = match (from, to) {
                                    (Some(a), Some(b)) => {
                                        evaluate(doc, &a, &b, t).action == Action::Allow
                                    }
                                    _ => false,
                                };
                                let got = through(lab, src, dst, t);
                                (format!("{src} → {dst} {t}"), want, got)
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect()
                });
                for (what, want, got) in verdicts {
                    prop_assert_eq!(
                        want,
                        got,
                        "{}: the document says {}",
                        what,
                        if want { "allow" } else { "deny" }
                    );
                }
                Ok(())
            },
        )
        .unwrap();
}
