//! The audit log's chain: each entry's `hash` is an HMAC-SHA-256, under a key derived from
//! the server's master key, of the previous entry's hash and the entry's own fields. Changing
//! an entry breaks its own hash; deleting one leaves a gap in the sequence numbers and breaks
//! the next entry's hash; forging a consistent chain needs the master key, which never enters
//! the datastore. (Cutting entries off the end leaves a shorter valid chain: [`Verifier`]
//! reports the head — sequence number and hash — to compare with an exported copy.)
//!
//! Pure: the caller reads and writes rows; this module only computes and checks.

use ring::hmac;
use serde::{Deserialize, Serialize};

/// The hash the first entry chains from.
pub const GENESIS: [u8; 32] = [0; 32];

/// One audit entry, as stored and as chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// 1, 2, 3, … with no gaps.
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// Who: an API key's name, `server` for what the server saw itself (a refused agent, a
    /// forged reply), `anonymous` for a request without a valid key.
    pub actor: String,
    /// The API key's id, when one was presented and known.
    pub key_id: String,
    /// The key's role.
    pub role: String,
    /// The environment the request named, if any.
    pub environment: String,
    /// `POST /v1/stacks`, or an event's kind (`removed_host_refused`).
    pub action: String,
    /// What it acted on (the request's path, or a host id).
    pub target: String,
    /// `201 Created`, `403 Forbidden: …`, or an event's message.
    pub outcome: String,
    /// The peer address of the request, when there was one.
    pub source: String,
}

/// The chain key, derived from the master key (HKDF-SHA-256), so that nothing stored in the
/// datastore can recompute a hash.
pub fn chain_key(master: &[u8]) -> hmac::Key {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"corral audit log").extract(master);
    match prk.expand(&[b"chain v1"], hmac::HMAC_SHA256) {
        Ok(okm) => hmac::Key::from(okm),
        // Unreachable: 32 bytes is far below HKDF's limit. A key of the master itself keeps
        // the chain keyed rather than panicking.
        Err(_) => hmac::Key::new(hmac::HMAC_SHA256, master),
    }
}

/// The entry's hash, chained from `previous`. Every field is length-prefixed, so no two
/// different entries encode alike.
pub fn link(key: &hmac::Key, previous: &[u8; 32], entry: &Entry) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(previous);
    ctx.update(&entry.seq.to_be_bytes());
    ctx.update(&entry.at.to_be_bytes());
    for field in [
        &entry.actor,
        &entry.key_id,
        &entry.role,
        &entry.environment,
        &entry.action,
        &entry.target,
        &entry.outcome,
        &entry.source,
    ] {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field.as_bytes());
    }
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Where the chain breaks first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Break {
    /// The entry at which the chain stops holding.
    pub seq: i64,
    pub problem: String,
}

/// Checks entries fed in sequence order; remembers the first break.
pub struct Verifier<'k> {
    key: &'k hmac::Key,
    last_seq: i64,
    last_hash: [u8; 32],
    checked: u64,
    broken: Option<Break>,
}

impl<'k> Verifier<'k> {
    pub fn new(key: &'k hmac::Key) -> Verifier<'k> {
        Verifier {
            key,
            last_seq: 0,
            last_hash: GENESIS,
            checked: 0,
            broken: None,
        }
    }

    /// The next stored entry and its stored hash. After a break the rest is only counted.
    pub fn feed(&mut self, entry: &Entry, stored: &[u8]) {
        self.checked += 1;
        if self.broken.is_some() {
            return;
        }
        let expected_seq = self.last_seq + 1;
        if entry.seq != expected_seq {
            let problem = if entry.seq > expected_seq {
                let missing = if entry.seq - expected_seq == 1 {
                    format!("entry {expected_seq} is missing")
                } else {
                    format!("entries {expected_seq} to {} are missing", entry.seq - 1)
                };
                format!(
                    "{missing} (deleted): entry {} follows entry {}",
                    entry.seq, self.last_seq
                )
            } else {
                format!(
                    "entry {} comes after entry {}: sequence numbers were changed",
                    entry.seq, self.last_seq
                )
            };
            self.broken = Some(Break {
                seq: entry.seq,
                problem,
            });
            return;
        }
        let hash = link(self.key, &self.last_hash, entry);
        if stored != hash {
            self.broken = Some(Break {
                seq: entry.seq,
                problem: format!(
                    "entry {} was changed: its hash does not match its content and the entry before it",
                    entry.seq
                ),
            });
            return;
        }
        self.last_seq = entry.seq;
        self.last_hash = hash;
    }

    /// Entries fed.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The last entry of the unbroken chain: (sequence number, hash).
    pub fn head(&self) -> (i64, [u8; 32]) {
        (self.last_seq, self.last_hash)
    }

    pub fn broken(&self) -> Option<&Break> {
        self.broken.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64) -> Entry {
        Entry {
            seq,
            at: 1_700_000_000_000 + seq,
            actor: "admin".into(),
            key_id: "key-1".into(),
            role: "admin".into(),
            environment: "default".into(),
            action: "POST /v1/stacks".into(),
            target: format!("/v1/stacks/s{seq}"),
            outcome: "201 Created".into(),
            source: "127.0.0.1:5000".into(),
        }
    }

    fn chain(key: &hmac::Key, n: i64) -> Vec<(Entry, [u8; 32])> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let e = entry(seq);
                prev = link(key, &prev, &e);
                (e, prev)
            })
            .collect()
    }

    fn verify(key: &hmac::Key, rows: &[(Entry, [u8; 32])]) -> Verifier<'static> {
        let key: &'static hmac::Key = Box::leak(Box::new(key.clone()));
        let mut v = Verifier::new(key);
        for (e, h) in rows {
            v.feed(e, h);
        }
        v
    }

    #[test]
    fn an_intact_chain_verifies_and_reports_its_head() {
        let key = chain_key(&[7; 32]);
        let rows = chain(&key, 5);
        let v = verify(&key, &rows);
        assert_eq!(v.broken(), None);
        assert_eq!(v.checked(), 5);
        assert_eq!(v.head(), (5, rows[4].1));
    }

    #[test]
    fn a_changed_entry_is_named() {
        let key = chain_key(&[7; 32]);
        let mut rows = chain(&key, 5);
        rows[2].0.actor = "someone else".into();
        let v = verify(&key, &rows);
        let b = v.broken().unwrap();
        assert_eq!(b.seq, 3);
        assert!(b.problem.contains("entry 3 was changed"), "{}", b.problem);
        assert_eq!(v.head().0, 2);
    }

    #[test]
    fn deleted_entries_are_named() {
        let key = chain_key(&[7; 32]);
        let mut rows = chain(&key, 6);
        rows.drain(2..4);
        let b = verify(&key, &rows).broken().cloned().unwrap();
        assert_eq!(b.seq, 5);
        assert_eq!(
            b.problem,
            "entries 3 to 4 are missing (deleted): entry 5 follows entry 2"
        );
        let mut rows = chain(&key, 3);
        rows.remove(0);
        let b = verify(&key, &rows).broken().cloned().unwrap();
        assert_eq!(
            b.problem,
            "entry 1 is missing (deleted): entry 2 follows entry 0"
        );
    }

    #[test]
    fn a_renumbered_or_rehashed_chain_without_the_key_fails() {
        let key = chain_key(&[7; 32]);
        let other = chain_key(&[8; 32]);
        // A chain recomputed with another key (no master key) fails at its first entry.
        let forged = chain(&other, 3);
        assert_eq!(verify(&key, &forged).broken().unwrap().seq, 1);
        // Deleting an entry and renumbering the rest breaks the hash where the gap was.
        let mut rows = chain(&key, 4);
        rows.remove(1);
        for (i, (e, _)) in rows.iter_mut().enumerate() {
            e.seq = i as i64 + 1;
        }
        assert_eq!(verify(&key, &rows).broken().unwrap().seq, 2);
    }

    #[test]
    fn fields_cannot_bleed_into_each_other() {
        let key = chain_key(&[7; 32]);
        let mut a = entry(1);
        let mut b = entry(1);
        a.actor = "ab".into();
        a.key_id = "c".into();
        b.actor = "a".into();
        b.key_id = "bc".into();
        assert_ne!(link(&key, &GENESIS, &a), link(&key, &GENESIS, &b));
    }
}
