//! Network policies: every applied generation per environment (the newest is in force).

use super::{PolicyRow, Result, Store};

/// How many generations are kept per environment: enough to see what changed and roll back.
const KEEP: i64 = 20;

impl Store {
    /// A generation of the environment's network policy: `None` the newest (the one in
    /// force).
    pub async fn network_policy(
        &self,
        env_id: &str,
        generation: Option<i64>,
    ) -> Result<Option<PolicyRow>> {
        Ok(match generation {
            None => sqlx::query_as(
                "SELECT generation, document, policy, created_at FROM network_policies WHERE environment_id = ? ORDER BY generation DESC LIMIT 1",
            )
            .bind(env_id)
            .fetch_optional(&self.writer)
            .await?,
            Some(g) => sqlx::query_as(
                "SELECT generation, document, policy, created_at FROM network_policies WHERE environment_id = ? AND generation = ?",
            )
            .bind(env_id)
            .bind(g)
            .fetch_optional(&self.writer)
            .await?,
        })
    }

    /// The generations kept, newest first: (generation, applied at).
    pub async fn network_policy_history(&self, env_id: &str) -> Result<Vec<(i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT generation, created_at FROM network_policies WHERE environment_id = ? ORDER BY generation DESC",
        )
        .bind(env_id)
        .fetch_all(&self.writer)
        .await?)
    }

    /// Stores a new generation (the document as written and its checked form); returns its
    /// number. The oldest beyond the last 20 go.
    pub async fn insert_network_policy(
        &self,
        env_id: &str,
        document: &str,
        policy: &str,
        now: i64,
    ) -> Result<i64> {
        let mut tx = self.writer.begin().await?;
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(generation) FROM network_policies WHERE environment_id = ?",
        )
        .bind(env_id)
        .fetch_one(&mut *tx)
        .await?;
        let generation = last.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO network_policies (environment_id, generation, document, policy, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(env_id)
        .bind(generation)
        .bind(document)
        .bind(policy)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM network_policies WHERE environment_id = ? AND generation <= ?")
            .bind(env_id)
            .bind(generation - KEEP)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(generation)
    }

    /// The environment's stacks that carry rules of their own: (stack, rules as JSON).
    pub async fn stack_policies(&self, env_id: &str) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT name, policy FROM stacks WHERE environment_id = ? AND policy IS NOT NULL ORDER BY name",
        )
        .bind(env_id)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Every service of the environment's stacks with its labels: (stack, service, labels
    /// as stored). For `policy test`, warnings and the services diagram.
    pub async fn service_labels(&self, env_id: &str) -> Result<Vec<(String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT s.name, v.name, v.labels FROM services v JOIN stacks s ON s.id = v.stack_id WHERE s.environment_id = ? ORDER BY s.name, v.name",
        )
        .bind(env_id)
        .fetch_all(&self.reader)
        .await?)
    }
}
