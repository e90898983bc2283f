//! The servers of one deployment (`servers`, migration 0018): where agents reach each one
//! (`advertise_url`), where the other servers reach it (`peer_url`), when it last said it runs,
//! and which one is active. The active server writes its own row through the fenced writer
//! (`claim_active`); a server waiting for the write lock writes only its own row, through a
//! connection of its own (`Membership`), and reads which server to relay to. The table holds
//! no deployment state: it is the one table a server without the lock writes.

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use super::sql::Flag;
use super::{PG_ACQUIRE, PostgresUrl, Result, Store};

/// One server of the deployment, as its row says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRow {
    pub id: String,
    pub advertise_url: String,
    pub peer_url: String,
    pub seen_at: i64,
    pub active: bool,
}

/// Rows not refreshed for this long are deleted by the active server.
const FORGET_AFTER_MS: i64 = 3_600_000;

impl Store {
    /// Marks `me` the active server (and every other row not), refreshing its row; rows of
    /// servers silent for an hour go. Through the writer: only the lock's holder can.
    pub async fn claim_active(&self, me: &ServerRow) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("UPDATE servers SET active = 0 WHERE id <> $1 AND active <> 0")
            .bind(&me.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM servers WHERE (peer_url = $1 AND id <> $2) OR seen_at < $3")
            .bind(&me.peer_url)
            .bind(&me.id)
            .bind(me.seen_at - FORGET_AFTER_MS)
            .execute(&mut *tx)
            .await?;
        upsert(&me.id, &me.advertise_url, &me.peer_url, me.seen_at, true)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The servers that said they run at `since` or later, the active one first.
    pub async fn servers_seen_since(&self, since: i64) -> Result<Vec<ServerRow>> {
        read_servers(&self.reader, since).await
    }
}

fn upsert<'q>(
    id: &'q str,
    advertise_url: &'q str,
    peer_url: &'q str,
    seen_at: i64,
    active: bool,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO servers (id, advertise_url, peer_url, seen_at, active) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET advertise_url = excluded.advertise_url, \
         peer_url = excluded.peer_url, seen_at = excluded.seen_at, active = excluded.active",
    )
    .bind(id)
    .bind(advertise_url)
    .bind(peer_url)
    .bind(seen_at)
    .bind(i64::from(active))
}

async fn read_servers(pool: &AnyPool, since: i64) -> Result<Vec<ServerRow>> {
    let rows: Vec<(String, String, String, i64, Flag)> = sqlx::query_as(
        "SELECT id, advertise_url, peer_url, seen_at, active FROM servers \
         WHERE seen_at >= $1 ORDER BY active DESC, id",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, advertise_url, peer_url, seen_at, active)| ServerRow {
            id,
            advertise_url,
            peer_url,
            seen_at,
            active: active.0,
        })
        .collect())
}

/// A waiting server's own link to the datastore (one connection, not the fenced writer): it
/// announces its row and reads which server is active.
pub struct Membership {
    pool: AnyPool,
}

impl Membership {
    pub async fn connect(url: &PostgresUrl) -> Result<Membership> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(PG_ACQUIRE)
            .idle_timeout(Some(Duration::from_secs(60)))
            .connect_with(url.options()?)
            .await?;
        Ok(Membership { pool })
    }

    /// Writes `me`'s row (never active: only the lock's holder says that of itself), and
    /// removes rows an earlier run of this server left under another id.
    pub async fn announce(&self, me: &ServerRow) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM servers WHERE peer_url = $1 AND id <> $2")
            .bind(&me.peer_url)
            .bind(&me.id)
            .execute(&mut *tx)
            .await?;
        upsert(&me.id, &me.advertise_url, &me.peer_url, me.seen_at, false)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The active server's row, when one refreshed it at `since` or later.
    pub async fn active(&self, since: i64) -> Result<Option<ServerRow>> {
        Ok(read_servers(&self.pool, since)
            .await?
            .into_iter()
            .find(|s| s.active))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
