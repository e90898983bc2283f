//! What a host or an API caller can make the server keep or say is bounded: security events
//! are cut, rate limited per host and kind (the rest counted in a summary) and pruned; a
//! stack's replicas are capped; refusals and `ps` summarise unplaced replicas instead of
//! listing each one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use corral_agent::Tunnel;
use corral_proto::{AgentMessage, Auth, CommandResult, HostFacts};
use serde_json::Value;

async fn raw_agent(server: &Server, name: &str) -> Tunnel {
    let (_, token) = server.token(&[]);
    let auth = Auth::Register {
        token,
        credential: credential(),
    };
    let facts = HostFacts {
        name: name.into(),
        hostname: name.into(),
        ..Default::default()
    };
    dial_agent(server, auth, facts).await
}

async fn reply_to(t: &mut Tunnel, command_id: String) {
    t.send(&AgentMessage::Reply {
        command_id,
        result: CommandResult::Failed {
            message: "?".into(),
        },
    })
    .await
    .unwrap();
}

fn events_of(server: &Server, kind: &str) -> Vec<Value> {
    server
        .events()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// "… and 1,234 more …" → 1234.
fn summarised(message: &str) -> Option<u64> {
    let rest = message.strip_prefix("… and ")?;
    let n: String = rest
        .split(' ')
        .next()?
        .chars()
        .filter(|c| *c != ',')
        .collect();
    n.parse().ok()
}

fn data_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("corral.db"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn http(server: &Server) -> reqwest::Client {
    corral_tls::install_default_provider();
    let tls =
        corral_tls::client_config(corral_tls::CaChecksum::parse(&server.env.checksum).unwrap())
            .unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

// ---- security events ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_replies_with_huge_unknown_ids_is_cut_rate_limited_and_summarised() {
    let t = tmp();
    let data = t.path().join("data");
    let server = Server::start(&data, &["--event-rate-window", "3s"]);
    let mut agent = raw_agent(&server, "flooder").await;
    let before = data_bytes(&data);

    // 300 replies to commands that do not exist, each id 200,000 bytes: 60 MB of ids.
    const FLOOD: u64 = 300;
    let start = Instant::now();
    for i in 0..FLOOD {
        let id = format!("cmd-{i:05}-{}", "A".repeat(200_000 - 10));
        reply_to(&mut agent, id).await;
    }

    // Every reply is accounted for: recorded one by one, or counted in a summary.
    let (individual, counted) = loop {
        let events = events_of(&server, "unknown_reply");
        let individual: Vec<&Value> = events
            .iter()
            .filter(|e| summarised(e["message"].as_str().unwrap()).is_none())
            .collect();
        let counted: u64 = events
            .iter()
            .filter_map(|e| summarised(e["message"].as_str().unwrap()))
            .sum();
        if individual.len() as u64 + counted == FLOOD {
            for e in &events {
                let m = e["message"].as_str().unwrap();
                assert!(m.len() <= 1024, "an event of {} bytes: {m}", m.len());
                assert_eq!(e["host_id"], events[0]["host_id"]);
            }
            let m = individual[0]["message"].as_str().unwrap();
            assert!(
                m.contains("\"cmd-0") && m.contains("… (200,000 bytes)"),
                "the id is cut and says how long it was: {m}"
            );
            break (individual.len() as u64, counted);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} recorded + {counted} counted of {FLOOD}",
            individual.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "{FLOOD} replies with 200,000-byte ids: {individual} recorded one by one, {counted} counted in summaries, all accounted for {:.1} s after the flood started",
        start.elapsed().as_secs_f64()
    );
    // At most 20 a window are recorded one by one; the flood took a few windows at most.
    let windows = start.elapsed().as_secs() / 3 + 2;
    assert!(
        individual <= 20 * windows && counted >= FLOOD - 20 * windows,
        "{individual} recorded one by one, {counted} counted"
    );
    let summary = events_of(&server, "unknown_reply")
        .into_iter()
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .find(|m| m.starts_with("… and"))
        .unwrap();
    assert!(
        summary.contains("more unknown_reply events from host")
            && summary.contains("at most 20 per 3 s are recorded one by one"),
        "{summary}"
    );
    let grown = data_bytes(&data).saturating_sub(before);
    eprintln!("the datastore grew by {grown} bytes");
    assert!(
        grown < 8 << 20,
        "the datastore grew by {grown} bytes for 60 MB of forged ids"
    );
    // The flooder is still connected: bad replies are dropped, not fatal.
    assert_eq!(server.host_state("flooder").as_deref(), Some("active"));
    assert!(
        !server.log().contains(&"A".repeat(1000)),
        "ids are cut in the log too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_beyond_the_row_cap_and_the_retention_are_pruned_and_the_api_is_capped() {
    let t = tmp();
    let server = Server::start(
        &t.path().join("data"),
        &[
            "--event-max-rows",
            "50",
            "--event-retention",
            "25s",
            "--event-rate-limit",
            "1000",
        ],
    );
    let mut agent = raw_agent(&server, "noisy").await;
    for i in 0..200 {
        reply_to(&mut agent, format!("cmd-{i:03}")).await;
    }
    // The newest 50 stay.
    wait_until(Duration::from_secs(40), "the events cut to 50", || {
        let events = server.events();
        events.len() <= 50
            && events
                .last()
                .is_some_and(|e| e["message"].as_str().unwrap().contains("cmd-199"))
    });
    assert!(server.log().contains("pruned security events"));

    // The API answers at most 1,000 events per request, and says so.
    let resp = http(&server)
        .get(format!("{}/v1/events?limit=100000", server.url()))
        .bearer_auth(&server.env.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body = resp.text().await.unwrap();
    assert!(body.contains("1 to 1000 events"), "{body}");
    let out = server.cli(&["events", "--limit", "100000"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1..=1000"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Past the retention, they all go.
    wait_until(
        Duration::from_secs(40),
        "every event past its retention",
        || server.events().is_empty(),
    );
    assert_eq!(server.host_state("noisy").as_deref(), Some("active"));
}

// ---- stacks ---------------------------------------------------------------------------------

fn compose(services: usize, replicas: u32) -> String {
    let mut text = String::from("services:\n");
    for i in 0..services {
        text.push_str(&format!(
            "  s{i}:\n    image: corral-test/none:1\n    deploy: {{ replicas: {replicas} }}\n"
        ));
    }
    text
}

/// `POST /v1/stacks` with one Compose file: (status, body, seconds taken).
async fn up(server: &Server, name: &str, text: String) -> (u16, String, f64) {
    let body = serde_json::json!({
        "name": name,
        "files": [{ "name": "compose.yaml", "text": text }],
    });
    let started = Instant::now();
    let resp = http(server)
        .post(format!("{}/v1/stacks", server.url()))
        .bearer_auth(&server.env.api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, text, started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_up_is_refused_at_once_with_a_short_answer_and_memory_stays_flat() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let pid = server.proc.as_ref().unwrap().pid();
    let rss_before = vm_rss_kib(pid);

    // 5,000 services × 1,000 replicas, about 350 KB of Compose: refused before placement,
    // for its services and for its replicas.
    for (services, expect) in [
        (5_000, "5000 services; the limit is 1000 per project"),
        (
            1_000,
            "asks for 1,000,000 replicas in all (1,000 services); the limit is 10,000 per stack",
        ),
    ] {
        let text = compose(services, 1_000);
        let request_bytes = text.len();
        let (status, body, took) = up(&server, "big", text).await;
        let rss_after = vm_rss_kib(pid);
        eprintln!(
            "{services} × 1,000 up ({request_bytes} bytes): {status}, {} bytes in {took:.2} s; server RSS {rss_before} → {rss_after} KiB",
            body.len()
        );
        assert_eq!(status, 400, "{body}");
        assert!(body.len() < 512, "{} bytes: {body}", body.len());
        assert!(body.contains(expect), "{body}");
        assert!(
            rss_after < rss_before + 64 * 1024,
            "server RSS {rss_before} → {rss_after} KiB"
        );
    }

    // At the limit and unplaceable (there are no hosts): the refusal groups the replicas.
    let (status, body, took) = up(&server, "full", compose(10, 1_000)).await;
    let rss_full = vm_rss_kib(pid);
    eprintln!(
        "10 × 1,000 up, unplaceable: {status}, {} bytes in {took:.2} s; server RSS {rss_full} KiB",
        body.len()
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.len() < 2048, "{} bytes: {body}", body.len());
    assert!(
        body.contains("10,000 replicas of 10 services cannot be placed")
            && body.contains("s0.1, s0.2, s0.3 and 997 more: no host fits"),
        "{body}"
    );
    // Many services: a few are listed, the rest counted.
    let (status, body, took) = up(&server, "wide", compose(100, 100)).await;
    eprintln!(
        "100 × 100 up, unplaceable: {status}, {} bytes in {took:.2} s",
        body.len()
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.len() < 2048, "{} bytes: {body}", body.len());
    assert!(
        body.contains("… and 90 more services with 9,000 replicas that cannot be placed"),
        "{body}"
    );
    assert!(
        rss_full < rss_before + 64 * 1024,
        "server RSS {rss_before} → {rss_full} KiB"
    );
    // A definition with thousands of errors: the first few, and a count.
    let mut text = String::from("services:\n  web:\n    image: x\n    labels:\n");
    for i in 0..5_000 {
        text.push_str(&format!("      io.corral.mine{i}: x\n"));
    }
    let (status, body, _) = up(&server, "labels", text).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.len() < 4096, "{} bytes: {body}", body.len());
    assert!(body.contains("… and 4,980 more errors not shown"), "{body}");
    // Nothing was stored.
    assert_eq!(server.cli_json(&["stack", "ls"]), serde_json::json!([]));
}

#[test]
fn ps_summarises_unplaced_replicas_and_scale_keeps_the_stack_total() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    // Eleven services of no replicas: nothing to place, so `up` stores the stack.
    let dir = t.path().join("project");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("compose.yaml");
    std::fs::write(&file, compose(11, 0)).unwrap();
    server.cli_ok(&["up", "-f", file.to_str().unwrap(), "-p", "wide"]);
    // Ten of them to 1,000 each: the stack's 10,000, the most it may have.
    let targets: Vec<String> = (0..10).map(|i| format!("wide/s{i}=1000")).collect();
    let mut args = vec!["scale"];
    args.extend(targets.iter().map(String::as_str));
    server.cli_ok(&args);
    let out = server.cli(&["scale", "wide/s10=1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("would have 10,001 replicas in all; the limit is 10,000 per stack"),
        "{err}"
    );

    // No host takes them: `ps` says so in a few lines per service, with counts.
    wait_until(
        Duration::from_secs(30),
        "the unplaced replicas counted",
        || {
            let v = server.cli_json(&["ps", "-p", "wide"]);
            v[0]["services"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["unplaced_count"] == 1000)
                .count()
                == 10
        },
    );
    let json = server.cli_ok(&["ps", "-p", "wide", "-o", "json"]);
    assert!(json.len() < 16 * 1024, "ps answered {} bytes", json.len());
    let v: Value = serde_json::from_str(&json).unwrap();
    let s0 = v[0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "s0")
        .unwrap()
        .clone();
    let lines = s0["unplaced"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{s0}");
    assert!(
        lines[0]
            .as_str()
            .unwrap()
            .starts_with("s0.1, s0.2, s0.3 and 997 more: no host fits"),
        "{s0}"
    );
    let table = server.cli_ok(&["ps", "-p", "wide"]);
    assert!(table.contains("wide/s0: 1000 unplaced"), "{table}");
    assert!(table.len() < 16 * 1024, "{table}");
}
