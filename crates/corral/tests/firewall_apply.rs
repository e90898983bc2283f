//! `corral firewall apply` on a host in its own network namespace: the agent installs
//! `table inet corral` (and nothing else), allowed flows pass, others are dropped, and the
//! dead-man timer rolls the rules back when the server cannot be reached afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use corral_testkit::{AgentSpec, Netns, Network, NsServer, corral::SERVER_PORT, spawn_agent};

/// Whether a TCP connection from the server's namespace to `port` on the host opens.
fn reachable(server: &Netns, host: &Netns, port: u16) -> bool {
    let addr: SocketAddr = format!("{}:{port}", host.ip()).parse().unwrap();
    server.tcp_connects(addr, Duration::from_secs(2))
}

fn host_tables(host: &Netns) -> String {
    host.run_ok(&["nft", "list", "tables"])
}

/// Drops new connections from the host to the server's port, in the server's namespace, in a
/// table of the test's own; established connections live on.
fn block_new_connections(server: &Netns, host: &Netns, dir: &Path) {
    let script = format!(
        "table inet corral_test {{\n chain input {{\n  type filter hook input priority -10; policy accept;\n  ip saddr {} tcp dport {SERVER_PORT} ct state new drop\n }}\n}}\n",
        host.ip()
    );
    let f = dir.join("block.nft");
    std::fs::write(&f, script).unwrap();
    server.run_ok(&["nft", "-f", f.to_str().unwrap()]);
}

#[test]
fn apply_in_a_namespace_allows_flows_drops_the_rest_and_rolls_back_when_cut_off() {
    require::tool("nft", "nftables");
    let t = tmp();
    // Two namespaces, "server" and "host", joined by a bridge. (The server gets a namespace of
    // its own too: these machines' root namespace does not answer ARP from a namespace.)
    let mut net = Network::new();
    net.add("server");
    net.add("host");
    let (server_ns, host_ns) = (net.ns("server"), net.ns("host"));
    let server = NsServer::start(
        Path::new(corral_bin()),
        server_ns,
        &t.path().join("data"),
        &[],
    );
    let token = server.token(&[]);
    let state = t.path().join("agent");
    // No Docker engine for this host: the firewall needs none, and with the machine's own
    // engine the agent would configure the overlay's network there once it got its lease.
    let nowhere = format!("unix://{}/no-docker.sock", t.path().display());
    let mut agent = spawn_agent(
        Path::new(corral_bin()),
        host_ns,
        &server,
        AgentSpec {
            name: "fw-host",
            state_dir: &state,
            token: Some(&token),
            extra: &["--docker-host", &nowhere],
            log: &t.path().join("agent.log"),
        },
    );
    wait_until(Duration::from_secs(20), "fw-host to connect", || {
        assert!(
            agent.running(),
            "the agent exited:\n{}\nserver log:\n{}",
            agent.log_text(),
            server.log()
        );
        server.host_state("fw-host").as_deref() == Some("active")
    });

    // A service on the host that no flow allows, and another table the agent must not touch.
    let _service = host_ns.tcp_sink(9999);
    wait_until(Duration::from_secs(10), "the test service", || {
        reachable(server_ns, host_ns, 9999)
    });
    host_ns.run_ok(&["nft", "add", "table", "inet", "bystander"]);

    // Dry run: checked on the host, nothing installed.
    let out = server.cli(&[
        "firewall",
        "apply",
        "--host",
        "fw-host",
        "--dry-run",
        "--admin-cidr",
        "203.0.113.0/24",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(rules.contains("table inet corral {"), "{rules}");
    assert!(!host_tables(host_ns).contains("inet corral"));

    // Apply: in force, confirmed through a new connection; the bystander table is intact.
    let out = server.cli(&[
        "firewall",
        "apply",
        "--host",
        "fw-host",
        "--admin-cidr",
        "203.0.113.0/24",
        "--confirm-within",
        "10s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("applied as table inet corral"));
    let tables = host_tables(host_ns);
    assert!(
        tables.contains("table inet corral") && tables.contains("table inet bystander"),
        "{tables}"
    );
    assert!(
        !reachable(server_ns, host_ns, 9999),
        "a port no flow allows is dropped"
    );
    // The allowed flow still works: the tunnel stays up and carries commands.
    assert_eq!(server.host_state("fw-host").as_deref(), Some("active"));
    let out = server.cli(&["doctor", "--host", "fw-host", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["checks"][0]["ok"], true, "{report}");

    // Dead man: remove the table, cut new connections from the host to the server, apply again.
    host_ns.run_ok(&["nft", "delete", "table", "inet", "corral"]);
    assert!(reachable(server_ns, host_ns, 9999));
    block_new_connections(server_ns, host_ns, t.path());
    let out = server.cli(&[
        "firewall",
        "apply",
        "--host",
        "fw-host",
        "--confirm-within",
        "3s",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rolled back to the previous rules"), "{err}");
    assert!(
        !host_tables(host_ns).contains("inet corral"),
        "the rollback removed the table"
    );
    assert!(host_tables(host_ns).contains("inet bystander"));
    assert!(
        reachable(server_ns, host_ns, 9999),
        "back to the previous (open) state"
    );
    assert!(!state.join("firewall/pending").exists());
    assert_eq!(server.host_state("fw-host").as_deref(), Some("active"));

    agent.stop();
}
