//! Commands through the tunnel: delivery, redelivery after a reconnect, replies accepted only
//! from the addressed host and only once; `corral doctor` end to end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use corral_agent::Tunnel;
use corral_proto::{AgentMessage, Auth, Command, CommandResult, HostFacts, ServerMessage};

async fn raw_agent(server: &Server, token: &str, credential: &str, name: &str) -> Tunnel {
    let auth = Auth::Register {
        token: token.into(),
        credential: credential.into(),
    };
    let facts = HostFacts {
        name: name.into(),
        hostname: name.into(),
        ..Default::default()
    };
    dial_agent(server, auth, facts).await
}

async fn next_command(t: &mut Tunnel) -> Command {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), t.recv()).await {
            Ok(Ok(ServerMessage::Command(c))) => return c,
            Ok(Ok(_)) => continue,
            other => panic!("no command: {other:?}"),
        }
    }
}

/// Reports a Docker engine that answers, so the scheduler places replicas on the raw agent's
/// host; returns once the server shows it.
async fn docker_available(server: &Server, a: &mut Tunnel, name: &str) {
    a.send(&AgentMessage::Report(corral_proto::Report::Inventory {
        docker: Some(corral_proto::DockerInfo {
            version: "20.10".into(),
            api_version: "1.41".into(),
            storage_driver: "overlay2".into(),
            cpus: 2,
            memory_bytes: 1 << 30,
        }),
        docker_error: None,
        containers: Vec::new(),
    }))
    .await
    .unwrap();
    wait_until(Duration::from_secs(10), "the host's Docker report", || {
        server
            .hosts()
            .iter()
            .any(|h| h["name"] == name && h["docker"]["state"] == "available")
    });
}

/// `corral up` of one service of `replicas` replicas on the raw agent's host, the image check
/// (the first command: `pull_policy: never` leaves no tag to resolve) answered with `answer`;
/// returns the CLI's output.
async fn up_answering_the_image_check(
    server: &Server,
    a: &mut Tunnel,
    dir: &std::path::Path,
    project: &str,
    replicas: usize,
    answer: serde_json::Value,
) -> std::process::Output {
    let file = dir.join("compose.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n  web:\n    image: corral-test/busybox:latest\n    pull_policy: never\n    deploy: {{ replicas: {replicas} }}\n"
        ),
    )
    .unwrap();
    let up = cli_in_background(server, &["up", "-f", file.to_str().unwrap(), "-p", project]);
    let check = next_command(a).await;
    assert_eq!(check.body.kind(), corral_proto::CommandKind::ImageCheck);
    a.send(&AgentMessage::Reply {
        command_id: check.id,
        result: CommandResult::Ok { value: answer },
    })
    .await
    .unwrap();
    up.join().unwrap()
}

/// Runs the CLI with the server's admin credentials on a thread of its own.
fn cli_in_background(
    server: &Server,
    args: &[&str],
) -> std::thread::JoinHandle<std::process::Output> {
    let env = server.env.clone();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    std::thread::spawn(move || {
        std::process::Command::new(corral_bin())
            .args(&args)
            .env("CORRAL_SERVER", &env.server)
            .env("CORRAL_API_KEY", &env.api_key)
            .env("CORRAL_CA_CHECKSUM", &env.checksum)
            .output()
            .unwrap()
    })
}

fn doctor_in_background(
    server: &Server,
    host: &str,
) -> std::thread::JoinHandle<std::process::Output> {
    cli_in_background(server, &["doctor", "--host", host, "-o", "json"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_count_only_from_the_addressed_host_and_only_once() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let mut a = raw_agent(&server, &token, &credential(), "host-a").await;
    let b_cred = credential();
    let mut b = raw_agent(&server, &token, &b_cred, "host-b").await;

    let waiting = doctor_in_background(&server, "host-b");
    let command = next_command(&mut b).await;
    assert_eq!(command.body.kind(), corral_proto::CommandKind::Doctor);

    // Host A forges a reply for B's command: dropped and recorded.
    a.send(&AgentMessage::Reply {
        command_id: command.id.clone(),
        result: CommandResult::Ok {
            value: serde_json::json!([{ "name": "forged", "ok": true, "detail": "from A" }]),
        },
    })
    .await
    .unwrap();
    // A reply for a command that never existed.
    a.send(&AgentMessage::Reply {
        command_id: "cmd-000000000000".into(),
        result: CommandResult::Failed {
            message: "?".into(),
        },
    })
    .await
    .unwrap();

    // B's disconnects before answering; the command is delivered again when it comes back.
    drop(b);
    let mut b = raw_agent(&server, &token, &b_cred, "host-b").await;
    let again = next_command(&mut b).await;
    assert_eq!(again.id, command.id, "redelivered after reconnect");

    let genuine = CommandResult::Ok {
        value: serde_json::json!([{ "name": "genuine", "ok": true, "detail": "from B" }]),
    };
    b.send(&AgentMessage::Reply {
        command_id: command.id.clone(),
        result: genuine.clone(),
    })
    .await
    .unwrap();
    let out = waiting.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports[0]["checks"][0]["name"], "genuine", "{reports}");

    // B replays its reply: dropped and recorded.
    b.send(&AgentMessage::Reply {
        command_id: command.id.clone(),
        result: genuine,
    })
    .await
    .unwrap();
    wait_until(Duration::from_secs(10), "the security events", || {
        let kinds: Vec<String> = server
            .events()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect();
        ["forged_reply", "unknown_reply", "replayed_reply"]
            .iter()
            .all(|k| kinds.iter().any(|x| x == k))
    });
    let forged = server
        .events()
        .into_iter()
        .find(|e| e["kind"] == "forged_reply")
        .unwrap();
    assert!(forged["message"].as_str().unwrap().contains(&command.id));
    // Both raw agents are still connected: a bad reply is dropped, not fatal.
    assert_eq!(server.host_state("host-a").as_deref(), Some("active"));
    assert_eq!(server.host_state("host-b").as_deref(), Some("active"));
}

#[test]
fn doctor_runs_the_checks_on_the_host_and_shows_fixes() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let mut agent = start_agent(&server, &t.path().join("a"), "checked", Some(&token), &[]);
    wait_until(Duration::from_secs(20), "checked active", || {
        server.host_state("checked").as_deref() == Some("active")
    });
    let out = server.cli(&["doctor", "-o", "json"]);
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = reports[0]["checks"].as_array().unwrap();
    let by_name = |n: &str| checks.iter().find(|c| c["name"] == n).unwrap().clone();
    assert_eq!(by_name("server tunnel")["ok"], true);
    assert_eq!(by_name("no listening TCP port")["ok"], true);
    assert_eq!(by_name("clock")["ok"], true, "same machine, same clock");
    let overlay = by_name("overlay");
    assert_eq!(overlay["ok"], true);
    assert!(
        overlay["detail"]
            .as_str()
            .unwrap()
            .contains("not in the overlay"),
        "{overlay}"
    );
    let has_nft = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert_eq!(by_name("nft")["ok"], has_nft);
    let docker_ok = std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok();
    assert_eq!(by_name("docker socket")["ok"], docker_ok);
    let failures = checks.iter().filter(|c| c["ok"] == false).count();
    assert_eq!(
        out.status.success(),
        failures == 0,
        "exit status follows the checks"
    );
    for c in checks {
        assert_eq!(
            c["ok"] == false,
            c.get("fix").is_some(),
            "every failure has a fix: {c}"
        );
    }
    // The table form names the host and prints fixes.
    let text = String::from_utf8_lossy(&server.cli(&["doctor"]).stdout).into_owned();
    assert!(text.starts_with("checked (active)"), "{text}");
    if failures > 0 {
        assert!(text.contains("fix:"), "{text}");
    }

    // A disconnected host fails the tunnel check with the fix, without waiting.
    agent.stop();
    wait_until(Duration::from_secs(10), "checked disconnected", || {
        server.host_state("checked").as_deref() == Some("disconnected")
    });
    let out = server.cli(&["doctor", "--host", "checked", "-o", "json"]);
    assert!(!out.status.success());
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports[0]["state"], "disconnected");
    let fix = reports[0]["checks"][0]["fix"].as_str().unwrap();
    assert!(fix.contains("outbound 8443/tcp"), "{fix}");
}

/// An agent in the overlay (it binds its overlay socket: an agent with `--no-overlay` binds
/// nothing) whose Docker engine does not answer. Configuring the overlay starts with Docker, so
/// it never gets further and the machine's network is left as it is (no TUN device, routes or
/// bridge; only IPv4 forwarding, which the machine's dockerd turned on already), while its
/// overlay socket answers the probes.
fn overlay_agent_without_docker(
    server: &Server,
    dir: &std::path::Path,
    name: &str,
    token: &str,
) -> Proc {
    let nowhere = format!("unix://{}/no-docker.sock", dir.display());
    start_overlay_agent(server, dir, name, token, &["--docker-host", &nowhere])
}

#[test]
fn doctor_probes_the_overlay_between_hosts_in_both_directions() {
    // The second half blocks the overlay with nft.
    require::root("to load an nftables table");
    require::tool("nft", "nftables");
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let _a = overlay_agent_without_docker(&server, &t.path().join("a"), "peer-a", &token);
    let _b = overlay_agent_without_docker(&server, &t.path().join("b"), "peer-b", &token);
    wait_until(Duration::from_secs(20), "both peers active", || {
        server.host_state("peer-a").as_deref() == Some("active")
            && server.host_state("peer-b").as_deref() == Some("active")
    });
    let doctor = |host: &str| -> Vec<serde_json::Value> {
        let out = server.cli(&["doctor", "--host", host, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["checks"].as_array().unwrap().clone()
    };
    let checks = doctor("peer-a");
    let find = |checks: &[serde_json::Value], name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {checks:?}"))
    };
    assert_eq!(find(&checks, "overlay socket")["ok"], true);
    assert_eq!(find(&checks, "overlay to peer-b")["ok"], true, "{checks:?}");
    assert_eq!(
        find(&checks, "overlay from peer-b")["ok"],
        true,
        "{checks:?}"
    );

    // Drop UDP to peer-b's overlay port (in a table of the test's own): both directions that
    // end at peer-b fail, with the rule that would fix them.
    let detail = find(&doctor("peer-b"), "overlay socket")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    let port: u16 = detail
        .strip_prefix("listening on ")
        .and_then(|d| d.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let table = format!("corral_test_{}", std::process::id());
    let script = t.path().join("block.nft");
    std::fs::write(
        &script,
        format!("table inet {table} {{\n chain input {{\n  type filter hook input priority -10; policy accept;\n  udp dport {port} drop\n }}\n}}\n"),
    )
    .unwrap();
    assert!(
        std::process::Command::new("nft")
            .arg("-f")
            .arg(&script)
            .status()
            .unwrap()
            .success()
    );
    let checks = doctor("peer-a");
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "inet", &table])
        .status();
    let to_b = find(&checks, "overlay to peer-b");
    assert_eq!(to_b["ok"], false, "{to_b}");
    assert!(
        to_b["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("allow {port}/udp into peer-b")),
        "{to_b}"
    );
    assert_eq!(
        find(&checks, "overlay from peer-b")["ok"],
        true,
        "the other direction is open"
    );
}

/// A reply that does not read as its command's reply type fails the operation: an image check
/// answered with something other than a list of missing images refuses `corral up`, where it
/// once counted as "nothing missing" and stored the stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_reply_fails_the_operation_and_stores_nothing() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let mut a = raw_agent(&server, &token, &credential(), "host-a").await;
    docker_available(&server, &mut a, "host-a").await;
    let answer = serde_json::json!({ "missing": "nothing, honestly" });
    let out = up_answering_the_image_check(&server, &mut a, t.path(), "shop", 1, answer).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up must fail: {stderr}");
    assert!(
        stderr.contains("host-a cannot check its images") && stderr.contains("could not be read"),
        "{stderr}"
    );
    let stacks = server.cli_json(&["stack", "ls"]);
    assert_eq!(stacks, serde_json::json!([]), "nothing stored");
}

/// A server, one raw agent whose host has Docker, and a stack of `replicas` replicas deployed
/// on it (the image check answered, no run answered yet).
async fn stack_on_one_raw_host(
    project: &str,
    replicas: usize,
) -> (tempfile::TempDir, Server, Tunnel) {
    stack_on_one_raw_host_with(project, replicas, &[]).await
}

/// As [`stack_on_one_raw_host`], the server started with `server_args`.
async fn stack_on_one_raw_host_with(
    project: &str,
    replicas: usize,
    server_args: &[&str],
) -> (tempfile::TempDir, Server, Tunnel) {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), server_args);
    let (_, token) = server.token(&[]);
    let mut a = raw_agent(&server, &token, &credential(), "host-a").await;
    docker_available(&server, &mut a, "host-a").await;
    let out = up_answering_the_image_check(
        &server,
        &mut a,
        t.path(),
        project,
        replicas,
        serde_json::json!([]),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (t, server, a)
}

/// The reply of a host that ran `spec` as its `n`th container: running.
fn running_reply(command_id: &str, spec: &corral_proto::ContainerSpec, n: usize) -> AgentMessage {
    let status = corral_proto::ContainerStatus {
        corral_id: spec.corral_id.clone(),
        docker_id: format!("{n:064x}"),
        name: spec.name.clone(),
        state: corral_proto::ContainerState::Running,
        exit_code: None,
        health: None,
        restart_count: 0,
        ip: None,
    };
    AgentMessage::Reply {
        command_id: command_id.to_owned(),
        result: CommandResult::Ok {
            value: serde_json::to_value(status).unwrap(),
        },
    }
}

/// A burst of commands for one connected host all arrive, without a reconnect: the session
/// reads them from the datastore in batches instead of a queue that dropped what did not fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_commands_all_reach_a_connected_host() {
    const REPLICAS: usize = 300;
    let (_t, _server, mut a) = stack_on_one_raw_host("burst", REPLICAS).await;
    // Nothing is answered, so nothing is retried: every replica's run command arrives once.
    let mut slots = std::collections::BTreeSet::new();
    while slots.len() < REPLICAS {
        let c = next_command(&mut a).await;
        match c.body {
            corral_proto::CommandBody::ContainerRun(spec) => {
                let slot = spec.labels[corral_proto::labels::SLOT].clone();
                assert!(slots.insert(slot.clone()), "slot {slot} delivered twice");
            }
            other => panic!("unexpected command {other:?}"),
        }
    }
    assert_eq!(slots.len(), REPLICAS);
}

/// A host with more commands than a session keeps unanswered (512) is sent that many, and
/// the rest wait in the datastore until it answers: then they follow, each once, with
/// nothing sent twice on the one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_is_sent_at_most_a_window_of_unanswered_commands() {
    const REPLICAS: usize = 700;
    const WINDOW: usize = 512;
    let (_t, server, mut a) = stack_on_one_raw_host("window", REPLICAS).await;
    let mut runs = Vec::new();
    while runs.len() < WINDOW {
        runs.push(next_command(&mut a).await);
    }
    // The server says so: a full window in flight, the rest pending, and nothing more comes.
    wait_until(Duration::from_secs(10), "the window counted", || {
        let now = scrape(&server);
        value(&now, "corral_commands_in_flight", &[]) == WINDOW as f64
            && value(&now, "corral_commands_pending", &[]) == (REPLICAS - WINDOW) as f64
    });
    let quiet_until = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(message) = tokio::time::timeout_at(quiet_until, a.recv()).await {
        if let Ok(ServerMessage::Command(c)) = message {
            panic!("a command came past the window: {}", c.id);
        }
    }
    // Answering brings the rest, each replica's run once.
    let mut slots = std::collections::BTreeSet::new();
    while slots.len() < REPLICAS {
        let c = match runs.pop() {
            Some(c) => c,
            None => next_command(&mut a).await,
        };
        let corral_proto::CommandBody::ContainerRun(spec) = &c.body else {
            panic!("unexpected command {:?}", c.body);
        };
        let slot = spec.labels[corral_proto::labels::SLOT].clone();
        assert!(slots.insert(slot.clone()), "slot {slot} delivered twice");
        a.send(&running_reply(&c.id, spec, slots.len()))
            .await
            .unwrap();
    }
    wait_until(Duration::from_secs(10), "every run answered", || {
        let now = scrape(&server);
        value(&now, "corral_commands_in_flight", &[]) == 0.0
            && value(&now, "corral_commands_pending", &[]) == 0.0
    });
}

/// Finished commands are deleted once their deadline is older than `--command-retention`,
/// sealed payloads and all: the metric counts them, a repeat of a deleted command's reply is
/// then refused as unknown (no longer as replayed), the host stays connected and the
/// replicas it runs are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_commands_are_deleted_once_their_retention_has_passed() {
    const REPLICAS: usize = 3;
    let (_t, server, mut a) = stack_on_one_raw_host_with(
        "pruned",
        REPLICAS,
        &["--command-retention", "1s", "--command-ttl", "2s"],
    )
    .await;
    let mut answered = Vec::new();
    while answered.len() < REPLICAS {
        let c = next_command(&mut a).await;
        let corral_proto::CommandBody::ContainerRun(spec) = &c.body else {
            continue;
        };
        let reply = running_reply(&c.id, spec, answered.len() + 1);
        a.send(&reply).await.unwrap();
        answered.push(reply);
    }
    // The image check and the runs: deleted within the retention, the deadline and a sweep.
    wait_until(
        Duration::from_secs(30),
        "the finished commands pruned",
        || value(&scrape(&server), "corral_commands_pruned", &[]) >= (REPLICAS + 1) as f64,
    );
    assert!(server.log().contains("pruned finished commands"));
    let AgentMessage::Reply { command_id, .. } = &answered[0] else {
        unreachable!()
    };
    a.send(&answered[0]).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the repeat refused as unknown",
        || {
            server.events().iter().any(|e| {
                e["kind"] == "unknown_reply" && e["message"].as_str().unwrap().contains(command_id)
            })
        },
    );
    assert!(
        !server
            .events()
            .iter()
            .any(|e| e["kind"] == "replayed_reply"),
        "the command is gone, not remembered as answered"
    );
    assert_eq!(server.host_state("host-a").as_deref(), Some("active"));
    let view = server.cli_json(&["ps", "-p", "pruned"]);
    let ready: u64 = view[0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ready"].as_u64().unwrap())
        .sum();
    assert_eq!(ready, REPLICAS as u64, "{view}");
}

type Exposition = openmetrics_parser::MetricsExposition<
    openmetrics_parser::OpenMetricsType,
    openmetrics_parser::OpenMetricsValue,
>;

/// `/metrics` read by a strict OpenMetrics parser (a grammar of the format: a line it does not
/// accept fails the whole scrape).
fn scrape(server: &Server) -> Exposition {
    let text = server.metrics_text();
    openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("the metrics do not parse: {e:?}\n{text}"))
}

/// The value of family `name`'s samples whose labels include `labels`, summed (0 when there
/// is none yet; a histogram's value is its count).
fn value(metrics: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    use openmetrics_parser::OpenMetricsValue as V;
    let Some(family) = metrics.families.get(name) else {
        return 0.0;
    };
    family
        .iter_samples()
        .filter(|s| {
            let set = s.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|s| match &s.value {
            V::Counter(c) => c.value.as_f64(),
            V::Gauge(n) | V::Unknown(n) => n.as_f64(),
            V::Histogram(h) => h.count.unwrap_or(0) as f64,
            other => panic!("{name}: unexpected {other:?}"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_parse_and_move_when_tunnels_commands_and_replicas_do() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let mut a = raw_agent(&server, &token, &credential(), "host-a").await;
    docker_available(&server, &mut a, "host-a").await;
    let before = scrape(&server);
    assert_eq!(value(&before, "corral_agents_connected", &[]), 1.0);
    assert_eq!(value(&before, "corral_tunnel_connects", &[]), 1.0);
    assert_eq!(value(&before, "corral_hosts", &[]), 1.0);
    assert!(value(&before, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(value(&before, "process_cpu_seconds", &[]) > 0.0);
    // The listing `docker_available` polled was counted under its route's template.
    assert!(
        value(
            &before,
            "corral_api_requests",
            &[("route", "/v1/hosts"), ("method", "GET"), ("status", "200")]
        ) >= 1.0
    );
    assert!(
        value(
            &before,
            "corral_api_request_duration_seconds",
            &[("route", "/v1/hosts")]
        ) >= 1.0
    );

    // A stack of two replicas: one image check answered, two container runs sent, unanswered.
    let out =
        up_answering_the_image_check(&server, &mut a, t.path(), "m", 2, serde_json::json!([]))
            .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..2 {
        let run = next_command(&mut a).await;
        assert_eq!(run.body.kind(), corral_proto::CommandKind::ContainerRun);
    }
    let after = scrape(&server);
    let kind = |k| [("kind", k)];
    assert_eq!(
        value(&after, "corral_commands_submitted", &kind("image_check")),
        1.0
    );
    assert_eq!(
        value(&after, "corral_commands_submitted", &kind("container_run")),
        2.0
    );
    assert_eq!(
        value(
            &after,
            "corral_command_duration_seconds",
            &[("kind", "image_check"), ("outcome", "done")]
        ),
        1.0
    );
    assert_eq!(value(&after, "corral_commands_in_flight", &[]), 2.0);
    assert_eq!(value(&after, "corral_commands_pending", &[]), 0.0);
    assert_eq!(
        value(&after, "corral_reconciler_actions", &kind("run")),
        2.0
    );
    assert!(value(&after, "corral_reconciler_pass_duration_seconds", &[]) >= 1.0);
    let ups: Vec<String> = after.families["corral_api_requests"]
        .iter_samples()
        .map(|s| s.get_labelset().unwrap())
        .filter(|l| {
            l.get_label_value("route") == Some("/v1/stacks")
                && l.get_label_value("method") == Some("POST")
        })
        .filter_map(|l| l.get_label_value("status").map(str::to_owned))
        .collect();
    assert!(
        ups.iter().any(|s| s.starts_with('2')),
        "the `up` was counted: {ups:?}"
    );
    // A path no route has is counted as such, never by its own text.
    let _ = server.cli(&["host", "inspect", "no-such-host"]);
    let routes: Vec<String> = scrape(&server).families["corral_api_requests"]
        .iter_samples()
        .filter_map(|s| {
            s.get_labelset()
                .unwrap()
                .get_label_value("route")
                .map(str::to_owned)
        })
        .collect();
    assert!(routes.iter().any(|r| r == "/v1/hosts/{id}"), "{routes:?}");
    assert!(
        !routes.iter().any(|r| r.contains("no-such-host")),
        "a path, not a route template, became a label: {routes:?}"
    );

    // The agent goes: its session ends with no reason of the server's.
    drop(a);
    wait_until(Duration::from_secs(10), "the disconnect counted", || {
        let now = scrape(&server);
        value(
            &now,
            "corral_tunnel_disconnects",
            &[("reason", "agent_gone")],
        ) == 1.0
            && value(&now, "corral_agents_connected", &[]) == 0.0
    });
    // Its two unanswered runs are no longer in flight: they wait for its next connection.
    let gone = scrape(&server);
    assert_eq!(value(&gone, "corral_commands_in_flight", &[]), 0.0);
    assert_eq!(value(&gone, "corral_commands_pending", &[]), 2.0);
    // A registration with a bad token is refused before any session, and counted so.
    let refused = pinned_dialer(&server)
        .connect(corral_agent::dial::hello(
            corral_proto::Auth::Register {
                token: "not-a-token".into(),
                credential: credential(),
            },
            HostFacts {
                name: "intruder".into(),
                hostname: "intruder".into(),
                ..Default::default()
            },
        ))
        .await;
    assert!(refused.is_err());
    let last = scrape(&server);
    assert_eq!(
        value(&last, "corral_tunnel_refusals", &[("reason", "bad_token")]),
        1.0,
        "{:?}",
        last.families.get("corral_tunnel_refusals")
    );
}

/// `corral bench deploy` end to end on a small scale: simulated hosts answer the commands a
/// deploy sends, two stacks (the server's per-stack limit lowered to 100) reach every replica
/// running, each `container_run` went out once, `down` removes them, and the simulated hosts
/// are removed afterwards.
#[test]
fn bench_deploy_runs_every_replica_once_on_simulated_hosts_and_cleans_up() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &["--max-stack-replicas", "100"]);
    let report = server.cli_json(&[
        "bench",
        "deploy",
        "--agents",
        "4",
        "--replicas",
        "150",
        "--stack-replicas",
        "100",
        "--run-delay",
        "20ms",
        "--timeout",
        "60s",
    ]);
    assert_eq!(report["ready"], 150, "{report}");
    assert_eq!(report["stacks"], 2, "{report}");
    assert_eq!(report["duplicate_runs"], 0, "{report}");
    assert!(report["down_seconds"].is_number(), "{report}");
    assert!(report["containers_per_second"].as_f64().unwrap() > 0.0);
    let metrics = server.metrics_text();
    assert!(
        metrics.contains("corral_commands_submitted_total{kind=\"container_run\"} 150"),
        "one container_run per replica"
    );
    assert!(
        server
            .cli_json(&["stack", "ls"])
            .as_array()
            .unwrap()
            .is_empty(),
        "the stacks are gone"
    );
    assert!(
        server.hosts().iter().all(|h| h["state"] == "removed"),
        "the simulated hosts are removed"
    );
}
