//! Documents kept as numbered generations per environment (the admission policy, the network
//! policy): the newest is in force, the last 20 are kept for `show`, `diff` and rollback.

use super::{PolicyRow, Result, Store};

/// How many generations are kept per environment: enough to see what changed and roll back.
const KEEP: i64 = 20;

/// Which kind of document.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Admission,
    Network,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Kind::Admission => "admission_policies",
            Kind::Network => "network_policies",
        }
    }
}

impl Store {
    /// A generation (`None`: the newest, the one in force).
    pub(super) async fn generation(
        &self,
        kind: Kind,
        env_id: &str,
        generation: Option<i64>,
    ) -> Result<Option<PolicyRow>> {
        let table = kind.table();
        Ok(match generation {
            None => sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT generation, document, policy, created_at FROM {table} WHERE environment_id = $1 ORDER BY generation DESC LIMIT 1"
            )))
            .bind(env_id)
            .fetch_optional(&self.writer)
            .await?,
            Some(g) => sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT generation, document, policy, created_at FROM {table} WHERE environment_id = $1 AND generation = $2"
            )))
            .bind(env_id)
            .bind(g)
            .fetch_optional(&self.writer)
            .await?,
        })
    }

    /// The generations kept, newest first: (generation, applied at).
    pub(super) async fn generations(&self, kind: Kind, env_id: &str) -> Result<Vec<(i64, i64)>> {
        let table = kind.table();
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT generation, created_at FROM {table} WHERE environment_id = $1 ORDER BY generation DESC"
        )))
        .bind(env_id)
        .fetch_all(&self.writer)
        .await?)
    }

    /// Stores a new generation (the document as written and its checked form, JSON); returns
    /// its number. The oldest beyond the last 20 go, in the same transaction.
    pub(super) async fn insert_generation(
        &self,
        kind: Kind,
        env_id: &str,
        document: &str,
        policy: &str,
        now: i64,
    ) -> Result<i64> {
        let table = kind.table();
        let mut tx = self.writer.begin().await?;
        let last: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT MAX(generation) FROM {table} WHERE environment_id = $1"
        )))
        .bind(env_id)
        .fetch_one(&mut *tx)
        .await?;
        let generation = last.unwrap_or(0) + 1;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (environment_id, generation, document, policy, created_at) VALUES ($1, $2, $3, $4, $5)"
        )))
        .bind(env_id)
        .bind(generation)
        .bind(document)
        .bind(policy)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE environment_id = $1 AND generation <= $2"
        )))
        .bind(env_id)
        .bind(generation - KEEP)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(generation)
    }
}
