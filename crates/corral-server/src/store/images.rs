//! Registries (accounts sealed under the master key) and admission policies, per environment.

use super::generations::Kind;
use super::{Result, Store, StoreError};

/// A registry corral pulls from, with its account opened.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryRow {
    pub registry: String,
    pub username: Option<String>,
    /// The password or token, opened (never logged: `Debug` hides it).
    pub password: Option<String>,
    pub ca_pem: Option<String>,
    /// Built images are pushed here.
    pub builds: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for RegistryRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryRow")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish_non_exhaustive()
    }
}

/// One applied version of an environment's admission policy.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PolicyRow {
    pub generation: i64,
    /// As applied.
    pub document: String,
    /// The checked form, JSON.
    pub policy: String,
    pub created_at: i64,
}

type RawRegistry = (
    String,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    super::Flag,
    i64,
    i64,
);

fn aad(env_id: &str, registry: &str) -> Vec<u8> {
    format!("registries/{env_id}/{registry}").into_bytes()
}

impl Store {
    /// Adds a registry to an environment, or replaces its account and CA.
    pub async fn put_registry(&self, env_id: &str, row: &RegistryRow, now: i64) -> Result<()> {
        let secret = match &row.password {
            Some(p) => Some(
                self.vault
                    .seal(p.as_bytes(), &aad(env_id, &row.registry))
                    .map_err(|e| {
                        StoreError::Corrupt(format!("cannot seal a registry password: {e}"))
                    })?,
            ),
            None => None,
        };
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO registries (environment_id, registry, username, secret, ca_pem, builds, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (environment_id, registry) DO UPDATE SET username = excluded.username, secret = excluded.secret, ca_pem = excluded.ca_pem, builds = excluded.builds, updated_at = excluded.updated_at",
        )
        .bind(env_id)
        .bind(&row.registry)
        .bind(&row.username)
        .bind(secret)
        .bind(&row.ca_pem)
        .bind(super::Flag(row.builds))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if row.builds {
            // One build registry per environment: the newest one named.
            sqlx::query(
                "UPDATE registries SET builds = 0 WHERE environment_id = $1 AND registry <> $2",
            )
            .bind(env_id)
            .bind(&row.registry)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The environment's registries, passwords opened. One that does not open (another
    /// master key, a row moved or damaged) fails the whole read: a pull must never go out
    /// without the account it needs, as if there were none.
    pub async fn registries(&self, env_id: &str) -> Result<Vec<RegistryRow>> {
        let raw: Vec<RawRegistry> = sqlx::query_as(
            "SELECT registry, username, secret, ca_pem, builds, created_at, updated_at FROM registries WHERE environment_id = $1 ORDER BY registry",
        )
        .bind(env_id)
        .fetch_all(&self.reader)
        .await?;
        raw.into_iter()
            .map(|(registry, username, secret, ca_pem, builds, created_at, updated_at)| {
                let password = match secret {
                    Some(sealed) => {
                        let plain = self.vault.open(&sealed, &aad(env_id, &registry)).map_err(|_| {
                            StoreError::Corrupt(format!(
                                "the password of registry {registry} does not open (is this the master.key it was written with?); add the registry again with `corral registry add`"
                            ))
                        })?;
                        Some(String::from_utf8(plain).map_err(|_| {
                            StoreError::Corrupt(format!(
                                "the password of registry {registry} is not text"
                            ))
                        })?)
                    }
                    None => None,
                };
                Ok(RegistryRow {
                    registry,
                    username,
                    password,
                    ca_pem,
                    builds: builds.into(),
                    created_at,
                    updated_at,
                })
            })
            .collect()
    }

    /// Removes a registry; whether there was one.
    pub async fn remove_registry(&self, env_id: &str, registry: &str) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM registries WHERE environment_id = $1 AND registry = $2")
                .bind(env_id)
                .bind(registry)
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The environment's policy in force (its newest generation), if one was applied.
    pub async fn admission_policy(&self, env_id: &str) -> Result<Option<PolicyRow>> {
        self.generation(Kind::Admission, env_id, None).await
    }

    /// Stores a new generation of the environment's policy; returns its number.
    pub async fn insert_admission_policy(
        &self,
        env_id: &str,
        document: &str,
        policy: &str,
        now: i64,
    ) -> Result<i64> {
        self.insert_generation(Kind::Admission, env_id, document, policy, now)
            .await
    }
}
