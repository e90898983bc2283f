//! Security and audit events on their way to the datastore, bounded three ways:
//!
//! - **size**: a message is cut to `store::MAX_EVENT_MESSAGE` bytes (the store cuts whatever
//!   reaches it; callers cut the ids and names they quote to `text::MAX_ID`);
//! - **rate**: at most `--event-rate-limit` events of one kind from one host (or of one kind
//!   from the server itself) are recorded one by one per window (a minute by default). The
//!   rest are counted, and when the window ends one summary event of the same kind says how
//!   many there were ("… and 5,123 more forged_reply events from host h-… in the minute from
//!   …"). Nothing is dropped without a count. The table of windows holds at most
//!   [`MAX_TRACKED`] (host, kind) pairs; beyond that, events share one overflow window, whose
//!   summary says so;
//! - **time and rows**: [`run`] deletes events older than `--event-retention` and the oldest
//!   beyond `--event-max-rows`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::AppState;
use crate::store::MAX_EVENT_MESSAGE;
use crate::text::{clip, thousands};
use crate::time_fmt::{now_unix, rfc3339};

/// Most (host, kind) pairs with a window at once.
pub const MAX_TRACKED: usize = 10_000;

/// How often ended windows are summarised.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the events table is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    host_id: Option<String>,
    kind: String,
}

#[derive(Debug)]
struct Window {
    /// Unix seconds.
    start: i64,
    recorded: u32,
    suppressed: u64,
}

impl Window {
    fn new(start: i64) -> Window {
        Window {
            start,
            recorded: 0,
            suppressed: 0,
        }
    }

    /// True when the event is recorded one by one; false when it is only counted.
    fn take(&mut self, limit: u32) -> bool {
        if self.recorded < limit {
            self.recorded += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[derive(Default)]
struct Inner {
    windows: HashMap<Key, Window>,
    /// Shared by every pair that found the table full.
    overflow: Option<Window>,
}

/// An event to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub at: i64,
    pub kind: String,
    pub host_id: Option<String>,
    pub message: String,
}

/// What became of one event.
#[derive(Debug, Default)]
pub struct Admitted {
    /// Recorded one by one (else only counted, for a later summary).
    pub recorded: bool,
    /// What to write now: a summary of the pair's previous window, and the event itself.
    pub rows: Vec<EventRecord>,
}

/// The rate limiter of events (see the module documentation).
pub struct EventLimiter {
    limit: u32,
    /// Seconds, at least 1.
    window: i64,
    inner: Mutex<Inner>,
    pub(crate) wake: Notify,
}

impl EventLimiter {
    /// At most `limit` events per (host, kind) and `window` recorded one by one.
    pub fn new(limit: u32, window: Duration) -> EventLimiter {
        EventLimiter {
            limit,
            window: i64::try_from(window.as_secs()).unwrap_or(i64::MAX).max(1),
            inner: Mutex::default(),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Decides about one event of `kind` from `host_id` at `now` (unix seconds).
    pub fn admit(&self, kind: &str, host_id: Option<&str>, message: &str, now: i64) -> Admitted {
        let key = Key {
            host_id: host_id.map(str::to_owned),
            kind: kind.to_owned(),
        };
        let mut inner = self.lock();
        let mut rows = Vec::new();
        let window = self.window;
        let ended = |w: &Window| now >= w.start.saturating_add(window);
        if inner.windows.get(&key).is_some_and(ended)
            && let Some(w) = inner.windows.remove(&key)
            && w.suppressed > 0
        {
            rows.push(self.summary(Some(&key), &w, now));
        }
        if !inner.windows.contains_key(&key) && inner.windows.len() >= MAX_TRACKED {
            rows.extend(self.sweep(&mut inner, now));
        }
        let recorded = if let Some(w) = inner.windows.get_mut(&key) {
            w.take(self.limit)
        } else if inner.windows.len() < MAX_TRACKED {
            let mut w = Window::new(now);
            let taken = w.take(self.limit);
            inner.windows.insert(key, w);
            taken
        } else {
            if inner.overflow.as_ref().is_some_and(ended)
                && let Some(w) = inner.overflow.take()
                && w.suppressed > 0
            {
                rows.push(self.summary(None, &w, now));
            }
            inner
                .overflow
                .get_or_insert_with(|| Window::new(now))
                .take(self.limit)
        };
        if recorded {
            rows.push(EventRecord {
                at: now,
                kind: kind.to_owned(),
                host_id: host_id.map(str::to_owned),
                message: clip(message, MAX_EVENT_MESSAGE).into_owned(),
            });
        }
        Admitted { recorded, rows }
    }

    /// The summaries of windows that ended by `now` with events counted; every ended window
    /// is forgotten.
    pub fn due(&self, now: i64) -> Vec<EventRecord> {
        let mut inner = self.lock();
        self.sweep(&mut inner, now)
    }

    /// (host, kind) pairs with a window now.
    pub fn tracked(&self) -> usize {
        self.lock().windows.len()
    }

    fn sweep(&self, inner: &mut Inner, now: i64) -> Vec<EventRecord> {
        let mut out = Vec::new();
        let window = self.window;
        let ended = |w: &Window| now >= w.start.saturating_add(window);
        inner.windows.retain(|key, w| {
            if !ended(w) {
                return true;
            }
            if w.suppressed > 0 {
                out.push(self.summary(Some(key), w, now));
            }
            false
        });
        if inner.overflow.as_ref().is_some_and(ended)
            && let Some(w) = inner.overflow.take()
            && w.suppressed > 0
        {
            out.push(self.summary(None, &w, now));
        }
        out
    }

    fn period(&self) -> String {
        match self.window {
            60 => "minute".to_owned(),
            3600 => "hour".to_owned(),
            s => format!("{s} s"),
        }
    }

    /// `key` is None for the overflow window. Logged as well as recorded.
    fn summary(&self, key: Option<&Key>, w: &Window, now: i64) -> EventRecord {
        let record = self.summary_record(key, w, now);
        tracing::warn!(kind = %record.kind, host = ?record.host_id, "{}", record.message);
        record
    }

    fn summary_record(&self, key: Option<&Key>, w: &Window, now: i64) -> EventRecord {
        let period = self.period();
        let count = thousands(w.suppressed);
        let since = rfc3339(w.start);
        match key {
            Some(key) => {
                let from = match &key.host_id {
                    Some(h) => format!(" from host {h}"),
                    None => String::new(),
                };
                EventRecord {
                    at: now,
                    kind: key.kind.clone(),
                    host_id: key.host_id.clone(),
                    message: format!(
                        "… and {count} more {} events{from} in the {period} from {since} (at most {} per {period} are recorded one by one)",
                        key.kind, self.limit
                    ),
                }
            }
            None => EventRecord {
                at: now,
                kind: "events_suppressed".to_owned(),
                host_id: None,
                message: format!(
                    "… and {count} more events of other hosts and kinds in the {period} from {since}, counted together: more than {} host and kind pairs were active at once",
                    thousands(MAX_TRACKED as u64)
                ),
            },
        }
    }
}

impl AppState {
    /// [`AppState::record_event`] with `entry` as the event's audit entry (one that says who
    /// and from where), instead of an entry of the server's own.
    pub async fn record_event_audited(
        &self,
        kind: &str,
        host_id: Option<&str>,
        message: &str,
        entry: corral_control::audit::Entry,
    ) -> bool {
        let mut admitted = self.admit_event(kind, host_id, message);
        // When recorded, the event itself is the last row; the rest are summaries.
        let own = if admitted.recorded {
            admitted.rows.pop()
        } else {
            None
        };
        self.write_events(admitted.rows).await;
        if let Some(r) = own {
            if let Err(e) = self
                .store
                .record_event(r.at, &r.kind, r.host_id.as_deref(), &r.message)
                .await
            {
                tracing::error!(error = %e, kind = %r.kind, "cannot record an event");
            }
            self.audit(entry).await;
        }
        admitted.recorded
    }

    /// Decides about an event now (see [`EventLimiter::admit`]); write the rows with
    /// [`AppState::write_events`].
    pub fn admit_event(&self, kind: &str, host_id: Option<&str>, message: &str) -> Admitted {
        self.events.admit(kind, host_id, message, now_unix())
    }

    /// Writes events. A failure to record is logged: the operation that caused the event has
    /// already happened and is not undone for it.
    pub async fn write_events(&self, rows: Vec<EventRecord>) {
        for r in rows {
            if let Err(e) = self
                .store
                .record_event(r.at, &r.kind, r.host_id.as_deref(), &r.message)
                .await
            {
                tracing::error!(error = %e, kind = %r.kind, "cannot record an event");
            }
            // The same event in the tamper-evident log (events are pruned; it is not).
            self.audit(super::audit::server_entry(
                &r.kind,
                r.host_id.as_deref(),
                &r.message,
                r.at.saturating_mul(1000),
            ))
            .await;
        }
    }
}

/// Writes the summaries of ended windows every second and prunes the events table every
/// 10 s (and once at start), until the server shuts down; then writes the summaries still
/// owed.
pub async fn run(state: Arc<AppState>) {
    let flush = super::every(
        state.clone(),
        |s| &s.events.wake,
        FLUSH_EVERY,
        std::time::Duration::ZERO,
        "event summaries",
        |state| async move {
            let due = state.events.due(now_unix());
            state.write_events(due).await;
            Ok(())
        },
    );
    let prune = super::every(
        state.clone(),
        |s| &s.events.wake,
        PRUNE_EVERY,
        std::time::Duration::ZERO,
        "event pruning",
        |state| async move { prune(&state).await },
    );
    tokio::join!(flush, prune);
    let owed = state.events.due(i64::MAX);
    state.write_events(owed).await;
}

async fn prune(state: &AppState) -> Result<(), crate::store::StoreError> {
    let retention = i64::try_from(state.options.event_retention.as_secs()).unwrap_or(i64::MAX);
    let before = now_unix().saturating_sub(retention.max(1));
    let max_rows = i64::try_from(state.options.event_max_rows).unwrap_or(i64::MAX);
    let (old, surplus) = state.store.prune_events(before, max_rows).await?;
    if old + surplus > 0 {
        tracing::info!(
            older_than_retention = old,
            beyond_row_cap = surplus,
            retention_secs = retention,
            max_rows,
            "pruned security events"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> EventLimiter {
        EventLimiter::new(3, Duration::from_secs(60))
    }

    #[test]
    fn beyond_the_limit_events_are_counted_and_summarised_when_the_window_ends() {
        let l = limiter();
        let mut recorded = 0;
        for i in 0..100 {
            let a = l.admit("forged_reply", Some("h-1"), "m", 1_000 + i % 50);
            recorded += a.rows.len();
            assert_eq!(a.recorded, i < 3);
        }
        assert_eq!(recorded, 3);
        // Another host and another kind have their own allowance.
        assert!(l.admit("forged_reply", Some("h-2"), "m", 1_010).recorded);
        assert!(l.admit("unknown_reply", Some("h-1"), "m", 1_010).recorded);
        assert!(l.due(1_059).is_empty(), "the window has not ended");
        let due = l.due(1_060);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].kind, "forged_reply");
        assert_eq!(due[0].host_id.as_deref(), Some("h-1"));
        assert!(
            due[0]
                .message
                .starts_with("… and 97 more forged_reply events from host h-1 in the minute from"),
            "{}",
            due[0].message
        );
        assert_eq!(
            l.tracked(),
            2,
            "ended windows are forgotten, the others kept"
        );
        assert!(l.due(1_070).is_empty(), "nothing was counted in the others");
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn an_event_after_the_window_brings_the_summary_with_it() {
        let l = limiter();
        for _ in 0..5 {
            l.admit("k", None, "m", 0);
        }
        let a = l.admit("k", None, "m", 60);
        assert!(a.recorded);
        assert_eq!(a.rows.len(), 2);
        assert!(a.rows[0].message.starts_with("… and 2 more k events in"));
        assert_eq!(a.rows[1].message, "m");
    }

    #[test]
    fn messages_are_cut() {
        let l = limiter();
        let a = l.admit("k", None, &"x".repeat(1 << 20), 0);
        assert!(a.rows[0].message.len() <= MAX_EVENT_MESSAGE);
        assert!(a.rows[0].message.ends_with("(1,048,576 bytes)"));
    }

    #[test]
    fn the_table_is_bounded_and_the_overflow_is_counted() {
        let l = limiter();
        for i in 0..MAX_TRACKED + 500 {
            for _ in 0..4 {
                l.admit("k", Some(&format!("h-{i}")), "m", 0);
            }
        }
        assert_eq!(l.tracked(), MAX_TRACKED);
        let due = l.due(60);
        // One summary per tracked pair (1 counted each), and one for the overflow: 500 pairs
        // × 4 events, 3 recorded.
        assert_eq!(due.len(), MAX_TRACKED + 1);
        let overflow = due.iter().find(|r| r.kind == "events_suppressed").unwrap();
        assert!(
            overflow.message.starts_with("… and 1,997 more events"),
            "{}",
            overflow.message
        );
        assert_eq!(l.tracked(), 0);
    }
}
