//! Local users, logins and keys with a real server: the saved login (0600, sent only to its own
//! server), key expiry, lockout after failed logins and the per-source throttle, password
//! bounds, the last admin, and own keys and passwords.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn logins_keys_and_lockouts() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let password = "a long enough password";
    let out = server.cli_with_stdin(&["user", "create", "dana", "--password-stdin"], "short\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("12 to 1024 bytes"), "{out:?}");
    server.cli_with_stdin(
        &["user", "create", "dana", "--password-stdin"],
        &format!("{password}\n"),
    );
    server.cli_ok(&[
        "user", "grant", "dana", "--env", "default", "--role", "member",
    ]);

    // The saved login: 0600, used without any variable, never sent to another server.
    let config = t.path().join("cli/config.json");
    let out = login(&server, &config, "dana", password);
    assert!(out.status.success(), "{out:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert!(saved["api_key"].as_str().unwrap().starts_with("crl_key_"));
    let out = as_user(&config, &["whoami", "-o", "json"], "", &[]);
    let me: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(me["roles"][0]["role"], "member");
    let out = as_user(
        &config,
        &["host", "ls"],
        "",
        &[("CORRAL_SERVER", "https://127.0.0.1:9")],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("CORRAL_API_KEY is not set"),
        "{out:?}"
    );

    // Own keys: one that expires in a second is refused after it, saying so.
    let out = as_user(
        &config,
        &[
            "key",
            "create",
            "--name",
            "short-lived",
            "--ttl",
            "1s",
            "-o",
            "json",
        ],
        "",
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let key: Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = key["key"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(10), "the key to expire", || {
        let out = server.cli_with(&["host", "ls"], &secret);
        !out.status.success() && stderr(&out).contains("this API key expired at")
    });
    let keys = as_user(&config, &["key", "ls", "-o", "json"], "", &[]);
    let keys: Value = serde_json::from_slice(&keys.stdout).unwrap();
    let states: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"expired") && states.contains(&"active"),
        "{states:?}"
    );
    let id = key["key_id"].as_str().unwrap();
    assert!(
        as_user(&config, &["key", "rm", id], "", &[])
            .status
            .success()
    );
    let out = as_user(&config, &["key", "rm", "key-of-someone-else"], "", &[]);
    assert!(stderr(&out).contains("you have no active key"), "{out:?}");

    // A user changes their own password, not another's.
    let out = as_user(
        &config,
        &["user", "passwd", "--password-stdin"],
        "another long password\n",
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let out = as_user(
        &config,
        &["user", "passwd", "admin", "--password-stdin"],
        "another long password\n",
        &[],
    );
    assert!(stderr(&out).contains("only an admin sets another user's password"));

    // Five failures lock the account, saying until when; the right password then waits too.
    for _ in 0..4 {
        let out = login(
            &server,
            &t.path().join("x.json"),
            "dana",
            "not the password",
        );
        assert!(
            stderr(&out).contains("wrong user name or password"),
            "{out:?}"
        );
    }
    let out = login(
        &server,
        &t.path().join("x.json"),
        "dana",
        "not the password",
    );
    assert!(
        stderr(&out).contains("the account is locked until"),
        "{out:?}"
    );
    let out = login(
        &server,
        &t.path().join("x.json"),
        "dana",
        "another long password",
    );
    assert!(
        stderr(&out).contains("the account is locked until"),
        "{out:?}"
    );
    let users = server.cli_json(&["user", "ls"]);
    let dana = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "dana")
        .unwrap();
    assert!(dana["locked_until"].is_string(), "{dana}");

    // The source: 20 failures a minute (unknown users included), then 429 for everyone.
    for i in 0..20 {
        let out = login(
            &server,
            &t.path().join("x.json"),
            &format!("ghost{i}"),
            "guess-guess-guess",
        );
        if stderr(&out).contains("too many failed logins") {
            break;
        }
    }
    let out = login(
        &server,
        &t.path().join("x.json"),
        "admin",
        "guess-guess-guess",
    );
    assert!(
        stderr(&out).contains("too many failed logins from 127.0.0.1"),
        "{out:?}"
    );

    // The last admin stays; a removed user's key stops at once.
    let out = server.cli(&["user", "rm", "admin"]);
    assert!(stderr(&out).contains("admin is the last admin"), "{out:?}");
    server.cli_ok(&["user", "rm", "dana"]);
    let out = as_user(&config, &["whoami"], "", &[]);
    assert!(
        stderr(&out).contains("user \"dana\" was removed"),
        "{out:?}"
    );

    // Malformed and oversized logins.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(server.dir.join("pki/ca.pem"))
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!(
            "{{\"user\": \"x\", \"password\": \"{}\"}}",
            "p".repeat(70_000)
        ))
        .arg(format!("{}/v1/login", server.url()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
}

/// Names are unique per environment: a name used in two is looked up in the environment a
/// command works in (`--env`, `CORRAL_ENV`, `corral env use`), else among the environments the
/// caller has a role in — never revealing one they have none in.
#[test]
fn names_are_looked_up_in_the_working_environment() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    server.cli_ok(&["env", "create", "prod"]);
    let (_, default_token) = server.token(&["--env", "default"]);
    let (_, prod_token) = server.token(&["--env", "prod"]);
    let _a = start_agent(
        &server,
        &t.path().join("a"),
        "h1",
        Some(&default_token),
        &[],
    );
    let _b = start_agent(&server, &t.path().join("b"), "h1", Some(&prod_token), &[]);
    wait_until(Duration::from_secs(30), "both h1 to register", || {
        server.hosts().iter().filter(|h| h["name"] == "h1").count() == 2
    });

    // The admin sees both: a bare name is ambiguous and says where; an environment decides.
    let out = server.cli(&["host", "inspect", "h1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("2 hosts are named \"h1\", in environments default, prod"),
        "{out:?}"
    );
    let env_of = |out: &Output| -> String {
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["environment"].as_str().unwrap().to_owned()
    };
    let mut cmd = Command::new(corral_bin());
    cmd.args(["host", "inspect", "h1", "-o", "json"])
        .env("CORRAL_SERVER", &server.env.server)
        .env("CORRAL_API_KEY", &server.env.api_key)
        .env("CORRAL_CA_CHECKSUM", &server.env.checksum)
        .env("CORRAL_ENV", "prod");
    assert_eq!(env_of(&with_stdin(cmd, "")), "prod");
    let listed = server.cli_json(&["host", "ls", "--env", "prod"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["environment"], "prod");

    // A member of prod alone finds prod's h1 by name, and learns nothing of default's.
    let password = "a long enough password";
    server.cli_with_stdin(
        &["user", "create", "pat", "--password-stdin"],
        &format!("{password}\n"),
    );
    server.cli_ok(&["user", "grant", "pat", "--env", "prod", "--role", "member"]);
    let pat = t.path().join("pat.json");
    assert!(login(&server, &pat, "pat", password).status.success());
    assert_eq!(
        env_of(&as_user(
            &pat,
            &["host", "inspect", "h1", "-o", "json"],
            "",
            &[]
        )),
        "prod"
    );
    let out = as_user(&pat, &["host", "ls", "-o", "json"], "", &[]);
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen.as_array().unwrap().len(), 1, "{seen}");
    for env in ["default", "nosuch"] {
        let out = as_user(&pat, &["host", "ls"], "", &[("CORRAL_ENV", env)]);
        assert!(
            stderr(&out).contains(&format!("no environment \"{env}\"")),
            "{out:?}"
        );
        let out = as_user(&pat, &["env", "use", env], "", &[]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("that you have a role in"), "{out:?}");
    }

    // `env use` saves the working environment with the login: listings, lookups and what
    // commands create follow it until `env use --all`.
    let admin = t.path().join("admin.json");
    server.cli_with_stdin(
        &["user", "passwd", "admin", "--password-stdin"],
        &format!("{password}\n"),
    );
    assert!(login(&server, &admin, "admin", password).status.success());
    let out = as_user(&admin, &["env", "use", "prod"], "", &[]);
    assert!(out.status.success(), "{out:?}");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&admin).unwrap()).unwrap();
    assert_eq!(saved["env"], "prod");
    assert_eq!(
        env_of(&as_user(
            &admin,
            &["host", "inspect", "h1", "-o", "json"],
            "",
            &[]
        )),
        "prod"
    );
    let out = as_user(&admin, &["host", "ls", "-o", "json"], "", &[]);
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen.as_array().unwrap().len(), 1, "{seen}");
    let out = as_user(&admin, &["token", "create", "-o", "json"], "", &[]);
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["environment"], "prod", "{out:?}");
    // CORRAL_ENV and --env still win over what is saved.
    let out = as_user(
        &admin,
        &["host", "inspect", "h1", "-o", "json"],
        "",
        &[("CORRAL_ENV", "default")],
    );
    assert_eq!(env_of(&out), "default");
    let out = as_user(
        &admin,
        &["token", "create", "--env", "default", "-o", "json"],
        "",
        &[],
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["environment"], "default", "{out:?}");
    let out = as_user(&admin, &["whoami"], "", &[]);
    assert!(
        stderr(&out).contains("working in environment prod"),
        "{out:?}"
    );
    let out = as_user(&admin, &["env", "use", "--all"], "", &[]);
    assert!(out.status.success(), "{out:?}");
    let out = as_user(&admin, &["host", "ls", "-o", "json"], "", &[]);
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen.as_array().unwrap().len(), 2, "{seen}");

    // `login --env` saves the working environment with the key, once it is one of the user's;
    // a name they have no role in is not saved (the login itself is).
    let login_env = |config: &std::path::Path, env: &str| {
        login_with(&server, config, "pat", password, &["--env", env])
    };
    let pat_prod = t.path().join("pat-prod.json");
    assert!(login_env(&pat_prod, "prod").status.success());
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&pat_prod).unwrap()).unwrap();
    assert_eq!(saved["env"], "prod");
    let pat_default = t.path().join("pat-default.json");
    let out = login_env(&pat_default, "default");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no role in an environment"),
        "{out:?}"
    );
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&pat_default).unwrap()).unwrap();
    assert!(saved.get("env").is_none(), "{saved}");
    assert!(as_user(&pat_default, &["whoami"], "", &[]).status.success());

    // The header itself: a name that is not one is refused; an unknown one is not found.
    for (value, code) in [("Not A Name!", "400"), ("nosuch", "404"), ("prod", "200")] {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(server.dir.join("pki/ca.pem"))
            .args([
                "-H",
                &format!("authorization: Bearer {}", server.env.api_key),
            ])
            .args(["-H", &format!("corral-environment: {value}")])
            .arg(format!("{}/v1/hosts", server.url()))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), code, "{value}");
    }
}
