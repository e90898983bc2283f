//! The corral agent: runs on every host, dials out to the server and never listens.
//!
//! - [`state`]: the state dir: the host's credential (0600) and what it needs to reconnect
//!   without a token.
//! - [`dial`]: one connection attempt: TCP, TLS against the pinned CA, WebSocket, hello.
//! - [`docker`]: the only code that talks to Docker, over the local socket.
//! - [`doctor`]: the local checks behind `corral doctor`.
//! - [`firewall`]: `firewall apply`: corral's own nftables table, with a dead-man rollback.
//! - [`mesh`]: the agent's side of the encrypted overlay (key pair, configuration, data plane).
//! - [`netpolicy`]: the environment's network policy as this host's nftables rules.
//! - [`overlay`]: the overlay UDP socket (the one port an agent listens on) and its probes.
//! - [`facts`]: what the agent reports about its host.
//! - [`run`]: the agent's life: dial, serve the tunnel, reconnect with backoff, stop for good on
//!   a permanent refusal.
//!
//! Architecture invariant: the agent opens no listening TCP socket; its only listener is the
//! overlay UDP socket. Everything the server wants
//! from it arrives over the tunnel the agent opened.

pub mod builds;
mod commands;
pub mod dial;
pub mod dns;
pub mod docker;
pub mod doctor;
pub mod facts;
pub mod files;
pub mod firewall;
pub mod images;
pub mod mesh;
pub mod netpolicy;
pub mod overlay;
pub mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use corral_proto::backoff::Backoff;
use corral_proto::liveness::{Due, Liveness};
use corral_proto::{
    AgentMessage, CloseReason, Command, CommandBody, CommandResult, ServerMessage, Welcome,
};
use corral_tls::CaChecksum;

pub use dial::{DialError, Dialer, Tunnel};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    /// The server refused this agent for a reason retrying cannot fix.
    #[error("the server refused this agent ({reason}): {message}")]
    Refused {
        reason: CloseReason,
        message: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub server: Option<String>,
    /// More servers of the same deployment (`--server` repeated), dialed in turn when one
    /// cannot be reached.
    pub more_servers: Vec<String>,
    pub token: Option<String>,
    pub ca_checksum: Option<CaChecksum>,
    pub state_dir: PathBuf,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// UDP port of the overlay socket (0: any free port).
    pub overlay_port: u16,
    /// MTU of the TUN device and of the containers' overlay network.
    pub overlay_mtu: u16,
    /// Join the environment's overlay (key pair, TUN device, routes, overlay network).
    pub overlay: bool,
    /// Runs inside `corral server --with-agent`, whose process also holds the API listener.
    pub embedded: bool,
    /// The local Docker socket.
    pub docker_host: String,
    /// Where dockerd reads registries' CAs; a registry's private CA is installed there.
    pub docker_certs_dir: PathBuf,
    /// Ceiling of the reconnect backoff.
    pub backoff_cap: Duration,
}

impl AgentOptions {
    pub fn new(state_dir: PathBuf) -> Self {
        AgentOptions {
            server: None,
            more_servers: Vec::new(),
            token: None,
            ca_checksum: None,
            state_dir,
            name: None,
            labels: BTreeMap::new(),
            overlay_port: overlay::DEFAULT_PORT,
            overlay_mtu: corral_overlay::DEFAULT_MTU,
            overlay: true,
            embedded: false,
            docker_host: docker::DEFAULT_DOCKER_HOST.to_owned(),
            docker_certs_dir: images::DEFAULT_CERTS_DIR.into(),
            backoff_cap: Duration::from_secs(30),
        }
    }
}

/// Runs the agent until a permanent refusal or until `stop` resolves.
pub async fn run(
    options: AgentOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    corral_tls::install_default_provider();
    let mut st = state::AgentState::load_or_init(&options)?;
    let mut servers = Servers::new(&st)?;
    // A firewall change left unconfirmed by a previous run is undone before anything else.
    match firewall::rollback_pending(st.dir()) {
        Ok(true) => tracing::warn!("rolled back firewall rules that were never confirmed"),
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "cannot roll back unconfirmed firewall rules"),
    }
    // Without the overlay the agent binds nothing at all. With it, the control plane still
    // works when the overlay socket cannot be bound; doctor reports why it is missing.
    let overlay = if !options.overlay {
        None
    } else {
        match overlay::Overlay::bind(options.overlay_port).await {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::error!(port = options.overlay_port, error = %e, "cannot bind the overlay UDP port");
                None
            }
        }
    };
    let (reports_tx, mut reports_rx) = tokio::sync::mpsc::channel(256);
    let engine = docker::Engine::watch_with(
        options.docker_host.clone(),
        st.name.clone(),
        options.docker_certs_dir.clone(),
        Some(files::FileStore::new(&options.state_dir)),
        reports_tx,
    );
    let mesh = if options.overlay {
        match mesh::Mesh::load_or_create(
            st.dir(),
            overlay.clone(),
            engine.clone(),
            options.overlay_mtu,
        ) {
            Ok(m) => {
                engine.expect_overlay();
                let m = std::sync::Arc::new(m);
                m.restore().await;
                Some(m)
            }
            Err(e) => {
                tracing::error!(error = %e, "the overlay is off: cannot load its key pair");
                None
            }
        }
    } else {
        None
    };
    let facts = facts::collect(
        st.name.clone(),
        options.labels.clone(),
        overlay.as_ref().and_then(|o| o.port()),
        mesh.as_ref().map(|m| m.public_key_hex()),
    );
    let mut backoff = Backoff::new(Duration::from_millis(500), options.backoff_cap);
    tokio::pin!(stop);
    loop {
        let attempt = async {
            let auth = st.auth(options.token.as_deref())?;
            let hello = dial::hello(auth, facts.clone());
            let (url, dialer) = servers.current();
            match dialer.connect(hello).await {
                Ok((tunnel, welcome)) => {
                    st.mark_registered(&welcome)?;
                    servers.learn(&st);
                    tracing::info!(
                        server = %url,
                        host = %welcome.host_name,
                        id = %welcome.host_id,
                        environment = %welcome.environment,
                        "connected to the server"
                    );
                    let ctx = Context {
                        server: url.clone(),
                        pin: st.ca_checksum.to_string(),
                        state_dir: st.dir().to_owned(),
                        dialer: dialer.clone(),
                        overlay: overlay.clone(),
                        overlay_port: options.overlay_port,
                        overlay_enabled: options.overlay,
                        embedded: options.embedded,
                        engine: engine.clone(),
                        mesh: mesh.clone(),
                    };
                    Ok(Some(serve(tunnel, &welcome, &ctx, &mut reports_rx).await))
                }
                Err(DialError::Refused { reason, message }) => {
                    Ok(Some(Ended::Refused(reason, message)))
                }
                // Before the first registration a wrong pin is a misconfiguration: fail fast so
                // the operator sees it. Afterwards it may be an attack in progress or a
                // temporary interception: keep refusing loudly, and keep trying.
                Err(e @ DialError::PinMismatch { .. }) if !st.registered => {
                    Err(AgentError::Config(e.to_string()))
                }
                Err(e @ DialError::PinMismatch { .. }) => {
                    tracing::error!(error = %e, "the server's certificate does not match the pinned CA");
                    Ok(None)
                }
                Err(e) => {
                    tracing::warn!(server = %url, error = %e, "cannot reach the server");
                    Ok(None)
                }
            }
        };
        let outcome: Result<Option<Ended>, AgentError> = tokio::select! {
            o = attempt => o,
            _ = &mut stop => return Ok(()),
        };
        match outcome? {
            Some(Ended::Refused(reason, message)) if reason.is_permanent() => {
                tracing::error!(%reason, %message, "the server refused this agent; not retrying");
                return Err(AgentError::Refused { reason, message });
            }
            Some(Ended::Refused(reason, message)) => {
                tracing::warn!(%reason, %message, "the server closed the tunnel");
            }
            Some(Ended::Lost(why)) => {
                tracing::warn!(%why, "lost the tunnel");
                backoff.reset();
            }
            None => {}
        }
        // The next attempt goes to the next server of the deployment (when there are
        // several): the one just tried may be the one that died.
        servers.next();
        let delay = backoff.next_delay(u64::from_le_bytes(state::random_bytes::<8>()));
        tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => return Ok(()),
        }
    }
}

/// The servers this agent dials, in turn: its own `--server` first, then the others it was
/// given or told of.
struct Servers {
    pin: CaChecksum,
    dialers: Vec<(String, std::sync::Arc<Dialer>)>,
    at: usize,
}

impl Servers {
    fn new(st: &state::AgentState) -> Result<Servers, AgentError> {
        let mut servers = Servers {
            pin: st.ca_checksum,
            dialers: vec![(
                st.server.clone(),
                std::sync::Arc::new(Dialer::new(&st.server, st.ca_checksum)?),
            )],
            at: 0,
        };
        servers.learn(st);
        Ok(servers)
    }

    /// Adds a dialer for each server the state knows and this list lacks.
    fn learn(&mut self, st: &state::AgentState) {
        for url in &st.servers {
            if self.dialers.iter().any(|(u, _)| u == url) {
                continue;
            }
            match Dialer::new(url, self.pin) {
                Ok(d) => self.dialers.push((url.clone(), std::sync::Arc::new(d))),
                Err(e) => tracing::warn!(server = %url, error = %e, "ignoring a server"),
            }
        }
    }

    fn current(&self) -> (String, std::sync::Arc<Dialer>) {
        let (url, dialer) = &self.dialers[self.at % self.dialers.len()];
        (url.clone(), dialer.clone())
    }

    fn next(&mut self) {
        self.at = (self.at + 1) % self.dialers.len();
    }
}

/// How a tunnel ended.
enum Ended {
    Refused(CloseReason, String),
    Lost(String),
}

/// What command handlers may know about this agent.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) server: String,
    pub(crate) pin: String,
    pub(crate) state_dir: std::path::PathBuf,
    pub(crate) dialer: std::sync::Arc<Dialer>,
    pub(crate) overlay: Option<std::sync::Arc<overlay::Overlay>>,
    pub(crate) overlay_port: u16,
    /// Started without `--no-overlay`.
    pub(crate) overlay_enabled: bool,
    pub(crate) embedded: bool,
    pub(crate) engine: std::sync::Arc<docker::Engine>,
    pub(crate) mesh: Option<std::sync::Arc<mesh::Mesh>>,
}

/// Remembers recent outcomes so a command delivered twice is answered, not run, again.
#[derive(Default)]
struct RecentOutcomes {
    order: std::collections::VecDeque<String>,
    results: std::collections::HashMap<String, CommandResult>,
}

impl RecentOutcomes {
    const KEEP: usize = 1024;

    fn get(&self, id: &str) -> Option<&CommandResult> {
        self.results.get(id)
    }

    fn insert(&mut self, id: String, result: CommandResult) {
        if self.results.insert(id.clone(), result).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > Self::KEEP {
            if let Some(old) = self.order.pop_front() {
                self.results.remove(&old);
            }
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Serves an established tunnel: heartbeats, commands, reports and streams.
async fn serve(
    mut tunnel: Tunnel,
    welcome: &Welcome,
    ctx: &Context,
    reports_rx: &mut tokio::sync::mpsc::Receiver<corral_proto::Report>,
) -> Ended {
    // Stale reports are superseded by the inventory sent now.
    while reports_rx.try_recv().is_ok() {}
    let inventory = ctx.engine.inventory().await;
    if let Err(e) = tunnel.send(&AgentMessage::Report(inventory)).await {
        return Ended::Lost(e.to_string());
    }
    let mut session = Session::new(welcome, ctx);
    let ended = session.run(&mut tunnel, reports_rx).await;
    session.abort_streams();
    ended
}

/// One tunnel's session: what is running, what was answered, which streams are open.
struct Session<'a> {
    ctx: &'a Context,
    dead_after_ms: u64,
    live: Liveness,
    /// Commands under way (a second delivery of one is ignored until it finishes).
    running: std::collections::HashSet<String>,
    /// Answers to recent commands (a redelivered one is answered from here).
    recent: RecentOutcomes,
    /// Open log streams: their credit and their task.
    streams: std::collections::HashMap<
        String,
        (
            std::sync::Arc<tokio::sync::Semaphore>,
            tokio::task::AbortHandle,
        ),
    >,
    done_tx: tokio::sync::mpsc::Sender<(String, CommandResult)>,
    done_rx: tokio::sync::mpsc::Receiver<(String, CommandResult)>,
    out_tx: tokio::sync::mpsc::Sender<AgentMessage>,
    out_rx: tokio::sync::mpsc::Receiver<AgentMessage>,
    /// The overlay configuration received on this connection, with the deltas since applied
    /// (a new connection starts with a full one from the server).
    overlay: Option<corral_proto::OverlayConfig>,
    /// The server reads overlay figures (its welcome said so): sent when they changed, at
    /// most once per heartbeat interval.
    overlay_stats: Option<Duration>,
    /// The overlay figures last sent on this connection.
    overlay_sent: Option<corral_proto::OverlayStats>,
}

/// What the session does after handling one server message.
enum Next {
    Continue,
    Send(AgentMessage),
    End(Ended),
}

impl<'a> Session<'a> {
    fn new(welcome: &Welcome, ctx: &'a Context) -> Session<'a> {
        let (done_tx, done_rx) = tokio::sync::mpsc::channel(64);
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(16);
        Session {
            ctx,
            dead_after_ms: welcome.dead_after_ms,
            live: Liveness::active(
                std::time::Instant::now(),
                Duration::from_millis(welcome.heartbeat_interval_ms.max(100)),
                Duration::from_millis(welcome.dead_after_ms.max(300)),
            ),
            running: std::collections::HashSet::new(),
            recent: RecentOutcomes::default(),
            streams: std::collections::HashMap::new(),
            done_tx,
            done_rx,
            out_tx,
            out_rx,
            overlay: None,
            overlay_stats: (welcome.overlay_stats && ctx.mesh.is_some())
                .then(|| Duration::from_millis(welcome.heartbeat_interval_ms.max(100))),
            overlay_sent: None,
        }
    }

    /// The overlay's figures, when they changed since last sent.
    async fn overlay_report(&mut self) -> Option<AgentMessage> {
        let stats = self.ctx.mesh.as_ref()?.stats().await?;
        if self.overlay_sent == Some(stats) {
            return None;
        }
        self.overlay_sent = Some(stats);
        Some(AgentMessage::Report(corral_proto::Report::Overlay(stats)))
    }

    fn abort_streams(&mut self) {
        for (_, (_, task)) in self.streams.drain() {
            task.abort();
        }
    }

    /// Until the tunnel ends: messages from the server, reports from Docker, stream data and
    /// finished commands to the server, heartbeats.
    async fn run(
        &mut self,
        tunnel: &mut Tunnel,
        reports_rx: &mut tokio::sync::mpsc::Receiver<corral_proto::Report>,
    ) -> Ended {
        let mut overlay_every =
            tokio::time::interval(self.overlay_stats.unwrap_or(Duration::from_secs(3600)));
        overlay_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = tokio::time::Instant::from_std(self.live.next_deadline());
            let outgoing = tokio::select! {
                _ = overlay_every.tick(), if self.overlay_stats.is_some() => {
                    self.overlay_report().await
                }
                msg = tunnel.recv() => {
                    self.live.on_receive(std::time::Instant::now());
                    match msg {
                        Ok(msg) => match self.on_message(msg).await {
                            Next::Continue => None,
                            Next::Send(reply) => Some(reply),
                            Next::End(ended) => return ended,
                        },
                        Err(DialError::Refused { reason, message }) => {
                            return Ended::Refused(reason, message);
                        }
                        Err(e) => return Ended::Lost(e.to_string()),
                    }
                }
                Some(report) = reports_rx.recv() => Some(AgentMessage::Report(report)),
                Some(msg) = self.out_rx.recv() => {
                    if let AgentMessage::StreamEnd { stream_id, .. } = &msg {
                        self.streams.remove(stream_id);
                    }
                    Some(msg)
                }
                Some((command_id, result)) = self.done_rx.recv() => {
                    self.running.remove(&command_id);
                    self.recent.insert(command_id.clone(), result.clone());
                    Some(AgentMessage::Reply { command_id, result })
                }
                _ = tokio::time::sleep_until(deadline) => {
                    match self.live.poll(std::time::Instant::now()) {
                        Some(Due::Ping(seq)) => Some(AgentMessage::Ping { seq }),
                        Some(Due::Dead) => {
                            return Ended::Lost(format!(
                                "nothing received from the server for {} ms",
                                self.dead_after_ms
                            ));
                        }
                        None => None,
                    }
                }
            };
            if let Some(msg) = outgoing
                && let Err(e) = tunnel.send(&msg).await
            {
                return Ended::Lost(e.to_string());
            }
        }
    }

    async fn on_message(&mut self, msg: ServerMessage) -> Next {
        match msg {
            ServerMessage::Ping { seq } => Next::Send(AgentMessage::Pong { seq }),
            ServerMessage::Pong { seq } => {
                self.live.on_pong(std::time::Instant::now(), seq);
                Next::Continue
            }
            ServerMessage::Command(command) => self.on_command(command),
            ServerMessage::StreamCredit { stream_id, bytes } => {
                if let Some((credit, _)) = self.streams.get(&stream_id) {
                    let room = tokio::sync::Semaphore::MAX_PERMITS - credit.available_permits();
                    credit.add_permits((bytes as usize).min(room).min(16 << 20));
                }
                Next::Continue
            }
            ServerMessage::StreamCancel { stream_id } => {
                if let Some((_, task)) = self.streams.remove(&stream_id) {
                    task.abort();
                }
                Next::Continue
            }
            ServerMessage::Names(table) => {
                if let Some(mesh) = &self.ctx.mesh {
                    mesh.set_names(table);
                }
                Next::Continue
            }
            ServerMessage::NetworkPolicy(policy) => {
                tracing::debug!(generation = policy.generation, "network policy");
                if let Some(mesh) = &self.ctx.mesh {
                    mesh.set_policy(policy);
                }
                Next::Continue
            }
            ServerMessage::Overlay(config) => {
                tracing::debug!(?config, "overlay configuration");
                if let Some(mesh) = &self.ctx.mesh {
                    self.overlay = Some((*config).clone());
                    mesh.apply(*config).await;
                }
                Next::Continue
            }
            ServerMessage::OverlayDelta(delta) => {
                tracing::debug!(?delta, "overlay delta");
                let Some(mesh) = &self.ctx.mesh else {
                    return Next::Continue;
                };
                let Some(held) = self.overlay.as_mut() else {
                    return Next::End(Ended::Lost(
                        "the server sent an overlay delta before any configuration; reconnecting for a full one".into(),
                    ));
                };
                // A delta that does not follow what is held means a message was missed: a
                // new connection starts again from a full configuration.
                if let Err(e) = held.apply_delta(&delta) {
                    return Next::End(Ended::Lost(format!("{e}; reconnecting for a full one")));
                }
                mesh.apply(held.clone()).await;
                Next::Continue
            }
            ServerMessage::Welcome(_) => {
                Next::End(Ended::Lost("the server sent a second welcome".into()))
            }
            ServerMessage::Goodbye { reason, message } => {
                Next::End(Ended::Refused(reason, message))
            }
        }
    }

    /// A command: answered from memory when it was carried out already, ignored while it
    /// runs, otherwise started in a task of its own (log streams in the stream table).
    fn on_command(&mut self, command: Command) -> Next {
        if let Some(result) = self.recent.get(&command.id) {
            return Next::Send(AgentMessage::Reply {
                command_id: command.id,
                result: result.clone(),
            });
        }
        if !self.running.insert(command.id.clone()) {
            return Next::Continue;
        }
        match command.body {
            CommandBody::ContainerLogs(r) => {
                let stream_id = r.stream_id.clone().unwrap_or_default();
                let credit = std::sync::Arc::new(tokio::sync::Semaphore::new(
                    (r.credit as usize).min(tokio::sync::Semaphore::MAX_PERMITS),
                ));
                let task = tokio::spawn(commands::stream_logs(
                    self.ctx.engine.clone(),
                    command.id,
                    r,
                    stream_id.clone(),
                    credit.clone(),
                    self.done_tx.clone(),
                    self.out_tx.clone(),
                ));
                self.streams
                    .insert(stream_id, (credit, task.abort_handle()));
            }
            body => {
                let done_tx = self.done_tx.clone();
                let ctx = self.ctx.clone();
                let id = command.id;
                tokio::spawn(async move {
                    let result = commands::execute(body, ctx).await;
                    let _ = done_tx.send((id, result)).await;
                });
            }
        }
        Next::Continue
    }
}
