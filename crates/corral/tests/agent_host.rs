//! What an agent leaves open on its host: with `--no-overlay` no socket at all (and `corral
//! doctor` says the overlay is off rather than failing), and a private firewall state dir.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

/// Local addresses of the UDP sockets (IPv4 or IPv6) that process `pid` holds.
fn udp_sockets(pid: u32) -> Vec<String> {
    let mut inodes = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.display().to_string();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.push(inode.to_owned());
            }
        }
    }
    assert!(!inodes.is_empty(), "the agent holds its tunnel's socket");
    let mut bound = Vec::new();
    for table in ["udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // Columns: sl local rem st ... uid timeout inode
            if cols.len() > 9 && inodes.iter().any(|i| i == cols[9]) {
                bound.push(format!("{table} {}", cols[1]));
            }
        }
    }
    bound
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn without_the_overlay_the_agent_binds_nothing_and_doctor_says_so() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    // The harness starts agents with --no-overlay.
    let mut a = start_agent(&server, &t.path().join("a"), "apart", Some(&token), &[]);
    let mut b = start_agent(&server, &t.path().join("b"), "aside", Some(&token), &[]);
    wait_until(Duration::from_secs(20), "both agents active", || {
        server.host_state("apart").as_deref() == Some("active")
            && server.host_state("aside").as_deref() == Some("active")
    });
    assert_eq!(udp_sockets(a.pid()), Vec::<String>::new());
    assert!(listening_tcp_sockets(a.pid()).is_empty());

    let out = server.cli(&["doctor", "--host", "apart", "-o", "json"]);
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = reports[0]["checks"].as_array().unwrap();
    let socket = checks
        .iter()
        .find(|c| c["name"] == "overlay socket")
        .unwrap();
    assert_eq!(socket["ok"], true, "{socket}");
    assert!(
        socket["detail"].as_str().unwrap().contains("--no-overlay"),
        "{socket}"
    );
    let overlay = checks.iter().find(|c| c["name"] == "overlay").unwrap();
    assert_eq!(overlay["ok"], true, "{overlay}");
    // No probes with a peer that is not in the overlay either.
    assert!(
        !checks
            .iter()
            .any(|c| c["name"].as_str().unwrap().starts_with("overlay to")
                || c["name"].as_str().unwrap().starts_with("overlay from")),
        "{checks:?}"
    );
    a.stop();
    b.stop();
}

#[test]
fn the_firewall_state_dir_is_private() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    // One made by an earlier release, world-readable.
    let old = t.path().join("old");
    std::fs::create_dir_all(old.join("firewall")).unwrap();
    std::fs::set_permissions(old.join("firewall"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut a = start_agent(&server, &old, "older", Some(&token), &[]);
    let mut b = start_agent(&server, &t.path().join("new"), "newer", Some(&token), &[]);
    wait_until(Duration::from_secs(20), "both agents active", || {
        server.host_state("older").as_deref() == Some("active")
            && server.host_state("newer").as_deref() == Some("active")
    });
    assert_eq!(mode(&old.join("firewall")), 0o700, "fixed at start");
    assert_eq!(mode(&t.path().join("new/firewall")), 0o700, "made private");
    a.stop();
    b.stop();
}
