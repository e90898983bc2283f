//! Stacks over several real hosts: a lab of the test kit (`corral-testkit`) builds a server and
//! hosts, each in its own network namespace with its own dockerd and agent, joined by a bridge.
//! One test checks `scripts/lab.sh`, the same lab by hand for users.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use corral_testkit::corral::SERVER_PORT;
use corral_testkit::{DockerFirewall, Lab, LabConfig, leftovers};
use serde_json::Value;

/// A lab of `hosts` hosts whose server runs with `server_args`; torn down when dropped.
fn lab(hosts: usize, server_args: &[&str], docker_firewall: DockerFirewall) -> Lab {
    Lab::up(LabConfig {
        bin: Path::new(corral_bin()),
        hosts,
        server_args,
        docker_firewall,
        overlay: &[],
    })
}

/// What these tests do with a lab.
trait LabTests {
    fn cli_json(&self, args: &[&str]) -> Value;
    fn containers(&self, host: &str) -> Vec<String>;
    fn deploy(&self, compose: &str);
    fn deploy_net(&self, compose: &str) -> String;
    fn container_of(&self, host: &str, service: &str) -> String;
    fn exec(&self, host: &str, container: &str, script: &str) -> (bool, String);
}

impl LabTests for Lab {
    fn cli_json(&self, args: &[&str]) -> Value {
        self.server.cli_json(args)
    }

    /// Names of the running containers on one host's own engine.
    fn containers(&self, host: &str) -> Vec<String> {
        self.dockerd(host)
            .docker_ok(&["ps", "--format", "{{.Names}}"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Deploys a Compose file and waits until it converged.
    fn deploy(&self, compose: &str) {
        let file = self.dir().join("compose.yaml");
        std::fs::write(&file, compose).unwrap();
        self.server.cli_ok(&[
            "up",
            "-f",
            file.to_str().unwrap(),
            "--wait",
            "--timeout",
            "60s",
        ]);
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

    /// The id of the (single) running container of `service` on `host`.
    fn container_of(&self, host: &str, service: &str) -> String {
        let label = format!("label=io.corral.service={service}");
        let id = self
            .dockerd(host)
            .docker_ok(&["ps", "-q", "--filter", &label])
            .trim()
            .to_owned();
        assert!(
            !id.is_empty() && !id.contains('\n'),
            "{service} on {host}: {id:?}"
        );
        id
    }

    /// Runs a shell command in a container on `host`; returns (success, stdout).
    fn exec(&self, host: &str, container: &str, script: &str) -> (bool, String) {
        let out = self
            .dockerd(host)
            .docker(&["exec", container, "sh", "-c", script]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
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
    let mut lab = lab(
        3,
        &[
            "--heartbeat-interval",
            "1s",
            "--dead-after",
            "3s",
            "--reschedule-after",
            "3s",
        ],
        DockerFirewall::Off,
    );
    lab.deploy(COMPOSE);
    // One replica on each host's own engine.
    for h in ["h1", "h2", "h3"] {
        assert_eq!(lab.containers(h).len(), 1, "{h}: {:?}", lab.containers(h));
    }
    let stale = lab.containers("h3")[0].clone();

    // h3's agent stops (its engine keeps running): after the dead-link timeout and the grace
    // period, its replica is started on h1 or h2.
    lab.stop_agent("h3");
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
    lab.start_agent("h3");
    wait_until(Duration::from_secs(40), "the stale replica to go", || {
        lab.containers("h3").is_empty()
    });
    let total: usize = ["h1", "h2", "h3"]
        .iter()
        .map(|h| lab.containers(h).len())
        .sum();
    assert_eq!(total, 3);

    // Down removes everything from every engine.
    lab.server
        .cli_ok(&["down", "-p", "spread", "--timeout", "60s"]);
    for h in ["h1", "h2", "h3"] {
        assert!(lab.containers(h).is_empty(), "{h}");
        let nets = lab
            .dockerd(h)
            .docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
        assert!(
            !nets.contains("corral_spread"),
            "{h} kept the stack network"
        );
    }
}

#[test]
fn a_lab_tears_down_everything_it_made() {
    let lab = lab(1, &[], DockerFirewall::Off);
    let namespaces = [
        lab.ns("srv").name().to_owned(),
        lab.ns("h1").name().to_owned(),
    ];
    let bridge = lab.net.bridge().to_owned();
    let dir = lab.dir().to_owned();
    let dir_s = dir.display().to_string();
    assert!(namespaces.iter().all(|n| leftovers::netns_exists(n)));
    assert!(leftovers::link_exists(&bridge));
    assert!(!leftovers::processes_mentioning(&dir_s).is_empty());
    drop(lab);
    for n in &namespaces {
        assert!(!leftovers::netns_exists(n), "namespace {n} survived");
    }
    assert!(!leftovers::link_exists(&bridge), "bridge {bridge} survived");
    // The processes it started are gone: no agent, server, dockerd or containerd uses its
    // directory, which is gone too, with nothing left mounted there.
    assert_eq!(
        leftovers::processes_mentioning(&dir_s),
        Vec::<String>::new(),
        "lab processes survived"
    );
    assert_eq!(leftovers::mounts_under(&dir), Vec::<String>::new());
    assert!(!dir.exists(), "{dir_s} survived");
}

/// `scripts/lab.sh` (the lab by hand, for users) with `CORRAL_BIN` set to this build.
fn lab_sh(args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lab.sh");
    Command::new("bash")
        .arg(script)
        .args(args)
        .env("CORRAL_BIN", corral_bin())
        .output()
        .expect("lab.sh")
}

/// Runs `lab.sh down DIR` when dropped.
struct LabShDown<'a>(&'a str);

impl Drop for LabShDown<'_> {
    fn drop(&mut self) {
        let _ = lab_sh(&["down", self.0]);
    }
}

#[test]
fn scripts_lab_sh_builds_a_lab_and_tears_down_everything_it_made() {
    require::netns();
    require::tool("dockerd", "docker.io");
    require::tool("busybox", "busybox-static");
    require::tool("python3", "python3");
    let dir = tmp();
    let path = dir.path().to_str().unwrap();
    let _down = LabShDown(path);
    let out = lab_sh(&["up", path, "1"]);
    assert!(
        out.status.success(),
        "lab.sh up: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ns = |host: &str| {
        String::from_utf8_lossy(&lab_sh(&["ns", path, host]).stdout)
            .trim()
            .to_owned()
    };
    let (srv_ns, h1_ns) = (ns("srv"), ns("h1"));
    assert!(leftovers::netns_exists(&srv_ns) && leftovers::netns_exists(&h1_ns));
    // The CLI runs in the server's namespace; h1 is connected with its own engine.
    let out = lab_sh(&["cli", path, "host", "ls", "-o", "json"]);
    let hosts: Value = serde_json::from_slice(&out.stdout).unwrap();
    let h1 = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "h1")
        .unwrap();
    assert_eq!(h1["state"], "active", "{hosts}");
    assert_eq!(h1["docker"]["state"], "available", "{hosts}");

    let out = lab_sh(&["down", path]);
    assert!(out.status.success());
    assert!(!leftovers::netns_exists(&srv_ns) && !leftovers::netns_exists(&h1_ns));
    // The processes it started are gone: no agent or dockerd uses the lab's state dir.
    assert_eq!(
        leftovers::processes_mentioning(path),
        Vec::<String>::new(),
        "a lab process survived"
    );
}

/// Garbage and forged WireGuard-looking datagrams (each kind of message, then random bytes)
/// from `socket` to `target`, about 100 000 a second, until dropped.
struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(socket: std::net::UdpSocket, target: String) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut random = std::fs::File::open("/dev/urandom").unwrap();
                let mut datagram = [0u8; 148];
                while !stop.load(Ordering::Relaxed) {
                    let tick = Instant::now();
                    for _ in 0..20 {
                        for kind in [1u8, 2, 3, 4, 0x42] {
                            datagram[..4].copy_from_slice(&[kind, 0, 0, 0]);
                            random.read_exact(&mut datagram[4..]).unwrap();
                            if socket.send_to(&datagram, &target).is_ok() {
                                sent.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    // 100 datagrams a millisecond.
                    if let Some(rest) = Duration::from_millis(1).checked_sub(tick.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
            })
        };
        Flood {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
    let lab = lab(
        3,
        &["--heartbeat-interval", "1s", "--dead-after", "3s"],
        DockerFirewall::Off,
    );
    let web_ip = lab.deploy_net(&format!("{NET_COMPOSE}{OUTSIDER}"));
    let client = lab.container_of("h1", "client");
    let outsider = lab.container_of("h3", "outsider");

    // Containers get the overlay's MTU, so they never send what the tunnel cannot carry whole.
    let (ok, mtu) = lab.exec("h1", &client, "cat /sys/class/net/eth0/mtu");
    assert!(ok && mtu.trim() == "1420", "container MTU: {mtu}");

    // Across hosts, by overlay address; the lab bridge carries only the agents' tunnels to the
    // server and UDP between overlay sockets, and never the payload.
    // IPv4 only: link-local IPv6 chatter (router solicitations) carries no payload.
    let capture = lab.capture("capture.pcap", &["ip"]);
    let marker = format!("MARKER-{}-SECRET", std::process::id());
    let (ok, answer) = lab.exec("h1", &client, &get_script(&web_ip, &marker));
    assert!(ok && answer.contains("HTTP/1.1 404"), "{answer}");
    let (_, page) = lab.exec("h1", &client, &get_script(&web_ip, ""));
    assert!(page.contains("hello from corral"), "{page}");
    // Every frame of those requests is in the file before the capture is read.
    capture.sync(&lab.net, lab.ns("srv"));
    let pcap = capture.stop();
    assert!(
        !pcap.contains(marker.as_bytes()),
        "the marker crossed the wire in clear"
    );
    let packets = pcap.packets();
    let text = packets.join("\n");
    let server_port = format!("{}.{SERVER_PORT}", lab.ns("srv").ip());
    let mut overlay_packets = 0;
    for line in &packets {
        let to_server = line.contains(&server_port);
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
    let flood = Flood::start(
        lab.ns("srv").udp_socket(),
        format!("{}:51820", lab.ns("h2").ip()),
    );
    wait_until(Duration::from_secs(10), "the flood to be under way", || {
        flood.sent() >= 10_000
    });
    let before = flood.sent();
    for _ in 0..5 {
        let (ok, page) = lab.exec("h1", &client, &get_script(&web_ip, ""));
        assert!(
            ok && page.contains("hello from corral"),
            "during the flood: {page}"
        );
    }
    assert!(
        flood.sent() > before,
        "the flood went on during the requests"
    );
    drop(flood);

    // The agents report their overlay's figures (once a heartbeat, 1 s here), per host in
    // /metrics: h2 refused the flood, h1 carried the requests and shook hands.
    let series = |text: &str, prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    wait_until(
        Duration::from_secs(15),
        "the overlay's figures in /metrics",
        || {
            let text = lab.server.metrics_text();
            series(&text, "corral_overlay_refused_datagrams_total{host=\"h2\"") > 0
                && series(
                    &text,
                    "corral_overlay_bytes_total{host=\"h1\",direction=\"tx\"}",
                ) > 0
                && series(
                    &text,
                    "corral_overlay_bytes_total{host=\"h1\",direction=\"rx\"}",
                ) > 0
                && series(&text, "corral_overlay_handshakes_total{host=\"h1\"}") > 0
                && series(&text, "corral_overlay_peers{host=\"h1\",state=\"session\"}") > 0
        },
    );

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
    let mut lab = lab(2, &[], DockerFirewall::Off);
    let web_ip = lab.deploy_net(NET_COMPOSE);
    let client = lab.container_of("h1", "client");
    assert!(lab.exec("h1", &client, &get_script(&web_ip, "")).0);

    // The server goes away; h1's agent restarts (its TUN device goes with it) and brings the
    // overlay back from its saved configuration alone.
    lab.server.stop();
    lab.stop_agent("h1");
    assert!(!lab.exec("h1", &client, &get_script(&web_ip, "")).0);
    lab.start_agent("h1");
    wait_until(Duration::from_secs(20), "the overlay to come back", || {
        lab.exec("h1", &client, &get_script(&web_ip, "")).0
    });
    // Nothing was re-keyed.
    lab.server.start_again();
    wait_until(Duration::from_secs(20), "the server", || {
        lab.cli(&["env", "ls"]).status.success()
    });
    let envs = lab.cli_json(&["env", "ls"]);
    assert_eq!(envs[0]["overlay_key_generation"], 1, "{envs}");
}

#[test]
fn the_vxlan_mode_carries_the_same_traffic_unencrypted_and_switches_back() {
    let lab = lab(2, &[], DockerFirewall::Off);
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
    let capture = lab.capture("vxlan.pcap", &["udp", "port", "4789"]);
    let marker = format!("VXLAN-{}-MARKER", std::process::id());
    let _ = lab.exec("h1", &client, &get_script(&web_ip, &marker));
    wait_until(
        Duration::from_secs(10),
        "the request to cross in VXLAN, in clear",
        || capture.contains(marker.as_bytes()),
    );
    capture.stop();
    // Back to the encrypted mode: the VXLAN devices go and traffic flows through WireGuard.
    assert!(
        lab.cli(&["env", "set-overlay", "default", "--mode", "wireguard"])
            .status
            .success()
    );
    let h1 = lab.ns("h1");
    wait_until(Duration::from_secs(20), "the switch back", || {
        let links = h1.run_ok(&["ip", "-o", "link"]);
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
    let lab = lab(2, &[], DockerFirewall::Managed);
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
        let mut all = vec!["iptables"];
        all.extend(args);
        h2.run_ok(&all)
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
