//! The corral agent: runs on every host, dials out to the server and never listens.
//!
//! - [`state`]: the state dir: the host's credential (0600) and what it needs to reconnect
//!   without a token.
//! - [`dial`]: one connection attempt: TCP, TLS against the pinned CA, WebSocket, hello.
//! - [`doctor`]: the local checks behind `corral doctor`.
//! - [`firewall`]: `firewall apply`: corral's own nftables table, with a dead-man rollback.
//! - [`overlay`]: the overlay UDP socket (the one port an agent listens on) and its probes.
//! - [`facts`]: what the agent reports about its host.
//! - [`run`]: the agent's life: dial, serve the tunnel, reconnect with backoff, stop for good on
//!   a permanent refusal.
//!
//! Architecture invariant: the agent opens no listening TCP socket; its only listener is the
//! overlay UDP socket. Everything the server wants
//! from it arrives over the tunnel the agent opened.

pub mod dial;
pub mod doctor;
pub mod facts;
pub mod firewall;
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
    /// Runs inside `corral server --with-agent`, whose process also holds the API listener.
    pub embedded: bool,
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
            embedded: false,
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
    let facts = facts::collect(
        st.name.clone(),
        options.labels.clone(),
        overlay.as_ref().and_then(|o| o.port()),
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
                    };
                    Ok(Some(serve(tunnel, &welcome, &ctx).await))
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
            let checks = tokio::task::spawn_blocking(move || {
                doctor::run(&doctor::DoctorInput {
                    server: &ctx.server,
                    pin: ctx.pin.clone(),
                    server_time_ms,
                    now_ms: now_ms(),
                    docker_socket: std::path::Path::new("/var/run/docker.sock"),
                    overlay_port,
                    wanted_overlay_port,
                    embedded,
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
        CommandKind::Unknown => CommandResult::Failed {
            message: format!(
                "this agent ({AGENT_VERSION}) does not know this command kind; upgrade the agent"
            ),
        },
    }
}

/// Serves an established tunnel: heartbeats and commands.
async fn serve(mut tunnel: Tunnel, welcome: &Welcome, ctx: &Context) -> Ended {
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
