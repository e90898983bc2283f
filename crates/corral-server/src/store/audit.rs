//! The audit log's rows (`audit_log`): appended in sequence, read in pages. The chain itself is
//! `corral_control::audit`; `state::audit` appends one entry at a time.

use corral_control::audit::Entry;
use sqlx::Row;

use super::{Result, Store, StoreError};

const COLUMNS: &str =
    "seq, at, actor, key_id, role, environment, action, target, outcome, source, hash";

fn decode(row: &sqlx::any::AnyRow) -> std::result::Result<(Entry, Vec<u8>), sqlx::Error> {
    Ok((
        Entry {
            seq: row.try_get("seq")?,
            at: row.try_get("at")?,
            actor: row.try_get("actor")?,
            key_id: row.try_get("key_id")?,
            role: row.try_get("role")?,
            environment: row.try_get("environment")?,
            action: row.try_get("action")?,
            target: row.try_get("target")?,
            outcome: row.try_get("outcome")?,
            source: row.try_get("source")?,
        },
        row.try_get("hash")?,
    ))
}

/// Binds an entry's eleven columns, in `COLUMNS` order, to the next placeholders of `query`.
pub(super) fn bind_entry<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    entry: &Entry,
    hash: &[u8; 32],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    query
        .bind(entry.seq)
        .bind(entry.at)
        .bind(entry.actor.clone())
        .bind(entry.key_id.clone())
        .bind(entry.role.clone())
        .bind(entry.environment.clone())
        .bind(entry.action.clone())
        .bind(entry.target.clone())
        .bind(entry.outcome.clone())
        .bind(entry.source.clone())
        .bind(hash.to_vec())
}

impl Store {
    /// Appends an entry; its `seq` must be the next one (a second writer would collide on the
    /// primary key rather than fork the chain).
    pub async fn append_audit(&self, entry: &Entry, hash: &[u8; 32]) -> Result<()> {
        bind_entry(
            sqlx::query(
                "INSERT INTO audit_log (seq, at, actor, key_id, role, environment, action, target, outcome, source, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            ),
            entry,
            hash,
        )
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The last entry's sequence number and hash; `None` for an empty log. A stored hash that
    /// is not 32 bytes is corrupt: the chain cannot continue from it.
    pub async fn audit_head(&self) -> Result<Option<(i64, [u8; 32])>> {
        let row: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&self.writer)
                .await?;
        row.map(|(seq, hash)| {
            let hash: [u8; 32] = hash.try_into().map_err(|_| {
                StoreError::Corrupt(format!("audit entry {seq}: its hash is not 32 bytes"))
            })?;
            Ok((seq, hash))
        })
        .transpose()
    }

    /// Up to `limit` entries after `after_seq`, in sequence order, with their stored hashes.
    pub async fn audit_page(&self, after_seq: i64, limit: u32) -> Result<Vec<(Entry, Vec<u8>)>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
        )))
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| decode(r).map_err(StoreError::from))
            .collect()
    }

    /// The newest `limit` entries at or after `since_ms` (by `actor` when given), oldest first.
    pub async fn audit_recent(
        &self,
        since_ms: Option<i64>,
        actor: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Entry>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM audit_log WHERE at >= $1 AND ($2 IS NULL OR actor = $3) \
             ORDER BY seq DESC LIMIT $4"
        )))
        .bind(since_ms.unwrap_or(i64::MIN))
        .bind(actor)
        .bind(actor)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| decode(r).map(|(e, _)| e).map_err(StoreError::from))
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }
}
