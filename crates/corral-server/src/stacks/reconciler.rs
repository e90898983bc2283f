//! The reconciler loop: every second (and at once when woken by `up`, `scale`, `down` or an
//! agent's report) it reads the datastore and the live tunnels, runs
//! [`reconcile::decide`] for each stack, and carries the actions out as durable `container_*`
//! commands. Outcomes land in the datastore; a failed start backs its service off (1 s
//! doubling to 30 s) and is recorded as a `container_failed` event.
//!
//! Fail closed: a stack whose stored definition no longer reads (written by another version,
//! or damaged) is not reconciled at all — none of its containers is touched — and reports
//! why; a `stack_unreadable` event is recorded once. Its containers hold their hosts entirely
//! for the other stacks' placement, since their reservations are unknown.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use corral_control::define::{ServiceDef, host_ports, network_name, takes_overlay_address};
use corral_control::reconcile::{
    self, Action, HostState, LostHostPolicy, Replica, ServiceMemory, host_is_ready,
};
use corral_control::states::{Actual, Desired, StackState};
use corral_proto::{ContainerRef, ContainerSpec, RemoveContainer, StackCleanup, StartContainer};
use corral_scheduler::{Held, HostPort, Resources};

use crate::dispatch::{self, CallError};
use crate::secrets::new_id;
use crate::state::AppState;
use crate::state::reconciler::{SpecFacts, StackStatus};
use crate::store::{ContainerRow, StackRow, StoreError};
use crate::time_fmt::now_unix;

/// How often the reconciler looks even when nothing woke it.
const TICK: Duration = Duration::from_secs(1);

/// Runs passes until the server shuts down.
pub async fn run(state: Arc<AppState>) {
    crate::state::every(
        state,
        |s| &s.reconciler.wake,
        TICK,
        // `up` and reports are acted on at once.
        Duration::ZERO,
        "reconciler pass",
        |s| async move { pass(&s).await },
    )
    .await;
}

/// Hosts and containers of one environment, as one pass sees them.
pub struct World {
    pub hosts: Vec<HostState>,
    host_names: HashMap<String, String>,
    /// The environment's containers, read without their specs (`spec` is empty): what
    /// placement needs of a spec is in `specs`.
    containers: Vec<ContainerRow>,
    /// Indexes into `containers` of each stack's, by stack id.
    by_stack: HashMap<String, Vec<usize>>,
    /// What each container's spec says (`None`: it does not read), by container id.
    specs: HashMap<String, Option<Arc<SpecFacts>>>,
    /// Stacks whose stored definitions do not read, and why.
    unreadable: HashMap<String, String>,
    /// What the containers hold on each host, in all and per stack.
    holds: Holds,
}

/// What some containers hold on one host.
#[derive(Default)]
struct Hold {
    /// Each published port, with how many of the containers publish it.
    ports: HashMap<HostPort, u32>,
    reservations: Resources,
    overlay_addresses: u32,
}

impl Hold {
    fn add(&mut self, ports: &[HostPort], reservations: Resources, overlay_address: bool) {
        let mut distinct = ports.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        for port in distinct {
            *self.ports.entry(port).or_default() += 1;
        }
        self.reservations.cpu_millis =
            (self.reservations.cpu_millis).saturating_add(reservations.cpu_millis);
        self.reservations.memory_bytes =
            (self.reservations.memory_bytes).saturating_add(reservations.memory_bytes);
        self.overlay_addresses += u32::from(overlay_address);
    }

    /// What is held here beyond `part` (a subset of these containers), for the scheduler.
    fn beyond(&self, part: Option<&Hold>, host_id: &str) -> Option<Held> {
        let empty = Hold::default();
        let part = part.unwrap_or(&empty);
        let mut ports: Vec<HostPort> = self
            .ports
            .iter()
            .filter(|(port, n)| **n > part.ports.get(port).copied().unwrap_or(0))
            .map(|(port, _)| *port)
            .collect();
        ports.sort_unstable();
        let held = Held {
            host_id: host_id.to_owned(),
            ports,
            reservations: Resources {
                cpu_millis: (self.reservations.cpu_millis)
                    .saturating_sub(part.reservations.cpu_millis),
                memory_bytes: (self.reservations.memory_bytes)
                    .saturating_sub(part.reservations.memory_bytes),
            },
            overlay_addresses: self
                .overlay_addresses
                .saturating_sub(part.overlay_addresses),
        };
        let nothing = held.ports.is_empty()
            && held.reservations == Resources::default()
            && held.overlay_addresses == 0;
        (!nothing).then_some(held)
    }
}

/// What containers hold per host (by index into `World::hosts`), summed once per pass so
/// that what a stack's *others* hold is one subtraction per host, not a copy of every other
/// container for every stack (at 1,000,000 replicas in 100 stacks, that copy was the pass).
#[derive(Default)]
struct Holds {
    all: HashMap<usize, Hold>,
    by_stack: HashMap<String, HashMap<usize, Hold>>,
}

/// How many containers' specs one read of the datastore brings (and the pass holds as text).
const SPECS_PER_READ: usize = 2_048;

/// Equal spec facts, one allocation each.
#[derive(Default)]
struct SharedFacts(HashSet<Arc<SpecFacts>>);

impl SharedFacts {
    fn of(&mut self, spec: &ContainerSpec) -> Arc<SpecFacts> {
        let facts = SpecFacts {
            ports: host_ports(spec),
            overlay: takes_overlay_address(spec),
        };
        if let Some(shared) = self.0.get(&facts) {
            return shared.clone();
        }
        let shared = Arc::new(facts);
        self.0.insert(shared.clone());
        shared
    }
}

/// The services of one stack as stored, or why they cannot be read.
fn read_services(
    stack: &StackRow,
    rows: &[crate::store::ServiceRow],
) -> Result<Vec<reconcile::Service>, String> {
    rows.iter()
        .map(|r| {
            let def: ServiceDef = serde_json::from_str(&r.spec).map_err(|e| {
                format!(
                    "the stored definition of service {} of stack {} cannot be read ({e}); nothing of the stack is changed until it is deployed again with `corral up`",
                    r.name, stack.name
                )
            })?;
            let replicas = u32::try_from(r.replicas).map_err(|_| {
                format!(
                    "service {} of stack {} has an impossible replica count {}",
                    r.name, stack.name, r.replicas
                )
            })?;
            Ok(reconcile::Service {
                name: r.name.clone(),
                replicas,
                def,
                hash: r.spec_hash.clone(),
            })
        })
        .collect()
}

impl World {
    pub async fn gather(state: &AppState, environment_id: &str) -> Result<World, StoreError> {
        let now = now_unix();
        let policy = LostHostPolicy {
            grace_secs: state.options.reschedule_after.as_secs() as i64,
            server_started_at: now - state.started.elapsed().as_secs() as i64,
        };
        let mut hosts = Vec::new();
        let mut host_names = HashMap::new();
        let capacity: HashMap<String, Option<u32>> = state
            .store
            .overlay_members(environment_id)
            .await?
            .iter()
            .map(|m| (m.id.clone(), crate::overlay::address_capacity(m)))
            .collect();
        for h in state.store.hosts(true).await? {
            host_names.insert(h.id.clone(), h.name.clone());
            if h.environment_id != environment_id {
                continue;
            }
            let info = state.registry.info(&h.id);
            let docker = info.as_ref().and_then(|i| i.docker.as_ref());
            let docker_info = docker.and_then(|d| d.info.as_ref());
            // A host whose labels do not read takes no new replica (its constraints cannot
            // be checked); its replicas stay where they are.
            let labels = h.labels();
            if let Err(e) = &labels {
                tracing::error!(host = %h.name, error = %e, "host not schedulable");
            }
            hosts.push(HostState {
                ready: labels.is_ok()
                    && host_is_ready(
                        info.is_some(),
                        docker.is_some_and(|d| d.state == "available"),
                    ),
                labels: labels.unwrap_or_default(),
                lost: policy.is_lost(h.removed_at.is_some(), info.is_some(), h.last_seen_at, now),
                cpu_millis: docker_info.map_or(0, |d| u64::from(d.cpus) * 1000),
                memory_bytes: docker_info.map_or(0, |d| d.memory_bytes),
                overlay_addresses: capacity.get(&h.id).copied().flatten(),
                id: h.id,
                name: h.name,
            });
        }
        // Without their specs: what placement needs of a spec is read once per container
        // (a container's spec never changes) and kept between passes.
        let containers = state.store.environment_containers(environment_id).await?;
        let unseen: Vec<&str> = {
            let inner = state.reconciler.lock();
            containers
                .iter()
                .filter(|c| !inner.specs.contains_key(&c.id))
                .map(|c| c.id.as_str())
                .collect()
        };
        // Read in chunks, each parsed before the next is read: after a restart every
        // container is unseen, and a million specs' texts at once would be gigabytes.
        let mut read: Vec<(String, Option<Arc<SpecFacts>>)> = Vec::with_capacity(unseen.len());
        let mut shared = SharedFacts::default();
        for chunk in unseen.chunks(SPECS_PER_READ) {
            for (id, text) in state.store.container_specs(chunk).await? {
                // A container whose spec does not read holds ports nobody can know: its host
                // takes no new replica until it is gone.
                let facts = match serde_json::from_str::<ContainerSpec>(&text) {
                    Ok(spec) => Some(shared.of(&spec)),
                    Err(e) => {
                        tracing::error!(container = %id, error = %e, "container spec unreadable; its host is not schedulable");
                        None
                    }
                };
                read.push((id, facts));
            }
        }
        let mut specs = HashMap::with_capacity(containers.len());
        {
            let mut inner = state.reconciler.lock();
            inner.specs.extend(read);
            for c in &containers {
                // One created since its spec was read (and so not read) counts next pass.
                if let Some(facts) = inner.specs.get(&c.id) {
                    specs.insert(c.id.clone(), facts.clone());
                }
            }
        }
        for c in &containers {
            if specs.get(&c.id).is_some_and(Option::is_none)
                && let Some(h) = hosts.iter_mut().find(|h| h.id == c.host_id)
            {
                h.ready = false;
            }
        }
        let mut defs: HashMap<(String, String), ServiceDef> = HashMap::new();
        let mut unreadable = HashMap::new();
        for stack in state.store.stacks().await? {
            if stack.environment_id != environment_id {
                continue;
            }
            let read = match state.store.services(&stack.id).await {
                Ok(rows) => read_services(&stack, &rows),
                Err(StoreError::Corrupt(why)) => Err(format!(
                    "the stored definitions of stack {} cannot be read ({why}); nothing of the stack is changed until it is deployed again with `corral up`",
                    stack.name
                )),
                Err(e) => return Err(e),
            };
            match read {
                Ok(services) => {
                    for svc in services {
                        defs.insert((stack.id.clone(), svc.name), svc.def);
                    }
                }
                Err(why) => {
                    unreadable.insert(stack.id.clone(), why);
                }
            }
        }
        let mut by_stack: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, c) in containers.iter().enumerate() {
            if let Some(stack) = &c.stack_id {
                by_stack.entry(stack.clone()).or_default().push(i);
            }
        }
        let holds = holds(&hosts, &containers, &specs, &defs, &unreadable);
        Ok(World {
            hosts,
            host_names,
            containers,
            by_stack,
            specs,
            unreadable,
            holds,
        })
    }

    pub fn host_name(&self, id: &str) -> String {
        self.host_names
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_owned())
    }

    /// Why some stack of this environment other than `except` cannot be read, if one cannot.
    pub fn unreadable_stack(&self, except: Option<&str>) -> Option<&str> {
        self.unreadable
            .iter()
            .find(|(id, _)| Some(id.as_str()) != except)
            .map(|(_, why)| why.as_str())
    }

    pub fn replicas_of(&self, stack_id: &str) -> Vec<Replica> {
        let Some(indexes) = self.by_stack.get(stack_id) else {
            return Vec::new();
        };
        indexes
            .iter()
            .filter_map(|&i| self.containers.get(i))
            .map(|c| Replica {
                id: c.id.clone(),
                host_id: c.host_id.clone(),
                service: c.service.clone().unwrap_or_default(),
                slot: c.slot.and_then(|s| u32::try_from(s).ok()).unwrap_or(0),
                hash: c.spec_hash.clone().unwrap_or_default(),
                desired: c.desired,
                actual: c.actual,
                health: c.health,
                exit_code: c.exit_code,
                restart_count: c.restart_count,
            })
            .collect()
    }

    /// What the containers not of `stack_id` hold on each host (ports, reservations, overlay
    /// addresses). One whose definition cannot be read holds its whole host: its reservation
    /// is unknown, and guessing none could over-commit the host.
    pub fn others(&self, stack_id: Option<&str>) -> Vec<Held> {
        let own = stack_id.and_then(|s| self.holds.by_stack.get(s));
        self.holds
            .all
            .iter()
            .filter_map(|(&host, all)| {
                let id = &self.hosts.get(host)?.id;
                all.beyond(own.and_then(|o| o.get(&host)), id)
            })
            .collect()
    }
}

/// Sums what each container holds on its host, in all and per stack. Containers on hosts
/// outside `hosts` are left out: the scheduler would ignore them.
fn holds(
    hosts: &[HostState],
    containers: &[ContainerRow],
    specs: &HashMap<String, Option<Arc<SpecFacts>>>,
    defs: &HashMap<(String, String), ServiceDef>,
    unreadable: &HashMap<String, String>,
) -> Holds {
    let index: HashMap<&str, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.id.as_str(), i))
        .collect();
    let mut holds = Holds::default();
    for c in containers.iter().filter(|c| c.actual != Actual::Missing) {
        let Some(&host) = index.get(c.host_id.as_str()) else {
            continue;
        };
        let facts = specs.get(&c.id).cloned().flatten();
        let reservations = match (&c.stack_id, &c.service) {
            (Some(s), _) if unreadable.contains_key(s) => Resources {
                cpu_millis: hosts[host].cpu_millis,
                memory_bytes: hosts[host].memory_bytes,
            },
            (Some(s), Some(v)) => defs
                .get(&(s.clone(), v.clone()))
                .map(|d| d.reservations)
                .unwrap_or_default(),
            _ => Resources::default(),
        };
        let ports = facts.as_ref().map(|f| f.ports.as_slice()).unwrap_or(&[]);
        // As `overlay::holds_address`: one whose spec does not read counts.
        let overlay_address = c.stack_id.is_some() && facts.as_ref().is_none_or(|f| f.overlay);
        holds
            .all
            .entry(host)
            .or_default()
            .add(ports, reservations, overlay_address);
        if let Some(stack) = &c.stack_id {
            holds
                .by_stack
                .entry(stack.clone())
                .or_default()
                .entry(host)
                .or_default()
                .add(ports, reservations, overlay_address);
        }
    }
    holds
}

async fn pass(state: &Arc<AppState>) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let result = pass_all(state).await;
    state.metrics.reconciler_pass(started.elapsed());
    result
}

async fn pass_all(state: &Arc<AppState>) -> Result<(), StoreError> {
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
    // Containers no world holds any more are forgotten (but not those this pass made).
    let fresh = std::mem::take(&mut inner.fresh);
    inner
        .specs
        .retain(|id, _| fresh.contains(id) || worlds.values().any(|w| w.specs.contains_key(id)));
    inner.status.retain(|k, _| live.contains(k.as_str()));
    inner.services.retain(|(k, _), _| live.contains(k.as_str()));
    Ok(())
}

async fn pass_stack(
    state: &Arc<AppState>,
    world: &World,
    stack: &StackRow,
) -> Result<(), StoreError> {
    if let Some(why) = world.unreadable.get(&stack.id) {
        report_unreadable(state, stack, why).await;
        return Ok(());
    }
    let rows = match state.store.services(&stack.id).await {
        Ok(rows) => rows,
        Err(StoreError::Corrupt(why)) => {
            report_unreadable(state, stack, &why).await;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let services = match read_services(stack, &rows) {
        Ok(services) => services,
        // Changed since the world was gathered: next pass.
        Err(why) => {
            report_unreadable(state, stack, &why).await;
            return Ok(());
        }
    };
    let containers = world.replicas_of(&stack.id);
    let removing = stack.state == StackState::Removing;
    // What the environment's other containers hold matters only to placing replicas, and a
    // stack being removed places none: with a hundred stacks of 10,000 being removed, building
    // it for each was a million containers copied per stack per pass.
    let others = if removing {
        Vec::new()
    } else {
        world.others(Some(&stack.id))
    };
    let now_ms = now_unix() * 1000;
    let (in_flight, memory) = {
        let inner = state.reconciler.lock();
        let memory: HashMap<String, ServiceMemory> = inner
            .services
            .iter()
            .filter(|((s, _), _)| *s == stack.id)
            .map(|((_, name), st)| (name.clone(), st.memory.clone()))
            .collect();
        // Only the stack's own: the set holds every command under way.
        let in_flight: HashSet<String> = containers
            .iter()
            .filter(|r| inner.in_flight.contains(&r.id))
            .map(|r| r.id.clone())
            .collect();
        (in_flight, memory)
    };
    let decision = reconcile::decide(&reconcile::Input {
        now_ms,
        stack: &stack.name,
        removing,
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
                unreadable: None,
            },
        );
    }
    let env_name = state.store.environment_name(&stack.environment_id).await?;
    // New replicas are prepared here and stored, with their commands, in one transaction
    // after the loop.
    let mut extras = Extras::default();
    let mut shared = SharedFacts::default();
    let mut runs = Vec::new();
    let mut removals = Vec::new();
    for action in decision.actions {
        let kind = match &action {
            Action::Run { .. } => "run",
            Action::Remove { .. } => "remove",
            Action::Forget { .. } => "forget",
            Action::Start { .. } => "start",
        };
        state.metrics.reconciler_action(kind);
        let result = match action {
            Action::Run {
                service,
                slot,
                host_id,
            } => {
                if let Some(svc) = services.iter().find(|s| s.name == service) {
                    let replica = new_replica(stack, &env_name, svc, slot, &host_id)?;
                    // Known now: the next pass need not read it back.
                    let facts = shared.of(&replica.1);
                    {
                        let mut inner = state.reconciler.lock();
                        inner.specs.insert(replica.0.id.clone(), Some(facts));
                        inner.fresh.insert(replica.0.id.clone());
                    }
                    match extras.add_to(state, stack, &svc.name, replica.1).await {
                        Ok(spec) => runs.push((replica.0, spec)),
                        // Without what rides with its command it is not started at all.
                        Err(why) => state.reconciler.failed_start(&stack.id, &svc.name, why),
                    }
                }
                Ok(())
            }
            Action::Remove { id, reason } => {
                removals.push((id, reason));
                Ok(())
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
    if !removals.is_empty()
        && let Err(e) = remove_replicas(state, world, &containers, &services, removals).await
    {
        tracing::error!(error = %e, stack = %stack.name, "reconciler could not remove replicas");
    }
    if !runs.is_empty()
        && let Err(e) = run_replicas(state, runs).await
    {
        tracing::error!(error = %e, stack = %stack.name, "reconciler could not start replicas");
    }
    if decision.removed {
        finish_removal(state, world, stack).await?;
    }
    Ok(())
}

/// Marks a stack failed with the reason (and records it once, when it starts failing).
async fn report_unreadable(state: &AppState, stack: &StackRow, why: &str) {
    let first = {
        let mut inner = state.reconciler.lock();
        let status = inner.status.entry(stack.id.clone()).or_default();
        let first = status.unreadable.as_deref() != Some(why);
        status.unreadable = Some(why.to_owned());
        first
    };
    if first {
        tracing::error!(stack = %stack.name, "{why}");
        state.record_event("stack_unreadable", None, why).await;
    }
}

fn grace_of(services: &[reconcile::Service], service: &str) -> u64 {
    services
        .iter()
        .find(|s| s.name == service)
        .and_then(|s| s.def.template.stop_grace_secs)
        .unwrap_or(crate::containers::STOP_GRACE_SECS)
}

/// A new replica of `svc` in `slot` on `host_id`: its row, and the spec its host runs.
fn new_replica(
    stack: &StackRow,
    env_name: &str,
    svc: &reconcile::Service,
    slot: u32,
    host_id: &str,
) -> Result<(ContainerRow, ContainerSpec), StoreError> {
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
        id,
        environment_id: stack.environment_id.clone(),
        host_id: host_id.to_owned(),
        name: spec.name.clone(),
        image: spec.image.clone(),
        spec: serde_json::to_string(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        desired: Desired::Running,
        actual: Actual::Pending,
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
    Ok((row, spec))
}

/// Stores a pass's new replicas with their `container_run` commands (one transaction), marks
/// them in flight and settles each as its host answers.
async fn run_replicas(
    state: &Arc<AppState>,
    runs: Vec<(ContainerRow, ContainerSpec)>,
) -> Result<(), StoreError> {
    let marks: Vec<InFlight> = runs
        .iter()
        .map(|(row, _)| InFlight::mark(state, &row.id))
        .collect();
    // What each waiter keeps: not the row (its spec is the bulk of it).
    struct Started {
        id: String,
        name: String,
        host_id: String,
        stack_id: Option<String>,
        service: Option<String>,
    }
    let rows: Vec<Started> = runs
        .iter()
        .map(|(row, _)| Started {
            id: row.id.clone(),
            name: row.name.clone(),
            host_id: row.host_id.clone(),
            stack_id: row.stack_id.clone(),
            service: row.service.clone(),
        })
        .collect();
    let pending = dispatch::send_runs(state, runs, state.options.command_ttl).await?;
    for ((row, pending), in_flight) in rows.into_iter().zip(pending).zip(marks) {
        let (Some(pending), Some(stack_id), Some(service)) =
            (pending, row.stack_id.clone(), row.service.clone())
        else {
            // Its name was taken: a later pass places the slot again.
            tracing::warn!(container = %row.name, "replica name taken; placed again later");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            match pending.wait().await {
                Ok(status) => {
                    let _ = state
                        .store
                        .record_status(&row.host_id, &status, now_unix())
                        .await;
                    state.reconciler.started(&stack_id, &service);
                }
                Err(e) => {
                    let message = match e {
                        CallError::Expired => format!("host did not run {} in time", row.name),
                        other => other.to_string(),
                    };
                    let _ = state.store.delete_container(&row.id).await;
                    state
                        .record_event(
                            "container_failed",
                            Some(&row.host_id),
                            &format!("replica {}: {message}", row.name),
                        )
                        .await;
                    state.reconciler.failed_start(&stack_id, &service, message);
                }
            }
            drop(in_flight);
        });
    }
    Ok(())
}

/// What only a replica's `container_run` carries, looked up once per pass: the registry
/// accounts of the environment and the contents of each service's files.
#[derive(Default)]
struct Extras {
    auths: Option<crate::images::Auths>,
    files: HashMap<String, Vec<corral_proto::FileContent>>,
}

impl Extras {
    /// Adds to a replica's spec its registry's account (unless it never pulls) and the
    /// contents of the files it mounts. Never stored: sealed in the command queue only.
    async fn add_to(
        &mut self,
        state: &Arc<AppState>,
        stack: &StackRow,
        service: &str,
        mut spec: ContainerSpec,
    ) -> Result<ContainerSpec, String> {
        if spec.pull != corral_proto::PullPolicy::Never {
            if self.auths.is_none() {
                self.auths = Some(
                    crate::images::auths(state, &stack.environment_id)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            spec.registry_auth = self.auths.as_ref().and_then(|a| a.for_image(&spec.image));
        }
        if !spec.files.is_empty() {
            if !self.files.contains_key(service) {
                let mut digests: Vec<String> = Vec::new();
                for f in &spec.files {
                    if f.entries.is_empty() {
                        digests.push(f.digest.clone());
                    } else {
                        digests.extend(f.entries.iter().map(|e| e.digest.clone()));
                    }
                }
                digests.sort();
                digests.dedup();
                let contents = state
                    .store
                    .stack_files(&stack.id, &digests)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|(digest, data)| corral_proto::FileContent { digest, data })
                    .collect();
                self.files.insert(service.to_owned(), contents);
            }
            spec.file_contents = self.files.get(service).cloned().unwrap_or_default();
        }
        Ok(spec)
    }
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

/// How long a restart of an exited replica may take.
const START_TTL: Duration = Duration::from_secs(60);
/// How long a host may take to remove a stack's network and volumes.
const CLEANUP_TTL: Duration = Duration::from_secs(30);

/// How long the removal of a replica that left a lost host waits for that host to return.
const LOST_HOST_REMOVE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

async fn send_remove(
    state: &Arc<AppState>,
    host_id: &str,
    id: &str,
    grace_secs: u64,
    ttl: Duration,
) -> Result<dispatch::Pending<RemoveContainer>, StoreError> {
    let request = RemoveContainer(ContainerRef::lifecycle(id, Some(grace_secs)));
    dispatch::send(state, host_id, request, ttl).await
}

/// Marks a pass's replicas to remove and queues their `container_remove` commands (one
/// transaction), marks them in flight and deletes each row as its host confirms.
async fn remove_replicas(
    state: &Arc<AppState>,
    world: &World,
    containers: &[Replica],
    services: &[reconcile::Service],
    removals: Vec<(String, String)>,
) -> Result<(), StoreError> {
    let by_id: HashMap<&str, &Replica> = containers.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut requests = Vec::with_capacity(removals.len());
    let mut marks = Vec::with_capacity(removals.len());
    let mut newly = 0usize;
    for (id, reason) in &removals {
        let Some(r) = by_id.get(id.as_str()) else {
            continue;
        };
        if r.desired != Desired::Removed {
            newly += 1;
            tracing::debug!(
                container = %id,
                host = %world.host_name(&r.host_id),
                %reason,
                "removing replica"
            );
        }
        let grace = grace_of(services, &r.service);
        let request = RemoveContainer(ContainerRef::lifecycle(id, Some(grace)));
        requests.push((id.clone(), r.host_id.clone(), request));
        marks.push(InFlight::mark(state, id));
    }
    if newly > 0 {
        let reason = removals.first().map_or("", |(_, why)| why.as_str());
        tracing::info!(replicas = newly, %reason, "removing replicas");
    }
    if requests.is_empty() {
        return Ok(());
    }
    let hosts: Vec<(String, String)> = requests
        .iter()
        .map(|(id, host, _)| (id.clone(), host.clone()))
        .collect();
    let pending = dispatch::send_removes(state, requests, state.options.command_ttl).await?;
    for (((id, host_id), pending), in_flight) in hosts.into_iter().zip(pending).zip(marks) {
        let state = state.clone();
        tokio::spawn(async move {
            match pending.wait().await {
                Ok(()) => {
                    let _ = state.store.delete_container(&id).await;
                }
                Err(CallError::Expired | CallError::Abandoned) => {}
                Err(e) => {
                    let message = e.to_string();
                    state
                        .record_event(
                            "container_remove_failed",
                            Some(&host_id),
                            &format!("container {id}: {message}"),
                        )
                        .await;
                    // Retried by a later pass; not at once.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
            drop(in_flight);
        });
    }
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
        state.record_event("replica_rescheduled",
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
        let _ = send_remove(state, &r.host_id, id, 0, LOST_HOST_REMOVE_TTL).await;
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
    let in_flight = InFlight::mark(state, id);
    let request = StartContainer(ContainerRef::lifecycle(id, None));
    let pending = dispatch::send(state, &r.host_id, request, START_TTL).await?;
    let state = state.clone();
    let host_id = r.host_id.clone();
    tokio::spawn(async move {
        if let Ok(Some(status)) = pending.wait().await {
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
/// of its environment (one transaction queues them all), then the stack itself. The waiting
/// and the deletion run beside the passes, so stacks removed together finish together
/// instead of one after another; until it ends, passes leave the stack alone.
async fn finish_removal(
    state: &Arc<AppState>,
    world: &World,
    stack: &StackRow,
) -> Result<(), StoreError> {
    let Some(finishing) = Finishing::mark(state, &stack.id) else {
        return Ok(());
    };
    let volumes: Vec<String> = if stack.remove_volumes {
        serde_json::from_str(&stack.volumes)
            .map_err(|e| StoreError::Corrupt(format!("stack {}: volumes: {e}", stack.name)))?
    } else {
        Vec::new()
    };
    let cleanup = StackCleanup {
        stack: stack.name.clone(),
        network: network_name(&stack.name),
        volumes,
    };
    let ready: Vec<&HostState> = world.hosts.iter().filter(|h| h.ready).collect();
    let ids: Vec<&str> = ready.iter().map(|h| h.id.as_str()).collect();
    let names: Vec<String> = ready.iter().map(|h| h.name.clone()).collect();
    let pending = dispatch::send_to_each(state, &ids, cleanup, CLEANUP_TTL).await?;
    let state = state.clone();
    let stack = stack.clone();
    tokio::spawn(async move {
        let outcomes = futures_util::future::join_all(pending.into_iter().map(|p| p.wait())).await;
        for (host, outcome) in names.iter().zip(outcomes) {
            match outcome {
                Ok(_) | Err(CallError::Expired | CallError::Abandoned) => {}
                Err(e) => {
                    state
                        .record_event(
                            "stack_cleanup_failed",
                            None,
                            &format!("stack {} on host {host}: {e}", stack.name),
                        )
                        .await;
                }
            }
        }
        match state.store.delete_stack(&stack.id).await {
            Ok(()) => {
                state
                    .record_event("stack_removed", None, &format!("stack {}", stack.name))
                    .await;
            }
            // The next pass tries again.
            Err(e) => {
                tracing::error!(stack = %stack.name, error = %e, "cannot delete a removed stack")
            }
        }
        drop(finishing);
    });
    Ok(())
}

/// A stack whose removal is being finished: passes leave it alone until the mark is dropped.
struct Finishing {
    state: Arc<AppState>,
    stack_id: String,
}

impl Finishing {
    /// `None`: its removal is already being finished.
    fn mark(state: &Arc<AppState>, stack_id: &str) -> Option<Finishing> {
        let fresh = state
            .reconciler
            .lock()
            .finishing
            .insert(stack_id.to_owned());
        fresh.then(|| Finishing {
            state: state.clone(),
            stack_id: stack_id.to_owned(),
        })
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        self.state
            .reconciler
            .lock()
            .finishing
            .remove(&self.stack_id);
        self.state.reconciler.wake();
    }
}
