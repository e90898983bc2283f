//! The control plane end to end: real server and agent processes on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn first_start_creates_everything_and_restart_reuses_it() {
    let t = tmp();
    let data = t.path().join("data");
    let mut server = Server::start(&data, &[]);
    // On PostgreSQL the datastore is the database, not a file.
    assert_eq!(data.join("corral.db").exists(), !on_postgres());
    for f in [
        "admin.env",
        "pki/ca.pem",
        "pki/ca-key.pem",
        "pki/server.pem",
        "pki/server-key.pem",
    ] {
        assert!(data.join(f).exists(), "{f} missing");
    }
    let mode = |f: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(data.join(f)).unwrap().permissions(),
        ) & 0o777
    };
    assert_eq!(mode("admin.env"), 0o600);
    assert_eq!(mode("pki/ca-key.pem"), 0o600);
    assert_eq!(mode("pki/server-key.pem"), 0o600);
    let first = server.env.clone();
    assert!(first.checksum.starts_with("sha256:") && first.checksum.len() == 71);
    assert!(first.api_key.starts_with("crl_key_"));
    // The admin key is stored hashed only.
    let db = server.datastore_bytes();
    assert!(
        !db.windows(first.api_key.len())
            .any(|w| w == first.api_key.as_bytes())
    );

    let envs = server.cli_json(&["host", "ls"]);
    assert_eq!(envs, serde_json::json!([]));

    server.restart();
    assert_eq!(
        server.env.api_key, first.api_key,
        "restart reuses the admin key"
    );
    assert_eq!(server.env.checksum, first.checksum, "restart reuses the CA");
    server.cli_ok(&["host", "ls"]);

    // /healthz answers without credentials, over the pinned TLS.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(data.join("pki/ca.pem"))
        .arg(format!("{}/healthz", server.url()))
        .output();
    if let Ok(out) = out {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    }
}

#[test]
fn agent_registers_reconnects_after_server_restart_and_listens_on_nothing() {
    let t = tmp();
    let mut server = Server::start(&t.path().join("data"), FAST_HEARTBEATS);
    let (token_id, token) = server.token(&["--max-uses", "1"]);
    let state = t.path().join("agent1");
    let mut agent = start_agent(
        &server,
        &state,
        "web-1",
        Some(&token),
        &["--label", "zone=eu"],
    );
    wait_until(Duration::from_secs(20), "web-1 to be active", || {
        server.host_state("web-1").as_deref() == Some("active")
    });
    let host = server
        .hosts()
        .into_iter()
        .find(|h| h["name"] == "web-1")
        .unwrap();
    assert_eq!(host["labels"]["zone"], "eu");
    assert_eq!(host["environment"], "default");
    assert!(host["kernel"].as_str().unwrap().len() > 1);
    assert!(host["os"].as_str().unwrap().len() > 1);
    assert!(
        host["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    // The credential is on disk with mode 0600, and the server keeps only its hash.
    let cred = std::fs::read_to_string(state.join("credential")).unwrap();
    assert!(cred.starts_with("crl_host_"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state.join("credential"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let db = server.datastore_bytes();
    assert!(!db.windows(cred.len()).any(|w| w == cred.as_bytes()));
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()));

    // The agent has sockets (its tunnel) but not one listening TCP socket.
    assert!(socket_count(agent.pid()) >= 1);
    assert_eq!(listening_tcp_sockets(agent.pid()), Vec::<String>::new());
    // Sanity check of the probe itself: the server does listen.
    assert!(!listening_tcp_sockets(server.proc.as_ref().unwrap().pid()).is_empty());

    // The one-use token is used up now.
    let tokens = server.cli_json(&["token", "ls"]);
    let tok = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == token_id.as_str())
        .unwrap();
    assert_eq!(tok["state"], "used up");
    assert_eq!(tok["uses"], 1);

    // Server restart: the agent comes back by itself, with no token.
    server.restart();
    wait_until(Duration::from_secs(30), "web-1 to reconnect", || {
        server.host_state("web-1").as_deref() == Some("active")
    });

    // Agent restart without --token: the credential is enough.
    agent.stop();
    wait_until(Duration::from_secs(10), "web-1 to be disconnected", || {
        server.host_state("web-1").as_deref() == Some("disconnected")
    });
    let mut agent = start_agent(&server, &state, "web-1", None, &[]);
    wait_until(Duration::from_secs(20), "web-1 to be active again", || {
        server.host_state("web-1").as_deref() == Some("active")
    });
    assert_eq!(server.hosts().len(), 1, "no duplicate host");

    // Inspect by name, table and JSON.
    let text = server.cli_ok(&["host", "inspect", "web-1"]);
    assert!(text.contains("State:") && text.contains("active"), "{text}");
    let v = server.cli_json(&["host", "inspect", "web-1"]);
    assert_eq!(v["name"], "web-1");

    // Host removal: the agent is told why, logs it and stops retrying.
    server.cli_ok(&["host", "rm", "web-1"]);
    let status = agent.wait_exit(Duration::from_secs(15));
    assert!(!status.success());
    let log = agent.log_text();
    assert!(log.contains("host removed"), "{log}");
    assert!(log.contains("not retrying"), "{log}");
    assert!(server.hosts().is_empty());
    // Starting it again is refused the same way, at once.
    let mut again = start_agent(&server, &state, "web-1", None, &[]);
    assert!(!again.wait_exit(Duration::from_secs(15)).success());
    assert!(again.log_text().contains("was removed"));
    let kinds: Vec<String> = server
        .events()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert!(kinds.contains(&"host_registered".to_string()));
    assert!(kinds.contains(&"host_removed".to_string()));
    assert!(kinds.contains(&"removed_host_refused".to_string()));
}

#[test]
fn dead_server_is_noticed_by_heartbeats() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), FAST_HEARTBEATS);
    let (_, token) = server.token(&[]);
    let agent = start_agent(&server, &t.path().join("a"), "hb", Some(&token), &[]);
    wait_until(Duration::from_secs(20), "hb active", || {
        server.host_state("hb").as_deref() == Some("active")
    });
    // Freeze the server: the TCP connection stays up, but nothing answers.
    let server_proc = server.proc.as_ref().unwrap();
    server_proc.signal("STOP");
    wait_until(
        Duration::from_secs(15),
        "the agent to notice the silence",
        || agent.log_text().contains("lost the tunnel"),
    );
    server_proc.signal("CONT");
    wait_until(Duration::from_secs(30), "hb to reconnect", || {
        server.host_state("hb").as_deref() == Some("active")
    });
}

#[test]
fn silent_agent_is_dropped_by_the_server() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), FAST_HEARTBEATS);
    let (_, token) = server.token(&[]);
    let agent = start_agent(&server, &t.path().join("a"), "quiet", Some(&token), &[]);
    wait_until(Duration::from_secs(20), "quiet active", || {
        server.host_state("quiet").as_deref() == Some("active")
    });
    agent.signal("STOP");
    wait_until(
        Duration::from_secs(15),
        "the server to drop the silent tunnel",
        || server.host_state("quiet").as_deref() == Some("disconnected"),
    );
    assert!(
        server.log().contains("heartbeat timeout"),
        "{}",
        server.log()
    );
    agent.signal("CONT");
    wait_until(Duration::from_secs(30), "quiet to reconnect", || {
        server.host_state("quiet").as_deref() == Some("active")
    });
}

#[test]
fn copied_credential_newest_wins_and_the_other_stops() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let a = t.path().join("a");
    let mut first = start_agent(&server, &a, "dup", Some(&token), &[]);
    wait_until(Duration::from_secs(20), "dup active", || {
        server.host_state("dup").as_deref() == Some("active")
    });
    // Copy the state dir, as if cloned onto a second machine.
    let b = t.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    for f in ["credential", "agent.json"] {
        std::fs::copy(a.join(f), b.join(f)).unwrap();
    }
    let mut second = start_agent(&server, &b, "dup", None, &[]);
    let status = first.wait_exit(Duration::from_secs(15));
    assert!(!status.success());
    assert!(
        first.log_text().contains("superseded"),
        "{}",
        first.log_text()
    );
    assert!(
        second.try_wait().is_none(),
        "the newer agent keeps the tunnel"
    );
    assert_eq!(server.host_state("dup").as_deref(), Some("active"));
    assert!(
        server
            .events()
            .iter()
            .any(|e| e["kind"] == "credential_superseded")
    );
    second.stop();
}

#[test]
fn token_lifecycle_and_listings() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let created = server.cli_json(&["token", "create", "--ttl", "2h", "--max-uses", "3"]);
    let token = created["token"].as_str().unwrap();
    assert!(
        token.starts_with("crl_reg_") && token.len() == 8 + 64,
        "256 random bits"
    );
    let command = created["command"].as_str().unwrap();
    assert_eq!(
        command,
        format!(
            "corral agent --server {} --token {token} --ca-checksum {}",
            server.url(),
            server.env.checksum
        )
    );
    assert!(created["expires_at"].as_str().is_some());
    // The table form prints exactly the command on stdout.
    let plain = server.cli_ok(&["token", "create"]);
    assert!(plain.trim().starts_with("corral agent --server "));
    // `never` expires.
    let forever = server.cli_json(&["token", "create", "--ttl", "never"]);
    assert!(forever["expires_at"].is_null());

    let ls = server.cli_json(&["token", "ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 3);
    let text = server.cli_ok(&["token", "ls"]);
    assert!(text.starts_with("ID"), "{text}");
    assert!(!text.contains(token), "secrets are never listed");

    let id = created["id"].as_str().unwrap();
    server.cli_ok(&["token", "rm", id]);
    let ls = server.cli_json(&["token", "ls"]);
    let row = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id)
        .unwrap();
    assert_eq!(row["state"], "revoked");
    let out = server.cli(&["token", "rm", "tok-nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no registration token"));

    // Invalid CLI input is refused before reaching the server.
    let out = server.cli(&["token", "create", "--ttl", "5 parsecs"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("duration"));
    let out = server.cli(&["token", "create", "--max-uses", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_uses"));
}

#[test]
fn with_agent_runs_a_local_agent_in_process() {
    let t = tmp();
    let data = t.path().join("data");
    let mut server = Server::start(&data, &["--with-agent", "--agent-no-overlay"]);
    wait_until(Duration::from_secs(20), "the local agent", || {
        server.hosts().iter().any(|h| h["state"] == "active")
    });
    let out = server.cli(&["doctor", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listening = report[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "no listening TCP port")
        .unwrap()
        .clone();
    assert_eq!(listening["ok"], true, "{listening}");
    assert!(
        listening["detail"]
            .as_str()
            .unwrap()
            .contains("--with-agent")
    );
    let log = server.log();
    assert!(log.contains("admin.env:"), "{log}");
    assert!(log.contains("API:"), "{log}");
    server.restart();
    wait_until(
        Duration::from_secs(30),
        "the local agent after restart",
        || server.hosts().iter().any(|h| h["state"] == "active"),
    );
    assert_eq!(
        server.hosts().len(),
        1,
        "restart reuses the local agent's registration"
    );
    // Off the overlay: it takes no subnet of the range, and no address limit applies.
    let host = &server.hosts()[0];
    assert!(host["overlay_subnet"].is_null(), "{host}");
    assert!(host["overlay_addresses_total"].is_null(), "{host}");
    assert!(server.cli_ok(&["env", "ls"]).contains("0 of 255"));
}

#[test]
fn operator_supplied_chain_is_served_and_pinned_by_its_last_certificate() {
    let t = tmp();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Example Corp CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
    let cert = t.path().join("chain.pem");
    let key = t.path().join("key.pem");
    std::fs::write(&cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    let server = Server::start(
        &t.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let expected = corral_tls::CaChecksum::of_der(ca.der()).to_string();
    assert_eq!(server.env.checksum, expected);
    let (_, token) = server.token(&[]);
    let _agent = start_agent(&server, &t.path().join("a"), "custom", Some(&token), &[]);
    wait_until(Duration::from_secs(20), "custom active", || {
        server.host_state("custom").as_deref() == Some("active")
    });

    // A chain without its CA cannot be pinned: refused with a clear message.
    std::fs::write(&cert, leaf.pem()).unwrap();
    let data = t.path().join("data2").display().to_string();
    let mut bad = spawn_corral(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        t.path().join("bad.log"),
        &[],
    );
    assert!(!bad.wait_exit(Duration::from_secs(20)).success());
    assert!(bad.log_text().contains("full chain"), "{}", bad.log_text());
}

#[test]
fn insecure_http_warns_and_serves_plain_http() {
    let t = tmp();
    let port = free_port();
    let data = t.path().join("data");
    let listen = format!("127.0.0.1:{port}");
    let mut server = spawn_corral(
        &[
            "server",
            "--listen",
            &listen,
            "--data-dir",
            data.to_str().unwrap(),
            "--insecure-http",
        ],
        t.path().join("server.log"),
        &[],
    );
    // The port is bound before the data dir is ready: wait for the admin.env it writes last.
    wait_until(Duration::from_secs(20), "the server to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && read_admin_env(&data.join("admin.env")).is_some()
            && server
                .log_text()
                .contains("--insecure-http: serving plain HTTP")
    });
    let env = read_admin_env(&data.join("admin.env")).unwrap();
    assert_eq!(env.server, format!("http://127.0.0.1:{port}"));
    let out = std::process::Command::new(corral_bin())
        .args(["host", "ls", "-o", "json"])
        .env("CORRAL_SERVER", &env.server)
        .env("CORRAL_API_KEY", &env.api_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
    // An in-process agent always needs TLS.
    let mut refused = spawn_corral(
        &[
            "server",
            "--listen",
            &listen,
            "--data-dir",
            data.to_str().unwrap(),
            "--insecure-http",
            "--with-agent",
        ],
        t.path().join("server2.log"),
        &[],
    );
    assert!(!refused.wait_exit(Duration::from_secs(20)).success());
    assert!(refused.log_text().contains("needs TLS"));
}
