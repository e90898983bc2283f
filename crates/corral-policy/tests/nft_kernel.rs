//! The rendered rule sets load into a real kernel (in a namespace of the test's own), replace
//! each other atomically, and come out again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;

use corral_policy::{Class, Workload, compile, nft, parse};
use corral_testkit::{Netns, require};

fn load(ns: &Netns, script: &str) -> Result<(), String> {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}\n--- script ---\n{script}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn classes(n: usize, per: usize) -> Vec<Class> {
    (0..n)
        .map(|i| Class {
            workload: Workload {
                stack: format!("s{}", i % 3),
                service: format!("svc{i}"),
                labels: [("zone".to_string(), ["dmz", "app", "db"][i % 3].to_string())]
                    .into_iter()
                    .collect(),
            },
            addresses: (0..per)
                .map(|k| {
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 42, 0, 10)) + (i * per + k) as u32)
                })
                .collect(),
        })
        .collect()
}

#[test]
fn rule_sets_load_replace_and_go() {
    require::netns();
    require::tool("nft", "nftables");
    let ns = Netns::new("nft");
    let docs = [
        "",
        "default: deny\n",
        "default: deny\ningress: deny\negress: deny\nallow:\n  - from: { labels: { zone: dmz } }\n    to: { labels: { zone: app } }\n    ports: [8080/tcp, 8000-8100/tcp, 53/udp]\n  - from: { labels: { zone: app } }\n    to: { labels: { zone: db } }\n    ports: [5432/tcp]\n  - within: service\n  - between: { groupBy: zone }\n    ports: [9000-9100/udp]\n  - from: { cidr: 203.0.113.0/24 }\n    to: { labels: { zone: dmz } }\n    ports: [80/tcp, 443/tcp]\n  - to: { cidr: 0.0.0.0/0 }\n    ports: [53/udp, 443/tcp]\ndeny:\n  - name: no-db-from-dmz\n    from: { labels: { zone: dmz } }\n    to: { labels: { zone: db } }\n  - to: { cidr: 10.0.0.0/8 }\n    ports: [22/tcp]\n  - from: { cidr: 0.0.0.0/0 }\n    to: { labels: { zone: db } }\n",
        "allow:\n  - ports: [80/tcp]\n  - ports: [70-90/tcp, 85/tcp]\ndeny:\n  - within: stack\n    ports: [22/tcp]\n",
    ];
    let range = "10.42.0.0/16".parse().unwrap();
    for (g, text) in docs.iter().enumerate() {
        let doc = parse(text).unwrap();
        for (n, per) in [(0, 0), (3, 1), (9, 5)] {
            let rules = compile(&doc, &classes(n, per), range, g as u64 + 1);
            load(&ns, &nft::render(&rules)).unwrap();
            let listed = ns.run_ok(&["nft", "list", "table", "inet", nft::TABLE]);
            assert!(
                listed.contains(&format!("generation {}", g + 1)),
                "{listed}"
            );
        }
    }
    // The fail-closed bridge table loads too, and both go away.
    load(&ns, &nft::render_bridge_cut(range)).unwrap();
    load(&ns, &nft::render_removal()).unwrap();
    load(&ns, &nft::render_bridge_cut_removal()).unwrap();
    let tables = ns.run_ok(&["nft", "list", "tables"]);
    assert!(!tables.contains(nft::TABLE), "{tables}");
    // Removing what is not there is not an error.
    load(&ns, &nft::render_removal()).unwrap();
}

#[test]
fn ten_thousand_replicas_load() {
    require::netns();
    require::tool("nft", "nftables");
    let ns = Netns::new("nft-big");
    let doc = parse("default: deny\nallow:\n  - within: stack\n    ports: [8080/tcp]\n  - between: { groupBy: zone }\ndeny:\n  - from: { labels: { zone: dmz } }\n    to: { labels: { zone: db } }\n").unwrap();
    let rules = compile(&doc, &classes(20, 500), "10.42.0.0/16".parse().unwrap(), 1);
    load(&ns, &nft::render(&rules)).unwrap();
}
