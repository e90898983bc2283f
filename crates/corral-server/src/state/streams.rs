//! Byte streams from agents (container logs) to HTTP responses, under credit-based flow
//! control.
//!
//! The server grants an agent [`INITIAL_CREDIT`] bytes when it opens a stream, and grants more
//! only as the HTTP response body hands bytes to the client. A slow or stopped reader therefore
//! stops the agent (which stops reading Docker's log stream): nothing grows without bound on
//! either side. An agent that sends more than it was granted, or data for a stream of another
//! host, has its stream cancelled and the violation recorded (rate limited per host, the
//! stream id cut to `text::MAX_ID`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use corral_proto::ServerMessage;
use tokio::sync::mpsc;

use crate::state::AppState;
use crate::state::registry::Queued;
use crate::text::{MAX_ID, quoted};

/// Bytes an agent may send before the reader has taken any.
pub const INITIAL_CREDIT: u64 = 64 * 1024;

struct Entry {
    host_id: String,
    tx: mpsc::UnboundedSender<Result<Bytes, String>>,
    /// Granted and not yet received.
    outstanding: u64,
}

#[derive(Default)]
pub struct Streams {
    map: Mutex<HashMap<String, Entry>>,
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Registers a stream from `host_id`; returns its id and the receiving end.
pub fn open(
    state: &AppState,
    host_id: &str,
) -> (String, mpsc::UnboundedReceiver<Result<Bytes, String>>) {
    let id = crate::secrets::new_id("stream");
    let (tx, rx) = mpsc::unbounded_channel();
    state.streams.lock().insert(
        id.clone(),
        Entry {
            host_id: host_id.to_owned(),
            tx,
            outstanding: INITIAL_CREDIT,
        },
    );
    (id, rx)
}

fn violation(state: &AppState, host_id: &str, what: String) {
    // Rate limited per host: what is only counted is logged and recorded in a summary when
    // its window ends.
    let admitted = state.admit_event("stream_violation", Some(host_id), &what);
    if admitted.recorded {
        tracing::warn!(host = %host_id, "{what}");
    }
    if admitted.rows.is_empty() {
        return;
    }
    let store = state.store.clone();
    tokio::spawn(async move {
        for r in admitted.rows {
            if let Err(e) = store
                .record_event(r.at, &r.kind, r.host_id.as_deref(), &r.message)
                .await
            {
                tracing::error!(error = %e, "cannot record a stream violation");
            }
        }
    });
}

/// Data from an agent.
pub fn on_data(state: &Arc<AppState>, host_id: &str, stream_id: &str, data: String) {
    let mut map = state.streams.lock();
    let Some(entry) = map.get_mut(stream_id) else {
        // A stream that just ended or was cancelled; data may still be in flight.
        return;
    };
    if entry.host_id != host_id {
        drop(map);
        violation(
            state,
            host_id,
            format!(
                "host {host_id} sent data for stream {} of another host; dropped",
                quoted(stream_id, MAX_ID)
            ),
        );
        return;
    }
    let len = data.len() as u64;
    if len > entry.outstanding {
        let entry = map.remove(stream_id);
        drop(map);
        if let Some(e) = entry {
            let _ =
                e.tx.send(Err("the agent exceeded its stream credit".into()));
        }
        cancel_on_agent(state, host_id, stream_id);
        violation(
            state,
            host_id,
            format!(
                "host {host_id} sent {len} bytes on stream {} beyond its credit; stream cancelled",
                quoted(stream_id, MAX_ID)
            ),
        );
        return;
    }
    entry.outstanding -= len;
    let _ = entry.tx.send(Ok(Bytes::from(data)));
}

/// The agent ended a stream.
pub fn on_end(state: &AppState, host_id: &str, stream_id: &str, error: Option<String>) {
    let mut map = state.streams.lock();
    if map.get(stream_id).is_some_and(|e| e.host_id == host_id)
        && let Some(entry) = map.remove(stream_id)
        && let Some(e) = error
    {
        let _ = entry.tx.send(Err(e));
    }
}

/// A host's tunnel closed: its streams end with an error.
pub fn end_host(state: &AppState, host_id: &str) {
    let mut map = state.streams.lock();
    let ids: Vec<String> = map
        .iter()
        .filter(|(_, e)| e.host_id == host_id)
        .map(|(id, _)| id.clone())
        .collect();
    for id in ids {
        if let Some(e) = map.remove(&id) {
            let _ = e.tx.send(Err("the host disconnected".into()));
        }
    }
}

fn cancel_on_agent(state: &Arc<AppState>, host_id: &str, stream_id: &str) {
    let cancel = ServerMessage::StreamCancel {
        stream_id: stream_id.to_owned(),
    };
    if state.registry.try_send(host_id, cancel.clone()) == Queued::Full {
        // The session's queue is full: wait for room rather than lose the cancellation (one
        // task per stream at most, and it ends when the session takes it or goes away).
        let state = state.clone();
        let host_id = host_id.to_owned();
        tokio::spawn(async move {
            state.registry.send(&host_id, cancel).await;
        });
    }
}

/// The reader took `bytes`: let the agent send that many more. Waits for room in the
/// session's queue, so a congested session slows the reader instead of losing the credit.
async fn grant(state: &AppState, stream_id: &str, bytes: u64) {
    let host = {
        let mut map = state.streams.lock();
        let Some(e) = map.get_mut(stream_id) else {
            return;
        };
        e.outstanding += bytes;
        e.host_id.clone()
    };
    let credit = ServerMessage::StreamCredit {
        stream_id: stream_id.to_owned(),
        bytes,
    };
    state.registry.send(&host, credit).await;
}

/// Cancels the stream when the HTTP body is dropped (client gone or finished).
struct CancelOnDrop {
    state: Arc<AppState>,
    stream_id: String,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let entry = self.state.streams.lock().remove(&self.stream_id);
        if let Some(e) = entry {
            cancel_on_agent(&self.state, &e.host_id, &self.stream_id);
        }
    }
}

/// The HTTP body of a stream: yields what the agent sends and grants credit as it goes.
pub fn body(
    state: Arc<AppState>,
    stream_id: String,
    rx: mpsc::UnboundedReceiver<Result<Bytes, String>>,
) -> axum::body::Body {
    let guard = CancelOnDrop {
        state: state.clone(),
        stream_id: stream_id.clone(),
    };
    let stream = futures_util::stream::unfold((rx, guard, false), move |(mut rx, guard, done)| {
        let state = state.clone();
        async move {
            if done {
                return None;
            }
            match rx.recv().await {
                Some(Ok(bytes)) => {
                    grant(&state, &guard.stream_id, bytes.len() as u64).await;
                    Some((Ok::<Bytes, std::io::Error>(bytes), (rx, guard, false)))
                }
                Some(Err(e)) => Some((
                    Ok(Bytes::from(format!("\n[corral] log stream ended: {e}\n"))),
                    (rx, guard, true),
                )),
                None => None,
            }
        }
    });
    axum::body::Body::from_stream(stream)
}
