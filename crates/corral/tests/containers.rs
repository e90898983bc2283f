//! Real containers through the tunnel: real server and agent processes against a real dockerd,
//! with the local image `corral-test/busybox:latest` (built by scripts/test-image.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use corral_testkit::{DockerFirewall, Dockerd, Netns};

/// A container name unique to this test process.
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Removes the Docker containers a test made, by corral container id label, when dropped.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = docker(&["rm", "-f", name]);
        }
    }
}

fn containers(server: &Server) -> Vec<serde_json::Value> {
    server
        .cli_json(&["container", "ls"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn actual(server: &Server, name: &str) -> Option<String> {
    containers(server)
        .into_iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["actual"].as_str().map(str::to_owned))
}

/// Runs a container on `host` and removes it: proof that a command sent now reached the
/// agent and was carried out.
fn command_after_reconnection_runs(server: &Server, host: &str) {
    let probe = unique(&format!("probe-{host}"));
    let _cleanup = Cleanup(vec![probe.clone()]);
    // Exits at once on SIGTERM: the removal fits a short command lifetime.
    let view = server.cli_json(&[
        "run",
        &probe,
        "--image",
        IMAGE,
        "--host",
        host,
        "--",
        "sh",
        "-c",
        "trap 'exit 0' TERM; while :; do sleep 1 & wait; done",
    ]);
    assert_eq!(view["actual"], "running", "{view}");
    server.cli_ok(&["container", "rm", &probe]);
}

fn agent_with_docker(server: &Server, t: &std::path::Path, name: &str) -> Proc {
    let (_, token) = server.token(&[]);
    let agent = start_agent(server, &t.join(name), name, Some(&token), &[]);
    wait_until(Duration::from_secs(20), "the agent", || {
        server.host_state(name).as_deref() == Some("active")
    });
    wait_until(Duration::from_secs(20), "the agent's Docker report", || {
        server
            .hosts()
            .into_iter()
            .any(|h| h["name"] == name && h["docker"]["state"] == "available")
    });
    agent
}

#[test]
fn run_stop_start_rm_with_labels_ports_env_and_command() {
    require_docker();
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let _agent = agent_with_docker(&server, t.path(), "dock-1");
    let name = unique("web");
    let _cleanup = Cleanup(vec![name.clone()]);
    let port = free_port();
    let publish = format!("{port}:80");
    let view = server.cli_json(&[
        "run",
        &name,
        "--image",
        IMAGE,
        "--host",
        "dock-1",
        "-e",
        "GREETING=hello",
        "-p",
        &publish,
        "--label",
        "tier=web",
        "--",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    assert_eq!(view["actual"], "running", "{view}");
    assert_eq!(view["host"], "dock-1");
    let id = view["id"].as_str().unwrap().to_owned();

    let c = inspect(&name);
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["io.corral.managed"], "true");
    assert_eq!(labels["io.corral.container-id"], id.as_str());
    assert_eq!(labels["io.corral.environment"], "default");
    assert_eq!(labels["tier"], "web");
    assert!(
        c["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "GREETING=hello")
    );
    assert_eq!(
        c["Config"]["Cmd"],
        serde_json::json!(["httpd", "-f", "-p", "80", "-h", "/www"])
    );
    assert_eq!(
        c["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"],
        port.to_string()
    );
    assert!(http_get(port).contains("hello from corral"));

    // The host reports Docker's details.
    let host = server.cli_json(&["host", "inspect", "dock-1"]);
    let info = &host["docker"]["info"];
    assert!(info["version"].as_str().unwrap().len() > 2, "{host}");
    assert!(info["cpus"].as_u64().unwrap() >= 1 && info["memory_bytes"].as_u64().unwrap() > 0);
    assert!(!info["storage_driver"].as_str().unwrap().is_empty());

    server.cli_ok(&["container", "stop", &name]);
    assert_eq!(inspect(&name)["State"]["Running"], false);
    let row = containers(&server)
        .into_iter()
        .find(|c| c["name"] == name.as_str())
        .unwrap();
    assert_eq!(row["desired"], "stopped");
    assert_eq!(row["actual"], "exited");
    server.cli_ok(&["container", "start", &name]);
    assert_eq!(inspect(&name)["State"]["Running"], true);
    assert_eq!(actual(&server, &name).as_deref(), Some("running"));
    let table = server.cli_ok(&["container", "ls"]);
    assert!(
        table.starts_with("NAME") && table.contains(&name),
        "{table}"
    );

    server.cli_ok(&["container", "rm", &name]);
    assert!(
        !docker(&["inspect", &name]).status.success(),
        "gone from Docker"
    );
    assert!(actual(&server, &name).is_none(), "gone from corral");
}

#[test]
fn logs_tail_and_follow() {
    require_docker();
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let _agent = agent_with_docker(&server, t.path(), "dock-2");
    let name = unique("talker");
    let _cleanup = Cleanup(vec![name.clone()]);
    server.cli_ok(&[
        "run",
        &name,
        "--image",
        IMAGE,
        "--",
        "sh",
        "-c",
        "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done",
    ]);
    wait_until(Duration::from_secs(10), "some output", || {
        server.cli_ok(&["logs", &name]).lines().count() >= 5
    });
    let tail = server.cli_ok(&["logs", &name, "--tail", "2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.lines().all(|l| l.starts_with("line ")));

    // -f keeps streaming lines written after it started.
    let mut follow = Command::new(corral_bin())
        .args(["logs", &name, "-f", "--tail", "1"])
        .env("CORRAL_SERVER", &server.env.server)
        .env("CORRAL_API_KEY", &server.env.api_key)
        .env("CORRAL_CA_CHECKSUM", &server.env.checksum)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let mut seen = String::new();
    let started = Instant::now();
    while seen.lines().count() < 12 && started.elapsed() < Duration::from_secs(15) {
        let mut buf = [0u8; 4096];
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let numbers: Vec<u64> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("line ").and_then(|n| n.parse().ok()))
        .collect();
    assert!(numbers.len() >= 12, "{seen}");
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gaps: {numbers:?}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_stalled_log_reader_does_not_grow_memory() {
    require_docker();
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let agent = agent_with_docker(&server, t.path(), "dock-3");
    let name = unique("firehose");
    let _cleanup = Cleanup(vec![name.clone()]);
    // About 100 bytes a line, as fast as the container can write.
    server.cli_ok(&[
        "run", &name, "--image", IMAGE, "--", "sh", "-c",
        "while true; do echo 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789; done",
    ]);
    // A reader that never reads: its pipe fills, then the server stops granting credit.
    let mut stalled = Command::new(corral_bin())
        .args(["logs", &name, "-f"])
        .env("CORRAL_SERVER", &server.env.server)
        .env("CORRAL_API_KEY", &server.env.api_key)
        .env("CORRAL_CA_CHECKSUM", &server.env.checksum)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let server_pid = server.proc.as_ref().unwrap().pid();
    let log_path = inspect(&name)["LogPath"].as_str().unwrap().to_owned();
    let log_bytes = || std::fs::metadata(&log_path).map_or(0, |m| m.len());
    // Measured over what the container writes, not over a span of time: first, since the
    // reader started, enough to fill its pipe and every buffer and credit window on the way
    // (a few hundred KiB)…
    let started = log_bytes();
    wait_until(
        Duration::from_secs(60),
        "4 MiB of output, to fill every buffer",
        || log_bytes() >= started + (4 << 20),
    );
    let (server_before, agent_before) = (rss_kib(server_pid), rss_kib(agent.pid()));
    // …then 17 MiB more while the reader stays stalled.
    let mark = log_bytes();
    wait_until(
        Duration::from_secs(120),
        "17 MiB more output with the reader stalled",
        || log_bytes() >= mark + (17 << 20),
    );
    let (server_after, agent_after) = (rss_kib(server_pid), rss_kib(agent.pid()));
    let docker_log_bytes = log_bytes();
    assert!(
        docker_log_bytes > 20 << 20,
        "the container wrote plenty: {docker_log_bytes} bytes"
    );
    assert!(
        server_after < server_before + 8 * 1024,
        "server RSS grew from {server_before} KiB to {server_after} KiB with a stalled reader"
    );
    assert!(
        agent_after < agent_before + 8 * 1024,
        "agent RSS grew from {agent_before} KiB to {agent_after} KiB with a stalled reader"
    );
    // The stream resumes when the reader reads.
    let mut stdout = stalled.stdout.take().unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    while total < 1 << 20 && started.elapsed() < Duration::from_secs(20) {
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(total >= 1 << 20, "read {total} bytes after resuming");
    let _ = stalled.kill();
    let _ = stalled.wait();
    server.cli_ok(&["container", "rm", &name]);
}

#[test]
fn removed_behind_corrals_back_while_the_agent_was_down() {
    require_docker();
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let mut agent = agent_with_docker(&server, t.path(), "dock-4");
    let name = unique("ghost");
    let _cleanup = Cleanup(vec![name.clone()]);
    server.cli_ok(&["run", &name, "--image", IMAGE, "--", "sleep", "600"]);
    assert_eq!(actual(&server, &name).as_deref(), Some("running"));
    agent.stop();
    assert!(docker(&["rm", "-f", &name]).status.success());
    let _agent = start_agent(&server, &t.path().join("dock-4"), "dock-4", None, &[]);
    wait_until(Duration::from_secs(20), "the server to notice", || {
        actual(&server, &name).as_deref() == Some("missing")
    });
    // Killed behind its back while connected: reported as exited.
    let other = unique("victim");
    let _cleanup2 = Cleanup(vec![other.clone()]);
    server.cli_ok(&["run", &other, "--image", IMAGE, "--", "sleep", "600"]);
    assert!(docker(&["kill", &other]).status.success());
    wait_until(Duration::from_secs(10), "the kill to be reported", || {
        actual(&server, &other).as_deref() == Some("exited")
    });
}

#[test]
fn pending_commands_survive_a_server_restart_and_run_exactly_once() {
    require_docker();
    let t = tmp();
    let mut server = Server::start(&t.path().join("data"), &[]);
    let mut agent = agent_with_docker(&server, t.path(), "dock-5");
    agent.stop();
    wait_until(Duration::from_secs(10), "dock-5 disconnected", || {
        server.host_state("dock-5").as_deref() == Some("disconnected")
    });
    let name = unique("later");
    let _cleanup = Cleanup(vec![name.clone()]);
    let view = server.cli_json(&[
        "run", &name, "--image", IMAGE, "--host", "dock-5", "--", "sleep", "600",
    ]);
    assert_eq!(view["actual"], "pending");
    server.restart();
    let _agent = start_agent(&server, &t.path().join("dock-5"), "dock-5", None, &[]);
    wait_until(
        Duration::from_secs(30),
        "the queued run to be carried out",
        || actual(&server, &name).as_deref() == Some("running"),
    );
    // Restart the server again: the acked command is not delivered again.
    server.restart();
    wait_until(Duration::from_secs(30), "dock-5 back", || {
        server.host_state("dock-5").as_deref() == Some("active")
    });
    // On a reconnection the server sends the unfinished commands before any new one: once a
    // command sent now has run, a redelivered `run` would have arrived before it.
    command_after_reconnection_runs(&server, "dock-5");
    let out = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!(
            "label=io.corral.container-id={}",
            view["id"].as_str().unwrap()
        ),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "exactly one container"
    );
}

#[test]
fn bad_container_input_is_refused_and_leaves_nothing_behind() {
    require_docker();
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let _agent = agent_with_docker(&server, t.path(), "dock-6");

    let name = unique("noimage");
    let out = server.cli(&["run", &name, "--image", "corral-test/absent:1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        // Not on the host, and its registry (Docker Hub, unreachable here) cannot supply it.
        err.contains("cannot pull image corral-test/absent:1 on host dock-6"),
        "{err}"
    );
    assert!(actual(&server, &name).is_none());
    assert!(!docker(&["inspect", &name]).status.success());

    // Created but not started (its command does not exist): the container goes too.
    let name = unique("nostart");
    let out = server.cli(&["run", &name, "--image", IMAGE, "--", "/no/such/program"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot start"), "{err}");
    assert!(actual(&server, &name).is_none());
    assert!(
        !docker(&["inspect", &name]).status.success(),
        "a container that did not start was left behind"
    );

    for bad in ["80", "70000:80", "x:80", "80:80/sctp"] {
        let out = server.cli(&["run", &unique("badport"), "--image", IMAGE, "-p", bad]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid port spec"),
            "{bad}"
        );
    }
    let out = server.cli(&["run", "Bad_Name", "--image", IMAGE]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("container name"));

    let taken = unique("taken");
    let _cleanup = Cleanup(vec![taken.clone()]);
    server.cli_ok(&["run", &taken, "--image", IMAGE, "--", "sleep", "600"]);
    let out = server.cli(&["run", &taken, "--image", IMAGE]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = docker(&["ps", "-a", "-q", "--filter", &format!("name=^{taken}$")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "no duplicate"
    );

    // A host that was removed cannot be given work.
    let (_, token) = server.token(&[]);
    let mut gone = start_agent(&server, &t.path().join("gone"), "gone", Some(&token), &[]);
    wait_until(Duration::from_secs(20), "gone active", || {
        server.host_state("gone").as_deref() == Some("active")
    });
    server.cli_ok(&["host", "rm", "gone"]);
    gone.wait_exit(Duration::from_secs(15));
    let out = server.cli(&["run", &unique("orphan"), "--image", IMAGE, "--host", "gone"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no host \"gone\""));
}

#[test]
fn a_dead_dockerd_is_reported_and_recovered_from() {
    require_docker();
    let t = tmp();
    // A dockerd of the test's own, in a network namespace of its own, so it can be stopped
    // and started without disturbing the machine's engine (two engines in one namespace fight
    // over docker0).
    let ns = Netns::new("dk");
    let mut dockerd = Dockerd::start(&ns, &t.path().join("dockerd"), DockerFirewall::Off);
    let sock = dockerd.host();
    dockerd.load_test_image();

    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let _agent = start_agent(
        &server,
        &t.path().join("a"),
        "fragile",
        Some(&token),
        &["--docker-host", &sock],
    );
    let docker_state = || {
        server
            .hosts()
            .into_iter()
            .find(|h| h["name"] == "fragile")
            .and_then(|h| h["docker"]["state"].as_str().map(str::to_owned))
    };
    wait_until(Duration::from_secs(20), "docker available", || {
        docker_state().as_deref() == Some("available")
    });
    server.cli_ok(&[
        "run", "before", "--image", IMAGE, "--host", "fragile", "--", "sleep", "600",
    ]);

    dockerd.stop();
    wait_until(Duration::from_secs(20), "docker unavailable", || {
        docker_state().as_deref() == Some("unavailable")
    });
    let host = server.cli_ok(&["host", "inspect", "fragile", "-o", "json"]);
    assert!(host.contains("docker unavailable"), "{host}");
    let text = server.cli_ok(&["host", "inspect", "fragile"]);
    assert!(
        text.contains("Docker:") && text.contains("docker unavailable"),
        "{text}"
    );
    let table = server.cli_ok(&["host", "ls"]);
    assert!(
        table.contains("DOCKER") && table.contains("unavailable"),
        "{table}"
    );
    // A command while dockerd is down fails clearly, at once, and leaves nothing behind.
    let started = Instant::now();
    let out = server.cli(&["run", "during", "--image", IMAGE, "--host", "fragile"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("docker unavailable"));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(actual(&server, "during").is_none());

    dockerd.launch();
    wait_until(Duration::from_secs(30), "docker available again", || {
        docker_state().as_deref() == Some("available")
    });
    server.cli_ok(&[
        "run", "after", "--image", IMAGE, "--host", "fragile", "--", "sleep", "600",
    ]);
    assert_eq!(actual(&server, "after").as_deref(), Some("running"));
    let names = dockerd.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!names.contains("during"), "{names}");
}

#[test]
fn a_command_for_a_disconnected_host_expires_with_a_clear_failure() {
    require_docker();
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &["--command-ttl", "2s"]);
    let mut agent = agent_with_docker(&server, t.path(), "dock-7");
    agent.stop();
    wait_until(Duration::from_secs(10), "dock-7 disconnected", || {
        server.host_state("dock-7").as_deref() == Some("disconnected")
    });
    let name = unique("never");
    let _cleanup = Cleanup(vec![name.clone()]);
    let view = server.cli_json(&["run", &name, "--image", IMAGE, "--host", "dock-7"]);
    assert_eq!(view["actual"], "pending");
    wait_until(Duration::from_secs(15), "the command to expire", || {
        actual(&server, &name).is_none()
    });
    let events = server.events();
    let failed = events
        .iter()
        .find(|e| e["kind"] == "container_failed")
        .expect("an event");
    assert!(
        failed["message"].as_str().unwrap().contains("did not run"),
        "{failed}"
    );
    // When the host returns, nothing is created from the expired command.
    let _agent = start_agent(&server, &t.path().join("dock-7"), "dock-7", None, &[]);
    wait_until(Duration::from_secs(20), "dock-7 back", || {
        server.host_state("dock-7").as_deref() == Some("active")
    });
    // Unfinished commands go out on a reconnection before any new one: once a command sent
    // now has run, the expired one would have arrived before it.
    command_after_reconnection_runs(&server, "dock-7");
    assert!(!docker(&["inspect", &name]).status.success());
}
