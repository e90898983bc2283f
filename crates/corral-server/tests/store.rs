//! The datastore in process, on a real SQLite file: the durable command queue's states and
//! its rules for replies, and rows that no longer read failing instead of reading as defaults.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_control::states::{Actual, Desired};
use corral_proto::{
    Command, CommandBody, CommandResult, ContainerRef, ContainerState, ContainerStatus, Health,
    HostFacts, ImageCheck,
};
use corral_server::secrets::{SecretHash, new_id};
use corral_server::store::{
    Admitted, AgentAuth, Arrival, Completion, ContainerRow, Delivered, Store, StoreError, TokenRow,
};
use corral_server::vault::Vault;

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("corral.db"), vault(dir.path()))
        .await
        .unwrap();
    (dir, store)
}

fn vault(dir: &std::path::Path) -> std::sync::Arc<Vault> {
    std::sync::Arc::new(Vault::open_or_create(dir).unwrap())
}

/// A registered host (through a token, as an agent registers).
async fn host(store: &Store, name: &str) -> String {
    let env = store.ensure_environment("default", 1).await.unwrap();
    let token = format!("tok-{name}");
    store
        .insert_token(&TokenRow {
            id: new_id("tok"),
            environment_id: env.id,
            secret_hash: SecretHash::of(&token).as_bytes().to_vec(),
            created_at: 1,
            expires_at: None,
            max_uses: None,
            uses: 0,
            revoked_at: None,
        })
        .await
        .unwrap();
    let facts = HostFacts {
        name: name.into(),
        hostname: name.into(),
        ..HostFacts::default()
    };
    let auth = store
        .authenticate_agent(
            &SecretHash::of(&format!("cred-{name}")),
            Some(&SecretHash::of(&token)),
            &Arrival {
                facts: &facts,
                agent_version: "0.1.0",
                remote_addr: "127.0.0.1:1",
                now: 2,
            },
            None,
        )
        .await
        .unwrap();
    match auth {
        AgentAuth::Host(h, _) => h.id,
        other => panic!("not registered: {other:?}"),
    }
}

fn command(id: &str, deadline: i64) -> Command {
    Command {
        id: id.into(),
        body: CommandBody::ImageCheck(ImageCheck {
            images: vec!["a:1".into()],
        }),
        deadline,
    }
}

#[tokio::test]
async fn commands_go_out_once_per_connection_then_are_acked_once_and_only_from_their_host() {
    let (_dir, store) = store().await;
    let a = host(&store, "a").await;
    let b = host(&store, "b").await;
    store
        .insert_command(&a, &command("cmd-1", 100), 10)
        .await
        .unwrap();
    store
        .insert_command(&a, &command("cmd-2", 20), 10)
        .await
        .unwrap();

    // What goes out is what is pending and within its deadline, typed as it was stored, and
    // it goes out once on a connection: taken, it counts as written.
    let on_a = std::sync::Mutex::new(Delivered::default());
    let taken = store
        .take_pending_commands(&a, 30, &on_a, 64)
        .await
        .unwrap();
    assert_eq!(taken.commands, vec![command("cmd-1", 100)]);
    assert!(taken.unreadable.is_empty());
    assert!(!taken.more);
    assert!(
        store
            .take_pending_commands(&a, 30, &on_a, 64)
            .await
            .unwrap()
            .commands
            .is_empty()
    );
    assert_eq!(on_a.lock().unwrap().len(), 1);
    assert!(
        store
            .take_pending_commands(&b, 30, &Default::default(), 64)
            .await
            .unwrap()
            .commands
            .is_empty()
    );
    // A new connection sends what was written and never answered again.
    let again = store
        .take_pending_commands(&a, 30, &Default::default(), 64)
        .await
        .unwrap();
    assert_eq!(again.commands, vec![command("cmd-1", 100)]);
    // Batches are bounded, oldest first, and say when more wait.
    for i in 0..5 {
        store
            .insert_command(&b, &command(&format!("cmd-b{i}"), 100), 11 + i)
            .await
            .unwrap();
    }
    let on_b = std::sync::Mutex::new(Delivered::default());
    let first = store.take_pending_commands(&b, 30, &on_b, 2).await.unwrap();
    let ids: Vec<&str> = first.commands.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["cmd-b0", "cmd-b1"]);
    assert!(first.more);
    let second = store.take_pending_commands(&b, 30, &on_b, 2).await.unwrap();
    let ids: Vec<&str> = second.commands.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["cmd-b2", "cmd-b3"]);
    store.fail_host_commands(&b, "cleared", 30).await.unwrap();
    assert_eq!(
        store.command("cmd-1").await.unwrap(),
        Some(command("cmd-1", 100).body)
    );

    let ok = CommandResult::Ok {
        value: serde_json::json!([]),
    };
    assert!(matches!(
        store.complete_command("cmd-1", &b, &ok, 31).await.unwrap(),
        Completion::WrongHost { owner } if owner == a
    ));
    assert!(matches!(
        store.complete_command("cmd-1", &a, &ok, 31).await.unwrap(),
        Completion::Accepted
    ));
    // Answered, it leaves the connection's count at its next look (and is not written again).
    let after = store
        .take_pending_commands(&a, 31, &on_a, 64)
        .await
        .unwrap();
    assert!(after.commands.is_empty());
    assert!(on_a.lock().unwrap().is_empty());
    assert!(matches!(
        store.complete_command("cmd-1", &a, &ok, 32).await.unwrap(),
        Completion::AlreadyFinished { .. }
    ));
    assert!(matches!(
        store
            .complete_command("cmd-nope", &a, &ok, 32)
            .await
            .unwrap(),
        Completion::Unknown
    ));
    // cmd-2 passed its deadline: the sweep expires it, once.
    assert_eq!(store.expire_commands(40).await.unwrap(), vec!["cmd-2"]);
    assert!(store.expire_commands(41).await.unwrap().is_empty());
    // Removing a host fails what it still had open.
    store
        .insert_command(&b, &command("cmd-3", 100), 50)
        .await
        .unwrap();
    assert_eq!(
        store.fail_host_commands(&b, "removed", 51).await.unwrap(),
        vec!["cmd-3"]
    );
}

#[tokio::test]
async fn a_stored_command_that_no_longer_reads_is_an_error_not_an_empty_command() {
    let (dir, store) = store().await;
    let a = host(&store, "a").await;
    store
        .insert_command(&a, &command("cmd-1", 100), 10)
        .await
        .unwrap();
    store.close().await;
    let db = dir.path().join("corral.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE commands SET payload = '{\"images\": 7}' WHERE id = 'cmd-1'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let store = Store::open_sqlite(&db, vault(dir.path())).await.unwrap();
    assert!(matches!(
        store.command("cmd-1").await,
        Err(StoreError::Corrupt(m)) if m.contains("cmd-1")
    ));
    // Taking it fails it with the reason, and the queue behind it moves on.
    store
        .insert_command(&a, &command("cmd-2", 100), 11)
        .await
        .unwrap();
    let taken = store
        .take_pending_commands(&a, 20, &Default::default(), 64)
        .await
        .unwrap();
    assert_eq!(taken.commands, vec![command("cmd-2", 100)]);
    assert_eq!(taken.unreadable.len(), 1);
    assert_eq!(taken.unreadable[0].0, "cmd-1");
}

fn container(id: &str, host_id: &str, env_id: &str) -> ContainerRow {
    ContainerRow {
        id: id.into(),
        environment_id: env_id.into(),
        host_id: host_id.into(),
        name: format!("name-{id}"),
        image: "i".into(),
        spec: "{}".into(),
        desired: Desired::Running,
        actual: Actual::Pending,
        docker_id: None,
        exit_code: None,
        created_at: 1,
        updated_at: 1,
        stack_id: None,
        service: None,
        slot: None,
        spec_hash: None,
        health: None,
        restart_count: 0,
        ip: None,
    }
}

#[tokio::test]
async fn container_states_are_typed_and_an_unknown_state_fails_the_read() {
    let (dir, store) = store().await;
    let a = host(&store, "a").await;
    let env = store.environment_by_name("default").await.unwrap().unwrap();
    store
        .insert_container(&container("ctr-1", &a, &env.id))
        .await
        .unwrap();
    // A second container with the same name is a conflict, not a silent overwrite.
    let mut twin = container("ctr-2", &a, &env.id);
    twin.name = "name-ctr-1".into();
    assert!(matches!(
        store.insert_container(&twin).await,
        Err(StoreError::Conflict(_))
    ));
    let status = ContainerStatus {
        corral_id: "ctr-1".into(),
        docker_id: "d1".into(),
        name: "name-ctr-1".into(),
        state: ContainerState::Running,
        exit_code: None,
        health: Some(Health::Starting),
        restart_count: 0,
        ip: None,
    };
    // Another host's report does not touch it.
    let b = host(&store, "b").await;
    assert!(!store.record_status(&b, &status, 5).await.unwrap());
    assert!(store.record_status(&a, &status, 5).await.unwrap());
    let row = store.find_container("ctr-1").await.unwrap();
    assert_eq!(row.actual, Actual::Docker(ContainerState::Running));
    assert_eq!(row.health, Some(Health::Starting));
    store
        .set_desired("ctr-1", Desired::Stopped, 6)
        .await
        .unwrap();
    assert_eq!(
        store.find_container("ctr-1").await.unwrap().desired,
        Desired::Stopped
    );

    store.close().await;
    let db = dir.path().join("corral.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE containers SET actual = 'frozen' WHERE id = 'ctr-1'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let store = Store::open_sqlite(&db, vault(dir.path())).await.unwrap();
    let err = store.containers().await.unwrap_err().to_string();
    assert!(err.contains("frozen"), "{err}");
    let _ = ContainerRef::lifecycle("x", None);
}

/// Admission: a registration writes the host, the token's use and the event together; the
/// credential then admits the known host; a second host of the same name, a removed host and
/// an unknown credential are refused as such.
#[tokio::test]
async fn registration_writes_host_token_use_and_event_and_the_credential_then_admits() {
    let (_dir, store) = store().await;
    let id = host(&store, "a").await;
    let tokens = store.tokens().await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].uses, 1);
    let events = store.events(10).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "host_registered" && e.host_id.as_deref() == Some(id.as_str())),
        "{events:?}"
    );
    let facts = |name: &str| HostFacts {
        name: name.into(),
        hostname: "renamed".into(),
        ..HostFacts::default()
    };
    let again = store
        .authenticate_agent(
            &SecretHash::of("cred-a"),
            None,
            &Arrival {
                facts: &facts("a"),
                agent_version: "0.2.0",
                remote_addr: "127.0.0.1:2",
                now: 3,
            },
            None,
        )
        .await
        .unwrap();
    match again {
        AgentAuth::Host(h, Admitted::Known) => {
            assert_eq!(h.id, id);
            assert_eq!(h.hostname, "renamed");
            assert_eq!(h.agent_version, "0.2.0");
        }
        other => panic!("not admitted as known: {other:?}"),
    }
    let twin = store
        .authenticate_agent(
            &SecretHash::of("cred-other"),
            Some(&SecretHash::of("tok-a")),
            &Arrival {
                facts: &facts("a"),
                agent_version: "0.1.0",
                remote_addr: "127.0.0.1:3",
                now: 4,
            },
            None,
        )
        .await
        .unwrap();
    assert!(
        matches!(&twin, AgentAuth::NameTaken { host_id, .. } if *host_id == id),
        "{twin:?}"
    );
    assert_eq!(
        store.tokens().await.unwrap()[0].uses,
        1,
        "a refusal uses nothing"
    );
    store.remove_host(&id, 5).await.unwrap();
    let gone = store
        .authenticate_agent(
            &SecretHash::of("cred-a"),
            None,
            &Arrival {
                facts: &facts("a"),
                agent_version: "0.1.0",
                remote_addr: "127.0.0.1:2",
                now: 6,
            },
            None,
        )
        .await
        .unwrap();
    assert!(
        matches!(gone, AgentAuth::Removed { removed_at: 5, .. }),
        "{gone:?}"
    );
    let unknown = store
        .authenticate_agent(
            &SecretHash::of("cred-x"),
            None,
            &Arrival {
                facts: &facts("x"),
                agent_version: "0.1.0",
                remote_addr: "127.0.0.1:2",
                now: 6,
            },
            None,
        )
        .await
        .unwrap();
    assert!(
        matches!(unknown, AgentAuth::UnknownCredential),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn a_registration_writes_its_audit_entry_in_its_own_transaction() {
    let (_dir, store) = store().await;
    let env = store.ensure_environment("default", 1).await.unwrap();
    store
        .insert_token(&TokenRow {
            id: new_id("tok"),
            environment_id: env.id,
            secret_hash: SecretHash::of("tok").as_bytes().to_vec(),
            created_at: 1,
            expires_at: None,
            max_uses: Some(1),
            uses: 0,
            revoked_at: None,
        })
        .await
        .unwrap();
    let seal = |h: &corral_server::store::HostRow| {
        (
            corral_control::audit::Entry {
                seq: 1,
                at: 5,
                actor: "server".into(),
                key_id: String::new(),
                role: String::new(),
                environment: String::new(),
                action: "host_registered".into(),
                target: h.id.clone(),
                outcome: format!("host {} registered", h.name),
                source: String::new(),
            },
            [7u8; 32],
        )
    };
    let facts = |name: &str| HostFacts {
        name: name.into(),
        hostname: name.into(),
        ..HostFacts::default()
    };
    let auth = store
        .authenticate_agent(
            &SecretHash::of("cred-a"),
            Some(&SecretHash::of("tok")),
            &Arrival {
                facts: &facts("a"),
                agent_version: "0.1.0",
                remote_addr: "127.0.0.1:1",
                now: 2,
            },
            Some(&seal),
        )
        .await
        .unwrap();
    let AgentAuth::Host(h, Admitted::Registered { audited, .. }) = auth else {
        panic!("not registered: {auth:?}");
    };
    assert_eq!(audited, Some((1, [7u8; 32])));
    assert_eq!(store.audit_head().await.unwrap(), Some((1, [7u8; 32])));
    let entries = store.audit_page(0, 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0.target, h.id);

    // A refused registration (the token is used up) writes no entry.
    let refused = store
        .authenticate_agent(
            &SecretHash::of("cred-b"),
            Some(&SecretHash::of("tok")),
            &Arrival {
                facts: &facts("b"),
                agent_version: "0.1.0",
                remote_addr: "127.0.0.1:2",
                now: 3,
            },
            Some(&seal),
        )
        .await
        .unwrap();
    assert!(matches!(refused, AgentAuth::TokenRefused(_)), "{refused:?}");
    assert_eq!(store.audit_head().await.unwrap(), Some((1, [7u8; 32])));
}

/// The overlay sync re-reads an environment's members only when its overlay counter moves:
/// a registration alone (no key, no lease: nothing any peer is sent) must not move it, while
/// a key, an endpoint and a lease must; and the members it reads are the leased hosts only.
#[tokio::test]
async fn only_what_peers_are_sent_moves_the_overlay_counter() {
    let (_dir, store) = store().await;
    let first = host(&store, "a").await;
    let env = store.environment_by_name("default").await.unwrap().unwrap();
    let overlay = |s: &Store| {
        let (s, id) = (s.clone(), env.id.clone());
        async move { s.change_counters().await.unwrap()[&id].overlay }
    };
    let before = overlay(&store).await;
    let plain = host(&store, "b").await;
    assert_eq!(overlay(&store).await, before, "a plain registration");
    assert!(store.leased_members(&env.id).await.unwrap().is_empty());

    let key = "ab".repeat(32);
    store
        .set_host_overlay(&first, Some(&key), Some("127.0.0.1:51820"))
        .await
        .unwrap();
    let keyed = overlay(&store).await;
    assert!(keyed > before, "a key and an endpoint");
    assert!(
        store.leased_members(&env.id).await.unwrap().is_empty(),
        "no lease yet: nobody's peer"
    );
    assert!(
        store
            .insert_lease(&env.id, &first, "10.42.1.0/24")
            .await
            .unwrap()
    );
    assert!(overlay(&store).await > keyed, "a lease");
    let members = store.leased_members(&env.id).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(
        (members[0].id.as_str(), members[0].subnet.as_deref()),
        (first.as_str(), Some("10.42.1.0/24"))
    );
    assert_ne!(members[0].id, plain);
}

/// Replies that arrive together are written together (group commit), and each is still judged
/// as it would be alone: the real reply is accepted though a forgery for the same command
/// from another host came first in the same group, a replay is refused, an unknown id is
/// unknown — and hundreds at once all land.
#[tokio::test]
async fn replies_written_together_are_each_judged_as_alone() {
    let (_dir, store) = store().await;
    let a = host(&store, "a").await;
    let b = host(&store, "b").await;
    let n = 600;
    for i in 0..n {
        store
            .insert_command(&a, &command(&format!("cmd-{i}"), 100), 10)
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .take_pending_commands(&a, 20, &Default::default(), n)
            .await
            .unwrap()
            .commands
            .len(),
        n
    );
    let ok = CommandResult::Ok {
        value: serde_json::json!([]),
    };
    // All at once: the forgery first, then every real reply, then a replay and an unknown id.
    let mut calls = Vec::new();
    calls.push(("cmd-0".to_owned(), b.clone()));
    for i in 0..n {
        calls.push((format!("cmd-{i}"), a.clone()));
    }
    calls.push(("cmd-1".to_owned(), a.clone()));
    calls.push(("cmd-nope".to_owned(), a.clone()));
    let outcomes = futures_util::future::join_all(calls.iter().map(|(id, host)| {
        let store = store.clone();
        let ok = ok.clone();
        async move { store.complete_command(id, host, &ok, 30).await.unwrap() }
    }))
    .await;
    assert!(matches!(&outcomes[0], Completion::WrongHost { owner } if *owner == a));
    assert!(
        outcomes[1..=n]
            .iter()
            .all(|c| matches!(c, Completion::Accepted)),
        "every real reply is accepted"
    );
    assert!(matches!(
        &outcomes[n + 1],
        Completion::AlreadyFinished { state } if state == "acked"
    ));
    assert!(matches!(&outcomes[n + 2], Completion::Unknown));
    // Nothing open is left: the sweep finds nothing to expire.
    assert!(store.expire_commands(1000).await.unwrap().is_empty());
}

/// Statuses written together: the last one a host gave of a container is what stays, another
/// host's report of it touches nothing, and one of a container that does not exist says so.
#[tokio::test]
async fn statuses_written_together_keep_the_last_and_only_the_hosts_own() {
    let (_dir, store) = store().await;
    let a = host(&store, "a").await;
    let b = host(&store, "b").await;
    let env = store.environment_by_name("default").await.unwrap().unwrap();
    store
        .insert_container(&container("ctr-1", &a, &env.id))
        .await
        .unwrap();
    let status = |state: ContainerState, docker: &str| ContainerStatus {
        corral_id: "ctr-1".into(),
        docker_id: docker.into(),
        name: "name-ctr-1".into(),
        state,
        exit_code: None,
        health: None,
        restart_count: 0,
        ip: None,
    };
    let mut gone = status(ContainerState::Running, "d9");
    gone.corral_id = "ctr-gone".into();
    let writes = [
        (a.clone(), status(ContainerState::Created, "d1")),
        (b.clone(), status(ContainerState::Dead, "forged")),
        (a.clone(), status(ContainerState::Running, "d1")),
        (a.clone(), gone),
    ];
    let answers = futures_util::future::join_all(writes.iter().map(|(host, s)| {
        let store = store.clone();
        async move { store.record_status(host, s, 7).await.unwrap() }
    }))
    .await;
    assert_eq!(answers, vec![true, false, true, false]);
    let row = store.find_container("ctr-1").await.unwrap();
    assert_eq!(row.actual, Actual::Docker(ContainerState::Running));
    assert_eq!(row.docker_id.as_deref(), Some("d1"));
}

/// A pass's new replicas and their commands land in one transaction; one whose name is taken
/// is left out with its command, and the others land.
#[tokio::test]
async fn new_replicas_land_with_their_commands_and_a_taken_name_leaves_out_only_its_own() {
    let (_dir, store) = store().await;
    let a = host(&store, "a").await;
    let env = store.environment_by_name("default").await.unwrap().unwrap();
    store
        .insert_container(&container("ctr-old", &a, &env.id))
        .await
        .unwrap();
    let mut rows: Vec<ContainerRow> = (0..1200)
        .map(|i| container(&format!("ctr-{i}"), &a, &env.id))
        .collect();
    rows[700].name = "name-ctr-old".into();
    let commands: Vec<Command> = (0..1200)
        .map(|i| command(&format!("cmd-{i}"), 100))
        .collect();
    let items: Vec<(&ContainerRow, &Command)> = rows.iter().zip(commands.iter()).collect();
    let taken = store
        .insert_containers_with_commands(&items, 10)
        .await
        .unwrap();
    assert_eq!(taken, vec![700]);
    assert_eq!(
        store.environment_containers(&env.id).await.unwrap().len(),
        1200
    );
    let sent = store
        .take_pending_commands(&a, 20, &Default::default(), 5000)
        .await
        .unwrap();
    assert_eq!(sent.commands.len(), 1199);
    assert!(!sent.commands.iter().any(|c| c.id == "cmd-700"));
    // Oldest first, as stored.
    assert_eq!(sent.commands[0].id, "cmd-0");
    assert_eq!(store.command("cmd-700").await.unwrap(), None);
    // The specs read back as written (sealed at rest, opened on the way out).
    let specs = store
        .container_specs(&["ctr-1", "ctr-missing"])
        .await
        .unwrap();
    assert_eq!(specs, vec![("ctr-1".to_owned(), "{}".to_owned())]);
}

/// A pass's removals: every container marked `removed` and its command queued in one
/// transaction; the rows go as the hosts confirm, many deletions to a commit.
#[tokio::test]
async fn removals_are_marked_and_queued_together_and_deleted_in_groups() {
    let (_dir, store) = store().await;
    let a = host(&store, "a").await;
    let env = store.environment_by_name("default").await.unwrap().unwrap();
    let ids: Vec<String> = (0..700).map(|i| format!("ctr-{i}")).collect();
    for id in &ids {
        store
            .insert_container(&container(id, &a, &env.id))
            .await
            .unwrap();
    }
    let commands: Vec<Command> = (0..700)
        .map(|i| command(&format!("cmd-rm-{i}"), 100))
        .collect();
    let items: Vec<(&str, &str, &Command)> = ids
        .iter()
        .zip(&commands)
        .map(|(id, c)| (id.as_str(), a.as_str(), c))
        .collect();
    store.queue_removals(&items, 10).await.unwrap();
    let rows = store.environment_containers(&env.id).await.unwrap();
    assert_eq!(rows.len(), 700);
    assert!(rows.iter().all(|r| r.desired == Desired::Removed));
    assert_eq!(
        store
            .take_pending_commands(&a, 20, &Default::default(), 5000)
            .await
            .unwrap()
            .commands
            .len(),
        700
    );
    futures_util::future::join_all(ids.iter().map(|id| {
        let store = store.clone();
        async move { store.delete_container(id).await.unwrap() }
    }))
    .await;
    assert!(
        store
            .environment_containers(&env.id)
            .await
            .unwrap()
            .is_empty()
    );
}
