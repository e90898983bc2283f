//! Directory logins against a real `slapd` (Debian's) on loopback: users bind as themselves
//! over LDAPS (and StartTLS), their groups give roles per environment and admin; a user taken
//! out of a group loses the role at their next login; wrong passwords are refused; plain LDAP
//! is refused at start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use corral_testkit::Slapd;
use serde_json::Value;

fn whoami(config: &Path) -> Value {
    let out = as_user(config, &["whoami", "-o", "json"], "", &[]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ldap_args(slapd: &Slapd, url: &str) -> Vec<String> {
    vec![
        "--ldap-url".into(),
        url.into(),
        "--ldap-ca".into(),
        slapd.ca_path().display().to_string(),
        "--ldap-user-dn".into(),
        Slapd::user_dn_template(),
        "--ldap-group-base".into(),
        Slapd::group_base(),
        "--ldap-role".into(),
        "ops=default:owner".into(),
        "--ldap-role".into(),
        "viewers=default:read-only".into(),
        "--ldap-admin-group".into(),
        "corral-admins".into(),
    ]
}

#[test]
fn directory_users_log_in_with_the_roles_their_groups_give() {
    let t = tmp();
    let slapd = Slapd::start(&t.path().join("slapd"));
    slapd.add_user("alice", "alice-password-1");
    slapd.add_user("bob", "bob-password-12");
    slapd.add_user("carol", "carol-password-1");
    slapd.add_user("nobody", "nobody-password");
    // A group of names must keep one member: "keeper" never logs in.
    slapd.add_user("keeper", "keeper-password");
    slapd.add_group("ops", &["alice", "keeper"]);
    slapd.add_group("viewers", &["bob", "alice", "keeper"]);
    slapd.add_group("corral-admins", &["carol"]);

    let args = ldap_args(&slapd, &slapd.ldaps_url());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&t.path().join("data"), &args);

    // alice: owner (ops) wins over read-only (viewers).
    let alice = t.path().join("alice.json");
    let out = login(&server, &alice, "alice", "alice-password-1");
    assert!(out.status.success(), "{out:?}");
    let me = whoami(&alice);
    assert_eq!(me["name"], "alice");
    assert_eq!(me["admin"], false);
    assert_eq!(
        me["roles"],
        serde_json::json!([{"environment": "default", "role": "owner"}])
    );
    assert_eq!(me["password"], false, "no password is stored for her");
    let out = as_user(&alice, &["token", "create", "-o", "json"], "", &[]);
    assert!(out.status.success(), "an owner makes tokens: {out:?}");

    // bob: read-only; carol: admin.
    let bob = t.path().join("bob.json");
    assert!(
        login(&server, &bob, "bob", "bob-password-12")
            .status
            .success()
    );
    assert_eq!(whoami(&bob)["roles"][0]["role"], "read-only");
    let out = as_user(&bob, &["token", "create"], "", &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is read-only in environment"),
        "{out:?}"
    );
    let carol = t.path().join("carol.json");
    assert!(
        login(&server, &carol, "carol", "carol-password-1")
            .status
            .success()
    );
    assert_eq!(whoami(&carol)["admin"], true);

    // Wrong password, unknown user, empty password, no group with a role.
    for (user, password, says) in [
        ("alice", "wrong-password", "wrong user name or password"),
        ("mallory", "any-password-1", "wrong user name or password"),
        (
            "nobody",
            "nobody-password",
            "none of the user's groups gives a corral role",
        ),
    ] {
        let out = login(&server, &t.path().join("x.json"), user, password);
        assert!(!out.status.success(), "{user}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{user}: {err}");
    }
    let out = login(&server, &t.path().join("x.json"), "alice", "");
    assert!(!out.status.success(), "an empty password never binds");

    // alice leaves ops: at her next login she is only read-only (viewers), and her earlier
    // key carries what the directory says now.
    slapd.remove_member("ops", "alice");
    assert!(
        login(
            &server,
            &t.path().join("alice2.json"),
            "alice",
            "alice-password-1"
        )
        .status
        .success()
    );
    assert_eq!(whoami(&alice)["roles"][0]["role"], "read-only");
    // Out of every group: refused, and she has no role left.
    slapd.remove_member("viewers", "alice");
    let out = login(
        &server,
        &t.path().join("alice3.json"),
        "alice",
        "alice-password-1",
    );
    assert!(!out.status.success());
    assert_eq!(whoami(&alice)["roles"], serde_json::json!([]));
    let out = as_user(&alice, &["host", "ls", "-o", "json"], "", &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    // Logins are audited under the name tried.
    let audit = server.cli_json(&["audit", "ls", "--actor", "mallory (login)"]);
    assert!(!audit.as_array().unwrap().is_empty());

    // StartTLS on the plain port works too.
    let mut server = server;
    server.stop();
    let args = ldap_args(&slapd, &slapd.ldap_url());
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push("--ldap-starttls");
    let server = Server::start(&t.path().join("data2"), &args);
    let bob2 = t.path().join("bob2.json");
    let out = login(&server, &bob2, "bob", "bob-password-12");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(whoami(&bob2)["roles"][0]["role"], "read-only");
}

#[test]
fn plain_ldap_is_refused_at_start() {
    let t = tmp();
    let ca = t.path().join("ca.pem");
    std::fs::write(&ca, "not used").unwrap();
    let out = Command::new("timeout")
        .args([
            "20",
            corral_bin(),
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(t.path().join("data"))
        .args([
            "--ldap-url",
            "ldap://127.0.0.1:389",
            "--ldap-ca",
            ca.to_str().unwrap(),
            "--ldap-user-dn",
            "uid={user},ou=people,dc=x",
            "--ldap-group-base",
            "ou=groups,dc=x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plain LDAP would send passwords in clear"),
        "{err}"
    );
}
