//! Every bad input of the control plane gets a clear message or close reason, never a panic,
//! and leaves nothing half-registered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use corral_agent::{DialError, Dialer, Tunnel, dial};
use corral_proto::secret::{SecretKind, format_secret};
use corral_proto::{AgentMessage, Auth, CloseReason, HostFacts, ServerMessage};
use corral_tls::CaChecksum;
use tokio_tungstenite::tungstenite::Message;

fn facts(name: &str) -> HostFacts {
    HostFacts {
        name: name.into(),
        hostname: "test".into(),
        ..Default::default()
    }
}

async fn raw(server: &Server) -> Tunnel {
    pinned_dialer(server).open().await.unwrap()
}

/// Reads until the server closes; returns the reason it gave.
async fn refusal(t: &mut Tunnel) -> (CloseReason, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), t.recv()).await {
            Err(_) => panic!("the server did not close"),
            Ok(Ok(ServerMessage::Goodbye { reason, message })) => return (reason, message),
            Ok(Ok(_)) => continue,
            Ok(Err(DialError::Refused { reason, message })) => return (reason, message),
            Ok(Err(e)) => panic!("closed without a reason: {e}"),
        }
    }
}

fn agent_refused(server: &Server, dir: &std::path::Path, token: &str, expect: &str) {
    let mut agent = start_agent(server, dir, "refused", Some(token), &[]);
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "the agent must exit non-zero");
    let log = agent.log_text();
    assert!(log.contains(expect), "expected {expect:?} in:\n{log}");
    assert!(log.contains("not retrying"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(server.hosts().is_empty(), "nothing registered");
}

#[test]
fn unknown_expired_revoked_and_used_up_tokens_are_refused() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let fake = format_secret(SecretKind::RegistrationToken, &[7u8; 32]);
    agent_refused(
        &server,
        &t.path().join("a1"),
        &fake,
        "unknown registration token",
    );
    agent_refused(
        &server,
        &t.path().join("a2"),
        "not-a-token",
        "not a registration token",
    );

    let (expiring_id, expiring) = server.token(&["--ttl", "1s"]);
    wait_until(Duration::from_secs(10), "the token to expire", || {
        server
            .cli_json(&["token", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == expiring_id.as_str() && x["state"] == "expired")
    });
    agent_refused(&server, &t.path().join("a3"), &expiring, "expired at");

    let (id, revoked) = server.token(&[]);
    server.cli_ok(&["token", "rm", &id]);
    agent_refused(&server, &t.path().join("a4"), &revoked, "was revoked");

    let (_, once) = server.token(&["--max-uses", "1"]);
    let mut ok = start_agent(&server, &t.path().join("a5"), "first", Some(&once), &[]);
    wait_until(Duration::from_secs(20), "first active", || {
        server.host_state("first").as_deref() == Some("active")
    });
    let mut second = start_agent(&server, &t.path().join("a6"), "second", Some(&once), &[]);
    assert!(!second.wait_exit(Duration::from_secs(20)).success());
    assert!(
        second.log_text().contains("used up"),
        "{}",
        second.log_text()
    );
    assert_eq!(server.hosts().len(), 1);
    ok.stop();
}

#[test]
fn wrong_ca_checksum_is_refused_naming_the_mismatch() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let url = server.url();
    let dir = t.path().join("a").display().to_string();
    let mut agent = spawn_corral(
        &[
            "agent",
            "--server",
            &url,
            "--token",
            &token,
            "--ca-checksum",
            &wrong,
            "--state-dir",
            &dir,
            "--name",
            "pinned",
        ],
        t.path().join("agent.log"),
        &[],
    );
    assert!(!agent.wait_exit(Duration::from_secs(20)).success());
    let log = agent.log_text();
    assert!(log.contains("does not contain the pinned CA"), "{log}");
    assert!(log.contains(&wrong), "names the pinned checksum: {log}");
    assert!(
        log.contains(&server.env.checksum),
        "names what the server presented: {log}"
    );
    assert!(server.hosts().is_empty());

    // A malformed checksum is a clear usage error.
    let mut bad = spawn_corral(
        &[
            "agent",
            "--server",
            &url,
            "--token",
            &token,
            "--ca-checksum",
            "md5:1234",
            "--state-dir",
            &dir,
        ],
        t.path().join("agent2.log"),
        &[],
    );
    assert!(!bad.wait_exit(Duration::from_secs(20)).success());
    assert!(
        bad.log_text().contains("invalid CA checksum"),
        "{}",
        bad.log_text()
    );

    // The CLI pins too.
    let out = std::process::Command::new(corral_bin())
        .args(["host", "ls"])
        .env("CORRAL_SERVER", &server.env.server)
        .env("CORRAL_API_KEY", &server.env.api_key)
        .env("CORRAL_CA_CHECKSUM", &wrong)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not contain the pinned CA"), "{err}");
}

#[test]
fn a_server_presenting_another_certificate_is_refused() {
    let t = tmp();
    let mut good = Server::start(&t.path().join("good"), &[]);
    let port = good.port;
    let (_, token) = good.token(&[]);
    let agent = start_agent(&good, &t.path().join("a"), "loyal", Some(&token), &[]);
    wait_until(Duration::from_secs(20), "loyal active", || {
        good.host_state("loyal").as_deref() == Some("active")
    });
    good.stop();
    // An impostor with its own CA takes over the address.
    let impostor = Server::start_on(&t.path().join("impostor"), port, &[]);
    wait_until(
        Duration::from_secs(30),
        "the agent to refuse the impostor",
        || agent.log_text().contains("does not contain the pinned CA"),
    );
    assert!(
        impostor.hosts().is_empty(),
        "the agent never talked to the impostor"
    );
    assert!(!impostor.log().contains("agent connected"));
    drop(impostor);
    // The registered agent keeps trying (the impostor may be temporary) and returns home.
    good.start_again();
    wait_until(
        Duration::from_secs(40),
        "loyal back on the real server",
        || good.host_state("loyal").as_deref() == Some("active"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_out_of_order_frames_are_closed_with_reasons() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);

    let mut tun = raw(&server).await;
    tun.send_raw(Message::text("garbage{")).await.unwrap();
    let (reason, message) = refusal(&mut tun).await;
    assert_eq!(reason, CloseReason::Malformed);
    assert!(!message.is_empty());

    let mut tun = raw(&server).await;
    tun.send_raw(Message::binary(vec![0u8, 1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(refusal(&mut tun).await.0, CloseReason::Malformed);

    // Over the 1 MiB limit: refused by the server's frame reader.
    let mut tun = raw(&server).await;
    let huge = "x".repeat(corral_proto::DEFAULT_MAX_MESSAGE_BYTES + 1);
    let _ = tun.send_raw(Message::text(huge)).await;
    assert_eq!(refusal(&mut tun).await.0, CloseReason::TooLarge);

    // A ping before hello.
    let mut tun = raw(&server).await;
    tun.send(&AgentMessage::Ping { seq: 1 }).await.unwrap();
    let (reason, message) = refusal(&mut tun).await;
    assert_eq!(reason, CloseReason::Malformed);
    assert!(message.contains("hello"), "{message}");

    // Invalid facts.
    let (_, token) = server.token(&[]);
    let mut tun = raw(&server).await;
    tun.send(&AgentMessage::hello(dial::hello(
        Auth::Register {
            token: token.clone(),
            credential: credential(),
        },
        facts("Not A Name!"),
    )))
    .await
    .unwrap();
    let (reason, message) = refusal(&mut tun).await;
    assert_eq!(reason, CloseReason::Malformed);
    assert!(message.contains("host name"), "{message}");

    // Garbage after a good hello.
    let mut tun = raw(&server).await;
    tun.send(&AgentMessage::hello(dial::hello(
        Auth::Register {
            token: token.clone(),
            credential: credential(),
        },
        facts("ok-then-bad"),
    )))
    .await
    .unwrap();
    assert!(matches!(
        tun.recv().await.unwrap(),
        ServerMessage::Welcome(_)
    ));
    tun.send_raw(Message::text("{\"type\":\"launch_missiles\"}"))
        .await
        .unwrap();
    assert_eq!(refusal(&mut tun).await.0, CloseReason::Malformed);

    // A second hello.
    let mut tun = raw(&server).await;
    let c = credential();
    let hello = dial::hello(
        Auth::Register {
            token,
            credential: c,
        },
        facts("twice"),
    );
    tun.send(&AgentMessage::hello(hello.clone())).await.unwrap();
    assert!(matches!(
        tun.recv().await.unwrap(),
        ServerMessage::Welcome(_)
    ));
    tun.send(&AgentMessage::hello(hello)).await.unwrap();
    assert_eq!(refusal(&mut tun).await.0, CloseReason::Malformed);

    // A well-formed but unknown credential.
    let mut tun = raw(&server).await;
    tun.send(&AgentMessage::hello(dial::hello(
        Auth::Credential {
            credential: credential(),
        },
        facts("stranger"),
    )))
    .await
    .unwrap();
    let (reason, message) = refusal(&mut tun).await;
    assert_eq!(reason, CloseReason::BadCredential);
    assert!(message.contains("not registered"), "{message}");

    // The server is still healthy and registered only the two good hosts.
    let names: Vec<String> = server
        .hosts()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["ok-then-bad", "twice"]);
    assert!(!server.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_version_is_refused() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let mut tun = raw(&server).await;
    let mut hello = dial::hello(
        Auth::Register {
            token,
            credential: credential(),
        },
        facts("future"),
    );
    hello.protocol_versions = vec![99, 100];
    tun.send(&AgentMessage::hello(hello)).await.unwrap();
    let (reason, message) = refusal(&mut tun).await;
    assert_eq!(reason, CloseReason::BadVersion);
    assert!(message.contains("protocol version 1"), "{message}");
    assert!(message.contains("[99, 100]"), "{message}");
    assert!(server.hosts().is_empty(), "nothing registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_credentials_and_tokens_are_forbidden_on_every_admin_route() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let state = t.path().join("a");
    let mut agent = start_agent(&server, &state, "victim", Some(&token), &[]);
    wait_until(Duration::from_secs(20), "victim active", || {
        server.host_state("victim").as_deref() == Some("active")
    });
    let cred = std::fs::read_to_string(state.join("credential")).unwrap();
    let host_id = server.hosts()[0]["id"].as_str().unwrap().to_owned();

    corral_tls::install_default_provider();
    let tls = corral_tls::client_config(CaChecksum::parse(&server.env.checksum).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .build()
        .unwrap();
    let base = server.url();
    let routes: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::GET, "/v1/environments".into()),
        (reqwest::Method::GET, "/v1/tokens".into()),
        (reqwest::Method::POST, "/v1/tokens".into()),
        (reqwest::Method::DELETE, "/v1/tokens/tok-x".into()),
        (reqwest::Method::GET, "/v1/hosts".into()),
        (reqwest::Method::GET, format!("/v1/hosts/{host_id}")),
        (reqwest::Method::DELETE, format!("/v1/hosts/{host_id}")),
        (reqwest::Method::GET, "/v1/events".into()),
        (reqwest::Method::GET, "/metrics".into()),
        (reqwest::Method::GET, "/v1/stacks".into()),
        (reqwest::Method::POST, "/v1/stacks".into()),
        (reqwest::Method::GET, "/v1/stacks/s".into()),
        (reqwest::Method::DELETE, "/v1/stacks/s".into()),
        (reqwest::Method::POST, "/v1/stacks/s/scale".into()),
        (
            reqwest::Method::GET,
            "/v1/stacks/s/services/web/logs".into(),
        ),
    ];
    for (method, path) in &routes {
        for (secret, status) in [
            (&cred, 403u16),
            (&token, 403),
            (&format_secret(SecretKind::ApiKey, &[1; 32]), 401),
        ] {
            let resp = http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(secret)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), status, "{method} {path}");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().len() > 10);
        }
        let resp = http
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{method} {path} without a key");
    }
    // Through the CLI, the message says what to do.
    let out = server.cli_with(&["host", "ls"], &cred);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("only its own tunnel") && err.contains("403"),
        "{err}"
    );
    // The host is untouched.
    assert_eq!(server.host_state("victim").as_deref(), Some("active"));
    // Oversized API bodies are refused.
    let resp = http
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(&server.env.api_key)
        .header("content-type", "application/json")
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    // `corral up` takes bigger bodies (many Compose files), but not unbounded ones.
    let resp = http
        .post(format!("{base}/v1/stacks"))
        .bearer_auth(&server.env.api_key)
        .header("content-type", "application/json")
        .body(vec![b' '; corral_server::stacks::MAX_UP_BODY_BYTES + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    // Malformed requests say what is wrong.
    for (body, expect) in [
        (serde_json::json!({"files": []}), "no Compose file"),
        (serde_json::json!({"files": "x"}), "files"),
        (
            serde_json::json!({"files": [{"name": "c.yaml", "text": "services: {}"}], "name": "Bad Name"}),
            "project name",
        ),
    ] {
        let resp = http
            .post(format!("{base}/v1/stacks"))
            .bearer_auth(&server.env.api_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert!((400..500).contains(&status), "{body}: {status} {text}");
        assert!(text.contains(expect), "{body}: {text}");
    }
    let out = server.cli(&["scale", "nostack/web=2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stack"));
    let out = server.cli(&["scale", "s/web=100000"]);
    assert!(!out.status.success());
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_during_registration_leaves_nothing_half_done() {
    let t = tmp();
    let mut server = Server::start(&t.path().join("data"), &[]);

    // 1. The server commits a registration but the agent never hears the welcome: the agent
    //    retries with the same credential and the used-up token, and is let in exactly once.
    let (token_id, token) = server.token(&["--max-uses", "1"]);
    let state = t.path().join("a");
    std::fs::create_dir_all(&state).unwrap();
    let c = credential();
    std::fs::write(state.join("credential"), &c).unwrap();
    let mut tun = raw(&server).await;
    tun.send(&AgentMessage::hello(dial::hello(
        Auth::Register {
            token: token.clone(),
            credential: c.clone(),
        },
        facts("retry"),
    )))
    .await
    .unwrap();
    drop(tun);
    wait_until(Duration::from_secs(10), "the registration to land", || {
        server.hosts().len() == 1
    });
    server.kill9();
    server.start_again();
    let mut agent = start_agent(&server, &state, "retry", Some(&token), &[]);
    wait_until(Duration::from_secs(30), "retry active", || {
        server.host_state("retry").as_deref() == Some("active")
    });
    assert_eq!(server.hosts().len(), 1);
    let tokens = server.cli_json(&["token", "ls"]);
    let tok = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == token_id.as_str())
        .unwrap();
    assert_eq!(tok["uses"], 1);
    agent.stop();

    // 2. The server is killed while many registrations are in flight: after the restart every
    //    host that exists is complete, and the token's use count matches exactly.
    let (token_id, token) = server.token(&[]);
    let url = server.url();
    let pin = CaChecksum::parse(&server.env.checksum).unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let token = token.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 5)).await;
            let Ok(d) = Dialer::new(&url, pin) else {
                return;
            };
            let hello = dial::hello(
                Auth::Register {
                    token,
                    credential: credential(),
                },
                facts(&format!("burst-{i}")),
            );
            let _ = d.connect(hello).await;
        }));
    }
    // Killed as soon as the first of them is through: the others are under way.
    let started = std::time::Instant::now();
    while !server.log().contains("agent connected host=burst-") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no registration of the burst got through:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for task in tasks {
        let _ = task.await;
    }
    server.start_again();
    let burst: Vec<serde_json::Value> = server
        .hosts()
        .into_iter()
        .filter(|h| h["name"].as_str().unwrap().starts_with("burst-"))
        .collect();
    for h in &burst {
        for field in [
            "id",
            "name",
            "environment",
            "registered_at",
            "agent_version",
        ] {
            assert!(
                !h[field].as_str().unwrap_or_default().is_empty(),
                "{field} in {h}"
            );
        }
    }
    let tokens = server.cli_json(&["token", "ls"]);
    let tok = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == token_id.as_str())
        .unwrap();
    assert_eq!(
        tok["uses"].as_u64().unwrap() as usize,
        burst.len(),
        "uses match hosts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_says_hello_is_closed() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let mut tun = raw(&server).await;
    let started = std::time::Instant::now();
    let (reason, message) = refusal(&mut tun).await;
    assert_eq!(reason, CloseReason::Malformed);
    assert!(message.contains("no hello"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(14));
}
