//! The corral agent: runs on every host, dials out to the server and never listens.
//!
//! - [`state`]: the state dir: the host's credential (0600) and what it needs to reconnect
//!   without a token.
//! - [`dial`]: one connection attempt: TCP, TLS against the pinned CA, WebSocket, hello.
//! - [`docker`]: the only code that talks to Docker, over the local socket.
//! - [`doctor`]: the local checks behind `corral doctor`.
//! - [`firewall`]: `firewall apply`: corral's own nftables table, with a dead-man rollback.
//! - [`mesh`]: the agent's side of the encrypted overlay (key pair, configuration, data plane).
//! - [`overlay`]: the overlay UDP socket (the one port an agent listens on) and its probes.
//! - [`facts`]: what the agent reports about its host.
//! - [`run`]: the agent's life: dial, serve the tunnel, reconnect with backoff, stop for good on
//!   a permanent refusal.
//!
//! Architecture invariant: the agent opens no listening TCP socket; its only listener is the
//! overlay UDP socket. Everything the server wants
//! from it arrives over the tunnel the agent opened.

pub mod dial;
pub mod dns;
pub mod docker;
pub mod doctor;
pub mod facts;
pub mod firewall;
pub mod mesh;
pub mod overlay;
pub mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use corral_proto::backoff::Backoff;
use corral_proto::liveness::{Due, Liveness};
use corral_proto::{
    AgentMessage, CloseReason, Command, CommandKind, CommandResult, ServerMessage, Welcome,
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
    /// Ceiling of the reconnect backoff.
    pub backoff_cap: Duration,
}

impl AgentOptions {
    pub fn new(state_dir: PathBuf) -> Self {
        AgentOptions {
            server: None,
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
    let dialer = std::sync::Arc::new(Dialer::new(&st.server, st.ca_checksum)?);
    // A firewall change left unconfirmed by a previous run is undone before anything else.
    match firewall::rollback_pending(st.dir()) {
        Ok(true) => tracing::warn!("rolled back firewall rules that were never confirmed"),
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "cannot roll back unconfirmed firewall rules"),
    }
    // The control plane works without the overlay socket; doctor reports why it is missing.
    let overlay = match overlay::Overlay::bind(options.overlay_port).await {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::error!(port = options.overlay_port, error = %e, "cannot bind the overlay UDP port");
            None
        }
    };
    let (reports_tx, mut reports_rx) = tokio::sync::mpsc::channel(256);
    let engine = docker::Engine::watch(options.docker_host.clone(), st.name.clone(), reports_tx);
    let mesh = if options.overlay {
        match mesh::Mesh::load_or_create(
            st.dir(),
            overlay.clone(),
            engine.clone(),
            options.overlay_mtu,
        ) {
            Ok(m) => {
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
            match dialer.connect(hello).await {
                Ok((tunnel, welcome)) => {
                    st.mark_registered(&welcome)?;
                    tracing::info!(
                        server = %st.server,
                        host = %welcome.host_name,
                        id = %welcome.host_id,
                        environment = %welcome.environment,
                        "connected to the server"
                    );
                    let ctx = Context {
                        server: st.server.clone(),
                        pin: st.ca_checksum.to_string(),
                        state_dir: st.dir().to_owned(),
                        dialer: dialer.clone(),
                        overlay: overlay.clone(),
                        overlay_port: options.overlay_port,
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
                    tracing::warn!(error = %e, "cannot reach the server");
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
        let delay = backoff.next_delay(u64::from_le_bytes(state::random_bytes::<8>()));
        tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => return Ok(()),
        }
    }
}

/// How a tunnel ended.
enum Ended {
    Refused(CloseReason, String),
    Lost(String),
}

/// What command handlers may know about this agent.
#[derive(Clone)]
struct Context {
    server: String,
    pin: String,
    state_dir: std::path::PathBuf,
    dialer: std::sync::Arc<Dialer>,
    overlay: Option<std::sync::Arc<overlay::Overlay>>,
    overlay_port: u16,
    embedded: bool,
    engine: std::sync::Arc<docker::Engine>,
    mesh: Option<std::sync::Arc<mesh::Mesh>>,
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn to_result<T: serde::Serialize>(r: Result<T, String>) -> CommandResult {
    match r.map(serde_json::to_value) {
        Ok(Ok(value)) => CommandResult::Ok { value },
        Ok(Err(e)) => CommandResult::Failed {
            message: format!("cannot encode the result: {e}"),
        },
        Err(message) => CommandResult::Failed { message },
    }
}

/// Largest piece of log text sent in one stream message.
const STREAM_PIECE: usize = 16 * 1024;

/// Streams a container's logs under the server's credit: never more bytes in flight than it
/// granted, so a slow reader stops the Docker stream instead of growing memory.
async fn stream_logs(
    engine: std::sync::Arc<docker::Engine>,
    command_id: String,
    r: corral_proto::ContainerRef,
    stream_id: String,
    credit: std::sync::Arc<tokio::sync::Semaphore>,
    done_tx: tokio::sync::mpsc::Sender<(String, CommandResult)>,
    out_tx: tokio::sync::mpsc::Sender<AgentMessage>,
) {
    use futures_util::StreamExt;
    let stream = match engine.logs(&r.corral_id, r.follow, r.tail).await {
        Ok(s) => s,
        Err(message) => {
            let _ = done_tx
                .send((command_id, CommandResult::Failed { message }))
                .await;
            return;
        }
    };
    let opened = CommandResult::Ok {
        value: serde_json::json!({ "stream_id": stream_id }),
    };
    if done_tx.send((command_id, opened)).await.is_err() {
        return;
    }
    let mut stream = std::pin::pin!(stream);
    let mut error = None;
    while let Some(item) = stream.next().await {
        let text = match item {
            Ok(t) => t,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(STREAM_PIECE);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, tail) = rest.split_at(cut);
            rest = tail;
            match credit.acquire_many(piece.len() as u32).await {
                Ok(p) => p.forget(),
                Err(_) => return,
            }
            let msg = AgentMessage::StreamData {
                stream_id: stream_id.clone(),
                data: piece.to_owned(),
            };
            if out_tx.send(msg).await.is_err() {
                return;
            }
        }
    }
    let _ = out_tx
        .send(AgentMessage::StreamEnd { stream_id, error })
        .await;
}

/// Carries out one command. Every kind is idempotent.
async fn execute(command: Command, ctx: Context) -> CommandResult {
    match command.kind {
        CommandKind::Doctor => {
            let server_time_ms = command
                .payload
                .get("server_time_ms")
                .and_then(serde_json::Value::as_i64);
            let overlay_port = ctx.overlay.as_ref().and_then(|o| o.port());
            let wanted_overlay_port = ctx.overlay_port;
            let embedded = ctx.embedded;
            let docker_socket = ctx.engine.socket_path().map(std::path::PathBuf::from);
            let overlay = match &ctx.mesh {
                Some(mesh) => mesh.view().await,
                None => doctor::OverlayView::Disabled,
            };
            let checks = tokio::task::spawn_blocking(move || {
                doctor::run(&doctor::DoctorInput {
                    server: &ctx.server,
                    pin: ctx.pin.clone(),
                    server_time_ms,
                    now_ms: now_ms(),
                    docker_socket: docker_socket.as_deref().map_err(String::as_str),
                    overlay_port,
                    wanted_overlay_port,
                    embedded,
                    overlay,
                })
            })
            .await;
            match checks.map(serde_json::to_value) {
                Ok(Ok(value)) => CommandResult::Ok { value },
                Ok(Err(e)) => CommandResult::Failed {
                    message: format!("cannot encode the checks: {e}"),
                },
                Err(e) => CommandResult::Failed {
                    message: format!("the checks failed: {e}"),
                },
            }
        }
        CommandKind::FirewallApply => {
            match serde_json::from_value::<corral_proto::FirewallApply>(command.payload) {
                Ok(req) => firewall::apply(req, ctx.state_dir, &ctx.dialer).await,
                Err(e) => CommandResult::Failed {
                    message: format!("malformed firewall command: {e}"),
                },
            }
        }
        CommandKind::OverlayExpect | CommandKind::OverlaySend => {
            let Some(socket) = ctx.overlay.as_ref() else {
                return CommandResult::Failed {
                    message: format!(
                        "the agent has no overlay socket: UDP port {} could not be bound (see the agent's log)",
                        ctx.overlay_port
                    ),
                };
            };
            let probe = match serde_json::from_value::<corral_proto::OverlayProbe>(command.payload)
            {
                Ok(p) => p,
                Err(e) => {
                    return CommandResult::Failed {
                        message: format!("malformed probe: {e}"),
                    };
                }
            };
            let nonce = match overlay::parse_nonce(&probe.nonce) {
                Ok(n) => n,
                Err(message) => return CommandResult::Failed { message },
            };
            let window = Duration::from_millis(probe.window_ms.clamp(100, 30_000));
            if command.kind == CommandKind::OverlayExpect {
                let received = socket.expect(nonce, window).await;
                CommandResult::Ok {
                    value: serde_json::json!({ "received": received }),
                }
            } else {
                match probe.peer.parse::<std::net::SocketAddr>() {
                    Err(_) => CommandResult::Failed {
                        message: format!("bad peer address {:?}", probe.peer),
                    },
                    Ok(peer) => match socket.send(nonce, peer, window).await {
                        Ok(sent) => CommandResult::Ok {
                            value: serde_json::json!({ "sent": sent }),
                        },
                        Err(message) => CommandResult::Failed { message },
                    },
                }
            }
        }
        CommandKind::ContainerRun => {
            match serde_json::from_value::<corral_proto::ContainerSpec>(command.payload) {
                Ok(spec) => to_result(ctx.engine.run(&spec).await),
                Err(e) => CommandResult::Failed {
                    message: format!("malformed container spec: {e}"),
                },
            }
        }
        CommandKind::ContainerStart | CommandKind::ContainerStop | CommandKind::ContainerRemove => {
            let r = match serde_json::from_value::<corral_proto::ContainerRef>(command.payload) {
                Ok(r) => r,
                Err(e) => {
                    return CommandResult::Failed {
                        message: format!("malformed container reference: {e}"),
                    };
                }
            };
            match command.kind {
                CommandKind::ContainerStart => to_result(ctx.engine.start(&r.corral_id).await),
                CommandKind::ContainerStop => to_result(
                    ctx.engine
                        .stop(&r.corral_id, r.grace_secs.unwrap_or(10))
                        .await,
                ),
                _ => to_result(ctx.engine.remove(&r.corral_id, r.grace_secs).await),
            }
        }
        CommandKind::ImageCheck => {
            match serde_json::from_value::<corral_proto::ImageCheck>(command.payload) {
                Ok(req) => to_result(ctx.engine.missing_images(&req.images).await),
                Err(e) => CommandResult::Failed {
                    message: format!("malformed image check: {e}"),
                },
            }
        }
        CommandKind::StackCleanup => {
            match serde_json::from_value::<corral_proto::StackCleanup>(command.payload) {
                Ok(req) => to_result(ctx.engine.stack_cleanup(&req).await),
                Err(e) => CommandResult::Failed {
                    message: format!("malformed stack cleanup: {e}"),
                },
            }
        }
        // Log streams are opened by the session loop, which owns the stream table.
        CommandKind::ContainerLogs => CommandResult::Failed {
            message: "log streams are opened by the session".into(),
        },
        CommandKind::Unknown => CommandResult::Failed {
            message: format!(
                "this agent ({AGENT_VERSION}) does not know this command kind; upgrade the agent"
            ),
        },
    }
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
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<AgentMessage>(16);
    let mut streams: std::collections::HashMap<
        String,
        (
            std::sync::Arc<tokio::sync::Semaphore>,
            tokio::task::AbortHandle,
        ),
    > = std::collections::HashMap::new();
    let ended = serve_loop(
        &mut tunnel,
        welcome,
        ctx,
        reports_rx,
        &out_tx,
        &mut out_rx,
        &mut streams,
    )
    .await;
    for (_, (_, task)) in streams {
        task.abort();
    }
    ended
}

#[allow(clippy::too_many_arguments)]
async fn serve_loop(
    tunnel: &mut Tunnel,
    welcome: &Welcome,
    ctx: &Context,
    reports_rx: &mut tokio::sync::mpsc::Receiver<corral_proto::Report>,
    out_tx: &tokio::sync::mpsc::Sender<AgentMessage>,
    out_rx: &mut tokio::sync::mpsc::Receiver<AgentMessage>,
    streams: &mut std::collections::HashMap<
        String,
        (
            std::sync::Arc<tokio::sync::Semaphore>,
            tokio::task::AbortHandle,
        ),
    >,
) -> Ended {
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<(String, CommandResult)>(64);
    let mut recent = RecentOutcomes::default();
    let mut running = std::collections::HashSet::new();
    let mut live = Liveness::active(
        std::time::Instant::now(),
        Duration::from_millis(welcome.heartbeat_interval_ms.max(100)),
        Duration::from_millis(welcome.dead_after_ms.max(300)),
    );
    loop {
        let deadline = tokio::time::Instant::from_std(live.next_deadline());
        tokio::select! {
            msg = tunnel.recv() => {
                live.on_receive(std::time::Instant::now());
                match msg {
                    Ok(ServerMessage::Ping { seq }) => {
                        if let Err(e) = tunnel.send(&AgentMessage::Pong { seq }).await {
                            return Ended::Lost(e.to_string());
                        }
                    }
                    Ok(ServerMessage::Pong { seq }) => {
                        live.on_pong(std::time::Instant::now(), seq);
                    }
                    Ok(ServerMessage::Command(command)) => {
                        if let Some(result) = recent.get(&command.id) {
                            let reply = AgentMessage::Reply { command_id: command.id.clone(), result: result.clone() };
                            if let Err(e) = tunnel.send(&reply).await {
                                return Ended::Lost(e.to_string());
                            }
                        } else if command.kind == CommandKind::ContainerLogs && running.insert(command.id.clone()) {
                            match serde_json::from_value::<corral_proto::ContainerRef>(command.payload.clone()) {
                                Ok(r) => {
                                    let stream_id = r.stream_id.clone().unwrap_or_default();
                                    let credit = std::sync::Arc::new(tokio::sync::Semaphore::new(
                                        (r.credit as usize).min(tokio::sync::Semaphore::MAX_PERMITS),
                                    ));
                                    let task = tokio::spawn(stream_logs(
                                        ctx.engine.clone(),
                                        command.id.clone(),
                                        r,
                                        stream_id.clone(),
                                        credit.clone(),
                                        done_tx.clone(),
                                        out_tx.clone(),
                                    ));
                                    streams.insert(stream_id, (credit, task.abort_handle()));
                                }
                                Err(e) => {
                                    let _ = done_tx.try_send((command.id.clone(), CommandResult::Failed {
                                        message: format!("malformed log request: {e}"),
                                    }));
                                }
                            }
                        } else if running.insert(command.id.clone()) {
                            let done_tx = done_tx.clone();
                            let ctx = ctx.clone();
                            tokio::spawn(async move {
                                let id = command.id.clone();
                                let result = execute(command, ctx).await;
                                let _ = done_tx.send((id, result)).await;
                            });
                        }
                    }
                    Ok(ServerMessage::StreamCredit { stream_id, bytes }) => {
                        if let Some((credit, _)) = streams.get(&stream_id) {
                            let room = tokio::sync::Semaphore::MAX_PERMITS - credit.available_permits();
                            credit.add_permits((bytes as usize).min(room).min(16 << 20));
                        }
                    }
                    Ok(ServerMessage::StreamCancel { stream_id }) => {
                        if let Some((_, task)) = streams.remove(&stream_id) {
                            task.abort();
                        }
                    }
                    Ok(ServerMessage::Names(table)) => {
                        if let Some(mesh) = &ctx.mesh {
                            mesh.set_names(table);
                        }
                    }
                    Ok(ServerMessage::Overlay(config)) => {
                        tracing::debug!(?config, "overlay configuration");
                        if let Some(mesh) = &ctx.mesh {
                            mesh.apply(*config).await;
                        }
                    }
                    Ok(ServerMessage::Welcome(_)) => {
                        return Ended::Lost("the server sent a second welcome".into());
                    }
                    Ok(ServerMessage::Goodbye { reason, message }) => {
                        return Ended::Refused(reason, message);
                    }
                    Err(DialError::Refused { reason, message }) => return Ended::Refused(reason, message),
                    Err(e) => return Ended::Lost(e.to_string()),
                }
            }
            Some(report) = reports_rx.recv() => {
                if let Err(e) = tunnel.send(&AgentMessage::Report(report)).await {
                    return Ended::Lost(e.to_string());
                }
            }
            Some(msg) = out_rx.recv() => {
                if let AgentMessage::StreamEnd { stream_id, .. } = &msg {
                    streams.remove(stream_id);
                }
                if let Err(e) = tunnel.send(&msg).await {
                    return Ended::Lost(e.to_string());
                }
            }
            Some((command_id, result)) = done_rx.recv() => {
                running.remove(&command_id);
                recent.insert(command_id.clone(), result.clone());
                if let Err(e) = tunnel.send(&AgentMessage::Reply { command_id, result }).await {
                    return Ended::Lost(e.to_string());
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                match live.poll(std::time::Instant::now()) {
                    Some(Due::Ping(seq)) => {
                        if let Err(e) = tunnel.send(&AgentMessage::Ping { seq }).await {
                            return Ended::Lost(e.to_string());
                        }
                    }
                    Some(Due::Dead) => {
                        return Ended::Lost(format!(
                            "nothing received from the server for {} ms",
                            welcome.dead_after_ms
                        ));
                    }
                    None => {}
                }
            }
        }
    }
}
