//! What a running server holds: the datastore and the vault, and everything it keeps only in
//! memory — the live tunnels, the waiters of commands, the open log streams, the reconciler's
//! and the overlay sync's memory, the events' rate limiter. [`AppState`] ties them together;
//! every layer above takes it.
//!
//! This layer holds data and the small operations on it; it imports only the foundation
//! (`store`, `vault`, `secrets`, `time_fmt`, `text`, `error`) and the pure crates.

pub mod audit;
pub mod events;
pub mod gate;
pub mod live;
pub mod logins;
pub mod metrics;
pub mod overlay;
pub mod progress;
pub mod pulls;
pub mod reconciler;
pub mod registry;
pub mod servers;
pub mod streams;
pub mod waiters;

use std::sync::Arc;
use std::time::Duration;

use corral_tls::CaChecksum;
use tokio::sync::watch;

use crate::bootstrap::ServerOptions;

/// Shared state of a running server.
pub struct AppState {
    pub store: crate::store::Store,
    /// The deployment's servers (this one active), as agents are told of them.
    pub servers: servers::ServerList,
    pub registry: registry::Registry,
    pub dispatcher: waiters::Waiters,
    pub streams: streams::Streams,
    pub reconciler: reconciler::Reconciler,
    /// Seals secrets the server must read back (the overlay keys) under the master key.
    pub vault: Arc<crate::vault::Vault>,
    pub overlay: overlay::OverlaySync,
    /// Counts and bounds the connections that have not authenticated.
    pub gate: Arc<gate::Gate>,
    /// Bounds what events are recorded (rate per host and kind).
    pub events: events::EventLimiter,
    /// The head of the audit log's chain.
    pub audit: audit::AuditLog,
    /// Failed logins per source address, and the bound on password hashing.
    pub logins: logins::LoginLimiter,
    /// Image pulls in progress on the hosts.
    pub pulls: pulls::Pulls,
    /// What the web UI's open pages follow to know when to read again.
    pub live: live::LiveFeed,
    /// Counters and histograms for `GET /metrics`.
    pub metrics: metrics::Metrics,
    /// What long `up`s are doing, for the CLI that waits on them.
    pub progress: progress::ProgressLog,
    pub options: ServerOptions,
    /// The URL agents are told to dial (`--advertise-url`).
    pub advertise_url: String,
    pub checksum: CaChecksum,
    /// The port actually bound (differs from `options.listen` when that asked for port 0).
    pub local_port: u16,
    pub shutdown: watch::Receiver<bool>,
    pub started: std::time::Instant,
}

/// Runs `pass` now, then again every `tick` and whenever `wake` is notified, but never sooner
/// than `gap` after the previous pass, nor sooner than the previous pass took (wakes in
/// between make one pass: a storm of them, such as thousands of agents connecting or
/// thousands of replicas reported running, costs at most one pass per `gap`, and a loop
/// whose passes grow long spends at most half its time in them), until the server shuts
/// down; a failed pass is logged and the next one runs as usual.
pub(crate) async fn every<Pass>(
    state: Arc<AppState>,
    wake: fn(&AppState) -> &tokio::sync::Notify,
    tick: Duration,
    gap: Duration,
    what: &str,
    pass: impl Fn(Arc<AppState>) -> Pass,
) where
    Pass: std::future::Future<Output = Result<(), crate::store::StoreError>>,
{
    let mut shutdown = state.shutdown.clone();
    loop {
        let started = std::time::Instant::now();
        if let Err(e) = pass(state.clone()).await {
            tracing::error!(error = %e, "{what} failed");
        }
        let rest = gap.max(started.elapsed());
        if !rest.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(rest) => {}
                _ = shutdown.changed() => return,
            }
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

impl AppState {
    /// Records an audit or security event now, within the rate limit of its host and kind
    /// (see [`events`]); the message is cut to `store::MAX_EVENT_MESSAGE`. Returns true when
    /// it was recorded one by one, false when it was only counted for a later summary. A
    /// failure to record is logged: the operation that caused the event has already happened
    /// and is not undone for it.
    pub async fn record_event(&self, kind: &str, host_id: Option<&str>, message: &str) -> bool {
        let admitted = self.admit_event(kind, host_id, message);
        self.write_events(admitted.rows).await;
        admitted.recorded
    }
}
