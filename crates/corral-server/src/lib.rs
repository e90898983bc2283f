//! The corral server: the control plane every agent dials into.
//!
//! One HTTPS listener carries everything: the REST API under `/v1/`, the agent tunnel at
//! `/v1/connect` (a WebSocket opened by the agent), `/metrics` and `/healthz`.
//!
//! The modules form layers; a module imports only modules of lower layers (the root, which
//! composes them, excepted). `tests/layers.rs` enforces it.
//!
//! 1. Foundation: [`time_fmt`], [`secrets`], [`process`], [`text`] (bounded text), [`vault`]
//!    (secrets sealed under the master key); then [`store`] (the datastore, which seals what
//!    may carry secrets), [`pki`]; then [`error`] (the domain error) and [`bootstrap`] (first
//!    start and restart of a data dir).
//! 2. [`state`]: what a running server holds — [`state::AppState`], the live tunnels
//!    ([`state::registry`]), command waiters, log streams, the reconciler's and the overlay
//!    sync's memory.
//! 3. [`dispatch`]: the durable command queue's live half — typed calls to agents
//!    ([`dispatch::call`]), replies, redelivery, expiry.
//! 4. Domain operations: [`containers`], [`overlay`], [`tokens`], [`environments`]; then
//!    [`stacks`] (with the reconciler loop), [`hosts`], [`topology`], [`doctor`]. The pure
//!    rules they apply are in `corral_control`.
//! 5. [`tunnel`]: one agent's WebSocket session.
//! 6. [`api`]: HTTP routes, authentication, and the only mapping of errors to statuses.
//!
//! Architecture invariant: the server never opens a connection to a host. Every byte it sends
//! an agent goes down a tunnel that agent opened.

pub mod api;
pub mod bootstrap;
pub mod builds;
pub mod containers;
pub mod dispatch;
pub mod doctor;
pub mod environments;
pub mod error;
pub mod hosts;
pub mod images;
pub mod ldap;
pub mod live;
pub mod netpolicy;
pub mod overlay;
pub mod pki;
pub mod process;
pub mod relay;
pub mod secrets;
pub mod stacks;
pub mod state;
pub mod store;
pub mod text;
pub mod time_fmt;
pub mod tokens;
pub mod topology;
pub mod tunnel;
pub mod users;
pub mod vault;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use corral_tls::CaChecksum;
use tokio::sync::watch;

use crate::state::AppState;

pub use bootstrap::{ServerError, ServerOptions, TlsMode};

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
    // On PostgreSQL with another server active, this one relays every connection to it while
    // it waits for the write lock (`bootstrap` waits for it), and serves on its own after.
    let server_id = secrets::new_id("srv-");
    let following = match bootstrap::follower(&options, local_addr, &server_id).await? {
        Some(f) => Some(
            relay::follow(listener.try_clone().map_err(listener_error)?, f)
                .map_err(listener_error)?,
        ),
        None => None,
    };
    let boot = bootstrap::bootstrap(&options, local_addr).await?;
    drop(following);
    let me = store::ServerRow {
        id: server_id,
        advertise_url: boot.advertise_url.clone(),
        peer_url: boot.peer_url.clone(),
        seen_at: time_fmt::now_unix_millis(),
        active: true,
    };
    boot.store.claim_active(&me).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = Arc::new(AppState {
        store: boot.store,
        servers: state::servers::ServerList::new(&me),
        registry: Default::default(),
        dispatcher: Default::default(),
        metrics: Default::default(),
        streams: Default::default(),
        reconciler: Default::default(),
        vault: boot.vault,
        overlay: Default::default(),
        gate: Arc::new(state::gate::Gate::new(options.max_unauthenticated)),
        pulls: state::pulls::Pulls::default(),
        progress: state::progress::ProgressLog::default(),
        live: state::live::LiveFeed::default(),
        audit: state::audit::AuditLog::default(),
        logins: state::logins::LoginLimiter::default(),
        events: state::events::EventLimiter::new(
            options.event_rate_limit,
            options.event_rate_window,
        ),
        advertise_url: boot.advertise_url.clone(),
        checksum: boot.checksum,
        local_port: local_addr.port(),
        options: options.clone(),
        shutdown: shutdown_rx,
        started: std::time::Instant::now(),
    });
    state.dispatcher.on_unwatched(|state, id, outcome| {
        Box::pin(containers::settle_unwatched(state, id, outcome))
    });
    tokio::spawn(dispatch::expiry_loop(state.clone()));
    tokio::spawn(stacks::reconciler::run(state.clone()));
    tokio::spawn(overlay::run(state.clone()));
    tokio::spawn(state::events::run(state.clone()));
    tokio::spawn(live::run(state.clone()));
    // Only a shared datastore has other servers to learn of; on SQLite the row written at
    // start is all there is, and a write every few seconds would be idle cost for nothing.
    if options.datastore.is_some() {
        tokio::spawn(state::servers::keep_claim(state.clone(), me));
    }
    let app = api::router(state.clone());
    let handle = axum_server::Handle::new();
    let make = app.into_make_service_with_connect_info::<SocketAddr>();
    let gate = state::gate::GateAcceptor {
        gate: state.gate.clone(),
        tls: boot.tls.is_some(),
    };
    let task = match boot.tls {
        Some(tls) => {
            let cfg = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
            let relay_secret = Arc::new(*state.vault.relay_secret());
            let mut server = axum_server::from_tcp_rustls(listener, cfg)
                .map_err(listener_error)?
                .map(move |tls| relay::RelayAcceptor {
                    inner: state::gate::Handshaken {
                        inner: tls.acceptor(gate),
                    },
                    secret: relay_secret.clone(),
                })
                .handle(handle.clone());
            limit_headers(server.http_builder());
            tokio::spawn(server.serve(make))
        }
        None => {
            let mut server = axum_server::from_tcp(listener)
                .map_err(listener_error)?
                .acceptor(gate)
                .handle(handle.clone());
            limit_headers(server.http_builder());
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

pub use process::{raise_nofile_limit, resident_bytes};

/// How long a client may take to send a request's headers, the first request's as much as
/// the next one's on a kept-alive connection: a peer that connects and sends nothing, or
/// stops halfway, is closed then (TLS handshakes have the same 10 s).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

fn limit_headers(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    // HTTP/2 (browsers): bounded streams and headers per connection. (No keep-alive pings:
    // with them, Chromium's streamed reads failed within seconds; the live feed's own
    // keep-alive comments find a vanished peer.)
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(MAX_HTTP2_STREAMS)
        .max_header_list_size(64 * 1024);
}

/// Most requests one HTTP/2 connection may have open at once (a browser's pages share one).
pub const MAX_HTTP2_STREAMS: u32 = 100;
