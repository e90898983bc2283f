//! The HTTP routes in process: a real server (data dir, datastore, listener on loopback), its
//! router driven request by request. Authentication on every route, and each resource's
//! answers and error statuses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use corral_server::state::AppState;
use corral_server::{RunningServer, ServerOptions, api};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Api {
    _dir: tempfile::TempDir,
    server: RunningServer,
    key: String,
}

async fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    let server = corral_server::start(options).await.unwrap();
    let env = std::fs::read_to_string(&server.admin_env).unwrap();
    let key = env
        .lines()
        .find_map(|l| l.strip_prefix("CORRAL_API_KEY="))
        .unwrap()
        .trim_matches('\'')
        .trim_matches('"')
        .to_owned();
    Api {
        _dir: dir,
        server,
        key,
    }
}

impl Api {
    fn state(&self) -> Arc<AppState> {
        self.server.state.clone()
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, format!("Bearer {a}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = api::router(self.state()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn admin(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send(method, uri, Some(&self.key.clone()), body).await
    }
}

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/metrics"),
    ("GET", "/v1/environments"),
    ("POST", "/v1/environments/default/rotate-key"),
    ("POST", "/v1/environments/default/overlay"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("DELETE", "/v1/tokens/tok-x"),
    ("GET", "/v1/hosts"),
    ("GET", "/v1/hosts/h"),
    ("DELETE", "/v1/hosts/h"),
    ("POST", "/v1/hosts/h/doctor"),
    ("POST", "/v1/hosts/h/firewall"),
    ("GET", "/v1/containers"),
    ("POST", "/v1/containers"),
    ("GET", "/v1/containers/c"),
    ("DELETE", "/v1/containers/c"),
    ("POST", "/v1/containers/c/start"),
    ("POST", "/v1/containers/c/stop"),
    ("GET", "/v1/containers/c/logs"),
    ("GET", "/v1/stacks"),
    ("POST", "/v1/stacks"),
    ("GET", "/v1/stacks/s"),
    ("DELETE", "/v1/stacks/s"),
    ("POST", "/v1/stacks/s/scale"),
    ("GET", "/v1/stacks/s/services/web/logs"),
    ("GET", "/v1/events"),
    ("GET", "/v1/topology"),
    ("GET", "/v1/registries"),
    ("POST", "/v1/registries"),
    ("DELETE", "/v1/registries/r.example.com"),
    ("GET", "/v1/environments/default/admission"),
    ("PUT", "/v1/environments/default/admission"),
    ("POST", "/v1/environments/default/admission/test"),
    ("GET", "/v1/environments/default/network-policy"),
    ("PUT", "/v1/environments/default/network-policy"),
    ("POST", "/v1/environments/default/network-policy/rollback"),
    ("POST", "/v1/environments/default/network-policy/diff"),
    ("POST", "/v1/environments/default/network-policy/test"),
    ("GET", "/v1/hosts/h/images"),
    ("POST", "/v1/hosts/h/images"),
    ("DELETE", "/v1/hosts/h/images?image=x"),
    (
        "GET",
        "/v1/build-contexts/0000000000000000000000000000000000000000000000000000000000000000",
    ),
    (
        "PUT",
        "/v1/build-contexts/0000000000000000000000000000000000000000000000000000000000000000",
    ),
    ("GET", "/v1/secrets"),
    ("GET", "/v1/progress/0123456789abcdef"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_an_api_key_and_refuses_agent_secrets() {
    let api = start().await;
    let (_, token) = api.admin(Method::POST, "/v1/tokens", Some(json!({}))).await;
    let token = token["token"].as_str().unwrap().to_owned();
    for (method, uri) in ROUTES {
        let method: Method = method.parse().unwrap();
        let (status, body) = api.send(method.clone(), uri, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("API key"),
            "{body}"
        );
        let (status, _) = api
            .send(method.clone(), uri, Some("crl_key_wrong"), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        let (status, body) = api.send(method.clone(), uri, Some(&token), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {body}");
    }
    let (status, _) = api.admin(Method::GET, "/v1/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = api.send(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, Value::String("ok\n".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_environments_and_events() {
    let api = start().await;
    let (status, created) = api
        .admin(Method::POST, "/v1/tokens", Some(json!({ "max_uses": 1 })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(
        created["command"]
            .as_str()
            .unwrap()
            .starts_with("corral agent --server ")
    );
    let (status, listed) = api.admin(Method::GET, "/v1/tokens", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed[0]["state"], "active");
    let uri = format!("/v1/tokens/{}", created["id"].as_str().unwrap());
    let (status, _) = api.admin(Method::DELETE, &uri, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, listed) = api.admin(Method::GET, "/v1/tokens", None).await;
    assert_eq!(listed[0]["state"], "revoked");
    let (status, body) = api
        .admin(Method::POST, "/v1/tokens", Some(json!({ "max_uses": 0 })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = api
        .admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({ "environment": "nope" })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // A body that is not JSON: axum's status and explanation.
    let (status, _) = api
        .send(
            Method::POST,
            "/v1/tokens",
            Some(&api.key),
            Some(Value::String("x".into())),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, envs) = api.admin(Method::GET, "/v1/environments", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(envs[0]["name"], "default");
    assert_eq!(envs[0]["overlay_mode"], "wireguard");
    let (status, body) = api
        .admin(
            Method::POST,
            "/v1/environments/default/overlay",
            Some(json!({ "mode": "plaintext" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = api
        .admin(
            Method::POST,
            "/v1/environments/default/overlay",
            Some(json!({ "mode": "vxlan" })),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, envs) = api.admin(Method::GET, "/v1/environments", None).await;
    assert_eq!(envs[0]["overlay_mode"], "vxlan");
    let (status, rotated) = api
        .admin(Method::POST, "/v1/environments/default/rotate-key", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let first = rotated["generation"].as_u64().unwrap();
    let (_, rotated) = api
        .admin(Method::POST, "/v1/environments/default/rotate-key", None)
        .await;
    assert_eq!(rotated["generation"].as_u64().unwrap(), first + 1);
    let (status, _) = api
        .admin(Method::POST, "/v1/environments/nope/rotate-key", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, events) = api.admin(Method::GET, "/v1/events?limit=10", None).await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"overlay_mode_changed"), "{kinds:?}");
    assert!(kinds.contains(&"overlay_key_rotated"), "{kinds:?}");
    let (status, metrics) = api.admin(Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("corral_agents_connected 0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_containers_and_stacks_without_hosts() {
    let api = start().await;
    let (status, hosts) = api.admin(Method::GET, "/v1/hosts", None).await;
    assert_eq!((status, hosts), (StatusCode::OK, json!([])));
    let (status, _) = api.admin(Method::GET, "/v1/hosts/h1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.admin(Method::POST, "/v1/hosts/h1/doctor", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let run = json!({ "name": "web", "image": "corral-test/busybox:latest" });
    let (status, body) = api.admin(Method::POST, "/v1/containers", Some(run)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no host is connected")
    );
    let bad = json!({ "name": "Bad Name", "image": "x" });
    let (status, _) = api.admin(Method::POST, "/v1/containers", Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api.admin(Method::GET, "/v1/containers/web", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let compose = "services:\n  web:\n    image: corral-test/busybox:latest\n";
    let up = json!({ "name": "shop", "files": [{ "name": "compose.yaml", "text": compose }] });
    let (status, body) = api.admin(Method::POST, "/v1/stacks", Some(up)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("cannot be placed"),
        "{body}"
    );
    let broken =
        json!({ "name": "shop", "files": [{ "name": "compose.yaml", "text": "services: [" }] });
    let (status, _) = api.admin(Method::POST, "/v1/stacks", Some(broken)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, stacks) = api.admin(Method::GET, "/v1/stacks", None).await;
    assert_eq!((status, stacks), (StatusCode::OK, json!([])));
    let (status, _) = api.admin(Method::DELETE, "/v1/stacks/shop", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, topology) = api.admin(Method::GET, "/v1/topology", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(topology["environments"][0]["name"], "default");
}

/// Registries, admission, build contexts, project files and progress: bad input is refused
/// with a reason and changes nothing; a password is never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_files_and_builds_refuse_bad_input() {
    let api = start().await;
    for (body, says) in [
        (json!({"registry": "nginx"}), "HOST[:PORT]"),
        (
            json!({"registry": "r.example.com", "username": "u"}),
            "both",
        ),
        (
            json!({"registry": "r.example.com", "ca_pem": "not a certificate"}),
            "CA",
        ),
        (
            json!({"registry": "r.example.com", "password": "x".repeat(5000), "username": "u"}),
            "bytes",
        ),
        (json!({"registry": "r.example.com", "extra": 1}), "extra"),
    ] {
        let (status, answer) = api
            .admin(Method::POST, "/v1/registries", Some(body.clone()))
            .await;
        assert!(status.is_client_error(), "{body}: {status} {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }
    let (status, _) = api
        .admin(
            Method::POST,
            "/v1/registries",
            Some(json!({"registry": "r.example.com:5000", "username": "u", "password": "s3cret-pw", "builds": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = api.admin(Method::GET, "/v1/registries", None).await;
    assert_eq!(listed[0]["builds"], true, "{listed}");
    assert!(!listed.to_string().contains("s3cret-pw"));
    let (status, _) = api
        .admin(Method::DELETE, "/v1/registries/nope.example.com", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, answer) = api
        .admin(
            Method::PUT,
            "/v1/environments/default/admission",
            Some(json!({"document": "allow_everything: true"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (_, shown) = api
        .admin(Method::GET, "/v1/environments/default/admission", None)
        .await;
    assert_eq!(
        shown["generation"],
        Value::Null,
        "a refused policy changed nothing"
    );

    // A build context whose bytes are not its name.
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/v1/build-contexts/0000000000000000000000000000000000000000000000000000000000000000")
        .header(header::AUTHORIZATION, format!("Bearer {}", api.key))
        .body(Body::from("not that"))
        .unwrap();
    let resp = api::router(api.state()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (status, _) = api.admin(Method::GET, "/v1/build-contexts/zz", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Project files that climb out, and a progress id that is not one.
    let up = |files: Value, progress: Option<&str>| {
        json!({
            "name": "p",
            "files": [{"name": "compose.yaml", "text": "services:\n  a:\n    image: x\n"}],
            "project_files": files,
            "progress_id": progress,
        })
    };
    for (body, says) in [
        (
            up(
                json!([{"path": "../etc/passwd", "mode": 420, "data": ""}]),
                None,
            ),
            "relative path",
        ),
        (
            up(json!([{"path": "a", "mode": 420, "data": "!!"}]), None),
            "base64",
        ),
        (
            up(
                json!([{"path": "a", "mode": 420, "data": ""}, {"path": "a", "mode": 420, "data": ""}]),
                None,
            ),
            "twice",
        ),
        (up(json!([]), Some("../x")), "progress_id"),
    ] {
        let (status, answer) = api
            .admin(Method::POST, "/v1/stacks", Some(body.clone()))
            .await;
        assert!(status.is_client_error(), "{body}: {status} {answer}");
        assert!(answer.to_string().contains(says), "{body}: {answer}");
    }
    let (_, stacks) = api.admin(Method::GET, "/v1/stacks", None).await;
    assert_eq!(stacks, json!([]));
    let (status, _) = api.admin(Method::GET, "/v1/progress/short", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// The network policy: a bad document is refused with its place and changes nothing; every
/// apply and rollback is a new generation; test and diff refuse what they cannot answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policy_refuses_bad_input_and_keeps_its_generations() {
    let api = start().await;
    let path = "/v1/environments/default/network-policy";
    for (document, says) in [
        ("default: maybe\n".to_owned(), "line 1"),
        ("allow:\n  - ports: [99999/tcp]\n".to_owned(), "line 2"),
        (
            "allow:\n  - within: stack\n    from: { stack: a }\n".to_owned(),
            "within",
        ),
        (
            "deny:\n  - from: { cidr: 10.0.0.1/8 }\n".to_owned(),
            "host bits",
        ),
        (format!("# {}\n", "x".repeat(260 * 1024)), "limit"),
    ] {
        let (status, answer) = api
            .admin(Method::PUT, path, Some(json!({ "document": document })))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{says}: {answer}"
        );
    }
    let (status, answer) = api
        .admin(
            Method::PUT,
            path,
            Some(json!({ "document": "", "extra": 1 })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let (status, _) = api
        .admin(
            Method::PUT,
            path,
            Some(json!({ "document": "x".repeat(1100 * 1024) })),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (_, shown) = api.admin(Method::GET, path, None).await;
    assert_eq!(
        shown["generation"],
        Value::Null,
        "a refused document changed nothing"
    );
    let (status, _) = api
        .admin(Method::POST, &format!("{path}/rollback"), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing to roll back to");

    let first = "default: deny\n";
    let second = "default: allow\ndeny:\n  - name: no-ssh\n    ports: [22/tcp]\n";
    for (doc, generation) in [(first, 1), (second, 2)] {
        let (status, shown) = api
            .admin(Method::PUT, path, Some(json!({ "document": doc })))
            .await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        assert_eq!(shown["generation"], generation);
        assert_eq!(shown["document"], doc);
    }
    let (status, shown) = api
        .admin(Method::POST, &format!("{path}/rollback"), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["generation"], 3);
    assert_eq!(shown["document"], first);
    assert_eq!(shown["history"].as_array().unwrap().len(), 3);
    let (status, _) = api
        .admin(
            Method::POST,
            &format!("{path}/rollback"),
            Some(json!({"generation": 99})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Tests: an outside address against the policy in force (no rule: the ingress default);
    // a draft; what cannot be answered.
    let test = |from: &str, to: &str, traffic: &str, document: Option<&str>| json!({ "from": from, "to": to, "traffic": traffic, "document": document });
    let (status, answer) = api
        .admin(
            Method::POST,
            &format!("{path}/test"),
            Some(test("203.0.113.9", "198.51.100.7", "443/tcp", None)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["action"], "allow");
    assert!(
        answer["decided_by"]
            .as_str()
            .unwrap()
            .contains("not governed"),
        "{answer}"
    );
    for (body, status_wanted, says) in [
        (
            test("shop/web", "shop/db", "5432/tcp", None),
            StatusCode::NOT_FOUND,
            "no service",
        ),
        (
            test("203.0.113.9", "10.42.0.5", "80/tcp", None),
            StatusCode::BAD_REQUEST,
            "overlay range",
        ),
        (
            test("203.0.113.9", "198.51.100.7", "80/sctp", None),
            StatusCode::BAD_REQUEST,
            "tcp or udp",
        ),
        (
            test("web", "db", "80/tcp", None),
            StatusCode::BAD_REQUEST,
            "STACK/SERVICE",
        ),
        (
            test("203.0.113.9", "198.51.100.7", "80", Some("default: nope")),
            StatusCode::BAD_REQUEST,
            "line 1",
        ),
    ] {
        let (status, answer) = api
            .admin(Method::POST, &format!("{path}/test"), Some(body.clone()))
            .await;
        assert_eq!(status, status_wanted, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }
    let (status, diff) = api
        .admin(
            Method::POST,
            &format!("{path}/diff"),
            Some(json!({"from": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    assert_eq!(diff["from"], "generation 2");
    assert_eq!(diff["to"], "generation 3");
    assert_eq!(diff["documents_differ"], true);
    let (status, _) = api
        .admin(
            Method::POST,
            &format!("{path}/diff"),
            Some(json!({"from": 77})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
