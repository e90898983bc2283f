//! One reconciliation pass of one stack. Given the desired services, the hosts and the
//! stack's containers as the datastore knows them, decide what to do now. No I/O, no clock
//! (the time is an argument); `reconciler` gathers the input and carries the actions out.
//!
//! Rules, in order:
//! 1. **Stack removal** (`corral down`): every container is removed; the stack is done when
//!    none is left.
//! 2. **Gone or lost**: a container reported `missing` (removed behind corral's back) is
//!    forgotten, so its slot is placed again. A container on a host disconnected longer than
//!    the grace period (or removed) is forgotten too, and its removal is queued for that host:
//!    when it returns, the container is removed (and the agent's inventory would reveal it as
//!    an orphan anyway), so a service never keeps more replicas than desired.
//! 3. **Restart policy**: an exited container is started again when its policy says so
//!    (`always`, `unless-stopped`, `on-failure` with a non-zero exit code and retries left);
//!    with `no` it stays exited. A `dead` container is removed and replaced.
//! 4. **Rolling update**: containers made from an older definition are replaced
//!    `update.parallelism` at a time (0 = all at once), `update.delay` between batches.
//!    `stop-first` removes the old container and places its slot once it is gone; `start-first`
//!    places the new container beside the old one and removes the old once the new one is
//!    running (and healthy, with a healthcheck).
//! 5. **depends_on**: a service gets no new replica until every replica of each service it
//!    depends on runs (and is healthy, for `service_healthy`).
//! 6. **Scheduling**: `corral_scheduler::schedule` places missing slots and names surplus and
//!    duplicate containers; a service that just failed to start a replica waits for its
//!    back-off before the next attempt.

use std::collections::{BTreeMap, HashMap, HashSet};

use corral_proto::{ContainerState, Health, RestartPolicyName};
use corral_scheduler::{self as sched, Existing, Held, RemovalReason, ServiceRef};

use crate::define::{DependsOn, ServiceDef};
use crate::states::{self, Actual, Desired};
use crate::unplaced::Unplaced;

/// A desired service.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub replicas: u32,
    pub def: ServiceDef,
    pub hash: String,
}

/// A host as the reconciler sees it.
#[derive(Debug, Clone)]
pub struct HostState {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Has a live tunnel and its Docker engine answers.
    pub ready: bool,
    /// Disconnected for longer than the grace period (or removed): its replicas are placed
    /// elsewhere.
    pub lost: bool,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Container addresses in its overlay subnet; `None` when it is on no overlay (no limit),
    /// `Some(0)` when it joined one but has no subnet (its environment's range is full).
    pub overlay_addresses: Option<u32>,
}

/// A container of the stack.
#[derive(Debug, Clone)]
pub struct Replica {
    pub id: String,
    pub host_id: String,
    pub service: String,
    pub slot: u32,
    pub hash: String,
    /// `Running`, or `Removed` while its removal is under way.
    pub desired: Desired,
    pub actual: Actual,
    pub health: Option<Health>,
    pub exit_code: Option<i64>,
    pub restart_count: i64,
}

/// What the reconciler remembers of a service between passes.
#[derive(Debug, Clone, Default)]
pub struct ServiceMemory {
    /// No new replica before this time (ms): the back-off after a failed start.
    pub not_before_ms: i64,
    /// When the last update batch started (ms).
    pub last_batch_ms: Option<i64>,
}

pub struct Input<'a> {
    pub now_ms: i64,
    pub stack: &'a str,
    pub removing: bool,
    /// In start order.
    pub services: &'a [Service],
    pub hosts: &'a [HostState],
    pub containers: &'a [Replica],
    /// What containers of other stacks and single containers hold on these hosts (ports,
    /// reservations, overlay addresses), summed per host: no service of this stack refers to
    /// them. Read only to place replicas: a stack being removed may pass none.
    pub others: &'a [Held],
    /// Containers with a command under way: nothing new is decided for them (only the
    /// stack's own are looked up).
    pub in_flight: &'a HashSet<String>,
    pub memory: &'a HashMap<String, ServiceMemory>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make and start replica `slot` of `service` on `host_id`.
    Run {
        service: String,
        slot: u32,
        host_id: String,
    },
    /// Stop and remove the container (it stays listed as `removed` until its host confirms).
    Remove { id: String, reason: String },
    /// Delete the container's row now (it is gone, or its host is lost); with `remove`, also
    /// queue its removal for when the host returns.
    Forget { id: String, remove: bool },
    /// Start an exited container again (restart policy).
    Start { id: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// Service → its replicas that could not be placed, grouped by reason (bounded).
    pub unplaced: BTreeMap<String, Unplaced>,
    /// Service → what it waits for.
    pub waiting: BTreeMap<String, String>,
    /// Services that started an update batch in this pass.
    pub batches: Vec<String>,
    /// The stack is being removed and nothing of it is left.
    pub removed: bool,
}

/// Running, and healthy when it has a healthcheck.
pub fn is_ready(r: &Replica) -> bool {
    states::is_ready(r.actual, r.health)
}

/// When a disconnected host counts as lost, so its replicas are placed elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostHostPolicy {
    /// How long a host may stay disconnected (`--reschedule-after`), in seconds.
    pub grace_secs: i64,
    /// When this server started (Unix seconds).
    pub server_started_at: i64,
}

impl LostHostPolicy {
    /// A removed host is lost at once. A disconnected one is lost after the grace period,
    /// measured from when it was last seen or from when this server started, whichever is
    /// later: a restarted server gives every host the full grace period to reconnect.
    pub fn is_lost(&self, removed: bool, connected: bool, last_seen: i64, now: i64) -> bool {
        let disconnected_since = last_seen.max(self.server_started_at);
        removed || (!connected && now - disconnected_since > self.grace_secs)
    }
}

/// A host takes new replicas only with a live tunnel and a Docker engine that answers.
pub fn host_is_ready(connected: bool, docker_available: bool) -> bool {
    connected && docker_available
}

fn should_restart(def: &ServiceDef, r: &Replica) -> bool {
    match def.restart.name {
        RestartPolicyName::Always | RestartPolicyName::UnlessStopped => true,
        RestartPolicyName::OnFailure => {
            r.exit_code.unwrap_or(1) != 0
                && def
                    .restart
                    .max_retries
                    .is_none_or(|max| r.restart_count < i64::from(max))
        }
        RestartPolicyName::No => false,
    }
}

/// Removes `r` (for `reason`) unless a command for it is under way.
fn remove_unless_busy(d: &mut Decision, r: &Replica, busy: bool, reason: impl Into<String>) {
    if !busy {
        d.actions.push(Action::Remove {
            id: r.id.clone(),
            reason: reason.into(),
        });
    }
}

/// The input of one pass, indexed.
struct Pass<'i, 'a> {
    input: &'i Input<'a>,
    hosts: HashMap<&'i str, &'i HostState>,
    services: HashMap<&'i str, &'i Service>,
}

impl<'i, 'a> Pass<'i, 'a> {
    fn new(input: &'i Input<'a>) -> Self {
        Pass {
            input,
            hosts: input.hosts.iter().map(|h| (h.id.as_str(), h)).collect(),
            services: input
                .services
                .iter()
                .map(|s| (s.name.as_str(), s))
                .collect(),
        }
    }

    fn busy(&self, r: &Replica) -> bool {
        self.input.in_flight.contains(&r.id)
    }

    fn on_lost_host(&self, r: &Replica) -> bool {
        self.hosts.get(r.host_id.as_str()).is_none_or(|h| h.lost)
    }

    /// What a replica holds on its host: ports and reservations, and its slot unless it is
    /// listed under `as_service = ""`.
    fn hold(&self, r: &Replica, as_service: &str, svc: &Service) -> Existing {
        Existing {
            host_id: r.host_id.clone(),
            stack: self.input.stack.to_owned(),
            service: as_service.to_owned(),
            slot: r.slot,
            ports: svc.def.host_ports(),
            reservations: svc.def.reservations,
            overlay_address: svc.def.takes_overlay_address(),
        }
    }
}

/// The stack's containers after rules 1–3, per service.
#[derive(Default)]
struct Sorted<'i> {
    alive: BTreeMap<&'i str, Vec<&'i Replica>>,
    removing: BTreeMap<&'i str, Vec<&'i Replica>>,
}

/// One pass over one stack.
pub fn decide(input: &Input<'_>) -> Decision {
    let pass = Pass::new(input);
    let mut d = Decision::default();
    if input.removing {
        remove_stack(&pass, &mut d);
        return d;
    }
    let sorted = sort_replicas(&pass, &mut d);
    let mut existing: Vec<Existing> = Vec::new();
    let mut scheduled = Vec::new();
    for svc in input.services {
        update_step(&pass, svc, &sorted, &mut d, &mut existing);
        match unmet_dependencies(&pass, svc, &sorted) {
            None => scheduled.push(svc),
            Some(waits) => {
                d.waiting.insert(svc.name.clone(), waits);
            }
        }
    }
    schedule(&pass, &sorted, &scheduled, existing, &mut d);
    d
}

/// Rule 1: every container goes; the stack is done when none is left.
fn remove_stack(pass: &Pass<'_, '_>, d: &mut Decision) {
    for r in pass.input.containers {
        if r.actual == Actual::Missing || pass.on_lost_host(r) {
            d.actions.push(Action::Forget {
                id: r.id.clone(),
                remove: r.actual != Actual::Missing,
            });
        } else {
            remove_unless_busy(d, r, pass.busy(r), "stack removed");
        }
    }
    d.removed = pass.input.containers.is_empty();
}

/// Rules 2–3: forget the missing and the lost, retry removals, remove the dead and what
/// left the stack, restart per policy; sort the rest into alive and removing.
fn sort_replicas<'i>(pass: &Pass<'i, '_>, d: &mut Decision) -> Sorted<'i> {
    let mut sorted = Sorted::default();
    for r in pass.input.containers {
        if r.actual == Actual::Missing {
            d.actions.push(Action::Forget {
                id: r.id.clone(),
                remove: false,
            });
            continue;
        }
        if pass.on_lost_host(r) {
            d.actions.push(Action::Forget {
                id: r.id.clone(),
                remove: true,
            });
            continue;
        }
        if r.desired == Desired::Removed {
            remove_unless_busy(d, r, pass.busy(r), "removal retried");
            sorted
                .removing
                .entry(r.service.as_str())
                .or_default()
                .push(r);
            continue;
        }
        let Some(svc) = pass.services.get(r.service.as_str()) else {
            let reason = format!("service {} is no longer in the stack", r.service);
            remove_unless_busy(d, r, pass.busy(r), reason);
            continue;
        };
        if r.actual == Actual::Docker(ContainerState::Dead) {
            remove_unless_busy(d, r, pass.busy(r), "dead");
            sorted
                .removing
                .entry(r.service.as_str())
                .or_default()
                .push(r);
            continue;
        }
        if r.actual == Actual::Docker(ContainerState::Exited)
            && !pass.busy(r)
            && should_restart(&svc.def, r)
        {
            d.actions.push(Action::Start { id: r.id.clone() });
        }
        sorted.alive.entry(r.service.as_str()).or_default().push(r);
    }
    sorted
}

/// Rule 4 for one service: the rolling update's next batch, and what its containers hold
/// for the scheduler.
fn update_step<'i>(
    pass: &Pass<'i, '_>,
    svc: &'i Service,
    sorted: &Sorted<'i>,
    d: &mut Decision,
    existing: &mut Vec<Existing>,
) {
    let empty = Vec::new();
    let mine = sorted.alive.get(svc.name.as_str()).unwrap_or(&empty);
    let going = sorted.removing.get(svc.name.as_str()).unwrap_or(&empty);
    // Removing containers keep their slot until they are gone (stop-first), and their
    // ports and reservations. One whose slot a live container already holds (the old
    // container of a start-first update, removed once its replacement was ready) holds
    // only its ports and reservation: holding the slot too would make the scheduler name
    // its replacement a duplicate.
    for r in going {
        let as_service = if mine.iter().any(|m| m.slot == r.slot) {
            ""
        } else {
            svc.name.as_str()
        };
        existing.push(pass.hold(r, as_service, svc));
    }
    let current: Vec<&&Replica> = mine.iter().filter(|r| r.hash == svc.hash).collect();
    let mut outdated: Vec<&&Replica> = mine.iter().filter(|r| r.hash != svc.hash).collect();
    // Batches go in slot order, whatever order the store listed the containers in.
    outdated.sort_by_key(|r| (r.slot, r.id.as_str()));
    // An outdated container whose slot already has a current one is being replaced
    // (start-first): it no longer holds its slot, and goes once the new one is ready.
    let mut displaced: HashSet<&str> = HashSet::new();
    for o in &outdated {
        if let Some(n) = current.iter().find(|n| n.slot == o.slot) {
            displaced.insert(o.id.as_str());
            if is_ready(n) && !pass.busy(o) {
                d.actions.push(Action::Remove {
                    id: o.id.clone(),
                    reason: "updated".into(),
                });
            }
        }
    }
    if !outdated.is_empty() {
        // Start-first removes old containers only once their replacements are ready, so
        // those removals do not hold the next batch back; stop-first ones do, and so does
        // a slot left empty (its old container gone, its replacement placed in this pass
        // or not placeable yet): otherwise stop-first would remove the next batch before
        // the previous one's replacements exist, and go on removing while they cannot be
        // placed.
        let in_progress = current.iter().filter(|r| !is_ready(r)).count()
            + if svc.def.update.start_first {
                0
            } else {
                let held: HashSet<u32> = mine.iter().chain(going).map(|r| r.slot).collect();
                going.len() + (1..=svc.replicas).filter(|s| !held.contains(s)).count()
            };
        let parallelism = match svc.def.update.parallelism {
            0 => usize::MAX,
            p => p as usize,
        };
        let memory = pass.input.memory.get(&svc.name);
        let delay_over = memory.and_then(|m| m.last_batch_ms).is_none_or(|at| {
            svc.def.update.delay_ms == 0
                || (in_progress == 0 && pass.input.now_ms - at >= svc.def.update.delay_ms as i64)
        });
        let capacity = parallelism.saturating_sub(in_progress);
        if capacity > 0 && delay_over {
            let batch: Vec<&&&Replica> = outdated
                .iter()
                .filter(|o| !displaced.contains(o.id.as_str()) && !pass.busy(o))
                .take(capacity)
                .collect();
            if !batch.is_empty() {
                d.batches.push(svc.name.clone());
            }
            for o in batch {
                if svc.def.update.start_first {
                    displaced.insert(o.id.as_str());
                } else {
                    d.actions.push(Action::Remove {
                        id: o.id.clone(),
                        reason: "update".into(),
                    });
                }
            }
        }
    }
    for r in mine {
        // A displaced container holds its ports and reservation but not its slot, so the
        // scheduler places the new replica beside it.
        let as_service = if displaced.contains(r.id.as_str()) {
            ""
        } else {
            svc.name.as_str()
        };
        existing.push(pass.hold(r, as_service, svc));
    }
}

/// Rule 5: what `svc` still waits for (`None` when every dependency is met).
fn unmet_dependencies(pass: &Pass<'_, '_>, svc: &Service, sorted: &Sorted<'_>) -> Option<String> {
    let mut waits = Vec::new();
    for (dep, cond) in &svc.def.depends_on {
        let Some(dep_svc) = pass.services.get(dep.as_str()) else {
            continue;
        };
        let ok = sorted
            .alive
            .get(dep.as_str())
            .map(|rs| {
                rs.iter()
                    .filter(|r| {
                        r.hash == dep_svc.hash
                            && match cond {
                                DependsOn::Started => r.actual.is_running(),
                                DependsOn::Healthy => is_ready(r),
                            }
                    })
                    .count()
            })
            .unwrap_or(0);
        if (ok as u64) < u64::from(dep_svc.replicas) {
            waits.push(format!(
                "{dep} ({})",
                match cond {
                    DependsOn::Started => "started",
                    DependsOn::Healthy => "healthy",
                }
            ));
        }
    }
    (!waits.is_empty()).then(|| format!("waiting for {}", waits.join(", ")))
}

/// Rule 6: the scheduler places missing slots (unless the service backs off) and names
/// surplus and duplicate containers.
fn schedule(
    pass: &Pass<'_, '_>,
    sorted: &Sorted<'_>,
    scheduled: &[&Service],
    existing: Vec<Existing>,
    d: &mut Decision,
) {
    let input = pass.input;
    let snapshot = sched::Snapshot {
        hosts: input
            .hosts
            .iter()
            .filter(|h| !h.lost)
            .map(|h| sched::Host {
                id: h.id.clone(),
                name: h.name.clone(),
                labels: h.labels.clone(),
                ready: h.ready,
                cpu_millis: h.cpu_millis,
                memory_bytes: h.memory_bytes,
                overlay_addresses: h.overlay_addresses,
            })
            .collect(),
        services: scheduled
            .iter()
            .map(|s| sched::ServiceSpec {
                stack: input.stack.to_owned(),
                service: s.name.clone(),
                replicas: s.replicas,
                constraints: s.def.constraints.clone(),
                ports: s.def.host_ports(),
                reservations: s.def.reservations,
                spread: true,
                max_per_host: None,
                affinity: s
                    .def
                    .affinity
                    .iter()
                    .map(|a| ServiceRef::new(input.stack, a))
                    .collect(),
                anti_affinity: s
                    .def
                    .anti_affinity
                    .iter()
                    .map(|a| ServiceRef::new(input.stack, a))
                    .collect(),
                overlay_address: s.def.takes_overlay_address(),
            })
            .collect(),
        existing,
        held: input.others.to_vec(),
    };
    let plan = sched::schedule(&snapshot);
    for p in plan.placements {
        let backing_off = input
            .memory
            .get(&p.service)
            .is_some_and(|m| m.not_before_ms > input.now_ms);
        if !backing_off {
            d.actions.push(Action::Run {
                service: p.service,
                slot: p.slot,
                host_id: p.host_id,
            });
        }
    }
    for u in plan.unplaced {
        d.unplaced
            .entry(u.service.clone())
            .or_default()
            .add(u.slot, &format!("no host fits — {}", u.reasons.join("; ")));
    }
    for rm in plan.removals {
        if rm.reason == RemovalReason::HostGone {
            continue;
        }
        // The live container of that slot on that host (the newest, for a duplicate).
        let target = sorted.alive.get(rm.service.as_str()).and_then(|rs| {
            rs.iter()
                .rev()
                .find(|r| r.slot == rm.slot && r.host_id == rm.host_id && !pass.busy(r))
        });
        if let Some(r) = target {
            let already = d
                .actions
                .iter()
                .any(|a| matches!(a, Action::Remove { id, .. } if *id == r.id));
            if !already {
                d.actions.push(Action::Remove {
                    id: r.id.clone(),
                    reason: rm.reason.to_string(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use corral_proto::{HealthSpec, PortSpec, RestartSpec};
    use corral_scheduler::{HostPort, Resources};
    use proptest::prelude::*;

    use super::*;
    use crate::define::{self, UpdateDef};

    const NOW: i64 = 1_000_000;

    // ---- builders ----

    fn def() -> ServiceDef {
        ServiceDef {
            template: corral_proto::ContainerSpec {
                image: "corral-test/busybox:latest".into(),
                ..Default::default()
            },
            constraints: Vec::new(),
            reservations: Resources::default(),
            affinity: Vec::new(),
            anti_affinity: Vec::new(),
            update: UpdateDef {
                parallelism: 1,
                delay_ms: 0,
                start_first: false,
            },
            depends_on: BTreeMap::new(),
            restart: restart("always", None),
        }
    }

    fn restart(name: &str, max_retries: Option<u32>) -> RestartSpec {
        RestartSpec {
            name: serde_json::from_value(serde_json::Value::String(name.into())).unwrap(),
            max_retries,
        }
    }

    fn with_port(mut d: ServiceDef, port: u16) -> ServiceDef {
        d.template.ports.push(PortSpec {
            host: port,
            container: 80,
            udp: false,
            host_ip: None,
        });
        d
    }

    fn with_healthcheck(mut d: ServiceDef) -> ServiceDef {
        d.template.healthcheck = Some(HealthSpec {
            test: Some(vec!["CMD".into(), "true".into()]),
            ..HealthSpec::default()
        });
        d
    }

    fn with_update(
        mut d: ServiceDef,
        parallelism: u32,
        delay_ms: u64,
        start_first: bool,
    ) -> ServiceDef {
        d.update = UpdateDef {
            parallelism,
            delay_ms,
            start_first,
        };
        d
    }

    fn service(name: &str, replicas: u32, def: ServiceDef, hash: &str) -> Service {
        Service {
            name: name.into(),
            replicas,
            def,
            hash: hash.into(),
        }
    }

    fn host(id: &str, ready: bool, lost: bool) -> HostState {
        HostState {
            id: id.into(),
            name: id.into(),
            labels: BTreeMap::new(),
            ready,
            lost,
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            overlay_addresses: None,
        }
    }

    fn ready_host(id: &str) -> HostState {
        host(id, true, false)
    }

    fn labelled(mut h: HostState, key: &str, value: &str) -> HostState {
        h.labels.insert(key.into(), value.into());
        h
    }

    /// A running, healthy-enough replica (no healthcheck state).
    fn rep(id: &str, host_id: &str, svc: &str, slot: u32, hash: &str) -> Replica {
        Replica {
            id: id.into(),
            host_id: host_id.into(),
            service: svc.into(),
            slot,
            hash: hash.into(),
            desired: Desired::Running,
            actual: Actual::Docker(ContainerState::Running),
            health: None,
            exit_code: None,
            restart_count: 0,
        }
    }

    fn actual(mut r: Replica, actual: &str) -> Replica {
        r.actual = Actual::parse(actual).unwrap();
        r
    }

    fn exited(r: Replica, code: i64, restart_count: i64) -> Replica {
        let mut r = actual(r, "exited");
        r.exit_code = Some(code);
        r.restart_count = restart_count;
        r
    }

    fn being_removed(mut r: Replica) -> Replica {
        r.desired = Desired::Removed;
        r
    }

    fn health(mut r: Replica, h: &str) -> Replica {
        r.health = Some(Health::parse(h).unwrap());
        r
    }

    /// Everything `decide` reads, owned.
    #[derive(Debug, Clone)]
    struct World {
        now_ms: i64,
        removing: bool,
        services: Vec<Service>,
        hosts: Vec<HostState>,
        containers: Vec<Replica>,
        others: Vec<Held>,
        in_flight: HashSet<String>,
        memory: HashMap<String, ServiceMemory>,
    }

    impl World {
        fn new(services: Vec<Service>, hosts: Vec<HostState>, containers: Vec<Replica>) -> World {
            World {
                now_ms: NOW,
                removing: false,
                services,
                hosts,
                containers,
                others: Vec::new(),
                in_flight: HashSet::new(),
                memory: HashMap::new(),
            }
        }

        fn busy(mut self, id: &str) -> World {
            self.in_flight.insert(id.into());
            self
        }

        fn remember(mut self, svc: &str, m: ServiceMemory) -> World {
            self.memory.insert(svc.into(), m);
            self
        }

        fn decide(&self) -> Decision {
            decide(&Input {
                now_ms: self.now_ms,
                stack: "shop",
                removing: self.removing,
                services: &self.services,
                hosts: &self.hosts,
                containers: &self.containers,
                others: &self.others,
                in_flight: &self.in_flight,
                memory: &self.memory,
            })
        }
    }

    // ---- reading a decision ----

    /// (service, slot, host) of every Run.
    fn runs(d: &Decision) -> Vec<(String, u32, String)> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::Run {
                    service,
                    slot,
                    host_id,
                } => Some((service.clone(), *slot, host_id.clone())),
                _ => None,
            })
            .collect()
    }

    fn run_slots(d: &Decision, svc: &str) -> Vec<u32> {
        let mut slots: Vec<u32> = runs(d)
            .into_iter()
            .filter(|(s, _, _)| s == svc)
            .map(|(_, slot, _)| slot)
            .collect();
        slots.sort_unstable();
        slots
    }

    /// (id, reason) of every Remove.
    fn removes(d: &Decision) -> Vec<(String, String)> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { id, reason } => Some((id.clone(), reason.clone())),
                _ => None,
            })
            .collect()
    }

    fn removed_ids(d: &Decision) -> Vec<String> {
        let mut ids: Vec<String> = removes(d).into_iter().map(|(id, _)| id).collect();
        ids.sort();
        ids
    }

    fn starts(d: &Decision) -> Vec<String> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { id } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    fn forget(id: &str, remove: bool) -> Action {
        Action::Forget {
            id: id.into(),
            remove,
        }
    }

    fn remove(id: &str, reason: &str) -> Action {
        Action::Remove {
            id: id.into(),
            reason: reason.into(),
        }
    }

    fn run(svc: &str, slot: u32, host_id: &str) -> Action {
        Action::Run {
            service: svc.into(),
            slot,
            host_id: host_id.into(),
        }
    }

    // ---- 1. placement of a fresh stack ----

    #[test]
    fn a_fresh_stack_places_every_slot_spread_over_the_ready_hosts() {
        let w = World::new(
            vec![service("web", 3, def(), "v1")],
            vec![ready_host("h1"), ready_host("h2")],
            vec![],
        );
        let d = w.decide();
        assert_eq!(d.actions.len(), 3, "{d:?}");
        assert_eq!(run_slots(&d, "web"), [1, 2, 3]);
        let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
        for (_, _, h) in runs(&d) {
            *per_host.entry(h).or_default() += 1;
        }
        let mut counts: Vec<usize> = per_host.values().copied().collect();
        counts.sort_unstable();
        assert_eq!(counts, [1, 2], "spread over both hosts: {per_host:?}");
        assert!(d.unplaced.is_empty() && d.waiting.is_empty() && d.batches.is_empty());
        assert!(!d.removed);
    }

    #[test]
    fn a_stack_at_full_strength_needs_nothing() {
        let w = World::new(
            vec![service("web", 2, def(), "v1")],
            vec![ready_host("h1"), ready_host("h2")],
            vec![
                rep("c1", "h1", "web", 1, "v1"),
                rep("c2", "h2", "web", 2, "v1"),
            ],
        );
        assert_eq!(w.decide(), Decision::default());
    }

    #[test]
    fn services_defined_through_compose_are_placed_in_start_order_after_their_dependencies() {
        let project = corral_compose::load(&corral_compose::Input {
            files: vec![corral_compose::SourceFile::new(
                "compose.yaml",
                "services:\n  web:\n    image: x\n    depends_on: [db]\n    deploy: { replicas: 2 }\n  db:\n    image: y\n",
            )],
            project_name: Some("shop".into()),
            ..corral_compose::Input::default()
        })
        .unwrap()
        .project;
        let stack = define::define(&project).unwrap();
        let services: Vec<Service> = stack
            .services
            .into_iter()
            .map(|(name, replicas, def)| {
                let hash = def.encode().unwrap().1;
                service(&name, replicas, def, &hash)
            })
            .collect();
        assert_eq!(services[0].name, "db");
        let mut w = World::new(services, vec![ready_host("h1")], vec![]);
        let d = w.decide();
        assert_eq!(runs(&d), [("db".to_string(), 1, "h1".to_string())]);
        assert!(d.waiting["web"].contains("db (started)"), "{d:?}");
        let db_hash = w.services[0].hash.clone();
        w.containers.push(rep("d1", "h1", "db", 1, &db_hash));
        let d = w.decide();
        assert_eq!(run_slots(&d, "web"), [1, 2]);
        assert!(d.waiting.is_empty());
    }

    // ---- 2. missing containers ----

    #[test]
    fn a_missing_container_is_forgotten_and_its_slot_placed_again() {
        let w = World::new(
            vec![service("web", 2, def(), "v1")],
            vec![ready_host("h1"), ready_host("h2")],
            vec![
                rep("c1", "h1", "web", 1, "v1"),
                actual(rep("c2", "h2", "web", 2, "v1"), "missing"),
            ],
        );
        let d = w.decide();
        assert!(d.actions.contains(&forget("c2", false)), "{d:?}");
        assert_eq!(run_slots(&d, "web"), [2]);
        assert_eq!(d.actions.len(), 2, "{d:?}");
    }

    // ---- 3. lost and disconnected hosts ----

    #[test]
    fn the_replicas_of_a_lost_host_are_forgotten_and_placed_on_the_remaining_host() {
        let w = World::new(
            vec![service("web", 3, def(), "v1")],
            vec![ready_host("h1"), host("h2", false, true)],
            vec![
                rep("c1", "h1", "web", 1, "v1"),
                rep("c2", "h2", "web", 2, "v1"),
                actual(rep("c3", "h2", "web", 3, "v1"), "exited"),
            ],
        );
        let d = w.decide();
        assert!(d.actions.contains(&forget("c2", true)), "{d:?}");
        assert!(d.actions.contains(&forget("c3", true)), "{d:?}");
        assert!(starts(&d).is_empty(), "nothing is started on a lost host");
        let mut r = runs(&d);
        r.sort();
        assert_eq!(
            r,
            [
                ("web".to_string(), 2, "h1".to_string()),
                ("web".to_string(), 3, "h1".to_string())
            ]
        );
        assert_eq!(d.actions.len(), 4, "{d:?}");
    }

    #[test]
    fn a_container_on_an_unknown_host_counts_as_lost() {
        let w = World::new(
            vec![service("web", 1, def(), "v1")],
            vec![ready_host("h1")],
            vec![rep("c1", "gone", "web", 1, "v1")],
        );
        let d = w.decide();
        assert_eq!(d.actions, [forget("c1", true), run("web", 1, "h1")]);
    }

    #[test]
    fn the_replicas_of_a_host_disconnected_within_grace_stay_put() {
        let w = World::new(
            vec![service("web", 2, def(), "v1")],
            vec![ready_host("h1"), host("h2", false, false)],
            vec![
                rep("c1", "h1", "web", 1, "v1"),
                rep("c2", "h2", "web", 2, "v1"),
            ],
        );
        assert_eq!(w.decide(), Decision::default());
    }

    #[test]
    fn a_host_that_is_not_ready_gets_no_new_replica() {
        let w = World::new(
            vec![service("web", 2, def(), "v1")],
            vec![host("h0", false, false), ready_host("h1")],
            vec![],
        );
        let d = w.decide();
        assert_eq!(d.actions, [run("web", 1, "h1"), run("web", 2, "h1")]);
    }

    // ---- 4. restart policies ----

    #[test]
    fn restart_policies_decide_whether_an_exited_container_starts_again() {
        // (policy, max retries, exit code, restart count, started?)
        let cases: &[(&str, Option<u32>, i64, i64, bool)] = &[
            ("always", None, 0, 0, true),
            ("always", None, 1, 50, true),
            ("unless-stopped", None, 0, 0, true),
            ("no", None, 1, 0, false),
            ("no", None, 0, 0, false),
            ("on-failure", None, 0, 0, false),
            ("on-failure", None, 1, 0, true),
            ("on-failure", None, 137, 99, true),
            ("on-failure", Some(3), 1, 2, true),
            ("on-failure", Some(3), 1, 3, false),
            ("on-failure", Some(3), 1, 4, false),
            ("on-failure", Some(3), 0, 0, false),
        ];
        for &(policy, max, code, count, started) in cases {
            let mut d = def();
            d.restart = restart(policy, max);
            let w = World::new(
                vec![service("web", 1, d, "v1")],
                vec![ready_host("h1")],
                vec![exited(rep("c1", "h1", "web", 1, "v1"), code, count)],
            );
            let decision = w.decide();
            let expected = if started {
                vec![Action::Start { id: "c1".into() }]
            } else {
                vec![]
            };
            // An exited container keeps its slot either way: no Run, no Remove.
            assert_eq!(
                decision.actions, expected,
                "{policy} max={max:?} exit={code} restarts={count}"
            );
        }
    }

    #[test]
    fn an_exited_container_without_an_exit_code_counts_as_failed() {
        let mut d = def();
        d.restart = restart("on-failure", Some(1));
        let mut r = actual(rep("c1", "h1", "web", 1, "v1"), "exited");
        r.exit_code = None;
        let w = World::new(
            vec![service("web", 1, d, "v1")],
            vec![ready_host("h1")],
            vec![r],
        );
        assert_eq!(w.decide().actions, [Action::Start { id: "c1".into() }]);
    }

    #[test]
    fn in_flight_containers_get_no_action() {
        let mut d = def();
        d.restart = restart("always", None);
        let w = World::new(
            vec![
                service("web", 1, d.clone(), "v2"),
                service("db", 0, d, "v1"),
            ],
            vec![ready_host("h1")],
            vec![
                // would be started
                exited(rep("c1", "h1", "web", 1, "v2"), 1, 0),
                // would be removed: dead, surplus, being removed, outdated
                actual(rep("c2", "h1", "web", 2, "v2"), "dead"),
                rep("c3", "h1", "db", 1, "v1"),
                being_removed(rep("c4", "h1", "web", 3, "v2")),
                rep("c5", "h1", "gone", 1, "v1"),
            ],
        )
        .busy("c1")
        .busy("c2")
        .busy("c3")
        .busy("c4")
        .busy("c5");
        let d = w.decide();
        assert!(d.actions.is_empty(), "{d:?}");
    }

    #[test]
    fn an_outdated_container_under_way_is_not_put_in_an_update_batch() {
        let w = World::new(
            vec![service("web", 2, def(), "v2")],
            vec![ready_host("h1")],
            vec![
                rep("o1", "h1", "web", 1, "v1"),
                rep("o2", "h1", "web", 2, "v1"),
            ],
        )
        .busy("o1");
        let d = w.decide();
        assert_eq!(d.actions, [remove("o2", "update")]);
    }

    // ---- 5. dead containers ----

    #[test]
    fn a_dead_container_is_removed_and_holds_its_slot_until_it_is_gone() {
        let mut w = World::new(
            vec![service("web", 2, with_port(def(), 8080), "v1")],
            vec![ready_host("h1"), ready_host("h2")],
            vec![
                rep("c1", "h1", "web", 1, "v1"),
                actual(rep("c2", "h2", "web", 2, "v1"), "dead"),
            ],
        );
        let d = w.decide();
        assert_eq!(d.actions, [remove("c2", "dead")]);
        assert!(d.unplaced.is_empty());

        // Next pass: the removal is under way.
        w.containers[1] = being_removed(w.containers[1].clone());
        let d = w.clone().busy("c2").decide();
        assert!(d.actions.is_empty(), "{d:?}");
        // Not in flight any more (the removal failed): retried, still no Run.
        let d = w.decide();
        assert_eq!(d.actions, [remove("c2", "removal retried")]);

        // Gone: the slot is placed again (h2 is the only host with 8080 free).
        w.containers.pop();
        let d = w.decide();
        assert_eq!(d.actions, [run("web", 2, "h2")]);
    }

    // ---- 6. scale down ----

    #[test]
    fn scaling_down_removes_the_surplus_slots() {
        let w = World::new(
            vec![service("web", 1, def(), "v1")],
            vec![ready_host("h1"), ready_host("h2")],
            vec![
                rep("c1", "h1", "web", 1, "v1"),
                rep("c2", "h2", "web", 2, "v1"),
                rep("c3", "h1", "web", 3, "v1"),
            ],
        );
        let d = w.decide();
        let mut r = removes(&d);
        r.sort();
        assert_eq!(
            r,
            [
                ("c2".to_string(), "surplus".to_string()),
                ("c3".to_string(), "surplus".to_string())
            ]
        );
        assert_eq!(d.actions.len(), 2, "nothing for slot 1: {d:?}");
    }

    #[test]
    fn scaling_to_zero_removes_everything_and_slot_zero_is_surplus() {
        let w = World::new(
            vec![
                service("web", 0, def(), "v1"),
                service("db", 1, def(), "v1"),
            ],
            vec![ready_host("h1")],
            vec![
                rep("c1", "h1", "web", 1, "v1"),
                rep("d0", "h1", "db", 0, "v1"),
                rep("d1", "h1", "db", 1, "v1"),
            ],
        );
        let d = w.decide();
        assert_eq!(removed_ids(&d), ["c1", "d0"]);
        assert!(runs(&d).is_empty());
    }

    #[test]
    fn a_second_container_for_one_slot_is_removed_as_a_duplicate() {
        let w = World::new(
            vec![service("web", 1, def(), "v1")],
            vec![ready_host("h1"), ready_host("h2")],
            vec![
                rep("c1", "h1", "web", 1, "v1"),
                rep("c2", "h2", "web", 1, "v1"),
            ],
        );
        let d = w.decide();
        assert_eq!(d.actions, [remove("c2", "duplicate")]);
    }

    // ---- 7. rolling update, stop-first ----

    fn outdated_world(parallelism: u32, start_first: bool) -> World {
        World::new(
            vec![service(
                "web",
                3,
                with_update(def(), parallelism, 0, start_first),
                "v2",
            )],
            vec![ready_host("h1"), ready_host("h2")],
            vec![
                rep("o1", "h1", "web", 1, "v1"),
                rep("o2", "h2", "web", 2, "v1"),
                rep("o3", "h1", "web", 3, "v1"),
            ],
        )
    }

    #[test]
    fn a_stop_first_update_replaces_one_replica_at_a_time() {
        let mut w = outdated_world(1, false);

        // Pass 1: the lowest slot goes; nothing is placed for it while it is removed.
        let d = w.decide();
        assert_eq!(d.actions, [remove("o1", "update")]);
        assert_eq!(d.batches, ["web"]);
        w = w.remember(
            "web",
            ServiceMemory {
                last_batch_ms: Some(NOW),
                ..Default::default()
            },
        );

        // Pass 2: o1 is being removed: it holds its slot and the next batch waits.
        w.containers[0] = being_removed(w.containers[0].clone());
        let d = w.clone().busy("o1").decide();
        assert!(d.actions.is_empty(), "{d:?}");
        assert!(d.batches.is_empty());
        let d = w.decide();
        assert_eq!(d.actions, [remove("o1", "removal retried")]);
        assert!(d.batches.is_empty());

        // Pass 3: o1 is gone: its slot is placed (with the new definition), and the next
        // batch waits for the replacement.
        w.containers.remove(0);
        let d = w.decide();
        assert_eq!(run_slots(&d, "web"), [1]);
        assert!(removes(&d).is_empty(), "{d:?}");
        assert!(d.batches.is_empty());

        // Pass 4: the replacement exists but does not run yet.
        w.containers
            .insert(0, actual(rep("n1", "h1", "web", 1, "v2"), "pending"));
        let d = w.decide();
        assert!(d.actions.is_empty(), "{d:?}");

        // Pass 5: it runs: the next batch (slot 2) starts.
        w.containers[0] = rep("n1", "h1", "web", 1, "v2");
        let d = w.decide();
        assert_eq!(d.actions, [remove("o2", "update")]);
        assert_eq!(d.batches, ["web"]);
    }

    #[test]
    fn a_stop_first_update_stalls_while_a_replacement_cannot_be_placed() {
        let mut w = outdated_world(1, false);
        // o1 was removed by the first batch; its replacement is refused by every host.
        w.containers.remove(0);
        w.services[0].def.constraints = vec!["node.labels.zone == eu".parse().unwrap()];
        let d = w.decide();
        assert!(d.actions.is_empty(), "no further removal: {d:?}");
        assert_eq!(d.unplaced["web"].count, 1);
        // Nor while it backs off after a failed start.
        let mut w = outdated_world(1, false).remember(
            "web",
            ServiceMemory {
                not_before_ms: NOW + 1,
                last_batch_ms: Some(NOW - 100_000),
            },
        );
        w.containers.remove(0);
        assert!(w.decide().actions.is_empty());
    }

    #[test]
    fn a_stop_first_update_with_parallelism_2_removes_two_at_once() {
        let d = outdated_world(2, false).decide();
        assert_eq!(d.actions, [remove("o1", "update"), remove("o2", "update")]);
        assert_eq!(d.batches, ["web"]);
    }

    #[test]
    fn a_stop_first_update_with_parallelism_0_removes_all_at_once() {
        let d = outdated_world(0, false).decide();
        assert_eq!(
            d.actions,
            [
                remove("o1", "update"),
                remove("o2", "update"),
                remove("o3", "update")
            ]
        );
    }

    #[test]
    fn a_stop_first_update_with_parallelism_2_tops_up_to_two_in_progress() {
        let mut w = outdated_world(2, false);
        // One replacement runs but is not healthy yet: one more slot may go.
        w.containers[0] = health(rep("n1", "h1", "web", 1, "v2"), "starting");
        let d = w.decide();
        assert_eq!(d.actions, [remove("o2", "update")]);
    }

    // ---- 8. rolling update, start-first ----

    #[test]
    fn a_start_first_update_starts_the_new_replica_before_removing_the_old() {
        let mut w = outdated_world(1, true);
        w.services[0].def = with_healthcheck(w.services[0].def.clone());

        // Pass 1: a new replica for slot 1 beside the old one.
        let d = w.decide();
        assert_eq!(run_slots(&d, "web"), [1]);
        assert!(removes(&d).is_empty(), "{d:?}");
        assert_eq!(d.actions.len(), 1);
        assert_eq!(d.batches, ["web"]);

        // Pass 2: the new one exists but does not run yet.
        w.containers
            .push(actual(rep("n1", "h2", "web", 1, "v2"), "pending"));
        let d = w.decide();
        assert!(d.actions.is_empty(), "{d:?}");
        assert!(d.batches.is_empty());

        // Pass 3: it runs but its healthcheck has not passed yet.
        w.containers[3] = health(rep("n1", "h2", "web", 1, "v2"), "starting");
        let d = w.decide();
        assert!(d.actions.is_empty(), "{d:?}");
        w.containers[3] = health(rep("n1", "h2", "web", 1, "v2"), "unhealthy");
        assert!(w.decide().actions.is_empty());

        // Pass 4: healthy: the old one goes and the next batch starts.
        w.containers[3] = health(rep("n1", "h2", "web", 1, "v2"), "healthy");
        let d = w.decide();
        assert!(d.actions.contains(&remove("o1", "updated")), "{d:?}");
        assert_eq!(run_slots(&d, "web"), [2]);
        assert_eq!(d.actions.len(), 2, "{d:?}");
        assert_eq!(d.batches, ["web"]);

        // Pass 5: o1 is still being removed, n2 is starting: n1 stays, nothing else moves.
        w.containers[0] = being_removed(w.containers[0].clone());
        w.containers
            .push(actual(rep("n2", "h1", "web", 2, "v2"), "pending"));
        let d = w.clone().busy("o1").decide();
        assert!(d.actions.is_empty(), "{d:?}");
        let d = w.decide();
        assert_eq!(d.actions, [remove("o1", "removal retried")]);
    }

    #[test]
    fn a_start_first_update_does_not_remove_the_old_replica_while_it_is_in_flight() {
        let mut w = outdated_world(1, true);
        w.containers.push(rep("n1", "h2", "web", 1, "v2"));
        let d = w.clone().busy("o1").decide();
        assert!(removes(&d).is_empty(), "{d:?}");
        let d = w.decide();
        assert!(d.actions.contains(&remove("o1", "updated")), "{d:?}");
    }

    #[test]
    fn a_start_first_update_with_a_published_port_places_the_new_replica_on_another_host() {
        let mut w = outdated_world(1, true);
        w.services[0].replicas = 1;
        w.services[0].def = with_port(w.services[0].def.clone(), 8080);
        w.containers.truncate(1);
        let d = w.decide();
        assert_eq!(d.actions, [run("web", 1, "h2")]);
    }

    // ---- 9. update delay ----

    #[test]
    fn the_update_delay_spaces_batches() {
        let mk = |last_batch: Option<i64>| {
            let mut w = outdated_world(1, false);
            w.services[0].def.update.delay_ms = 5000;
            // Slot 1 was updated already and runs.
            w.containers[0] = rep("n1", "h1", "web", 1, "v2");
            w.remember(
                "web",
                ServiceMemory {
                    last_batch_ms: last_batch,
                    ..Default::default()
                },
            )
        };
        assert!(mk(Some(NOW - 1000)).decide().actions.is_empty());
        assert!(mk(Some(NOW - 1000)).decide().batches.is_empty());
        let d = mk(Some(NOW - 6000)).decide();
        assert_eq!(d.actions, [remove("o2", "update")]);
        assert_eq!(d.batches, ["web"]);
        // Never updated before: no delay.
        assert_eq!(mk(None).decide().actions, [remove("o2", "update")]);
        // The delay is over, but the previous replacement does not run yet.
        let mut w = mk(Some(NOW - 6000));
        w.containers[0] = actual(rep("n1", "h1", "web", 1, "v2"), "created");
        assert!(w.decide().actions.is_empty());
    }

    // ---- 10. depends_on ----

    fn depends_world(cond: DependsOn) -> World {
        let mut web = def();
        web.depends_on.insert("db".into(), cond);
        World::new(
            vec![
                service("db", 2, with_healthcheck(def()), "d1"),
                service("web", 2, web, "w1"),
            ],
            vec![ready_host("h1"), ready_host("h2")],
            vec![],
        )
    }

    #[test]
    fn depends_on_service_healthy_waits_for_every_healthy_replica() {
        let mut w = depends_world(DependsOn::Healthy);
        let d = w.decide();
        assert_eq!(run_slots(&d, "db"), [1, 2]);
        assert!(run_slots(&d, "web").is_empty());
        assert!(d.waiting["web"].contains("db"), "{d:?}");
        assert!(d.waiting["web"].contains("healthy"), "{d:?}");
        assert!(!d.unplaced.contains_key("web"));

        // Running but one still starting.
        w.containers = vec![
            health(rep("d1", "h1", "db", 1, "d1"), "healthy"),
            health(rep("d2", "h2", "db", 2, "d1"), "starting"),
        ];
        let d = w.decide();
        assert!(run_slots(&d, "web").is_empty());
        assert!(d.waiting["web"].contains("db"));

        // One healthy replica of two is not enough.
        w.containers.pop();
        let d = w.decide();
        assert_eq!(run_slots(&d, "db"), [2]);
        assert!(run_slots(&d, "web").is_empty());

        // An outdated replica does not count.
        w.containers = vec![
            health(rep("d1", "h1", "db", 1, "d1"), "healthy"),
            health(rep("d2", "h2", "db", 2, "d0"), "healthy"),
        ];
        assert!(run_slots(&w.decide(), "web").is_empty());

        // Every replica runs and is healthy.
        w.containers[1] = health(rep("d2", "h2", "db", 2, "d1"), "healthy");
        let d = w.decide();
        assert_eq!(run_slots(&d, "web"), [1, 2]);
        assert!(d.waiting.is_empty());
    }

    #[test]
    fn depends_on_service_started_needs_only_running_replicas() {
        let mut w = depends_world(DependsOn::Started);
        w.containers = vec![
            health(rep("d1", "h1", "db", 1, "d1"), "starting"),
            actual(rep("d2", "h2", "db", 2, "d1"), "pending"),
        ];
        let d = w.decide();
        assert!(run_slots(&d, "web").is_empty());
        assert!(d.waiting["web"].contains("db (started)"), "{d:?}");
        w.containers[1] = health(rep("d2", "h2", "db", 2, "d1"), "unhealthy");
        let d = w.decide();
        assert_eq!(run_slots(&d, "web"), [1, 2]);
        assert!(d.waiting.is_empty());
    }

    #[test]
    fn a_waiting_service_keeps_what_it_has() {
        let mut w = depends_world(DependsOn::Healthy);
        w.services[1].replicas = 1;
        w.containers = vec![
            rep("w1", "h1", "web", 1, "w1"),
            rep("w2", "h2", "web", 2, "w1"),
        ];
        let d = w.decide();
        // db is placed; web is neither placed nor scaled down while it waits.
        assert_eq!(run_slots(&d, "db"), [1, 2]);
        assert!(removes(&d).is_empty(), "{d:?}");
        assert!(d.waiting.contains_key("web"));
    }

    #[test]
    fn a_dependency_on_a_service_outside_the_stack_is_ignored() {
        let mut web = def();
        web.depends_on.insert("nope".into(), DependsOn::Healthy);
        let w = World::new(
            vec![service("web", 1, web, "w1")],
            vec![ready_host("h1")],
            vec![],
        );
        let d = w.decide();
        assert_eq!(d.actions, [run("web", 1, "h1")]);
        assert!(d.waiting.is_empty());
    }

    // ---- 11. back-off ----

    #[test]
    fn a_service_backing_off_gets_no_new_replica_but_still_loses_surplus_ones() {
        let mk = |not_before_ms: i64| {
            World::new(
                vec![
                    service("web", 2, def(), "v1"),
                    service("db", 1, def(), "d1"),
                ],
                vec![ready_host("h1")],
                vec![
                    rep("c1", "h1", "web", 1, "v1"),
                    rep("c3", "h1", "web", 3, "v1"),
                ],
            )
            .remember(
                "web",
                ServiceMemory {
                    not_before_ms,
                    last_batch_ms: None,
                },
            )
        };
        let d = mk(NOW + 1).decide();
        assert!(run_slots(&d, "web").is_empty(), "{d:?}");
        assert_eq!(run_slots(&d, "db"), [1], "other services are not held back");
        assert_eq!(removes(&d), [("c3".to_string(), "surplus".to_string())]);

        let d = mk(NOW).decide();
        assert_eq!(run_slots(&d, "web"), [2]);
        assert_eq!(removes(&d), [("c3".to_string(), "surplus".to_string())]);
    }

    // ---- 12. unplaceable replicas ----

    #[test]
    fn a_replica_no_host_fits_is_explained() {
        let mut d = def();
        d.constraints = vec!["node.labels.zone == eu".parse().unwrap()];
        let mut w = World::new(
            vec![service("web", 2, d, "v1")],
            vec![labelled(ready_host("h1"), "zone", "us"), ready_host("h2")],
            vec![],
        );
        let decision = w.decide();
        assert!(runs(&decision).is_empty());
        let unplaced = &decision.unplaced["web"];
        assert_eq!(unplaced.count, 2, "{unplaced:?}");
        let why = unplaced.lines("web");
        for line in &why {
            assert!(line.contains("zone=eu"), "{line}");
        }
        assert!(why[0].starts_with("web.1, web.2: no host fits"), "{why:?}");

        w.hosts.push(labelled(ready_host("h3"), "zone", "eu"));
        let decision = w.decide();
        assert_eq!(decision.actions, [run("web", 1, "h3"), run("web", 2, "h3")]);
        assert!(decision.unplaced.is_empty());
    }

    // ---- 13. host ports ----

    #[test]
    fn a_published_port_allows_one_replica_per_host() {
        let w = World::new(
            vec![service("web", 2, with_port(def(), 8080), "v1")],
            vec![ready_host("h1")],
            vec![],
        );
        let d = w.decide();
        assert_eq!(d.actions, [run("web", 1, "h1")]);
        assert_eq!(d.unplaced["web"].count, 1);
        assert!(d.unplaced["web"].lines("web")[0].contains("8080"), "{d:?}");
    }

    #[test]
    fn a_port_held_by_another_stack_blocks_the_host() {
        let mut w = World::new(
            vec![service("web", 2, with_port(def(), 8080), "v1")],
            vec![ready_host("h1"), ready_host("h2")],
            vec![],
        );
        w.others.push(Held {
            host_id: "h1".into(),
            ports: vec![HostPort::tcp(8080)],
            reservations: Resources::default(),
            overlay_addresses: 1,
        });
        let d = w.decide();
        assert_eq!(d.actions, [run("web", 1, "h2")]);
        assert!(
            d.unplaced["web"].lines("web")[0].contains("h1 port 8080/tcp taken"),
            "{d:?}"
        );
    }

    #[test]
    fn an_existing_replica_holds_its_port() {
        let w = World::new(
            vec![service("web", 2, with_port(def(), 8080), "v1")],
            vec![ready_host("h1"), ready_host("h2")],
            vec![rep("c1", "h2", "web", 1, "v1")],
        );
        assert_eq!(w.decide().actions, [run("web", 2, "h1")]);
    }

    // ---- 14. stack removal ----

    #[test]
    fn removing_a_stack_removes_every_container() {
        let mut w = World::new(
            vec![service("web", 3, def(), "v1")],
            vec![
                ready_host("h1"),
                host("h2", false, true),
                host("h3", false, false),
            ],
            vec![
                rep("c1", "h1", "web", 1, "v1"),
                actual(rep("c2", "h1", "web", 2, "v1"), "missing"),
                rep("c3", "h2", "web", 3, "v1"),
                actual(rep("c4", "h3", "web", 4, "v1"), "exited"),
                being_removed(rep("c5", "h1", "gone", 1, "v0")),
                actual(rep("c6", "h2", "web", 5, "v1"), "missing"),
                rep("c7", "h1", "web", 6, "v1"),
            ],
        )
        .busy("c7");
        w.removing = true;
        let d = w.decide();
        assert_eq!(
            d.actions,
            [
                remove("c1", "stack removed"),
                forget("c2", false),
                forget("c3", true),
                remove("c4", "stack removed"),
                remove("c5", "stack removed"),
                forget("c6", false),
            ]
        );
        assert!(!d.removed);
        assert!(d.unplaced.is_empty() && d.waiting.is_empty() && d.batches.is_empty());

        w.containers.clear();
        let d = w.decide();
        assert!(d.actions.is_empty());
        assert!(d.removed);
    }

    // ---- 15. services that left the stack ----

    #[test]
    fn a_container_of_a_service_no_longer_in_the_stack_is_removed() {
        let w = World::new(
            vec![service("web", 1, def(), "v1")],
            vec![ready_host("h1")],
            vec![
                rep("c1", "h1", "web", 1, "v1"),
                rep("x1", "h1", "worker", 1, "w1"),
                actual(rep("x2", "h1", "worker", 2, "w1"), "dead"),
            ],
        );
        let d = w.decide();
        assert_eq!(d.actions.len(), 2, "{d:?}");
        for (id, reason) in removes(&d) {
            assert!(id.starts_with('x'));
            assert!(
                reason.contains("worker is no longer in the stack"),
                "{reason}"
            );
        }
    }

    // ---- 16. properties over random worlds ----

    #[derive(Debug, Clone)]
    struct GenService {
        replicas: u32,
        parallelism: u32,
        start_first: bool,
        delay_ms: u64,
        port: bool,
        healthcheck: bool,
        restart: usize,
        depends: Option<bool>,
        not_before: i64,
        last_batch: Option<i64>,
    }

    #[derive(Debug, Clone)]
    struct GenReplica {
        service: usize,
        host: usize,
        slot: u32,
        outdated: bool,
        removing: bool,
        actual: usize,
        health: usize,
        exit_code: Option<i64>,
        restart_count: i64,
        in_flight: bool,
    }

    const ACTUALS: [&str; 6] = ["running", "exited", "dead", "missing", "pending", "created"];
    const HEALTHS: [Option<&str>; 4] = [None, Some("starting"), Some("healthy"), Some("unhealthy")];
    const RESTARTS: [(&str, Option<u32>); 5] = [
        ("no", None),
        ("always", None),
        ("unless-stopped", None),
        ("on-failure", None),
        ("on-failure", Some(2)),
    ];

    fn gen_service() -> impl Strategy<Value = GenService> {
        (
            0u32..=5,
            0u32..=2,
            any::<bool>(),
            prop_oneof![Just(0u64), Just(5000u64)],
            any::<bool>(),
            any::<bool>(),
            0..RESTARTS.len(),
            proptest::option::of(any::<bool>()),
            prop_oneof![Just(0i64), Just(NOW + 1)],
            proptest::option::of(prop_oneof![Just(NOW - 1000), Just(NOW - 10_000)]),
        )
            .prop_map(
                |(
                    replicas,
                    parallelism,
                    start_first,
                    delay_ms,
                    port,
                    healthcheck,
                    restart,
                    depends,
                    not_before,
                    last_batch,
                )| GenService {
                    replicas,
                    parallelism,
                    start_first,
                    delay_ms,
                    port,
                    healthcheck,
                    restart,
                    depends,
                    not_before,
                    last_batch,
                },
            )
    }

    fn gen_replica() -> impl Strategy<Value = GenReplica> {
        (
            (
                0usize..4,
                0usize..5,
                0u32..=6,
                any::<bool>(),
                prop::bool::weighted(0.2),
            ),
            (
                0..ACTUALS.len(),
                0..HEALTHS.len(),
                proptest::option::of(0i64..=1),
                0i64..=3,
                prop::bool::weighted(0.2),
            ),
        )
            .prop_map(
                |(
                    (service, host, slot, outdated, removing),
                    (actual, health, exit_code, restart_count, in_flight),
                )| GenReplica {
                    service,
                    host,
                    slot,
                    outdated,
                    removing,
                    actual,
                    health,
                    exit_code,
                    restart_count,
                    in_flight,
                },
            )
    }

    const SERVICE_NAMES: [&str; 4] = ["s0", "s1", "s2", "gone"];
    const HOST_IDS: [&str; 5] = ["h0", "h1", "h2", "h3", "unknown"];

    fn gen_world() -> impl Strategy<Value = World> {
        (
            prop::collection::vec((any::<bool>(), prop::bool::weighted(0.25)), 1..=4),
            prop::collection::vec(gen_service(), 1..=3),
            prop::collection::vec(gen_replica(), 0..=12),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(hosts, services, replicas, removing)| {
                let hosts: Vec<HostState> = hosts
                    .iter()
                    .enumerate()
                    .map(|(i, &(ready, lost))| host(HOST_IDS[i], ready && !lost, lost))
                    .collect();
                let mut memory = HashMap::new();
                let services: Vec<Service> = services
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        let mut d = with_update(def(), g.parallelism, g.delay_ms, g.start_first);
                        if g.port {
                            d = with_port(d, 8080);
                        }
                        if g.healthcheck {
                            d = with_healthcheck(d);
                        }
                        let (policy, max) = RESTARTS[g.restart];
                        d.restart = restart(policy, max);
                        if let (Some(healthy), Some(dep)) = (g.depends, i.checked_sub(1)) {
                            d.depends_on.insert(
                                SERVICE_NAMES[dep].into(),
                                if healthy {
                                    DependsOn::Healthy
                                } else {
                                    DependsOn::Started
                                },
                            );
                        }
                        memory.insert(
                            SERVICE_NAMES[i].to_string(),
                            ServiceMemory {
                                not_before_ms: g.not_before,
                                last_batch_ms: g.last_batch,
                            },
                        );
                        service(SERVICE_NAMES[i], g.replicas, d, "new")
                    })
                    .collect();
                let mut in_flight = HashSet::new();
                let containers: Vec<Replica> = replicas
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        let id = format!("c{i}");
                        if g.in_flight {
                            in_flight.insert(id.clone());
                        }
                        Replica {
                            id,
                            host_id: HOST_IDS[g.host.min(hosts.len())].into(),
                            service: SERVICE_NAMES[g.service].into(),
                            slot: g.slot,
                            hash: if g.outdated { "old" } else { "new" }.into(),
                            desired: if g.removing {
                                Desired::Removed
                            } else {
                                Desired::Running
                            },
                            actual: Actual::parse(ACTUALS[g.actual]).unwrap(),
                            health: HEALTHS[g.health].and_then(Health::parse),
                            exit_code: g.exit_code,
                            restart_count: g.restart_count,
                        }
                    })
                    .collect();
                World {
                    now_ms: NOW,
                    removing,
                    services,
                    hosts,
                    containers,
                    others: Vec::new(),
                    in_flight,
                    memory,
                }
            })
    }

    /// Checks the invariants of one decision; returns what is wrong.
    fn violations(w: &World, d: &Decision) -> Vec<String> {
        let mut bad = Vec::new();
        let hosts: HashMap<&str, &HostState> = w.hosts.iter().map(|h| (h.id.as_str(), h)).collect();
        let on_lost = |r: &Replica| hosts.get(r.host_id.as_str()).is_none_or(|h| h.lost);
        let svc = |name: &str| w.services.iter().find(|s| s.name == name);
        let runs = runs(d);

        // Every container id in at most one Remove/Forget; never an action for one in flight
        // (except Forget, which only deletes a row).
        let mut seen = HashSet::new();
        for a in &d.actions {
            let id = match a {
                Action::Remove { id, .. } | Action::Forget { id, .. } => id,
                Action::Start { id } => {
                    if w.in_flight.contains(id) {
                        bad.push(format!("Start of in-flight {id}"));
                    }
                    continue;
                }
                Action::Run { .. } => continue,
            };
            if !seen.insert(id.clone()) {
                bad.push(format!("{id} removed or forgotten twice"));
            }
            if matches!(a, Action::Remove { .. }) && w.in_flight.contains(id) {
                bad.push(format!("Remove of in-flight {id}"));
            }
            if !w.containers.iter().any(|r| &r.id == id) {
                bad.push(format!("action for unknown container {id}"));
            }
        }
        for r in &w.containers {
            if r.actual == Actual::Missing && !d.actions.contains(&forget(&r.id, false)) {
                bad.push(format!("missing {} not forgotten", r.id));
            }
            if r.actual != Actual::Missing
                && on_lost(r)
                && !d.actions.contains(&forget(&r.id, true))
            {
                bad.push(format!("{} on a lost host not forgotten", r.id));
            }
        }

        if w.removing {
            if !runs.is_empty() {
                bad.push("Run while the stack is removed".into());
            }
            if d.removed != w.containers.is_empty() {
                bad.push(format!("removed = {}", d.removed));
            }
            for r in &w.containers {
                if !w.in_flight.contains(&r.id)
                    && !d.actions.iter().any(|a| match a {
                        Action::Remove { id, .. } | Action::Forget { id, .. } => *id == r.id,
                        _ => false,
                    })
                {
                    bad.push(format!("{} survives the stack's removal", r.id));
                }
            }
            return bad;
        }
        if d.removed {
            bad.push("removed while the stack is not being removed".into());
        }

        let mut run_keys = HashSet::new();
        for (service, slot, host_id) in &runs {
            if !run_keys.insert((service.clone(), *slot)) {
                bad.push(format!("two Runs for {service}.{slot}"));
            }
            match hosts.get(host_id.as_str()) {
                Some(h) if h.ready && !h.lost => {}
                _ => bad.push(format!("Run of {service}.{slot} onto {host_id}")),
            }
            let Some(s) = svc(service) else {
                bad.push(format!("Run for unknown service {service}"));
                continue;
            };
            if *slot == 0 || *slot > s.replicas {
                bad.push(format!(
                    "Run for slot {slot} of {service} ({} replicas)",
                    s.replicas
                ));
            }
            if d.waiting.contains_key(service) {
                bad.push(format!("Run for {service}, which waits"));
            }
            if w.memory
                .get(service)
                .is_some_and(|m| m.not_before_ms > w.now_ms)
            {
                bad.push(format!("Run for {service}, which backs off"));
            }
        }

        for s in &w.services {
            let n = runs.iter().filter(|(name, _, _)| *name == s.name).count();
            if n > s.replicas as usize {
                bad.push(format!("{n} Runs for {} ({} replicas)", s.name, s.replicas));
            }
            // Containers of this service that still count.
            let mine: Vec<&Replica> = w
                .containers
                .iter()
                .filter(|r| r.service == s.name && r.actual != Actual::Missing && !on_lost(r))
                .collect();
            let alive: Vec<&Replica> = mine
                .iter()
                .copied()
                .filter(|r| {
                    r.desired != Desired::Removed
                        && r.actual != Actual::Docker(ContainerState::Dead)
                })
                .collect();
            let going: Vec<&Replica> = mine
                .iter()
                .copied()
                .filter(|r| {
                    r.desired == Desired::Removed
                        || r.actual == Actual::Docker(ContainerState::Dead)
                })
                .collect();
            let ran = |slot: u32| run_keys.contains(&(s.name.clone(), slot));
            let mut outdated_replaced = 0usize;
            for r in &alive {
                if !ran(r.slot) {
                    continue;
                }
                if r.hash == s.hash {
                    bad.push(format!(
                        "Run for {}.{} held by current {}",
                        s.name, r.slot, r.id
                    ));
                } else {
                    let displaced = alive.iter().any(|n| n.hash == s.hash && n.slot == r.slot);
                    if !displaced {
                        if !s.def.update.start_first || !d.batches.contains(&s.name) {
                            bad.push(format!(
                                "Run for {}.{} held by outdated {}",
                                s.name, r.slot, r.id
                            ));
                        }
                        outdated_replaced += 1;
                    }
                }
            }
            let parallelism = match s.def.update.parallelism {
                0 => usize::MAX,
                p => p as usize,
            };
            if outdated_replaced > parallelism {
                bad.push(format!(
                    "{outdated_replaced} start-first replacements for {}",
                    s.name
                ));
            }
            for r in &going {
                if ran(r.slot) && !alive.iter().any(|a| a.slot == r.slot) {
                    bad.push(format!(
                        "Run for {}.{} held by {} being removed",
                        s.name, r.slot, r.id
                    ));
                }
            }
            // A live current replica of a wanted slot is removed only as a duplicate of
            // another live current replica of that slot.
            for r in &alive {
                if r.hash != s.hash || r.slot == 0 || r.slot > s.replicas {
                    continue;
                }
                if removes(d).iter().any(|(id, _)| *id == r.id)
                    && !alive
                        .iter()
                        .any(|o| o.id != r.id && o.hash == s.hash && o.slot == r.slot)
                {
                    bad.push(format!("current {} of {}.{} removed", r.id, s.name, r.slot));
                }
            }
            // An update batch removes at most `parallelism` replicas.
            let updates = removes(d)
                .iter()
                .filter(|(id, reason)| reason == "update" && mine.iter().any(|r| r.id == *id))
                .count();
            if updates > parallelism {
                bad.push(format!("{updates} update removals for {}", s.name));
            }
            if updates > 0 && s.def.update.start_first {
                bad.push(format!("stop-first removal in the start-first {}", s.name));
            }
            // A stop-first batch never leaves more than `parallelism` wanted slots without a
            // live replica (an old one, or a new one that is ready) once it is removed.
            if updates > 0 && parallelism != usize::MAX {
                let updated: Vec<String> = removes(d)
                    .into_iter()
                    .filter(|(_, reason)| reason == "update")
                    .map(|(id, _)| id)
                    .collect();
                let down = (1..=s.replicas)
                    .filter(|&slot| {
                        !alive.iter().any(|r| {
                            r.slot == slot
                                && !updated.contains(&r.id)
                                && (r.hash != s.hash || is_ready(r))
                        })
                    })
                    .count();
                if down > parallelism {
                    bad.push(format!(
                        "an update batch leaves {down} slots of {} down (parallelism {parallelism})",
                        s.name
                    ));
                }
            }
        }
        bad
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decisions_keep_their_invariants(w in gen_world()) {
            let d = w.decide();
            let bad = violations(&w, &d);
            prop_assert!(bad.is_empty(), "{bad:?}\n{d:#?}");
            prop_assert_eq!(&d, &w.decide(), "deterministic");
        }
    }

    #[test]
    fn a_host_is_lost_after_the_grace_measured_from_the_later_of_last_seen_and_server_start() {
        let policy = LostHostPolicy {
            grace_secs: 60,
            server_started_at: 1_000,
        };
        // Connected: never lost, however long ago it was "seen".
        assert!(!policy.is_lost(false, true, 0, 5_000));
        // Disconnected before the server started: the grace runs from the start.
        assert!(!policy.is_lost(false, false, 10, 1_060));
        assert!(policy.is_lost(false, false, 10, 1_061));
        // Seen after the start: the grace runs from then.
        assert!(!policy.is_lost(false, false, 2_000, 2_060));
        assert!(policy.is_lost(false, false, 2_000, 2_061));
        // Removed: lost at once.
        assert!(policy.is_lost(true, true, 2_000, 2_000));
        assert!(host_is_ready(true, true));
        assert!(!host_is_ready(true, false));
        assert!(!host_is_ready(false, true));
    }
}
