//! The audit log with a real server: requests that change state and refused requests are
//! recorded with who, from where and the answer; the server's own security events go into the
//! same log; refused requests beyond the events' rate are counted, not itemised; and editing
//! or deleting a row in the SQLite file is named by `corral audit verify`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn entries(server: &Server) -> Vec<Value> {
    server
        .cli_json(&["audit", "ls", "--limit", "10000"])
        .as_array()
        .unwrap()
        .clone()
}

fn find<'a>(entries: &'a [Value], action: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| e["action"] == action)
        .unwrap_or_else(|| panic!("no {action} in {entries:#?}"))
}

#[test]
fn requests_and_security_events_are_recorded_and_tampering_is_named() {
    let t = tmp();
    let data = t.path().join("data");
    let mut server = Server::start(
        &data,
        &["--event-rate-limit", "3", "--event-rate-window", "2s"],
    );

    // A change, a refused change, a failed one, and reads (not recorded).
    let (_, token) = server.token(&[]);
    let out = server.cli_with(&["host", "rm", "h9"], "crl_key_notakey");
    assert!(!out.status.success());
    let out = server.cli(&["host", "rm", "nothere"]);
    assert!(!out.status.success());
    server.cli_ok(&["host", "ls"]);

    // A removed host that comes back: the server's own security event.
    let credential = credential();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let facts = corral_proto::HostFacts {
        name: "gone".into(),
        hostname: "gone".into(),
        ..Default::default()
    };
    let tunnel = runtime.block_on(dial_agent(
        &server,
        corral_proto::Auth::Register {
            token,
            credential: credential.clone(),
        },
        facts.clone(),
    ));
    drop(tunnel);
    server.cli_ok(&["host", "rm", "gone"]);
    let hello = corral_agent::dial::hello(
        corral_proto::Auth::Credential {
            credential: credential.clone(),
        },
        facts,
    );
    assert!(
        runtime
            .block_on(pinned_dialer(&server).connect(hello))
            .is_err()
    );

    let log = entries(&server);
    let created = find(&log, "POST /v1/tokens");
    assert_eq!(created["actor"], "admin");
    assert!(created["key_id"].as_str().unwrap().starts_with("key-"));
    assert_eq!(created["role"], "admin");
    assert_eq!(created["outcome"], "201 Created");
    assert!(
        created["source"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{created}"
    );
    let refused = log
        .iter()
        .find(|e| e["target"] == "/v1/hosts/h9")
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert_eq!(refused["actor"], "anonymous (unknown key)");
    assert_eq!(refused["action"], "DELETE /v1/hosts/{id}");
    assert!(
        refused["outcome"]
            .as_str()
            .unwrap()
            .starts_with("401 Unauthorized: unknown API key"),
        "{refused}"
    );
    let missing = log
        .iter()
        .find(|e| e["target"] == "/v1/hosts/nothere")
        .unwrap();
    assert_eq!(missing["action"], "DELETE /v1/hosts/{id}");
    assert!(
        missing["outcome"]
            .as_str()
            .unwrap()
            .starts_with("404 Not Found: no host \"nothere\""),
        "{missing}"
    );
    assert!(
        !log.iter().any(|e| e["action"] == "GET /v1/hosts"),
        "reads that are not refused are not recorded"
    );
    let registered = find(&log, "host_registered");
    assert_eq!(registered["actor"], "server");
    assert!(
        registered["outcome"]
            .as_str()
            .unwrap()
            .starts_with("host gone registered from 127.0.0.1:"),
        "{registered}"
    );
    let returned = find(&log, "removed_host_refused");
    assert_eq!(returned["actor"], "server");
    assert!(
        returned["outcome"]
            .as_str()
            .unwrap()
            .contains("removed host gone tried to connect")
    );
    // By actor.
    let mine = server.cli_json(&["audit", "ls", "--actor", "admin"]);
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "admin")
    );

    // A brute force of bad keys: 3 recorded one by one per 2 s window, the rest counted.
    for _ in 0..12 {
        let out = server.cli_with(&["host", "ls"], "crl_key_guess");
        assert!(!out.status.success());
    }
    wait_until(
        Duration::from_secs(10),
        "the summary of refused requests",
        || {
            entries(&server).iter().any(|e| {
                e["action"] == "api_refused"
                    && e["outcome"]
                        .as_str()
                        .unwrap()
                        .contains("more api_refused events")
            })
        },
    );
    let itemised = entries(&server)
        .iter()
        .filter(|e| e["action"] == "GET /v1/hosts" && e["actor"] == "anonymous (unknown key)")
        .count();
    assert!(itemised <= 6, "{itemised} itemised");

    // Intact, and the export carries every entry with its hash.
    let v = server.cli_json(&["audit", "verify"]);
    assert_eq!(v["intact"], true, "{v}");
    let total = v["entries"].as_u64().unwrap();
    assert_eq!(v["head_seq"].as_u64().unwrap(), total);
    let export = server.cli(&["audit", "export"]);
    assert!(export.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, total);
    assert_eq!(lines.last().unwrap()["hash"], v["head_hash"]);

    // Tampering, on two copies of the stopped server's datastore: a changed row, a deleted row.
    server.stop();
    let copy = t.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
        }
    }
    // The copies share the PKI directory's files by path in admin.env: copy it too.
    copy_dir(&data.join("pki"), &copy.join("pki"));
    sql(
        &data.join("corral.db"),
        "UPDATE audit_log SET outcome = '200 OK' WHERE seq = 2",
    );
    sql(
        &copy.join("corral.db"),
        "DELETE FROM audit_log WHERE seq = 3",
    );
    server.start_again();
    let out = server.cli(&["audit", "verify"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("tampered with at entry 2: entry 2 was changed"),
        "{said}"
    );
    let v = verify_json(&server);
    assert_eq!(v["broken_at"], 2);
    assert_eq!(v["head_seq"], 1);
    // New entries still chain on (from the last row), and verification still names entry 2.
    server.cli_ok(&["token", "create"]);
    assert_eq!(verify_json(&server)["broken_at"], 2);
    server.stop();

    let other = Server::start(&copy, &[]);
    let out = other.cli(&["audit", "verify"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("entry 3 is missing (deleted): entry 4 follows entry 2"),
        "{said}"
    );
}

/// `audit verify -o json`, which exits 1 on a broken chain.
fn verify_json(server: &Server) -> Value {
    let out = server.cli(&["audit", "verify", "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}
