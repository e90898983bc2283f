//! Network policy on a lab of three real hosts (each its own namespace, dockerd and agent):
//! three stacks whose services carry `zone` labels, and a full matrix of TCP and UDP
//! connections between their replicas — on one host (bridged) and across hosts (through the
//! overlay) — plus connections from and to an address outside the overlay, checked against
//! what `corral_policy::evaluate` (and so `corral policy test`) says for every cell, under
//! `default: allow` with denies and `default: deny` with allows; a change measured until every
//! host enforces it; rollback; DNS under deny; an agent restarted while denied paths are
//! probed; and the same matrix in the vxlan mode.
//!
//! Probes run in the containers' own network namespaces (`/proc/PID/ns/net`): a connection
//! the test opens there leaves through the container's interface exactly as the container's
//! own would. A denied connection is one whose SYN (or datagram) never gets an answer: the
//! rules drop, they do not reject.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use corral_policy::{Action, Document, Endpoint, Proto, Traffic, Workload};
use corral_testkit::netns::enter_at;
use corral_testkit::{DockerFirewall, Lab, LabConfig};

const TCP_PORTS: [u16; 2] = [8080, 5432];
const UDP_PORT: u16 = 5353;
/// A TCP echo service that keeps its connections open (to see a policy change close one).
const ECHO_PORT: u16 = 7070;
/// The outside service (in the server's namespace) that egress probes reach.
const OUTSIDE_PORT: u16 = 9100;
/// How long a probe waits for an answer before it counts as dropped.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

const LOOP: &str = r#"["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]"#;

fn stacks() -> Vec<(&'static str, String)> {
    let svc = |name: &str, zone: &str, host: &str| {
        format!(
            "  {name}:\n    image: corral-test/busybox:latest\n    command: {LOOP}\n    labels: {{ zone: {zone} }}\n    deploy: {{ placement: {{ constraints: [\"node.hostname == {host}\"] }} }}\n"
        )
    };
    vec![
        (
            "front",
            format!("name: front\nservices:\n{}", svc("web", "dmz", "h1")),
        ),
        (
            "app",
            format!(
                "name: app\nservices:\n{}{}",
                svc("api", "app", "h2"),
                svc("worker", "app", "h1")
            ),
        ),
        (
            "data",
            format!(
                "name: data\nservices:\n{}{}{DATA_RULES}",
                svc("db", "db", "h3"),
                svc("cache", "db", "h2")
            ),
        ),
    ]
}

/// The `data` stack's own rules: whatever the environment says, its cache never opens
/// connections to its db.
const DATA_RULES: &str = "x-corral:
  policy:
    deny:
      - name: cache-never-to-db
        from: { service: cache }
        to: { service: db }
";

/// The document every host enforces: the environment's and the `data` stack's rules.
fn with_data_rules(env: &str) -> Document {
    let rules: corral_policy::StackRules = serde_json::from_value(serde_json::json!({
        "deny": [{"name": "cache-never-to-db", "from": {"service": "cache"}, "to": {"service": "db"}}]
    }))
    .unwrap();
    corral_policy::combine(
        &corral_policy::parse(env).unwrap(),
        &[("data".to_owned(), rules.scoped("data").unwrap())],
    )
}

/// Default allow; dmz never reaches db; the worker never reaches 5432 anywhere.
const POLICY_ALLOW: &str = "
default: allow
deny:
  - name: dmz-never-to-db
    from: { labels: { zone: dmz } }
    to: { labels: { zone: db } }
  - name: no-5432-from-worker
    from: { stack: app, service: worker }
    ports: [5432/tcp]
";

/// Default deny: dmz → app on 8080, app → db on 5432 and 5353/udp, 5353/udp within a stack;
/// from outside only the server's address to dmz on 8080; to outside only app to the
/// server's 9100.
fn policy_deny(outside: Ipv4Addr) -> String {
    format!(
        "
default: deny
ingress: deny
egress: deny
allow:
  - name: web-to-api
    from: {{ labels: {{ zone: dmz }} }}
    to: {{ labels: {{ zone: app }} }}
    ports: [8080/tcp]
  - name: app-to-db
    from: {{ labels: {{ zone: app }} }}
    to: {{ labels: {{ zone: db }} }}
    ports: [5432/tcp, 5353/udp]
  - within: stack
    ports: [5353/udp]
  - name: admin-to-dmz
    from: {{ cidr: {outside}/32 }}
    to: {{ labels: {{ zone: dmz }} }}
    ports: [8080/tcp]
  - name: app-to-metrics
    from: {{ labels: {{ zone: app }} }}
    to: {{ cidr: {outside}/32 }}
    ports: [{OUTSIDE_PORT}/tcp]
"
    )
}

/// One deployed replica.
#[derive(Clone)]
struct Replica {
    host: String,
    workload: Workload,
    ip: Ipv4Addr,
    netns: PathBuf,
}

impl Replica {
    fn name(&self) -> String {
        format!("{}/{}", self.workload.stack, self.workload.service)
    }
}

/// Listeners in one network namespace (TCP accept-and-close, UDP echo) until dropped.
struct Listeners {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Listeners {
    fn start(netns: &Path, tcp: &[u16], udp: &[u16]) -> Listeners {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in tcp {
            let listener = enter_at(netns, || TcpListener::bind(("0.0.0.0", port))).unwrap();
            listener.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => drop(conn),
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
        }
        if tcp.contains(&TCP_PORTS[0]) {
            let listener = enter_at(netns, || TcpListener::bind(("0.0.0.0", ECHO_PORT))).unwrap();
            listener.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            std::thread::spawn(move || {
                                use std::io::{Read, Write};
                                let _ = conn.set_nonblocking(false);
                                let mut buf = [0u8; 64];
                                while let Ok(n) = conn.read(&mut buf) {
                                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
        }
        for &port in udp {
            let socket = enter_at(netns, || UdpSocket::bind(("0.0.0.0", port))).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                }
            }));
        }
        Listeners { stop, threads }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What became of a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Answered.
    Through,
    /// No answer within the timeout: dropped.
    Dropped,
    /// Anything else (no route while the overlay changes mode, refused…).
    Failed(String),
}

/// What becomes of a new connection from the namespace at `from` to `to`.
fn attempt(from: &Path, to: SocketAddr, proto: Proto, timeout: Duration) -> Outcome {
    let quiet =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock);
    enter_at(from, || match proto {
        Proto::Tcp => match TcpStream::connect_timeout(&to, timeout) {
            Ok(_) => Outcome::Through,
            Err(e) if quiet(&e) => Outcome::Dropped,
            Err(e) => Outcome::Failed(format!("TCP {to}: {e}")),
        },
        Proto::Udp => {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.set_read_timeout(Some(timeout)).unwrap();
            let payload = format!("probe-{}-{to}", std::process::id());
            if let Err(e) = socket.send_to(payload.as_bytes(), to) {
                return Outcome::Failed(format!("UDP {to}: {e}"));
            }
            let mut buf = [0u8; 512];
            match socket.recv_from(&mut buf) {
                Ok((n, _)) if &buf[..n] == payload.as_bytes() => Outcome::Through,
                Ok(_) => Outcome::Failed(format!("UDP {to}: a foreign answer")),
                Err(e) if quiet(&e) => Outcome::Dropped,
                Err(e) => Outcome::Failed(format!("UDP {to}: {e}")),
            }
        }
    })
}

/// Whether a new connection gets through; anything but an answer or silence fails the test.
fn probe(from: &Path, to: SocketAddr, proto: Proto, timeout: Duration) -> bool {
    match attempt(from, to, proto, timeout) {
        Outcome::Through => true,
        Outcome::Dropped => false,
        Outcome::Failed(e) => panic!("{e} (a probe is either answered or dropped)"),
    }
}

/// One cell of the matrix.
struct Cell {
    label: String,
    from_ns: PathBuf,
    to: SocketAddr,
    proto: Proto,
    want: bool,
}

struct World {
    lab: Lab,
    replicas: Vec<Replica>,
    outside_ip: Ipv4Addr,
    outside_ns: PathBuf,
    _listeners: Vec<Listeners>,
}

impl World {
    /// Every cell under `doc`: every ordered pair of distinct replicas on both TCP ports and
    /// the UDP port, the outside address to every replica (8080/tcp), every replica to the
    /// outside address.
    fn cells(&self, doc: &Document) -> Vec<Cell> {
        let mut cells = Vec::new();
        let allowed = |from: Endpoint<'_>, to: Endpoint<'_>, t: Traffic| {
            corral_policy::evaluate(doc, &from, &to, t).action == Action::Allow
        };
        for a in &self.replicas {
            for b in &self.replicas {
                if a.ip == b.ip {
                    continue;
                }
                let (x, y) = (
                    Endpoint::Replica(&a.workload),
                    Endpoint::Replica(&b.workload),
                );
                let place = if a.host == b.host {
                    "same host"
                } else {
                    "across hosts"
                };
                for port in TCP_PORTS {
                    cells.push(Cell {
                        label: format!("{} → {} {port}/tcp ({place})", a.name(), b.name()),
                        from_ns: a.netns.clone(),
                        to: SocketAddr::from((b.ip, port)),
                        proto: Proto::Tcp,
                        want: allowed(x, y, Traffic::Port(Proto::Tcp, port)),
                    });
                }
                cells.push(Cell {
                    label: format!("{} → {} {UDP_PORT}/udp ({place})", a.name(), b.name()),
                    from_ns: a.netns.clone(),
                    to: SocketAddr::from((b.ip, UDP_PORT)),
                    proto: Proto::Udp,
                    want: allowed(x, y, Traffic::Port(Proto::Udp, UDP_PORT)),
                });
            }
            let outside = Endpoint::Outside(self.outside_ip);
            let me = Endpoint::Replica(&a.workload);
            cells.push(Cell {
                label: format!("outside → {} 8080/tcp", a.name()),
                from_ns: self.outside_ns.clone(),
                to: SocketAddr::from((a.ip, 8080)),
                proto: Proto::Tcp,
                want: allowed(outside, me, Traffic::Port(Proto::Tcp, 8080)),
            });
            cells.push(Cell {
                label: format!("{} → outside {OUTSIDE_PORT}/tcp", a.name()),
                from_ns: a.netns.clone(),
                to: SocketAddr::from((self.outside_ip, OUTSIDE_PORT)),
                proto: Proto::Tcp,
                want: allowed(me, outside, Traffic::Port(Proto::Tcp, OUTSIDE_PORT)),
            });
        }
        cells
    }

    /// Probes every cell at once; returns the cells whose outcome is not the wanted one.
    fn mismatches(&self, doc: &Document, timeout: Duration) -> Vec<String> {
        let cells = self.cells(doc);
        std::thread::scope(|s| {
            let handles: Vec<_> = cells
                .iter()
                .map(|c| s.spawn(move || attempt(&c.from_ns, c.to, c.proto, timeout)))
                .collect();
            cells
                .iter()
                .zip(handles)
                .filter_map(|(c, h)| {
                    let got = h.join().unwrap();
                    let want = if c.want {
                        Outcome::Through
                    } else {
                        Outcome::Dropped
                    };
                    (got != want).then(|| {
                        format!(
                            "{}: {got:?} but the policy says {}",
                            c.label,
                            if c.want { "allow" } else { "deny" }
                        )
                    })
                })
                .collect()
        })
    }

    /// Waits until every cell matches `doc`; returns how long that took at most: rounds of
    /// short probes, and the end of the first round that sees every cell right is the bound
    /// (a round with the full timeout then confirms).
    fn converge(&self, doc: &Document, what: &str) -> Duration {
        self.converge_since(Instant::now(), doc, what)
    }

    /// As [`World::converge`], measured from `start` (e.g. before `policy apply` ran).
    fn converge_since(&self, start: Instant, doc: &Document, what: &str) -> Duration {
        let deadline = start + Duration::from_secs(60);
        loop {
            let wrong = self.mismatches(doc, Duration::from_millis(600));
            let round = start.elapsed();
            if wrong.is_empty() {
                let confirm = self.mismatches(doc, PROBE_TIMEOUT);
                if confirm.is_empty() {
                    eprintln!(
                        "{what}: all {} cells as the policy says within {round:?}",
                        self.cells(doc).len()
                    );
                    return round;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} cells differ from the policy after 60 s:\n  {}\n{}",
                wrong.len(),
                wrong.join("\n  "),
                self.lab.log_tails(30)
            );
        }
    }

    fn replica(&self, name: &str) -> &Replica {
        self.replicas.iter().find(|r| r.name() == name).unwrap()
    }

    /// Applies `text` as the environment's policy; returns what every host enforces.
    fn apply(&self, text: &str) -> Document {
        let file = self.lab.dir().join("policy.yaml");
        std::fs::write(&file, text).unwrap();
        self.lab
            .server
            .cli_ok(&["policy", "apply", "-f", file.to_str().unwrap()]);
        with_data_rules(text)
    }
}

fn setup() -> World {
    let lab = Lab::up(LabConfig {
        bin: Path::new(corral_bin()),
        hosts: 3,
        server_args: &[],
        docker_firewall: DockerFirewall::Off,
        overlay: &[],
    });
    for (name, text) in stacks() {
        let file = lab.dir().join(format!("{name}.yaml"));
        std::fs::write(&file, text).unwrap();
        lab.server.cli_ok(&[
            "up",
            "-f",
            file.to_str().unwrap(),
            "--wait",
            "--timeout",
            "90s",
        ]);
    }
    let mut replicas = Vec::new();
    for (stack, _) in stacks() {
        let view = &lab.server.cli_json(&["ps", "-p", stack])[0];
        for svc in view["services"].as_array().unwrap() {
            let service = svc["name"].as_str().unwrap().to_owned();
            let r = &svc["replicas"][0];
            let host = r["host"].as_str().unwrap().to_owned();
            let ip: Ipv4Addr = r["ip"].as_str().unwrap().parse().unwrap();
            let label = format!("label=io.corral.service={service}");
            let id = lab
                .dockerd(&host)
                .docker_ok(&["ps", "-q", "--filter", &label])
                .trim()
                .to_owned();
            let pid = lab
                .dockerd(&host)
                .docker_ok(&["inspect", "-f", "{{.State.Pid}}", &id])
                .trim()
                .to_owned();
            let zone = match service.as_str() {
                "web" => "dmz",
                "api" | "worker" => "app",
                _ => "db",
            };
            replicas.push(Replica {
                host,
                workload: Workload {
                    stack: stack.to_owned(),
                    service,
                    labels: BTreeMap::from([("zone".to_owned(), zone.to_owned())]),
                },
                ip,
                netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
            });
        }
    }
    assert_eq!(replicas.len(), 5);
    // The outside: the server's namespace, with a route to each host's containers through
    // that host (as traffic to a published port arrives at the container's own host: the
    // overlay carries only what its hosts' containers send).
    let srv = lab.ns("srv");
    let outside_ip: Ipv4Addr = srv.ip().parse().unwrap();
    for r in &replicas {
        let o = r.ip.octets();
        let subnet = format!("{}.{}.{}.0/24", o[0], o[1], o[2]);
        let via = lab.ns(&r.host).ip().to_owned();
        srv.run_ok(&["ip", "route", "replace", &subnet, "via", &via]);
    }
    let outside_ns = srv.path();
    let mut listeners: Vec<Listeners> = replicas
        .iter()
        .map(|r| Listeners::start(&r.netns, &TCP_PORTS, &[UDP_PORT]))
        .collect();
    listeners.push(Listeners::start(&outside_ns, &[OUTSIDE_PORT], &[]));
    World {
        lab,
        replicas,
        outside_ip,
        outside_ns,
        _listeners: listeners,
    }
}

#[test]
fn a_policy_is_enforced_on_every_host_as_policy_test_says() {
    let mut world = setup();

    // No environment policy: everything reaches everything but what the `data` stack's own
    // rules deny (this also warms up the overlay's sessions).
    world.converge(&with_data_rules(""), "only the data stack's rules");
    assert!(!probe(
        &world.replica("data/cache").netns,
        SocketAddr::from((world.replica("data/db").ip, 8080)),
        Proto::Tcp,
        PROBE_TIMEOUT
    ));

    // Default allow with denies.
    let asked = Instant::now();
    let allow_doc = world.apply(POLICY_ALLOW);
    let took = world.converge_since(asked, &allow_doc, "default allow with denies");
    eprintln!("policy apply → enforced on all hosts: {took:?}");
    // The oracle is not vacuous: the cells the document is about are what it says.
    let web = world.replica("front/web").clone();
    let db = world.replica("data/db").clone();
    let cache = world.replica("data/cache").clone();
    let worker = world.replica("app/worker").clone();
    let api = world.replica("app/api").clone();
    let lab = &world.lab;
    assert!(!probe(
        &web.netns,
        SocketAddr::from((db.ip, 8080)),
        Proto::Tcp,
        PROBE_TIMEOUT
    ));
    assert!(probe(
        &web.netns,
        SocketAddr::from((api.ip, 5432)),
        Proto::Tcp,
        PROBE_TIMEOUT
    ));
    assert!(!probe(
        &worker.netns,
        SocketAddr::from((api.ip, 5432)),
        Proto::Tcp,
        PROBE_TIMEOUT
    ));
    assert!(probe(
        &worker.netns,
        SocketAddr::from((web.ip, 8080)),
        Proto::Tcp,
        PROBE_TIMEOUT
    ));

    // `corral policy test` answers as the hosts enforce, naming the rule.
    let out = lab.cli(&[
        "policy",
        "test",
        "--from",
        "front/web",
        "--to",
        "data/db",
        "--port",
        "8080/tcp",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.starts_with("deny") && text.contains("deny[0] \"dmz-never-to-db\""),
        "{text}"
    );

    // A connection open under the old rules (web → api on the echo port, allowed so far)...
    let mut open = enter_at(&web.netns, || {
        TcpStream::connect_timeout(&SocketAddr::from((api.ip, ECHO_PORT)), PROBE_TIMEOUT)
    })
    .unwrap();
    open.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    let echo = |s: &mut TcpStream, what: &[u8]| -> bool {
        use std::io::{Read, Write};
        let mut buf = [0u8; 16];
        s.write_all(what).is_ok() && s.read(&mut buf).is_ok_and(|n| &buf[..n] == what)
    };
    assert!(echo(&mut open, b"before"), "the open connection works");

    // Default deny with allows; from and to outside the overlay too.
    let asked = Instant::now();
    let deny_doc = world.apply(&policy_deny(world.outside_ip));
    let took = world.converge_since(asked, &deny_doc, "default deny with allows");
    eprintln!("policy change → enforced on all hosts: {took:?}");
    // ... stops at its next packet: the new rules deny it, and it is judged again.
    assert!(
        !echo(&mut open, b"after"),
        "a connection the new policy denies went on"
    );
    drop(open);
    assert!(probe(
        &web.netns,
        SocketAddr::from((api.ip, 8080)),
        Proto::Tcp,
        PROBE_TIMEOUT
    ));
    assert!(!probe(
        &web.netns,
        SocketAddr::from((api.ip, 5432)),
        Proto::Tcp,
        PROBE_TIMEOUT
    ));
    assert!(probe(
        &api.netns,
        SocketAddr::from((cache.ip, 5432)),
        Proto::Tcp,
        PROBE_TIMEOUT
    ));
    let out = lab.cli(&[
        "policy",
        "test",
        "--from",
        "front/web",
        "--to",
        "app/api",
        "--port",
        "8080/tcp",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("allow") && text.contains("\"web-to-api\""),
        "{text}"
    );

    // `corral doctor` shows each host's generation and what the rules dropped.
    for host in ["h1", "h2", "h3"] {
        let reports = lab.server.cli_json(&["doctor", "--host", host]);
        let check = reports[0]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "network policy")
            .unwrap()
            .clone();
        let detail = check["detail"].as_str().unwrap();
        eprintln!("doctor on {host}, network policy: {detail}");
        assert_eq!(check["ok"], true, "{check}");
        assert!(
            detail.starts_with("generation 2 in force: 5 service(s), 5 replica(s)"),
            "{detail}"
        );
        assert!(
            detail.contains("default "),
            "the default dropped probes: {detail}"
        );
    }

    // DNS keeps working under deny: the host's responder is not governed by the policy.
    let web_id = lab
        .dockerd("h1")
        .docker_ok(&["ps", "-q", "--filter", "label=io.corral.service=web"])
        .trim()
        .to_owned();
    let out = lab
        .dockerd("h1")
        .docker(&["exec", &web_id, "nslookup", "api.app"]);
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains(&api.ip.to_string()), "{answer}");

    // `policy show` lists what may flow and why; `policy diff` what the change did.
    let view = lab.server.cli_json(&["policy", "show"]);
    assert_eq!(view["generation"], 2);
    let flow = view["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["from"] == "front/web" && f["to"] == "app/api")
        .unwrap()
        .clone();
    assert_eq!(flow["access"], "8080/tcp", "{flow}");
    assert!(
        flow["reason"].as_str().unwrap().contains("web-to-api"),
        "{flow}"
    );
    let diff = lab.server.cli_json(&["policy", "diff"]);
    assert!(
        diff["changes"].as_array().unwrap().iter().any(|c| {
            c["from"] == "front/web"
                && c["to"] == "app/api"
                && c["before"] == "all traffic"
                && c["after"] == "8080/tcp"
        }),
        "{diff}"
    );

    // The services diagram and the firewall export show the same flows.
    let dot = String::from_utf8(
        lab.cli(&["diagram", "--view", "services", "--format", "dot"])
            .stdout,
    )
    .unwrap();
    assert!(
        dot.contains("\"front/web\" -> \"app/api\" [label=\"8080/tcp\"]"),
        "{dot}"
    );
    assert!(!dot.contains("\"front/web\" -> \"data/db\""), "{dot}");
    let md = String::from_utf8(lab.cli(&["firewall", "--format", "markdown"]).stdout).unwrap();
    assert!(md.contains("## Service to service"), "{md}");
    assert!(md.contains("| front/web | app/api | 8080/tcp |"), "{md}");

    // An agent restarted mid-test never opens a denied path: while h2's agent is stopped and
    // started again, denied connections to h2's replicas (from h1, and on h2 itself) are
    // probed without pause.
    let denied: Vec<(PathBuf, SocketAddr)> = vec![
        (web.netns.clone(), SocketAddr::from((cache.ip, 8080))),
        (api.netns.clone(), SocketAddr::from((cache.ip, 8080))),
        (web.netns.clone(), SocketAddr::from((api.ip, 5432))),
    ];
    for (from, to) in &denied {
        assert!(
            !probe(from, *to, Proto::Tcp, PROBE_TIMEOUT),
            "{to} before the restart"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let probes = Arc::new(AtomicUsize::new(0));
    let hammer: Vec<_> = denied
        .iter()
        .cloned()
        .map(|(from, to)| {
            let (stop, opened, probes) = (stop.clone(), opened.clone(), probes.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if probe(&from, to, Proto::Tcp, Duration::from_millis(300)) {
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    probes.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    world.lab.stop_agent("h2");
    // Same-host traffic the policy allows still flows with the agent down: the rules stay.
    assert!(probe(
        &api.netns,
        SocketAddr::from((cache.ip, 5432)),
        Proto::Tcp,
        PROBE_TIMEOUT
    ));
    world.lab.start_agent("h2");
    wait_until(Duration::from_secs(30), "h2 back", || {
        world.lab.server.host_state("h2").as_deref() == Some("active")
    });
    // The restarted agent enforces the same matrix.
    world.converge(&deny_doc, "after h2's agent restarted");
    stop.store(true, Ordering::Relaxed);
    for h in hammer {
        h.join().unwrap();
    }
    eprintln!(
        "{} probes of denied paths during the restart",
        probes.load(Ordering::Relaxed)
    );
    assert_eq!(
        opened.load(Ordering::Relaxed),
        0,
        "a denied path opened while h2's agent restarted"
    );

    // Rollback restores the previous matrix.
    let asked = Instant::now();
    world.lab.server.cli_ok(&["policy", "rollback"]);
    world.converge_since(asked, &allow_doc, "after rollback");
    let view = world.lab.server.cli_json(&["policy", "show"]);
    assert_eq!(view["generation"], 3);

    // The same rules hold in the vxlan mode.
    world
        .lab
        .server
        .cli_ok(&["env", "set-overlay", "default", "--mode", "vxlan"]);
    let deny_doc = world.apply(&policy_deny(world.outside_ip));
    world.converge(&deny_doc, "vxlan mode, default deny");
}
