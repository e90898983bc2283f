//! `corral server backup` and `corral server restore`: a data dir's state in one file, and back.
//!
//! A backup is a tar archive of three entries, written to `FILE.partial` (mode 0600) and renamed
//! into place only when complete:
//! - `manifest.json` — the format, when, which corral, the CA's checksum, each entry's SHA-256;
//! - `corral.db` — a consistent snapshot of the datastore, taken with SQLite's `VACUUM INTO`
//!   while the server runs (a read transaction: the server goes on writing). The datastore
//!   holds its secrets sealed or hashed already, so the snapshot does too;
//! - `pki.sealed` — the CA's certificate and private key, sealed with the master key (the key
//!   is a secret the datastore does not hold, so it is sealed here rather than stored in clear).
//!
//! The master key is never in a backup: it is what opens one. Kept apart (another medium,
//! another person), a stolen backup opens nothing; restored with it, the CA is the same one, so
//! every agent's pin still holds and the agents reconnect without registering again.
//!
//! Restore writes a new data dir only (a missing or empty directory), builds it beside the
//! target (`DIR.restoring-PID`) and renames it into place after every check passed: each
//! entry's size bound and digest, the master key opening the CA, the snapshot's own integrity
//! check and the CA's checksum. On any error the half-built dir is removed and nothing else
//! was touched. The server leaf certificate and `admin.env` are made by the first start (the
//! admin key in clear was only ever in `admin.env`; the restored server mints a new one, and
//! every other key of the backup still works).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use corral_tls::CaChecksum;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use super::data_dir::DB_FILE;
use crate::time_fmt::{now_unix, rfc3339};
use crate::vault::{MASTER_KEY_FILE, Vault};

/// The archive's format, as its manifest names it.
pub const FORMAT: &str = "corral-backup/1";
const MANIFEST: &str = "manifest.json";
const PKI_SEALED: &str = "pki.sealed";
/// The CA's files in `pki/`; the server's own certificate is issued again on the first start.
const PKI_FILES: [&str; 2] = ["ca.pem", "ca-key.pem"];
/// Binds the sealed CA to its place in a backup.
const PKI_AAD: &[u8] = b"corral backup: pki";
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
const MAX_PKI_BYTES: u64 = 1024 * 1024;
/// The largest datastore a restore accepts (far above any measured one: 100,000 containers
/// make a few hundred MiB).
pub const MAX_DB_BYTES: u64 = 64 * 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error(
        "the master key does not open this backup: it is not the master.key of the data dir the backup was made from"
    )]
    WrongKey,
    #[error("the datastore: {0}")]
    Db(#[from] sqlx::Error),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    created_at: String,
    corral_version: String,
    /// `sha256:…` of the CA certificate agents pin; absent when the data dir had no CA of
    /// corral's own (`--tls-cert`).
    ca_checksum: Option<String>,
    db_bytes: u64,
    db_sha256: String,
    pki_sha256: String,
}

/// What a backup or a restore holds, for people.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub file: PathBuf,
    pub bytes: u64,
    pub created_at: String,
    pub ca_checksum: Option<String>,
    pub hosts: i64,
    pub stacks: i64,
    pub api_keys: i64,
    pub users: i64,
}

impl Summary {
    /// `file`: what was written; `archive`: the backup, whose size is reported.
    fn of(file: &Path, archive: &Path, manifest: Manifest, counts: Counts) -> Summary {
        Summary {
            file: file.to_path_buf(),
            bytes: std::fs::metadata(archive).map(|m| m.len()).unwrap_or(0),
            created_at: manifest.created_at,
            ca_checksum: manifest.ca_checksum,
            hosts: counts.hosts,
            stacks: counts.stacks,
            api_keys: counts.api_keys,
            users: counts.users,
        }
    }
}

/// Writes a backup of the data dir `data_dir` (its server may be running) to `out`.
pub async fn backup(data_dir: &Path, out: &Path) -> Result<Summary, BackupError> {
    let db = data_dir.join(DB_FILE);
    if !db.is_file() {
        return Err(BackupError::Refused(format!(
            "no datastore at {}: is {} a corral data dir (--data-dir)? (A server on PostgreSQL (--datastore) keeps its state in the database: back that up with PostgreSQL's tools, pg_dump or base backups, and keep master.key and pki/ apart)",
            db.display(),
            data_dir.display()
        )));
    }
    if out.exists() {
        return Err(BackupError::Refused(format!(
            "{} exists: a backup never overwrites a file; name a new one",
            out.display()
        )));
    }
    let vault = Vault::load(data_dir).map_err(|e| {
        BackupError::Refused(format!(
            "{e}; the master key seals the CA's private key in the backup"
        ))
    })?;
    let partial = with_suffix(out, ".partial");
    let snapshot = with_suffix(out, ".snapshot");
    let result = write_backup(data_dir, &db, &vault, &partial, &snapshot).await;
    let _ = std::fs::remove_file(&snapshot);
    let (manifest, counts) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, out).map_err(io(format!("cannot rename to {}", out.display())))?;
    Ok(Summary::of(out, out, manifest, counts))
}

async fn write_backup(
    data_dir: &Path,
    db: &Path,
    vault: &Vault,
    partial: &Path,
    snapshot: &Path,
) -> Result<(Manifest, Counts), BackupError> {
    // A read-only connection: the snapshot is one read transaction, whatever the server
    // writes meanwhile, and this process can write nothing to the live datastore.
    let mut conn =
        SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(db).read_only(true))
            .await?;
    let target = snapshot.to_str().ok_or_else(|| {
        BackupError::Refused(format!("{} is not a UTF-8 path", snapshot.display()))
    })?;
    sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let counts = count(snapshot).await?;

    let mut pki = BTreeMap::new();
    for name in PKI_FILES {
        let path = data_dir.join("pki").join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                pki.insert(name.to_owned(), text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
        }
    }
    let ca_checksum = pki.get("ca.pem").map(|pem| ca_checksum(pem)).transpose()?;
    let pki_plain = serde_json::to_vec(&pki)
        .map_err(|e| BackupError::Refused(format!("cannot encode the CA files: {e}")))?;
    let pki_sealed = vault
        .seal(&pki_plain, PKI_AAD)
        .map_err(|e| BackupError::Refused(e.to_string()))?;

    let (db_bytes, db_sha256) = digest_file(snapshot)?;
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        created_at: rfc3339(now_unix()),
        corral_version: env!("CARGO_PKG_VERSION").to_owned(),
        ca_checksum,
        db_bytes,
        db_sha256,
        pki_sha256: hex(ring::digest::digest(&ring::digest::SHA256, &pki_sealed).as_ref()),
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::Refused(format!("cannot encode the manifest: {e}")))?;

    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(partial)
        .map_err(io(format!("cannot create {}", partial.display())))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let context = format!("cannot write {}", partial.display());
    append(&mut tar, MANIFEST, &manifest_json).map_err(io(context.clone()))?;
    append(&mut tar, PKI_SEALED, &pki_sealed).map_err(io(context.clone()))?;
    let mut header = entry_header(db_bytes);
    let mut db_file =
        std::fs::File::open(snapshot).map_err(io(format!("cannot read {}", snapshot.display())))?;
    tar.append_data(&mut header, DB_FILE, &mut db_file)
        .map_err(io(context.clone()))?;
    let mut writer = tar.into_inner().map_err(io(context.clone()))?;
    writer.flush().map_err(io(context.clone()))?;
    writer.get_ref().sync_all().map_err(io(context.clone()))?;
    Ok((manifest, counts))
}

/// Restores the backup `archive` into the new data dir `data_dir`, with the master key read
/// from `master_key`.
pub async fn restore(
    archive: &Path,
    data_dir: &Path,
    master_key: &Path,
) -> Result<Summary, BackupError> {
    if data_dir.exists() {
        let empty = std::fs::read_dir(data_dir)
            .map_err(io(format!("cannot read {}", data_dir.display())))?
            .next()
            .is_none();
        if !empty {
            return Err(BackupError::Refused(format!(
                "{} is not empty: a restore writes a new data dir only (name a missing or empty directory; a restore never replaces a datastore)",
                data_dir.display()
            )));
        }
    }
    let key = std::fs::read(master_key).map_err(io(format!(
        "cannot read the master key {}",
        master_key.display()
    )))?;
    let vault =
        Vault::from_key(master_key, &key).map_err(|e| BackupError::Refused(e.to_string()))?;
    let staging = with_suffix(data_dir, &format!(".restoring-{}", std::process::id()));
    let result = build(archive, &staging, &vault, &key).await;
    let manifest_counts = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if data_dir.exists() {
        std::fs::remove_dir(data_dir).map_err(io(format!(
            "cannot replace the empty {}",
            data_dir.display()
        )))?;
    }
    if let Err(e) = std::fs::rename(&staging, data_dir) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(io(format!(
            "cannot rename {} to {}",
            staging.display(),
            data_dir.display()
        ))(e));
    }
    let (manifest, counts) = manifest_counts;
    Ok(Summary::of(data_dir, archive, manifest, counts))
}

async fn build(
    archive: &Path,
    staging: &Path,
    vault: &Vault,
    key: &[u8],
) -> Result<(Manifest, Counts), BackupError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(staging)
        .map_err(io(format!("cannot create {}", staging.display())))?;
    let file = std::fs::File::open(archive)
        .map_err(io(format!("cannot read the backup {}", archive.display())))?;
    let bad = |what: String| {
        BackupError::Refused(format!(
            "{} is not a corral backup, or is damaged: {what}",
            archive.display()
        ))
    };
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    let mut manifest_bytes = None;
    let mut pki_sealed = None;
    let mut db = None;
    let entries = tar.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad("an entry that is not a regular file".into()));
        }
        let name = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let size = entry.size();
        let slot_limit = match name.as_str() {
            MANIFEST => (&mut manifest_bytes, MAX_MANIFEST_BYTES),
            PKI_SEALED => (&mut pki_sealed, MAX_PKI_BYTES),
            DB_FILE => {
                if db.is_some() {
                    return Err(bad(format!("two entries {DB_FILE}")));
                }
                if size > MAX_DB_BYTES {
                    return Err(bad(format!(
                        "{DB_FILE} is {size} bytes, above {MAX_DB_BYTES}"
                    )));
                }
                let path = staging.join(DB_FILE);
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io(format!("cannot create {}", path.display())))?;
                let copied = std::io::copy(&mut (&mut entry).take(MAX_DB_BYTES), &mut out)
                    .map_err(|e| bad(e.to_string()))?;
                out.sync_all()
                    .map_err(io(format!("cannot write {}", path.display())))?;
                db = Some(copied);
                continue;
            }
            other => {
                return Err(bad(format!(
                    "an unexpected entry {}",
                    crate::text::quoted(other, crate::text::MAX_ID)
                )));
            }
        };
        let (slot, limit) = slot_limit;
        if slot.is_some() {
            return Err(bad(format!("two entries {name}")));
        }
        if size > limit {
            return Err(bad(format!("{name} is {size} bytes, above {limit}")));
        }
        let mut bytes = Vec::new();
        (&mut entry)
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(e.to_string()))?;
        *slot = Some(bytes);
    }
    let manifest_bytes = manifest_bytes.ok_or_else(|| bad(format!("no {MANIFEST}")))?;
    let pki_sealed = pki_sealed.ok_or_else(|| bad(format!("no {PKI_SEALED}")))?;
    db.ok_or_else(|| bad(format!("no {DB_FILE}")))?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
    if manifest.format != FORMAT {
        return Err(bad(format!(
            "format {} (this corral reads {FORMAT})",
            crate::text::quoted(&manifest.format, crate::text::MAX_ID)
        )));
    }
    let (db_bytes, db_sha256) = digest_file(&staging.join(DB_FILE))?;
    if db_bytes != manifest.db_bytes || db_sha256 != manifest.db_sha256 {
        return Err(bad(format!(
            "{DB_FILE} is not the one its manifest names (truncated or altered)"
        )));
    }
    if hex(ring::digest::digest(&ring::digest::SHA256, &pki_sealed).as_ref()) != manifest.pki_sha256
    {
        return Err(bad(format!(
            "{PKI_SEALED} is not the one its manifest names (altered)"
        )));
    }
    let pki_plain = vault
        .open(&pki_sealed, PKI_AAD)
        .map_err(|_| BackupError::WrongKey)?;
    let pki: BTreeMap<String, String> =
        serde_json::from_slice(&pki_plain).map_err(|e| bad(format!("the CA files: {e}")))?;
    let checksum = pki.get("ca.pem").map(|pem| ca_checksum(pem)).transpose()?;
    if checksum != manifest.ca_checksum {
        return Err(bad("the CA is not the one its manifest names".into()));
    }
    let pki_dir = staging.join("pki");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&pki_dir)
        .map_err(io(format!("cannot create {}", pki_dir.display())))?;
    for (name, text) in &pki {
        if !PKI_FILES.contains(&name.as_str()) {
            return Err(bad(format!(
                "an unexpected CA file {}",
                crate::text::quoted(name, crate::text::MAX_ID)
            )));
        }
        let path = pki_dir.join(name);
        corral_tls::files::write_private(&path, text.as_bytes())
            .map_err(io(format!("cannot write {}", path.display())))?;
    }
    let key_path = staging.join(MASTER_KEY_FILE);
    corral_tls::files::write_private(&key_path, key)
        .map_err(io(format!("cannot write {}", key_path.display())))?;

    let db_path = staging.join(DB_FILE);
    let mut conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&db_path)
            .read_only(true),
    )
    .await?;
    let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    if verdict != "ok" {
        return Err(bad(format!(
            "the datastore's integrity check says: {}",
            crate::text::quoted(&verdict, 200)
        )));
    }
    let counts = count(&db_path).await?;
    Ok((manifest, counts))
}

struct Counts {
    hosts: i64,
    stacks: i64,
    api_keys: i64,
    users: i64,
}

async fn count(db: &Path) -> Result<Counts, BackupError> {
    let mut conn =
        SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(db).read_only(true))
            .await?;
    let mut one = async |sql: &'static str| -> Result<i64, BackupError> {
        Ok(sqlx::query_scalar(sql).fetch_one(&mut conn).await?)
    };
    let counts = Counts {
        hosts: one("SELECT count(*) FROM hosts").await?,
        stacks: one("SELECT count(*) FROM stacks").await?,
        api_keys: one("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").await?,
        users: one("SELECT count(*) FROM users").await?,
    };
    conn.close().await?;
    Ok(counts)
}

fn ca_checksum(pem: &str) -> Result<String, BackupError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| BackupError::Refused(format!("the CA certificate is not PEM: {e}")))?;
    Ok(CaChecksum::of_der(der.as_ref()).to_string())
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = entry_header(data.len() as u64);
    tar.append_data(&mut header, name, data)
}

fn entry_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(u64::try_from(now_unix()).unwrap_or(0));
    header.set_entry_type(tar::EntryType::Regular);
    header
}

fn digest_file(path: &Path) -> Result<(u64, String), BackupError> {
    let mut file =
        std::fs::File::open(path).map_err(io(format!("cannot read {}", path.display())))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(io(format!("cannot read {}", path.display())))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        ctx.update(&buf[..n]);
    }
    Ok((total, hex(ctx.finish().as_ref())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
