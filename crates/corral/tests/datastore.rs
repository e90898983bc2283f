//! The PostgreSQL datastore (`--datastore postgres://…`, or `CORRAL_DATASTORE`): a real
//! PostgreSQL 15 with TLS only (verify-full against its own CA), a real `corral server` on it.
//! The rest of the control-plane, container and stack tests run on it too when
//! `CORRAL_TEST_DATASTORE=postgres` (see `common::on_postgres`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use corral_testkit::Postgres;

fn healthz(server: &Server) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20"])
        .arg("--cacert")
        .arg(server.dir.join("pki/ca.pem"))
        .arg(format!("{}/healthz", server.url()))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Starts `corral server` on `url` (given in CORRAL_DATASTORE) in `dir`; waits until it serves
/// or exits. Returns the process and whether it serves.
fn server_on(dir: &std::path::Path, url: &str, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.display().to_string();
    let mut args = vec!["server", "--data-dir", &data, "--listen", &listen];
    args.extend(extra);
    let log = dir.with_extension(format!("{port}.log"));
    let proc = spawn_corral(&args, log, &[("CORRAL_DATASTORE", url)]);
    (proc, port)
}

#[test]
fn a_server_on_postgres_keeps_its_state_and_rides_out_a_database_outage() {
    require::tool("curl", "curl");
    let mut pg = Postgres::start();
    let url = pg.database("corral_main");
    let tmp = tmp();
    let dir = tmp.path().join("data");
    let mut server = Server::start_on_datastore(&dir, &url, &[]);
    // No SQLite file: the datastore is the database.
    assert!(!dir.join("corral.db").exists());
    assert!(
        server.log().contains("datastore: PostgreSQL"),
        "{}",
        server.log()
    );
    assert_eq!(healthz(&server).0, 200);

    // State written through the API is in PostgreSQL.
    server.cli_ok(&["env", "create", "staging"]);
    let (token_id, token_secret) = server.token(&["--env", "staging"]);
    let in_db = pg.psql_in("corral_main", "SELECT name FROM environments ORDER BY name");
    assert!(in_db.contains("staging"), "{in_db}");
    // No secret in clear in the database: neither the admin key nor the token.
    let dump = pg.dump("corral_main");
    assert!(dump.contains("staging"), "the dump holds the state");
    assert!(!dump.contains(&server.env.api_key));
    assert!(!dump.contains(&token_secret));

    // The password in the URL is never written out: not in the log, not in admin.env.
    let password = url
        .split_once("corral:")
        .and_then(|(_, r)| r.split_once('@'))
        .map(|(p, _)| p.to_owned())
        .unwrap();
    assert!(!server.log().contains(&password));
    assert!(
        !std::fs::read_to_string(dir.join("admin.env"))
            .unwrap()
            .contains(&password)
    );

    // The database goes away: /healthz says so, a write is refused as unavailable (not a
    // generic failure), and nothing is half-applied.
    pg.stop();
    wait_until(
        Duration::from_secs(30),
        "/healthz to report the outage",
        || healthz(&server).0 == 503,
    );
    let (_, body) = healthz(&server);
    assert!(body.contains("datastore"), "{body}");
    let out = server.cli(&["env", "create", "during-outage"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("datastore cannot be reached"),
        "{err}\n{}",
        server.log()
    );

    // Back: the server reconnects by itself, serves again, and the refused write is not there.
    pg.start_again();
    wait_until(
        Duration::from_secs(60),
        "/healthz ok after the outage",
        || healthz(&server).0 == 200,
    );
    let envs = server.cli_json(&["env", "ls"]);
    let names: Vec<&str> = envs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(names.contains(&"staging"), "{names:?}");
    assert!(!names.contains(&"during-outage"), "{names:?}");
    server.cli_ok(&["env", "create", "after-outage"]);

    // A restart finds everything where it was (the same admin key, the same token).
    server.restart();
    let tokens = server.cli_json(&["token", "ls"]);
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == token_id.as_str()),
        "{tokens}"
    );
}

#[test]
fn a_second_server_joins_a_deployment_only_with_its_master_key_and_ca() {
    require::tool("curl", "curl");
    let pg = Postgres::start();
    let url = pg.database("corral_join");
    let tmp = tmp();
    let first = tmp.path().join("first");
    let (mut a, _) = server_on(&first, &url, &[]);
    wait_for_server(&mut a);

    // While the first runs, a second server on the database does not write: it relays every
    // connection to the first (the one holding the write lock), and serves the same API.
    let busy = tmp.path().join("busy");
    copy_identity(&first, &busy);
    let (mut b, b_port) = server_on(&busy, &url, &[]);
    wait_until(
        Duration::from_secs(30),
        "the second server relaying",
        || {
            assert!(b.running(), "{}", b.log_text());
            b.log_text().contains("relaying to the active server")
        },
    );
    assert!(!busy.join("admin.env").exists(), "it wrote nothing yet");
    let a_env = read_admin_env(&first.join("admin.env")).unwrap();
    let out = cli_at(b_port, &a_env, &["env", "create", "through-relay"]);
    assert!(out.status.success(), "{}", text(&out));
    let envs = cli_on(&first, &a_env.api_key, &["env", "ls", "-o", "json"]);
    assert!(text(&envs).contains("through-relay"), "{}", text(&envs));
    // A browser's HTTP/2 goes through too: the relay asks the active server for the protocol
    // the client chose.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--cacert")
        .arg(busy.join("pki/ca.pem"))
        .arg(format!("https://127.0.0.1:{b_port}/healthz"))
        .output()
        .expect("curl");
    assert_eq!(text(&out).trim(), "2 200", "{}", text(&out));
    b.stop();
    // Another deployment, in another database of the same cluster, is not held back: the
    // lock belongs to the database.
    let other_url = pg.database("corral_other");
    let (mut other, _) = server_on(&tmp.path().join("other"), &other_url, &[]);
    wait_for_server(&mut other);
    other.stop();
    a.stop();

    // A new data dir on a database that holds a deployment: refused, saying what to copy.
    let second = tmp.path().join("second");
    let (mut b, _) = server_on(&second, &url, &[]);
    let status = b.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = b.log_text();
    assert!(log.contains("copy master.key"), "{log}");
    assert!(!second.join("master.key").exists(), "no new key was made");

    // With the deployment's master key and CA it starts (the first server stopped), on the
    // same state, and presents a certificate of the same CA (an agent's pin does not change).
    std::fs::create_dir_all(second.join("pki")).unwrap();
    for f in ["master.key", "pki/ca.pem", "pki/ca-key.pem"] {
        std::fs::copy(first.join(f), second.join(f)).unwrap();
    }
    let (mut b, _) = server_on(&second, &url, &[]);
    wait_for_server(&mut b);
    let a_env = read_admin_env(&first.join("admin.env")).unwrap();
    let b_env = read_admin_env(&second.join("admin.env")).unwrap();
    assert_eq!(a_env.checksum, b_env.checksum);
    // The first server's admin key works on the second (one datastore of keys).
    let out = cli_on(&second, &a_env.api_key, &["env", "ls", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another master key is refused: it cannot open the deployment's sealed secrets.
    b.stop();
    let third = tmp.path().join("third");
    std::fs::create_dir_all(third.join("pki")).unwrap();
    for f in ["pki/ca.pem", "pki/ca-key.pem"] {
        std::fs::copy(first.join(f), third.join(f)).unwrap();
    }
    std::fs::write(third.join("master.key"), [7u8; 32]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        third.join("master.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let (mut c, _) = server_on(&third, &url, &[]);
    assert!(!c.wait_exit(Duration::from_secs(60)).success());
    assert!(
        c.log_text().contains("does not open this datastore"),
        "{}",
        c.log_text()
    );
}

#[test]
fn bad_datastore_addresses_are_refused_with_the_reason() {
    let pg = Postgres::start();
    let good = pg.database("corral_bad");
    let tmp = tmp();
    let refused = |name: &str, url: &str, says: &[&str]| {
        let dir = tmp.path().join(name);
        let (mut p, _) = server_on(&dir, url, &[]);
        let status = p.wait_exit(Duration::from_secs(60));
        assert!(!status.success(), "{name}: the server started");
        let log = p.log_text();
        for s in says {
            assert!(log.contains(s), "{name}: no {s:?} in\n{log}");
        }
        let password = good
            .split_once("corral:")
            .and_then(|(_, r)| r.split_once('@'))
            .map(|(p, _)| p.to_owned())
            .unwrap();
        assert!(
            !log.contains(&password),
            "{name}: the password is in the log"
        );
    };
    refused(
        "mysql",
        "mysql://corral@127.0.0.1/x",
        &["must be a postgres:// URL"],
    );
    refused("not-a-url", "not a url", &["is not a URL"]);
    // TLS is required by the cluster; a client that turns it off is turned away.
    refused(
        "plain",
        &good.replace("sslmode=verify-full", "sslmode=disable"),
        &["no encryption"],
    );
    // verify-full against another CA: the certificate is not trusted.
    let other_ca = tmp.path().join("other-ca");
    corral_testkit::certs::ca_and_server(&other_ca, "127.0.0.1", "another CA");
    refused(
        "wrong-ca",
        &good.replace(
            &pg.ca().display().to_string(),
            &other_ca.join("ca.crt").display().to_string(),
        ),
        &["certificate"],
    );
    refused(
        "wrong-password",
        &good.replace("corral:pw-", "corral:wrong-"),
        &["password authentication failed"],
    );
    refused(
        "no-database",
        &good.replace("/corral_bad?", "/corral_missing?"),
        &["corral_missing"],
    );
}

/// The CLI at `https://127.0.0.1:PORT` with `env`'s key and pin.
fn cli_at(port: u16, env: &AdminEnv, args: &[&str]) -> std::process::Output {
    cli_to(&format!("https://127.0.0.1:{port}"), env, args)
}

fn cli_on(dir: &std::path::Path, key: &str, args: &[&str]) -> std::process::Output {
    let env = read_admin_env(&dir.join("admin.env")).expect("admin.env");
    std::process::Command::new(corral_bin())
        .args(args)
        .env("CORRAL_SERVER", &env.server)
        .env("CORRAL_API_KEY", key)
        .env("CORRAL_CA_CHECKSUM", &env.checksum)
        .output()
        .unwrap()
}

#[test]
fn a_standby_takes_over_from_a_dead_or_frozen_server_which_never_writes_again() {
    let pg = Postgres::start();
    let url = pg.database("corral_ha");
    let tmp = tmp();
    let a_dir = tmp.path().join("a");
    let mut a = Server::start_on_datastore(&a_dir, &url, &[]);
    let admin_key = a.env.api_key.clone();
    a.cli_ok(&["env", "create", "before"]);

    // B waits as a standby, relaying to A: the API answers through it.
    let b_dir = tmp.path().join("b");
    copy_identity(&a_dir, &b_dir);
    let (mut b, b_port) = server_on(&b_dir, &url, &[]);
    wait_until(Duration::from_secs(30), "B relaying to A", || {
        b.log_text().contains("relaying to the active server")
    });
    assert!(!b_dir.join("admin.env").exists());
    let out = cli_at(b_port, &a.env, &["env", "ls", "-o", "json"]);
    assert!(text(&out).contains("before"), "{}", text(&out));

    // A crashes: B takes over at once (PostgreSQL ends A's session, and its lock with it).
    let crashed = std::time::Instant::now();
    a.kill9();
    wait_for_server(&mut b);
    println!(
        "crash: standby serving {:.2} s after the active server was killed",
        crashed.elapsed().as_secs_f64()
    );
    let out = cli_on(&b_dir, &admin_key, &["env", "ls", "-o", "json"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("before"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A comes back as a standby behind B; B freezes (SIGSTOP: its connections stay open).
    let (mut a2, _) = server_on(&a_dir, &url, &[]);
    wait_until(Duration::from_secs(30), "A relaying to B", || {
        a2.log_text().contains("relaying to the active server")
    });
    let frozen = std::time::Instant::now();
    b.signal("STOP");
    wait_until(
        Duration::from_secs(60),
        "A to take over from frozen B",
        || {
            assert!(a2.running(), "{}", a2.log_text());
            a2.log_text().contains("is running")
        },
    );
    println!(
        "freeze: standby serving {:.2} s after the active server was frozen",
        frozen.elapsed().as_secs_f64()
    );
    let out = cli_on(&a_dir, &admin_key, &["env", "create", "after-freeze"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // B resumes: it finds the lock taken and exits without writing. Its writer session was
    // ended by PostgreSQL while it was frozen, and a new one cannot take the lock, so there
    // is no connection through which it could write.
    let events_before = pg.psql_in("corral_ha", "SELECT count(*) FROM events");
    b.signal("CONT");
    assert_fenced_exit(&mut b);
    // Nothing written by B after it resumed: every event since is A's own doing, and A is
    // idle (no hosts, no stacks), so the count has not moved.
    let events_after = pg.psql_in("corral_ha", "SELECT count(*) FROM events");
    assert_eq!(events_before, events_after);
    let out = cli_on(&a_dir, &admin_key, &["env", "ls", "-o", "json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("before") && text.contains("after-freeze"),
        "{text}"
    );
}

/// Waits until `ready`, failing at once if the standby `b` exits meanwhile.
fn while_running(b: &mut Proc, secs: u64, what: &str, mut ready: impl FnMut(&Proc) -> bool) {
    wait_until(Duration::from_secs(secs), what, || {
        assert!(b.running(), "the standby exited:\n{}", b.log_text());
        ready(b)
    });
}

#[test]
fn a_standby_rides_out_a_database_outage_and_still_serves_after_it() {
    let mut pg = Postgres::start();
    let url = pg.database("corral_standby_outage");
    let tmp = tmp();
    let a_dir = tmp.path().join("a");
    let a = Server::start_on_datastore(&a_dir, &url, &[]);
    let b_dir = tmp.path().join("b");
    copy_identity(&a_dir, &b_dir);
    let (mut b, b_port) = server_on(&b_dir, &url, &[]);
    wait_until(Duration::from_secs(30), "B waiting for the lock", || {
        b.log_text()
            .contains("standby: another corral server is active")
    });

    // The database goes away: the standby cannot ask who holds the lock, says so, and waits.
    pg.stop();
    while_running(&mut b, 30, "the standby to notice the outage", |b| {
        b.log_text()
            .contains("standby: cannot ask the datastore who is active")
    });
    pg.start_again();

    // Back: one of the two holds the lock again (A, reconnecting, or B, taking over; the other
    // then exits fenced), and B is still there, serving through the relay or on its own.
    while_running(&mut b, 60, "the API through B after the outage", |_| {
        cli_at(b_port, &a.env, &["env", "ls"]).status.success()
    });
    let out = cli_at(b_port, &a.env, &["env", "create", "after-outage"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cli_at(b_port, &a.env, &["env", "ls", "-o", "json"]);
    assert!(text(&out).contains("after-outage"), "{}", text(&out));
    assert!(b.running(), "{}", b.log_text());
}

#[test]
fn the_firewall_rules_include_the_servers_flow_to_its_database() {
    let pg = Postgres::start();
    let url = pg.database("corral_fw");
    let tmp = tmp();
    // The planner refuses a loopback-only listener (agents elsewhere could not connect), as
    // in tests/firewall.rs.
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let advertise = format!("https://192.0.2.10:{port}");
    let server = Server::start_on_datastore(
        &tmp.path().join("data"),
        &url,
        &["--listen", &listen, "--advertise-url", &advertise],
    );
    let md = server.cli_ok(&["firewall"]);
    assert!(md.contains("PostgreSQL"), "{md}");
    assert!(md.contains(&format!("| {} |", pg.port)), "{md}");
    assert!(!md.contains("relay"), "one server relays to nobody: {md}");

    // A second server joins (it relays to the first; nobody dials it here, so it sends
    // nothing): the rules now let the servers reach each other on the server port.
    let second = tmp.path().join("second");
    copy_identity(&server.dir, &second);
    let second_port = free_port();
    let (mut b, _) = server_on(
        &second,
        &url,
        &[
            "--peer-url",
            &format!("https://192.0.2.11:{second_port}"),
            "--advertise-url",
            &format!("https://192.0.2.11:{second_port}"),
        ],
    );
    wait_until(
        Duration::from_secs(30),
        "the second server relaying",
        || {
            assert!(b.running(), "{}", b.log_text());
            b.log_text().contains("relaying to the active server")
        },
    );
    let md = server.cli_ok(&["firewall"]);
    assert!(md.contains("relay their clients' connections"), "{md}");
    let nft = server.cli_ok(&["firewall", "--format", "nftables", "--role", "server"]);
    assert!(nft.contains("192.0.2.11"), "{nft}");
    b.stop();
}

/// Sends `preamble` and then one HTTP request on a new TLS connection to `server`; returns
/// what came back before the server closed (nothing when it refused the connection).
fn relayed_request(server: &Server, preamble: &[u8], request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut tls = pinned_dialer(server).tls().await.unwrap();
        // A refused connection may be closed while this still writes.
        let _ = tls.write_all(preamble).await;
        let _ = tls.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    })
}

/// The relay secret, as every server of the deployment derives it from its master key.
fn relay_secret_hex(dir: &std::path::Path) -> String {
    let key = std::fs::read(dir.join("master.key")).unwrap();
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        b"corral server relay v1",
    );
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn only_a_server_holding_the_master_key_may_relay_and_say_whose_connection_it_is() {
    let tmp = tmp();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let post = |name: &str| {
        let body = format!("{{\"name\":\"{name}\"}}");
        format!(
            "POST /v1/environments HTTP/1.1\r\nHost: corral\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            server.env.api_key,
            body.len()
        )
    };
    // With the deployment's secret: served, and the client's address is the one the relaying
    // server gave (the audit log records it, not the connection's own).
    let right = format!(
        "CORRAL-RELAY/1 {} 192.0.2.77:4242\n",
        relay_secret_hex(&server.dir)
    );
    let answer = relayed_request(&server, right.as_bytes(), &post("relayed"));
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let audit = server.cli_json(&["audit", "ls", "--limit", "1000"]);
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "POST /v1/environments")
        .unwrap_or_else(|| panic!("{audit:#}"))
        .clone();
    assert_eq!(entry["source"], "192.0.2.77:4242", "{entry}");

    // With another secret (another deployment's key, or a guess): closed without an answer,
    // and nothing done.
    let wrong = format!("CORRAL-RELAY/1 {} 192.0.2.78:4242\n", "0".repeat(64));
    let answer = relayed_request(&server, wrong.as_bytes(), &post("forged"));
    assert_eq!(answer, "", "a forged relay was answered");
    wait_until(Duration::from_secs(10), "the refusal in the log", || {
        server.log().contains("refused a relayed connection")
    });
    // A preamble that does not read (no address), and one far too long: closed too.
    let bad = format!("CORRAL-RELAY/1 {}\n", relay_secret_hex(&server.dir));
    assert_eq!(relayed_request(&server, bad.as_bytes(), &post("bad")), "");
    let long = format!("CORRAL-RELAY/1 {}\n", "a".repeat(100_000));
    assert_eq!(relayed_request(&server, long.as_bytes(), &post("long")), "");
    let envs = server.cli_ok(&["env", "ls"]);
    assert!(envs.contains("relayed"), "{envs}");
    for absent in ["forged", "bad", "long"] {
        assert!(!envs.contains(absent), "{envs}");
    }
    // Without a preamble, HTTP as ever.
    let plain = relayed_request(
        &server,
        b"",
        "GET /healthz HTTP/1.1\r\nHost: corral\r\nConnection: close\r\n\r\n",
    );
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
}

/// A TCP link from a loopback port to PostgreSQL that can be cut — every connection it
/// carries closed, new ones closed as they come — and healed: a network cut between one
/// server and the database, the others unaffected.
struct Link {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    carried: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Link {
    fn to(target: u16) -> Link {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let carried = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, held) = (cut.clone(), carried.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(upstream) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut held = held.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(upstream.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Link { port, cut, carried }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.carried.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_server_cut_off_from_postgres_stops_writing_sends_its_agents_away_and_exits_when_back() {
    let pg = Postgres::start();
    let url = pg.database("corral_cut");
    let link = Link::to(pg.port);
    let through_link = url.replace(
        &format!("127.0.0.1:{}/", pg.port),
        &format!("127.0.0.1:{}/", link.port),
    );
    assert_ne!(through_link, url);
    let tmp = tmp();
    // A reaches the database through the link; B directly, and relays to A.
    let mut a = Server::start_on_datastore(&tmp.path().join("a"), &through_link, FAST_HEARTBEATS);
    let b_dir = tmp.path().join("b");
    copy_identity(&a.dir, &b_dir);
    let (mut b, b_port) = server_on(&b_dir, &url, FAST_HEARTBEATS);
    wait_until(Duration::from_secs(30), "B relaying to A", || {
        b.log_text().contains("relaying to the active server")
    });
    // A lists B among the deployment's servers (so its agents have somewhere else to go).
    wait_until(Duration::from_secs(30), "A to list B", || {
        let servers = a.cli_json(&["server", "ls"]);
        let servers = servers.as_array().unwrap();
        servers.len() == 2 && servers[0]["active"] == true && servers[1]["active"] == false
    });
    // An agent that knows both.
    let (_, token) = a.token(&[]);
    let b_url = format!("https://127.0.0.1:{b_port}");
    let agent = start_agent(
        &a,
        &tmp.path().join("agent"),
        "cut-1",
        Some(&token),
        &["--server", &b_url],
    );
    wait_until(Duration::from_secs(30), "the agent connected", || {
        a.host_state("cut-1").as_deref() == Some("active")
    });

    // The cut: A cannot write (503, nothing applied) ...
    link.cut();
    wait_until(Duration::from_secs(30), "A refusing writes", || {
        let out = a.cli(&["env", "create", "during-cut"]);
        !out.status.success() && text(&out).contains("datastore cannot be reached")
    });
    // ... B, which still reaches the database, takes over (PostgreSQL ended A's session when
    // its connection closed, and the write lock with it) ...
    wait_until(Duration::from_secs(30), "B to take over", || {
        assert!(b.running(), "{}", b.log_text());
        b.log_text().contains("is running")
    });
    // ... and A sends its agents away once it has been cut off for longer than the lock's
    // idle limit: the agent comes back through B, to B.
    wait_until(Duration::from_secs(60), "the agent on B", || {
        let out = cli_at(b_port, &a.env, &["host", "ls", "-o", "json"]);
        text(&out).contains("\"cut-1\"")
            && serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|v| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h["name"] == "cut-1" && h["state"] == "active")
            })
    });
    assert!(
        a.log().contains("cut off from the datastore"),
        "{}",
        a.log()
    );
    assert!(
        agent.log_text().contains("cut off from its datastore"),
        "{}",
        agent.log_text()
    );
    let out = cli_at(b_port, &a.env, &["env", "create", "after-cut"]);
    assert!(out.status.success(), "{}", text(&out));

    // The link heals: A finds the lock taken and exits without writing.
    link.heal();
    assert_fenced_exit(a.proc.as_mut().unwrap());
    let envs = text(&cli_at(b_port, &a.env, &["env", "ls"]));
    assert!(
        envs.contains("after-cut") && !envs.contains("during-cut"),
        "{envs}"
    );
}
