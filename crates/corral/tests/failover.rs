//! Three servers on one PostgreSQL (TLS), an agent on the machine's Docker that knows all
//! three, and a stack of 20 replicas rolled out again and again while the active server is
//! killed at a random point of each rollout: every time the stack converges to exactly the
//! desired containers — none lost, none twice, none of an older round left. Then the active
//! server is frozen instead: another takes over, and the frozen one, resumed, exits without
//! acting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use corral_testkit::Postgres;
use serde_json::Value;

/// One server of the deployment: its data dir and port stay; its process comes and goes.
struct Node {
    dir: PathBuf,
    port: u16,
    starts: u32,
    proc: Option<Proc>,
}

impl Node {
    fn new(root: &Path, name: &str) -> Node {
        Node {
            dir: root.join(name),
            port: free_port(),
            starts: 0,
            proc: None,
        }
    }

    fn start(&mut self, datastore: &str) {
        self.starts += 1;
        let listen = format!("127.0.0.1:{}", self.port);
        let data = self.dir.display().to_string();
        let mut args = vec!["server", "--data-dir", &data, "--listen", &listen];
        args.extend(FAST_HEARTBEATS);
        let log = self.dir.with_extension(format!("{}.log", self.starts));
        self.proc = Some(spawn_corral(&args, log, &[("CORRAL_DATASTORE", datastore)]));
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    /// Serving on its own: it holds the write lock.
    fn is_active(&mut self) -> bool {
        match &mut self.proc {
            Some(p) => p.running() && p.log_text().contains("is running"),
            None => false,
        }
    }

    fn is_relaying(&mut self) -> bool {
        match &mut self.proc {
            Some(p) => p.running() && p.log_text().contains("relaying to the active server"),
            None => false,
        }
    }
}

/// A failing test shows what each server said: every start's log, the last lines of each.
impl Drop for Node {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for n in 1..=self.starts {
            let path = self.dir.with_extension(format!("{n}.log"));
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "--- {} (last {} lines) ---\n{}",
                path.display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

fn cli_at(node: &Node, env: &AdminEnv, args: &[&str]) -> std::process::Output {
    cli_to(&node.url(), env, args)
}

fn json_at(node: &Node, env: &AdminEnv, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    let out = cli_at(node, env, &args);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The stack's containers in Docker (all states), as (slot, ROUND, running).
fn containers(stack: &str) -> Vec<(String, String, bool)> {
    let out = docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label=io.corral.stack={stack}"),
    ]);
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["inspect"];
    args.extend(ids.iter().map(String::as_str));
    let out = docker(&args);
    // A container removed between `ps` and `inspect`: look again.
    let Ok(list) = serde_json::from_slice::<Vec<Value>>(&out.stdout) else {
        return containers(stack);
    };
    if list.len() != ids.len() {
        return containers(stack);
    }
    list.iter()
        .map(|c| {
            let slot = c["Config"]["Labels"]["io.corral.slot"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            let round = c["Config"]["Env"]
                .as_array()
                .and_then(|env| {
                    env.iter()
                        .filter_map(Value::as_str)
                        .find_map(|e| e.strip_prefix("ROUND=").map(str::to_owned))
                })
                .unwrap_or_default();
            (slot, round, c["State"]["Running"] == true)
        })
        .collect()
}

/// Exactly `REPLICAS` containers, all running round `round`, slots 1..=REPLICAS once each.
fn converged(stack: &str, round: u32) -> bool {
    let now = containers(stack);
    let mut slots: Vec<u32> = now.iter().filter_map(|c| c.0.parse().ok()).collect();
    slots.sort_unstable();
    now.len() == REPLICAS
        && now
            .iter()
            .all(|(_, r, running)| *running && *r == round.to_string())
        && slots == (1..=REPLICAS as u32).collect::<Vec<_>>()
}

const REPLICAS: usize = 20;

/// Exits promptly on SIGTERM.
const SLEEPER: &str = r#"["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]"#;

fn compose(round: u32) -> String {
    format!(
        "services:\n  web:\n    image: {IMAGE}\n    command: {SLEEPER}\n    environment:\n      ROUND: \"{round}\"\n    deploy:\n      replicas: {REPLICAS}\n      update_config: {{ parallelism: 4, order: stop-first }}\n"
    )
}

/// A pseudo-random number below `n` (the test needs no more than varied kill points).
fn below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos.wrapping_mul(2_654_435_761)) % n
}

/// Writes round `round` of the stack to `file`, deploys it through `node` with `--wait`, and
/// checks it converged exactly.
fn deploy_and_wait(node: &Node, env: &AdminEnv, file: &Path, stack: &str, round: u32) {
    std::fs::write(file, compose(round)).unwrap();
    let file_arg = file.display().to_string();
    let out = cli_at(
        node,
        env,
        &[
            "up",
            "-f",
            &file_arg,
            "-p",
            stack,
            "--wait",
            "--timeout",
            "120s",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(converged(stack, round), "{:?}", containers(stack));
}

fn active_index(nodes: &mut [Node]) -> Option<usize> {
    nodes.iter_mut().position(Node::is_active)
}

#[test]
fn a_rolling_stack_converges_exactly_through_ten_kills_of_the_active_server_and_a_freeze() {
    require_docker();
    let stack = format!("t{}-failover", std::process::id());
    let _cleanup = StackCleanup(stack.clone());
    let pg = Postgres::start();
    let url = pg.database("corral_failover");
    let tmp = tmp();
    let mut nodes = vec![
        Node::new(tmp.path(), "a"),
        Node::new(tmp.path(), "b"),
        Node::new(tmp.path(), "c"),
    ];

    // A makes the deployment; B and C join it with its master key and CA, and relay to it.
    nodes[0].start(&url);
    wait_until(Duration::from_secs(30), "A to serve", || {
        nodes[0].is_active()
    });
    let env = read_admin_env(&nodes[0].dir.join("admin.env")).unwrap();
    for i in 1..3 {
        let from = nodes[0].dir.clone();
        copy_identity(&from, &nodes[i].dir);
        nodes[i].start(&url);
    }
    wait_until(Duration::from_secs(30), "B and C to relay to A", || {
        nodes[1].is_relaying() && nodes[2].is_relaying()
    });

    // One agent on the machine's Docker, given only B: it learns the others from the
    // welcome (the servers' advertised URLs). A token asked of C.
    let token = json_at(&nodes[2], &env, &["token", "create"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let state_dir = tmp.path().join("agent");
    let sd = state_dir.display().to_string();
    let servers: Vec<String> = nodes.iter().map(Node::url).collect();
    let mut agent_args = vec!["agent", "--server", servers[1].as_str()];
    agent_args.extend([
        "--ca-checksum",
        &env.checksum,
        "--state-dir",
        &sd,
        "--name",
        "h1",
        "--overlay-port",
        "0",
        "--no-overlay",
        "--token",
        &token,
    ]);
    let _agent = spawn_corral(&agent_args, tmp.path().join("agent.log"), &[]);
    wait_until(Duration::from_secs(30), "the agent's Docker report", || {
        let hosts = json_at(&nodes[1], &env, &["host", "ls"]);
        hosts.as_array().unwrap().iter().any(|h| {
            h["name"] == "h1" && h["state"] == "active" && h["docker"]["state"] == "available"
        })
    });

    let file = tmp.path().join("stack.yaml");
    let file_arg = file.display().to_string();
    deploy_and_wait(&nodes[1], &env, &file, &stack, 0);

    let mut takeovers = Vec::new();
    let mut convergences = Vec::new();
    for round in 1..=10u32 {
        let active = active_index(&mut nodes).expect("an active server");
        let via = (active + 1 + (round as usize % 2)) % 3;
        std::fs::write(&file, compose(round)).unwrap();
        // The rollout is accepted (through a relaying server)…
        let out = cli_at(&nodes[via], &env, &["up", "-f", &file_arg, "-p", &stack]);
        assert!(
            out.status.success(),
            "round {round}: {}\n{}",
            text(&out),
            nodes[active].log()
        );
        // …and the active server is killed at a random point of it.
        std::thread::sleep(Duration::from_millis(below(3_000)));
        let killed = Instant::now();
        nodes[active].proc.as_mut().unwrap().kill9();
        wait_until(
            Duration::from_secs(30),
            "another server to take over",
            || active_index(&mut nodes).is_some_and(|i| i != active),
        );
        takeovers.push(killed.elapsed().as_secs_f64());
        // The killed one comes back, and relays to the new one.
        nodes[active].start(&url);
        wait_until(
            Duration::from_secs(120),
            &format!("round {round} to converge"),
            || converged(&stack, round),
        );
        convergences.push(killed.elapsed().as_secs_f64());
        wait_until(
            Duration::from_secs(30),
            "the restarted server to relay",
            || nodes[active].is_relaying(),
        );
    }
    println!("takeover after SIGKILL (s): {takeovers:.2?}");
    println!("converged after SIGKILL (s): {convergences:.2?}");
    // Every slot once, all of the last round, nothing else left behind in Docker.
    assert!(converged(&stack, 10), "{:?}", containers(&stack));

    // A freeze: the active server stops (SIGSTOP), another takes over after the idle limit,
    // a rollout goes on without it, and the frozen one, resumed, exits without acting.
    let frozen = active_index(&mut nodes).unwrap();
    let stopped = Instant::now();
    nodes[frozen].proc.as_ref().unwrap().signal("STOP");
    // The frozen process still runs and its log still says it served: look at the others.
    let others_active = |nodes: &mut [Node]| {
        nodes
            .iter_mut()
            .enumerate()
            .position(|(i, n)| i != frozen && n.is_active())
    };
    wait_until(
        Duration::from_secs(30),
        "a takeover from the frozen server",
        || others_active(&mut nodes).is_some(),
    );
    println!(
        "takeover after SIGSTOP: {:.2} s",
        stopped.elapsed().as_secs_f64()
    );
    let via = others_active(&mut nodes).unwrap();
    deploy_and_wait(&nodes[via], &env, &file, &stack, 11);
    let proc = nodes[frozen].proc.as_mut().unwrap();
    proc.signal("CONT");
    assert_fenced_exit(proc);
    // Still exactly the desired containers: the resumed server changed nothing.
    std::thread::sleep(Duration::from_secs(2));
    assert!(converged(&stack, 11), "{:?}", containers(&stack));

    // A relayed tunnel is an authenticated connection on the active server like any other:
    // the cap on unauthenticated connections (they live 15 s) never closes it. Over 20 s the
    // agent does not connect again.
    let agent_log = tmp.path().join("agent.log");
    let connections = || {
        std::fs::read_to_string(&agent_log)
            .unwrap()
            .matches("connected to the server")
            .count()
    };
    let before = connections();
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(connections(), before, "the agent's tunnel was closed");

    // The agent learned every server from its welcome (the URLs the servers advertise).
    let saved = std::fs::read_to_string(state_dir.join("agent.json")).unwrap();
    for s in &servers {
        assert!(saved.contains(s.as_str()), "{saved}");
    }

    // Two servers left running, asked through either: one active, one relaying.
    let relaying = (0..3).find(|&i| i != via && i != frozen).unwrap();
    wait_until(Duration::from_secs(60), "two servers listed", || {
        let listed = json_at(&nodes[relaying], &env, &["server", "ls"]);
        let listed = listed.as_array().unwrap();
        listed.len() == 2
            && listed[0]["active"] == true
            && listed[0]["advertise_url"] == nodes[via].url()
            && listed[1]["advertise_url"] == nodes[relaying].url()
    });

    let out = cli_at(
        &nodes[via],
        &env,
        &["down", "-p", &stack, "--timeout", "60s"],
    );
    assert!(out.status.success(), "{}", text(&out));
}
