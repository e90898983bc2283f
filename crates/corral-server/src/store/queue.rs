//! Reading a host's command queue for delivery, on a reader: delivering costs the single
//! writer nothing.
//!
//! A command stays `pending` in the datastore until its host answers (or it expires, or its
//! host is removed). Which pending commands a session has already written to its tunnel is
//! kept in the session's memory ([`Delivered`]), not in the row: marking every command `sent`
//! cost one writer transaction per batch per host — ten thousand of them to deploy 100,000
//! replicas over 1,000 hosts — and rewrote each command row, sealed payload and all, only to
//! be undone on a reconnect. A new connection starts with nothing delivered, so everything
//! still pending goes out again on it, which is what the `sent` mark was for (agents carry
//! out a redelivered command idempotently).
//!
//! Each read takes the host's first pending commands, oldest first, enough of them to find
//! the next ones not yet written however many are outstanding, and prunes from [`Delivered`]
//! what the read shows settled (see [`Delivered::absorb`]). The read is a snapshot taken
//! after every settlement it could miss was committed, and a settled command never becomes
//! pending again, so a command is written once per connection.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::sealed::{self, Column};
use super::{Result, Store, StoreError, command_body};

/// Where a command stands in its host's queue: oldest first (`created_at`, then id).
type Key = (i64, String);

/// The pending commands one session has written to its tunnel and not yet seen settled.
///
/// Shared (behind a mutex) by the session, which reads the queue and writes commands, and
/// its reply writer, which takes a command out once its answer is committed
/// ([`Delivered::answered`]). An answer committed while a read is under way may be missing
/// from that read's snapshot — the command would show pending, and look unwritten once taken
/// out — so what is taken out during a read is remembered until the read is absorbed.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Command id → its `created_at`.
    written: HashMap<String, i64>,
    /// A read is under way (between [`Delivered::begin`] and [`Delivered::absorb`]).
    reading: bool,
    /// Answered during the read under way: not to be written again by it.
    answered_while_reading: HashSet<String>,
}

/// One pending command as read for delivery, its payload still sealed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct QueuedCommand {
    pub id: String,
    pub kind: String,
    pub payload: String,
    pub deadline_at: i64,
    pub created_at: i64,
}

impl QueuedCommand {
    fn key(&self) -> Key {
        (self.created_at, self.id.clone())
    }
}

impl Delivered {
    /// Commands written and not seen settled yet.
    pub fn len(&self) -> usize {
        self.written.len()
    }

    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// A read begins; returns how many rows it must return to show up to `want` commands not
    /// yet written (every outstanding one may come first).
    pub fn begin(&mut self, want: usize) -> usize {
        self.reading = true;
        self.answered_while_reading.clear();
        self.written.len() + want
    }

    /// The reply writer committed the answers to these commands. Returns whether they made
    /// room in a window of `window` that was full.
    pub fn answered<'a>(
        &mut self,
        ids: impl IntoIterator<Item = &'a str>,
        window: usize,
    ) -> Answered {
        let before = self.written.len();
        for id in ids {
            if self.written.remove(id).is_some() && self.reading {
                self.answered_while_reading.insert(id.to_owned());
            }
        }
        Answered {
            removed: before - self.written.len(),
            made_room: before >= window && self.written.len() < window,
        }
    }

    /// Forgets everything (the session ended); returns how many were outstanding.
    pub fn clear(&mut self) -> usize {
        let n = self.written.len();
        self.written.clear();
        self.answered_while_reading.clear();
        n
    }

    /// Takes a read of the host's first pending commands (ordered by key; `complete` when it
    /// returned fewer rows than asked for, so it shows every pending command) and returns up
    /// to `want` of them not yet written, oldest first, now counted as written, and whether
    /// more may be waiting (the read showed others not written, or did not show the whole
    /// queue).
    ///
    /// Pruning what was settled otherwise than by an answer (expired, failed): an outstanding
    /// command missing from the read is settled if the read covers where it would stand —
    /// the whole queue when complete, else up to the read's last key. One standing beyond a
    /// truncated read is kept (it may still be pending).
    pub fn absorb(&mut self, rows: Vec<QueuedCommand>, complete: bool, want: usize) -> Absorbed {
        let seen: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let horizon = if complete {
            None
        } else {
            rows.last().map(QueuedCommand::key)
        };
        let before = self.written.len();
        self.written.retain(|id, at| {
            seen.contains(id.as_str())
                || horizon
                    .as_ref()
                    .is_some_and(|h| (*at, id.as_str()) > (h.0, h.1.as_str()))
        });
        let answered = std::mem::take(&mut self.answered_while_reading);
        self.reading = false;
        let mut unwritten: Vec<QueuedCommand> = rows
            .into_iter()
            .filter(|r| !self.written.contains_key(&r.id) && !answered.contains(&r.id))
            .collect();
        unwritten.sort_by_key(QueuedCommand::key);
        let left = unwritten.len().saturating_sub(want);
        unwritten.truncate(want);
        for row in &unwritten {
            self.written.insert(row.id.clone(), row.created_at);
        }
        Absorbed {
            pruned: before - (self.written.len() - unwritten.len()),
            fresh: unwritten,
            more: left > 0 || !complete,
        }
    }
}

/// What [`Delivered::answered`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// Outstanding commands taken out.
    pub removed: usize,
    /// The window was full and is not now.
    pub made_room: bool,
}

/// What [`Delivered::absorb`] took from a read.
#[derive(Debug)]
pub struct Absorbed {
    /// Outstanding commands the read showed settled, taken out.
    pub pruned: usize,
    /// Not written yet: to write now, oldest first.
    pub fresh: Vec<QueuedCommand>,
    /// More may be waiting.
    pub more: bool,
}

/// What one read of a host's queue gave.
#[derive(Debug, Default)]
pub struct TakenCommands {
    /// To write to the tunnel now, oldest first.
    pub commands: Vec<corral_proto::Command>,
    /// Marked failed: (command id, why it does not read).
    pub unreadable: Vec<(String, String)>,
    /// More pending commands may follow.
    pub more: bool,
    /// Outstanding commands the read showed settled (expired, failed), taken out.
    pub pruned: usize,
}

impl Store {
    /// Up to `want` of the host's pending commands still within their deadline that this
    /// session has not written yet, oldest first, counted in `delivered` as written. One
    /// whose payload no longer reads is marked `failed` with the reason (a write, only then)
    /// and listed apart. `want` 0 only prunes `delivered`.
    pub async fn take_pending_commands(
        &self,
        host_id: &str,
        now: i64,
        delivered: &Mutex<Delivered>,
        want: usize,
    ) -> Result<TakenCommands> {
        let limit = lock(delivered).begin(want);
        // `+deadline_at`: not an index term, so SQLite reads the host's queue in order on
        // `commands_host_queue` and stops at the limit; on the deadline index it would walk
        // every open command of every host and sort.
        let rows: Vec<QueuedCommand> = match sqlx::query_as(
            "SELECT id, kind, payload, deadline_at, created_at FROM commands WHERE host_id = $1 AND state = 'pending' AND +deadline_at > $2 ORDER BY created_at, id LIMIT $3",
        )
        .bind(host_id)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await
        {
            Ok(rows) => rows,
            Err(e) => {
                lock(delivered).reading = false;
                return Err(e.into());
            }
        };
        let complete = rows.len() < limit;
        let absorbed = lock(delivered).absorb(rows, complete, want);
        let mut taken = TakenCommands {
            more: absorbed.more,
            pruned: absorbed.pruned,
            ..TakenCommands::default()
        };
        for row in absorbed.fresh {
            let body = sealed::open(&self.vault, Column::CommandPayload, &row.id, &row.payload)
                .and_then(|payload| command_body(&row.id, &row.kind, &payload));
            match body {
                Ok(body) => taken.commands.push(corral_proto::Command {
                    id: row.id,
                    body,
                    deadline: row.deadline_at,
                }),
                Err(e) => {
                    let why = e.to_string();
                    let result = serde_json::to_string(&corral_proto::CommandResult::Failed {
                        message: why.clone(),
                    })
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    sqlx::query(
                        "UPDATE commands SET state = 'failed', finished_at = $1, result = $2 WHERE id = $3 AND state = 'pending'",
                    )
                    .bind(now)
                    .bind(result)
                    .bind(&row.id)
                    .execute(&self.writer)
                    .await?;
                    taken.unreadable.push((row.id, why));
                }
            }
        }
        Ok(taken)
    }
}

/// The set, whatever a panicking holder left (it holds no invariant a panic could break
/// halfway: every method leaves it whole).
fn lock(delivered: &Mutex<Delivered>) -> std::sync::MutexGuard<'_, Delivered> {
    delivered
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at: i64, id: &str) -> QueuedCommand {
        QueuedCommand {
            id: id.into(),
            kind: "k".into(),
            payload: String::new(),
            deadline_at: 100,
            created_at: at,
        }
    }

    fn ids(rows: &[QueuedCommand]) -> Vec<&str> {
        rows.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn each_pending_command_is_taken_once_oldest_first() {
        let mut d = Delivered::default();
        let first = d.absorb(vec![row(1, "a"), row(1, "b"), row(2, "c")], true, 2);
        assert_eq!(ids(&first.fresh), ["a", "b"]);
        // The whole queue was read, but "c" is left: more.
        assert!(first.more);
        assert_eq!(d.len(), 2);
        // The same queue read again (nothing answered yet): only what was left.
        let next = d.absorb(vec![row(1, "a"), row(1, "b"), row(2, "c")], true, 2);
        assert_eq!(ids(&next.fresh), ["c"]);
        assert!(!next.more);
        let again = d.absorb(vec![row(1, "a"), row(1, "b"), row(2, "c")], true, 2);
        assert!(again.fresh.is_empty() && !again.more);
        assert_eq!(d.begin(2), 5);
    }

    #[test]
    fn a_complete_read_prunes_what_it_no_longer_shows() {
        let mut d = Delivered::default();
        d.absorb(vec![row(1, "a"), row(1, "b"), row(2, "c")], true, 3);
        // "b" was answered (or expired): gone from the queue, gone from the session's count.
        let fresh = d.absorb(vec![row(1, "a"), row(2, "c"), row(3, "d")], true, 3);
        assert_eq!(ids(&fresh.fresh), ["d"]);
        assert_eq!(d.len(), 3);
        d.absorb(vec![], true, 0);
        assert!(d.is_empty());
    }

    #[test]
    fn a_truncated_read_prunes_only_up_to_its_last_row() {
        let mut d = Delivered::default();
        d.absorb(vec![row(1, "a"), row(5, "x")], true, 2);
        // A command stored later in the same second as "a" sorts before "x"; a read cut at
        // (1, "m") cannot tell whether "x" is still pending: it is kept. "a" is gone.
        let fresh = d.absorb(vec![row(1, "l"), row(1, "m")], false, 1);
        assert_eq!(ids(&fresh.fresh), ["l"]);
        assert!(fresh.more);
        let mut left: Vec<&str> = d.written.keys().map(String::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["l", "x"]);
    }

    #[test]
    fn want_zero_only_prunes() {
        let mut d = Delivered::default();
        d.absorb(vec![row(1, "a"), row(1, "b")], true, 2);
        let pruned = d.absorb(vec![row(1, "b"), row(2, "c")], true, 0);
        assert!(pruned.fresh.is_empty());
        assert!(pruned.more, "\"c\" waits");
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn an_answer_takes_a_command_out_and_a_read_under_way_does_not_write_it_again() {
        let mut d = Delivered::default();
        d.absorb(vec![row(1, "a"), row(1, "b")], true, 2);
        // A full window of two: answering "a" makes room (the reply writer wakes the session).
        assert_eq!(
            d.answered(["a"], 2),
            Answered {
                removed: 1,
                made_room: true
            }
        );
        assert_eq!(d.answered(["nope"], 2).removed, 0);
        assert_eq!(d.len(), 1);
        // "b" is answered while a read is under way whose snapshot still shows it pending:
        // that read does not take it for unwritten.
        assert_eq!(d.begin(2), 3);
        d.answered(["b"], 2);
        let fresh = d.absorb(vec![row(1, "b"), row(2, "c")], true, 2);
        assert_eq!(ids(&fresh.fresh), ["c"]);
        assert_eq!(d.len(), 1);
        // Once that read is absorbed, the memory of it is gone.
        assert!(d.answered_while_reading.is_empty());
    }
}
