//! What a data dir holds, and whether a server may start on it.
//!
//! corral writes, in its data dir: the datastore `corral.db` (with SQLite's `-wal` and `-shm`),
//! `master.key`, `pki/`, `admin.env` and, with `--with-agent`, `agent/`. A dir holding none of
//! them (missing, empty, or with only files of the operator's) is **new**: the server starts a
//! datastore there. In any other dir the datastore must be there and not empty, and so must the
//! master key; otherwise the server refuses to start and says what is wrong and what to do,
//! instead of starting over (a new admin key, every host orphaned, secrets that no longer open).
//!
//! `--init` starts over on purpose in a dir whose datastore is missing or empty, and only
//! there: it never replaces a datastore. It keeps the CA (agents keep their pin) and a master
//! key that reads as one; what it replaces (the empty `corral.db` and its `-wal`/`-shm`,
//! `admin.env`, `agent/`) it renames to `NAME.before-init-TIMESTAMP` beside it.
//!
//! The dir itself is made private (0700) on every start.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::ServerError;
use crate::time_fmt::{now_unix, rfc3339};
use crate::vault::MASTER_KEY_FILE;

/// The datastore's file in the data dir.
pub const DB_FILE: &str = "corral.db";
/// SQLite's files beside the datastore (write-ahead log, shared memory index).
const DB_SIDE_FILES: [&str; 2] = ["corral.db-wal", "corral.db-shm"];
const ADMIN_ENV: &str = "admin.env";
const PKI_DIR: &str = "pki";
/// The state dir of `corral server --with-agent`'s local agent.
const AGENT_DIR: &str = "agent";
/// The length of a master key.
const MASTER_KEY_LEN: u64 = 32;

/// Everything corral writes in a data dir (directories with a trailing `/` when listed).
const WRITTEN: [&str; 7] = [
    DB_FILE,
    DB_SIDE_FILES[0],
    DB_SIDE_FILES[1],
    MASTER_KEY_FILE,
    PKI_DIR,
    ADMIN_ENV,
    AGENT_DIR,
];

/// How a server may start on its data dir.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// A new datastore: the dir is new, or `--init` cleared the way.
    New,
    /// The datastore and the master key are there.
    Existing,
}

#[derive(Debug, PartialEq, Eq)]
enum Db {
    Missing,
    Empty,
    Present(u64),
}

fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Io { context, source }
}

/// Makes the data dir (0700) or makes an existing one private, then decides whether the server
/// may start on it; with `init`, moves aside what a new datastore replaces.
/// `own_ca`: the server serves a certificate of its own CA (not an operator-supplied chain),
/// so an existing datastore needs that CA.
pub fn prepare(dir: &Path, init: bool, own_ca: bool) -> Result<Start, ServerError> {
    let present = make_private(dir)?;
    if present.is_empty() {
        return Ok(Start::New);
    }
    let db_path = dir.join(DB_FILE);
    let db = match std::fs::metadata(&db_path) {
        Ok(m) if m.len() == 0 => Db::Empty,
        Ok(m) => Db::Present(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Db::Missing,
        Err(e) => return Err(io(format!("cannot read {}", db_path.display()))(e)),
    };
    let key_path = dir.join(MASTER_KEY_FILE);
    match db {
        Db::Present(size) if init => Err(ServerError::DataDir(format!(
            "--init starts a new datastore, but {} holds one ({size} bytes): start without --init to use it; to start over, first move corral.db (with its -wal and -shm files) out of {}",
            db_path.display(),
            dir.display()
        ))),
        Db::Present(_) if !exists(&key_path) => Err(ServerError::DataDir(format!(
            "{} is missing, but the datastore {} holds secrets sealed with it (the overlay's pre-shared keys): restore master.key from a backup of this data dir. No new key is made for an existing datastore: its sealed secrets would never open again",
            key_path.display(),
            db_path.display()
        ))),
        // Making a new CA for an existing datastore would break every agent's pin (and the
        // CLI's) without a word: the agents would refuse the server as an impostor.
        Db::Present(_) if own_ca && !exists(&dir.join("pki").join("ca.pem")) => {
            Err(ServerError::DataDir(format!(
                "{} is missing, but the datastore {} belongs to a deployment whose agents pin its CA: restore pki/ from a backup of this data dir. A new CA is made only for a new data dir (every agent would have to register again)",
                dir.join("pki").join("ca.pem").display(),
                db_path.display()
            )))
        }
        Db::Present(_) => Ok(Start::Existing),
        Db::Missing | Db::Empty if !init => {
            let what = if db == Db::Missing {
                "is missing"
            } else {
                "is empty (0 bytes)"
            };
            let others: Vec<String> = present
                .iter()
                .filter(|f| **f != DB_FILE)
                .map(|f| {
                    if dir.join(f).is_dir() {
                        format!("{f}/")
                    } else {
                        (*f).to_owned()
                    }
                })
                .collect();
            Err(ServerError::DataDir(format!(
                "the datastore {} {what}, but {} holds corral's other files ({}): it was deleted or truncated, and starting over would orphan every host. Restore corral.db (with its -wal file, if any) from a backup (or check --data-dir); or, to start over with a new datastore, run `corral server --init` (it keeps the CA and master.key and copies of what it replaces; every host must register again)",
                db_path.display(),
                dir.display(),
                others.join(", ")
            )))
        }
        Db::Missing | Db::Empty => {
            let mut replaced = vec![
                DB_FILE,
                DB_SIDE_FILES[0],
                DB_SIDE_FILES[1],
                ADMIN_ENV,
                AGENT_DIR,
            ];
            // A master key kept for the new datastore must read as one.
            if std::fs::metadata(&key_path).is_ok_and(|m| m.len() != MASTER_KEY_LEN) {
                replaced.push(MASTER_KEY_FILE);
            }
            let stamp: String = rfc3339(now_unix())
                .chars()
                .filter(|c| !matches!(c, '-' | ':'))
                .collect();
            for name in replaced {
                let from = dir.join(name);
                if !exists(&from) {
                    continue;
                }
                let to = aside(dir, name, &stamp);
                std::fs::rename(&from, &to)
                    .map_err(io(format!("--init: cannot move {} aside", from.display())))?;
                tracing::warn!(
                    kept = %to.display(),
                    "--init: {name} is replaced by a new one; the old one is kept"
                );
            }
            tracing::warn!(
                data_dir = %dir.display(),
                "--init: starting a new datastore (the CA and the master key are kept); every host must register again"
            );
            Ok(Start::New)
        }
    }
}

/// Makes the data dir (0700) or makes an existing one private; returns what of corral's it
/// holds.
fn make_private(dir: &Path) -> Result<Vec<&'static str>, ServerError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("cannot create data dir {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(format!(
        "cannot make data dir {} private (mode 0700)",
        dir.display()
    )))?;
    Ok(WRITTEN
        .into_iter()
        .filter(|f| exists(&dir.join(f)))
        .collect())
}

/// As `prepare`, for a server whose datastore is a PostgreSQL database (`database` names it
/// for messages): the data dir then holds the master key, the CA and `admin.env`, and
/// `holds_data` says whether the database already holds a deployment. A database with one
/// needs that deployment's master key and CA in the dir: that is how a second server joins
/// (copy `master.key` and `pki/` from a server of the deployment); a new dir would otherwise
/// get a new key and CA that open nothing and that no agent trusts.
pub fn prepare_external(
    dir: &Path,
    init: bool,
    own_ca: bool,
    holds_data: bool,
    database: &str,
) -> Result<Start, ServerError> {
    let present = make_private(dir)?;
    let key_path = dir.join(MASTER_KEY_FILE);
    let ca_path = dir.join(PKI_DIR).join("ca.pem");
    if holds_data {
        if init {
            return Err(ServerError::DataDir(format!(
                "--init starts a new datastore, but the database {database} holds one: start without --init to use it, or name an empty database"
            )));
        }
        if !exists(&key_path) {
            return Err(ServerError::DataDir(format!(
                "the database {database} holds a deployment, but {} is missing: copy master.key (and pki/) from a server of that deployment into {} — every server of a deployment needs its master key to open the sealed secrets. No new key is made: the sealed secrets would never open",
                key_path.display(),
                dir.display()
            )));
        }
        if own_ca && !exists(&ca_path) {
            return Err(ServerError::DataDir(format!(
                "the database {database} holds a deployment, but {} is missing: copy pki/ca.pem and pki/ca-key.pem from a server of that deployment into {} — its agents pin that CA, and every server must present certificates from it",
                ca_path.display(),
                dir.display()
            )));
        }
        return Ok(Start::Existing);
    }
    // The database is empty. A dir with only a master key and a CA is a server being set up
    // for a new database (kept, like `--init` keeps them); a dir that holds an admin.env or
    // an agent ran against a datastore that is now gone.
    let ran = present
        .iter()
        .any(|f| matches!(*f, ADMIN_ENV | AGENT_DIR) || f.starts_with(DB_FILE));
    if ran && !init {
        return Err(ServerError::DataDir(format!(
            "the database {database} is empty, but {} belongs to a server that ran (it holds {}): the database was emptied or --datastore names another one, and starting over would orphan every host. Check --datastore; or, to start over with a new datastore, run `corral server --init` (it keeps the CA and master.key; every host must register again)",
            dir.display(),
            present.join(", ")
        )));
    }
    if std::fs::metadata(&key_path).is_ok_and(|m| m.len() != MASTER_KEY_LEN) {
        return Err(ServerError::DataDir(format!(
            "{} is not a master key ({MASTER_KEY_LEN} bytes): move it away or put the right one back",
            key_path.display()
        )));
    }
    Ok(Start::New)
}

/// `NAME.before-init-STAMP`, or with `.N` added when that is taken.
fn aside(dir: &Path, name: &str, stamp: &str) -> PathBuf {
    let base = format!("{name}.before-init-{stamp}");
    let mut path = dir.join(&base);
    let mut n = 1;
    while exists(&path) {
        path = dir.join(format!("{base}.{n}"));
        n += 1;
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(dir: &Path, init: bool) -> String {
        match prepare(dir, init, true) {
            Err(ServerError::DataDir(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn what_a_data_dir_may_start_as() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("d");
        assert_eq!(
            prepare(&dir, false, true).unwrap(),
            Start::New,
            "missing dir"
        );
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::write(dir.join("notes"), b"x").unwrap();
        assert_eq!(
            prepare(&dir, false, true).unwrap(),
            Start::New,
            "foreign files"
        );
        assert_eq!(
            prepare(&dir, true, true).unwrap(),
            Start::New,
            "--init on a new dir"
        );

        std::fs::write(dir.join("corral.db-wal"), b"x").unwrap();
        assert!(refusal(&dir, false).contains("is missing"));
        std::fs::write(dir.join(DB_FILE), b"").unwrap();
        assert!(refusal(&dir, false).contains("is empty"));
        std::fs::write(dir.join(DB_FILE), b"SQLite format 3").unwrap();
        assert!(refusal(&dir, false).contains("master.key is missing"));
        std::fs::write(dir.join(MASTER_KEY_FILE), [0u8; 32]).unwrap();
        // Without its CA, an existing datastore is refused, unless the operator serves a
        // chain of their own.
        assert!(refusal(&dir, false).contains("ca.pem is missing"));
        assert_eq!(prepare(&dir, false, false).unwrap(), Start::Existing);
        std::fs::create_dir_all(dir.join("pki")).unwrap();
        std::fs::write(dir.join("pki").join("ca.pem"), b"x").unwrap();
        assert_eq!(prepare(&dir, false, true).unwrap(), Start::Existing);
        assert!(refusal(&dir, true).contains("--init starts a new datastore"));

        // --init where the datastore is empty: the empty file and its WAL go aside, the key
        // stays; a second --init the same second does not overwrite the first one's copies.
        std::fs::write(dir.join(DB_FILE), b"").unwrap();
        assert_eq!(prepare(&dir, true, true).unwrap(), Start::New);
        std::fs::write(dir.join("corral.db-wal"), b"y").unwrap();
        assert_eq!(prepare(&dir, true, true).unwrap(), Start::New);
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let wal = names
            .iter()
            .filter(|n| n.starts_with("corral.db-wal.before-init-"))
            .count();
        assert_eq!(wal, 2, "{names:?}");
        assert!(dir.join(MASTER_KEY_FILE).exists());
        assert!(!dir.join(DB_FILE).exists());
    }
}
