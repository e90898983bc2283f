//! What a host pays to bring its rules up to date as the number of replicas grows: compiling
//! the rule set, writing the nft script, and loading it (`nft -f`, one transaction replacing
//! the table) into a network namespace of this run's own. Needs root and nftables.
//!
//!   cargo run --release -p corral-policy --example bench_nft [RUNS]
//!
//! The document: default deny, an allow between zones on one port, `within: stack`, and a
//! deny between two zones — a typical shape, every rule landing in the kernel. Replicas are
//! spread over 20 services in 4 stacks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_policy::{Class, Workload, compile, nft, parse};

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn load(ns: &str, script: &str) -> Duration {
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip netns exec nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

fn classes(replicas: usize) -> Vec<Class> {
    let services = 20;
    (0..services)
        .map(|i| Class {
            workload: Workload {
                stack: format!("stack{}", i % 4),
                service: format!("svc{i}"),
                labels: [("zone".to_string(), ["dmz", "app", "db"][i % 3].to_string())]
                    .into_iter()
                    .collect(),
            },
            addresses: (0..replicas)
                .filter(|r| r % services == i)
                .map(|r| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 42, 0, 10)) + r as u32))
                .collect(),
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let ns = Namespace(format!("cbn-{}", std::process::id()));
    let made = Command::new("ip").args(["netns", "add", &ns.0]).status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "ip netns add (run as root)"
    );
    let doc = parse(
        "default: deny
allow:
  - from: { labels: { zone: dmz } }
    to: { labels: { zone: app } }
    ports: [8080/tcp]
  - from: { labels: { zone: app } }
    to: { labels: { zone: db } }
    ports: [5432/tcp]
  - within: stack
    ports: [9000-9100/udp]
deny:
  - from: { labels: { zone: dmz } }
    to: { labels: { zone: db } }
",
    )
    .unwrap();
    let range = "10.42.0.0/16".parse().unwrap();
    println!(
        "{:>9}  {:>10}  {:>10}  {:>12}  {:>12}",
        "replicas", "compile", "render", "nft -f", "script"
    );
    for replicas in [10, 100, 1_000, 10_000] {
        let classes = classes(replicas);
        let (mut c, mut r, mut l) = (Vec::new(), Vec::new(), Vec::new());
        let mut size = 0;
        for run in 0..runs {
            let t = Instant::now();
            let rules = compile(&doc, &classes, range, run as u64 + 1);
            c.push(t.elapsed());
            let t = Instant::now();
            let script = nft::render(&rules);
            r.push(t.elapsed());
            size = script.len();
            l.push(load(&ns.0, &script));
        }
        println!(
            "{replicas:>9}  {:>8.2}ms  {:>8.2}ms  {:>10.1}ms  {:>9.1} KiB",
            median(c).as_secs_f64() * 1e3,
            median(r).as_secs_f64() * 1e3,
            median(l).as_secs_f64() * 1e3,
            size as f64 / 1024.0
        );
    }
}
