//! A host's overlay subnet holds a fixed number of container addresses (253 in a /24, 13 in a
//! /28, 509 in a /23); the scheduler counts them like ports. On labs of real hosts (each its own
//! namespace, dockerd and agent): replicas that one host's subnet cannot hold go to the other
//! host; `up` refuses (changing nothing) replicas no subnet can hold, naming each host's count;
//! replicas left without a place when a host is lost are explained by `ps` and `up --wait`; and
//! a larger subnet runs more than 253 containers on one host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use corral_testkit::{DockerFirewall, Lab, LabConfig};
use serde_json::Value;

const LOOP: &str = r#"["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]"#;

fn lab(hosts: usize, host_subnet: &str, server_args: &[&str]) -> Lab {
    Lab::up(LabConfig {
        bin: Path::new(corral_bin()),
        hosts,
        server_args,
        docker_firewall: DockerFirewall::Off,
        overlay: &["--host-subnet", host_subnet],
    })
}

/// A stack of one service of `replicas` sleeping replicas, pinned to `host` if given.
fn stack(name: &str, replicas: u32, host: Option<&str>) -> String {
    let placement = host
        .map(|h| format!(", placement: {{ constraints: [\"node.hostname == {h}\"] }}"))
        .unwrap_or_default();
    format!(
        "name: {name}\nservices:\n  web:\n    image: corral-test/busybox:latest\n    command: {LOOP}\n    deploy: {{ replicas: {replicas}{placement} }}\n"
    )
}

/// `corral up -f FILE --wait --timeout T` of `text`.
fn up(lab: &Lab, name: &str, text: &str, timeout: &str) -> std::process::Output {
    let file = lab.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, text).unwrap();
    lab.cli(&[
        "up",
        "-f",
        file.to_str().unwrap(),
        "--wait",
        "--timeout",
        timeout,
    ])
}

fn up_ok(lab: &Lab, name: &str, text: &str, timeout: &str) {
    let out = up(lab, name, text, timeout);
    assert!(
        out.status.success(),
        "up {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Host of each replica of the stack's `web`.
fn hosts_of(lab: &Lab, stack: &str) -> Vec<String> {
    let view = &lab.server.cli_json(&["ps", "-p", stack])[0];
    view["services"][0]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["host"].as_str().unwrap().to_owned())
        .collect()
}

/// (used, total) overlay addresses of each host, as `host ls -o json` says.
fn addresses(lab: &Lab, host: &str) -> (u64, u64) {
    let hosts = lab.server.cli_json(&["host", "ls"]);
    let h = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == host)
        .unwrap();
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("{h}"));
    (
        n(&h["overlay_addresses_used"]),
        n(&h["overlay_addresses_total"]),
    )
}

/// Containers attached to the stack's overlay network on one host's own engine.
fn on_overlay(lab: &Lab, host: &str) -> Vec<String> {
    let nets = lab
        .dockerd(host)
        .docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
    let overlay = nets
        .lines()
        .find(|n| n.starts_with("corral"))
        .unwrap_or_else(|| panic!("{host} has no overlay network: {nets}"))
        .to_owned();
    lab.dockerd(host)
        .docker_ok(&[
            "network",
            "inspect",
            &overlay,
            "--format",
            "{{range .Containers}}{{.IPv4Address}} {{end}}",
        ])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn replicas_one_hosts_subnet_cannot_hold_go_to_the_other_host() {
    // /28 subnets: 13 container addresses a host.
    let mut lab = lab(
        2,
        "/28",
        &[
            "--heartbeat-interval",
            "1s",
            "--dead-after",
            "3s",
            "--reschedule-after",
            "3s",
        ],
    );
    // Another stack holds 12 of h1's 13 addresses.
    up_ok(&lab, "fill", &stack("fill", 12, Some("h1")), "120s");
    assert_eq!(addresses(&lab, "h1"), (12, 13));

    // Spread alone would put 3 of 6 on h1; one fits there, the other five go to h2.
    up_ok(&lab, "spill", &stack("spill", 6, None), "120s");
    let hosts = hosts_of(&lab, "spill");
    assert_eq!(hosts.iter().filter(|h| *h == "h1").count(), 1, "{hosts:?}");
    assert_eq!(hosts.iter().filter(|h| *h == "h2").count(), 5, "{hosts:?}");
    assert_eq!(addresses(&lab, "h1"), (13, 13));
    assert_eq!(addresses(&lab, "h2"), (5, 13));
    assert_eq!(on_overlay(&lab, "h1").len(), 13);
    let table = lab.server.cli_ok(&["host", "ls"]);
    assert!(table.contains("13/13") && table.contains("5/13"), "{table}");

    // Beyond both subnets: refused before anything changes, saying why.
    let out = up(&lab, "spill", &stack("spill", 20, None), "20s");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(
        err.contains("h1: no free overlay address (13 of 13 in use)")
            && err.contains("h2: no free overlay address (13 of 13 in use)"),
        "{err}"
    );
    assert_eq!(hosts_of(&lab, "spill").len(), 6);

    // h2 is lost: its five replicas have nowhere to go (h1's subnet is full), and `ps` and
    // `up --wait` say so.
    lab.stop_agent("h2");
    wait_until(
        std::time::Duration::from_secs(40),
        "h2's replicas to be unplaced",
        || {
            let ps = lab.server.cli_ok(&["ps", "-p", "spill"]);
            ps.contains("5 unplaced")
                && ps.contains("h1: no free overlay address (13 of 13 in use)")
        },
    );
    // Deploying it again (unchanged) is refused for the same reason, changing nothing.
    let out = up(&lab, "spill", &stack("spill", 6, None), "5s");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("5 replicas of 1 service cannot be placed")
            && err.contains("h1: no free overlay address (13 of 13 in use)"),
        "{err}"
    );
    // h2 returns: its stale copies go, the five are placed there again.
    lab.start_agent("h2");
    wait_until(
        std::time::Duration::from_secs(60),
        "the stack to converge again",
        || lab.server.cli_json(&["ps", "-p", "spill"])[0]["converged"] == true,
    );
    assert_eq!(addresses(&lab, "h2"), (5, 13));
}

#[test]
fn on_a_single_host_up_says_which_replicas_cannot_get_an_address() {
    let lab = lab(1, "/28", &[]);
    for wait in [true, false] {
        let file = lab.dir().join("big.yaml");
        std::fs::write(&file, stack("big", 16, None)).unwrap();
        let mut args = vec!["up", "-f", file.to_str().unwrap()];
        if wait {
            args.extend(["--wait", "--timeout", "30s"]);
        }
        let out = lab.cli(&args);
        assert!(!out.status.success(), "16 replicas do not fit in a /28");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                "3 replicas of 1 service cannot be placed:\n  web.14, web.15, web.16: no host fits — h1: no free overlay address (13 of 13 in use)"
            ),
            "{err}"
        );
    }
    let stacks = lab.server.cli_ok(&["stack", "ls"]);
    assert!(!stacks.contains("big"), "{stacks}");
    up_ok(&lab, "big", &stack("big", 13, None), "120s");
    assert_eq!(addresses(&lab, "h1"), (13, 13));
    assert_eq!(on_overlay(&lab, "h1").len(), 13);
    // Containers off the overlay take no address.
    let host_net = "name: hostnet\nservices:\n  probe:\n    image: corral-test/busybox:latest\n    command: [\"sleep\", \"3600\"]\n    network_mode: none\n";
    up_ok(&lab, "hostnet", host_net, "60s");
    assert_eq!(addresses(&lab, "h1"), (13, 13));
    let out = up(&lab, "one", &stack("one", 1, None), "10s");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("h1: no free overlay address (13 of 13 in use)"),
        "{err}"
    );
}

#[test]
fn a_larger_subnet_runs_more_than_253_containers_on_one_host() {
    // A /23: 509 container addresses.
    let lab = lab(1, "/23", &[]);
    let lease = lab.server.cli_json(&["host", "inspect", "h1"])["overlay_subnet"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(lease.ends_with("/23"), "{lease}");
    up_ok(&lab, "many", &stack("many", 260, None), "600s");
    assert_eq!(addresses(&lab, "h1"), (260, 509));
    let ips = on_overlay(&lab, "h1");
    assert_eq!(ips.len(), 260);
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 260, "an address given twice");
    // Every address in the lease, and some beyond its first 256.
    let (base, _) = corral_control::overlay::parse_cidr(&lease).unwrap();
    let offsets: Vec<u32> = ips
        .iter()
        .map(|ip| {
            let (addr, len) = ip.split_once('/').unwrap();
            assert_eq!(len, "23", "{ip}");
            u32::from(addr.parse::<std::net::Ipv4Addr>().unwrap()) - u32::from(base)
        })
        .collect();
    assert!(offsets.iter().all(|&o| o < 512), "{ips:?}");
    assert!(offsets.iter().any(|&o| o > 255), "{ips:?}");
}
