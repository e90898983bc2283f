//! The overlay's control half with a real server and agents that speak the real protocol:
//! leases, peers, the pre-shared key (sealed at rest, sent only down the tunnels), rotation,
//! removal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use corral_agent::{DialError, Tunnel};
use corral_proto::{Auth, CloseReason, HostFacts, OverlayConfig, ServerMessage};

/// A raw agent and the overlay configuration it holds (full configurations as they come,
/// deltas applied to them, as the real agent does).
struct Agent {
    t: Tunnel,
    held: Option<OverlayConfig>,
    /// Deltas received and applied.
    deltas: usize,
}

async fn agent(server: &Server, token: &str, name: &str, key: &str, port: u16) -> Agent {
    connect(
        server,
        Auth::Register {
            token: token.into(),
            credential: credential(),
        },
        name,
        key,
        port,
    )
    .await
}

async fn connect(server: &Server, auth: Auth, name: &str, key: &str, port: u16) -> Agent {
    let facts = HostFacts {
        name: name.into(),
        hostname: name.into(),
        overlay_port: Some(port),
        overlay_public_key: Some(key.into()),
        ..Default::default()
    };
    Agent {
        t: dial_agent(server, auth, facts).await,
        held: None,
        deltas: 0,
    }
}

/// The next overlay configuration that satisfies `want`.
/// The next overlay configuration held that satisfies `want`.
async fn config(a: &mut Agent, want: impl Fn(&OverlayConfig) -> bool) -> OverlayConfig {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, a.t.recv()).await {
            Ok(Ok(ServerMessage::Overlay(c))) => a.held = Some(*c),
            Ok(Ok(ServerMessage::OverlayDelta(d))) => {
                let held = a.held.as_mut().expect("a delta after a full configuration");
                held.apply_delta(&d)
                    .expect("the delta follows what is held");
                a.deltas += 1;
            }
            Ok(Ok(_)) => continue,
            other => panic!("no matching overlay configuration: {other:?}"),
        }
        if let Some(held) = &a.held
            && want(held)
        {
            return held.clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_keys_and_leases_follow_the_environment() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let key_a = "aa".repeat(32);
    let key_b = "bb".repeat(32);

    let cred_a = credential();
    let mut a = connect(
        &server,
        Auth::Register {
            token: token.clone(),
            credential: cred_a.clone(),
        },
        "a",
        &key_a,
        51001,
    )
    .await;
    let first = config(&mut a, |_| true).await;
    assert_eq!(first.mode, corral_proto::OverlayMode::Wireguard);
    assert_eq!(first.cidr, "10.42.0.0/16");
    assert_eq!(first.subnet, "10.42.1.0/24");
    assert!(first.peers.is_empty());
    let psk = first.psk.clone().expect("a pre-shared key");
    assert_eq!(psk.len(), 64);
    assert_eq!(first.psk_generation, 1);

    // B joins: both learn of each other, with endpoints and subnets.
    let cred_b = credential();
    let mut b = connect(
        &server,
        Auth::Register {
            token: token.clone(),
            credential: cred_b.clone(),
        },
        "b",
        &key_b,
        51002,
    )
    .await;
    let at_b = config(&mut b, |c| c.peers.len() == 1).await;
    assert_eq!(at_b.subnet, "10.42.2.0/24");
    assert_eq!(at_b.psk.as_deref(), Some(psk.as_str()));
    assert_eq!(at_b.peers[0].name, "a");
    assert_eq!(at_b.peers[0].public_key, key_a);
    assert_eq!(at_b.peers[0].endpoint.as_deref(), Some("127.0.0.1:51001"));
    let at_a = config(&mut a, |c| c.peers.len() == 1).await;
    // A already held a configuration: B's arrival came as a delta, not a full peer list.
    assert!(a.deltas >= 1);
    assert_eq!(at_a.peers[0].public_key, key_b);
    assert_eq!(at_a.peers[0].subnet, "10.42.2.0/24");

    // B moves (its overlay socket now answers elsewhere): A learns the new endpoint.
    drop(b);
    let mut b = connect(
        &server,
        Auth::Credential {
            credential: cred_b.clone(),
        },
        "b",
        &key_b,
        51012,
    )
    .await;
    let moved = config(&mut a, |c| {
        c.peers
            .iter()
            .any(|p| p.endpoint.as_deref() == Some("127.0.0.1:51012"))
    })
    .await;
    assert_eq!(
        moved.peers[0].subnet, "10.42.2.0/24",
        "same lease after a move"
    );
    let _ = config(&mut b, |c| c.peers.len() == 1).await;

    // A host with a malformed key is not anyone's peer.
    let mut c = agent(&server, &token, "c", "not-a-key", 51003).await;
    let at_c = config(&mut c, |c| c.peers.len() == 2).await;
    assert_eq!(at_c.subnet, "10.42.3.0/24");

    // The key is sealed at rest: neither its hex nor its bytes are in the database files.
    let raw: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&psk[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    for entry in std::fs::read_dir(server.dir.clone()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("corral.db")
        {
            let bytes = std::fs::read(&path).unwrap();
            assert!(!bytes.windows(32).any(|w| w == raw.as_slice()), "{path:?}");
            assert!(!bytes.windows(64).any(|w| w == psk.as_bytes()), "{path:?}");
        }
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.dir.join("master.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Rotation reaches every agent at once.
    let out = server.cli_ok(&["env", "ls", "-o", "json"]);
    assert!(out.contains("\"overlay_key_generation\": 1"), "{out}");
    server.cli_ok(&["env", "rotate-key", "default"]);
    let rotated_a = config(&mut a, |c| c.psk_generation == 2).await;
    let rotated_b = config(&mut b, |c| c.psk_generation == 2).await;
    assert_ne!(rotated_a.psk.as_deref(), Some(psk.as_str()));
    assert_eq!(rotated_a.psk, rotated_b.psk);
    assert!(
        server
            .events()
            .iter()
            .any(|e| e["kind"] == "overlay_key_rotated")
    );

    // Removing B takes it out of A's peers at once.
    let hosts = server.hosts();
    let b_id = hosts.iter().find(|h| h["name"] == "b").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        hosts.iter().find(|h| h["name"] == "b").unwrap()["overlay_subnet"],
        "10.42.2.0/24"
    );
    server.cli_ok(&["host", "rm", &b_id]);
    let after = config(&mut a, |c| c.peers.iter().all(|p| p.name != "b")).await;
    assert!(after.peers.is_empty(), "{after:?}");

    // A server restart keeps keys and leases (the master key opens the sealed key again).
    drop((a, b, c));
    let mut server = server;
    server.restart();
    let mut a = connect(
        &server,
        Auth::Credential { credential: cred_a },
        "a",
        &key_a,
        51001,
    )
    .await;
    let again = config(&mut a, |_| true).await;
    assert_eq!(again.subnet, "10.42.1.0/24");
    assert_eq!(again.psk, rotated_a.psk);
    assert_eq!(again.psk_generation, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_range_grows_only_to_hold_every_lease_and_reaches_the_agents() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let mut a = agent(&server, &token, "a", &"aa".repeat(32), 51001).await;
    let first = config(&mut a, |_| true).await;
    assert_eq!(first.subnet, "10.42.1.0/24");

    // A range that would strand A's lease is refused, and says which.
    let out = server.cli(&["env", "set-overlay", "default", "--range", "10.50.0.0/16"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("10.42.1.0/24"), "{err}");
    // Too small for a /24 per host; too large for one host's peers to fit in a message.
    let out = server.cli(&["env", "set-overlay", "default", "--range", "10.42.0.0/24"]);
    assert!(!out.status.success());
    let out = server.cli(&["env", "set-overlay", "default", "--range", "10.0.0.0/8"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("65,535 hosts") && err.contains("at most 4,095"),
        "{err}"
    );
    // Growing it to a /12 (4,095 hosts) keeps A's lease and reaches A at once.
    server.cli_ok(&["env", "set-overlay", "default", "--range", "10.32.0.0/12"]);
    let grown = config(&mut a, |c| c.cidr == "10.32.0.0/12").await;
    assert_eq!(grown.subnet, "10.42.1.0/24");
    let out = server.cli_ok(&["env", "ls", "-o", "json"]);
    assert!(out.contains("10.32.0.0/12"), "{out}");
    assert!(
        server
            .events()
            .iter()
            .any(|e| e["kind"] == "overlay_range_changed")
    );
}

/// The size of host subnets: chosen before the first host joins, shown by `env ls`, checked
/// against the range; every lease has it; `host ls` shows each host's addresses; a host that
/// would join a full range is refused at the door (nothing recorded) and gets in once the
/// range grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_subnets_are_sized_up_front_and_a_full_range_refuses_new_hosts() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);

    // Out of bounds, or a range that would hold none or too many hosts.
    for (args, says) in [
        (vec!["--host-subnet", "/30"], "between /16"),
        (vec!["--host-subnet", "big"], "such as /22"),
        (
            vec!["--range", "10.60.0.0/22", "--host-subnet", "/22"],
            "holds no host",
        ),
        (
            vec!["--range", "10.0.0.0/8", "--host-subnet", "/24"],
            "at most 4,095",
        ),
    ] {
        let mut cmd = vec!["env", "set-overlay", "default"];
        cmd.extend(args);
        let out = server.cli(&cmd);
        assert!(!out.status.success(), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{cmd:?}: {err}");
    }
    // Three hosts of 1,021 containers each.
    let out = server.cli(&[
        "env",
        "set-overlay",
        "default",
        "--range",
        "10.60.0.0/20",
        "--host-subnet",
        "/22",
    ]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("1,021 container addresses per host, room for 3 hosts"),
        "{said}"
    );
    let table = server.cli_ok(&["env", "ls"]);
    assert!(
        table.contains("/22 (1,021 containers)") && table.contains("0 of 3"),
        "{table}"
    );

    let mut agents = Vec::new();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let mut a = agent(
            &server,
            &token,
            name,
            &format!("{:02x}", i + 1).repeat(32),
            51001,
        )
        .await;
        let cfg = config(&mut a, |_| true).await;
        assert_eq!(cfg.subnet, format!("10.60.{}.0/22", 4 * (i + 1)));
        agents.push(a);
    }
    let envs: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["env", "ls", "-o", "json"])).unwrap();
    assert_eq!(envs[0]["host_subnet_prefix"], 22);
    assert_eq!(envs[0]["addresses_per_host"], 1021);
    assert_eq!(envs[0]["hosts_capacity"], 3);
    assert_eq!(envs[0]["hosts_leased"], 3);
    let hosts: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["host", "ls", "-o", "json"])).unwrap();
    for h in hosts.as_array().unwrap() {
        assert_eq!(h["overlay_addresses_total"], 1021, "{h}");
        assert_eq!(h["overlay_addresses_used"], 0, "{h}");
    }
    assert!(server.cli_ok(&["host", "ls"]).contains("0/1021"));
    assert!(
        server
            .cli_ok(&["host", "inspect", "b"])
            .contains("0 used, 1021 free of 1021")
    );

    // Hosts hold /22s now: the size is fixed.
    let out = server.cli(&["env", "set-overlay", "default", "--host-subnet", "/24"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("3 host(s) already hold a /22 subnet (a, b, c)"),
        "{err}"
    );

    // A fourth host is refused before anything is recorded, and says what to do.
    let facts = HostFacts {
        name: "d".into(),
        hostname: "d".into(),
        overlay_port: Some(51001),
        overlay_public_key: Some("dd".repeat(32)),
        ..Default::default()
    };
    let credential_d = credential();
    let hello = corral_agent::dial::hello(
        Auth::Register {
            token: token.clone(),
            credential: credential_d.clone(),
        },
        facts.clone(),
    );
    match pinned_dialer(&server).connect(hello).await {
        Err(DialError::Refused { reason, message }) => {
            assert_eq!(reason, CloseReason::OverlayFull);
            assert!(!reason.is_permanent());
            assert!(
                message.contains("overlay range 10.60.0.0/20 is full")
                    && message.contains("corral env set-overlay default --range"),
                "{message}"
            );
        }
        Ok(_) => panic!("a host joined a full range"),
        Err(e) => panic!("{e}"),
    }
    let hosts = server.cli_ok(&["host", "ls", "-o", "json"]);
    assert!(!hosts.contains("\"d\""), "{hosts}");
    assert!(
        server
            .events()
            .iter()
            .any(|e| e["kind"] == "overlay_range_full")
    );

    // The range grows: the same agent, trying again, joins with the next /22.
    server.cli_ok(&["env", "set-overlay", "default", "--range", "10.60.0.0/19"]);
    let mut d = connect(
        &server,
        Auth::Register {
            token,
            credential: credential_d,
        },
        "d",
        &"dd".repeat(32),
        51001,
    )
    .await;
    assert_eq!(config(&mut d, |_| true).await.subnet, "10.60.16.0/22");
    let table = server.cli_ok(&["env", "ls"]);
    assert!(table.contains("4 of 7"), "{table}");
}

/// Environments made and removed: each with its own overlay shape, tokens and hosts; removal
/// refused while a host is left (naming it), then done with its tokens revoked and its name
/// free again; `default` stays; bad names and duplicates refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_are_created_with_their_overlay_and_removed_only_when_empty() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let made = server.cli_json(&[
        "env",
        "create",
        "prod",
        "--range",
        "10.80.0.0/16",
        "--host-subnet",
        "/22",
    ]);
    assert_eq!(made["name"], "prod");
    assert_eq!(made["overlay_cidr"], "10.80.0.0/16");
    assert_eq!(made["host_subnet_prefix"], 22);
    assert_eq!(made["hosts_capacity"], 63);
    for (args, says) in [
        (
            vec!["env", "create", "prod"],
            "an environment named prod exists",
        ),
        (
            vec!["env", "create", "Prod_1"],
            "may contain only lowercase letters",
        ),
        (
            vec!["env", "create", "big", "--range", "10.0.0.0/8"],
            "at most 4,095",
        ),
        (
            vec!["env", "rm", "default"],
            "the default environment cannot be removed",
        ),
        (vec!["env", "rm", "nothere"], "no environment \"nothere\""),
    ] {
        let out = server.cli(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }

    // CORRAL_ENV is every command's --env unless one is given.
    let out = Command::new(corral_bin())
        .args(["token", "create", "-o", "json"])
        .env("CORRAL_SERVER", &server.env.server)
        .env("CORRAL_API_KEY", &server.env.api_key)
        .env("CORRAL_CA_CHECKSUM", &server.env.checksum)
        .env("CORRAL_ENV", "prod")
        .output()
        .unwrap();
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["environment"], "prod", "{out:?}");
    // A host registered with a token of prod gets a /22 of prod's range.
    let (_, token) = server.token(&["--env", "prod"]);
    let mut a = agent(&server, &token, "p1", &"ab".repeat(32), 51001).await;
    assert_eq!(config(&mut a, |_| true).await.subnet, "10.80.4.0/22");
    let hosts = server.hosts();
    let p1 = hosts.iter().find(|h| h["name"] == "p1").unwrap();
    assert_eq!(p1["environment"], "prod");
    let table = server.cli_ok(&["host", "ls", "--env", "prod"]);
    assert!(
        table.contains("ENVIRONMENT") && table.contains("p1") && table.contains("prod"),
        "{table}"
    );
    let table = server.cli_ok(&["host", "ls", "--env", "default"]);
    assert!(!table.contains("p1"), "{table}");

    let out = server.cli(&["env", "rm", "prod"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("environment prod still holds 1 host(s) (p1) — corral host rm"),
        "{err}"
    );
    server.cli_ok(&["host", "rm", "p1"]);
    server.cli_ok(&["env", "rm", "prod"]);
    let envs = server.cli_json(&["env", "ls"]);
    assert_eq!(envs.as_array().unwrap().len(), 1, "{envs}");
    // Its token no longer registers anyone.
    let hello = corral_agent::dial::hello(
        Auth::Register {
            token: token.clone(),
            credential: credential(),
        },
        HostFacts {
            name: "p2".into(),
            hostname: "p2".into(),
            ..Default::default()
        },
    );
    match pinned_dialer(&server).connect(hello).await {
        Err(DialError::Refused { reason, .. }) => assert_eq!(reason, CloseReason::BadToken),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // The name is free again.
    server.cli_ok(&["env", "create", "prod"]);
    assert!(
        server
            .events()
            .iter()
            .any(|e| e["kind"] == "environment_removed")
    );
}
