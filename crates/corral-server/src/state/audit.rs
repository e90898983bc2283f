//! Appending to the audit log, one entry at a time: each entry's hash chains from the one
//! before (`corral_control::audit::link`, keyed by the vault's audit key), so appends are
//! serialised behind the chain's head, read from the datastore on first use.

use corral_control::audit::{Entry, GENESIS, link};

use super::AppState;
use crate::text::clip;

/// Most bytes kept of an entry's target and outcome, and of its other fields.
const MAX_LONG: usize = 1024;
const MAX_SHORT: usize = 256;

/// The chain's head: (sequence number, hash) of the last entry written; `None` until read.
#[derive(Default)]
pub struct AuditLog {
    head: tokio::sync::Mutex<Option<(i64, [u8; 32])>>,
}

/// The audit log's head, held: the next entry is sealed against it, written (here or inside
/// another transaction, as a registration's is), then recorded as the new head. Dropped
/// without [`AuditSlot::written`], the head stays as it was (nothing was written).
pub struct AuditSlot<'a> {
    head: tokio::sync::MutexGuard<'a, Option<(i64, [u8; 32])>>,
    key: &'a ring::hmac::Key,
    seq: i64,
    previous: [u8; 32],
}

impl AuditSlot<'_> {
    /// `entry` as the next one (fields cut to bounded sizes, its `seq` assigned) with its
    /// chained hash.
    pub fn seal(&self, mut entry: Entry) -> (Entry, [u8; 32]) {
        for field in [
            &mut entry.actor,
            &mut entry.key_id,
            &mut entry.role,
            &mut entry.environment,
            &mut entry.action,
            &mut entry.source,
        ] {
            *field = clip(field, MAX_SHORT).into_owned();
        }
        entry.target = clip(&entry.target, MAX_LONG).into_owned();
        entry.outcome = clip(&entry.outcome, MAX_LONG).into_owned();
        entry.seq = self.seq + 1;
        let hash = link(self.key, &self.previous, &entry);
        (entry, hash)
    }

    /// The sealed entry `seq` with `hash` is in the datastore: it is the head now.
    pub fn written(mut self, seq: i64, hash: [u8; 32]) {
        *self.head = Some((seq, hash));
    }

    /// Whether the entry was written is unknown (a write failed): the head is read again
    /// next time.
    pub fn unknown(mut self) {
        *self.head = None;
    }
}

impl AppState {
    /// Holds the audit log's head (reading it on first use); `None` when it cannot be read,
    /// which is logged: no entry is written then.
    pub async fn audit_slot(&self) -> Option<AuditSlot<'_>> {
        let mut head = self.audit.head.lock().await;
        let (seq, previous) = match *head {
            Some(h) => h,
            None => match self.store.audit_head().await {
                Ok(h) => {
                    let h = h.unwrap_or((0, GENESIS));
                    *head = Some(h);
                    h
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the audit log's head; entry not written");
                    return None;
                }
            },
        };
        Some(AuditSlot {
            head,
            key: self.vault.audit_key(),
            seq,
            previous,
        })
    }

    /// Appends `entry` (its `seq` is assigned here; its fields are cut to bounded sizes). A
    /// failure is logged, not returned: what the entry records has already happened.
    pub async fn audit(&self, entry: Entry) {
        let Some(slot) = self.audit_slot().await else {
            return;
        };
        let (entry, hash) = slot.seal(entry);
        match self.store.append_audit(&entry, &hash).await {
            Ok(()) => slot.written(entry.seq, hash),
            Err(e) => {
                // Read the head again next time: the row may or may not be there.
                slot.unknown();
                tracing::error!(error = %e, action = %entry.action, "cannot write an audit entry");
            }
        }
    }
}

/// An entry for something the server saw itself (a security event).
pub fn server_entry(kind: &str, host_id: Option<&str>, message: &str, at_ms: i64) -> Entry {
    Entry {
        seq: 0,
        at: at_ms,
        actor: "server".into(),
        key_id: String::new(),
        role: String::new(),
        environment: String::new(),
        action: kind.to_owned(),
        target: host_id.unwrap_or_default().to_owned(),
        outcome: message.to_owned(),
        source: String::new(),
    }
}
