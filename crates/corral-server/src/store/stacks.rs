//! Stacks and their services: the desired state `corral up` stores and the reconciler reads.

use corral_control::states::{Actual, Desired, StackState};
use corral_proto::Health;
use sqlx::FromRow;

use super::sealed::{self, Column};
use super::{CONTAINER_COLUMNS, ContainerRow, Result, Store, StoreError, one_by_id_or_name};
use crate::secrets::new_id;

#[derive(Debug, Clone, FromRow)]
pub struct StackRow {
    pub id: String,
    pub environment_id: String,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub state: StackState,
    #[sqlx(try_from = "super::Flag")]
    pub remove_volumes: bool,
    /// JSON array of the Docker names of its named volumes.
    pub volumes: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ServiceRow {
    pub stack_id: String,
    pub name: String,
    pub spec: String,
    pub spec_hash: String,
    pub replicas: i64,
    pub position: i64,
}

/// Containers of one stack that share everything `corral stack ls` counts by, and how many.
#[derive(Debug, Clone)]
pub struct ContainerCount {
    pub stack_id: String,
    pub service: Option<String>,
    /// The service definition they were made from (compare `ServiceRow::spec_hash`).
    pub spec_hash: Option<String>,
    pub desired: Desired,
    pub actual: Actual,
    pub health: Option<Health>,
    pub count: u32,
}

impl<'r> FromRow<'r, sqlx::any::AnyRow> for ContainerCount {
    fn from_row(row: &'r sqlx::any::AnyRow) -> std::result::Result<Self, sqlx::Error> {
        use sqlx::Row;
        let (desired, actual, health) = super::container_states(row)?;
        let count: i64 = row.try_get("n")?;
        Ok(ContainerCount {
            stack_id: row.try_get("stack_id")?,
            service: row.try_get("service")?,
            spec_hash: row.try_get("spec_hash")?,
            desired,
            actual,
            health,
            count: u32::try_from(count).map_err(|e| sqlx::Error::ColumnDecode {
                index: "n".into(),
                source: Box::new(e),
            })?,
        })
    }
}

/// What `corral up` writes: the whole desired state of one stack.
pub struct StackWrite<'a> {
    pub environment_id: &'a str,
    pub name: &'a str,
    pub volumes: &'a [String],
    /// `stack_id` is filled in by [`Store::write_stack`].
    pub services: &'a [ServiceRow],
    /// What the stack ships, by digest: (digest, is a secret, content).
    pub files: &'a [(String, bool, Vec<u8>)],
    /// The stack's own network policy rules (JSON of `corral_policy::StackRules`, confined
    /// to the stack), if its Compose file has any.
    pub policy: Option<&'a str>,
    /// Each service's labels (network policy rules select on them).
    pub labels: &'a std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

/// What [`Store::set_replicas`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetReplicas {
    Done,
    /// The stack has no such service.
    NoService,
    /// Refused: the stack would have `total` replicas, more than allowed.
    OverTotal {
        total: u64,
    },
}

fn file_aad(stack_id: &str, digest: &str) -> Vec<u8> {
    format!("stack_files/{stack_id}/{digest}").into_bytes()
}

const STACK_COLUMNS: &str =
    "id, environment_id, name, state, remove_volumes, volumes, created_at, updated_at";
const SERVICE_COLUMNS: &str = "stack_id, name, spec, spec_hash, replicas, position";

impl Store {
    /// Creates or updates a stack and its services in one transaction. Services no longer in
    /// the files are deleted (their containers become strays the reconciler removes). Returns
    /// the stack's id, whether it was created, and the services whose definition changed.
    pub async fn write_stack(
        &self,
        w: &StackWrite<'_>,
        now: i64,
    ) -> Result<(String, bool, Vec<String>)> {
        let mut tx = self.writer.begin().await?;
        let existing: Option<StackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {STACK_COLUMNS} FROM stacks WHERE environment_id = $1 AND name = $2"
        )))
        .bind(w.environment_id)
        .bind(w.name)
        .fetch_optional(&mut *tx)
        .await?;
        let volumes =
            serde_json::to_string(w.volumes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (stack_id, created) = match existing {
            Some(s) if s.state == StackState::Removing => {
                return Err(StoreError::Conflict(format!(
                    "stack {} is being removed; wait until `corral stack ls` no longer lists it",
                    w.name
                )));
            }
            Some(s) => {
                sqlx::query(
                    "UPDATE stacks SET volumes = $1, policy = $2, updated_at = $3 WHERE id = $4",
                )
                .bind(&volumes)
                .bind(w.policy)
                .bind(now)
                .bind(&s.id)
                .execute(&mut *tx)
                .await?;
                (s.id, false)
            }
            None => {
                let id = new_id("stk");
                sqlx::query(
                    "INSERT INTO stacks (id, environment_id, name, volumes, policy, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&id)
                .bind(w.environment_id)
                .bind(w.name)
                .bind(&volumes)
                .bind(w.policy)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                (id, true)
            }
        };
        let old: Vec<ServiceRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SERVICE_COLUMNS} FROM services WHERE stack_id = $1"
        )))
        .bind(&stack_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut changed = Vec::new();
        for svc in w.services {
            if old
                .iter()
                .any(|o| o.name == svc.name && o.spec_hash != svc.spec_hash)
            {
                changed.push(svc.name.clone());
            }
            sqlx::query(
                "INSERT INTO services (stack_id, name, spec, spec_hash, replicas, position, labels) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (stack_id, name) DO UPDATE SET spec = excluded.spec, spec_hash = excluded.spec_hash, replicas = excluded.replicas, position = excluded.position, labels = excluded.labels",
            )
            .bind(&stack_id)
            .bind(&svc.name)
            .bind(sealed::seal(
                &self.vault,
                Column::ServiceSpec,
                &format!("{stack_id}/{}", svc.name),
                &svc.spec,
            )?)
            .bind(&svc.spec_hash)
            .bind(svc.replicas)
            .bind(svc.position)
            .bind(
                serde_json::to_string(&w.labels.get(&svc.name).cloned().unwrap_or_default())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            )
            .execute(&mut *tx)
            .await?;
        }
        for o in &old {
            if !w.services.iter().any(|s| s.name == o.name) {
                sqlx::query("DELETE FROM services WHERE stack_id = $1 AND name = $2")
                    .bind(&stack_id)
                    .bind(&o.name)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query("DELETE FROM stack_files WHERE stack_id = $1")
            .bind(&stack_id)
            .execute(&mut *tx)
            .await?;
        for (digest, secret, content) in w.files {
            let sealed = self
                .vault
                .seal(content, &file_aad(&stack_id, digest))
                .map_err(|e| StoreError::Corrupt(format!("cannot seal a stack file: {e}")))?;
            sqlx::query(
                "INSERT INTO stack_files (stack_id, digest, secret, content) VALUES ($1, $2, $3, $4)",
            )
            .bind(&stack_id)
            .bind(digest)
            .bind(super::Flag(*secret))
            .bind(sealed)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((stack_id, created, changed))
    }

    pub async fn stacks(&self) -> Result<Vec<StackRow>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {STACK_COLUMNS} FROM stacks ORDER BY name"
        )))
        .fetch_all(&self.reader)
        .await?)
    }

    pub async fn find_stack(&self, id_or_name: &str) -> Result<StackRow> {
        let rows: Vec<StackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {STACK_COLUMNS} FROM stacks WHERE id = $1 OR name = $2"
        )))
        .bind(id_or_name)
        .bind(id_or_name)
        .fetch_all(&self.reader)
        .await?;
        one_by_id_or_name(rows, id_or_name, |s| &s.id, "stack", "corral stack ls")
    }

    /// A stack's services in start order.
    /// The stack's services with their definitions opened; one that does not open is
    /// [`StoreError::Corrupt`].
    pub async fn services(&self, stack_id: &str) -> Result<Vec<ServiceRow>> {
        let mut rows: Vec<ServiceRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SERVICE_COLUMNS} FROM services WHERE stack_id = $1 ORDER BY position, name"
        )))
        .bind(stack_id)
        .fetch_all(&self.reader)
        .await?;
        for row in &mut rows {
            let key = format!("{}/{}", row.stack_id, row.name);
            row.spec = sealed::open(&self.vault, Column::ServiceSpec, &key, &row.spec)?;
        }
        Ok(rows)
    }

    /// The stack's containers, without their specs (`spec` is empty): a stack's view and its
    /// logs need none, and opening ten thousand sealed specs per view is most of its cost.
    pub async fn stack_containers(&self, stack_id: &str) -> Result<Vec<ContainerRow>> {
        let columns = CONTAINER_COLUMNS.replace(" spec,", " '' AS spec,");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {columns} FROM containers WHERE stack_id = $1 ORDER BY service, slot, created_at"
        )))
        .bind(stack_id)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Every stack's containers counted by service, definition and state: what the stack
    /// list shows, without reading a row (or opening a spec) per container.
    pub async fn stack_container_counts(&self) -> Result<Vec<ContainerCount>> {
        Ok(sqlx::query_as(
            "SELECT stack_id, service, spec_hash, desired, actual, health, COUNT(*) AS n \
             FROM containers WHERE stack_id IS NOT NULL \
             GROUP BY stack_id, service, spec_hash, desired, actual, health",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// `corral scale`: returns false when the stack has no such service.
    /// Sets a service's replica count, unless the stack's replicas would then be more than
    /// `max_total` in all (checked in the same transaction).
    pub async fn set_replicas(
        &self,
        stack_id: &str,
        service: &str,
        replicas: u32,
        max_total: u64,
        now: i64,
    ) -> Result<SetReplicas> {
        let mut tx = self.writer.begin().await?;
        let others: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(replicas), 0) AS BIGINT) FROM services WHERE stack_id = $1 AND name != $2",
        )
        .bind(stack_id)
        .bind(service)
        .fetch_one(&mut *tx)
        .await?;
        let total = u64::try_from(others).unwrap_or(0) + u64::from(replicas);
        let done =
            sqlx::query("UPDATE services SET replicas = $1 WHERE stack_id = $2 AND name = $3")
                .bind(i64::from(replicas))
                .bind(stack_id)
                .bind(service)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Ok(SetReplicas::NoService);
        }
        if total > max_total {
            // Dropped without a commit: nothing changes.
            return Ok(SetReplicas::OverTotal { total });
        }
        sqlx::query("UPDATE stacks SET updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(stack_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(SetReplicas::Done)
    }

    /// `corral down`: the reconciler removes the containers, then the stack.
    pub async fn mark_stack_removing(
        &self,
        stack_id: &str,
        remove_volumes: bool,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE stacks SET state = 'removing', remove_volumes = CASE WHEN remove_volumes = 1 THEN 1 ELSE $1 END, updated_at = $2 WHERE id = $3",
        )
        .bind(super::Flag(remove_volumes))
        .bind(now)
        .bind(stack_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Deletes a stack whose containers are all gone (fails while any container row remains).
    /// The contents of a stack's files with these digests, opened. A digest the stack does
    /// not hold, or a content that does not open, is an error: a container never starts
    /// without a file it mounts.
    pub async fn stack_files(
        &self,
        stack_id: &str,
        digests: &[String],
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::with_capacity(digests.len());
        for digest in digests {
            let sealed: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT content FROM stack_files WHERE stack_id = $1 AND digest = $2",
            )
            .bind(stack_id)
            .bind(digest)
            .fetch_optional(&self.reader)
            .await?;
            let sealed = sealed.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "stack file {digest} of stack {stack_id} is not in the datastore; deploy the stack again with `corral up`"
                ))
            })?;
            let plain = self
                .vault
                .open(&sealed, &file_aad(stack_id, digest))
                .map_err(|_| {
                    StoreError::Corrupt(format!(
                        "stack file {digest} of stack {stack_id} does not open (is this the master.key it was written with?)"
                    ))
                })?;
            out.push((digest.clone(), plain));
        }
        Ok(out)
    }

    pub async fn delete_stack(&self, stack_id: &str) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM stack_files WHERE stack_id = $1")
            .bind(stack_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM services WHERE stack_id = $1")
            .bind(stack_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM stacks WHERE id = $1")
            .bind(stack_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
