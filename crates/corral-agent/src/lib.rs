//! The corral agent: runs on every host, dials out to the server and never listens.
//!
//! - [`state`]: the state dir: the host's credential (0600) and what it needs to reconnect
//!   without a token.
//! - [`dial`]: one connection attempt: TCP, TLS against the pinned CA, WebSocket, hello.
//! - [`facts`]: what the agent reports about its host.
//! - [`run`]: the agent's life: dial, serve the tunnel, reconnect with backoff, stop for good on
//!   a permanent refusal.
//!
//! Architecture invariant: the agent opens no listening socket. Everything the server wants
//! from it arrives over the tunnel the agent opened.

pub mod dial;
pub mod facts;
pub mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use corral_proto::backoff::Backoff;
use corral_proto::liveness::{Due, Liveness};
use corral_proto::{AgentMessage, CloseReason, ServerMessage, Welcome};
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
    let dialer = Dialer::new(&st.server, st.ca_checksum)?;
    let facts = facts::collect(st.name.clone(), options.labels.clone());
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
                    Ok(Some(serve(tunnel, &welcome).await))
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

/// Serves an established tunnel: heartbeats now; commands arrive here later.
async fn serve(mut tunnel: Tunnel, welcome: &Welcome) -> Ended {
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
