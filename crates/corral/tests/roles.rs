//! Who may call which route: every API route (read from the router's source, so a new route
//! without an entry here fails the test) against an admin, users of each role in one
//! environment, a member of another environment, no key, an agent credential and a
//! registration token — with a real server, its in-process agent on the machine's Docker, a
//! deployed stack, and objects of their own for each principal to remove. Then what each sees
//! in listings: nothing of an environment they have no role in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use corral_tls::CaChecksum;
use reqwest::Method;
use serde_json::{Value, json};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Anyone, without a key.
    Public,
    /// Any user's valid key.
    AnyUser,
    /// No key at all (answered "not logged in") or any user's valid key; a key that is not
    /// a user's (an agent credential, a registration token) is refused.
    NoKeyOrUser,
    /// An admin.
    Admin,
    /// A role in the route's environment (`default`) allowing this much.
    Env(Access),
    /// A role allowing `Operate` in some environment.
    OperateSomewhere,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Access {
    Read,
    Operate,
    Hosts,
    Manage,
}

/// The principals, each with its role in `default` (the admin's is owner everywhere).
const PRINCIPALS: [&str; 9] = [
    "anon", "cred", "token", "out", "ro", "rs", "mb", "ow", "admin",
];

fn role_of(p: &str) -> Option<Access> {
    match p {
        "ro" => Some(Access::Read),
        "rs" => Some(Access::Operate),
        "mb" => Some(Access::Hosts),
        "ow" | "admin" => Some(Access::Manage),
        _ => None,
    }
}

fn allowed(p: &str, need: Need) -> bool {
    let user = matches!(p, "out" | "ro" | "rs" | "mb" | "ow" | "admin");
    match need {
        Need::Public => true,
        Need::AnyUser => user,
        Need::NoKeyOrUser => user || p == "anon",
        Need::Admin => p == "admin",
        Need::Env(a) => role_of(p).is_some_and(|r| r >= a),
        Need::OperateSomewhere => matches!(p, "out" | "rs" | "mb" | "ow" | "admin"),
    }
}

/// One request of the table: route template (as in the router), method, the concrete path for
/// principal `p`, a body, and what it needs.
struct Row {
    route: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
    need: Need,
}

/// Routes and methods the server declares: the `/v1/` ones as its OpenAPI document lists them
/// (the document is made by the same `routes!` that registers them, so it is the router's own
/// list), the others as `crates/corral-server/src/api/mod.rs` adds them by hand.
fn declared_routes(openapi: &Value) -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../corral-server/src/api/mod.rs"
    ))
    .unwrap();
    let router = &src[src.find("pub fn router").unwrap()..];
    let router = &router[..router.find(".fallback(").unwrap()];
    let mut out = BTreeSet::new();
    for chunk in router.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).unwrap().to_owned();
        for method in ["get", "post", "put", "delete"] {
            if chunk.contains(&format!("{method}(")) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_as_the_roles_table_says() {
    require_docker();
    let t = tmp();
    let pid = std::process::id();
    let stack = format!("rt{pid}");
    // Declared before the server: dropped after it, so nothing recreates what they remove.
    let _cleanup = (StackCleanup(stack.clone()), ContainersCleanup(pid));
    let server = Server::start(
        &t.path().join("data"),
        &["--with-agent", "--agent-no-overlay"],
    );
    wait_until(Duration::from_secs(30), "the local agent's Docker", || {
        server
            .hosts()
            .iter()
            .any(|h| h["docker"]["state"] == "available")
    });
    let local = server.hosts()[0]["name"].as_str().unwrap().to_owned();

    corral_tls::install_default_provider();
    let tls = corral_tls::client_config(CaChecksum::parse(&server.env.checksum).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let base = server.url();
    let admin_key = server.env.api_key.clone();
    let call = |method: Method, path: String, key: Option<String>, body: Option<Value>| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let mut req = http.request(method, format!("{base}{path}"));
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            // The live feed never ends: its answer's status is what is checked.
            let streams = resp
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let text = if streams {
                String::new()
            } else {
                resp.text().await.unwrap_or_default()
            };
            (status, text)
        }
    };
    let admin = |method: Method, path: &str, body: Value| {
        let call = &call;
        let admin_key = admin_key.clone();
        let path = path.to_owned();
        async move {
            let (status, text) =
                call(method.clone(), path.clone(), Some(admin_key), Some(body)).await;
            assert!(status < 300, "{method} {path}: {status} {text}");
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)
        }
    };

    // Users and their roles; "out" is a member of another environment.
    admin(Method::POST, "/v1/environments", json!({"name": "b"})).await;
    let password = "correct horse battery staple";
    let mut keys: HashMap<&str, String> = HashMap::new();
    keys.insert("admin", admin_key.clone());
    for (user, env, role) in [
        ("ro", "default", "read-only"),
        ("rs", "default", "restricted"),
        ("mb", "default", "member"),
        ("ow", "default", "owner"),
        ("out", "b", "member"),
    ] {
        admin(
            Method::POST,
            "/v1/users",
            json!({"name": user, "password": password}),
        )
        .await;
        admin(
            Method::PUT,
            &format!("/v1/users/{user}/roles/{env}"),
            json!({"role": role}),
        )
        .await;
        let (status, text) = call(
            Method::POST,
            "/v1/login".into(),
            None,
            Some(json!({"user": user, "password": password})),
        )
        .await;
        assert_eq!(status, 201, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        keys.insert(user, v["key"].as_str().unwrap().to_owned());
    }
    // A registration token and an agent credential.
    let token = admin(Method::POST, "/v1/tokens", json!({})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let cred = credential();
    let runtime_hosts = {
        let mut tunnels = Vec::new();
        for p in PRINCIPALS {
            let tunnel = dial_agent(
                &server,
                corral_proto::Auth::Register {
                    token: token.clone(),
                    credential: if p == "admin" {
                        cred.clone()
                    } else {
                        credential()
                    },
                },
                corral_proto::HostFacts {
                    name: format!("v-{p}"),
                    hostname: format!("v-{p}"),
                    ..Default::default()
                },
            )
            .await;
            tunnels.push(tunnel);
        }
        tunnels
    };
    drop(runtime_hosts);
    keys.insert("cred", cred.clone());
    keys.insert("token", token.clone());

    // Objects: a stack, a container and a token for each principal to act on.
    let compose =
        format!("services:\n  web:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n");
    let file = t.path().join("compose.yaml");
    std::fs::write(&file, &compose).unwrap();
    server.cli_ok(&[
        "up",
        "-f",
        file.to_str().unwrap(),
        "-p",
        &stack,
        "--wait",
        "--timeout",
        "60s",
    ]);
    let mut victims: HashMap<&str, (String, String)> = HashMap::new();
    for p in PRINCIPALS {
        let name = format!("v-{p}-{pid}");
        admin(
            Method::POST,
            "/v1/containers",
            json!({"name": name, "image": IMAGE, "host": local, "cmd": ["sleep", "3600"]}),
        )
        .await;
        let tok = admin(Method::POST, "/v1/tokens", json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        victims.insert(p, (name, tok));
    }
    admin(Method::POST, "/v1/environments", json!({"name": "victim"})).await;
    admin(
        Method::POST,
        "/v1/users",
        json!({"name": "victim", "password": password}),
    )
    .await;

    let rows = |p: &str| -> Vec<Row> {
        let (ctr, tok) = victims[p].clone();
        let host = format!("v-{p}");
        let r =
            |route: &'static str, method: Method, path: String, body: Option<Value>, need| Row {
                route,
                method,
                path,
                body,
                need,
            };
        use Access::*;
        use Need::*;
        vec![
            r("/healthz", Method::GET, "/healthz".into(), None, Public),
            // The web UI: its page is public; its session and feed need a key.
            r("/", Method::GET, "/".into(), None, Public),
            r("/ui", Method::GET, "/ui".into(), None, Public),
            r("/ui/", Method::GET, "/ui/".into(), None, Public),
            r("/ui/app.js", Method::GET, "/ui/app.js".into(), None, Public),
            r(
                "/ui/app.css",
                Method::GET,
                "/ui/app.css".into(),
                None,
                Public,
            ),
            r(
                "/ui/login",
                Method::POST,
                "/ui/login".into(),
                Some(json!({})),
                Public,
            ),
            // Without a key: "not logged in" (204), not a refusal.
            r(
                "/ui/session",
                Method::GET,
                "/ui/session".into(),
                None,
                NoKeyOrUser,
            ),
            r(
                "/ui/logout",
                Method::POST,
                "/ui/logout".into(),
                None,
                AnyUser,
            ),
            r("/v1/live", Method::GET, "/v1/live".into(), None, AnyUser),
            r(
                "/v1/diagram.svg",
                Method::GET,
                "/v1/diagram.svg".into(),
                None,
                AnyUser,
            ),
            r(
                "/v1/firewall",
                Method::GET,
                "/v1/firewall".into(),
                None,
                AnyUser,
            ),
            r(
                "/v1/environments/{name}/network-policy/diagram",
                Method::GET,
                "/v1/environments/default/network-policy/diagram".into(),
                None,
                Env(Read),
            ),
            r("/metrics", Method::GET, "/metrics".into(), None, Admin),
            r(
                "/v1/openapi.json",
                Method::GET,
                "/v1/openapi.json".into(),
                None,
                Public,
            ),
            r(
                "/v1/connect",
                Method::GET,
                "/v1/connect".into(),
                None,
                Public,
            ),
            r(
                "/v1/login",
                Method::POST,
                "/v1/login".into(),
                Some(json!({})),
                Public,
            ),
            r(
                "/v1/whoami",
                Method::GET,
                "/v1/whoami".into(),
                None,
                AnyUser,
            ),
            r(
                "/v1/environments",
                Method::GET,
                "/v1/environments".into(),
                None,
                AnyUser,
            ),
            r(
                "/v1/environments",
                Method::POST,
                "/v1/environments".into(),
                Some(json!({"name": "Bad Name"})),
                Admin,
            ),
            r(
                "/v1/environments/{name}",
                Method::DELETE,
                "/v1/environments/victim".into(),
                None,
                Admin,
            ),
            r(
                "/v1/environments/{name}/rotate-key",
                Method::POST,
                "/v1/environments/default/rotate-key".into(),
                None,
                Env(Manage),
            ),
            r(
                "/v1/environments/{name}/overlay",
                Method::POST,
                "/v1/environments/default/overlay".into(),
                Some(json!({})),
                Env(Manage),
            ),
            r(
                "/v1/environments/{name}/admission",
                Method::GET,
                "/v1/environments/default/admission".into(),
                None,
                Env(Read),
            ),
            r(
                "/v1/environments/{name}/admission",
                Method::PUT,
                "/v1/environments/default/admission".into(),
                Some(json!({"document": "not: [valid"})),
                Env(Manage),
            ),
            r(
                "/v1/environments/{name}/admission/test",
                Method::POST,
                "/v1/environments/default/admission/test".into(),
                Some(json!({"files": []})),
                Env(Read),
            ),
            r(
                "/v1/environments/{name}/network-policy",
                Method::GET,
                "/v1/environments/default/network-policy".into(),
                None,
                Env(Read),
            ),
            r(
                "/v1/environments/{name}/network-policy",
                Method::PUT,
                "/v1/environments/default/network-policy".into(),
                Some(json!({"document": "default: sideways"})),
                Env(Manage),
            ),
            r(
                "/v1/environments/{name}/network-policy/rollback",
                Method::POST,
                "/v1/environments/default/network-policy/rollback".into(),
                Some(json!({"generation": 999})),
                Env(Manage),
            ),
            r(
                "/v1/environments/{name}/network-policy/diff",
                Method::POST,
                "/v1/environments/default/network-policy/diff".into(),
                Some(json!({"document": "default: sideways"})),
                Env(Read),
            ),
            r(
                "/v1/environments/{name}/network-policy/test",
                Method::POST,
                "/v1/environments/default/network-policy/test".into(),
                Some(json!({"from": "nowhere/x", "to": "nowhere/y", "traffic": "1/tcp"})),
                Env(Read),
            ),
            r(
                "/v1/registries",
                Method::GET,
                "/v1/registries?environment=default".into(),
                None,
                Env(Read),
            ),
            r(
                "/v1/registries",
                Method::POST,
                "/v1/registries".into(),
                Some(json!({"environment": "default", "registry": "not a registry!"})),
                Env(Manage),
            ),
            r(
                "/v1/registries/{registry}",
                Method::DELETE,
                "/v1/registries/none.example:5000?environment=default".into(),
                None,
                Env(Manage),
            ),
            r(
                "/v1/build-contexts/{sha}",
                Method::GET,
                "/v1/build-contexts/nothex".into(),
                None,
                OperateSomewhere,
            ),
            r(
                "/v1/build-contexts/{sha}",
                Method::PUT,
                "/v1/build-contexts/nothex".into(),
                None,
                OperateSomewhere,
            ),
            r(
                "/v1/hosts/{id}/images",
                Method::GET,
                format!("/v1/hosts/{local}/images"),
                None,
                Env(Read),
            ),
            r(
                "/v1/hosts/{id}/images",
                Method::POST,
                format!("/v1/hosts/{local}/images"),
                Some(json!({"image": "Not A Reference"})),
                Env(Hosts),
            ),
            r(
                "/v1/hosts/{id}/images",
                Method::DELETE,
                format!("/v1/hosts/{local}/images?image=Not%20A%20Reference"),
                None,
                Env(Hosts),
            ),
            r(
                "/v1/tokens",
                Method::GET,
                "/v1/tokens".into(),
                None,
                AnyUser,
            ),
            r(
                "/v1/tokens",
                Method::POST,
                "/v1/tokens".into(),
                Some(json!({"environment": "default", "ttl_seconds": 60})),
                Env(Manage),
            ),
            r(
                "/v1/tokens/{id}",
                Method::DELETE,
                format!("/v1/tokens/{tok}"),
                None,
                Env(Manage),
            ),
            r("/v1/hosts", Method::GET, "/v1/hosts".into(), None, AnyUser),
            r(
                "/v1/servers",
                Method::GET,
                "/v1/servers".into(),
                None,
                AnyUser,
            ),
            r(
                "/v1/hosts/{id}",
                Method::GET,
                format!("/v1/hosts/{host}"),
                None,
                Env(Read),
            ),
            r(
                "/v1/hosts/{id}",
                Method::DELETE,
                format!("/v1/hosts/{host}"),
                None,
                Env(Hosts),
            ),
            r(
                "/v1/hosts/{id}/doctor",
                Method::POST,
                format!("/v1/hosts/{local}/doctor"),
                None,
                Env(Read),
            ),
            r(
                "/v1/hosts/{id}/firewall",
                Method::POST,
                format!("/v1/hosts/{local}/firewall"),
                Some(json!({"unknown": 1})),
                Env(Hosts),
            ),
            r(
                "/v1/containers",
                Method::GET,
                "/v1/containers".into(),
                None,
                AnyUser,
            ),
            r(
                "/v1/containers",
                Method::POST,
                "/v1/containers".into(),
                Some(json!({"name": "Bad Name", "image": IMAGE, "host": local})),
                Env(Operate),
            ),
            r(
                "/v1/containers/{name}",
                Method::GET,
                format!("/v1/containers/{ctr}"),
                None,
                Env(Read),
            ),
            r(
                "/v1/containers/{name}/start",
                Method::POST,
                format!("/v1/containers/{ctr}/start"),
                None,
                Env(Operate),
            ),
            r(
                "/v1/containers/{name}/logs",
                Method::GET,
                format!("/v1/containers/{ctr}/logs?tail=1"),
                None,
                Env(Read),
            ),
            r(
                "/v1/containers/{name}/stop",
                Method::POST,
                format!("/v1/containers/{ctr}/stop"),
                None,
                Env(Operate),
            ),
            r(
                "/v1/containers/{name}",
                Method::DELETE,
                format!("/v1/containers/{ctr}"),
                None,
                Env(Operate),
            ),
            r(
                "/v1/stacks",
                Method::GET,
                "/v1/stacks".into(),
                None,
                AnyUser,
            ),
            r(
                "/v1/stacks",
                Method::POST,
                "/v1/stacks".into(),
                Some(
                    json!({"name": stack, "environment": "default", "files": [{"name": "compose.yaml", "text": "services: ["}]}),
                ),
                Env(Operate),
            ),
            r(
                "/v1/stacks/{name}",
                Method::GET,
                format!("/v1/stacks/{stack}"),
                None,
                Env(Read),
            ),
            r(
                "/v1/stacks/{name}",
                Method::DELETE,
                format!("/v1/stacks/{stack}?volumes=maybe"),
                None,
                Env(Operate),
            ),
            r(
                "/v1/stacks/{name}/scale",
                Method::POST,
                format!("/v1/stacks/{stack}/scale"),
                Some(json!({"service": "nothere", "replicas": 1})),
                Env(Operate),
            ),
            r(
                "/v1/stacks/{name}/services/{service}/logs",
                Method::GET,
                format!("/v1/stacks/{stack}/services/web/logs?tail=1"),
                None,
                Env(Read),
            ),
            r(
                "/v1/secrets",
                Method::GET,
                "/v1/secrets".into(),
                None,
                AnyUser,
            ),
            r(
                "/v1/progress/{id}",
                Method::GET,
                "/v1/progress/0123456789abcdef".into(),
                None,
                AnyUser,
            ),
            r(
                "/v1/events",
                Method::GET,
                "/v1/events".into(),
                None,
                AnyUser,
            ),
            r(
                "/v1/topology",
                Method::GET,
                "/v1/topology".into(),
                None,
                AnyUser,
            ),
            r("/v1/users", Method::GET, "/v1/users".into(), None, Admin),
            r(
                "/v1/users",
                Method::POST,
                "/v1/users".into(),
                Some(json!({"name": "Bad Name"})),
                Admin,
            ),
            r(
                "/v1/users/{name}/password",
                Method::PUT,
                "/v1/users/victim/password".into(),
                Some(json!({"password": "another long password"})),
                Admin,
            ),
            r(
                "/v1/users/{name}/roles/{env}",
                Method::PUT,
                "/v1/users/victim/roles/default".into(),
                Some(json!({"role": "read-only"})),
                Admin,
            ),
            r(
                "/v1/users/{name}/roles/{env}",
                Method::DELETE,
                "/v1/users/victim/roles/default".into(),
                None,
                Admin,
            ),
            r(
                "/v1/users/{name}",
                Method::DELETE,
                "/v1/users/victim".into(),
                None,
                Admin,
            ),
            r("/v1/keys", Method::GET, "/v1/keys".into(), None, AnyUser),
            r(
                "/v1/keys",
                Method::POST,
                "/v1/keys".into(),
                Some(json!({"name": "", "ttl_secs": 60})),
                AnyUser,
            ),
            r(
                "/v1/keys/{id}",
                Method::DELETE,
                "/v1/keys/key-nothere".into(),
                None,
                AnyUser,
            ),
            r("/v1/audit", Method::GET, "/v1/audit".into(), None, Admin),
            r(
                "/v1/audit/export",
                Method::GET,
                "/v1/audit/export".into(),
                None,
                Admin,
            ),
            r(
                "/v1/audit/verify",
                Method::GET,
                "/v1/audit/verify".into(),
                None,
                Admin,
            ),
        ]
    };

    // Every declared route has a row, and every row a declared route.
    let (status, openapi) = call(Method::GET, "/v1/openapi.json".into(), None, None).await;
    assert_eq!(status, 200, "{openapi}");
    let openapi: Value = serde_json::from_str(&openapi).unwrap();
    let covered: BTreeSet<(String, String)> = rows("admin")
        .iter()
        .map(|r| (r.method.to_string(), r.route.to_owned()))
        .collect();
    assert_eq!(
        declared_routes(&openapi),
        covered,
        "a route without an entry in this table (or an entry without a route)"
    );

    let mut failures = Vec::new();
    for p in PRINCIPALS {
        for row in rows(p) {
            let key = if p == "anon" {
                None
            } else {
                Some(keys[p].clone())
            };
            let (status, text) =
                call(row.method.clone(), row.path.clone(), key, row.body.clone()).await;
            let denied = matches!(status, 401 | 403 | 404);
            let want = allowed(p, row.need);
            let ok = if want {
                !matches!(status, 401 | 403)
            } else {
                denied && !(200..300).contains(&status)
            };
            if !ok {
                failures.push(format!(
                    "{p}: {} {} ({:?}): {status} {}",
                    row.method,
                    row.path,
                    row.need,
                    text.chars().take(200).collect::<String>()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // What each sees: "out" nothing of default; "ro" the default's hosts and stack.
    for (path, field) in [
        ("/v1/hosts", "name"),
        ("/v1/stacks", "name"),
        ("/v1/containers", "name"),
        ("/v1/environments", "name"),
    ] {
        let (_, text) = call(Method::GET, path.into(), Some(keys["out"].clone()), None).await;
        let list: Value = serde_json::from_str(&text).unwrap();
        let names: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v[field].as_str().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| *n == "b"),
            "out sees {path}: {names:?}"
        );
        let (_, text) = call(Method::GET, path.into(), Some(keys["ro"].clone()), None).await;
        let list: Value = serde_json::from_str(&text).unwrap();
        assert!(!list.as_array().unwrap().is_empty(), "ro sees no {path}");
    }
    let (_, text) = call(
        Method::GET,
        "/v1/topology".into(),
        Some(keys["out"].clone()),
        None,
    )
    .await;
    let topo: Value = serde_json::from_str(&text).unwrap();
    assert!(topo["hosts"].as_array().unwrap().is_empty(), "{topo}");
    let (_, text) = call(
        Method::GET,
        "/v1/events".into(),
        Some(keys["out"].clone()),
        None,
    )
    .await;
    assert_eq!(text.trim(), "[]");
    let (_, text) = call(
        Method::GET,
        "/v1/events".into(),
        Some(keys["ro"].clone()),
        None,
    )
    .await;
    assert!(text.contains("host_registered"), "{text}");
    // The read-only user cannot deploy, through the CLI either.
    let out = server.cli_with(
        &["up", "-f", file.to_str().unwrap(), "-p", "ro-stack"],
        &keys["ro"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is read-only in environment \"default\"; this needs restricted or more"),
        "{err}"
    );
    // A removed user's key is refused at once, and a log stream it holds open ends within a
    // second or two.
    let mut stream = http
        .get(format!(
            "{base}/v1/stacks/{stack}/services/web/logs?follow=true"
        ))
        .bearer_auth(&keys["rs"])
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    admin(Method::DELETE, "/v1/users/rs", json!(null)).await;
    let removed = std::time::Instant::now();
    let mut seen = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.chunk()).await {
            Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("the stream of a removed user is still open: {seen}"),
        }
    }
    assert!(
        removed.elapsed() < Duration::from_secs(5),
        "{:?}",
        removed.elapsed()
    );
    assert!(seen.contains("no longer works; stream closed"), "{seen}");
    admin(Method::DELETE, "/v1/users/mb", json!(null)).await;
    let (status, text) = call(
        Method::GET,
        "/v1/hosts".into(),
        Some(keys["mb"].clone()),
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert!(text.contains("was removed"), "{text}");
}

/// Removes the containers the test ran outside its stack (`v-<principal>-<pid>`) from the
/// machine's Docker, whatever happened; the stack's own containers, network and volumes are
/// `StackCleanup`'s.
struct ContainersCleanup(u32);

impl Drop for ContainersCleanup {
    fn drop(&mut self) {
        let filter = format!("name=v-.*-{}", self.0);
        let out = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = docker(&["rm", "-f", "-v", id]);
        }
    }
}
