//! One agent's tunnel, from the WebSocket upgrade to the close.
//!
//! 1. The first frame must be a [`Hello`] within [`HELLO_TIMEOUT`].
//! 2. Version check, then facts validation, then authentication (registration with a token,
//!    or a known credential) in one datastore transaction.
//! 3. [`Welcome`], then the loop: answer pings, watch for silence, deliver the host's pending
//!    commands from the datastore, pass on queued messages, close when told.
//!
//! Every way out of the loop tells the agent why: a [`ServerMessage::Goodbye`] with the full
//! explanation, then a WebSocket close frame with the reason's code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use corral_proto::liveness::{Due, Liveness};
use corral_proto::secret::{SecretKind, check_secret};
use corral_proto::{
    AgentMessage, Auth, CloseReason, CodecError, Hello, PROTOCOL_VERSION, ServerMessage, Welcome,
};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use crate::secrets::SecretHash;
use crate::state::AppState;
use crate::state::registry::{Capabilities, LinkEnds, Session, links};
use crate::store::{Admitted, AgentAuth, Arrival, HostRow};
use crate::time_fmt::{now_unix, rfc3339};

/// How long a new connection may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the rest of an over-size frame is read and discarded after the close frame.
pub const DISCARD_AFTER_TOO_LARGE: Duration = Duration::from_secs(5);

/// An agent's WebSocket over its upgraded HTTPS connection (see `api::connect`).
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

enum Recv {
    Message(AgentMessage),
    /// The peer closed or the transport failed.
    Gone,
    /// Something we must close the connection for.
    Refuse(CloseReason, String),
}

fn decode(frame: &[u8], limit: usize) -> Recv {
    match corral_proto::decode::<AgentMessage>(frame, limit) {
        Ok(m) => Recv::Message(m),
        Err(CodecError::TooLarge { size, limit }) => Recv::Refuse(
            CloseReason::TooLarge,
            format!("message of {size} bytes exceeds the limit of {limit} bytes"),
        ),
        Err(CodecError::Malformed(e)) => Recv::Refuse(CloseReason::Malformed, e),
    }
}

/// Receives the next protocol message, skipping transport-level pings.
async fn recv(socket: &mut WebSocket, limit: usize) -> Recv {
    loop {
        let msg = match socket.next().await {
            None => return Recv::Gone,
            Some(Err(tungstenite::Error::Capacity(_))) => {
                return Recv::Refuse(
                    CloseReason::TooLarge,
                    format!("a frame exceeded the limit of {limit} bytes"),
                );
            }
            Some(Err(_)) => return Recv::Gone,
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(t) => return decode(t.as_bytes(), limit),
            Message::Binary(_) => {
                return Recv::Refuse(
                    CloseReason::Malformed,
                    "binary frames are not part of the protocol; messages are JSON text".into(),
                );
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => return Recv::Gone,
        }
    }
}

/// The largest WebSocket frame the server writes; longer messages go as several frames (one
/// message to the agent). The WebSocket layer formats a frame whole into a write buffer that
/// keeps its size for the connection's life: one 800 KB overlay configuration (a host joining
/// 4,000 peers) used to leave every connection holding that much, so memory grew with the
/// square of the hosts while they joined. One TLS record's worth (16 KiB) bounds it and adds
/// no framing the TLS layer would not add anyway.
const FRAGMENT_BYTES: usize = 16 * 1024;

/// The metrics' reason for a tunnel that ended because the agent closed it or the connection
/// dropped (no close reason of the server's).
const AGENT_GONE: &str = "agent_gone";

async fn send(socket: &mut WebSocket, msg: &ServerMessage, limit: usize) -> bool {
    match encode_out(msg, limit) {
        Some(text) => send_text(socket, text).await.is_ok(),
        None => false,
    }
}

/// A message as text for the wire, or `None` (logged) when it is over the limit.
fn encode_out(msg: &ServerMessage, limit: usize) -> Option<String> {
    corral_proto::encode(msg, limit)
        .map_err(|e| tracing::error!(error = %e, "refusing to send an oversized message"))
        .ok()
}

/// Writes messages one after the other and flushes once at the end: a batch of commands
/// leaves in one write to the socket (and as few TLS records as fit), not one flush each. A
/// message over a frame goes in frames, each flushed (see [`send_text`]).
async fn send_all(
    socket: &mut WebSocket,
    messages: impl IntoIterator<Item = ServerMessage>,
    limit: usize,
) -> bool {
    for msg in messages {
        let Some(text) = encode_out(&msg, limit) else {
            return false;
        };
        let written = if text.len() <= FRAGMENT_BYTES {
            socket.feed(Message::Text(text.into())).await
        } else {
            send_text(socket, text).await
        };
        if written.is_err() {
            return false;
        }
    }
    socket.flush().await.is_ok()
}

/// Sends one text message, in frames of at most [`FRAGMENT_BYTES`], each flushed before the
/// next is formatted (so only one is ever buffered).
async fn send_text<S>(socket: &mut S, text: String) -> Result<(), tungstenite::Error>
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    if text.len() <= FRAGMENT_BYTES {
        return socket.send(Message::Text(text.into())).await;
    }
    // Frames split the bytes anywhere: the receiver checks the UTF-8 of the whole message.
    let bytes = tungstenite::Bytes::from(text);
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + FRAGMENT_BYTES).min(bytes.len());
        let opcode = if at == 0 { Data::Text } else { Data::Continue };
        let frame = Frame::message(
            bytes.slice(at..end),
            OpCode::Data(opcode),
            end == bytes.len(),
        );
        socket.send(Message::Frame(frame)).await?;
        at = end;
    }
    Ok(())
}

/// Says goodbye with a reason and closes.
async fn close(socket: &mut WebSocket, reason: CloseReason, message: String, limit: usize) {
    let mut message = message;
    message.truncate(message.floor_char_boundary(4096));
    let _ = send(socket, &ServerMessage::Goodbye { reason, message }, limit).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: reason.code().into(),
            reason: reason.as_str().into(),
        })))
        .await;
    if reason == CloseReason::TooLarge {
        discard_input(socket).await;
        return;
    }
    // Give the agent a moment to read the goodbye and answer the close. A superseded agent
    // is alive and must read its reason, or it takes the link as lost and reconnects,
    // superseding the newer one in turn: on a loaded machine 2 s was not always enough (the
    // socket dropped with the goodbye unread), so it gets longer.
    let grace = if reason == CloseReason::Superseded {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(2)
    };
    let _ = tokio::time::timeout(grace, async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// After an over-size frame the WebSocket reader has stopped while the rest of the frame is
/// still arriving, and an agent reads only once it has written the whole frame: dropping the
/// connection now would reset it before the agent sees the goodbye and the close frame (1009).
/// So the rest is read and discarded, unparsed, until the agent closes or
/// [`DISCARD_AFTER_TOO_LARGE`] passes.
async fn discard_input(socket: &mut WebSocket) {
    use tokio::io::AsyncReadExt;
    let io = socket.get_mut();
    let mut buf = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(DISCARD_AFTER_TOO_LARGE, async {
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Serves one agent connection until it ends. `remote` is the agent's address; `peer` what
/// the connection gate knows the connection by (the relaying server's side when relayed).
pub async fn serve(
    state: Arc<AppState>,
    mut socket: WebSocket,
    remote: SocketAddr,
    peer: SocketAddr,
) {
    let limit = state.options.max_message_bytes;
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, recv(&mut socket, limit)).await {
        Err(_) => {
            state
                .metrics
                .tunnel_refused(CloseReason::Malformed.as_str());
            close(
                &mut socket,
                CloseReason::Malformed,
                format!("no hello within {} s", HELLO_TIMEOUT.as_secs()),
                limit,
            )
            .await;
            return;
        }
        Ok(Recv::Gone) => {
            state.metrics.tunnel_refused(AGENT_GONE);
            return;
        }
        Ok(Recv::Refuse(reason, message)) => {
            tracing::warn!(%remote, %reason, %message, "refused a connection before hello");
            state.metrics.tunnel_refused(reason.as_str());
            close(&mut socket, reason, message, limit).await;
            return;
        }
        Ok(Recv::Message(AgentMessage::Hello(h))) => h,
        Ok(Recv::Message(other)) => {
            let message = format!("the first message must be a hello, got {other:?}");
            state
                .metrics
                .tunnel_refused(CloseReason::Malformed.as_str());
            close(&mut socket, CloseReason::Malformed, message, limit).await;
            return;
        }
    };
    let (host, admitted) = match admit(&state, &hello, remote).await {
        Ok(h) => {
            // An authenticated tunnel no longer counts against the cap on unauthenticated
            // connections (and is never closed by it).
            state.gate.authenticated(peer);
            h
        }
        Err((reason, message)) => {
            tracing::warn!(%remote, %reason, %message, "refused an agent");
            state.metrics.tunnel_refused(reason.as_str());
            close(&mut socket, reason, message, limit).await;
            return;
        }
    };
    state.metrics.tunnel_connected();
    run_session(state, socket, remote, host, admitted, &hello).await;
}

/// Checks version, facts and credentials. On success the host is registered or logged in.
async fn admit(
    state: &AppState,
    hello: &Hello,
    remote: SocketAddr,
) -> Result<(HostRow, Admitted), (CloseReason, String)> {
    if !hello.protocol_versions.contains(&PROTOCOL_VERSION) {
        return Err((
            CloseReason::BadVersion,
            format!(
                "this server speaks protocol version {PROTOCOL_VERSION}; the agent offered {:?}. Run an agent of the server's release",
                hello.protocol_versions
            ),
        ));
    }
    if hello.agent_version.len() > corral_proto::limits::FACT_MAX {
        return Err((CloseReason::Malformed, "agent_version is too long".into()));
    }
    hello
        .facts
        .validate()
        .map_err(|e| (CloseReason::Malformed, e))?;
    let (credential, token) = match &hello.auth {
        Auth::Register { token, credential } => {
            check_secret(SecretKind::RegistrationToken, token)
                .map_err(|e| (CloseReason::BadToken, e))?;
            (credential, Some(SecretHash::of(token)))
        }
        Auth::Credential { credential } => (credential, None),
    };
    check_secret(SecretKind::HostCredential, credential)
        .map_err(|e| (CloseReason::BadCredential, e))?;
    let server_error = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "datastore failure while admitting an agent");
        let why = if e.is_unreachable() {
            "the server could not reach its datastore; retrying later"
        } else {
            "the server's datastore failed (see the server log); retrying later"
        };
        (CloseReason::ServerError, why.to_string())
    };
    // A new host that would join the overlay of a range with no subnet left is refused before
    // anything is recorded: let in, it could run no stack container.
    if let (Some(token), Some(_)) = (&token, &hello.facts.overlay_public_key)
        && let Some(env_id) = state
            .store
            .registering_into(&SecretHash::of(credential), token)
            .await
            .map_err(server_error)?
        && let Some(why) = crate::overlay::has_room(state, &env_id)
            .await
            .map_err(server_error)?
    {
        state
            .record_event(
                "overlay_range_full",
                None,
                &format!("refused host {} from {remote}: {why}", hello.facts.name),
            )
            .await;
        return Err((CloseReason::OverlayFull, why));
    }
    let now = now_unix();
    // A registration goes into the audit log in its own transaction (with the host, the
    // token's use and the event): the log's head is held for it, so a connect storm's
    // registrations are one write each, not two.
    let slot = match token {
        Some(_) => state.audit_slot().await,
        None => None,
    };
    let seal = slot.as_ref().map(|slot| {
        move |h: &HostRow| {
            slot.seal(crate::state::audit::server_entry(
                "host_registered",
                Some(&h.id),
                &format!("host {} registered from {remote}", h.name),
                crate::time_fmt::now_unix_millis(),
            ))
        }
    });
    let outcome = state
        .store
        .authenticate_agent(
            &SecretHash::of(credential),
            token.as_ref(),
            &Arrival {
                facts: &hello.facts,
                agent_version: &hello.agent_version,
                remote_addr: &remote.to_string(),
                now,
            },
            seal.as_ref().map(|f| f as crate::store::SealAudit<'_>),
        )
        .await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            // The transaction may or may not have committed: the head is read again.
            if let Some(slot) = slot {
                slot.unknown();
            }
            return Err(server_error(e));
        }
    };
    match outcome {
        AgentAuth::Host(h, admitted) => {
            if let (
                Some(slot),
                Admitted::Registered {
                    audited: Some((seq, hash)),
                    ..
                },
            ) = (slot, &admitted)
            {
                slot.written(*seq, *hash);
            }
            Ok((*h, admitted))
        }
        AgentAuth::Removed {
            host_id,
            name,
            removed_at,
        } => {
            state
                .record_event(
                    "removed_host_refused",
                    Some(&host_id),
                    &format!("removed host {name} tried to connect from {remote}"),
                )
                .await;
            Err((
                CloseReason::HostRemoved,
                format!(
                    "host {name} ({host_id}) was removed at {}; its credential is revoked. To bring it back, delete the agent's state dir and register it again with a new token",
                    rfc3339(removed_at)
                ),
            ))
        }
        AgentAuth::UnknownCredential => Err((
            CloseReason::BadCredential,
            "unknown agent credential: this host is not registered with this server (was the server's data dir reset?). Register again with `corral agent --token …`".into(),
        )),
        AgentAuth::TokenRefused(why) => Err((CloseReason::BadToken, why)),
        AgentAuth::NameTaken { name, host_id } => Err((
            CloseReason::NameTaken,
            format!(
                "a host named {name} is already registered in this environment ({host_id}); remove it with `corral host rm {name}` or start this agent with another --name"
            ),
        )),
    }
}

async fn run_session(
    state: Arc<AppState>,
    mut socket: WebSocket,
    remote: SocketAddr,
    host: HostRow,
    admitted: Admitted,
    hello: &Hello,
) {
    let overlay_port = hello.facts.overlay_port;
    let overlay_public_key = hello.facts.overlay_public_key.as_deref();
    let capabilities = Capabilities {
        overlay_deltas: hello.overlay_deltas,
        network_policy: hello.network_policy,
    };
    let limit = state.options.max_message_bytes;
    let environment = match &admitted {
        Admitted::Registered { environment, .. } => environment.clone(),
        Admitted::Known => match state.store.environment_by_id(&host.environment_id).await {
            Ok(Some(e)) => e.name,
            _ => host.environment_id.clone(),
        },
    };
    let conn_id = state.registry.next_conn_id();
    let (links, mut ends) = links();
    let last_rx = Arc::new(AtomicI64::new(now_unix()));
    let previous = state.registry.attach(
        &host.id,
        Session {
            conn_id,
            remote: remote.to_string(),
            connected_at: now_unix(),
            last_rx: last_rx.clone(),
            links,
            overlay_port,
            docker: None,
            environment_id: host.environment_id.clone(),
            capabilities,
            host_name: host.name.clone(),
            overlay: None,
        },
    );
    if let Some(old) = previous {
        let message = format!(
            "another agent connected with this host's credential from {remote}; this connection (from {}) is closed. If that was not a restart of this agent, the credential was copied: remove the host and register it again",
            old.remote
        );
        old.links
            .close
            .send_replace(Some((CloseReason::Superseded, message)));
        state.record_event("credential_superseded",
                Some(&host.id),
                &format!(
                    "host {} connected from {remote} while its tunnel from {} was live; the older tunnel was closed",
                    host.name, old.remote
                ),
            )
            .await;
    }
    tracing::info!(host = %host.name, id = %host.id, %remote, "agent connected");
    if let Err(e) =
        crate::overlay::on_connect(&state, &host, overlay_public_key, overlay_port, remote).await
    {
        tracing::error!(host = %host.name, error = %e, "cannot record the host's overlay facts");
    }
    let welcome = ServerMessage::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        host_id: host.id.clone(),
        host_name: host.name.clone(),
        environment,
        heartbeat_interval_ms: state.options.heartbeat_interval.as_millis() as u64,
        dead_after_ms: state.options.dead_after.as_millis() as u64,
        max_message_bytes: limit,
        overlay_stats: true,
        servers: state.servers.urls(),
    });
    let mut ended = AGENT_GONE;
    if send(&mut socket, &welcome, limit).await {
        // A host registered just now has no command yet; one queued since wakes the loop.
        let maybe_commands = admitted == Admitted::Known;
        let reason = session_loop(
            &state,
            &host.id,
            conn_id,
            &mut socket,
            &mut ends,
            &last_rx,
            maybe_commands,
        )
        .await;
        if let Some((reason, message)) = reason {
            tracing::info!(host = %host.name, %reason, %message, "closing tunnel");
            ended = reason.as_str();
            close(&mut socket, reason, message, limit).await;
        }
    }
    state.metrics.tunnel_disconnected(ended);
    state.registry.detach(&host.id, conn_id);
    crate::state::streams::end_host(&state, &host.id);
    let _ = state
        .store
        .touch_host(&host.id, last_rx.load(Ordering::Relaxed))
        .await;
    tracing::info!(host = %host.name, id = %host.id, "agent disconnected");
}

/// Runs until the link ends. Returns the reason to give the agent, if it should be told one.
/// Replies of one session queued or being recorded, at most.
const REPLIES_QUEUED: usize = 256;

async fn session_loop(
    state: &Arc<AppState>,
    host_id: &str,
    conn_id: u64,
    socket: &mut WebSocket,
    ends: &mut LinkEnds,
    last_rx: &AtomicI64,
    maybe_commands: bool,
) -> Option<(CloseReason, String)> {
    let limit = state.options.max_message_bytes;
    let mut live = Liveness::passive(std::time::Instant::now(), state.options.dead_after);
    let mut shutdown = state.shutdown.clone();
    if *shutdown.borrow() {
        return Some((
            CloseReason::ServerShutdown,
            "the server is shutting down".into(),
        ));
    }
    // Cut off from the datastore (see `Store::cut_off`) with other servers to go to: the
    // agent goes to one of them. A server alone keeps its agents through an outage.
    let mut cut_off = state.store.cut_off();
    if *cut_off.borrow_and_update() && state.servers.has_others() {
        return Some((CloseReason::ServerError, CUT_OFF.into()));
    }
    // Everything pending goes out on this connection, what an earlier one wrote and never
    // heard answered included (agents carry out a redelivered command idempotently). A host
    // registered just now has none to look for.
    let mut delivery = crate::dispatch::Delivery::new(state, host_id);
    let mut more_commands = maybe_commands;
    // Replies are recorded by a task of their own, as many at a time as have arrived (each
    // waits for its group commit: one after the other, a host's thousand replies waited a
    // thousand commits), their effects in the order they came. It ends with the session,
    // once what was queued is written.
    let (replies, mut queued) =
        tokio::sync::mpsc::channel::<(String, corral_proto::CommandResult)>(REPLIES_QUEUED);
    {
        let state = state.clone();
        let host_id = host_id.to_owned();
        // It takes answered commands out of the session's outstanding ones, and wakes the
        // session when that makes room in its full window.
        let answers = delivery.answers();
        let wake = ends.commands.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(REPLIES_QUEUED);
            while queued.recv_many(&mut batch, REPLIES_QUEUED).await > 0 {
                let replies = std::mem::take(&mut batch);
                if crate::dispatch::on_replies(&state, &host_id, replies, &answers).await {
                    wake.notify_one();
                }
            }
        });
    }
    loop {
        // Drain the host's pending commands a batch at a time, each written (and so waited
        // for) before the next is read, at most `dispatch::WINDOW` unanswered: the datastore
        // is the queue, memory here is bounded, the socket applies backpressure. Outside the
        // select below, so that a batch counted as written is never cancelled halfway by
        // another event.
        if more_commands {
            match delivery.next_batch().await {
                Ok(taken) => {
                    more_commands = taken.more;
                    let commands = taken.commands.into_iter().map(ServerMessage::Command);
                    if !send_all(socket, commands, limit).await {
                        return None;
                    }
                }
                Err(e) => {
                    // Retried on the next wake-up or reconnect; the commands stay pending.
                    tracing::error!(error = %e, "cannot read a host's pending commands");
                    more_commands = false;
                }
            }
        }
        let deadline = Instant::from_std(live.next_deadline());
        tokio::select! {
            r = recv(socket, limit) => match r {
                Recv::Gone => return None,
                Recv::Refuse(reason, message) => return Some((reason, message)),
                Recv::Message(AgentMessage::Ping { seq }) => {
                    live.on_receive(std::time::Instant::now());
                    last_rx.store(now_unix(), Ordering::Relaxed);
                    if !send(socket, &ServerMessage::Pong { seq }, limit).await {
                        return None;
                    }
                }
                Recv::Message(AgentMessage::Pong { .. }) => {
                    live.on_receive(std::time::Instant::now());
                    last_rx.store(now_unix(), Ordering::Relaxed);
                }
                Recv::Message(AgentMessage::Reply { command_id, result }) => {
                    live.on_receive(std::time::Instant::now());
                    last_rx.store(now_unix(), Ordering::Relaxed);
                    // To the session's reply writer (a full queue stops this loop reading:
                    // backpressure to the agent).
                    if replies.send((command_id, result)).await.is_err() {
                        tracing::error!(host = %host_id, "the session's reply writer is gone");
                    }
                }
                Recv::Message(AgentMessage::Report(report)) => {
                    live.on_receive(std::time::Instant::now());
                    last_rx.store(now_unix(), Ordering::Relaxed);
                    crate::containers::on_report(state, host_id, conn_id, report).await;
                }
                Recv::Message(AgentMessage::StreamData { stream_id, data }) => {
                    live.on_receive(std::time::Instant::now());
                    last_rx.store(now_unix(), Ordering::Relaxed);
                    crate::state::streams::on_data(state, host_id, &stream_id, data);
                }
                Recv::Message(AgentMessage::StreamEnd { stream_id, error }) => {
                    live.on_receive(std::time::Instant::now());
                    crate::state::streams::on_end(state, host_id, &stream_id, error);
                }
                Recv::Message(AgentMessage::Hello(_)) => {
                    return Some((CloseReason::Malformed, "hello sent twice".into()));
                }
            },
            _ = ends.commands.notified() => more_commands = true,
            // More commands wait: go round again (after anything else that is ready).
            _ = std::future::ready(()), if more_commands => {}
            changed = ends.close.changed() => {
                let order = ends.close.borrow_and_update().clone();
                match (changed, order) {
                    (_, Some(order)) => return Some(order),
                    (Err(_), None) => return None,
                    (Ok(()), None) => {}
                }
            }
            message = ends.messages.recv() => match message {
                Some(message) => {
                    if !send(socket, &message, limit).await {
                        return None;
                    }
                }
                None => return None,
            },
            _ = tokio::time::sleep_until(deadline) => {
                if live.poll(std::time::Instant::now()) == Some(Due::Dead) {
                    return Some((
                        CloseReason::HeartbeatTimeout,
                        format!("nothing received for {} s", state.options.dead_after.as_secs()),
                    ));
                }
            }
            _ = shutdown.changed() => {
                return Some((
                    CloseReason::ServerShutdown,
                    "the server is shutting down; reconnect with backoff".into(),
                ));
            }
            Ok(()) = cut_off.changed() => {
                if *cut_off.borrow_and_update() && state.servers.has_others() {
                    return Some((CloseReason::ServerError, CUT_OFF.into()));
                }
            }
        }
    }
}

/// Why an agent is sent away while its server cannot reach the datastore.
const CUT_OFF: &str = "this server is cut off from its datastore; reconnect (another server of the deployment may be active)";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio_tungstenite::WebSocketStream;
    use tungstenite::protocol::{Role, WebSocketConfig};

    /// A long message arrives whole at a receiver that refuses any frame over
    /// `FRAGMENT_BYTES`: it went as several frames. A short one is one frame, as before.
    #[tokio::test]
    async fn long_messages_go_in_frames_of_at_most_sixteen_kib() {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let mut server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let config = WebSocketConfig::default()
            .max_frame_size(Some(FRAGMENT_BYTES))
            .max_message_size(Some(1 << 20));
        let mut client =
            WebSocketStream::from_raw_socket(client_io, Role::Client, Some(config)).await;
        // Multi-byte characters across frame boundaries: the receiver checks the whole.
        let long: String = "é peer ".repeat(20_000);
        let short = "hello".to_string();
        let sent = (long.clone(), short.clone());
        let writer = tokio::spawn(async move {
            send_text(&mut server, sent.0).await.unwrap();
            send_text(&mut server, sent.1).await.unwrap();
            server
        });
        let first = client.next().await.unwrap().unwrap();
        assert_eq!(first.into_text().unwrap().as_str(), long);
        let second = client.next().await.unwrap().unwrap();
        assert_eq!(second.into_text().unwrap().as_str(), short);
        writer.await.unwrap();
    }
}
