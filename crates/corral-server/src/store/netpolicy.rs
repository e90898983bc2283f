//! Network policies: every applied generation per environment (the newest is in force).

use super::generations::Kind;
use super::{PolicyRow, Result, Store};

impl Store {
    /// A generation of the environment's network policy: `None` the newest (the one in
    /// force).
    pub async fn network_policy(
        &self,
        env_id: &str,
        generation: Option<i64>,
    ) -> Result<Option<PolicyRow>> {
        self.generation(Kind::Network, env_id, generation).await
    }

    /// The generations kept, newest first: (generation, applied at).
    pub async fn network_policy_history(&self, env_id: &str) -> Result<Vec<(i64, i64)>> {
        self.generations(Kind::Network, env_id).await
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
        self.insert_generation(Kind::Network, env_id, document, policy, now)
            .await
    }

    /// The environment's stacks that carry rules of their own: (stack, rules as JSON).
    pub async fn stack_policies(&self, env_id: &str) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT name, policy FROM stacks WHERE environment_id = $1 AND policy IS NOT NULL ORDER BY name",
        )
        .bind(env_id)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Every service of the environment's stacks with its labels: (stack, service, labels
    /// as stored). For `policy test`, warnings and the services diagram.
    pub async fn service_labels(&self, env_id: &str) -> Result<Vec<(String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT s.name, v.name, v.labels FROM services v JOIN stacks s ON s.id = v.stack_id WHERE s.environment_id = $1 ORDER BY s.name, v.name",
        )
        .bind(env_id)
        .fetch_all(&self.reader)
        .await?)
    }
}
