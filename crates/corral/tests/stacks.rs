//! Compose stacks end to end: real server and agent processes, the machine's dockerd and the
//! local image `corral-test/busybox:latest` (scripts/test-image.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A stack name unique to this test process.
fn stack_name(name: &str) -> String {
    format!("t{}-{name}", std::process::id())
}

/// Docker container ids with this label (running only unless `all`).
fn docker_ids(label: &str, all: bool) -> Vec<String> {
    let mut args = vec!["ps", "-q", "--no-trunc", "--filter"];
    let filter = format!("label={label}");
    args.push(&filter);
    if all {
        args.push("-a");
    }
    let out = docker(&args);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn env_of(c: &Value, key: &str) -> Option<String> {
    c["Config"]["Env"].as_array().and_then(|env| {
        env.iter()
            .filter_map(Value::as_str)
            .find_map(|e| e.strip_prefix(&format!("{key}=")).map(str::to_owned))
    })
}

fn agent_with_docker(server: &Server, dir: &Path, name: &str) -> Proc {
    let (_, token) = server.token(&[]);
    let agent = start_agent(server, &dir.join(name), name, Some(&token), &[]);
    wait_until(Duration::from_secs(20), "the agent's Docker report", || {
        server
            .hosts()
            .into_iter()
            .any(|h| h["name"] == name && h["docker"]["state"] == "available")
    });
    agent
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn up(server: &Server, file: &str, stack: &str, extra: &[&str]) -> Output {
    let mut args = vec!["up", "-f", file, "-p", stack];
    args.extend(extra);
    server.cli(&args)
}

fn up_ok(server: &Server, file: &str, stack: &str) -> Value {
    let out = up(
        server,
        file,
        stack,
        &["--wait", "--timeout", "90s", "-o", "json"],
    );
    assert!(
        out.status.success(),
        "up failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ps(server: &Server, stack: &str) -> Value {
    server.cli_json(&["ps", "-p", stack])[0].clone()
}

/// `corral stack ls` sums the stack up as `corral ps` shows it (it counts containers by
/// state instead of reading each): call where the stack is settled.
fn listed_as_viewed(server: &Server, view: &Value) {
    let listed = server.cli_json(&["stack", "ls"]);
    let summary = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == view["name"])
        .unwrap_or_else(|| panic!("{} is not listed: {listed}", view["name"]));
    let services = view["services"].as_array().unwrap();
    let sum = |key: &str| -> u64 { services.iter().map(|s| s[key].as_u64().unwrap()).sum() };
    assert_eq!(summary["state"], view["state"], "{summary} / {view}");
    assert_eq!(
        summary["environment"], view["environment"],
        "{summary} / {view}"
    );
    assert_eq!(
        summary["converged"], view["converged"],
        "{summary} / {view}"
    );
    assert_eq!(summary["services"], services.len(), "{summary} / {view}");
    assert_eq!(summary["running"], sum("ready"), "{summary} / {view}");
    assert_eq!(summary["desired"], sum("desired"), "{summary} / {view}");
    assert_eq!(
        summary["updated_at"], view["updated_at"],
        "{summary} / {view}"
    );
}

fn service<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no service {name} in {view}"))
}

/// Running Docker containers of one service of one stack.
fn running(stack: &str, svc: &str) -> Vec<String> {
    // Label filters combine with AND.
    let out = docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=io.corral.stack={stack}"),
        "--filter",
        &format!("label=io.corral.service={svc}"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Exits promptly on SIGTERM, so removals do not wait out the stop grace period.
const SLEEPER: &str = r#"["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]"#;

/// Returns once the reconciler has run a pass that began after the call, by deploying a
/// one-replica probe stack next to `stack` and waiting until it converged (then removing it).
/// A pass goes over every stack and records each stack's decisions (new replicas, removals)
/// before any container of them runs: had the pass that placed the probe meant to change
/// `stack`, `corral ps` and Docker would show it now.
fn after_a_reconciler_pass(server: &Server, dir: &Path, stack: &str) {
    let probe = format!("{stack}-probe");
    let _cleanup = StackCleanup(probe.clone());
    let file = write(
        dir,
        "probe.yaml",
        &format!("services:\n  probe:\n    image: {IMAGE}\n    command: {SLEEPER}\n"),
    );
    up_ok(server, &file, &probe);
    server.cli_ok(&["down", "-p", &probe, "--timeout", "60s"]);
}

#[test]
fn up_ps_scale_logs_and_down_with_volumes() {
    require_docker();
    let t = tmp();
    // Declared first, dropped last: after the server and agents are gone, so nothing
    // recreates what it removes.
    let stack = stack_name("shop");
    let _cleanup = StackCleanup(stack.clone());
    let server = Server::start(&t.path().join("data"), &[]);
    let _agent = agent_with_docker(&server, t.path(), "h1");
    let port = free_port();
    let file = write(
        t.path(),
        "compose.yaml",
        &format!(
            r#"
x-common: &common
  image: {IMAGE}
services:
  db:
    <<: *common
    command: {SLEEPER}
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
  web:
    <<: *common
    command: ["sh", "-c", "echo hello-$$GREETING > /www/index.html; exec httpd -f -p 80 -h /www"]
    environment:
      GREETING: ${{GREETING:-world}}
    labels: {{ team: shop }}
    ports: ["{port}:80"]
    volumes: ["www:/www"]
    depends_on: {{ db: {{ condition: service_healthy }} }}
    restart: always
    stop_grace_period: 2s
  worker:
    <<: *common
    command: {SLEEPER}
    deploy: {{ replicas: 2 }}
    security_opt: ["no-new-privileges:true"]
volumes:
  www: {{}}
"#
        ),
    );
    let out = up(&server, &file, &stack, &["--wait", "--timeout", "90s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("converged"), "{stderr}");
    // The ignored key is named, not dropped silently.
    assert!(stderr.contains("security_opt"), "{stderr}");

    let view = ps(&server, &stack);
    assert_eq!(view["converged"], true, "{view}");
    assert_eq!(service(&view, "worker")["ready"], 2);
    listed_as_viewed(&server, &view);
    assert!(http_get(port).contains("hello-world"), "{}", http_get(port));

    // Labels, network aliases, volume, restart policy and start order, as Docker sees them.
    let web = running(&stack, "web");
    assert_eq!(web.len(), 1);
    let w = inspect(&web[0]);
    let labels = &w["Config"]["Labels"];
    assert_eq!(labels["team"], "shop");
    assert_eq!(labels["io.corral.slot"], "1");
    assert_eq!(w["HostConfig"]["RestartPolicy"]["Name"], "always");
    let net = &w["NetworkSettings"]["Networks"][format!("corral_{stack}")];
    let aliases: Vec<&str> = net["Aliases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(aliases.contains(&"web"), "{aliases:?}");
    assert!(
        aliases.contains(&format!("web.{stack}").as_str()),
        "{aliases:?}"
    );
    assert!(
        w["Mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["Name"] == format!("{stack}_www")),
        "{}",
        w["Mounts"]
    );
    let db = inspect(&running(&stack, "db")[0]);
    assert!(
        w["State"]["StartedAt"].as_str().unwrap() > db["State"]["StartedAt"].as_str().unwrap(),
        "web started before db"
    );

    // Scale up and down.
    server.cli_ok(&[
        "scale",
        &format!("{stack}/worker=4"),
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(running(&stack, "worker").len(), 4);
    server.cli_ok(&[
        "scale",
        &format!("{stack}/worker=1"),
        "--wait",
        "--timeout",
        "60s",
    ]);
    wait_until(Duration::from_secs(30), "scale down to 1", || {
        running(&stack, "worker").len() == 1
    });
    assert_eq!(
        ps(&server, &stack)["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["replicas"].as_array().unwrap().len())
            .sum::<usize>(),
        3
    );
    let bad = server.cli(&["scale", &format!("{stack}/nope=2")]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no service"));

    // Logs of every replica, prefixed.
    let logs = server.cli_ok(&["logs", &format!("{stack}/web")]);
    assert!(
        logs.is_empty() || logs.lines().all(|l| l.starts_with("web.1 | ")),
        "{logs}"
    );

    // stack ls.
    let ls = server.cli_json(&["stack", "ls"]);
    let entry = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stack.as_str())
        .unwrap();
    assert_eq!(entry["services"], 3);
    assert_eq!(entry["desired"], 3);

    // Down with volumes: nothing of the stack remains.
    server.cli_ok(&["down", "-p", &stack, "--volumes", "--timeout", "60s"]);
    assert!(docker_ids(&format!("io.corral.stack={stack}"), true).is_empty());
    assert!(
        !docker(&["network", "inspect", &format!("corral_{stack}")])
            .status
            .success()
    );
    assert!(
        !docker(&["volume", "inspect", &format!("{stack}_www")])
            .status
            .success()
    );
    assert!(
        !server
            .cli_json(&["stack", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == stack.as_str())
    );
}

#[test]
fn a_rolling_update_replaces_replicas_in_batches() {
    require_docker();
    let t = tmp();
    let stack = stack_name("roll");
    let _cleanup = StackCleanup(stack.clone());
    let server = Server::start(&t.path().join("data"), &[]);
    let _agent = agent_with_docker(&server, t.path(), "h1");
    let compose = |v: &str| {
        format!(
            r#"
services:
  api:
    image: {IMAGE}
    command: {SLEEPER}
    environment: {{ VERSION: "{v}" }}
    deploy:
      replicas: 4
      update_config: {{ parallelism: 2, order: stop-first }}
"#
        )
    };
    let file = write(t.path(), "compose.yaml", &compose("1"));
    up_ok(&server, &file, &stack);
    assert_eq!(running(&stack, "api").len(), 4);

    // Watch Docker while the update runs: with stop-first and parallelism 2, at least 2
    // replicas run and never more than 4.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let stack = stack.clone();
        std::thread::spawn(move || {
            let (mut min, mut max) = (usize::MAX, 0);
            while !stop.load(Ordering::Relaxed) {
                let n = running(&stack, "api").len();
                min = min.min(n);
                max = max.max(n);
                std::thread::sleep(Duration::from_millis(50));
            }
            (min, max)
        })
    };
    std::fs::write(&file, compose("2")).unwrap();
    let out = up(&server, &file, &stack, &["--wait", "--timeout", "90s"]);
    stop.store(true, Ordering::Relaxed);
    let (min, max) = watcher.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rolling update of api"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = running(&stack, "api");
    assert_eq!(ids.len(), 4);
    for id in &ids {
        assert_eq!(env_of(&inspect(id), "VERSION").as_deref(), Some("2"));
    }
    assert!(min >= 2, "only {min} replicas ran during the update");
    assert!(max <= 4, "{max} replicas ran during the update");
    let events = server.events();
    assert!(events.iter().any(|e| e["kind"] == "stack_updated"));

    // The same file again changes nothing.
    let before = ids.clone();
    up_ok(&server, &file, &stack);
    let mut after = running(&stack, "api");
    let mut b = before;
    b.sort();
    after.sort();
    assert_eq!(b, after);
    server.cli_ok(&["down", "-p", &stack, "--timeout", "60s"]);
}

#[test]
fn killed_and_removed_containers_come_back() {
    require_docker();
    let t = tmp();
    let stack = stack_name("heal");
    let _cleanup = StackCleanup(stack.clone());
    let server = Server::start(&t.path().join("data"), &[]);
    let _agent = agent_with_docker(&server, t.path(), "h1");
    let file = write(
        t.path(),
        "compose.yaml",
        &format!(
            r#"
services:
  svc:
    image: {IMAGE}
    command: {SLEEPER}
    restart: unless-stopped
  job:
    image: {IMAGE}
    command: ["sh", "-c", "exit 3"]
    restart: "no"
"#
        ),
    );
    // `job` exits and, with restart "no", stays exited: the stack never converges.
    let out = up(&server, &file, &stack, &["--wait", "--timeout", "8s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not converge"), "{err}");
    let view = ps(&server, &stack);
    let job = &service(&view, "job")["replicas"][0];
    assert_eq!(job["actual"], "exited", "{view}");
    assert_eq!(job["exit_code"], 3, "{view}");

    let first = running(&stack, "svc");
    assert_eq!(first.len(), 1);
    // Killed: started again.
    assert!(docker(&["kill", &first[0]]).status.success());
    wait_until(
        Duration::from_secs(30),
        "the killed container to run again",
        || running(&stack, "svc").len() == 1,
    );
    // Removed behind corral's back: replaced by a new container.
    let now = running(&stack, "svc");
    assert!(docker(&["rm", "-f", &now[0]]).status.success());
    wait_until(Duration::from_secs(30), "a replacement", || {
        let ids = running(&stack, "svc");
        ids.len() == 1 && ids[0] != now[0]
    });
    server.cli_ok(&["down", "-p", &stack, "--timeout", "60s"]);
}

#[test]
fn a_lost_host_is_replaced_and_its_stale_replica_removed_when_it_returns() {
    require_docker();
    let t = tmp();
    let stack = stack_name("lost");
    let _cleanup = StackCleanup(stack.clone());
    let mut extra = FAST_HEARTBEATS.to_vec();
    extra.extend(["--reschedule-after", "3s"]);
    let server = Server::start(&t.path().join("data"), &extra);
    // Two hosts (sharing this machine's dockerd).
    let _h1 = agent_with_docker(&server, t.path(), "h1");
    let h2 = agent_with_docker(&server, t.path(), "h2");
    let file = write(
        t.path(),
        "compose.yaml",
        &format!(
            "services:\n  svc:\n    image: {IMAGE}\n    command: {SLEEPER}\n    deploy: {{ replicas: 2 }}\n"
        ),
    );
    up_ok(&server, &file, &stack);
    let view = ps(&server, &stack);
    let replicas = service(&view, "svc")["replicas"]
        .as_array()
        .unwrap()
        .clone();
    let on_h2: Vec<&Value> = replicas.iter().filter(|r| r["host"] == "h2").collect();
    assert_eq!(on_h2.len(), 1, "spread over both hosts: {view}");
    let stale = on_h2[0]["name"].as_str().unwrap().to_owned();

    // h2 goes silent: after the dead-link timeout and the grace period its replica is placed
    // on h1.
    h2.signal("STOP");
    wait_until(Duration::from_secs(30), "the replica to move to h1", || {
        let view = ps(&server, &stack);
        let reps = service(&view, "svc")["replicas"]
            .as_array()
            .unwrap()
            .clone();
        view["converged"] == true && reps.iter().all(|r| r["host"] == "h1")
    });
    assert!(
        server
            .events()
            .iter()
            .any(|e| e["kind"] == "replica_rescheduled")
    );
    // The stale container still runs on h2 (its agent is frozen)…
    assert!(inspect(&stale)["State"]["Running"] == true);
    // …until h2 returns and removes it: two replicas remain, not three.
    h2.signal("CONT");
    wait_until(Duration::from_secs(30), "the stale replica to go", || {
        !docker(&["inspect", &stale]).status.success()
    });
    assert_eq!(running(&stack, "svc").len(), 2);
    // And nothing more happens: a reconciler pass that starts now leaves two replicas.
    after_a_reconciler_pass(&server, t.path(), &stack);
    assert_eq!(running(&stack, "svc").len(), 2);
    assert_eq!(ps(&server, &stack)["converged"], true);
    server.cli_ok(&["down", "-p", &stack, "--timeout", "60s"]);
}

#[test]
fn bad_compose_input_is_refused_and_leaves_nothing_behind() {
    require_docker();
    let t = tmp();
    let stack = stack_name("bad");
    let _cleanup = StackCleanup(stack.clone());
    let server = Server::start(&t.path().join("data"), &[]);
    let _agent = agent_with_docker(&server, t.path(), "h1");
    let svc = |body: &str| format!("services:\n  a:\n    image: {IMAGE}\n{body}");
    let bomb = {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            s.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        s.push_str("services:\n  a:\n    image: x\n    labels: { bomb: *a11 }\n");
        s
    };
    let oversized = format!(
        "{}# {}\n",
        svc(""),
        "x".repeat(corral_compose::limits::MAX_FILE_BYTES)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "malformed YAML",
            "services:\n  a: [\n".into(),
            "bad.yaml:2:",
        ),
        (
            "schema violation",
            svc("    ports: { a: 1 }\n"),
            "services.a.ports",
        ),
        (
            "undefined variable",
            svc("    command: echo ${NOT_SET_ANYWHERE_42}\n"),
            "NOT_SET_ANYWHERE_42",
        ),
        (
            "image missing on the host",
            "services:\n  a:\n    image: corral-test/not-here:1\n".into(),
            "corral-test/not-here:1 (its registry could not resolve it",
        ),
        (
            "unsatisfiable constraint",
            svc("    deploy: { placement: { constraints: [\"node.labels.zone == eu\"] } }\n"),
            "zone",
        ),
        (
            "dependency cycle",
            format!(
                "services:\n  a:\n    image: {IMAGE}\n    depends_on: [b]\n  b:\n    image: {IMAGE}\n    depends_on: [a]\n"
            ),
            "cycle",
        ),
        ("alias bomb", bomb, "alias"),
        ("oversized file", oversized, "limit"),
        (
            "build context without a Dockerfile",
            "services:\n  a:\n    build: .\n".into(),
            "has no Dockerfile",
        ),
    ];
    for (what, text, expect) in cases {
        let file = write(t.path(), "bad.yaml", &text);
        let out = up(&server, &file, &stack, &[]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{what} was accepted");
        assert!(
            err.to_lowercase().contains(&expect.to_lowercase()),
            "{what}: {err}"
        );
        assert!(
            server
                .cli_json(&["stack", "ls"])
                .as_array()
                .unwrap()
                .is_empty(),
            "{what} left a stack"
        );
        assert!(
            docker_ids(&format!("io.corral.stack={stack}"), true).is_empty(),
            "{what} left a container"
        );
    }
}

#[test]
fn a_server_restart_changes_nothing_in_a_running_stack() {
    require_docker();
    let t = tmp();
    let stack = stack_name("restart");
    let _cleanup = StackCleanup(stack.clone());
    let mut server = Server::start(&t.path().join("data"), FAST_HEARTBEATS);
    let _agent = agent_with_docker(&server, t.path(), "h1");
    let file = write(
        t.path(),
        "compose.yaml",
        &format!(
            "services:\n  svc:\n    image: {IMAGE}\n    command: {SLEEPER}\n    deploy: {{ replicas: 3 }}\n"
        ),
    );
    up_ok(&server, &file, &stack);
    let mut before = running(&stack, "svc");
    before.sort();
    server.restart();
    // Back means connected and Docker reported (a host without its report takes no replica).
    wait_until(Duration::from_secs(20), "the agent to return", || {
        server.hosts().into_iter().any(|h| {
            h["name"] == "h1" && h["state"] == "active" && h["docker"]["state"] == "available"
        })
    });
    // The reconciler of the new server process has run with the agent back.
    after_a_reconciler_pass(&server, t.path(), &stack);
    let mut after = running(&stack, "svc");
    after.sort();
    assert_eq!(before, after, "containers changed across a server restart");
    let view = ps(&server, &stack);
    assert_eq!(view["converged"], true);
    listed_as_viewed(&server, &view);
    server.cli_ok(&["down", "-p", &stack, "--timeout", "60s"]);
}

/// A stored definition this build cannot read (a field whose type changed in an upgrade)
/// fails its stack with the reason and touches none of its containers; it never reads as
/// "the service is gone", which would remove its replicas.
#[test]
fn a_definition_that_no_longer_reads_fails_the_stack_and_removes_nothing() {
    require_docker();
    let t = tmp();
    let stack = stack_name("unreadable");
    let other = stack_name("witness");
    let _cleanup = (StackCleanup(stack.clone()), StackCleanup(other.clone()));
    let data = t.path().join("data");
    let mut server = Server::start(&data, &[]);
    let _agent = agent_with_docker(&server, t.path(), "h1");
    let file = write(
        t.path(),
        "compose.yaml",
        &format!(
            "services:\n  web:\n    image: {IMAGE}\n    command: {SLEEPER}\n    deploy: {{ replicas: 2 }}\n"
        ),
    );
    up_ok(&server, &file, &stack);
    up_ok(&server, &file, &other);
    let before = {
        let mut ids = running(&stack, "web");
        ids.sort();
        ids
    };
    assert_eq!(before.len(), 2);

    // The stored definition stops reading: as an earlier version would have written it, in
    // clear, but with `update` a string.
    server.stop();
    server.datastore_exec(&format!(
        "UPDATE services SET spec = '{{\"update\": \"rolling\"}}' WHERE stack_id = (SELECT id FROM stacks WHERE name = '{stack}')"
    ));
    server.start_again();

    wait_until(Duration::from_secs(30), "the stack reported failed", || {
        ps(&server, &stack)["state"] == "failed"
    });
    let view = ps(&server, &stack);
    let error = view["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("service web") && error.contains("cannot be read"),
        "{view}"
    );
    listed_as_viewed(&server, &view);
    assert!(
        server
            .events()
            .iter()
            .any(|e| e["kind"] == "stack_unreadable"),
        "an event says why"
    );
    // Proof that the reconciler has run with the host connected since: the other stack scales.
    wait_until(Duration::from_secs(30), "the host back", || {
        server.host_state("h1").as_deref() == Some("active")
    });
    server.cli_ok(&["scale", &format!("{other}/web=3")]);
    wait_until(Duration::from_secs(60), "the witness stack scaled", || {
        running(&other, "web").len() == 3
    });
    let mut after = running(&stack, "web");
    after.sort();
    assert_eq!(after, before, "no replica of the failed stack was touched");
    let ids: Vec<Value> = server
        .cli_json(&["container", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{stack}_")))
        })
        .cloned()
        .collect();
    assert_eq!(ids.len(), 2, "their rows are kept: {ids:?}");

    // Deploying the stack again stores a definition that reads: it is active again, and
    // since the definition is the same as before, its replicas are kept as they are.
    up_ok(&server, &file, &stack);
    let view = ps(&server, &stack);
    assert_eq!(view["state"], "active", "{view}");
    assert!(view.get("error").is_none(), "{view}");
    let mut healed = running(&stack, "web");
    healed.sort();
    assert_eq!(healed, before, "nothing restarted");
}

/// Environment values (`corral run -e`, Compose `environment:`) reach the container but are
/// never stored in clear: the datastore files hold them only sealed under the master key.
#[test]
fn environment_values_are_sealed_at_rest() {
    require_docker();
    let t = tmp();
    let stack = stack_name("sealed");
    let _cleanup = StackCleanup(stack.clone());
    let data = t.path().join("data");
    let server = Server::start(&data, &[]);
    let _agent = agent_with_docker(&server, t.path(), "h1");
    let secret = format!("s3cret-{}-value", std::process::id());
    let file = write(
        t.path(),
        "compose.yaml",
        &format!(
            "services:\n  db:\n    image: {IMAGE}\n    command: {SLEEPER}\n    environment:\n      DB_PASSWORD: {secret}-compose\n"
        ),
    );
    up_ok(&server, &file, &stack);
    let single = format!("{stack}-single");
    let _single = RemoveContainer(single.clone());
    server.cli_ok(&[
        "run",
        &single,
        "--image",
        IMAGE,
        "-e",
        &format!("API_TOKEN={secret}-run"),
        "--",
        "sleep",
        "600",
    ]);
    // The containers have their values.
    let ids = running(&stack, "db");
    assert_eq!(ids.len(), 1);
    assert_eq!(
        env_of(&inspect(&ids[0]), "DB_PASSWORD").as_deref(),
        Some(format!("{secret}-compose").as_str())
    );
    // The datastore does not hold them in clear.
    let bytes = server.datastore_bytes();
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the datastore holds an environment value in clear"
    );
    server.cli_ok(&["container", "rm", &single]);
}

/// Removes a Docker container by name when dropped.
struct RemoveContainer(String);

impl Drop for RemoveContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.0]);
    }
}

/// A real agent that runs the overlay, registering when the environment's range has no subnet
/// left, is refused before anything is recorded (it could run no stack replica) and keeps
/// trying, saying why; it never gets a configuration, so it never touches the machine's
/// network. (The agent's own guard — a stack replica never starts outside the overlay — is
/// `corral-agent`'s `a_stack_container_waits_for_the_overlay_instead_of_starting_without_it`.)
#[test]
fn an_agent_that_would_join_a_full_overlay_range_is_refused_and_keeps_trying() {
    require_docker();
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    // A /23 holds one host's /24. A host that joins the overlay takes it: here one that speaks
    // the protocol from the test (an overlay key in its hello), so that nothing of the
    // machine's own network is ever configured. Leases outlive connections.
    server.cli_ok(&["env", "set-overlay", "default", "--range", "10.42.0.0/23"]);
    let (_, filler_token) = server.token(&[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let filler = runtime.block_on(dial_agent(
        &server,
        corral_proto::Auth::Register {
            token: filler_token,
            credential: credential(),
        },
        corral_proto::HostFacts {
            name: "filler".into(),
            hostname: "filler".into(),
            overlay_port: Some(51820),
            overlay_public_key: Some("ab".repeat(32)),
            ..Default::default()
        },
    ));
    wait_until(Duration::from_secs(20), "the filler's lease", || {
        server
            .hosts()
            .into_iter()
            .any(|h| h["name"] == "filler" && h["overlay_subnet"].is_string())
    });
    drop(filler);
    let (_, token) = server.token(&[]);
    let waiting = start_overlay_agent(&server, &t.path().join("waiting"), "waiting", &token, &[]);
    wait_until(Duration::from_secs(20), "the refusal, twice", || {
        waiting.log_text().matches("overlay full").count() >= 2
    });
    let log = waiting.log_text();
    assert!(
        log.contains("its overlay range 10.42.0.0/23 is full")
            && log.contains("corral env set-overlay default --range"),
        "{log}"
    );
    assert!(
        !server.hosts().into_iter().any(|h| h["name"] == "waiting"),
        "nothing recorded of the refused host"
    );
}

/// What one stack holds on a host — a published port, a CPU reservation — keeps another
/// stack's replicas off it (`up` refuses, naming the host and what is taken, and changes
/// nothing), while a stack that asks for neither still lands beside it; once the first stack
/// is gone, the same `up` succeeds. Placement sees the other stacks only through what they
/// hold per host.
#[test]
fn another_stacks_port_and_reservation_keep_a_stack_off_the_host_until_it_goes() {
    require_docker();
    let t = tmp();
    let holder = stack_name("holder");
    let wants_port = stack_name("wants-port");
    let wants_cpu = stack_name("wants-cpu");
    let bystander = stack_name("bystander");
    let _cleanups = [
        StackCleanup(holder.clone()),
        StackCleanup(wants_port.clone()),
        StackCleanup(wants_cpu.clone()),
        StackCleanup(bystander.clone()),
    ];
    let server = Server::start(&t.path().join("data"), &[]);
    let _agent = agent_with_docker(&server, t.path(), "h1");
    let cpus = server
        .hosts()
        .into_iter()
        .find(|h| h["name"] == "h1")
        .and_then(|h| h["docker"]["info"]["cpus"].as_u64())
        .expect("h1 reports its CPUs");
    // The holder reserves all but half a CPU; the other asks for one.
    let reserved = format!("{}", cpus as f64 - 0.5);
    let port = free_port();
    let holder_file = write(
        t.path(),
        "holder.yaml",
        &format!(
            "services:\n  web:\n    image: {IMAGE}\n    command: {SLEEPER}\n    ports: [\"127.0.0.1:{port}:80\"]\n    deploy: {{ resources: {{ reservations: {{ cpus: \"{reserved}\" }} }} }}\n"
        ),
    );
    up_ok(&server, &holder_file, &holder);

    let port_file = write(
        t.path(),
        "wants-port.yaml",
        &format!(
            "services:\n  api:\n    image: {IMAGE}\n    command: {SLEEPER}\n    ports: [\"127.0.0.1:{port}:80\"]\n"
        ),
    );
    let cpu_file = write(
        t.path(),
        "wants-cpu.yaml",
        &format!(
            "services:\n  job:\n    image: {IMAGE}\n    command: {SLEEPER}\n    deploy: {{ resources: {{ reservations: {{ cpus: \"1\" }} }} }}\n"
        ),
    );
    let out = up(&server, &port_file, &wants_port, &["--timeout", "30s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("h1 port {port}/tcp taken")),
        "{err}"
    );
    let out = up(&server, &cpu_file, &wants_cpu, &["--timeout", "30s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("h1 has 500m CPU free, needs 1000m"),
        "{err}"
    );
    let stacks = server.cli_ok(&["stack", "ls"]);
    assert!(
        !stacks.contains(&wants_port) && !stacks.contains(&wants_cpu),
        "a refused up changes nothing: {stacks}"
    );
    // Holding a port and CPU, not the host: what asks for neither lands beside it.
    let bystander_file = write(
        t.path(),
        "bystander.yaml",
        &format!("services:\n  idle:\n    image: {IMAGE}\n    command: {SLEEPER}\n"),
    );
    up_ok(&server, &bystander_file, &bystander);

    server.cli_ok(&["down", "-p", &holder, "--timeout", "60s"]);
    up_ok(&server, &port_file, &wants_port);
    up_ok(&server, &cpu_file, &wants_cpu);
    assert_eq!(running(&wants_port, "api").len(), 1);
    assert_eq!(running(&wants_cpu, "job").len(), 1);
}
