//! `corral firewall apply` on a host in its own network namespace: the agent installs
//! `table inet corral` (and nothing else), allowed flows pass, others are dropped, and the
//! dead-man timer rolls the rules back when the server cannot be reached afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const SERVER_IP: &str = "192.0.2.1";
const HOST_IP: &str = "192.0.2.2";

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run")
}

fn ok(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two network namespaces, "server" and "host", joined by a bridge; removed on drop. (The
/// server gets a namespace of its own too: these machines' root namespace does not answer ARP
/// from a namespace.)
struct Lab {
    server_ns: String,
    host_ns: String,
    bridge: String,
    veths: Vec<String>,
}

impl Lab {
    fn create() -> Option<Lab> {
        let id = std::process::id() % 100_000;
        let lab = Lab {
            server_ns: format!("corral-fw-s{id}"),
            host_ns: format!("corral-fw-h{id}"),
            bridge: format!("crlbr{id}"),
            veths: vec![format!("crls{id}"), format!("crlh{id}")],
        };
        if !run(&["ip", "netns", "add", &lab.server_ns])
            .status
            .success()
        {
            return None;
        }
        ok(&["ip", "netns", "add", &lab.host_ns]);
        ok(&["ip", "link", "add", &lab.bridge, "type", "bridge"]);
        // A dockerd in the root namespace sets the FORWARD policy to DROP and turns
        // br_netfilter on, which would drop frames crossing the lab bridge: accept them in
        // DOCKER-USER while the lab exists (removed on drop).
        let _ = run(&[
            "iptables",
            "-I",
            "DOCKER-USER",
            "-i",
            &lab.bridge,
            "-o",
            &lab.bridge,
            "-j",
            "ACCEPT",
        ]);
        ok(&["ip", "link", "set", &lab.bridge, "up"]);
        for (veth, ns, ip) in [
            (&lab.veths[0], &lab.server_ns, SERVER_IP),
            (&lab.veths[1], &lab.host_ns, HOST_IP),
        ] {
            let peer = format!("{veth}p");
            ok(&[
                "ip", "link", "add", veth, "type", "veth", "peer", "name", &peer,
            ]);
            ok(&["ip", "link", "set", veth, "master", &lab.bridge]);
            ok(&["ip", "link", "set", veth, "up"]);
            ok(&["ip", "link", "set", &peer, "netns", ns]);
            ok(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                &peer,
            ]);
            ok(&["ip", "-n", ns, "link", "set", &peer, "up"]);
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        Some(lab)
    }

    fn exec(ns: &str, args: &[&str]) -> std::process::Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend(args);
        run(&full)
    }

    fn host_tables(&self) -> String {
        String::from_utf8_lossy(&Lab::exec(&self.host_ns, &["nft", "list", "tables"]).stdout)
            .into_owned()
    }

    /// Whether a TCP connection from the server namespace to the host's `port` succeeds.
    fn reachable(&self, port: u16) -> bool {
        let script = format!(
            "import socket\ns=socket.socket()\ns.settimeout(2)\ntry:\n    s.connect(('{HOST_IP}', {port}))\n    print('open')\nexcept Exception as e:\n    print(e)\n"
        );
        let out = Lab::exec(&self.server_ns, &["python3", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).trim() == "open"
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for v in &self.veths {
            let _ = run(&["ip", "link", "del", v]);
        }
        let _ = run(&[
            "iptables",
            "-D",
            "DOCKER-USER",
            "-i",
            &self.bridge,
            "-o",
            &self.bridge,
            "-j",
            "ACCEPT",
        ]);
        let _ = run(&["ip", "link", "del", &self.bridge]);
        let _ = run(&["ip", "netns", "del", &self.host_ns]);
        let _ = run(&["ip", "netns", "del", &self.server_ns]);
    }
}

/// Runs the CLI inside the server's namespace with admin.env's variables.
fn cli(lab: &Lab, env: &AdminEnv, args: &[&str]) -> std::process::Output {
    let mut full = vec!["netns", "exec", &lab.server_ns, corral_bin()];
    full.extend(args);
    Command::new("ip")
        .args(&full)
        .env("CORRAL_SERVER", &env.server)
        .env("CORRAL_API_KEY", &env.api_key)
        .env("CORRAL_CA_CHECKSUM", &env.checksum)
        .output()
        .expect("run corral")
}

fn host_state(lab: &Lab, env: &AdminEnv, name: &str) -> Option<String> {
    let out = cli(lab, env, &["host", "ls", "-o", "json"]);
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    hosts
        .as_array()?
        .iter()
        .find(|h| h["name"] == name)
        .and_then(|h| h["state"].as_str().map(str::to_owned))
}

/// Drops new connections from the host to the server's port, in the server's namespace, in a
/// table of the test's own; established connections live on.
fn block_new_connections(lab: &Lab, port: u16) {
    let script = format!(
        "table inet corral_test {{\n chain input {{\n  type filter hook input priority -10; policy accept;\n  ip saddr {HOST_IP} tcp dport {port} ct state new drop\n }}\n}}\n"
    );
    let f = std::env::temp_dir().join(format!("corral-test-block-{}.nft", std::process::id()));
    std::fs::write(&f, script).unwrap();
    let out = Lab::exec(&lab.server_ns, &["nft", "-f", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(f);
}

#[test]
fn apply_in_a_namespace_allows_flows_drops_the_rest_and_rolls_back_when_cut_off() {
    let has_tools = run(&["nft", "--version"]).status.success()
        && run(&["ip", "-V"]).status.success()
        && run(&["python3", "--version"]).status.success();
    let Some(lab) = has_tools.then(Lab::create).flatten() else {
        println!("SKIP: needs root, iproute2, nftables and python3 to make network namespaces");
        return;
    };
    let t = tmp();
    let port = 8443;
    let data = t.path().join("data").display().to_string();
    let advertise = format!("https://{SERVER_IP}:{port}");
    let listen = format!("0.0.0.0:{port}");
    let mut server = Proc::spawn_program(
        "ip",
        &[
            "netns",
            "exec",
            &lab.server_ns,
            corral_bin(),
            "server",
            "--listen",
            &listen,
            "--advertise-url",
            &advertise,
            "--data-dir",
            &data,
        ],
        t.path().join("server.log"),
        &[],
    );
    wait_for_server(&server);
    let env = read_admin_env(&t.path().join("data/admin.env")).unwrap();
    let created: serde_json::Value =
        serde_json::from_slice(&cli(&lab, &env, &["token", "create", "-o", "json"]).stdout)
            .unwrap();
    let token = created["token"].as_str().unwrap();
    let state = t.path().join("agent");
    let state_s = state.display().to_string();
    let mut agent = Proc::spawn_program(
        "ip",
        &[
            "netns",
            "exec",
            &lab.host_ns,
            corral_bin(),
            "agent",
            "--server",
            &advertise,
            "--token",
            token,
            "--ca-checksum",
            &env.checksum,
            "--state-dir",
            &state_s,
            "--name",
            "fw-host",
        ],
        t.path().join("agent.log"),
        &[],
    );
    let started = std::time::Instant::now();
    while host_state(&lab, &env, "fw-host").as_deref() != Some("active") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "fw-host never connected; agent log:\n{}\nserver log:\n{}",
            agent.log_text(),
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A service on the host that no flow allows, and another table the agent must not touch.
    let mut listener = Proc::spawn_program(
        "ip",
        &[
            "netns",
            "exec",
            &lab.host_ns,
            "python3",
            "-c",
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 9999))\ns.listen(16)\nwhile True:\n    c, _ = s.accept()\n    c.close()\n",
        ],
        t.path().join("listener.log"),
        &[],
    );
    wait_until(Duration::from_secs(10), "the test listener", || {
        lab.reachable(9999)
    });
    assert!(
        Lab::exec(&lab.host_ns, &["nft", "add", "table", "inet", "bystander"])
            .status
            .success()
    );

    // Dry run: checked on the host, nothing installed.
    let out = cli(
        &lab,
        &env,
        &[
            "firewall",
            "apply",
            "--host",
            "fw-host",
            "--dry-run",
            "--admin-cidr",
            "203.0.113.0/24",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(rules.contains("table inet corral {"), "{rules}");
    assert!(!lab.host_tables().contains("inet corral"));

    // Apply: in force, confirmed through a new connection; the bystander table is intact.
    let out = cli(
        &lab,
        &env,
        &[
            "firewall",
            "apply",
            "--host",
            "fw-host",
            "--admin-cidr",
            "203.0.113.0/24",
            "--confirm-within",
            "10s",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("applied as table inet corral"));
    let tables = lab.host_tables();
    assert!(
        tables.contains("table inet corral") && tables.contains("table inet bystander"),
        "{tables}"
    );
    assert!(!lab.reachable(9999), "a port no flow allows is dropped");
    // The allowed flow still works: the tunnel stays up and carries commands.
    assert_eq!(host_state(&lab, &env, "fw-host").as_deref(), Some("active"));
    let out = cli(&lab, &env, &["doctor", "--host", "fw-host", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["checks"][0]["ok"], true, "{report}");

    // Dead man: remove the table, cut new connections from the host to the server, apply again.
    assert!(
        Lab::exec(&lab.host_ns, &["nft", "delete", "table", "inet", "corral"])
            .status
            .success()
    );
    assert!(lab.reachable(9999));
    block_new_connections(&lab, port);
    let out = cli(
        &lab,
        &env,
        &[
            "firewall",
            "apply",
            "--host",
            "fw-host",
            "--confirm-within",
            "3s",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rolled back to the previous rules"), "{err}");
    assert!(
        !lab.host_tables().contains("inet corral"),
        "the rollback removed the table"
    );
    assert!(lab.host_tables().contains("inet bystander"));
    assert!(lab.reachable(9999), "back to the previous (open) state");
    assert!(!state.join("firewall/pending").exists());
    assert_eq!(host_state(&lab, &env, "fw-host").as_deref(), Some("active"));

    listener.stop();
    agent.stop();
    server.stop();
}
