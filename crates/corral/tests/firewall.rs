//! `corral firewall` and `corral diagram` from a live server's state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn rules_and_diagram_follow_live_state() {
    // `nft -c` checks the ruleset against the kernel, which takes root.
    require::root("for `nft -c`");
    require::tool("nft", "nftables");
    let t = tmp();
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let advertise = format!("https://192.0.2.10:{port}");
    let server = Server::start_on(
        &t.path().join("data"),
        port,
        &["--listen", &listen, "--advertise-url", &advertise],
    );

    // The server's own nftables ruleset, before any host exists: loads with `nft -c`.
    let nft_rules = server.cli_ok(&[
        "firewall",
        "--format",
        "nftables",
        "--host",
        "corral",
        "--admin-cidr",
        "203.0.113.0/24",
    ]);
    assert!(nft_rules.contains("table inet corral"), "{nft_rules}");
    assert!(
        nft_rules.contains(&format!("{port}")),
        "the live port: {nft_rules}"
    );
    let f = t.path().join("server.nft");
    std::fs::write(&f, &nft_rules).unwrap();
    let check = std::process::Command::new("nft")
        .arg("-c")
        .arg("-f")
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "nft -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let (_, token) = server.token(&[]);
    let _agent = start_agent(&server, &t.path().join("a"), "edge-1", Some(&token), &[]);
    wait_until(Duration::from_secs(20), "edge-1 active", || {
        server.host_state("edge-1").as_deref() == Some("active")
    });

    let md = server.cli_ok(&["firewall", "--admin-cidr", "203.0.113.0/24"]);
    assert!(md.contains("edge-1"), "{md}");
    assert!(md.contains("There is no server-to-host flow"), "{md}");
    assert!(
        md.contains(&format!("| Outbound | TCP | {port} | host group")),
        "{md}"
    );
    assert!(
        !md.contains("| Inbound | TCP | 8443 | server group"),
        "the server's own ports"
    );

    let aws: serde_json::Value = serde_json::from_str(&server.cli_ok(&[
        "firewall",
        "--format",
        "aws-json",
        "--server-group",
        "sg-0123",
    ]))
    .unwrap();
    let ingress = aws["AuthorizeSecurityGroupIngress"].as_array().unwrap();
    let server_in = ingress.iter().find(|r| r["GroupId"] == "sg-0123").unwrap();
    assert!(
        server_in["IpPermissions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["FromPort"] == port
                && p["UserIdGroupPairs"]
                    .as_array()
                    .is_some_and(|g| !g.is_empty()))
    );

    // Host-level formats need addresses: the agent here connects over loopback, which says
    // nothing about the network, and the error says so.
    let out = server.cli(&["firewall", "--format", "nftables", "--host", "corral"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("edge-1 has no known address"));

    let svg = server.cli_ok(&["diagram"]);
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{}",
        &svg[..80.min(svg.len())]
    );
    assert!(
        svg.contains("edge-1") && svg.contains("agent dials out"),
        "{svg}"
    );
    let dot = server.cli_ok(&["diagram", "--format", "dot"]);
    assert!(dot.contains("digraph"));
    let out = server.cli(&["firewall", "--format", "pdf"]);
    assert!(!out.status.success());
}
