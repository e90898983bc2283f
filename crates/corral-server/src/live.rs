//! The loop behind the web UI's live feed ([`crate::state::live`]): once a second, while any
//! browser follows the feed, one read of a few counters (no table is scanned: change
//! counters, the newest event's number, the stacks' last changes) and the registry's
//! generation; followers hear of a change within about a second.

use std::sync::Arc;
use std::time::Duration;

use crate::state::AppState;
use crate::state::live::LiveStamp;

const TICK: Duration = Duration::from_secs(1);

pub async fn run(state: Arc<AppState>) {
    let mut shutdown = state.shutdown.clone();
    loop {
        if state.live.followed() {
            match state.store.live_counters().await {
                Ok(c) => state.live.observe(LiveStamp {
                    counters: c.counters,
                    sessions: state.registry.changes(),
                    last_event: c.last_event,
                    stacks: c.stacks,
                }),
                // Followers are not told of a change that did not happen; the next tick reads
                // again.
                Err(e) => tracing::warn!(error = %e, "cannot read the live feed's counters"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
