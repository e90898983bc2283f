//! Users, their API keys and their roles per environment (`users`, `api_keys`, `memberships`).

use sqlx::FromRow;

use super::{Result, Store, StoreError};
use crate::secrets::{SecretHash, new_id};

/// The first admin, made by migration 0016; the bootstrap key (admin.env) is theirs.
pub const FIRST_ADMIN_ID: &str = "user-admin";

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: String,
    pub name: String,
    /// argon2id PHC string; `None` for a user who cannot log in with a password.
    pub password_hash: Option<String>,
    #[sqlx(try_from = "super::Flag")]
    pub admin: bool,
    /// `local`, or `ldap` for a directory user (roles from their groups at each login).
    pub source: String,
    pub created_at: i64,
    pub failed_logins: i64,
    pub locked_until: Option<i64>,
}

const USER_COLUMNS: &str =
    "id, name, password_hash, admin, source, created_at, failed_logins, locked_until";

pub use corral_control::roles::EnvRole;

/// An API key presented, with its user.
#[derive(Debug, Clone)]
pub struct KeyAuth {
    pub key_id: String,
    pub key_name: String,
    pub revoked_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub user_id: String,
    pub user_name: String,
    pub admin: bool,
    /// The user was removed: every key of theirs is refused.
    pub user_removed: bool,
}

/// One of a user's keys, as listed.
#[derive(Debug, Clone, FromRow)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl Store {
    /// A new user; `None` when a live user has that name.
    pub async fn create_user(
        &self,
        name: &str,
        password_hash: Option<&str>,
        admin: bool,
        now: i64,
    ) -> Result<Option<UserRow>> {
        let id = new_id("user");
        let done = sqlx::query(
            "INSERT INTO users (id, name, password_hash, admin, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(name)
        .bind(password_hash)
        .bind(super::Flag(admin))
        .bind(now)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.user_by_name(name).await
    }

    /// A directory user after a login the directory accepted: made if new, their admin flag
    /// and roles replaced by what their groups give now (an environment that does not exist is
    /// skipped). `None` when a local user has that name (a directory login never takes over a
    /// local account).
    pub async fn sync_directory_user(
        &self,
        name: &str,
        admin: bool,
        roles: &[(String, EnvRole)],
        now: i64,
    ) -> Result<Option<UserRow>> {
        let mut tx = self.writer.begin().await?;
        let existing: Option<(String, String)> =
            sqlx::query_as("SELECT id, source FROM users WHERE name = $1 AND removed_at IS NULL")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let id = match existing {
            Some((_, source)) if source != "ldap" => return Ok(None),
            Some((id, _)) => {
                sqlx::query("UPDATE users SET admin = $1 WHERE id = $2")
                    .bind(super::Flag(admin))
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                id
            }
            None => {
                let id = new_id("user");
                sqlx::query(
                    "INSERT INTO users (id, name, admin, source, created_at) VALUES ($1, $2, $3, 'ldap', $4)",
                )
                .bind(&id)
                .bind(name)
                .bind(super::Flag(admin))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                id
            }
        };
        sqlx::query("DELETE FROM memberships WHERE user_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        for (env, role) in roles {
            sqlx::query(
                "INSERT INTO memberships (user_id, environment_id, role) \
                 SELECT $1, id, $2 FROM environments WHERE name = $3 AND removed_at IS NULL",
            )
            .bind(&id)
            .bind(role.as_str())
            .bind(env)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.user_by_name(name).await
    }

    /// Live users, by name.
    pub async fn users(&self) -> Result<Vec<UserRow>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE removed_at IS NULL ORDER BY name"
        )))
        .fetch_all(&self.reader)
        .await?)
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRow>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE name = $1 AND removed_at IS NULL"
        )))
        .bind(name)
        .fetch_optional(&self.writer)
        .await?)
    }

    /// Removes a user: every key of theirs revoked and every role dropped, at once.
    pub async fn remove_user(&self, user_id: &str, now: i64) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("UPDATE users SET removed_at = $1 WHERE id = $2")
            .bind(now)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM memberships WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Users with the admin flag (the last one cannot be removed).
    pub async fn count_admins(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE admin = 1 AND removed_at IS NULL")
                .fetch_one(&self.writer)
                .await?,
        )
    }

    pub async fn set_password(&self, user_id: &str, hash: &str) -> Result<()> {
        sqlx::query(
            "UPDATE users SET password_hash = $1, failed_logins = 0, locked_until = NULL WHERE id = $2",
        )
        .bind(hash)
        .bind(user_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Counts a failed login; from the `free`-th failure on, the account is locked for
    /// `base_secs` doubled per further failure, at most `max_secs`. Returns the lock's end.
    pub async fn login_failed(
        &self,
        user_id: &str,
        now: i64,
        free: i64,
        base_secs: i64,
        max_secs: i64,
    ) -> Result<Option<i64>> {
        let failed: i64 = sqlx::query_scalar(
            "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = $1 RETURNING failed_logins",
        )
        .bind(user_id)
        .fetch_one(&self.writer)
        .await?;
        if failed < free {
            return Ok(None);
        }
        let doublings = u32::try_from((failed - free).min(20)).unwrap_or(20);
        let secs = base_secs.saturating_mul(1 << doublings).min(max_secs);
        let until = now + secs;
        sqlx::query("UPDATE users SET locked_until = $1 WHERE id = $2")
            .bind(until)
            .bind(user_id)
            .execute(&self.writer)
            .await?;
        Ok(Some(until))
    }

    pub async fn login_succeeded(&self, user_id: &str) -> Result<()> {
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
            .bind(user_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// A new API key of `user_id` (its hash only).
    pub async fn insert_user_key(
        &self,
        user_id: &str,
        name: &str,
        hash: &SecretHash,
        expires_at: Option<i64>,
        now: i64,
    ) -> Result<String> {
        let id = new_id("key");
        sqlx::query(
            "INSERT INTO api_keys (id, name, role, secret_hash, created_at, user_id, expires_at) \
             VALUES ($1, $2, 'user', $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(name)
        .bind(hash.as_bytes())
        .bind(now)
        .bind(user_id)
        .bind(expires_at)
        .execute(&self.writer)
        .await?;
        Ok(id)
    }

    /// The key with this hash and its user. A key without a user is corrupt (every key has
    /// one since migration 0016).
    pub async fn key_auth(&self, hash: &SecretHash) -> Result<Option<KeyAuth>> {
        type Row = (
            String,
            String,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<super::Flag>,
            Option<i64>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT k.id, k.name, k.revoked_at, k.expires_at, u.id, u.name, u.admin, u.removed_at \
             FROM api_keys k LEFT JOIN users u ON u.id = k.user_id WHERE k.secret_hash = $1",
        )
        .bind(hash.as_bytes())
        .fetch_optional(&self.reader)
        .await?;
        let Some((key_id, key_name, revoked_at, expires_at, user_id, user_name, admin, removed)) =
            row
        else {
            return Ok(None);
        };
        let (Some(user_id), Some(user_name), Some(admin)) = (user_id, user_name, admin) else {
            return Err(StoreError::Corrupt(format!(
                "API key {key_id} belongs to no user"
            )));
        };
        Ok(Some(KeyAuth {
            key_id,
            key_name,
            revoked_at,
            expires_at,
            user_id,
            user_name,
            admin: admin.into(),
            user_removed: removed.is_some(),
        }))
    }

    /// Whether the key still works: not revoked, not expired, its user not removed.
    pub async fn key_live(&self, key_id: &str, now: i64) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.id = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2) \
             AND u.removed_at IS NULL",
        )
        .bind(key_id)
        .bind(now)
        .fetch_one(&self.reader)
        .await?;
        Ok(n > 0)
    }

    pub async fn user_keys(&self, user_id: &str) -> Result<Vec<KeyRow>> {
        Ok(sqlx::query_as(
            "SELECT id, name, created_at, expires_at, revoked_at FROM api_keys WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user_id)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Revokes a key of `user_id`; false when the user has no such live key.
    pub async fn revoke_user_key(&self, user_id: &str, key_id: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(key_id)
        .bind(user_id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The user's role in each environment: (environment name, role). A stored role this build
    /// does not know is an error, never a lesser or greater role.
    pub async fn memberships(&self, user_id: &str) -> Result<Vec<(String, EnvRole)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT e.name, m.role FROM memberships m JOIN environments e ON e.id = m.environment_id \
             WHERE m.user_id = $1 AND e.removed_at IS NULL ORDER BY e.name",
        )
        .bind(user_id)
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(env, role)| {
                EnvRole::parse(&role)
                    .map(|r| (env.clone(), r))
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "user {user_id}: unknown role {role:?} in environment {env}"
                        ))
                    })
            })
            .collect()
    }

    /// Every membership of live users: (user name, environment name, role).
    pub async fn all_memberships(&self) -> Result<Vec<(String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT u.name, e.name, m.role FROM memberships m JOIN users u ON u.id = m.user_id \
             JOIN environments e ON e.id = m.environment_id \
             WHERE u.removed_at IS NULL AND e.removed_at IS NULL ORDER BY u.name, e.name",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// Gives `user_id` `role` in the environment (replacing any other), or takes it away.
    pub async fn set_membership(
        &self,
        user_id: &str,
        env_id: &str,
        role: Option<EnvRole>,
    ) -> Result<()> {
        match role {
            Some(role) => {
                sqlx::query(
                    "INSERT INTO memberships (user_id, environment_id, role) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id, environment_id) DO UPDATE SET role = excluded.role",
                )
                .bind(user_id)
                .bind(env_id)
                .bind(role.as_str())
                .execute(&self.writer)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM memberships WHERE user_id = $1 AND environment_id = $2")
                    .bind(user_id)
                    .bind(env_id)
                    .execute(&self.writer)
                    .await?;
            }
        }
        Ok(())
    }
}
