//! Which hosts have a live tunnel, and a way to reach that tunnel's session task.
//!
//! Two connections presenting the same credential: the newer one wins. The older session is
//! closed with [`CloseReason::Superseded`] and a security event is recorded. The common cause is
//! benign (an agent reconnecting before the server noticed its old link died), and then the old
//! link is already gone and nobody hears the close. If the state dir was copied to a second
//! machine, the agent that is kicked out hears "superseded", which is permanent, and stops: the
//! two never flap, and the operator sees the event.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use corral_proto::{CloseReason, ServerMessage};
use tokio::sync::{Notify, mpsc, watch};

/// How many messages (stream credit, overlay configurations, name tables) may wait for one
/// session's socket. Commands do not go through this queue: they wait in the datastore.
pub const QUEUE_DEPTH: usize = 64;

/// Why a session should close, once it is asked to.
pub type CloseOrder = Option<(CloseReason, String)>;

/// The three ways to reach a session task, none of which can lose an order:
/// - commands wait in the datastore; `commands` only says "look again" (wake-ups coalesce);
/// - a close order replaces any earlier one (`watch`), so it never waits for room;
/// - other messages go through a bounded queue: a sender either waits for room
///   ([`Registry::send`]) or is told the queue is full ([`Registry::try_send`]) and keeps the
///   message to send again (the overlay sync does, on its next tick).
pub struct Links {
    pub commands: Arc<Notify>,
    pub close: watch::Sender<CloseOrder>,
    pub messages: mpsc::Sender<ServerMessage>,
}

/// The session task's ends of its [`Links`].
pub struct LinkEnds {
    pub commands: Arc<Notify>,
    pub close: watch::Receiver<CloseOrder>,
    pub messages: mpsc::Receiver<ServerMessage>,
}

/// A session's links and the task's ends of them.
pub fn links() -> (Links, LinkEnds) {
    let commands = Arc::new(Notify::new());
    let (close_tx, close_rx) = watch::channel(None);
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    (
        Links {
            commands: commands.clone(),
            close: close_tx,
            messages: tx,
        },
        LinkEnds {
            commands,
            close: close_rx,
            messages: rx,
        },
    )
}

/// What became of a message handed to a session without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// In the session's queue.
    Yes,
    /// The queue is full: send it again later.
    Full,
    /// The host has no live session.
    NotConnected,
}

/// One live tunnel.
pub struct Session {
    pub conn_id: u64,
    pub remote: String,
    pub connected_at: i64,
    /// Unix seconds of the last frame received; updated by the session task.
    pub last_rx: Arc<AtomicI64>,
    pub links: Links,
    /// The agent's overlay UDP port, as it reported it.
    pub overlay_port: Option<u16>,
    /// Docker on the host, as the agent last reported.
    pub docker: Option<corral_proto::api::DockerView>,
    /// The host's environment (a host never changes environment).
    pub environment_id: String,
    /// What the agent said it can do in its hello.
    pub capabilities: Capabilities,
    /// The host's name (for the metrics' labels).
    pub host_name: String,
    /// The host's encrypted overlay, as the agent last reported it.
    pub overlay: Option<corral_proto::OverlayStats>,
}

/// What an agent said it can do in its hello (agents of earlier releases say less).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// It applies overlay deltas.
    pub overlay_deltas: bool,
    /// It enforces network policies.
    pub network_policy: bool,
}

/// A live session as the overlay sync sees it.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub host_id: String,
    pub conn_id: u64,
    pub environment_id: String,
    pub capabilities: Capabilities,
}

/// What others may know of a live session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub docker: Option<corral_proto::api::DockerView>,
    pub overlay_port: Option<u16>,
    pub remote: String,
    pub connected_at: i64,
    pub last_rx: i64,
}

#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Session>>,
    next_conn: AtomicU64,
    /// Bumped by every attach and detach, so a loop can tell in O(1) that the set of live
    /// sessions is the one it last saw.
    changes: AtomicU64,
}

impl Registry {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `session` the live session of `host_id`, returning the one it replaces.
    pub fn attach(&self, host_id: &str, session: Session) -> Option<Session> {
        let old = self.lock().insert(host_id.to_owned(), session);
        self.changes.fetch_add(1, Ordering::Release);
        old
    }

    /// Forgets the session of `host_id` if it is still `conn_id` (a newer one stays).
    pub fn detach(&self, host_id: &str, conn_id: u64) {
        let mut map = self.lock();
        if map.get(host_id).is_some_and(|s| s.conn_id == conn_id) {
            map.remove(host_id);
            self.changes.fetch_add(1, Ordering::Release);
        }
    }

    /// Changes so far to the set of live sessions (see `changes`).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Every live session with its environment.
    pub fn live_sessions(&self) -> Vec<LiveSession> {
        self.lock()
            .iter()
            .map(|(h, s)| LiveSession {
                host_id: h.clone(),
                conn_id: s.conn_id,
                environment_id: s.environment_id.clone(),
                capabilities: s.capabilities,
            })
            .collect()
    }

    pub fn info(&self, host_id: &str) -> Option<SessionInfo> {
        self.lock().get(host_id).map(|s| SessionInfo {
            docker: s.docker.clone(),
            overlay_port: s.overlay_port,
            remote: s.remote.clone(),
            connected_at: s.connected_at,
            last_rx: s.last_rx.load(Ordering::Relaxed),
        })
    }

    /// Records Docker's state on a connected host.
    pub fn set_docker(&self, host_id: &str, conn_id: u64, docker: corral_proto::api::DockerView) {
        if let Some(s) = self.lock().get_mut(host_id)
            && s.conn_id == conn_id
        {
            s.docker = Some(docker);
        }
    }

    /// Records what a connected host's agent reported of its overlay.
    pub fn set_overlay(&self, host_id: &str, conn_id: u64, stats: corral_proto::OverlayStats) {
        if let Some(s) = self.lock().get_mut(host_id)
            && s.conn_id == conn_id
        {
            s.overlay = Some(stats);
        }
    }

    /// Every connected host whose agent reported its overlay: (host name, figures).
    pub fn overlay_stats(&self) -> Vec<(String, corral_proto::OverlayStats)> {
        self.lock()
            .values()
            .filter_map(|s| s.overlay.map(|o| (s.host_name.clone(), o)))
            .collect()
    }

    /// Every live session: (host id, connection id).
    pub fn connected(&self) -> Vec<(String, u64)> {
        self.lock()
            .iter()
            .map(|(h, s)| (h.clone(), s.conn_id))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the live session of `host_id` to close with `reason`. Returns whether one was live.
    pub fn close(&self, host_id: &str, reason: CloseReason, message: String) -> bool {
        match self.lock().get(host_id) {
            Some(s) => {
                s.links.close.send_replace(Some((reason, message)));
                true
            }
            None => false,
        }
    }

    /// Tells the live session of `host_id`, if any, that the datastore holds commands for it.
    pub fn wake_commands(&self, host_id: &str) {
        if let Some(s) = self.lock().get(host_id) {
            s.links.commands.notify_one();
        }
    }

    /// Whether the live session of `host_id` has room for one more message now (a loop that
    /// would build a large message for it checks first, and tries again on a later pass).
    pub fn has_room(&self, host_id: &str) -> bool {
        self.lock()
            .get(host_id)
            .is_some_and(|s| s.links.messages.capacity() > 0)
    }

    /// Queues a message for the live session of `host_id` without waiting.
    pub fn try_send(&self, host_id: &str, message: ServerMessage) -> Queued {
        match self.lock().get(host_id) {
            Some(s) => match s.links.messages.try_send(message) {
                Ok(()) => Queued::Yes,
                Err(mpsc::error::TrySendError::Full(_)) => Queued::Full,
                Err(mpsc::error::TrySendError::Closed(_)) => Queued::NotConnected,
            },
            None => Queued::NotConnected,
        }
    }

    /// Queues a message for the live session of `host_id`, waiting for room (backpressure).
    /// Returns whether a session took it.
    pub async fn send(&self, host_id: &str, message: ServerMessage) -> bool {
        let tx = self.lock().get(host_id).map(|s| s.links.messages.clone());
        match tx {
            Some(tx) => tx.send(message).await.is_ok(),
            None => false,
        }
    }
}
