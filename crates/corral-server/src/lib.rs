//! The corral server: the control plane every agent dials into.
//!
//! One HTTPS listener carries everything: the REST API under `/v1/`, the agent tunnel at
//! `/v1/connect` (a WebSocket opened by the agent), `/metrics` and `/healthz`.
//!
//! - [`bootstrap`]: first start and restart: data dir, PKI, database, default environment,
//!   admin API key and `admin.env`.
//! - [`pki`]: the server's CA and certificate.
//! - [`store`]: the datastore (SQLite, migrations embedded).
//! - [`api`]: HTTP routes and API-key authentication.
//! - [`tunnel`]: one agent's WebSocket session: hello, authentication, heartbeats, close
//!   reasons.
//! - [`dispatch`]: the durable command queue's live half: submit, deliver, accept replies.
//! - [`containers`]: desired vs actual container state; run/start/stop/rm/logs via commands.
//! - [`stacks`]: Compose stacks: `up`, the pure reconcile pass and the reconciler loop.
//! - [`streams`]: agent → HTTP byte streams (logs) under credit-based flow control.
//! - [`overlay`]: the overlay's control half: keys, leases, each agent's configuration.
//! - [`vault`]: secrets sealed at rest under the master key file.
//! - [`registry`]: which hosts are connected right now, and to which session.
//!
//! Architecture invariant: the server never opens a connection to a host. Every byte it sends
//! an agent goes down a tunnel that agent opened.

pub mod api;
pub mod bootstrap;
pub mod containers;
pub mod dispatch;
pub mod overlay;
pub mod pki;
pub mod registry;
pub mod secrets;
pub mod stacks;
pub mod store;
pub mod streams;
pub mod time_fmt;
pub mod tunnel;
pub mod vault;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use corral_tls::CaChecksum;
use tokio::sync::watch;

pub use bootstrap::{ServerOptions, TlsMode};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// Shared state of a running server.
pub struct AppState {
    pub store: store::Store,
    pub registry: registry::Registry,
    pub dispatcher: dispatch::Dispatcher,
    pub streams: streams::Streams,
    pub reconciler: stacks::reconciler::Reconciler,
    /// Seals secrets the server must read back (the overlay keys) under the master key.
    pub vault: vault::Vault,
    pub overlay: overlay::OverlaySync,
    pub options: ServerOptions,
    /// The URL agents are told to dial (`--advertise-url`).
    pub advertise_url: String,
    pub checksum: CaChecksum,
    /// The port actually bound (differs from `options.listen` when that asked for port 0).
    pub local_port: u16,
    pub shutdown: watch::Receiver<bool>,
    pub started: std::time::Instant,
}

/// A server that is accepting connections.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    /// URL for a client on this machine (what `admin.env` says).
    pub local_url: String,
    pub advertise_url: String,
    pub checksum: CaChecksum,
    pub admin_env: PathBuf,
    pub state: Arc<AppState>,
    shutdown_tx: watch::Sender<bool>,
    handle: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Waits until the listener stops (after [`RunningServer::shutdown`] or an I/O error).
    pub async fn wait(self) -> Result<(), ServerError> {
        let res = self.task.await.map_err(|e| ServerError::Io {
            context: "server task".into(),
            source: std::io::Error::other(e),
        })?;
        self.state.store.close().await;
        res.map_err(|source| ServerError::Io {
            context: "serving HTTPS".into(),
            source,
        })
    }

    /// Tells every agent the server is going away, then stops accepting and drains.
    pub fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
        self.handle.graceful_shutdown(Some(Duration::from_secs(5)));
    }

    /// A handle that can trigger [`RunningServer::shutdown`] from another task.
    pub fn shutdown_trigger(&self) -> impl Fn() + Send + Sync + 'static {
        let tx = self.shutdown_tx.clone();
        let handle = self.handle.clone();
        move || {
            let _ = tx.send(true);
            handle.graceful_shutdown(Some(Duration::from_secs(5)));
        }
    }
}

/// Starts a server: bootstraps the data dir, binds the listener and serves in the background.
pub async fn start(options: ServerOptions) -> Result<RunningServer, ServerError> {
    corral_tls::install_default_provider();
    let listener_error = |source| ServerError::Io {
        context: format!("cannot serve on {}", options.listen),
        source,
    };
    let listener =
        std::net::TcpListener::bind(options.listen).map_err(|source| ServerError::Io {
            context: format!("cannot listen on {}", options.listen),
            source,
        })?;
    listener.set_nonblocking(true).map_err(listener_error)?;
    let local_addr = listener.local_addr().map_err(listener_error)?;
    let boot = bootstrap::bootstrap(&options, local_addr).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = Arc::new(AppState {
        store: boot.store,
        registry: registry::Registry::default(),
        dispatcher: dispatch::Dispatcher::default(),
        streams: streams::Streams::default(),
        reconciler: stacks::reconciler::Reconciler::default(),
        vault: boot.vault,
        overlay: overlay::OverlaySync::default(),
        advertise_url: boot.advertise_url.clone(),
        checksum: boot.checksum,
        local_port: local_addr.port(),
        options: options.clone(),
        shutdown: shutdown_rx,
        started: std::time::Instant::now(),
    });
    tokio::spawn(dispatch::expiry_loop(state.clone()));
    tokio::spawn(stacks::reconciler::run(state.clone()));
    tokio::spawn(overlay::run(state.clone()));
    let app = api::router(state.clone());
    let handle = axum_server::Handle::new();
    let make = app.into_make_service_with_connect_info::<SocketAddr>();
    let task = match boot.tls {
        Some(tls) => {
            let cfg = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
            let server = axum_server::from_tcp_rustls(listener, cfg)
                .map_err(listener_error)?
                .handle(handle.clone());
            tokio::spawn(server.serve(make))
        }
        None => {
            let server = axum_server::from_tcp(listener)
                .map_err(listener_error)?
                .handle(handle.clone());
            tokio::spawn(server.serve(make))
        }
    };
    Ok(RunningServer {
        local_addr,
        local_url: boot.local_url,
        advertise_url: boot.advertise_url,
        checksum: boot.checksum,
        admin_env: boot.admin_env,
        state,
        shutdown_tx,
        handle,
        task,
    })
}

/// Runs `pass` now, then again every `tick` and whenever `wake` is notified, until the server
/// shuts down; a failed pass is logged and the next one runs as usual.
pub(crate) async fn every<Pass>(
    state: Arc<AppState>,
    wake: fn(&AppState) -> &tokio::sync::Notify,
    tick: Duration,
    what: &str,
    pass: impl Fn(Arc<AppState>) -> Pass,
) where
    Pass: std::future::Future<Output = Result<(), store::StoreError>>,
{
    let mut shutdown = state.shutdown.clone();
    loop {
        if let Err(e) = pass(state.clone()).await {
            tracing::error!(error = %e, "{what} failed");
        }
        tokio::select! {
            _ = wake(&state).notified() => {}
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Reads this process's resident set size from `/proc/self/statm`, in bytes.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Raises the soft open-file limit to the hard limit. Returns (soft, hard) after the change.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if let Some(hard) = lim.maximum
        && lim.current != Some(hard)
    {
        lim.current = Some(hard);
        setrlimit(Resource::Nofile, lim).map_err(std::io::Error::from)?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok((
        now.current.unwrap_or(u64::MAX),
        now.maximum.unwrap_or(u64::MAX),
    ))
}
