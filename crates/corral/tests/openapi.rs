//! The API's OpenAPI document, `/v1/openapi.json`: served without a key, valid OpenAPI 3.1 (the
//! `openapi-spec-validator` of the OpenAPI tooling community), and a live server holds to it
//! when schemathesis fuzzes every operation: no 5xx, and no status code, content type or body
//! the document does not describe. That the document names every `/v1/` route, and only
//! those, is checked by the roles test against its table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;
use corral_testkit::require;
use serde_json::Value;

/// Examples per operation and phase: enough to reach every operation's error paths, bounded so
/// the run takes about a minute.
const EXAMPLES: &str = "15";

fn document(server: &Server) -> (Value, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--cacert",
            server.dir.join("pki/ca.pem").to_str().unwrap(),
            &format!("{}/v1/openapi.json", server.url()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "GET /v1/openapi.json without a key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    (serde_json::from_str(&text).unwrap(), text)
}

#[test]
fn the_document_is_served_without_a_key_and_is_valid_openapi() {
    require::tool("curl", "curl");
    require::python_module(
        "openapi_spec_validator",
        "python3 -m pip install openapi-spec-validator",
    );
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (doc, text) = document(&server);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "corral API");
    let paths = doc["paths"].as_object().unwrap();
    assert!(
        paths.keys().all(|p| p.starts_with("/v1/")),
        "{:?}",
        paths.keys()
    );
    // A few routes of every area, and what an operation carries.
    for route in [
        "/v1/hosts",
        "/v1/stacks/{name}",
        "/v1/environments/{name}/network-policy/test",
        "/v1/users/{name}/roles/{env}",
        "/v1/audit/verify",
        "/v1/connect",
    ] {
        assert!(paths.contains_key(route), "{route} is not in the document");
    }
    let up = &paths["/v1/stacks"]["post"];
    assert_eq!(
        up["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/UpRequest"
    );
    assert_eq!(
        up["responses"]["422"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    // Field documentation reaches the schemas.
    let host = &doc["components"]["schemas"]["HostView"];
    assert!(
        host["properties"]["overlay_subnet"]["description"].is_string(),
        "{host}"
    );
    // The login needs no key; everything else names the bearer key.
    assert_eq!(
        paths["/v1/login"]["post"]["security"],
        serde_json::json!([{}])
    );
    assert_eq!(doc["security"], serde_json::json!([{"api_key": []}]));

    let file = t.path().join("openapi.json");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the document is not valid OpenAPI: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One schemathesis run against `server` with the admin's key, over the operations `filter`
/// selects; returns its output, having asserted it found nothing.
fn schemathesis(server: &Server, filter: &[&str], report: &std::path::Path) -> String {
    let auth = format!("Authorization: Bearer {}", server.env.api_key);
    let url = format!("{}/v1/openapi.json", server.url());
    let ca = server.dir.join("pki/ca.pem");
    let mut args = vec![
        "-m",
        "schemathesis.cli",
        "run",
        &url,
        "--tls-verify",
        ca.to_str().unwrap(),
        "-H",
        &auth,
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        EXAMPLES,
        "--request-timeout",
        "20",
        // One worker: with two threads, hypothesis's description of a strategy (it parses
        // Python source with `ast`) failed once with "AST constructor recursion depth
        // mismatch", a thread-safety bug of CPython 3.11's AST validator, not a finding.
        "--workers",
        "1",
        "--seed",
        "1",
        "--report",
        "junit",
        "--report-dir",
        report.to_str().unwrap(),
    ];
    args.extend_from_slice(filter);
    // Its cache of found crashes goes in the test's directory, not the checkout.
    let out = Command::new("python3")
        .args(&args)
        .current_dir(report.parent().unwrap())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    text
}

#[test]
fn a_live_server_holds_to_its_document_under_schemathesis() {
    require::tool("curl", "curl");
    require::python_module("schemathesis", "python3 -m pip install schemathesis");
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (doc, _) = document(&server);
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| {
            let methods = item.as_object().unwrap().keys();
            methods
                .filter(|m| ["get", "post", "put", "delete", "patch"].contains(&m.as_str()))
                .count()
        })
        .sum();

    // First every operation but the two that take away the key the run uses (it reads key ids
    // and user names from the answers, and would revoke its own key, then meet only 401s).
    let text = schemathesis(
        &server,
        &[
            "--exclude-operation-id",
            "users_revoke_key",
            "--exclude-operation-id",
            "users_remove",
        ],
        &t.path().join("report-1"),
    );
    assert!(
        text.contains(&format!("Tested: {}", operations - 2)),
        "{text}"
    );
    assert!(
        !text.contains("Authentication failed"),
        "the run did not get past authentication:\n{text}"
    );
    // Then those two, last.
    let text = schemathesis(
        &server,
        &[
            "--include-operation-id",
            "users_revoke_key",
            "--include-operation-id",
            "users_remove",
        ],
        &t.path().join("report-2"),
    );
    assert!(text.contains("Tested: 2"), "{text}");
    // The server is still up and answers.
    let (doc, _) = document(&server);
    assert_eq!(doc["openapi"], "3.1.0");
}
