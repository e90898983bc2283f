//! First start and restart of a server.
//!
//! First start creates, in `--data-dir` (mode 0700): the master key, the SQLite database (0600)
//! with a check value sealed under that key, the `default` environment, the PKI, an admin API
//! key and `admin.env` (mode 0600) with `CORRAL_SERVER`, `CORRAL_API_KEY` and
//! `CORRAL_CA_CHECKSUM`. A restart reuses all of it, and refuses to start when the datastore is
//! missing or empty or the master key is missing or is not the datastore's (see [`data_dir`];
//! `--init` starts over on purpose). The admin key exists in clear only in `admin.env`; the
//! database holds its hash.

pub mod backup;
mod data_dir;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_proto::secret::SecretKind;
use corral_tls::CaChecksum;
use corral_tls::files::write_private;

use crate::pki;
use crate::secrets::{SecretHash, new_secret};
use crate::store::{Membership, ServerRow, Store};
use crate::time_fmt::now_unix;

#[derive(Debug, Clone)]
pub enum TlsMode {
    /// The server's own CA and certificate, created on first start.
    Generated,
    /// An operator-supplied chain (leaf first, the CA agents pin last) and key.
    Custom { cert: PathBuf, key: PathBuf },
    /// Plain HTTP, for use behind a TLS-terminating proxy only.
    InsecureHttp,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    /// The data dir is not one the server may start on; the text says why and what to do.
    #[error("{0}")]
    DataDir(String),
}

/// Default cap on connections that have not authenticated (`--max-unauthenticated-connections`).
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 1024;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub advertise_url: Option<String>,
    pub tls: TlsMode,
    /// How often agents ping; told to them in the welcome.
    pub heartbeat_interval: Duration,
    /// Silence after which either end declares the link dead.
    pub dead_after: Duration,
    pub max_message_bytes: usize,
    /// How long a container command waits for a disconnected host before it expires.
    pub command_ttl: Duration,
    /// How long a host may be disconnected before the reconciler places its stack replicas
    /// elsewhere.
    pub reschedule_after: Duration,
    /// Cap on connections that have not authenticated (see `state::gate`).
    pub max_unauthenticated: usize,
    /// Start a new datastore in a data dir whose datastore is missing or empty (`--init`).
    pub init: bool,
    /// Security and audit events older than this are deleted.
    pub event_retention: Duration,
    /// Finished commands whose deadline passed longer ago than this are deleted.
    pub command_retention: Duration,
    /// At most this many events are kept (the oldest go first).
    pub event_max_rows: u64,
    /// At most this many events of one kind from one host are recorded one by one per
    /// `event_rate_window`; the rest are counted and recorded as one summary event.
    pub event_rate_limit: u32,
    pub event_rate_window: Duration,
    /// Directory logins, when configured.
    pub ldap: Option<crate::ldap::LdapConfig>,
    /// Most replicas of one stack, all its services together.
    pub max_stack_replicas: u64,
    /// The datastore, when it is a PostgreSQL database; `None`: SQLite in the data dir.
    pub datastore: Option<crate::store::PostgresUrl>,
    /// Where the other servers of a deployment on PostgreSQL reach this one (`--peer-url`;
    /// by default the advertised URL): a waiting server relays its connections there.
    pub peer_url: Option<String>,
}

/// Most replicas one stack may have by default, all its services together (`corral up` and
/// `corral scale` refuse more): what bounds one stack's rows, its placement and its view.
/// `--max-stack-replicas` sets it.
pub const DEFAULT_MAX_STACK_REPLICAS: u64 = 10_000;

impl ServerOptions {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        ServerOptions {
            listen,
            data_dir,
            advertise_url: None,
            tls: TlsMode::Generated,
            heartbeat_interval: Duration::from_secs(15),
            dead_after: Duration::from_secs(45),
            max_message_bytes: corral_proto::DEFAULT_MAX_MESSAGE_BYTES,
            command_ttl: Duration::from_secs(600),
            reschedule_after: Duration::from_secs(60),
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            init: false,
            event_retention: Duration::from_secs(30 * 86_400),
            command_retention: Duration::from_secs(86_400),
            event_max_rows: 100_000,
            event_rate_limit: 20,
            event_rate_window: Duration::from_secs(60),
            ldap: None,
            max_stack_replicas: DEFAULT_MAX_STACK_REPLICAS,
            datastore: None,
            peer_url: None,
        }
    }
}

pub(crate) struct Booted {
    pub store: Store,
    pub vault: std::sync::Arc<crate::vault::Vault>,
    pub tls: Option<rustls::ServerConfig>,
    pub checksum: CaChecksum,
    pub advertise_url: String,
    pub peer_url: String,
    pub local_url: String,
    pub admin_env: PathBuf,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Host part of a URL such as `https://host:8443/path` (IPv6 brackets removed).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map(|(_, a)| a)
        .unwrap_or(authority);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_owned())
}

fn validate_url(url: &str, flag: &str) -> Result<(), ServerError> {
    let ok_scheme = url.starts_with("https://") || url.starts_with("http://");
    if !ok_scheme || url_host(url).is_none() || url.len() > 2048 {
        return Err(ServerError::Config(format!(
            "{flag} {url:?} must be an http(s) URL with a host, e.g. https://corral.example.com:8443"
        )));
    }
    Ok(())
}

/// Where this server is reached: by a client on this machine, by agents, by the other servers;
/// and the names its certificate is for.
pub(crate) struct Addresses {
    pub local_url: String,
    pub advertise_url: String,
    pub peer_url: String,
    pub sans: Vec<String>,
}

pub(crate) fn addresses(
    options: &ServerOptions,
    local_addr: SocketAddr,
) -> Result<Addresses, ServerError> {
    let scheme = match options.tls {
        TlsMode::InsecureHttp => "http",
        _ => "https",
    };
    let port = local_addr.port();
    let local_ip = match local_addr.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let local_url = match local_ip {
        IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{scheme}://{v4}:{port}"),
    };
    let advertise_url = match &options.advertise_url {
        Some(u) => {
            validate_url(u, "--advertise-url")?;
            u.trim_end_matches('/').to_owned()
        }
        None if local_addr.ip().is_unspecified() => {
            let h = hostname();
            if h.is_empty() {
                local_url.clone()
            } else {
                format!("{scheme}://{h}:{port}")
            }
        }
        None => local_url.clone(),
    };
    let peer_url = match &options.peer_url {
        Some(u) => {
            validate_url(u, "--peer-url")?;
            if !u.starts_with("https://") {
                return Err(ServerError::Config(format!(
                    "--peer-url {u:?} must be an https:// URL: servers relay to each other over TLS only"
                )));
            }
            u.trim_end_matches('/').to_owned()
        }
        None => advertise_url.clone(),
    };

    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let h = hostname();
    if !h.is_empty() {
        sans.push(h);
    }
    if !local_addr.ip().is_unspecified() {
        sans.push(local_addr.ip().to_string());
    }
    sans.extend(url_host(&advertise_url));
    sans.extend(url_host(&peer_url));
    sans.sort();
    sans.dedup();
    Ok(Addresses {
        local_url,
        advertise_url,
        peer_url,
        sans,
    })
}

pub(crate) async fn bootstrap(
    options: &ServerOptions,
    local_addr: SocketAddr,
) -> Result<Booted, ServerError> {
    let dir = &options.data_dir;
    let now = now_unix();
    let Addresses {
        local_url,
        advertise_url,
        peer_url,
        sans,
    } = addresses(options, local_addr)?;

    // Nothing is written before the options are known to be sound.
    let custom = match &options.tls {
        TlsMode::Custom { cert, key } => Some(pki::load_custom(cert, key)?),
        _ => None,
    };
    let own_ca = !matches!(options.tls, TlsMode::Custom { .. });
    let start = match &options.datastore {
        None => data_dir::prepare(dir, options.init, own_ca)?,
        Some(url) => {
            let holds_data = Store::postgres_holds_data(url).await?;
            data_dir::prepare_external(dir, options.init, own_ca, holds_data, &url.name())?
        }
    };
    let vault = match start {
        data_dir::Start::New => crate::vault::Vault::open_or_create(dir),
        data_dir::Start::Existing => crate::vault::Vault::load(dir),
    }
    .map_err(|e| ServerError::Config(e.to_string()))?;
    let vault = std::sync::Arc::new(vault);
    let store = match &options.datastore {
        None => Store::open_sqlite(&dir.join(data_dir::DB_FILE), vault.clone()).await?,
        Some(url) => {
            let store = Store::open_postgres(url, vault.clone()).await?;
            tracing::info!(datastore = %url.name(), "datastore: PostgreSQL");
            store
        }
    };
    check_master_key(&store, &vault, dir).await?;
    let sealed = store.seal_clear_columns().await?;
    if sealed > 0 {
        tracing::info!(
            values = sealed,
            "sealed values an earlier version stored in clear"
        );
    }
    store.ensure_environment("default", now).await?;

    let (tls, checksum) = server_tls(options, &sans, now, custom)?;

    let admin_env = dir.join("admin.env");
    let existing_key = read_env_file(&admin_env)
        .and_then(|vars| vars.into_iter().find(|(k, _)| k == "CORRAL_API_KEY"))
        .map(|(_, v)| v);
    let api_key = match existing_key {
        Some(k) if store.api_key_by_hash(&SecretHash::of(&k)).await?.is_some() => k,
        _ => {
            if store.count_api_keys().await? > 0 {
                tracing::warn!(
                    path = %admin_env.display(),
                    "admin.env is missing or holds an unknown key: minting a new admin API key"
                );
            }
            let k = new_secret(SecretKind::ApiKey);
            store
                .insert_api_key("admin", crate::store::Role::Admin, &SecretHash::of(&k), now)
                .await?;
            k
        }
    };
    let text = format!(
        "# corral admin credentials. Keep this file secret (mode 0600).\n# Use with: set -a; . {}; set +a\nCORRAL_SERVER={local_url}\nCORRAL_API_KEY={api_key}\nCORRAL_CA_CHECKSUM={checksum}\n",
        admin_env.display()
    );
    write_private(&admin_env, text.as_bytes()).map_err(|source| ServerError::Io {
        context: format!("cannot write {}", admin_env.display()),
        source,
    })?;
    Ok(Booted {
        store,
        vault,
        tls,
        checksum,
        advertise_url,
        peer_url,
        local_url,
        admin_env,
    })
}

/// The server's TLS configuration (none with `--insecure-http`) and its CA's checksum: the
/// operator's chain (`custom`) or the data dir's CA and a leaf for `sans`.
fn server_tls(
    options: &ServerOptions,
    sans: &[String],
    now: i64,
    custom: Option<pki::Pki>,
) -> Result<(Option<rustls::ServerConfig>, CaChecksum), ServerError> {
    let pki_dir = options.data_dir.join("pki");
    if let TlsMode::InsecureHttp = options.tls {
        tracing::warn!(
            "--insecure-http: serving plain HTTP. Only run this behind a TLS-terminating proxy; agents pin the proxy's CA instead"
        );
        return Ok((None, pki::load_or_create(&pki_dir, sans, now)?.checksum));
    }
    let p = match custom {
        Some(p) => p,
        None => pki::load_or_create(&pki_dir, sans, now)?,
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(corral_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(p.chain, p.key)
        .map_err(|e| {
            ServerError::Config(format!("the server certificate or key is unusable: {e}"))
        })?;
    // HTTP/2 for browsers (the web UI's long-lived streams share one connection),
    // HTTP/1.1 for the agents' WebSocket and the CLI.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Some(cfg), p.checksum))
}

/// What a server needs to relay its connections to the active one while it waits for the
/// datastore's write lock (`relay::follow`).
pub(crate) struct Follower {
    pub tls: rustls::ServerConfig,
    pub checksum: CaChecksum,
    pub relay_secret: [u8; 32],
    pub me: ServerRow,
    pub membership: Membership,
}

/// `Some` when this server starts on a PostgreSQL datastore that holds a deployment whose
/// write lock another server holds: this one then relays until it takes over. The data dir
/// must be one that may join (`data_dir::prepare_external`: the deployment's key and CA).
/// Plain HTTP (`--insecure-http`) never relays: the relay's secret travels over TLS only.
pub(crate) async fn follower(
    options: &ServerOptions,
    local_addr: SocketAddr,
    server_id: &str,
) -> Result<Option<Follower>, ServerError> {
    let Some(url) = &options.datastore else {
        return Ok(None);
    };
    if matches!(options.tls, TlsMode::InsecureHttp)
        || !Store::postgres_holds_data(url).await?
        || !crate::store::another_is_active(url).await?
    {
        return Ok(None);
    }
    let addresses = addresses(options, local_addr)?;
    let custom = match &options.tls {
        TlsMode::Custom { cert, key } => Some(pki::load_custom(cert, key)?),
        _ => None,
    };
    let own_ca = custom.is_none();
    let dir = &options.data_dir;
    data_dir::prepare_external(dir, options.init, own_ca, true, &url.name())?;
    let vault = crate::vault::Vault::load(dir).map_err(|e| ServerError::Config(e.to_string()))?;
    let (tls, checksum) = server_tls(options, &addresses.sans, now_unix(), custom)?;
    let Some(tls) = tls else {
        return Ok(None);
    };
    let membership = Membership::connect(url).await?;
    Ok(Some(Follower {
        tls,
        checksum,
        relay_secret: *vault.relay_secret(),
        me: ServerRow {
            id: server_id.to_owned(),
            advertise_url: addresses.advertise_url,
            peer_url: addresses.peer_url,
            seen_at: crate::time_fmt::now_unix_millis(),
            active: false,
        },
        membership,
    }))
}

/// What the check value seals, and the owner it is bound to.
const KEY_CHECK: &[u8] = b"corral master key";
const KEY_CHECK_OWNER: &[u8] = b"key_check";

/// Refuses a master key that does not open the datastore's check value. A datastore without
/// one (new, or made before the check existed) gets it, once every secret it holds sealed
/// opens with this key.
async fn check_master_key(
    store: &Store,
    vault: &crate::vault::Vault,
    dir: &Path,
) -> Result<(), ServerError> {
    let mismatch = || {
        ServerError::DataDir(format!(
            "{} does not open this datastore's sealed secrets: it is not the key {} was made with (it was replaced, or comes from another data dir). Put the original master.key back from a backup of this data dir; the server does not start with a key that cannot open the overlay's pre-shared keys",
            dir.join(crate::vault::MASTER_KEY_FILE).display(),
            dir.join(data_dir::DB_FILE).display()
        ))
    };
    if let Some(sealed) = store.key_check().await? {
        return match vault.open(&sealed, KEY_CHECK_OWNER) {
            Ok(plain) if plain == KEY_CHECK => Ok(()),
            _ => Err(mismatch()),
        };
    }
    for env in store.environments().await? {
        let sealed = store
            .overlay_env(&env.id)
            .await?
            .and_then(|o| o.overlay_psk);
        if let Some(sealed) = sealed
            && vault.open(&sealed, env.id.as_bytes()).is_err()
        {
            return Err(mismatch());
        }
    }
    let sealed = vault
        .seal(KEY_CHECK, KEY_CHECK_OWNER)
        .map_err(|e| ServerError::Config(e.to_string()))?;
    store.set_key_check(&sealed).await?;
    Ok(())
}

/// Reads a `KEY=VALUE` file (comments and blank lines ignored).
pub fn read_env_file(path: &Path) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(
            url_host("https://a.example:8443/x").as_deref(),
            Some("a.example")
        );
        assert_eq!(url_host("https://[::1]:8443").as_deref(), Some("::1"));
        assert_eq!(url_host("http://u@h").as_deref(), Some("h"));
        assert_eq!(url_host("https://"), None);
    }
}
