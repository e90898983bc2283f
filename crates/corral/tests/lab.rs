//! Stacks over several real hosts: `scripts/lab.sh` builds a server and three hosts, each in its
//! own network namespace with its own dockerd and agent, joined by a lab bridge.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lab.sh")
}

fn lab_sh(args: &[&str]) -> Output {
    lab_sh_env(args, &[])
}

fn lab_sh_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .env("CORRAL_BIN", corral_bin())
        .envs(env.iter().copied())
        .output()
        .expect("lab.sh")
}

/// A lab that is torn down (by the script, from its recorded state) when dropped.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn up(hosts: usize, server_args: &[&str]) -> Option<Lab> {
        Lab::up_env(hosts, server_args, &[])
    }

    /// [`Lab::up`] with environment variables for `lab.sh up` (`LAB_DOCKER_IPTABLES=1`).
    fn up_env(hosts: usize, server_args: &[&str], env: &[(&str, &str)]) -> Option<Lab> {
        let dir = tmp();
        let n = hosts.to_string();
        let mut args = vec!["up", dir.path().to_str().unwrap(), &n, "--"];
        args.extend(server_args);
        let out = lab_sh_env(&args, env);
        let lab = Lab { dir };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("no dockerd") || err.contains("Operation not permitted") {
                println!("SKIP: {err}");
                return None;
            }
            panic!("lab up failed: {err}");
        }
        Some(lab)
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut all = vec!["cli", self.path()];
        all.extend(args);
        lab_sh(&all)
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "corral {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Names of the running containers on one host's own engine.
    fn containers(&self, host: &str) -> Vec<String> {
        let out = lab_sh(&["docker", self.path(), host, "ps", "--format", "{{.Names}}"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab_sh(&["down", self.path()]);
    }
}

const COMPOSE: &str = r#"
name: spread
services:
  web:
    image: corral-test/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
    deploy: { replicas: 3 }
"#;

#[test]
fn a_stack_spreads_over_three_engines_and_survives_losing_one() {
    let Some(lab) = Lab::up(
        3,
        &[
            "--heartbeat-interval",
            "1s",
            "--dead-after",
            "3s",
            "--reschedule-after",
            "3s",
        ],
    ) else {
        return;
    };
    lab.deploy(COMPOSE);
    // One replica on each host's own engine.
    for h in ["h1", "h2", "h3"] {
        assert_eq!(lab.containers(h).len(), 1, "{h}: {:?}", lab.containers(h));
    }
    let stale = lab.containers("h3")[0].clone();

    // h3's agent stops (its engine keeps running): after the dead-link timeout and the grace
    // period, its replica is started on h1 or h2.
    assert!(lab_sh(&["agent-stop", lab.path(), "h3"]).status.success());
    wait_until(Duration::from_secs(40), "the replica to leave h3", || {
        let view = &lab.cli_json(&["ps", "-p", "spread"])[0];
        view["converged"] == true
            && view["services"][0]["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["host"] != "h3")
    });
    assert_eq!(
        lab.containers("h1").len() + lab.containers("h2").len(),
        3,
        "the replica was placed again on the remaining hosts"
    );
    assert_eq!(lab.containers("h3"), [stale], "h3 still runs its copy");

    // h3 returns: its stale copy is removed, so three replicas remain, not four.
    assert!(lab_sh(&["agent-start", lab.path(), "h3"]).status.success());
    wait_until(Duration::from_secs(40), "the stale replica to go", || {
        lab.containers("h3").is_empty()
    });
    let total: usize = ["h1", "h2", "h3"]
        .iter()
        .map(|h| lab.containers(h).len())
        .sum();
    assert_eq!(total, 3);

    // Down removes everything from every engine.
    let out = lab.cli(&["down", "-p", "spread", "--timeout", "60s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for h in ["h1", "h2", "h3"] {
        assert!(lab.containers(h).is_empty(), "{h}");
        let nets = lab_sh(&[
            "docker",
            lab.path(),
            h,
            "network",
            "ls",
            "--format",
            "{{.Name}}",
        ]);
        assert!(
            !String::from_utf8_lossy(&nets.stdout).contains("corral_spread"),
            "{h} kept the stack network"
        );
    }
}

#[test]
fn the_lab_tears_down_everything_it_made() {
    let Some(lab) = Lab::up(1, &[]) else {
        return;
    };
    let srv_ns = lab.ns("srv");
    let h1_ns = lab.ns("h1");
    let netns = || {
        String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    assert!(netns().contains(&srv_ns) && netns().contains(&h1_ns));
    let out = lab_sh(&["down", lab.path()]);
    assert!(out.status.success());
    assert!(!netns().contains(&srv_ns) && !netns().contains(&h1_ns));
    // The processes it started are gone: no agent or dockerd uses the lab's state dir.
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(lab.path()),
        "a lab process survived"
    );
}

impl Lab {
    /// Deploys a Compose file and waits until it converged.
    fn deploy(&self, compose: &str) {
        let file = self.dir.path().join("compose.yaml");
        std::fs::write(&file, compose).unwrap();
        let out = self.cli(&[
            "up",
            "-f",
            file.to_str().unwrap(),
            "--wait",
            "--timeout",
            "60s",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Deploys the `net` stack and returns the overlay address of its `web` replica.
    fn deploy_net(&self, compose: &str) -> String {
        self.deploy(compose);
        let view = &self.cli_json(&["ps", "-p", "net"])[0];
        let web = view["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "web")
            .unwrap();
        let ip = web["replicas"][0]["ip"].as_str().unwrap().to_owned();
        assert!(ip.starts_with("10.42."), "{ip}");
        ip
    }

    /// The network namespace of lab host `host` (`srv`, `h1`…).
    fn ns(&self, host: &str) -> String {
        String::from_utf8_lossy(&lab_sh(&["ns", self.path(), host]).stdout)
            .trim()
            .to_owned()
    }

    /// Starts tcpdump on the lab bridge with `filter`, writing `file` in the lab's directory;
    /// returns it (stop it to flush) once it has had a second to start, and the file's path.
    fn capture(&self, file: &str, filter: &[&str]) -> (Proc, PathBuf) {
        let bridge = String::from_utf8_lossy(&lab_sh(&["bridge", self.path()]).stdout)
            .trim()
            .to_owned();
        let pcap = self.dir.path().join(file);
        let mut args = vec!["-i", &bridge, "-U", "-w", pcap.to_str().unwrap()];
        args.extend_from_slice(filter);
        let capture =
            Proc::spawn_program("tcpdump", &args, self.dir.path().join("tcpdump.log"), &[]);
        std::thread::sleep(Duration::from_secs(1));
        (capture, pcap)
    }

    /// The id of the (single) running container of `service` on `host`.
    fn container_of(&self, host: &str, service: &str) -> String {
        let label = format!("label=io.corral.service={service}");
        let out = lab_sh(&["docker", self.path(), host, "ps", "-q", "--filter", &label]);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            !id.is_empty() && !id.contains('\n'),
            "{service} on {host}: {id:?}"
        );
        id
    }

    /// Runs a shell command in a container on `host`; returns (success, stdout).
    fn exec(&self, host: &str, container: &str, script: &str) -> (bool, String) {
        let out = lab_sh(&[
            "docker",
            self.path(),
            host,
            "exec",
            container,
            "sh",
            "-c",
            script,
        ]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

/// An HTTP GET from inside a container (busybox nc), with `path` in the request line.
fn get_script(addr: &str, path: &str) -> String {
    format!("printf 'GET /{path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr} 80")
}

/// `web` on h2 and `client` on h1.
const NET_COMPOSE: &str = r#"
name: net
services:
  web:
    image: corral-test/busybox:latest
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    deploy: { placement: { constraints: ["node.hostname == h2"] } }
  client:
    image: corral-test/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
    deploy: { placement: { constraints: ["node.hostname == h1"] } }
"#;

/// A third service, on h3 (appended to [`NET_COMPOSE`] for three-host labs).
const OUTSIDER: &str = r#"  outsider:
    image: corral-test/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
    deploy: { placement: { constraints: ["node.hostname == h3"] } }
"#;

#[test]
fn containers_on_different_hosts_talk_only_through_the_encrypted_overlay() {
    let Some(lab) = Lab::up(3, &["--heartbeat-interval", "1s", "--dead-after", "3s"]) else {
        return;
    };
    let web_ip = lab.deploy_net(&format!("{NET_COMPOSE}{OUTSIDER}"));
    let client = lab.container_of("h1", "client");
    let outsider = lab.container_of("h3", "outsider");

    // Containers get the overlay's MTU, so they never send what the tunnel cannot carry whole.
    let (ok, mtu) = lab.exec("h1", &client, "cat /sys/class/net/eth0/mtu");
    assert!(ok && mtu.trim() == "1420", "container MTU: {mtu}");

    // Across hosts, by overlay address; the lab bridge carries only the agents' tunnels to the
    // server and UDP between overlay sockets, and never the payload.
    // IPv4 only: link-local IPv6 chatter (router solicitations) carries no payload.
    let (mut capture, pcap) = lab.capture("capture.pcap", &["ip"]);
    let marker = format!("MARKER-{}-SECRET", std::process::id());
    let (ok, answer) = lab.exec("h1", &client, &get_script(&web_ip, &marker));
    assert!(ok && answer.contains("HTTP/1.1 404"), "{answer}");
    let (_, page) = lab.exec("h1", &client, &get_script(&web_ip, ""));
    assert!(page.contains("hello from corral"), "{page}");
    std::thread::sleep(Duration::from_secs(1));
    capture.stop();
    let bytes = std::fs::read(&pcap).unwrap();
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the marker crossed the wire in clear"
    );
    let text = Command::new("tcpdump")
        .args(["-nr", pcap.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    let mut overlay_packets = 0;
    for line in text.lines() {
        let to_server = line.contains("192.0.2.1.8443");
        let overlay = line.contains(".51820 > ") && line.contains(".51820: UDP");
        assert!(
            to_server || overlay,
            "unexpected packet on the lab bridge: {line}"
        );
        overlay_packets += usize::from(overlay);
    }
    assert!(overlay_packets > 0, "no overlay traffic captured:\n{text}");

    // A flood of garbage and forged WireGuard-looking datagrams at h2's overlay port, from
    // another machine on the network, changes nothing for the legitimate peers.
    let srv_ns = lab.ns("srv");
    let mut flood = Proc::spawn_program(
        "ip",
        &[
            "netns",
            "exec",
            &srv_ns,
            "python3",
            "-c",
            "import os, socket, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             end = time.time() + 8\n\
             while time.time() < end:\n\
             \x20   for kind in (1, 2, 3, 4, 0x42):\n\
             \x20       s.sendto(bytes([kind, 0, 0, 0]) + os.urandom(144), ('192.0.2.12', 51820))\n",
        ],
        lab.dir.path().join("flood.log"),
        &[],
    );
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..5 {
        let (ok, page) = lab.exec("h1", &client, &get_script(&web_ip, ""));
        assert!(
            ok && page.contains("hello from corral"),
            "during the flood: {page}"
        );
    }
    flood.stop();

    // Service discovery: `web` (same stack) and `web.net` resolve, on every host, to the
    // replica's overlay address; a name that does not exist is NXDOMAIN.
    for name in ["web", "web.net"] {
        let (ok, out) = lab.exec("h1", &client, &format!("nslookup {name}"));
        assert!(ok && out.contains(&web_ip), "{name}: {out}");
        let (ok, page) = lab.exec("h1", &client, &get_script(name, ""));
        assert!(ok && page.contains("hello from corral"), "{name}: {page}");
    }
    for name in ["nope", "nope.net"] {
        let (_, out) = lab.exec("h1", &client, &format!("nslookup {name} 2>&1"));
        assert!(out.contains("NXDOMAIN"), "{name}: {out}");
    }

    // Rotating the pre-shared key keeps traffic flowing (at most one handshake lost).
    let mut failures = Vec::new();
    for i in 0..30 {
        if i == 8 {
            assert!(lab.cli(&["env", "rotate-key", "default"]).status.success());
        }
        let (ok, answer) = lab.exec("h1", &client, &get_script(&web_ip, ""));
        if !(ok && answer.contains("hello from corral")) {
            failures.push(i);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        failures.len() <= 3,
        "requests failed around the rotation: {failures:?}"
    );
    assert!(
        failures.iter().all(|i| *i < 25),
        "traffic did not recover after the rotation: {failures:?}"
    );

    // A removed host loses the overlay at once.
    let (ok, _) = lab.exec("h3", &outsider, &get_script(&web_ip, ""));
    assert!(ok, "h3 reaches web before its removal");
    let h3_id = lab
        .cli_json(&["host", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "h3")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(lab.cli(&["host", "rm", &h3_id]).status.success());
    wait_until(Duration::from_secs(10), "h3 to lose the overlay", || {
        !lab.exec("h3", &outsider, &get_script(&web_ip, "")).0
    });
    // The others still talk.
    let (ok, page) = lab.exec("h1", &client, &get_script(&web_ip, ""));
    assert!(ok && page.contains("hello from corral"), "{page}");

    // `corral doctor` shows h1's tunnel to h2 in use, and h3 gone from its peers.
    let out = lab.cli(&["doctor", "--host", "h1", "-o", "json"]);
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = reports[0]["checks"].as_array().unwrap();
    let by_name = |name: &str| checks.iter().find(|c| c["name"] == name).unwrap().clone();
    // The agent's own engine (--docker-host), not the machine's default socket.
    let docker = by_name("docker socket");
    assert_eq!(docker["ok"], true, "{docker}");
    let overlay = by_name("overlay");
    let detail = overlay["detail"].as_str().unwrap();
    eprintln!("doctor on h1, overlay: {detail}");
    assert_eq!(overlay["ok"], true, "{overlay}");
    assert!(
        detail.starts_with("encrypted (WireGuard), 1 peer(s): h2 10.42."),
        "{detail}"
    );
    assert!(
        detail.contains("handshake") && detail.contains("received"),
        "{detail}"
    );
    assert!(!detail.contains("h3"), "{detail}");
}

#[test]
fn a_restarted_agent_restores_its_tunnels_from_its_own_state() {
    let Some(lab) = Lab::up(2, &[]) else {
        return;
    };
    let web_ip = lab.deploy_net(NET_COMPOSE);
    let client = lab.container_of("h1", "client");
    assert!(lab.exec("h1", &client, &get_script(&web_ip, "")).0);

    // The server goes away; h1's agent restarts (its TUN device goes with it) and brings the
    // overlay back from its saved configuration alone.
    assert!(lab_sh(&["server-stop", lab.path()]).status.success());
    assert!(lab_sh(&["agent-stop", lab.path(), "h1"]).status.success());
    assert!(!lab.exec("h1", &client, &get_script(&web_ip, "")).0);
    assert!(lab_sh(&["agent-start", lab.path(), "h1"]).status.success());
    wait_until(Duration::from_secs(20), "the overlay to come back", || {
        lab.exec("h1", &client, &get_script(&web_ip, "")).0
    });
    // Nothing was re-keyed.
    assert!(lab_sh(&["server-start", lab.path()]).status.success());
    wait_until(Duration::from_secs(20), "the server", || {
        lab.cli(&["env", "ls"]).status.success()
    });
    let envs = lab.cli_json(&["env", "ls"]);
    assert_eq!(envs[0]["overlay_key_generation"], 1, "{envs}");
}

#[test]
fn the_vxlan_mode_carries_the_same_traffic_unencrypted_and_switches_back() {
    let Some(lab) = Lab::up(2, &[]) else {
        return;
    };
    assert!(
        lab.cli(&["env", "set-overlay", "default", "--mode", "vxlan"])
            .status
            .success()
    );
    // The firewall rules derived from live state follow the mode.
    let rules = String::from_utf8_lossy(&lab.cli(&["firewall"]).stdout).into_owned();
    assert!(rules.contains("4789"), "{rules}");
    let web_ip = lab.deploy_net(NET_COMPOSE);
    let client = lab.container_of("h1", "client");
    wait_until(Duration::from_secs(20), "web over vxlan", || {
        lab.exec("h1", &client, &get_script("web", ""))
            .1
            .contains("hello from corral")
    });
    // In this mode the wire carries the payload in clear, in VXLAN (UDP 4789): the trade-off
    // the operator chose for a trusted network.
    let (mut capture, pcap) = lab.capture("vxlan.pcap", &["udp", "port", "4789"]);
    let marker = format!("VXLAN-{}-MARKER", std::process::id());
    let _ = lab.exec("h1", &client, &get_script(&web_ip, &marker));
    std::thread::sleep(Duration::from_secs(1));
    capture.stop();
    let bytes = std::fs::read(&pcap).unwrap();
    assert!(
        bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the request did not cross in VXLAN"
    );
    // Back to the encrypted mode: the VXLAN devices go and traffic flows through WireGuard.
    assert!(
        lab.cli(&["env", "set-overlay", "default", "--mode", "wireguard"])
            .status
            .success()
    );
    let h1 = lab.ns("h1");
    wait_until(Duration::from_secs(20), "the switch back", || {
        let links = Command::new("ip")
            .args(["-n", &h1, "-o", "link"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        !links.contains("corralvx")
            && links.contains("corral0")
            && lab
                .exec("h1", &client, &get_script("web", ""))
                .1
                .contains("hello from corral")
    });
}

#[test]
fn with_dockers_own_iptables_the_overlay_still_carries_traffic() {
    // A default Docker install manages iptables itself: FORWARD's policy is DROP and every bridge
    // network masquerades. The agent adds what the overlay needs next to Docker's rules.
    let Some(lab) = Lab::up_env(2, &[], &[("LAB_DOCKER_IPTABLES", "1")]) else {
        return;
    };
    let web_ip = lab.deploy_net(NET_COMPOSE);
    let client = lab.container_of("h1", "client");
    for target in [web_ip.as_str(), "web"] {
        wait_until(Duration::from_secs(20), "h1 to reach web on h2", || {
            let (ok, page) = lab.exec("h1", &client, &get_script(target, ""));
            ok && page.contains("hello from corral")
        });
    }
    let h2 = lab.ns("h2");
    let iptables = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &h2, "iptables"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let user = iptables(&["-S", "DOCKER-USER"]);
    assert!(
        user.contains("-i corral0 -o corral-br0 -j ACCEPT"),
        "DOCKER-USER on h2:\n{user}"
    );
    let nat = iptables(&["-t", "nat", "-S", "POSTROUTING"]);
    // h2's lease, from web's address on it.
    let (net, _) = web_ip.rsplit_once('.').unwrap();
    let lease = format!("{net}.0/24");
    assert!(
        nat.lines().any(|l| l.contains(&lease)
            && l.contains("! -d 10.42.0.0/16")
            && l.contains("MASQUERADE")),
        "POSTROUTING on h2:\n{nat}"
    );
}
