//! `corral server backup` and `corral server restore`: a backup taken while the server runs,
//! restored into a new data dir with the master key, serves the same hosts, stacks, users and
//! keys, and the real agent of the old server reconnects to it as it is (same CA, same
//! credential) without its container being run twice; and a restore refuses a wrong key, a
//! damaged or foreign archive and a data dir in use, leaving nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const IMAGE: &str = "corral-test/busybox:latest";
const SECRET_VALUE: &str = "backup-secret-value-7d1f3a";

fn corral(args: &[&str]) -> Output {
    Command::new(corral_bin()).args(args).output().unwrap()
}

fn backup(data_dir: &Path, out: &Path) -> Output {
    corral(&[
        "server",
        "backup",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

fn restore(archive: &Path, data_dir: &Path, key: &Path) -> Output {
    corral(&[
        "server",
        "restore",
        "--from",
        archive.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--master-key",
        key.to_str().unwrap(),
        "-o",
        "json",
    ])
}

/// Docker containers of the stack (running or not).
fn containers(stack: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label=io.corral.stack={stack}"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_backup_taken_while_the_server_runs_restores_everything_and_the_agent_reconnects() {
    require_docker();
    let t = tmp();
    let stack = format!("bk{}", std::process::id());
    // Declared before the server: dropped after it and the agent.
    let _cleanup = StackCleanup(stack.clone());
    let mut server = Server::start(&t.path().join("data"), FAST_HEARTBEATS);
    let (_, token) = server.token(&[]);
    let agent = start_agent(&server, &t.path().join("h1"), "h1", Some(&token), &[]);
    wait_until(Duration::from_secs(30), "h1's Docker", || {
        server
            .hosts()
            .iter()
            .any(|h| h["name"] == "h1" && h["docker"]["state"] == "available")
    });
    let file = t.path().join("compose.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n  web:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    environment:\n      TOKEN: {SECRET_VALUE}\n"
        ),
    )
    .unwrap();
    server.cli_ok(&[
        "up",
        "-f",
        file.to_str().unwrap(),
        "-p",
        &stack,
        "--wait",
        "--timeout",
        "90s",
    ]);
    let before = containers(&stack);
    assert_eq!(before.len(), 1, "{before:?}");
    server.cli_with_stdin(
        &["user", "create", "ops", "--password-stdin"],
        "a long enough password\n",
    );
    let spare_key = server.cli_json(&["key", "create", "--name", "spare"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_admin_key = server.env.api_key.clone();
    let checksum = server.env.checksum.clone();

    // The backup, while the server runs.
    let archive = t.path().join("corral.backup");
    let out = backup(&server.dir, &archive);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 hosts, 1 stacks"), "{}", text(&out));
    let mode = std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup is readable by others");
    assert!(!t.path().join("corral.backup.partial").exists());
    // Nothing secret in clear: not the CA's key, not an environment value, not a key.
    let bytes = std::fs::read(&archive).unwrap();
    let contains = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        !contains("PRIVATE KEY"),
        "the CA's key is in the backup in clear"
    );
    assert!(!contains(SECRET_VALUE), "an environment value is in clear");
    assert!(!contains(&old_admin_key) && !contains(&spare_key));
    assert!(contains("manifest.json") && contains("pki.sealed"));

    // The old server goes; a new data dir is made from the backup and the master key.
    server.stop();
    let restored = t.path().join("restored");
    let out = restore(&archive, &restored, &server.dir.join("master.key"));
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["hosts"], 1, "{summary}");
    assert_eq!(summary["stacks"], 1, "{summary}");
    assert_eq!(summary["ca_checksum"], checksum.as_str(), "{summary}");
    assert_eq!(
        std::fs::metadata(&restored).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for private in ["master.key", "pki/ca-key.pem", "corral.db"] {
        let mode = std::fs::metadata(restored.join(private))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{private} is readable by others");
    }

    // The server on the restored dir, at the same address: the same CA, so the agent (which
    // never stopped) reconnects with the credential it has.
    server.dir = restored;
    server.start_again();
    assert_eq!(server.env.checksum, checksum, "the CA changed");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // The new server's own log says when the agent's tunnel is up.
    while !(server.log().contains("agent connected host=h1")
        && server.host_state("h1").as_deref() == Some("active"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "h1 did not connect again: {:?}\nserver:\n{}\nagent:\n{}",
            server.hosts(),
            server.log(),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let view = &server.cli_json(&["ps", "-p", &stack])[0];
    assert_eq!(view["services"][0]["ready"], 1, "{view}");
    // The replica it found is the one that ran before: nothing was run twice.
    assert_eq!(containers(&stack), before);
    // Every key of the backup works (the old admin key and a second key of the admin), and
    // the user is there.
    let whoami = server.cli_with(&["whoami", "-o", "json"], &old_admin_key);
    assert!(whoami.status.success(), "{}", text(&whoami));
    let whoami = server.cli_with(&["whoami", "-o", "json"], &spare_key);
    assert!(whoami.status.success(), "{}", text(&whoami));
    assert!(String::from_utf8_lossy(&whoami.stdout).contains("admin"));
    let users = server.cli_json(&["user", "ls"]);
    assert!(
        users.as_array().unwrap().iter().any(|u| u["name"] == "ops"),
        "{users}"
    );
    // The sealed environment value still opens (the master key is the same).
    let inspect = inspect(&before[0]);
    assert!(
        inspect["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str() == Some(&format!("TOKEN={SECRET_VALUE}"))),
        "{inspect}"
    );
    server.cli_ok(&["down", "-p", &stack]);
}

#[test]
fn a_restore_refuses_wrong_keys_damaged_archives_and_data_dirs_in_use() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let archive = t.path().join("good.backup");
    let out = backup(&server.dir, &archive);
    assert!(out.status.success(), "{}", text(&out));
    let key = server.dir.join("master.key");
    let target = t.path().join("new");

    // Nothing but the refusal: no data dir, no half-built one beside it.
    let refused = |archive: &Path, key: &Path, why: &str| {
        let out = restore(archive, &target, key);
        assert!(!out.status.success(), "restored: {}", text(&out));
        assert!(text(&out).contains(why), "{why}: {}", text(&out));
        let left: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("new"))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    };

    // Another data dir's master key.
    let other = t.path().join("other.key");
    std::fs::write(&other, [7u8; 32]).unwrap();
    refused(&archive, &other, "does not open this backup");
    // A file that is no key.
    std::fs::write(&other, b"short").unwrap();
    refused(&archive, &other, "not 32 bytes");

    let bytes = std::fs::read(&archive).unwrap();
    // Truncated.
    let cut = t.path().join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    refused(&cut, &key, "damaged");
    // One byte of the datastore changed.
    let flipped = t.path().join("flipped.backup");
    let mut b = bytes.clone();
    let at = b.len() - 4096;
    b[at] ^= 0x55;
    std::fs::write(&flipped, &b).unwrap();
    refused(&flipped, &key, "damaged");
    // Not a backup at all.
    let junk = t.path().join("junk.backup");
    std::fs::write(&junk, b"hello").unwrap();
    refused(&junk, &key, "not a corral backup");
    // An entry a backup never has.
    let extra = t.path().join("extra.backup");
    {
        let mut src = tar::Archive::new(std::fs::File::open(&archive).unwrap());
        let mut dst = tar::Builder::new(std::fs::File::create(&extra).unwrap());
        for entry in src.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut header = entry.header().clone();
            let path = entry.path().unwrap().into_owned();
            dst.append_data(&mut header, path, &mut entry).unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o600);
        dst.append_data(&mut header, "notes.txt", &b"hi"[..])
            .unwrap();
        dst.finish().unwrap();
    }
    refused(&extra, &key, "unexpected entry");

    // A data dir that is in use is never replaced.
    let out = restore(&archive, &server.dir, &key);
    assert!(!out.status.success());
    assert!(text(&out).contains("not empty"), "{}", text(&out));
    // A backup never overwrites, and needs a data dir.
    let out = backup(&server.dir, &archive);
    assert!(!out.status.success());
    assert!(text(&out).contains("never overwrites"), "{}", text(&out));
    let out = backup(t.path(), &t.path().join("x.backup"));
    assert!(!out.status.success());
    assert!(text(&out).contains("no datastore"), "{}", text(&out));

    // And the good archive, into an empty directory, restores.
    std::fs::create_dir(&target).unwrap();
    let out = restore(&archive, &target, &key);
    assert!(out.status.success(), "{}", text(&out));
    assert!(target.join("corral.db").is_file());
}
