//! Input the server must read strictly, and say so: an over-size frame is answered with close
//! code 1009 even while the peer is still writing it, the `Bearer` scheme in any case, unknown
//! JSON fields refused by name, one replica limit for `up` and `scale`, and reports about
//! another host's containers recorded as security events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use corral_agent::DialError;
use corral_proto::{
    AgentMessage, Auth, CloseReason, CommandBody, CommandResult, ContainerState, ContainerStatus,
    HostFacts, Report, ServerMessage,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// An HTTP client that trusts only `server`'s CA, as the CLI does.
fn http(server: &Server) -> reqwest::Client {
    corral_tls::install_default_provider();
    let pin = corral_tls::CaChecksum::parse(&server.env.checksum).unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(corral_tls::client_config(pin).unwrap())
        .no_proxy()
        .build()
        .unwrap()
}

/// One request with `authorization` as the whole header value; (status, body).
async fn call(
    client: &reqwest::Client,
    server: &Server,
    method: reqwest::Method,
    path: &str,
    authorization: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut req = client
        .request(method, format!("{}{path}", server.url()))
        .header("authorization", authorization);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_answered_with_1009_while_the_peer_still_writes() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let mut tun = pinned_dialer(&server).open().await.unwrap();
    // Far more than the socket buffers hold: the server refuses it from the frame's header,
    // long before the peer has finished writing it.
    let huge = "x".repeat(32 * corral_proto::DEFAULT_MAX_MESSAGE_BYTES);
    tun.send_raw(Message::text(huge))
        .await
        .expect("the server reads (and discards) the rest of the frame instead of resetting");
    let goodbye = tokio::time::timeout(Duration::from_secs(10), tun.recv())
        .await
        .unwrap();
    match goodbye {
        Ok(ServerMessage::Goodbye { reason, message }) => {
            assert_eq!(reason, CloseReason::TooLarge);
            assert!(message.contains("limit"), "{message}");
        }
        other => panic!("expected a goodbye, got {other:?}"),
    }
    // Then the close frame: code 1009, "message too big".
    match tokio::time::timeout(Duration::from_secs(10), tun.recv())
        .await
        .unwrap()
    {
        Err(DialError::Refused { reason, .. }) => {
            assert_eq!(reason, CloseReason::TooLarge);
            assert_eq!(reason.code(), 1009);
        }
        other => panic!("expected the close frame, got {other:?}"),
    }
    assert!(!server.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let client = http(&server);
    let key = server.env.api_key.clone();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (status, body) = call(
            &client,
            &server,
            reqwest::Method::GET,
            "/v1/hosts",
            &format!("{scheme} {key}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    for bad in [format!("Basic {key}"), format!("Bearer{key}"), key.clone()] {
        let (status, body) = call(
            &client,
            &server,
            reqwest::Method::GET,
            "/v1/hosts",
            &bad,
            None,
        )
        .await;
        assert_eq!(status, 401, "{bad}: {body}");
        assert!(body.contains("Bearer <API key>"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_refused_by_name() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let client = http(&server);
    let auth = format!("Bearer {}", server.env.api_key);
    use reqwest::Method;
    let cases: Vec<(Method, &str, Option<Value>, &str)> = vec![
        (
            Method::POST,
            "/v1/tokens",
            Some(json!({ "ttl_secs": 60 })),
            "ttl_secs",
        ),
        (
            Method::POST,
            "/v1/containers",
            Some(json!({ "name": "web", "image": "busybox", "imgae": "x" })),
            "imgae",
        ),
        (
            Method::POST,
            "/v1/stacks",
            Some(json!({ "files": [], "nmae": "shop" })),
            "nmae",
        ),
        (
            Method::POST,
            "/v1/stacks/shop/scale",
            Some(json!({ "service": "web", "replicas": 1, "replica": 2 })),
            "replica",
        ),
        (
            Method::POST,
            "/v1/hosts/h1/firewall",
            Some(json!({ "dry_run": true, "dryrun": true })),
            "dryrun",
        ),
        (
            Method::POST,
            "/v1/environments/default/overlay",
            Some(json!({ "mode": "wireguard", "mdoe": "vxlan" })),
            "mdoe",
        ),
        (Method::GET, "/v1/events?limt=5", None, "limt"),
        (
            Method::DELETE,
            "/v1/stacks/shop?volume=true",
            None,
            "volume",
        ),
        (
            Method::GET,
            "/v1/containers/web/logs?folow=true",
            None,
            "folow",
        ),
    ];
    for (method, path, body, field) in cases {
        let (status, text) = call(&client, &server, method.clone(), path, &auth, body).await;
        assert!(
            (400..500).contains(&status),
            "{method} {path}: {status} {text}"
        );
        assert!(
            text.contains(&format!("unknown field `{field}`")),
            "{method} {path}: the answer names {field}: {text}"
        );
    }
    // Nothing was made by the refused token request; the well-formed one still works.
    assert_eq!(server.cli_json(&["token", "ls"]), json!([]));
    let (status, text) = call(
        &client,
        &server,
        Method::POST,
        "/v1/tokens",
        &auth,
        Some(json!({ "ttl_seconds": 60 })),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    // The CLI sends only fields the server knows.
    server.token(&["--ttl", "1h", "--max-uses", "2"]);
    server.cli_ok(&["env", "set-overlay", "default", "--mode", "wireguard"]);
    server.cli_ok(&["events", "--limit", "5"]);
}

#[test]
fn up_and_scale_share_one_replica_limit() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let file = t.path().join("compose.yaml");
    std::fs::write(
        &file,
        "services:\n  web:\n    image: corral-test/busybox:latest\n    deploy: { replicas: 1001 }\n",
    )
    .unwrap();
    let out = server.cli(&["up", "-f", file.to_str().unwrap(), "-p", "shop"]);
    assert!(!out.status.success());
    let up_err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(up_err.contains("limit of 1000"), "{up_err}");

    let out = server.cli(&["scale", "shop/web=1001"]);
    assert!(!out.status.success());
    let scale_err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(scale_err.contains("limit of 1000"), "{scale_err}");
    // At the limit, scale gets past the check (and finds no such stack).
    let out = server.cli(&["scale", "shop/web=1000"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("limit"), "{err}");
    assert!(err.contains("shop"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_about_another_hosts_containers_are_recorded() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let facts = |name: &str| HostFacts {
        name: name.into(),
        hostname: name.into(),
        ..Default::default()
    };
    let register = || Auth::Register {
        token: token.clone(),
        credential: credential(),
    };
    let mut a = dial_agent(&server, register(), facts("owner")).await;
    let mut b = dial_agent(&server, register(), facts("meddler")).await;
    let docker = || {
        Some(corral_proto::DockerInfo {
            version: "20.10".into(),
            api_version: "1.41".into(),
            storage_driver: "overlay2".into(),
            cpus: 2,
            memory_bytes: 1 << 30,
        })
    };
    a.send(&AgentMessage::Report(Report::Inventory {
        docker: docker(),
        docker_error: None,
        containers: Vec::new(),
    }))
    .await
    .unwrap();
    wait_until(Duration::from_secs(10), "owner's Docker report", || {
        server
            .hosts()
            .iter()
            .any(|h| h["name"] == "owner" && h["docker"]["state"] == "available")
    });
    let env = server.env.clone();
    let run = std::thread::spawn(move || {
        std::process::Command::new(corral_bin())
            .args(["run", "web", "--image", IMAGE, "--host", "owner"])
            .env("CORRAL_SERVER", &env.server)
            .env("CORRAL_API_KEY", &env.api_key)
            .env("CORRAL_CA_CHECKSUM", &env.checksum)
            .output()
            .unwrap()
    });
    let command = loop {
        match tokio::time::timeout(Duration::from_secs(15), a.recv()).await {
            // `run` first asks the host to resolve the tag: no registry answers here.
            Ok(Ok(ServerMessage::Command(c))) if matches!(c.body, CommandBody::ImageResolve(_)) => {
                let CommandBody::ImageResolve(req) = &c.body else {
                    continue;
                };
                let answers: Vec<corral_proto::Resolution> = req
                    .images
                    .iter()
                    .map(|_| corral_proto::Resolution::Failed {
                        reason: "no registry in this test".into(),
                    })
                    .collect();
                a.send(&AgentMessage::Reply {
                    command_id: c.id.clone(),
                    result: corral_proto::CommandResult::of::<corral_proto::ResolveImages>(Ok(
                        answers,
                    )),
                })
                .await
                .unwrap();
            }
            Ok(Ok(ServerMessage::Command(c))) => break c,
            Ok(Ok(_)) => continue,
            other => panic!("no command: {other:?}"),
        }
    };
    let CommandBody::ContainerRun(spec) = &command.body else {
        panic!("expected a run, got {:?}", command.body.kind());
    };
    let status = |id: &str| ContainerStatus {
        corral_id: id.into(),
        docker_id: "d0c".into(),
        name: "web".into(),
        state: ContainerState::Running,
        exit_code: None,
        health: None,
        restart_count: 0,
        ip: None,
    };
    a.send(&AgentMessage::Reply {
        command_id: command.id.clone(),
        result: CommandResult::of::<corral_proto::ContainerSpec>(Ok(status(&spec.corral_id))),
    })
    .await
    .unwrap();
    let out = run.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The other host reports on it: an id nobody has (first, so it is handled before the
    // events below are counted), then the owner's container changed, removed and in its
    // inventory.
    let long = format!("{}{}", spec.corral_id, "x".repeat(10_000));
    let mut exited = status(&spec.corral_id);
    exited.state = ContainerState::Exited;
    for report in [
        Report::Change {
            container: status(&long),
        },
        Report::Change { container: exited },
        Report::Removed {
            corral_id: spec.corral_id.clone(),
        },
        Report::Inventory {
            docker: docker(),
            docker_error: None,
            containers: vec![status(&spec.corral_id)],
        },
    ] {
        b.send(&AgentMessage::Report(report)).await.unwrap();
    }
    wait_until(Duration::from_secs(10), "foreign_report events", || {
        server
            .events()
            .iter()
            .filter(|e| e["kind"] == "foreign_report")
            .count()
            >= 3
    });
    let events: Vec<Value> = server
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "foreign_report")
        .collect();
    let b_id = server
        .hosts()
        .into_iter()
        .find(|h| h["name"] == "meddler")
        .unwrap()["id"]
        .clone();
    for e in &events {
        assert_eq!(e["host_id"], b_id, "{e}");
        let m = e["message"].as_str().unwrap();
        assert!(m.contains(&spec.corral_id) && m.contains("owner"), "{m}");
        assert!(m.len() < 1024, "bounded: {} bytes", m.len());
    }
    assert_eq!(
        events.len(),
        3,
        "an unknown id is not another host's: {events:?}"
    );
    // And the owner's container is untouched.
    let view = server.cli_json(&["container", "inspect", "web"]);
    assert_eq!(view["actual"], "running", "{view}");
    assert_eq!(server.host_state("meddler").as_deref(), Some("active"));
}
