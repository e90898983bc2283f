//! The reconciler loop: every second (and at once when woken by `up`, `scale`, `down` or an
//! agent's report) it reads the datastore and the live tunnels, runs [`reconcile::decide`] for
//! each stack, and carries the actions out as durable `container_*` commands. Outcomes land in
//! the datastore; a failed start backs its service off (1 s doubling to 30 s) and is recorded
//! as a `container_failed` event.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use corral_proto::{
    CommandKind, CommandResult, ContainerRef, ContainerSpec, ContainerStatus, StackCleanup,
};
use corral_scheduler::Existing;
use tokio::sync::Notify;

use super::define::{ServiceDef, network_name};
use super::reconcile::{self, Action, HostState, Replica, ServiceMemory};
use crate::AppState;
use crate::dispatch::{Outcome, submit};
use crate::secrets::new_id;
use crate::store::{ContainerRow, StackRow, StoreError};
use crate::time_fmt::now_unix;

/// How often the reconciler looks even when nothing woke it.
const TICK: Duration = Duration::from_secs(1);
const BACKOFF_START_MS: i64 = 1_000;
const BACKOFF_MAX_MS: i64 = 30_000;

/// What the reconciler learnt in its last pass over a stack (for `corral ps`).
#[derive(Debug, Clone, Default)]
pub struct StackStatus {
    pub unplaced: BTreeMap<String, Vec<String>>,
    pub waiting: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct ServiceState {
    memory: ServiceMemory,
    backoff_ms: i64,
    last_error: Option<String>,
}

#[derive(Default)]
struct Inner {
    /// (stack id, service) → memory.
    services: HashMap<(String, String), ServiceState>,
    /// Containers with a command under way.
    in_flight: HashSet<String>,
    status: HashMap<String, StackStatus>,
}

#[derive(Default)]
pub struct Reconciler {
    wake: Notify,
    inner: Mutex<Inner>,
}

impl Reconciler {
    /// Asks for a pass now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn status(&self, stack_id: &str) -> Option<StackStatus> {
        self.lock().status.get(stack_id).cloned()
    }

    pub fn last_error(&self, stack_id: &str, service: &str) -> Option<String> {
        self.lock()
            .services
            .get(&(stack_id.to_owned(), service.to_owned()))
            .and_then(|s| s.last_error.clone())
    }

    fn finished(&self, container_id: &str) {
        self.lock().in_flight.remove(container_id);
        self.wake();
    }

    fn failed_start(&self, stack_id: &str, service: &str, message: String) {
        let now_ms = now_unix() * 1000;
        let mut inner = self.lock();
        let s = inner
            .services
            .entry((stack_id.to_owned(), service.to_owned()))
            .or_default();
        s.backoff_ms = (s.backoff_ms * 2).clamp(BACKOFF_START_MS, BACKOFF_MAX_MS);
        s.memory.not_before_ms = now_ms + s.backoff_ms;
        s.last_error = Some(message);
    }

    fn started(&self, stack_id: &str, service: &str) {
        let mut inner = self.lock();
        if let Some(s) = inner
            .services
            .get_mut(&(stack_id.to_owned(), service.to_owned()))
        {
            s.backoff_ms = 0;
            s.memory.not_before_ms = 0;
            s.last_error = None;
        }
    }
}

/// Runs passes until the server shuts down.
pub async fn run(state: Arc<AppState>) {
    crate::every(
        state,
        |s| &s.reconciler.wake,
        TICK,
        "reconciler pass",
        |s| async move { pass(&s).await },
    )
    .await;
}

/// Hosts and containers of one environment, as one pass sees them.
pub struct World {
    pub hosts: Vec<HostState>,
    host_names: HashMap<String, String>,
    containers: Vec<ContainerRow>,
    /// Service definitions by (stack id, service), for the reservations of other stacks.
    defs: HashMap<(String, String), ServiceDef>,
}

impl World {
    pub async fn gather(state: &AppState, environment_id: &str) -> Result<World, StoreError> {
        let now = now_unix();
        let grace = state.options.reschedule_after.as_secs() as i64;
        let started_at = now - state.started.elapsed().as_secs() as i64;
        let mut hosts = Vec::new();
        let mut host_names = HashMap::new();
        for h in state.store.hosts(true).await? {
            host_names.insert(h.id.clone(), h.name.clone());
            if h.environment_id != environment_id {
                continue;
            }
            let info = state.registry.info(&h.id);
            let docker = info.as_ref().and_then(|i| i.docker.as_ref());
            let docker_info = docker.and_then(|d| d.info.as_ref());
            // A host counts as lost after the grace period, measured from when it was last
            // seen or from when this server started, whichever is later: a restarted server
            // gives every host the full grace period to reconnect.
            let disconnected_since = h.last_seen_at.max(started_at);
            let lost =
                h.removed_at.is_some() || (info.is_none() && now - disconnected_since > grace);
            hosts.push(HostState {
                labels: h.labels(),
                ready: info.is_some() && docker.is_some_and(|d| d.state == "available"),
                lost,
                cpu_millis: docker_info.map_or(0, |d| u64::from(d.cpus) * 1000),
                memory_bytes: docker_info.map_or(0, |d| d.memory_bytes),
                id: h.id,
                name: h.name,
            });
        }
        let containers: Vec<ContainerRow> = state
            .store
            .containers()
            .await?
            .into_iter()
            .filter(|c| c.environment_id == environment_id)
            .collect();
        let mut defs = HashMap::new();
        for stack in state.store.stacks().await? {
            if stack.environment_id != environment_id {
                continue;
            }
            for svc in state.store.services(&stack.id).await? {
                if let Ok(def) = serde_json::from_str::<ServiceDef>(&svc.spec) {
                    defs.insert((stack.id.clone(), svc.name), def);
                }
            }
        }
        Ok(World {
            hosts,
            host_names,
            containers,
            defs,
        })
    }

    pub fn host_name(&self, id: &str) -> String {
        self.host_names
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_owned())
    }

    pub fn replicas_of(&self, stack_id: &str) -> Vec<Replica> {
        self.containers
            .iter()
            .filter(|c| c.stack_id.as_deref() == Some(stack_id))
            .map(|c| Replica {
                id: c.id.clone(),
                host_id: c.host_id.clone(),
                service: c.service.clone().unwrap_or_default(),
                slot: c.slot.and_then(|s| u32::try_from(s).ok()).unwrap_or(0),
                hash: c.spec_hash.clone().unwrap_or_default(),
                desired: c.desired.clone(),
                actual: c.actual.clone(),
                health: c.health.clone(),
                exit_code: c.exit_code,
                restart_count: c.restart_count,
            })
            .collect()
    }

    /// Every container not of `stack_id` that holds ports or reservations on a host.
    pub fn others(&self, stack_id: Option<&str>) -> Vec<Existing> {
        self.containers
            .iter()
            .filter(|c| c.stack_id.is_none() || c.stack_id.as_deref() != stack_id)
            .filter(|c| c.actual != "missing")
            .map(|c| {
                let spec: Option<ContainerSpec> = serde_json::from_str(&c.spec).ok();
                let def = c
                    .stack_id
                    .as_ref()
                    .zip(c.service.as_ref())
                    .and_then(|(s, v)| self.defs.get(&(s.clone(), v.clone())));
                Existing {
                    host_id: c.host_id.clone(),
                    stack: c.stack_id.clone().unwrap_or_default(),
                    service: c.service.clone().unwrap_or_else(|| c.name.clone()),
                    slot: 0,
                    ports: spec
                        .map(|s| super::define::host_ports(&s))
                        .unwrap_or_default(),
                    reservations: def.map(|d| d.reservations).unwrap_or_default(),
                }
            })
            .collect()
    }
}

async fn pass(state: &Arc<AppState>) -> Result<(), StoreError> {
    let stacks = state.store.stacks().await?;
    let mut worlds: HashMap<String, World> = HashMap::new();
    for stack in &stacks {
        if !worlds.contains_key(&stack.environment_id) {
            let world = World::gather(state, &stack.environment_id).await?;
            worlds.insert(stack.environment_id.clone(), world);
        }
        if let Some(world) = worlds.get(&stack.environment_id) {
            pass_stack(state, world, stack).await?;
        }
    }
    let live: HashSet<&str> = stacks.iter().map(|s| s.id.as_str()).collect();
    let mut inner = state.reconciler.lock();
    inner.status.retain(|k, _| live.contains(k.as_str()));
    inner.services.retain(|(k, _), _| live.contains(k.as_str()));
    Ok(())
}

async fn pass_stack(
    state: &Arc<AppState>,
    world: &World,
    stack: &StackRow,
) -> Result<(), StoreError> {
    let rows = state.store.services(&stack.id).await?;
    let services: Vec<reconcile::Service> = rows
        .iter()
        .filter_map(|r| {
            Some(reconcile::Service {
                name: r.name.clone(),
                replicas: u32::try_from(r.replicas).ok()?,
                def: serde_json::from_str(&r.spec).ok()?,
                hash: r.spec_hash.clone(),
            })
        })
        .collect();
    let containers = world.replicas_of(&stack.id);
    let others = world.others(Some(&stack.id));
    let now_ms = now_unix() * 1000;
    let (in_flight, memory) = {
        let inner = state.reconciler.lock();
        let memory: HashMap<String, ServiceMemory> = inner
            .services
            .iter()
            .filter(|((s, _), _)| *s == stack.id)
            .map(|((_, name), st)| (name.clone(), st.memory.clone()))
            .collect();
        (inner.in_flight.clone(), memory)
    };
    let decision = reconcile::decide(&reconcile::Input {
        now_ms,
        stack: &stack.name,
        removing: stack.state == "removing",
        services: &services,
        hosts: &world.hosts,
        containers: &containers,
        others: &others,
        in_flight: &in_flight,
        memory: &memory,
    });
    {
        let mut inner = state.reconciler.lock();
        for svc in &decision.batches {
            inner
                .services
                .entry((stack.id.clone(), svc.clone()))
                .or_default()
                .memory
                .last_batch_ms = Some(now_ms);
        }
        inner.status.insert(
            stack.id.clone(),
            StackStatus {
                unplaced: decision.unplaced.clone(),
                waiting: decision.waiting.clone(),
            },
        );
    }
    let env_name = state
        .store
        .environment_by_id(&stack.environment_id)
        .await?
        .map(|e| e.name)
        .unwrap_or_default();
    for action in decision.actions {
        let result = match action {
            Action::Run {
                service,
                slot,
                host_id,
            } => match services.iter().find(|s| s.name == service) {
                Some(svc) => run_replica(state, stack, &env_name, svc, slot, &host_id).await,
                None => Ok(()),
            },
            Action::Remove { id, reason } => {
                remove_replica(state, world, &containers, &services, &id, &reason).await
            }
            Action::Forget { id, remove } => {
                forget_replica(state, world, &containers, &id, remove).await
            }
            Action::Start { id } => start_replica(state, &containers, &id).await,
        };
        if let Err(e) = result {
            tracing::error!(error = %e, stack = %stack.name, "reconciler action failed");
        }
    }
    if decision.removed {
        finish_removal(state, world, stack).await?;
    }
    Ok(())
}

fn grace_of(services: &[reconcile::Service], service: &str) -> u64 {
    services
        .iter()
        .find(|s| s.name == service)
        .and_then(|s| s.def.template.stop_grace_secs)
        .unwrap_or(crate::containers::STOP_GRACE_SECS)
}

async fn run_replica(
    state: &Arc<AppState>,
    stack: &StackRow,
    env_name: &str,
    svc: &reconcile::Service,
    slot: u32,
    host_id: &str,
) -> Result<(), StoreError> {
    let id = new_id("ctr");
    let suffix: String = id
        .trim_start_matches("ctr-")
        .chars()
        .take(6)
        .collect::<String>();
    let mut spec = svc.def.template.clone();
    spec.corral_id = id.clone();
    spec.name = format!("{}_{}.{slot}.{suffix}", stack.name, svc.name);
    spec.environment = env_name.to_owned();
    spec.labels
        .insert(corral_proto::labels::SLOT.into(), slot.to_string());
    let now = now_unix();
    let row = ContainerRow {
        id: id.clone(),
        environment_id: stack.environment_id.clone(),
        host_id: host_id.to_owned(),
        name: spec.name.clone(),
        image: spec.image.clone(),
        spec: serde_json::to_string(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        desired: "running".into(),
        actual: "pending".into(),
        docker_id: None,
        exit_code: None,
        created_at: now,
        updated_at: now,
        stack_id: Some(stack.id.clone()),
        service: Some(svc.name.clone()),
        slot: Some(i64::from(slot)),
        spec_hash: Some(svc.hash.clone()),
        health: None,
        restart_count: 0,
        ip: None,
    };
    state.store.insert_container(&row).await?;
    let payload = serde_json::to_value(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let in_flight = InFlight::mark(state, &id);
    let (_, rx) = match submit(
        state,
        host_id,
        CommandKind::ContainerRun,
        payload,
        state.options.command_ttl,
    )
    .await
    {
        Ok(x) => x,
        Err(e) => {
            let _ = state.store.delete_container(&id).await;
            return Err(e);
        }
    };
    let state = state.clone();
    let stack_id = stack.id.clone();
    let service = svc.name.clone();
    let host_id = host_id.to_owned();
    tokio::spawn(async move {
        match rx.await {
            Ok(Outcome::Done(CommandResult::Ok { value })) => {
                if let Ok(status) = serde_json::from_value::<ContainerStatus>(value) {
                    let _ = state
                        .store
                        .record_status(&host_id, &status, now_unix())
                        .await;
                }
                state.reconciler.started(&stack_id, &service);
            }
            outcome => {
                let message = match outcome {
                    Ok(Outcome::Done(CommandResult::Failed { message })) => message,
                    _ => format!("host did not run {} in time", row.name),
                };
                let _ = state.store.delete_container(&row.id).await;
                let _ = state
                    .store
                    .record_event(
                        now_unix(),
                        "container_failed",
                        Some(&host_id),
                        &format!("replica {}: {message}", row.name),
                    )
                    .await;
                state.reconciler.failed_start(&stack_id, &service, message);
            }
        }
        drop(in_flight);
    });
    Ok(())
}

/// A container marked in flight: no pass acts on it until the mark is dropped — when the host
/// has answered its command, or when the command could not be sent.
struct InFlight {
    state: Arc<AppState>,
    id: String,
}

impl InFlight {
    fn mark(state: &Arc<AppState>, id: &str) -> InFlight {
        state.reconciler.lock().in_flight.insert(id.to_owned());
        InFlight {
            state: state.clone(),
            id: id.to_owned(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.reconciler.finished(&self.id);
    }
}

/// How long the removal of a replica that left a lost host waits for that host to return.
const LOST_HOST_REMOVE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

async fn send_remove(
    state: &Arc<AppState>,
    host_id: &str,
    id: &str,
    grace_secs: u64,
) -> Result<tokio::sync::oneshot::Receiver<Outcome>, StoreError> {
    send_remove_within(state, host_id, id, grace_secs, state.options.command_ttl).await
}

async fn send_remove_within(
    state: &Arc<AppState>,
    host_id: &str,
    id: &str,
    grace_secs: u64,
    ttl: Duration,
) -> Result<tokio::sync::oneshot::Receiver<Outcome>, StoreError> {
    let payload = serde_json::to_value(ContainerRef::lifecycle(id, Some(grace_secs)))
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let (_, rx) = submit(state, host_id, CommandKind::ContainerRemove, payload, ttl).await?;
    Ok(rx)
}

async fn remove_replica(
    state: &Arc<AppState>,
    world: &World,
    containers: &[Replica],
    services: &[reconcile::Service],
    id: &str,
    reason: &str,
) -> Result<(), StoreError> {
    let Some(r) = containers.iter().find(|r| r.id == id) else {
        return Ok(());
    };
    if r.desired != "removed" {
        state.store.set_desired(id, "removed", now_unix()).await?;
        tracing::info!(
            container = %id,
            host = %world.host_name(&r.host_id),
            %reason,
            "removing replica"
        );
    }
    let in_flight = InFlight::mark(state, id);
    let rx = send_remove(state, &r.host_id, id, grace_of(services, &r.service)).await?;
    let state = state.clone();
    let id = id.to_owned();
    let host_id = r.host_id.clone();
    tokio::spawn(async move {
        match rx.await {
            Ok(Outcome::Done(CommandResult::Ok { .. })) => {
                let _ = state.store.delete_container(&id).await;
            }
            Ok(Outcome::Done(CommandResult::Failed { message })) => {
                let _ = state
                    .store
                    .record_event(
                        now_unix(),
                        "container_remove_failed",
                        Some(&host_id),
                        &format!("container {id}: {message}"),
                    )
                    .await;
                // Retried by a later pass; not at once.
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            _ => {}
        }
        drop(in_flight);
    });
    Ok(())
}

async fn forget_replica(
    state: &Arc<AppState>,
    world: &World,
    containers: &[Replica],
    id: &str,
    remove: bool,
) -> Result<(), StoreError> {
    let Some(r) = containers.iter().find(|r| r.id == id) else {
        return Ok(());
    };
    state.store.delete_container(id).await?;
    if remove {
        let _ = state
            .store
            .record_event(
                now_unix(),
                "replica_rescheduled",
                Some(&r.host_id),
                &format!(
                    "replica {}.{} left host {} (disconnected longer than {}s); its removal waits for the host",
                    r.service,
                    r.slot,
                    world.host_name(&r.host_id),
                    state.options.reschedule_after.as_secs()
                ),
            )
            .await;
        // Queued (durably) for the host's return.
        let _ = send_remove_within(state, &r.host_id, id, 0, LOST_HOST_REMOVE_TTL).await;
    }
    Ok(())
}

async fn start_replica(
    state: &Arc<AppState>,
    containers: &[Replica],
    id: &str,
) -> Result<(), StoreError> {
    let Some(r) = containers.iter().find(|r| r.id == id) else {
        return Ok(());
    };
    let payload = serde_json::to_value(ContainerRef::lifecycle(id, None))
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let in_flight = InFlight::mark(state, id);
    let (_, rx) = submit(
        state,
        &r.host_id,
        CommandKind::ContainerStart,
        payload,
        Duration::from_secs(60),
    )
    .await?;
    let state = state.clone();
    let host_id = r.host_id.clone();
    tokio::spawn(async move {
        if let Ok(Outcome::Done(CommandResult::Ok { value })) = rx.await
            && let Ok(Some(status)) = serde_json::from_value::<Option<ContainerStatus>>(value)
        {
            let _ = state
                .store
                .record_status(&host_id, &status, now_unix())
                .await;
        }
        // Docker's own restart policy may be restarting it too; give it a moment.
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(in_flight);
    });
    Ok(())
}

/// The stack's containers are gone: remove its network (and volumes) on every connected host
/// of its environment, then the stack itself.
async fn finish_removal(
    state: &Arc<AppState>,
    world: &World,
    stack: &StackRow,
) -> Result<(), StoreError> {
    let volumes: Vec<String> = if stack.remove_volumes {
        serde_json::from_str(&stack.volumes).unwrap_or_default()
    } else {
        Vec::new()
    };
    let cleanup = StackCleanup {
        stack: stack.name.clone(),
        network: network_name(&stack.name),
        volumes,
    };
    let payload = serde_json::to_value(&cleanup).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut waits = Vec::new();
    for h in world.hosts.iter().filter(|h| h.ready) {
        let (_, rx) = submit(
            state,
            &h.id,
            CommandKind::StackCleanup,
            payload.clone(),
            Duration::from_secs(30),
        )
        .await?;
        waits.push((h.name.clone(), rx));
    }
    for (host, rx) in waits {
        match tokio::time::timeout(Duration::from_secs(35), rx).await {
            Ok(Ok(Outcome::Done(CommandResult::Ok { .. }))) => {}
            Ok(Ok(Outcome::Done(CommandResult::Failed { message }))) => {
                let _ = state
                    .store
                    .record_event(
                        now_unix(),
                        "stack_cleanup_failed",
                        None,
                        &format!("stack {} on host {host}: {message}", stack.name),
                    )
                    .await;
            }
            _ => {}
        }
    }
    state.store.delete_stack(&stack.id).await?;
    let _ = state
        .store
        .record_event(
            now_unix(),
            "stack_removed",
            None,
            &format!("stack {}", stack.name),
        )
        .await;
    Ok(())
}
