//! The datastore: environments, API keys, registration tokens, hosts and security events.
//!
//! SQLite in WAL mode with the migrations embedded in the binary. Writes go through a pool of
//! exactly one connection, so write transactions are serialised inside the process and never
//! fail with `SQLITE_BUSY`; reads use a separate pool and never wait for writers.
//!
//! Invariant: no secret is stored in clear. Tokens, credentials and API keys are 256-bit random
//! values, so a plain SHA-256 is a sufficient one-way function (a slow password hash only adds
//! something for low-entropy secrets); lookups go by that hash.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Executor, FromRow};

use corral_control::states::{Actual, Desired, parse_health};
use corral_proto::{Health, HostFacts};

use crate::secrets::{SecretHash, new_id};
use crate::text::clip;
use crate::vault::Vault;
use sealed::Column;
pub(crate) use sql::Flag;
use sql::Statement;

mod audit;
mod generations;
mod group;
mod images;
mod netpolicy;
mod overlay;
mod queue;
mod sealed;
mod servers;
mod sql;
mod stacks;
mod users;
pub use images::{PolicyRow, RegistryRow};
pub use overlay::{ChangeCounters, LiveCounters, NameRow, OverlayEnvRow, OverlayMemberRow};
pub use queue::{Absorbed, Answered, Delivered, TakenCommands};
pub use servers::{Membership, ServerRow};
pub use stacks::{ContainerCount, ServiceRow, SetReplicas, StackRow, StackWrite};
pub use users::{EnvRole, FIRST_ADMIN_ID, KeyAuth, KeyRow, UserRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("datastore error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("datastore migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The datastore's address or settings are wrong.
    #[error("{0}")]
    Config(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A group commit (see `group`) failed; every write in it was rolled back.
    #[error("datastore error: {0}")]
    Group(String),
    /// The datastore's group-commit task is gone (the server is stopping).
    #[error("the datastore is closed")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// The datastore could not be reached (a connection refused, broken or timed out, the
    /// database shutting down): the operation did not reach it, as opposed to a failure of
    /// what it asked for.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Db(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // SQLSTATE class 08: connection exception; 57P01–57P05: the server is
                // shutting down, starting, or cut the session.
                sqlx::Error::Database(d) => d
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
                _ => false,
            },
            _ => false,
        }
    }
}

/// Creates the datastore file with mode 0600 if it is missing, and makes it and SQLite's files
/// beside it 0600 if they are not.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let private = || std::fs::Permissions::from_mode(0o600);
    std::fs::set_permissions(path, private())?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::set_permissions(&side, private()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The address of a PostgreSQL datastore. It may carry a password, so it is never shown:
/// `Debug` and [`PostgresUrl::name`] give the host, port and database only.
#[derive(Clone)]
pub struct PostgresUrl {
    /// The URL as given (its password and parameters included), for connecting.
    url: url::Url,
    /// The database's host (a name or an address), checked present by `parse`.
    host: String,
    /// Its port (5432 when the URL names none).
    port: u16,
}

impl PostgresUrl {
    /// Checks that `url` is a `postgres://` (or `postgresql://`) URL with a host.
    pub fn parse(url: &str) -> Result<PostgresUrl> {
        let parsed = url::Url::parse(url).map_err(|e| {
            StoreError::Config(format!("--datastore is not a URL ({e}); write postgres://USER@HOST:PORT/DATABASE?sslmode=verify-full&sslrootcert=CA.pem"))
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(StoreError::Config(format!(
                "--datastore must be a postgres:// URL, not {}:// (without --datastore the datastore is SQLite in --data-dir)",
                parsed.scheme()
            )));
        }
        let host = match parsed.host_str() {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => {
                return Err(StoreError::Config(
                    "--datastore names no host: write postgres://USER@HOST:PORT/DATABASE".into(),
                ));
            }
        };
        Ok(PostgresUrl {
            port: parsed.port().unwrap_or(5432),
            host,
            url: parsed,
        })
    }

    /// `postgres://HOST:PORT/DATABASE`, without user, password or parameters.
    pub fn name(&self) -> String {
        format!("postgres://{}:{}{}", self.host, self.port, self.url.path())
    }

    /// The database's host (a name or an address) and port.
    pub fn host_port(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    fn options(&self) -> Result<AnyConnectOptions> {
        Ok(AnyConnectOptions::from_str(self.url.as_str())?)
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Which database engine holds the datastore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// A file in the data directory (the default).
    Sqlite,
    /// A PostgreSQL database (`--datastore postgres://…`).
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    engine: Engine,
    writer: AnyPool,
    reader: AnyPool,
    /// Seals the columns that may carry secrets (see `sealed`).
    vault: Arc<Vault>,
    /// Agents' replies, written in groups (`complete_command`).
    replies: group::Group<ReplyWrite, Completion>,
    /// Containers' statuses as hosts report them, written in groups (`record_status`).
    statuses: group::Group<StatusWrite, bool>,
    /// Containers whose removal a host confirmed, deleted in groups (`delete_container`).
    deletes: group::Group<String, ()>,
    /// True while this server has been cut off from a PostgreSQL datastore for longer than
    /// the write lock's idle limit: another server may be active by now (`keep_writer`).
    /// Never true on SQLite.
    cut_off: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The longest a PostgreSQL statement waits for a pooled connection (see `open_postgres`).
const PG_ACQUIRE: Duration = Duration::from_secs(3);

/// Rows written by one multi-row statement at most (SQLite allows 32,766 parameters; a
/// container row has 14).
const ROWS_PER_STATEMENT: usize = 500;

/// A command as it is stored (its payload sealed).
struct SealedCommand {
    id: String,
    host_id: String,
    kind: String,
    payload: String,
    deadline: i64,
}

/// Queues commands, many rows to a statement.
async fn insert_commands(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    commands: &[SealedCommand],
    now: i64,
) -> Result<()> {
    for chunk in commands.chunks(ROWS_PER_STATEMENT) {
        let mut q = Statement::new(
            engine,
            "INSERT INTO commands (id, host_id, kind, payload, state, created_at, deadline_at) ",
        );
        q.values(chunk, |b, c| {
            b.bind(c.id.as_str())
                .bind(c.host_id.as_str())
                .bind(c.kind.as_str())
                .bind(c.payload.as_str())
                .bind("pending")
                .bind(now)
                .bind(c.deadline);
        });
        q.query()?.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A reply to record: (command id, the host it came from, the result, when).
type ReplyWrite = (String, String, corral_proto::CommandResult, i64);
/// A status to record: (the host that reported it, the status, when).
type StatusWrite = (String, corral_proto::ContainerStatus, i64);

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Environment {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// What removing an environment did.
#[derive(Debug)]
pub enum EnvRemoval {
    Removed,
    /// Refused: what it still holds (names).
    Holds {
        hosts: Vec<String>,
        stacks: Vec<String>,
        containers: Vec<String>,
    },
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct TokenRow {
    pub id: String,
    pub environment_id: String,
    #[serde(skip)]
    pub secret_hash: Vec<u8>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub revoked_at: Option<i64>,
}

impl TokenRow {
    /// Why this token cannot be used at `now`, if it cannot.
    pub fn refusal(&self, now: i64) -> Option<String> {
        if let Some(at) = self.revoked_at {
            return Some(format!(
                "registration token {} was revoked at {}",
                self.id,
                crate::time_fmt::rfc3339(at)
            ));
        }
        if let Some(at) = self.expires_at
            && now >= at
        {
            return Some(format!(
                "registration token {} expired at {}; create a new one with `corral token create`",
                self.id,
                crate::time_fmt::rfc3339(at)
            ));
        }
        if let Some(max) = self.max_uses
            && self.uses >= max
        {
            return Some(format!(
                "registration token {} is used up ({} of {} uses)",
                self.id, self.uses, max
            ));
        }
        None
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct HostRow {
    pub id: String,
    pub environment_id: String,
    pub name: String,
    pub labels: String,
    pub token_id: Option<String>,
    pub hostname: String,
    pub agent_version: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub remote_addr: String,
    pub registered_at: i64,
    pub last_seen_at: i64,
    pub removed_at: Option<i64>,
}

impl HostRow {
    /// The host's labels. Ones that do not read are an error, never "no labels": a `!=`
    /// placement constraint would match a host whose labels were lost.
    pub fn labels(&self) -> Result<BTreeMap<String, String>> {
        serde_json::from_str(&self.labels)
            .map_err(|e| StoreError::Corrupt(format!("host {}: labels: {e}", self.name)))
    }
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct EventRow {
    pub id: i64,
    pub at: i64,
    pub kind: String,
    pub host_id: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub revoked_at: Option<i64>,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
        }
    }
}

/// A stored role name this build does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown API key role {0:?}")]
pub struct UnknownRole(String);

impl TryFrom<String> for Role {
    type Error = UnknownRole;
    fn try_from(text: String) -> std::result::Result<Self, UnknownRole> {
        match text.as_str() {
            "admin" => Ok(Role::Admin),
            _ => Err(UnknownRole(text)),
        }
    }
}

/// The outcome of presenting a credential (with or without a registration token).
#[derive(Debug)]
pub enum AgentAuth {
    /// A live host: one that was known, or one registered just now.
    Host(Box<HostRow>, Admitted),
    /// The credential belonged to a host that was removed.
    Removed {
        host_id: String,
        name: String,
        removed_at: i64,
    },
    /// Unknown credential and no token.
    UnknownCredential,
    /// The token cannot be used; the text says why.
    TokenRefused(String),
    /// The requested name is already used by a live host in the environment.
    NameTaken { name: String, host_id: String },
}

/// How a host got in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// With its credential, as a host already registered.
    Known,
    /// Registered now with a token of the environment named here (so it has no command yet,
    /// and its environment's name needs no second read).
    Registered {
        environment: String,
        /// The audit entry written with it, in its transaction: (sequence number, hash).
        audited: Option<(i64, [u8; 32])>,
    },
}

/// What an agent says of itself as it connects, and when.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub facts: &'a HostFacts,
    pub agent_version: &'a str,
    /// Where its tunnel comes from.
    pub remote_addr: &'a str,
    pub now: i64,
}

/// Seals a registration's audit entry for the host about to be written (see
/// `state::audit::AuditSlot`).
pub type SealAudit<'a> = &'a (dyn Fn(&HostRow) -> (corral_control::audit::Entry, [u8; 32]) + Sync);

/// What became of a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Completion {
    Accepted,
    /// The command belongs to another host.
    WrongHost {
        owner: String,
    },
    /// The command was already acked, failed or expired.
    AlreadyFinished {
        state: String,
    },
    Unknown,
}

#[derive(Debug, Clone)]
pub struct ContainerRow {
    pub id: String,
    pub environment_id: String,
    pub host_id: String,
    pub name: String,
    pub image: String,
    pub spec: String,
    pub desired: Desired,
    pub actual: Actual,
    pub docker_id: Option<String>,
    pub exit_code: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Set for a replica of a stack's service.
    pub stack_id: Option<String>,
    pub service: Option<String>,
    pub slot: Option<i64>,
    /// The service definition it was made from (see `services.spec_hash`).
    pub spec_hash: Option<String>,
    pub health: Option<Health>,
    pub restart_count: i64,
    /// Its address on the host's overlay network.
    pub ip: Option<String>,
}

/// A row whose states do not read is an error, never a default state: acting on a guess
/// could remove or restart the wrong container.
/// A container row's `desired`, `actual` and `health` columns as typed states; a name this
/// build does not know is a decoding error.
pub(crate) fn container_states(
    row: &sqlx::any::AnyRow,
) -> std::result::Result<(Desired, Actual, Option<Health>), sqlx::Error> {
    use sqlx::Row;
    let bad = |column: &str, e: corral_control::states::UnknownState| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    };
    let desired: String = row.try_get("desired")?;
    let actual: String = row.try_get("actual")?;
    let health: Option<String> = row.try_get("health")?;
    Ok((
        Desired::parse(&desired).map_err(|e| bad("desired", e))?,
        Actual::parse(&actual).map_err(|e| bad("actual", e))?,
        parse_health(health.as_deref()).map_err(|e| bad("health", e))?,
    ))
}

impl<'r> FromRow<'r, sqlx::any::AnyRow> for ContainerRow {
    fn from_row(row: &'r sqlx::any::AnyRow) -> std::result::Result<Self, sqlx::Error> {
        use sqlx::Row;
        let (desired, actual, health) = container_states(row)?;
        Ok(ContainerRow {
            id: row.try_get("id")?,
            environment_id: row.try_get("environment_id")?,
            host_id: row.try_get("host_id")?,
            name: row.try_get("name")?,
            image: row.try_get("image")?,
            spec: row.try_get("spec")?,
            desired,
            actual,
            docker_id: row.try_get("docker_id")?,
            exit_code: row.try_get("exit_code")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            stack_id: row.try_get("stack_id")?,
            service: row.try_get("service")?,
            slot: row.try_get("slot")?,
            spec_hash: row.try_get("spec_hash")?,
            health,
            restart_count: row.try_get("restart_count")?,
            ip: row.try_get("ip")?,
        })
    }
}

const CONTAINER_COLUMNS: &str = "id, environment_id, host_id, name, image, spec, desired, actual, docker_id, exit_code, created_at, updated_at, stack_id, service, slot, spec_hash, health, restart_count, ip";

const HOST_COLUMNS: &str = "id, environment_id, name, labels, token_id, hostname, agent_version, os, kernel, arch, remote_addr, registered_at, last_seen_at, removed_at";

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and runs the migrations.
    /// Opens (or creates) the datastore at `path`. The file is made 0600 before SQLite opens
    /// it, and SQLite gives its `-wal` and `-shm` files the mode of the database file; an
    /// existing datastore's files are made 0600 too. Columns that may carry secrets are sealed
    /// under `vault`.
    pub async fn open_sqlite(path: &Path, vault: Arc<Vault>) -> Result<Store> {
        make_private(path).map_err(|e| {
            StoreError::Db(sqlx::Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot make {} private (mode 0600): {e}", path.display()),
            )))
        })?;
        sqlx::any::install_default_drivers();
        let file = SqliteConnectOptions::new().filename(path);
        let url =
            |opts: SqliteConnectOptions| AnyConnectOptions::from_str(opts.to_url_lossy().as_str());
        // No ping before each use: a connection to a local file does not go stale, and for
        // SQLite a ping is a round trip through the connection's worker thread — as much as the
        // query itself (it doubled the thread hand-offs of every statement on a pool). Without
        // it, an acquire has no await point either, so a cancelled one drops no connection.
        // The one writer keeps a page cache of up to 64 MiB (SQLite's default is 2 MiB): at
        // tens of thousands of containers, the rows and indexes a deploy writes no longer fit
        // in 2 MiB, and every miss is a read system call on the writer's thread — the one
        // thread every write waits for. (The readers' caches are emptied by every write
        // anyway, WAL being what it is, so they keep the default.)
        // The settings are PRAGMAs run on each new connection: the `Any` driver opens SQLite
        // from a URL, which carries the file and its mode but not these.
        let writer = AnyPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
                         PRAGMA cache_size = -65536;",
                    )
                    .await
                    .map(|_| ())
                })
            })
            .connect_with(url(file.clone().create_if_missing(true))?)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let reader = AnyPoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;")
                        .await
                        .map(|_| ())
                })
            })
            .connect_with(url(file.read_only(true))?)
            .await?;
        let cut_off = Arc::new(tokio::sync::watch::channel(false).0);
        Ok(Store::start(Engine::Sqlite, writer, reader, vault, cut_off))
    }

    /// Opens the PostgreSQL datastore at `url` (`postgres://…`; `sslmode`, `sslrootcert` and the
    /// other libpq parameters in it apply) and runs the migrations. Fails if the database cannot
    /// be reached: a server does not start on a datastore it cannot read.
    pub async fn open_postgres(url: &PostgresUrl, vault: Arc<Vault>) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let opts = url.options()?;
        let name = url.name();
        // Writes: one connection, as with SQLite, so the server's write transactions are
        // serialised exactly as they are there (same code, same outcomes). That connection is
        // also the fence between servers: it holds the active-server lock (`writer_pool`), so
        // only the active server can write at all, and one that lost the lock (cut off, or
        // frozen past `idle_session_timeout`) has no connection left that can. While another
        // server holds it, this one waits (and relays to it, see `relay`).
        let session = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let mut waiting = false;
        // A standby outlives a moment of trouble with the database (a restart, a connection
        // refused under load): it is not acting, and exiting would leave the deployment one
        // server short. Only a writer that fails to start again and again with nobody holding
        // the lock (a setting this PostgreSQL refuses, say) is an error worth stopping for.
        let mut failed_alone = 0u32;
        let mut troubled = false;
        let writer = loop {
            // Who holds the lock is asked first, on a connection of its own: a pool whose
            // connections are refused would only time out.
            let held = match lock_holder(&opts).await {
                Ok(holder) => {
                    troubled = false;
                    holder.is_some()
                }
                Err(e) if !waiting => return Err(e),
                Err(e) => {
                    if !troubled {
                        tracing::warn!(datastore = %name, error = %e, "standby: cannot ask the datastore who is active; trying again");
                        troubled = true;
                    }
                    true
                }
            };
            if !held {
                match writer_pool(opts.clone(), session.clone()).await {
                    Ok(pool) => break pool,
                    // Most often another server took it in between (the pool's tries at the
                    // lock were refused until its wait ran out); or the one that took it let
                    // go again before this asked. Either way: look again.
                    Err(e) => {
                        let taken = matches!(lock_holder(&opts).await, Ok(Some(_)));
                        failed_alone = if taken { 0 } else { failed_alone + 1 };
                        if failed_alone >= WRITER_TRIES {
                            return Err(e.into());
                        }
                        tracing::debug!(error = %e, taken, "the write lock was not taken; looking again");
                    }
                }
            }
            if !waiting {
                tracing::info!(
                    datastore = %name,
                    "standby: another corral server is active on this database; this one relays to it and takes over when it stops"
                );
                waiting = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        tracing::info!(datastore = %name, "this server is the active one (it holds the datastore's write lock)");
        sqlx::migrate!("./migrations/postgres").run(&writer).await?;
        let cut_off = Arc::new(tokio::sync::watch::channel(false).0);
        tokio::spawn(keep_writer(
            writer.clone(),
            opts.clone(),
            session,
            name,
            cut_off.clone(),
        ));
        // Reads: a few connections, checked before use — a connection to a database over the
        // network can die while it sits in the pool. A request waits at most `PG_ACQUIRE` for
        // a connection (the pool retries connecting, with backoff, meanwhile): while the
        // database is away, requests are refused as unavailable within seconds, well before a
        // client (or the connection gate's deadline for authenticating) gives up.
        let reader = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(PG_ACQUIRE)
            .connect_with(opts)
            .await?;
        Ok(Store::start(
            Engine::Postgres,
            writer,
            reader,
            vault,
            cut_off,
        ))
    }

    /// The store over its pools, with its group-commit tasks started.
    fn start(
        engine: Engine,
        writer: AnyPool,
        reader: AnyPool,
        vault: Arc<Vault>,
        cut_off: Arc<tokio::sync::watch::Sender<bool>>,
    ) -> Store {
        let replies = {
            let writer = writer.clone();
            group::Group::start(Arc::new(move |items: Vec<ReplyWrite>| {
                let writer = writer.clone();
                Box::pin(async move { complete_commands(engine, &writer, items).await })
            }))
        };
        let statuses = {
            let writer = writer.clone();
            group::Group::start(Arc::new(move |items: Vec<StatusWrite>| {
                let writer = writer.clone();
                Box::pin(async move { record_statuses(engine, &writer, items).await })
            }))
        };
        let deletes = {
            let writer = writer.clone();
            group::Group::start(Arc::new(move |ids: Vec<String>| {
                let writer = writer.clone();
                Box::pin(async move { delete_containers(engine, &writer, ids).await })
            }))
        };
        Store {
            engine,
            writer,
            reader,
            vault,
            replies,
            statuses,
            deletes,
            cut_off,
        }
    }

    /// Whether this server is cut off from its datastore (see `Store::cut_off`'s field): the
    /// agent sessions end while it is, so that agents go to a server that can act.
    pub fn cut_off(&self) -> tokio::sync::watch::Receiver<bool> {
        self.cut_off.subscribe()
    }

    /// Whether the datastore answers: one trivial read, on a connection of the readers' pool
    /// (with PostgreSQL: a round trip to the database). For `/healthz`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    /// Whether the PostgreSQL database at `url` already holds a corral datastore (its tables
    /// are there). Decides whether a server starting on it starts a deployment or joins one.
    pub async fn postgres_holds_data(url: &PostgresUrl) -> Result<bool> {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect_with(&url.options()?).await?;
        let tables: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'environments'",
        )
        .fetch_one(&mut conn)
        .await?;
        conn.close().await?;
        Ok(tables > 0)
    }

    /// Seals every value an earlier version wrote in clear into a column that may carry
    /// secrets. Returns how many were sealed.
    pub async fn seal_clear_columns(&self) -> Result<u64> {
        let mut sealed_count = 0;
        let clear: Vec<(String, String)> =
            sqlx::query_as("SELECT id, spec FROM containers WHERE spec NOT LIKE 'sealed:%'")
                .fetch_all(&self.writer)
                .await?;
        for (id, spec) in clear {
            let value = sealed::seal(&self.vault, Column::ContainerSpec, &id, &spec)?;
            sqlx::query("UPDATE containers SET spec = $1 WHERE id = $2")
                .bind(value)
                .bind(&id)
                .execute(&self.writer)
                .await?;
            sealed_count += 1;
        }
        let clear: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT stack_id, name, spec FROM services WHERE spec NOT LIKE 'sealed:%'",
        )
        .fetch_all(&self.writer)
        .await?;
        for (stack_id, name, spec) in clear {
            let key = format!("{stack_id}/{name}");
            let value = sealed::seal(&self.vault, Column::ServiceSpec, &key, &spec)?;
            sqlx::query("UPDATE services SET spec = $1 WHERE stack_id = $2 AND name = $3")
                .bind(value)
                .bind(&stack_id)
                .bind(&name)
                .execute(&self.writer)
                .await?;
            sealed_count += 1;
        }
        let clear: Vec<(String, String)> =
            sqlx::query_as("SELECT id, payload FROM commands WHERE payload NOT LIKE 'sealed:%'")
                .fetch_all(&self.writer)
                .await?;
        for (id, payload) in clear {
            let value = sealed::seal(&self.vault, Column::CommandPayload, &id, &payload)?;
            sqlx::query("UPDATE commands SET payload = $1 WHERE id = $2")
                .bind(value)
                .bind(&id)
                .execute(&self.writer)
                .await?;
            sealed_count += 1;
        }
        Ok(sealed_count)
    }

    /// Container rows with their specs opened.
    fn open_containers(&self, mut rows: Vec<ContainerRow>) -> Result<Vec<ContainerRow>> {
        for row in &mut rows {
            row.spec = sealed::open(&self.vault, Column::ContainerSpec, &row.id, &row.spec)?;
        }
        Ok(rows)
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    // ---- the master key's check value ----------------------------------------------------

    /// The value sealed under the master key when the datastore was made, if it has one.
    pub async fn key_check(&self) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT sealed FROM key_check WHERE id = 1")
                .fetch_optional(&self.writer)
                .await?,
        )
    }

    pub async fn set_key_check(&self, sealed: &[u8]) -> Result<()> {
        sqlx::query("INSERT INTO key_check (id, sealed) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET sealed = excluded.sealed")
            .bind(sealed)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    // ---- environments -------------------------------------------------------------------

    pub async fn ensure_environment(&self, name: &str, now: i64) -> Result<Environment> {
        if let Some(env) = self.environment_by_name(name).await? {
            return Ok(env);
        }
        let env = Environment {
            id: new_id("env"),
            name: name.to_owned(),
            created_at: now,
        };
        sqlx::query("INSERT INTO environments (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&env.id)
            .bind(&env.name)
            .bind(env.created_at)
            .execute(&self.writer)
            .await?;
        Ok(env)
    }

    pub async fn environment_by_name(&self, name: &str) -> Result<Option<Environment>> {
        Ok(sqlx::query_as(
            "SELECT id, name, created_at FROM environments WHERE name = $1 AND removed_at IS NULL",
        )
        .bind(name)
        .fetch_optional(&self.reader)
        .await?)
    }

    pub async fn environment_by_id(&self, id: &str) -> Result<Option<Environment>> {
        Ok(
            sqlx::query_as("SELECT id, name, created_at FROM environments WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    /// The name of an environment that rows refer to: one that is missing is corrupt state.
    pub async fn environment_name(&self, id: &str) -> Result<String> {
        self.environment_by_id(id)
            .await?
            .map(|e| e.name)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("environment {id} is referred to but missing"))
            })
    }

    /// Every live environment's name by its id.
    pub async fn environment_names(&self) -> Result<std::collections::HashMap<String, String>> {
        Ok(self
            .environments()
            .await?
            .into_iter()
            .map(|e| (e.id, e.name))
            .collect())
    }

    pub async fn environments(&self) -> Result<Vec<Environment>> {
        Ok(sqlx::query_as(
            "SELECT id, name, created_at FROM environments WHERE removed_at IS NULL ORDER BY name",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// A new environment with its overlay's range and host subnet size; `None` when the name
    /// is taken.
    pub async fn create_environment(
        &self,
        name: &str,
        overlay_cidr: &str,
        host_prefix: u8,
        mode: corral_proto::OverlayMode,
        now: i64,
    ) -> Result<Option<Environment>> {
        let env = Environment {
            id: new_id("env"),
            name: name.to_owned(),
            created_at: now,
        };
        let done = sqlx::query(
            "INSERT INTO environments (id, name, created_at, overlay_cidr, overlay_host_prefix, overlay_mode) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&env.id)
        .bind(&env.name)
        .bind(env.created_at)
        .bind(overlay_cidr)
        .bind(i64::from(host_prefix))
        .bind(mode.as_str())
        .execute(&self.writer)
        .await?;
        Ok((done.rows_affected() > 0).then_some(env))
    }

    /// Removes an environment that holds no live host, stack or container: its tokens are
    /// revoked and its row renamed `NAME#ID` (freeing the name) and marked removed, in one
    /// transaction. Otherwise nothing changes and the answer says what is left.
    pub async fn remove_environment(&self, env: &Environment, now: i64) -> Result<EnvRemoval> {
        let mut tx = self.writer.begin().await?;
        let names = |sql: &'static str| sqlx::query_scalar::<_, String>(sql).bind(env.id.clone());
        let hosts = names(
            "SELECT name FROM hosts WHERE environment_id = $1 AND removed_at IS NULL ORDER BY name",
        )
        .fetch_all(&mut *tx)
        .await?;
        let stacks = names("SELECT name FROM stacks WHERE environment_id = $1 ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        let containers =
            names("SELECT name FROM containers WHERE environment_id = $1 ORDER BY name")
                .fetch_all(&mut *tx)
                .await?;
        if !(hosts.is_empty() && stacks.is_empty() && containers.is_empty()) {
            return Ok(EnvRemoval::Holds {
                hosts,
                stacks,
                containers,
            });
        }
        sqlx::query(
            "UPDATE registration_tokens SET revoked_at = $1 WHERE environment_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(&env.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE environments SET removed_at = $1, name = name || '#' || id WHERE id = $2",
        )
        .bind(now)
        .bind(&env.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(EnvRemoval::Removed)
    }

    // ---- API keys -----------------------------------------------------------------------

    pub async fn count_api_keys(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.reader)
            .await?;
        Ok(n)
    }

    /// The bootstrap admin key (admin.env): the first admin's.
    pub async fn insert_api_key(
        &self,
        name: &str,
        role: Role,
        hash: &SecretHash,
        now: i64,
    ) -> Result<String> {
        let id = new_id("key");
        sqlx::query(
            "INSERT INTO api_keys (id, name, role, secret_hash, created_at, user_id) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(name)
        .bind(role.as_str())
        .bind(hash.as_bytes())
        .bind(now)
        .bind(users::FIRST_ADMIN_ID)
        .execute(&self.writer)
        .await?;
        Ok(id)
    }

    pub async fn api_key_by_hash(&self, hash: &SecretHash) -> Result<Option<ApiKeyRow>> {
        Ok(
            sqlx::query_as(
                "SELECT id, name, role, revoked_at FROM api_keys WHERE secret_hash = $1",
            )
            .bind(hash.as_bytes())
            .fetch_optional(&self.reader)
            .await?,
        )
    }

    // ---- registration tokens ------------------------------------------------------------

    pub async fn insert_token(&self, token: &TokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO registration_tokens (id, environment_id, secret_hash, created_at, expires_at, max_uses, uses) VALUES ($1, $2, $3, $4, $5, $6, 0)",
        )
        .bind(&token.id)
        .bind(&token.environment_id)
        .bind(&token.secret_hash)
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(token.max_uses)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRow>> {
        Ok(sqlx::query_as(
            "SELECT id, environment_id, secret_hash, created_at, expires_at, max_uses, uses, revoked_at FROM registration_tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// Revokes a token. Revoking twice is not an error; an unknown id is.
    pub async fn revoke_token(&self, id: &str, now: i64) -> Result<()> {
        let done = sqlx::query(
            "UPDATE registration_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "no registration token with id {id:?}; list them with `corral token ls`"
            )));
        }
        Ok(())
    }

    // ---- hosts --------------------------------------------------------------------------

    /// Authenticates an agent and, when it carries a registration token, registers it: all in
    /// one write transaction, so a crash leaves either no trace or a complete host.
    ///
    /// A credential that is already registered is accepted as a login even when a token comes
    /// with it: that is an agent retrying a registration whose answer it never received.
    /// The environment a registration would join: that of `token`, when `credential` is not
    /// registered yet (otherwise the agent is a known host reconnecting).
    pub async fn registering_into(
        &self,
        credential: &SecretHash,
        token: &SecretHash,
    ) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT environment_id FROM registration_tokens WHERE secret_hash = $1 \
             AND NOT EXISTS (SELECT 1 FROM hosts WHERE credential_hash = $2)",
        )
        .bind(token.as_bytes())
        .bind(credential.as_bytes())
        .fetch_optional(&self.reader)
        .await?)
    }

    /// Admits an agent: a known credential, or a registration with a token. Few statements,
    /// since every connecting agent goes through here and each is a hand-off to the datastore's
    /// thread: a known host is one read (by a reader) and one update; a registration is one
    /// transaction of a read of the credential, one of the token with the name's owner and the
    /// environment's name, and one batch that writes the host, the token's use and the event.
    pub async fn authenticate_agent(
        &self,
        credential: &SecretHash,
        token: Option<&SecretHash>,
        arrival: &Arrival<'_>,
        audit: Option<SealAudit<'_>>,
    ) -> Result<AgentAuth> {
        let Arrival {
            facts,
            agent_version,
            remote_addr,
            now,
        } = *arrival;
        let by_credential = || {
            sqlx::query_as::<_, HostRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {HOST_COLUMNS} FROM hosts WHERE credential_hash = $1"
            )))
            .bind(credential.as_bytes())
        };
        let removed = |host: HostRow| AgentAuth::Removed {
            host_id: host.id,
            name: host.name,
            removed_at: host.removed_at.unwrap_or_default(),
        };
        // The look-up is a reader's: a reconnect storm's thousands of logins then cost the
        // one writer a single update each, not a read and an update.
        if let Some(host) = by_credential().fetch_optional(&self.reader).await? {
            if host.removed_at.is_some() {
                return Ok(removed(host));
            }
            // Not in a transaction with the read: the update applies only to a live host, and
            // one removed in between is read again and refused as removed.
            let done = sqlx::query(
                "UPDATE hosts SET hostname = $1, agent_version = $2, os = $3, kernel = $4, arch = $5, remote_addr = $6, last_seen_at = $7 WHERE id = $8 AND removed_at IS NULL",
            )
            .bind(&facts.hostname)
            .bind(agent_version)
            .bind(&facts.os)
            .bind(&facts.kernel)
            .bind(&facts.arch)
            .bind(remote_addr)
            .bind(now)
            .bind(&host.id)
            .execute(&self.writer)
            .await?;
            if done.rows_affected() == 0 {
                return match by_credential().fetch_optional(&self.writer).await? {
                    Some(h) if h.removed_at.is_some() => Ok(removed(h)),
                    _ => Ok(AgentAuth::UnknownCredential),
                };
            }
            let host = HostRow {
                hostname: facts.hostname.clone(),
                agent_version: agent_version.to_owned(),
                os: facts.os.clone(),
                kernel: facts.kernel.clone(),
                arch: facts.arch.clone(),
                remote_addr: remote_addr.to_owned(),
                last_seen_at: now,
                ..host
            };
            return Ok(AgentAuth::Host(Box::new(host), Admitted::Known));
        }
        let Some(token_hash) = token else {
            return Ok(AgentAuth::UnknownCredential);
        };
        let mut tx = self.writer.begin().await?;
        // Read again inside the transaction: two agents with one credential race here.
        if let Some(host) = by_credential().fetch_optional(&mut *tx).await? {
            return Ok(match host.removed_at {
                Some(_) => removed(host),
                None => AgentAuth::NameTaken {
                    name: host.name,
                    host_id: host.id,
                },
            });
        }
        #[derive(FromRow)]
        struct TokenAndName {
            #[sqlx(flatten)]
            token: TokenRow,
            environment_name: String,
            name_taken_by: Option<String>,
        }
        let found: Option<TokenAndName> = sqlx::query_as(
            "SELECT t.id, t.environment_id, t.secret_hash, t.created_at, t.expires_at, t.max_uses, t.uses, t.revoked_at, \
             e.name AS environment_name, \
             (SELECT h.id FROM hosts h WHERE h.environment_id = t.environment_id AND h.name = $1 AND h.removed_at IS NULL) AS name_taken_by \
             FROM registration_tokens t JOIN environments e ON e.id = t.environment_id WHERE t.secret_hash = $2",
        )
        .bind(&facts.name)
        .bind(token_hash.as_bytes())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(TokenAndName {
            token,
            environment_name,
            name_taken_by,
        }) = found
        else {
            return Ok(AgentAuth::TokenRefused(
                "unknown registration token; create one with `corral token create` on the server"
                    .into(),
            ));
        };
        if let Some(why) = token.refusal(now) {
            return Ok(AgentAuth::TokenRefused(why));
        }
        if let Some(host_id) = name_taken_by {
            return Ok(AgentAuth::NameTaken {
                name: facts.name.clone(),
                host_id,
            });
        }
        let labels =
            serde_json::to_string(&facts.labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let host = HostRow {
            id: new_id("host"),
            environment_id: token.environment_id.clone(),
            name: facts.name.clone(),
            labels,
            token_id: Some(token.id.clone()),
            hostname: facts.hostname.clone(),
            agent_version: agent_version.to_owned(),
            os: facts.os.clone(),
            kernel: facts.kernel.clone(),
            arch: facts.arch.clone(),
            remote_addr: remote_addr.to_owned(),
            registered_at: now,
            last_seen_at: now,
            removed_at: None,
        };
        let event = format!(
            "host {} registered from {} with token {}",
            host.name, remote_addr, token.id
        );
        // Three statements (four with the audit entry), one hand-off (SQLite runs them in
        // order, each taking its own parameters in turn), inside the transaction.
        const REGISTER: &str = "INSERT INTO hosts (id, environment_id, name, labels, credential_hash, token_id, hostname, agent_version, os, kernel, arch, remote_addr, registered_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14); \
             UPDATE registration_tokens SET uses = uses + 1 WHERE id = $15; \
             INSERT INTO events (at, kind, host_id, message) VALUES ($16, 'host_registered', $17, $18);";
        const REGISTER_AUDITED: &str = "INSERT INTO hosts (id, environment_id, name, labels, credential_hash, token_id, hostname, agent_version, os, kernel, arch, remote_addr, registered_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14); \
             UPDATE registration_tokens SET uses = uses + 1 WHERE id = $15; \
             INSERT INTO events (at, kind, host_id, message) VALUES ($16, 'host_registered', $17, $18); \
             INSERT INTO audit_log (seq, at, actor, key_id, role, environment, action, target, outcome, source, hash) VALUES ($19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29);";
        // PostgreSQL runs one statement per prepared query: there the same writes are one
        // statement of data-modifying `WITH` clauses (same parameters, same numbers).
        const REGISTER_PG: &str = "WITH h AS (INSERT INTO hosts (id, environment_id, name, labels, credential_hash, token_id, hostname, agent_version, os, kernel, arch, remote_addr, registered_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)), \
             t AS (UPDATE registration_tokens SET uses = uses + 1 WHERE id = $15), \
             e AS (INSERT INTO events (at, kind, host_id, message) VALUES ($16, 'host_registered', $17, $18)) \
             SELECT 1";
        const REGISTER_AUDITED_PG: &str = "WITH h AS (INSERT INTO hosts (id, environment_id, name, labels, credential_hash, token_id, hostname, agent_version, os, kernel, arch, remote_addr, registered_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)), \
             t AS (UPDATE registration_tokens SET uses = uses + 1 WHERE id = $15), \
             e AS (INSERT INTO events (at, kind, host_id, message) VALUES ($16, 'host_registered', $17, $18)), \
             a AS (INSERT INTO audit_log (seq, at, actor, key_id, role, environment, action, target, outcome, source, hash) VALUES ($19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)) \
             SELECT 1";
        let sealed = audit.map(|seal| seal(&host));
        let query = sqlx::query(match (self.engine, sealed.is_some()) {
            (Engine::Sqlite, false) => REGISTER,
            (Engine::Sqlite, true) => REGISTER_AUDITED,
            (Engine::Postgres, false) => REGISTER_PG,
            (Engine::Postgres, true) => REGISTER_AUDITED_PG,
        })
        .bind(&host.id)
        .bind(&host.environment_id)
        .bind(&host.name)
        .bind(&host.labels)
        .bind(credential.as_bytes())
        .bind(&host.token_id)
        .bind(&host.hostname)
        .bind(&host.agent_version)
        .bind(&host.os)
        .bind(&host.kernel)
        .bind(&host.arch)
        .bind(&host.remote_addr)
        .bind(host.registered_at)
        .bind(host.last_seen_at)
        .bind(&token.id)
        .bind(now)
        .bind(clip(&host.id, MAX_EVENT_KIND).into_owned())
        .bind(clip(&event, MAX_EVENT_MESSAGE).into_owned());
        let query = match &sealed {
            Some((entry, hash)) => audit::bind_entry(query, entry, hash),
            None => query,
        };
        query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(AgentAuth::Host(
            Box::new(host),
            Admitted::Registered {
                environment: environment_name,
                audited: sealed.map(|(entry, hash)| (entry.seq, hash)),
            },
        ))
    }

    pub async fn hosts(&self, include_removed: bool) -> Result<Vec<HostRow>> {
        let sql = if include_removed {
            format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY name, id")
        } else {
            format!("SELECT {HOST_COLUMNS} FROM hosts WHERE removed_at IS NULL ORDER BY name, id")
        };
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.reader)
            .await?)
    }

    /// Commands not answered yet (`pending`: waiting to be written to their host, or written
    /// and waiting for the answer; sessions count the latter): an index range count, however
    /// many finished commands are kept.
    pub async fn open_command_count(&self) -> Result<u64> {
        let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM commands WHERE state = 'pending'")
            .fetch_one(&self.reader)
            .await?;
        Ok(u64::try_from(open).unwrap_or(0))
    }

    /// How many hosts are registered (not removed).
    pub async fn host_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hosts WHERE removed_at IS NULL")
            .fetch_one(&self.reader)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Every host's name by id, removed hosts included (older rows still name them).
    pub async fn host_names(&self) -> Result<std::collections::BTreeMap<String, String>> {
        Ok(self
            .hosts(true)
            .await?
            .into_iter()
            .map(|h| (h.id, h.name))
            .collect())
    }

    /// Every live host, container, stack or registration token whose id (or, but for a
    /// token, name) is `id_or_name`, as (id, its environment's name): what a route that names
    /// one may mean, before access decides.
    pub async fn named(&self, kind: Named, id_or_name: &str) -> Result<Vec<(String, String)>> {
        let sql = match kind {
            Named::Host => {
                "SELECT x.id, e.name FROM hosts x JOIN environments e ON e.id = x.environment_id \
                 WHERE e.removed_at IS NULL AND x.removed_at IS NULL AND (x.id = $1 OR x.name = $1)"
            }
            Named::Container => {
                "SELECT x.id, e.name FROM containers x JOIN environments e ON e.id = x.environment_id \
                 WHERE e.removed_at IS NULL AND (x.id = $1 OR x.name = $1)"
            }
            Named::Stack => {
                "SELECT x.id, e.name FROM stacks x JOIN environments e ON e.id = x.environment_id \
                 WHERE e.removed_at IS NULL AND (x.id = $1 OR x.name = $1)"
            }
            Named::Token => {
                "SELECT x.id, e.name FROM registration_tokens x JOIN environments e ON e.id = x.environment_id \
                 WHERE e.removed_at IS NULL AND x.id = $1"
            }
        };
        Ok(sqlx::query_as(sql)
            .bind(id_or_name)
            .fetch_all(&self.reader)
            .await?)
    }

    pub async fn find_host(&self, id_or_name: &str) -> Result<HostRow> {
        let rows: Vec<HostRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE removed_at IS NULL AND (id = $1 OR name = $2)"
        )))
        .bind(id_or_name)
        .bind(id_or_name)
        .fetch_all(&self.reader)
        .await?;
        one_by_id_or_name(rows, id_or_name, |h| &h.id, "host", "corral host ls")
    }

    /// Removes a host: its credential is revoked for good; the row stays as a tombstone.
    pub async fn remove_host(&self, id: &str, now: i64) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let done =
            sqlx::query("UPDATE hosts SET removed_at = $1 WHERE id = $2 AND removed_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no live host with id {id:?}")));
        }
        // Out of the overlay at once: peers drop its key on the next sync.
        sqlx::query("DELETE FROM overlay_leases WHERE host_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            now,
            "host_removed",
            Some(id),
            "host removed; credential revoked",
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn touch_host(&self, id: &str, last_seen: i64) -> Result<()> {
        sqlx::query("UPDATE hosts SET last_seen_at = CASE WHEN last_seen_at > $1 THEN last_seen_at ELSE $1 END WHERE id = $2")
            .bind(last_seen)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    // ---- commands -----------------------------------------------------------------------

    pub async fn insert_command(
        &self,
        host_id: &str,
        command: &corral_proto::Command,
        now: i64,
    ) -> Result<()> {
        let command = self.seal_command(host_id, command)?;
        // One statement, no transaction around it.
        let mut conn = self.writer.acquire().await?;
        insert_commands(self.engine, &mut conn, std::slice::from_ref(&command), now).await
    }

    /// Queues many commands, each for its host, in one transaction.
    pub async fn insert_commands(
        &self,
        items: &[(&str, &corral_proto::Command)],
        now: i64,
    ) -> Result<()> {
        let commands = items
            .iter()
            .map(|(host_id, command)| self.seal_command(host_id, command))
            .collect::<Result<Vec<_>>>()?;
        let mut tx = self.writer.begin().await?;
        insert_commands(self.engine, &mut tx, &commands, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// What a command asked for (`None`: no such command).
    pub async fn command(&self, id: &str) -> Result<Option<corral_proto::CommandBody>> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT kind, payload FROM commands WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        row.map(|(kind, payload)| {
            let payload = sealed::open(&self.vault, Column::CommandPayload, id, &payload)?;
            command_body(id, &kind, &payload)
        })
        .transpose()
    }

    /// Records a reply if it comes from the command's host and the command is still open
    /// (written with the other replies that arrive meanwhile, in one transaction).
    pub async fn complete_command(
        &self,
        id: &str,
        host_id: &str,
        result: &corral_proto::CommandResult,
        now: i64,
    ) -> Result<Completion> {
        self.replies
            .write((id.to_owned(), host_id.to_owned(), result.clone(), now))
            .await
    }

    /// Expires open commands past their deadline; returns their ids.
    pub async fn expire_commands(&self, now: i64) -> Result<Vec<String>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "UPDATE commands SET state = 'expired', finished_at = $1 WHERE state = 'pending' AND deadline_at <= $2 RETURNING id",
        )
        .bind(now)
        .bind(now)
        .fetch_all(&self.writer)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// Deletes finished commands (answered, failed or expired) whose deadline passed before
    /// `before` (unix seconds), payloads and results with them, at most [`PRUNE_BATCH`] per
    /// statement so that other writes wait no longer than one batch. A command ends by its
    /// deadline (within the expiry sweep's second), so its deadline dates its end; the
    /// `commands_deadline` index (state, deadline) finds them. Returns how many went.
    pub async fn prune_commands(&self, before: i64) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM commands WHERE id IN (SELECT id FROM commands WHERE state IN ('acked', 'failed', 'expired') AND deadline_at < $1 LIMIT $2)",
            )
            .bind(before)
            .bind(PRUNE_BATCH)
            .execute(&self.writer)
            .await?
            .rows_affected();
            deleted += done;
            if done < PRUNE_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }

    /// Fails every open command of a host (it was removed).
    pub async fn fail_host_commands(
        &self,
        host_id: &str,
        message: &str,
        now: i64,
    ) -> Result<Vec<String>> {
        let result = serde_json::to_string(&corral_proto::CommandResult::Failed {
            message: message.to_owned(),
        })
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let ids: Vec<(String,)> = sqlx::query_as(
            "UPDATE commands SET state = 'failed', finished_at = $1, result = $2 WHERE host_id = $3 AND state = 'pending' RETURNING id",
        )
        .bind(now)
        .bind(result)
        .bind(host_id)
        .fetch_all(&self.writer)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    // ---- containers ---------------------------------------------------------------------

    pub async fn insert_container(&self, c: &ContainerRow) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO containers (id, environment_id, host_id, name, image, spec, desired, actual, created_at, updated_at, stack_id, service, slot, spec_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $11, $12, $13) ON CONFLICT DO NOTHING",
        )
        .bind(&c.id)
        .bind(&c.environment_id)
        .bind(&c.host_id)
        .bind(&c.name)
        .bind(&c.image)
        .bind(sealed::seal(&self.vault, Column::ContainerSpec, &c.id, &c.spec)?)
        .bind(c.desired.as_str())
        .bind(c.created_at)
        .bind(c.created_at)
        .bind(&c.stack_id)
        .bind(&c.service)
        .bind(c.slot)
        .bind(&c.spec_hash)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "a container named {:?} already exists; remove it with `corral container rm {}` or pick another name",
                c.name, c.name
            )));
        }
        Ok(())
    }

    /// Containers and the commands that start them, in one transaction: a reconciler pass's
    /// new replicas cost one commit, not two per replica. A container whose name is taken is
    /// left out with its command (its index is returned); everything else lands together or
    /// not at all.
    pub async fn insert_containers_with_commands(
        &self,
        items: &[(&ContainerRow, &corral_proto::Command)],
        now: i64,
    ) -> Result<Vec<usize>> {
        // Sealing and encoding first: nothing of it needs the connection.
        let mut specs = Vec::with_capacity(items.len());
        let mut commands = Vec::with_capacity(items.len());
        for (c, command) in items {
            specs.push(sealed::seal(
                &self.vault,
                Column::ContainerSpec,
                &c.id,
                &c.spec,
            )?);
            commands.push(self.seal_command(&c.host_id, command)?);
        }
        // Many rows to a statement: a pass's thousands of replicas cost a few statements,
        // not two each (every statement is a hand-off to the writer's thread and back).
        let mut tx = self.writer.begin().await?;
        let mut inserted: std::collections::HashSet<String> =
            std::collections::HashSet::with_capacity(items.len());
        let rows: Vec<_> = items.iter().zip(&specs).collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = Statement::new(
                self.engine,
                "INSERT INTO containers (id, environment_id, host_id, name, image, spec, desired, actual, created_at, updated_at, stack_id, service, slot, spec_hash) ",
            );
            q.values(chunk, |b, ((c, _), spec)| {
                b.bind(c.id.as_str())
                    .bind(c.environment_id.as_str())
                    .bind(c.host_id.as_str())
                    .bind(c.name.as_str())
                    .bind(c.image.as_str())
                    .bind(spec.as_str())
                    .bind(c.desired.as_str())
                    .bind("pending")
                    .bind(c.created_at)
                    .bind(c.created_at)
                    .bind(c.stack_id.as_deref())
                    .bind(c.service.as_deref())
                    .bind(c.slot)
                    .bind(c.spec_hash.as_deref());
            });
            q.push(" ON CONFLICT DO NOTHING RETURNING id");
            let ids: Vec<String> = q.query_scalar()?.fetch_all(&mut *tx).await?;
            inserted.extend(ids);
        }
        let with_rows: Vec<SealedCommand> = items
            .iter()
            .zip(commands)
            .filter(|((c, _), _)| inserted.contains(&c.id))
            .map(|(_, command)| command)
            .collect();
        insert_commands(self.engine, &mut tx, &with_rows, now).await?;
        tx.commit().await?;
        Ok(items
            .iter()
            .enumerate()
            .filter(|(_, (c, _))| !inserted.contains(&c.id))
            .map(|(i, _)| i)
            .collect())
    }

    /// A command as it is stored: its payload encoded and sealed under the master key.
    fn seal_command(
        &self,
        host_id: &str,
        command: &corral_proto::Command,
    ) -> Result<SealedCommand> {
        let (kind, payload) = command
            .body
            .to_wire()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let payload =
            serde_json::to_string(&payload).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(SealedCommand {
            id: command.id.clone(),
            host_id: host_id.to_owned(),
            kind,
            payload: sealed::seal(&self.vault, Column::CommandPayload, &command.id, &payload)?,
            deadline: command.deadline,
        })
    }

    pub async fn containers(&self) -> Result<Vec<ContainerRow>> {
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CONTAINER_COLUMNS} FROM containers ORDER BY name"
        )))
        .fetch_all(&self.reader)
        .await?;
        self.open_containers(rows)
    }

    /// An environment's containers without their specs (`spec` is left empty): what the
    /// reconciler reads every pass, where opening and copying every spec again would cost
    /// more than all the rest. `container_specs` reads the specs it has not seen.
    pub async fn environment_containers(&self, environment_id: &str) -> Result<Vec<ContainerRow>> {
        let columns = CONTAINER_COLUMNS.replace(" spec,", " '' AS spec,");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {columns} FROM containers WHERE environment_id = $1"
        )))
        .bind(environment_id)
        .fetch_all(&self.reader)
        .await?)
    }

    /// The specs of these containers, opened: (id, spec). A container that is gone is left
    /// out; a spec that does not open is an error.
    pub async fn container_specs(&self, ids: &[&str]) -> Result<Vec<(String, String)>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut q = Statement::new(self.engine, "SELECT id, spec FROM containers WHERE id IN ");
            q.list(chunk.iter().copied());
            let rows: Vec<(String, String)> = q.query_as()?.fetch_all(&self.reader).await?;
            for (id, spec) in rows {
                let spec = sealed::open(&self.vault, Column::ContainerSpec, &id, &spec)?;
                out.push((id, spec));
            }
        }
        Ok(out)
    }

    pub async fn host_containers(&self, host_id: &str) -> Result<Vec<ContainerRow>> {
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CONTAINER_COLUMNS} FROM containers WHERE host_id = $1"
        )))
        .bind(host_id)
        .fetch_all(&self.reader)
        .await?;
        self.open_containers(rows)
    }

    pub async fn find_container(&self, id_or_name: &str) -> Result<ContainerRow> {
        let rows: Vec<ContainerRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CONTAINER_COLUMNS} FROM containers WHERE id = $1 OR name = $2"
        )))
        .bind(id_or_name)
        .bind(id_or_name)
        .fetch_all(&self.reader)
        .await?;
        let row = one_by_id_or_name(
            rows,
            id_or_name,
            |c| &c.id,
            "container",
            "corral container ls",
        )?;
        Ok(self.open_containers(vec![row])?.remove(0))
    }

    /// The host a container belongs to, if there is such a container.
    pub async fn container_host(&self, id: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT host_id FROM containers WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    pub async fn set_desired(&self, id: &str, desired: Desired, now: i64) -> Result<()> {
        sqlx::query("UPDATE containers SET desired = $1, updated_at = $2 WHERE id = $3")
            .bind(desired.as_str())
            .bind(now)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records what the host's agent reports. Only rows of that host are touched.
    pub async fn set_actual(
        &self,
        host_id: &str,
        corral_id: &str,
        actual: Actual,
        docker_id: Option<&str>,
        exit_code: Option<i64>,
        now: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE containers SET actual = $1, docker_id = COALESCE($2, docker_id), exit_code = $3, updated_at = $4 WHERE id = $5 AND host_id = $6",
        )
        .bind(actual.as_str())
        .bind(docker_id)
        .bind(exit_code)
        .bind(now)
        .bind(corral_id)
        .bind(host_id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records what an agent reported of a container: state, Docker id, exit code, health and
    /// restart count (written with the other statuses that arrive meanwhile, in one
    /// transaction). Returns false when no such container is on that host.
    pub async fn record_status(
        &self,
        host_id: &str,
        status: &corral_proto::ContainerStatus,
        now: i64,
    ) -> Result<bool> {
        self.statuses
            .write((host_id.to_owned(), status.clone(), now))
            .await
    }

    /// Deletes a container's row (with the other deletions that arrive meanwhile, in one
    /// transaction).
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        self.deletes.write(id.to_owned()).await
    }

    /// Marks containers to be removed and queues, in the same transaction, the commands that
    /// remove them from their hosts: (container id, its host, the command). A reconciler
    /// pass's removals (a `down`, a scale-down, a rolling update) cost one commit.
    pub async fn queue_removals(
        &self,
        items: &[(&str, &str, &corral_proto::Command)],
        now: i64,
    ) -> Result<()> {
        let commands = items
            .iter()
            .map(|(_, host_id, command)| self.seal_command(host_id, command))
            .collect::<Result<Vec<_>>>()?;
        let mut tx = self.writer.begin().await?;
        for chunk in items.chunks(ROWS_PER_STATEMENT) {
            let mut q = Statement::new(
                self.engine,
                "UPDATE containers SET desired = 'removed', updated_at = ",
            );
            q.bind(now);
            q.push(" WHERE desired != 'removed' AND id IN ");
            q.list(chunk.iter().map(|(id, _, _)| *id));
            q.query()?.execute(&mut *tx).await?;
        }
        insert_commands(self.engine, &mut tx, &commands, now).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- events -------------------------------------------------------------------------

    pub async fn record_event(
        &self,
        now: i64,
        kind: &str,
        host_id: Option<&str>,
        message: &str,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        insert_event(&mut tx, now, kind, host_id, message).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest `limit` events, oldest first. Rows written before messages were bounded are
    /// cut as they are read: no message comes back longer than [`MAX_EVENT_MESSAGE`].
    pub async fn events(&self, limit: i64) -> Result<Vec<EventRow>> {
        #[derive(FromRow)]
        struct Stored {
            id: i64,
            at: i64,
            kind: String,
            host_id: Option<String>,
            /// At most the first MAX_EVENT_MESSAGE characters.
            head: String,
            bytes: i64,
        }
        let rows: Vec<Stored> = sqlx::query_as(
            "SELECT id, at, substr(kind, 1, CAST($1 AS INTEGER)) AS kind, host_id, substr(message, 1, CAST($2 AS INTEGER)) AS head, octet_length(message) AS bytes FROM events ORDER BY id DESC LIMIT $3",
        )
        .bind(MAX_EVENT_KIND as i64)
        .bind(MAX_EVENT_MESSAGE as i64)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .rev()
            .map(|r| {
                let message = if r.bytes as usize <= MAX_EVENT_MESSAGE {
                    r.head
                } else {
                    cut_stored(&r.head, r.bytes)
                };
                EventRow {
                    id: r.id,
                    at: r.at,
                    kind: r.kind,
                    host_id: r.host_id,
                    message,
                }
            })
            .collect())
    }

    /// How many events are stored.
    pub async fn event_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&self.reader)
            .await?)
    }

    /// Deletes events recorded before `before` (unix seconds) and the oldest beyond the newest
    /// `max_rows`, at most [`PRUNE_BATCH`] rows per statement so that other writes wait no
    /// longer than one batch. Returns (deleted for age, deleted for the row cap).
    pub async fn prune_events(&self, before: i64, max_rows: i64) -> Result<(u64, u64)> {
        let mut old = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < $1 ORDER BY id LIMIT $2)",
            )
            .bind(before)
            .bind(PRUNE_BATCH)
            .execute(&self.writer)
            .await?
            .rows_affected();
            old += done;
            if done < PRUNE_BATCH as u64 {
                break;
            }
        }
        // Ids only grow and rows go from the oldest, so the newest `max_rows` ids hold at most
        // `max_rows` rows: no count needed.
        let mut surplus = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id <= (SELECT MAX(id) FROM events) - $1 ORDER BY id LIMIT $2)",
            )
            .bind(max_rows.max(1))
            .bind(PRUNE_BATCH)
            .execute(&self.writer)
            .await?
            .rows_affected();
            surplus += done;
            if done < PRUNE_BATCH as u64 {
                break;
            }
        }
        Ok((old, surplus))
    }
}

/// Longest event message stored, in bytes; a longer one is cut and says how long it was.
pub const MAX_EVENT_MESSAGE: usize = 1024;
/// Longest event kind stored, in bytes.
const MAX_EVENT_KIND: usize = 64;
/// Most events one pruning statement deletes.
const PRUNE_BATCH: i64 = 10_000;

/// The start of a stored message of `bytes` bytes, cut to [`MAX_EVENT_MESSAGE`] with its length.
fn cut_stored(head: &str, bytes: i64) -> String {
    let suffix = format!("… ({} bytes)", crate::text::thousands(bytes.max(0) as u64));
    let mut keep = MAX_EVENT_MESSAGE
        .saturating_sub(suffix.len())
        .min(head.len());
    while !head.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{suffix}", &head[..keep])
}

/// The one row matching `id_or_name`: an exact id wins; a name must be unambiguous.
/// What [`Store::named`] looks up.
#[derive(Debug, Clone, Copy)]
pub enum Named {
    Host,
    Container,
    Stack,
    /// By id only.
    Token,
}

pub(crate) fn one_by_id_or_name<T>(
    rows: Vec<T>,
    id_or_name: &str,
    id_of: impl Fn(&T) -> &String,
    what: &str,
    list_command: &str,
) -> Result<T> {
    let count = rows.len();
    let mut first = None;
    for row in rows {
        if id_of(&row) == id_or_name {
            return Ok(row);
        }
        first.get_or_insert(row);
    }
    match (count, first) {
        (1, Some(row)) => Ok(row),
        (0, _) | (_, None) => Err(StoreError::NotFound(format!(
            "no {what} {id_or_name:?}; list them with `{list_command}`"
        ))),
        (n, _) => Err(StoreError::Conflict(format!(
            "{n} {what}s are named {id_or_name:?} (in different environments); use the id"
        ))),
    }
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    now: i64,
    kind: &str,
    host_id: Option<&str>,
    message: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO events (at, kind, host_id, message) VALUES ($1, $2, $3, $4)")
        .bind(now)
        .bind(clip(kind, MAX_EVENT_KIND).into_owned())
        .bind(host_id.map(|h| clip(h, MAX_EVENT_KIND).into_owned()))
        .bind(clip(message, MAX_EVENT_MESSAGE).into_owned())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A stored command's body. One that no longer reads (written by another version) is
/// corrupt state, never an empty command.
fn command_body(id: &str, kind: &str, payload: &str) -> Result<corral_proto::CommandBody> {
    let payload: serde_json::Value = serde_json::from_str(payload)
        .map_err(|e| StoreError::Corrupt(format!("command {id}: payload: {e}")))?;
    match corral_proto::CommandBody::from_wire(kind, payload) {
        corral_proto::CommandBody::Unreadable { kind, error } => Err(StoreError::Corrupt(format!(
            "command {id} ({kind}) no longer reads: {error}"
        ))),
        body => Ok(body),
    }
}

/// The session-scoped PostgreSQL advisory lock the active server's writer connection holds
/// ("corral a"); PostgreSQL releases it when that session ends, however it ends.
const ACTIVE_LOCK: i64 = 0x636f_7272_616c_2061;

/// How long PostgreSQL keeps the active server's writer session while it says nothing: a
/// frozen server (SIGSTOP, a stalled VM) loses the lock after this, and a standby takes over.
/// The server speaks every `WRITER_KEEPALIVE`, so a live one never comes close.
const ACTIVE_IDLE: Duration = Duration::from_secs(4);
const WRITER_KEEPALIVE: Duration = Duration::from_secs(1);
/// Times in a row the writer may fail to start with no other server holding the lock before
/// the server gives up (each try waits up to `PG_ACQUIRE`).
const WRITER_TRIES: u32 = 3;

/// Whether another server's session holds the active-server lock on `url`'s database.
pub async fn another_is_active(url: &PostgresUrl) -> Result<bool> {
    sqlx::any::install_default_drivers();
    Ok(lock_holder(&url.options()?).await?.is_some())
}

/// Refused: another server holds the active-server lock.
#[derive(Debug, thiserror::Error)]
#[error("another corral server is active on this database (it holds the write lock)")]
struct NotActive;

/// The backend process id of the session that holds the active-server lock, if one does (a
/// query on a connection of its own). An advisory lock on a 64-bit key is listed in
/// `pg_locks` as its high and low halves; advisory locks belong to a database, so deployments
/// in other databases of the same cluster hold locks of their own.
async fn lock_holder(opts: &AnyConnectOptions) -> Result<Option<i32>> {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect_with(opts).await?;
    let holder: Option<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND CAST(classid AS BIGINT) = $1 AND CAST(objid AS BIGINT) = $2 AND objsubid = 1",
    )
    .bind(ACTIVE_LOCK >> 32)
    .bind(ACTIVE_LOCK & 0xffff_ffff)
    .fetch_optional(&mut conn)
    .await?;
    conn.close().await?;
    Ok(holder)
}

/// The writer pool: one connection that, as it is made, takes the active-server lock — or is
/// refused with `NotActive` — and records its backend process id in `session`. The pool never
/// retires it on its own (no idle or age limit), since a new connection means the lock
/// released and taken again. A connection the database ended (an outage, the idle limit) is
/// replaced by one that must take the lock again: after an outage it gets it back, unless
/// another server took over meanwhile.
async fn writer_pool(
    opts: AnyConnectOptions,
    session: Arc<std::sync::atomic::AtomicI32>,
) -> std::result::Result<AnyPool, sqlx::Error> {
    AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(PG_ACQUIRE)
        .idle_timeout(None)
        .max_lifetime(None)
        .after_connect(move |conn, _| {
            let session = session.clone();
            Box::pin(async move {
                // The session's id is recorded before it takes the lock, so that whoever
                // sees this session holding the lock (`keep_writer`) knows it as this
                // server's own.
                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut *conn)
                    .await?;
                session.store(pid, std::sync::atomic::Ordering::SeqCst);
                let got: Flag = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(ACTIVE_LOCK)
                    .fetch_one(&mut *conn)
                    .await?;
                if !got.0 {
                    return Err(sqlx::Error::Configuration(Box::new(NotActive)));
                }
                // Both limits: `idle_session_timeout` does not apply inside a transaction, so
                // a server frozen between a transaction's statements would keep the lock for
                // good without the second one.
                for limit in [
                    "idle_session_timeout",
                    "idle_in_transaction_session_timeout",
                ] {
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "SET {limit} = '{}s'",
                        ACTIVE_IDLE.as_secs()
                    )))
                    .await?;
                }
                Ok(())
            })
        })
        .connect_with(opts)
        .await
}

/// Keeps the writer's session (and with it the lock) alive: a statement every
/// `WRITER_KEEPALIVE`. When that fails, asks who holds the lock: another server's session
/// (this one was cut off or frozen long enough for a standby to take over) makes the process
/// exit — it can no longer write, and two servers must never both act on one datastore.
async fn keep_writer(
    writer: AnyPool,
    opts: AnyConnectOptions,
    session: Arc<std::sync::atomic::AtomicI32>,
    name: String,
    cut_off: Arc<tokio::sync::watch::Sender<bool>>,
) {
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(WRITER_KEEPALIVE).await;
        // Bounded: on a link that drops packets silently a statement would wait for TCP to
        // give up (minutes).
        let ping = tokio::time::timeout(PG_ACQUIRE, sqlx::query("SELECT 1").execute(&writer));
        let Err(e) = ping
            .await
            .map_err(|_| "no answer within 3 s".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        else {
            if failing_since.take().is_some() && *cut_off.borrow() {
                tracing::info!(datastore = %name, "the datastore answers again; this server is still the active one");
                cut_off.send_replace(false);
            }
            continue;
        };
        let since = *failing_since.get_or_insert_with(std::time::Instant::now);
        let holder = tokio::time::timeout(PG_ACQUIRE, lock_holder(&opts))
            .await
            .unwrap_or(Ok(None));
        // Read after the holder: the pool may have made a new writer session (with the
        // lock) meanwhile, and that one is this server's own.
        let ours = session.load(std::sync::atomic::Ordering::SeqCst);
        match holder {
            Ok(Some(holder)) if holder != ours => {
                tracing::error!(
                    datastore = %name,
                    "another corral server took over the datastore while this one was cut off from it or stopped; exiting, so that two servers never act on one datastore"
                );
                std::process::exit(1);
            }
            // Past the idle limit PostgreSQL has ended the writer's session if it could see
            // it, and another server may hold the lock: the agents connected here are told to
            // go (they dial the deployment's other servers), so none waits on a server that
            // can neither write nor know whether it is still the active one.
            _ if since.elapsed() >= ACTIVE_IDLE && !*cut_off.borrow() => {
                tracing::error!(datastore = %name, error = %e, "cut off from the datastore for longer than the write lock's idle limit: sending the agents away until it answers");
                cut_off.send_replace(true);
            }
            _ => tracing::warn!(datastore = %name, error = %e, "the datastore does not answer"),
        }
    }
}

/// Records a group of replies in one transaction: each is accepted only from its command's
/// host and only while the command is open, in the order they came.
async fn complete_commands(
    engine: Engine,
    writer: &AnyPool,
    items: Vec<ReplyWrite>,
) -> Result<Vec<Completion>> {
    let mut encoded = Vec::with_capacity(items.len());
    for (id, host_id, result, now) in &items {
        let new_state = match result {
            corral_proto::CommandResult::Ok { .. } => "acked",
            corral_proto::CommandResult::Failed { .. } => "failed",
        };
        let text = serde_json::to_string(result).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        encoded.push((id, host_id, new_state, text, *now));
    }
    let mut tx = writer.begin().await?;
    // Accepted: the replies whose command was open and addressed to the host that answered.
    // A group that answers one command more than once (a replay, or a forgery racing the
    // real reply) is written one reply after the other, so each is judged as it would have
    // been alone.
    let mut ids: std::collections::HashSet<&String> = std::collections::HashSet::new();
    let distinct = encoded.iter().all(|e| ids.insert(e.0));
    let mut accepted: std::collections::HashSet<String> = std::collections::HashSet::new();
    let singles: Vec<&[_]> = if distinct {
        encoded.chunks(ROWS_PER_STATEMENT).collect()
    } else {
        encoded.chunks(1).collect()
    };
    let mut out = Vec::with_capacity(items.len());
    for chunk in singles {
        let mut q = Statement::new(engine, "WITH r(id, host_id, state, result, at) AS (");
        q.values(chunk, |b, (id, host_id, state, text, now)| {
            b.bind(id.as_str())
                .bind(host_id.as_str())
                .bind(*state)
                .bind(text.as_str())
                .bind(*now);
        });
        q.push(
            ") UPDATE commands SET state = r.state, finished_at = r.at, result = r.result FROM r WHERE commands.id = r.id AND commands.host_id = r.host_id AND commands.state = 'pending' RETURNING commands.id",
        );
        let done: Vec<String> = q.query_scalar()?.fetch_all(&mut *tx).await?;
        accepted.extend(done);
        for (id, host_id, ..) in chunk {
            if accepted.remove(id.as_str()) {
                out.push(Completion::Accepted);
                continue;
            }
            // Refused: look again to say why (rare; a command once finished never reopens).
            let row: Option<(String, String)> =
                sqlx::query_as("SELECT host_id, state FROM commands WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            out.push(match row {
                None => Completion::Unknown,
                Some((owner, _)) if owner != **host_id => Completion::WrongHost { owner },
                Some((_, state)) => Completion::AlreadyFinished { state },
            });
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// Records a group of container statuses in one transaction; for each, whether such a
/// container is on the host that reported it.
async fn record_statuses(
    engine: Engine,
    writer: &AnyPool,
    items: Vec<StatusWrite>,
) -> Result<Vec<bool>> {
    let mut tx = writer.begin().await?;
    // One statement per chunk. Two statuses of one container in a group: the later one is
    // what the host said last, so it is the one written.
    let mut last: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, (host_id, status, _)) in items.iter().enumerate() {
        last.insert((host_id.as_str(), status.corral_id.as_str()), i);
    }
    let mut latest: Vec<usize> = last.values().copied().collect();
    latest.sort_unstable();
    let mut updated: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
    for chunk in latest.chunks(ROWS_PER_STATEMENT) {
        let mut q = Statement::new(
            engine,
            "WITH r(id, host_id, actual, docker_id, exit_code, health, restart_count, ip, at) AS (",
        );
        q.values(chunk, |b, &i| {
            let (host_id, status, now) = &items[i];
            b.bind(status.corral_id.as_str())
                .bind(host_id.as_str())
                .bind(status.state.as_str())
                .bind(status.docker_id.as_str())
                .bind(status.exit_code)
                .bind(status.health.map(Health::as_str))
                .bind(status.restart_count)
                .bind(status.ip.as_deref())
                .bind(*now);
        });
        q.push(
            ") UPDATE containers SET actual = r.actual, docker_id = r.docker_id, exit_code = r.exit_code, health = r.health, restart_count = r.restart_count, ip = r.ip, updated_at = r.at FROM r WHERE containers.id = r.id AND containers.host_id = r.host_id RETURNING containers.id, containers.host_id",
        );
        let rows: Vec<(String, String)> = q.query_as()?.fetch_all(&mut *tx).await?;
        updated.extend(rows);
    }
    tx.commit().await?;
    Ok(items
        .iter()
        .map(|(host_id, status, _)| updated.contains(&(status.corral_id.clone(), host_id.clone())))
        .collect())
}

/// Deletes a group of containers' rows in one transaction.
async fn delete_containers(engine: Engine, writer: &AnyPool, ids: Vec<String>) -> Result<Vec<()>> {
    let mut tx = writer.begin().await?;
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let mut q = Statement::new(engine, "DELETE FROM containers WHERE id IN ");
        q.list(chunk.iter().map(String::as_str));
        q.query()?.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(vec![(); ids.len()])
}
