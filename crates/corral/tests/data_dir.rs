//! The server's data dir: what it refuses to start on (a missing or empty datastore, a missing
//! or foreign master key), what `--init` does and keeps, and the modes of what it holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// How one `corral server` start ended: refused (its output), or running.
enum Start {
    Refused(String),
    Running(Proc),
}

/// Starts `corral server` on `data` (its log outside the data dir) and waits until it runs or
/// exits.
fn try_start(data: &Path, extra: &[&str]) -> Start {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let listen = format!("127.0.0.1:{}", free_port());
    let d = data.display().to_string();
    let mut args = vec!["server", "--data-dir", &d, "--listen", &listen];
    args.extend(extra);
    let log = data
        .parent()
        .unwrap()
        .join(format!("start-{}-{n}.log", std::process::id()));
    let mut proc = spawn_corral(&args, log, &[]);
    let mut status = None;
    wait_until(
        Duration::from_secs(20),
        "the server to start or refuse",
        || {
            status = proc.try_wait();
            status.is_some() || proc.log_text().contains("is running")
        },
    );
    match status {
        Some(s) => {
            assert!(!s.success(), "a refusal exits non-zero");
            Start::Refused(proc.log_text())
        }
        None => Start::Running(proc),
    }
}

fn refused(data: &Path, extra: &[&str]) -> String {
    match try_start(data, extra) {
        Start::Refused(log) => {
            assert!(!log.contains("panicked"), "{log}");
            log
        }
        Start::Running(mut p) => {
            let log = p.log_text();
            p.stop();
            panic!("the server started on {}:\n{log}", data.display());
        }
    }
}

fn running(data: &Path, extra: &[&str]) -> Proc {
    match try_start(data, extra) {
        Start::Running(p) => p,
        Start::Refused(log) => panic!("the server refused to start:\n{log}"),
    }
}

/// The error line of a refusal (the one message it prints).
fn error_line(log: &str) -> String {
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error message:\n{log}");
    errors[0].to_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Files of `dir` whose names start with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    out.sort();
    out
}

fn remove_datastore(data: &Path) {
    for f in named(data, "corral.db") {
        std::fs::remove_file(f).unwrap();
    }
}

/// `corral host ls` against whatever server `admin.env` names.
fn host_ls(data: &Path) -> std::process::Output {
    let env = read_admin_env(&data.join("admin.env")).unwrap();
    std::process::Command::new(corral_bin())
        .args(["host", "ls"])
        .env("CORRAL_SERVER", &env.server)
        .env("CORRAL_API_KEY", &env.api_key)
        .env("CORRAL_CA_CHECKSUM", &env.checksum)
        .output()
        .unwrap()
}

#[test]
fn a_missing_or_empty_datastore_is_refused_until_init() {
    let t = tmp();
    let data = t.path().join("data");
    let mut server = Server::start(&data, &[]);
    let (_, _token) = server.token(&[]);
    let first = server.env.clone();
    let key = std::fs::read(data.join("master.key")).unwrap();
    server.stop();
    let unchanged = |what: &str| {
        let env = read_admin_env(&data.join("admin.env")).unwrap();
        assert_eq!(env.api_key, first.api_key, "{what}: admin.env untouched");
        assert_eq!(
            std::fs::read(data.join("master.key")).unwrap(),
            key,
            "{what}: master.key untouched"
        );
    };

    // Truncated to 0 bytes.
    remove_datastore(&data);
    std::fs::write(data.join("corral.db"), b"").unwrap();
    let log = refused(&data, &[]);
    let line = error_line(&log);
    assert!(
        line.contains("corral.db") && line.contains("empty") && line.contains("--init"),
        "{line}"
    );
    unchanged("empty datastore");
    assert_eq!(
        std::fs::metadata(data.join("corral.db")).unwrap().len(),
        0,
        "left as it was"
    );

    // Deleted.
    remove_datastore(&data);
    let line = error_line(&refused(&data, &[]));
    assert!(
        line.contains("corral.db") && line.contains("missing") && line.contains("--init"),
        "{line}"
    );
    unchanged("missing datastore");
    assert!(!data.join("corral.db").exists(), "nothing created");

    // --init starts a new datastore and keeps a copy of what it replaces; the CA and the master
    // key stay (agents keep their pin).
    let mut fresh = running(&data, &["--init"]);
    let log = fresh.log_text();
    assert!(log.contains("admin.env.before-init-"), "{log}");
    let env = read_admin_env(&data.join("admin.env")).unwrap();
    assert_ne!(env.api_key, first.api_key, "a new admin key");
    assert_eq!(env.checksum, first.checksum, "the same CA");
    assert_eq!(std::fs::read(data.join("master.key")).unwrap(), key);
    let kept = named(&data, "admin.env.before-init-");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(mode(&kept[0]), 0o600);
    assert_eq!(
        read_admin_env(&kept[0]).unwrap().api_key,
        first.api_key,
        "the old admin.env is kept"
    );
    let out = host_ls(&data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fresh.stop();

    // --init never replaces a datastore that is there.
    let line = error_line(&refused(&data, &["--init"]));
    assert!(
        line.contains("--init") && line.contains("corral.db"),
        "{line}"
    );
    let mut again = running(&data, &[]);
    assert!(host_ls(&data).status.success());
    again.stop();

    // An emptied datastore with --init: the empty file and its WAL are kept aside.
    remove_datastore(&data);
    std::fs::write(data.join("corral.db"), b"").unwrap();
    std::fs::write(data.join("corral.db-wal"), b"leftover").unwrap();
    let mut fresh = running(&data, &["--init"]);
    fresh.stop();
    let wal = named(&data, "corral.db-wal.before-init-");
    assert_eq!(wal.len(), 1, "{:?}", named(&data, ""));
    assert_eq!(std::fs::read(&wal[0]).unwrap(), b"leftover");
    assert_eq!(named(&data, "corral.db.before-init-").len(), 1);
}

#[test]
fn leftovers_without_a_datastore_are_not_a_new_data_dir() {
    let t = tmp();
    // Only files corral does not write: a new data dir.
    let data = t.path().join("new");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("notes.txt"), b"mine").unwrap();
    let mut server = running(&data, &[]);
    server.stop();
    assert_eq!(std::fs::read(data.join("notes.txt")).unwrap(), b"mine");

    // The PKI of a server but no datastore.
    let data = t.path().join("pki-only");
    std::fs::create_dir_all(data.join("pki")).unwrap();
    let line = error_line(&refused(&data, &[]));
    assert!(
        line.contains("corral.db") && line.contains("missing"),
        "{line}"
    );
    assert!(line.contains("pki"), "names what is there: {line}");
    assert!(!data.join("corral.db").exists());
    assert!(!data.join("master.key").exists());
}

#[test]
fn a_missing_or_foreign_master_key_is_refused() {
    let t = tmp();
    let data = t.path().join("data");
    let mut server = Server::start(&data, &[]);
    server.stop();
    let key_path = data.join("master.key");
    let key = std::fs::read(&key_path).unwrap();

    // Deleted: the datastore's sealed secrets would be lost; no new key is made.
    std::fs::remove_file(&key_path).unwrap();
    let line = error_line(&refused(&data, &[]));
    assert!(
        line.contains("master.key") && line.contains("missing") && line.contains("backup"),
        "{line}"
    );
    assert!(!key_path.exists(), "no new key");
    // --init does not discard a datastore either.
    let line = error_line(&refused(&data, &["--init"]));
    assert!(line.contains("--init"), "{line}");
    assert!(!key_path.exists());

    // Replaced by another key of the right size.
    let other: Vec<u8> = key.iter().map(|b| b ^ 0x5a).collect();
    corral_tls::files::write_private(&key_path, &other).unwrap();
    let line = error_line(&refused(&data, &[]));
    assert!(
        line.contains("master.key") && line.contains("does not open"),
        "{line}"
    );
    assert_eq!(std::fs::read(&key_path).unwrap(), other, "left as it was");

    // The right key back: the server starts.
    corral_tls::files::write_private(&key_path, &key).unwrap();
    server.start_again();
    server.cli_ok(&["host", "ls"]);
}

#[test]
fn the_data_dir_is_private_and_the_datastore_files_are_0600() {
    let t = tmp();
    let data = t.path().join("data");
    let mut server = Server::start(&data, &[]);
    let check = |when: &str| {
        assert_eq!(mode(&data), 0o700, "{when}: data dir");
        for f in ["corral.db", "corral.db-wal", "corral.db-shm"] {
            assert_eq!(mode(&data.join(f)), 0o600, "{when}: {f}");
        }
    };
    check("first start");
    server.stop();

    // An existing data dir from before: its modes are fixed at start.
    chmod(&data, 0o755);
    chmod(&data.join("corral.db"), 0o644);
    for f in ["corral.db-wal", "corral.db-shm"] {
        if data.join(f).exists() {
            chmod(&data.join(f), 0o644);
        }
    }
    server.start_again();
    check("restart");
}

#[test]
fn a_datastore_without_a_check_value_is_checked_against_its_sealed_keys() {
    let t = tmp();
    let data = t.path().join("data");
    let mut server = Server::start(&data, &[]);
    // A sealed overlay key in the datastore.
    server.cli_ok(&["env", "rotate-key", "default"]);
    server.stop();
    let key_path = data.join("master.key");
    let key = std::fs::read(&key_path).unwrap();
    // As a datastore made before the check value existed.
    sql(&data.join("corral.db"), "DELETE FROM key_check");
    let other: Vec<u8> = key.iter().map(|b| b ^ 0xa5).collect();
    corral_tls::files::write_private(&key_path, &other).unwrap();
    let line = error_line(&refused(&data, &[]));
    assert!(line.contains("does not open"), "{line}");

    // With its own key it starts, and stores the check value: now even a datastore whose
    // sealed keys are gone tells a foreign key apart.
    corral_tls::files::write_private(&key_path, &key).unwrap();
    server.start_again();
    server.stop();
    sql(
        &data.join("corral.db"),
        "UPDATE environments SET overlay_psk = NULL",
    );
    corral_tls::files::write_private(&key_path, &other).unwrap();
    let line = error_line(&refused(&data, &[]));
    assert!(line.contains("does not open"), "{line}");
}
