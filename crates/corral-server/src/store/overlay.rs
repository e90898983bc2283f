//! The overlay's rows: each environment's range, mode and sealed pre-shared key; each host's
//! public key, last endpoint and lease.

use std::collections::HashMap;

use corral_control::states::{Actual, Desired};
use corral_proto::{Health, OverlayMode};
use sqlx::FromRow;

use super::{Result, Store};

/// What the web UI's live feed compares ([`super::Store::live_counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveCounters {
    pub counters: i64,
    pub last_event: i64,
    pub stacks: (i64, i64),
}

/// Each environment's change counters (see migration `0008_change_counters.sql`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeCounters {
    /// Bumped by every change to the environment's overlay (settings, members, leases).
    pub overlay: i64,
    /// Bumped by every change to its service names (replicas, stacks, services' labels).
    pub names: i64,
    /// Bumped by every new generation of its network policy.
    pub policy: i64,
}

/// A stack replica as the service-name table needs it.
#[derive(Debug, Clone)]
pub struct NameRow {
    pub stack: String,
    pub service: String,
    pub ip: String,
    pub desired: Desired,
    pub actual: Actual,
    pub health: Option<Health>,
    /// The service's labels (a JSON object, as stored: every replica of a service carries the
    /// same, so the name table reads them once per service).
    pub labels: String,
}

impl<'r> FromRow<'r, sqlx::any::AnyRow> for NameRow {
    fn from_row(row: &'r sqlx::any::AnyRow) -> std::result::Result<Self, sqlx::Error> {
        use sqlx::Row;
        let (desired, actual, health) = super::container_states(row)?;
        Ok(NameRow {
            stack: row.try_get("stack")?,
            service: row.try_get("service")?,
            ip: row.try_get("ip")?,
            desired,
            actual,
            health,
            labels: row.try_get("labels")?,
        })
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct OverlayEnvRow {
    pub id: String,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub overlay_mode: OverlayMode,
    pub overlay_cidr: String,
    /// The prefix length of every host's subnet (24 unless chosen otherwise).
    pub overlay_host_prefix: i64,
    /// Sealed under the master key (see `vault`).
    pub overlay_psk: Option<Vec<u8>>,
    pub overlay_psk_generation: i64,
}

/// A host as a member of the overlay.
#[derive(Debug, Clone, FromRow)]
pub struct OverlayMemberRow {
    pub id: String,
    pub name: String,
    pub environment_id: String,
    pub overlay_public_key: Option<String>,
    pub overlay_endpoint: Option<String>,
    pub subnet: Option<String>,
}

impl Store {
    pub async fn overlay_env(&self, env_id: &str) -> Result<Option<OverlayEnvRow>> {
        Ok(sqlx::query_as(
            "SELECT id, name, overlay_mode, overlay_cidr, overlay_host_prefix, overlay_psk, overlay_psk_generation FROM environments WHERE id = $1",
        )
        .bind(env_id)
        .fetch_optional(&self.writer)
        .await?)
    }

    /// Stores a new sealed key if the generation is still `previous` (two rotations at once:
    /// one wins). Returns whether it was stored.
    pub async fn set_overlay_psk(
        &self,
        env_id: &str,
        sealed: &[u8],
        previous: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE environments SET overlay_psk = $1, overlay_psk_generation = $2 WHERE id = $3 AND overlay_psk_generation = $4",
        )
        .bind(sealed)
        .bind(previous + 1)
        .bind(env_id)
        .bind(previous)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn set_overlay_range(&self, env_id: &str, cidr: &str) -> Result<()> {
        sqlx::query("UPDATE environments SET overlay_cidr = $1 WHERE id = $2")
            .bind(cidr)
            .bind(env_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// A new size of host subnet, only while no host of the environment holds a lease (they
    /// all have the same size). Returns whether it was stored.
    pub async fn set_overlay_host_prefix(&self, env_id: &str, prefix: u8) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE environments SET overlay_host_prefix = $1 WHERE id = $2 \
             AND NOT EXISTS (SELECT 1 FROM overlay_leases WHERE environment_id = $3)",
        )
        .bind(i64::from(prefix))
        .bind(env_id)
        .bind(env_id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn set_overlay_mode(&self, env_id: &str, mode: OverlayMode) -> Result<()> {
        sqlx::query("UPDATE environments SET overlay_mode = $1 WHERE id = $2")
            .bind(mode.as_str())
            .bind(env_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn set_host_overlay(
        &self,
        host_id: &str,
        public_key: Option<&str>,
        endpoint: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE hosts SET overlay_public_key = COALESCE($1, overlay_public_key), overlay_endpoint = COALESCE($2, overlay_endpoint) WHERE id = $3",
        )
        .bind(public_key)
        .bind(endpoint)
        .bind(host_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Live hosts of an environment with their overlay facts and lease.
    pub async fn overlay_members(&self, env_id: &str) -> Result<Vec<OverlayMemberRow>> {
        Ok(sqlx::query_as(
            "SELECT h.id, h.name, h.environment_id, h.overlay_public_key, h.overlay_endpoint, l.subnet \
             FROM hosts h LEFT JOIN overlay_leases l ON l.host_id = h.id \
             WHERE h.environment_id = $1 AND h.removed_at IS NULL ORDER BY h.name",
        )
        .bind(env_id)
        .fetch_all(&self.writer)
        .await?)
    }

    /// The hosts of an environment that hold a lease, with their overlay facts: all the
    /// overlay sync needs (a host without a lease has no configuration and is nobody's peer),
    /// so a fleet of hosts on no overlay costs it nothing. From a reader: it runs after the
    /// change counters it answers were read, so it sees at least their writes.
    pub async fn leased_members(&self, env_id: &str) -> Result<Vec<OverlayMemberRow>> {
        Ok(sqlx::query_as(
            "SELECT h.id, h.name, h.environment_id, h.overlay_public_key, h.overlay_endpoint, l.subnet \
             FROM overlay_leases l JOIN hosts h ON h.id = l.host_id \
             WHERE l.environment_id = $1 AND h.environment_id = $2 AND h.removed_at IS NULL",
        )
        .bind(env_id)
        .bind(env_id)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Every environment's change counters (the migration gave existing environments a row,
    /// and a trigger gives every new one its row).
    pub async fn change_counters(&self) -> Result<HashMap<String, ChangeCounters>> {
        let rows: Vec<(String, i64, i64, i64)> =
            sqlx::query_as("SELECT environment_id, overlay, names, policy FROM change_counters")
                .fetch_all(&self.reader)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(env, overlay, names, policy)| {
                (
                    env,
                    ChangeCounters {
                        overlay,
                        names,
                        policy,
                    },
                )
            })
            .collect())
    }

    /// What the web UI's live feed compares: change counters summed, the newest event's
    /// number, and the stacks' count and last changes summed. Small reads only.
    pub async fn live_counters(&self) -> Result<LiveCounters> {
        let (counters, last_event, stacks, stacks_changed): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT CAST(COALESCE(SUM(overlay + names + policy), 0) AS BIGINT) FROM change_counters), \
                 (SELECT COALESCE(MAX(id), 0) FROM events), \
                 (SELECT COUNT(*) FROM stacks), (SELECT CAST(COALESCE(SUM(updated_at), 0) AS BIGINT) FROM stacks)",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(LiveCounters {
            counters,
            last_event,
            stacks: (stacks, stacks_changed),
        })
    }

    /// The environment's stack replicas that have an overlay address.
    pub async fn name_rows(&self, env_id: &str) -> Result<Vec<NameRow>> {
        Ok(sqlx::query_as(
            "SELECT s.name AS stack, c.service, c.ip, c.desired, c.actual, c.health, \
             COALESCE(v.labels, '{}') AS labels \
             FROM containers c JOIN stacks s ON s.id = c.stack_id \
             LEFT JOIN services v ON v.stack_id = c.stack_id AND v.name = c.service \
             WHERE c.environment_id = $1 AND c.service IS NOT NULL AND c.ip IS NOT NULL",
        )
        .bind(env_id)
        .fetch_all(&self.reader)
        .await?)
    }

    /// The host's lease, if it has one.
    pub async fn lease_of(&self, host_id: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT subnet FROM overlay_leases WHERE host_id = $1")
                .bind(host_id)
                .fetch_optional(&self.writer)
                .await?,
        )
    }

    /// Every subnet leased in the environment.
    pub async fn overlay_leases(&self, env_id: &str) -> Result<Vec<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT host_id, subnet FROM overlay_leases WHERE environment_id = $1")
                .bind(env_id)
                .fetch_all(&self.writer)
                .await?,
        )
    }

    /// How many hosts hold a lease of the environment's range (a count, not the rows: every
    /// keyed registration asks it).
    pub async fn overlay_lease_count(&self, env_id: &str) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM overlay_leases WHERE environment_id = $1")
                .bind(env_id)
                .fetch_one(&self.reader)
                .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Every lease: (host id, subnet).
    pub async fn all_overlay_leases(&self) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as("SELECT host_id, subnet FROM overlay_leases")
            .fetch_all(&self.reader)
            .await?)
    }

    /// Records a lease; false if the subnet or the host already has one.
    pub async fn insert_lease(&self, env_id: &str, host_id: &str, subnet: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO overlay_leases (environment_id, host_id, subnet) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(env_id)
        .bind(host_id)
        .bind(subnet)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
