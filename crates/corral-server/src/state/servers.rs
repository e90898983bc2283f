//! The deployment's servers as agents are told of them (the welcome's `servers`), and the
//! active server's loop that keeps its own row in the datastore fresh (`store::servers`).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use corral_proto::MAX_SERVERS;

use super::AppState;
use crate::store::ServerRow;

/// How often the active server refreshes its row and rereads the others'.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// A server silent for longer is not listed to agents.
const LISTED_FOR_MS: i64 = 30_000;

/// The servers seen lately as of the last refresh (at most `REFRESH_EVERY` old), this one
/// first: what the welcome lists, what `GET /v1/servers` shows, and what decides whether
/// agents have somewhere else to go.
pub struct ServerList {
    own: ServerRow,
    rows: RwLock<Arc<Vec<ServerRow>>>,
}

impl ServerList {
    pub fn new(own: &ServerRow) -> ServerList {
        ServerList {
            own: own.clone(),
            rows: RwLock::new(Arc::new(vec![own.clone()])),
        }
    }

    /// The servers as of the last refresh, this one first.
    pub fn rows(&self) -> Arc<Vec<ServerRow>> {
        match self.rows.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Their distinct advertised URLs, this server's first, at most `MAX_SERVERS`: what the
    /// welcome lists.
    pub fn urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = Vec::new();
        for r in self.rows().iter() {
            if urls.len() >= MAX_SERVERS {
                break;
            }
            if !urls.contains(&r.advertise_url) {
                urls.push(r.advertise_url.clone());
            }
        }
        urls
    }

    /// Whether other servers of the deployment were seen lately.
    pub fn has_others(&self) -> bool {
        self.rows().len() > 1
    }

    /// Replaces the list with this server and `rows` (this server's own among them is
    /// skipped: it goes first).
    pub fn set(&self, rows: &[ServerRow]) {
        let mut all = vec![self.own.clone()];
        all.extend(rows.iter().filter(|r| r.id != self.own.id).cloned());
        if let Some(mine) = rows.iter().find(|r| r.id == self.own.id) {
            all[0] = mine.clone();
        }
        match self.rows.write() {
            Ok(mut r) => *r = Arc::new(all),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(all),
        }
    }
}

/// While this server runs: refreshes its row as the active one and rereads the servers seen
/// lately. A failure is logged and tried again next time (the list keeps what it held).
pub async fn keep_claim(state: Arc<AppState>, mut me: ServerRow) {
    loop {
        let now = crate::time_fmt::now_unix_millis();
        me.seen_at = now;
        let read = match state.store.claim_active(&me).await {
            Ok(()) => state.store.servers_seen_since(now - LISTED_FOR_MS).await,
            Err(e) => Err(e),
        };
        match read {
            Ok(rows) => state.servers.set(&rows),
            Err(e) => tracing::warn!(error = %e, "cannot refresh the list of servers"),
        }
        tokio::time::sleep(REFRESH_EVERY).await;
    }
}
