//! Pure: one reconciliation pass of one stack. Given the desired services, the hosts and the
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

use corral_scheduler::{self as sched, Existing, RemovalReason, ServiceRef};

use super::define::{DependsOn, ServiceDef};

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
}

/// A container of the stack.
#[derive(Debug, Clone)]
pub struct Replica {
    pub id: String,
    pub host_id: String,
    pub service: String,
    pub slot: u32,
    pub hash: String,
    /// `running`, or `removed` while its removal is under way.
    pub desired: String,
    pub actual: String,
    pub health: Option<String>,
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
    /// Containers of other stacks and single containers on these hosts: they hold ports and
    /// reservations.
    pub others: &'a [Existing],
    /// Containers with a command under way: nothing new is decided for them.
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
    /// Service → why replicas could not be placed.
    pub unplaced: BTreeMap<String, Vec<String>>,
    /// Service → what it waits for.
    pub waiting: BTreeMap<String, String>,
    /// Services that started an update batch in this pass.
    pub batches: Vec<String>,
    /// The stack is being removed and nothing of it is left.
    pub removed: bool,
}

/// Running, and healthy when it has a healthcheck.
pub fn is_ready(r: &Replica) -> bool {
    r.actual == "running" && matches!(r.health.as_deref(), None | Some("healthy"))
}

fn should_restart(def: &ServiceDef, r: &Replica) -> bool {
    match def.restart.name.as_str() {
        "always" | "unless-stopped" => true,
        "on-failure" => {
            r.exit_code.unwrap_or(1) != 0
                && def
                    .restart
                    .max_retries
                    .is_none_or(|max| r.restart_count < i64::from(max))
        }
        _ => false,
    }
}

/// One pass over one stack.
pub fn decide(input: &Input<'_>) -> Decision {
    let mut d = Decision::default();
    let hosts: HashMap<&str, &HostState> = input.hosts.iter().map(|h| (h.id.as_str(), h)).collect();
    let services: HashMap<&str, &Service> = input
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let busy = |r: &Replica| input.in_flight.contains(&r.id);

    if input.removing {
        for r in input.containers {
            let lost = hosts.get(r.host_id.as_str()).is_none_or(|h| h.lost);
            if r.actual == "missing" || lost {
                d.actions.push(Action::Forget {
                    id: r.id.clone(),
                    remove: r.actual != "missing",
                });
            } else if !busy(r) {
                d.actions.push(Action::Remove {
                    id: r.id.clone(),
                    reason: "stack removed".into(),
                });
            }
        }
        d.removed = input.containers.is_empty();
        return d;
    }

    // 1–3: sort the containers into alive (per service) and removing.
    let mut alive: BTreeMap<&str, Vec<&Replica>> = BTreeMap::new();
    let mut removing: BTreeMap<&str, Vec<&Replica>> = BTreeMap::new();
    for r in input.containers {
        let lost = hosts.get(r.host_id.as_str()).is_none_or(|h| h.lost);
        if r.actual == "missing" {
            d.actions.push(Action::Forget {
                id: r.id.clone(),
                remove: false,
            });
            continue;
        }
        if lost {
            d.actions.push(Action::Forget {
                id: r.id.clone(),
                remove: true,
            });
            continue;
        }
        if r.desired == "removed" {
            if !busy(r) {
                d.actions.push(Action::Remove {
                    id: r.id.clone(),
                    reason: "removal retried".into(),
                });
            }
            removing.entry(r.service.as_str()).or_default().push(r);
            continue;
        }
        let Some(svc) = services.get(r.service.as_str()) else {
            if !busy(r) {
                d.actions.push(Action::Remove {
                    id: r.id.clone(),
                    reason: format!("service {} is no longer in the stack", r.service),
                });
            }
            continue;
        };
        if r.actual == "dead" {
            if !busy(r) {
                d.actions.push(Action::Remove {
                    id: r.id.clone(),
                    reason: "dead".into(),
                });
            }
            removing.entry(r.service.as_str()).or_default().push(r);
            continue;
        }
        if r.actual == "exited" && !busy(r) && should_restart(&svc.def, r) {
            d.actions.push(Action::Start { id: r.id.clone() });
        }
        alive.entry(r.service.as_str()).or_default().push(r);
    }

    // 4–5: per service, the update step, the dependency gate and the scheduler's view.
    let mut existing: Vec<Existing> = input.others.to_vec();
    let mut scheduled = Vec::new();
    let hold = |r: &Replica, as_service: &str, svc: Option<&Service>| Existing {
        host_id: r.host_id.clone(),
        stack: input.stack.to_owned(),
        service: as_service.to_owned(),
        slot: r.slot,
        ports: svc.map(|s| s.def.host_ports()).unwrap_or_default(),
        reservations: svc.map(|s| s.def.reservations).unwrap_or_default(),
    };
    let empty = Vec::new();
    for svc in input.services {
        let mine = alive.get(svc.name.as_str()).unwrap_or(&empty);
        let going = removing.get(svc.name.as_str()).unwrap_or(&empty);
        // Removing containers keep their slot until they are gone (stop-first), and their
        // ports and reservations.
        for r in going {
            existing.push(hold(r, &svc.name, Some(svc)));
        }
        let current: Vec<&&Replica> = mine.iter().filter(|r| r.hash == svc.hash).collect();
        let outdated: Vec<&&Replica> = mine.iter().filter(|r| r.hash != svc.hash).collect();
        // An outdated container whose slot already has a current one is being replaced
        // (start-first): it no longer holds its slot, and goes once the new one is ready.
        let mut displaced: HashSet<&str> = HashSet::new();
        for o in &outdated {
            if let Some(n) = current.iter().find(|n| n.slot == o.slot) {
                displaced.insert(o.id.as_str());
                if is_ready(n) && !busy(o) {
                    d.actions.push(Action::Remove {
                        id: o.id.clone(),
                        reason: "updated".into(),
                    });
                }
            }
        }
        if !outdated.is_empty() {
            // Start-first removes old containers only once their replacements are ready, so
            // those removals do not hold the next batch back; stop-first ones do.
            let in_progress = current.iter().filter(|r| !is_ready(r)).count()
                + if svc.def.update.start_first {
                    0
                } else {
                    going.len()
                };
            let parallelism = match svc.def.update.parallelism {
                0 => usize::MAX,
                p => p as usize,
            };
            let memory = input.memory.get(&svc.name);
            let delay_over = memory.and_then(|m| m.last_batch_ms).is_none_or(|at| {
                svc.def.update.delay_ms == 0
                    || (in_progress == 0 && input.now_ms - at >= svc.def.update.delay_ms as i64)
            });
            let capacity = parallelism.saturating_sub(in_progress);
            if capacity > 0 && delay_over {
                let batch: Vec<&&&Replica> = outdated
                    .iter()
                    .filter(|o| !displaced.contains(o.id.as_str()) && !busy(o))
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
            existing.push(hold(r, as_service, Some(svc)));
        }
        // 5: the dependency gate.
        let mut waits = Vec::new();
        for (dep, cond) in &svc.def.depends_on {
            let Some(dep_svc) = services.get(dep.as_str()) else {
                continue;
            };
            let ok = alive
                .get(dep.as_str())
                .map(|rs| {
                    rs.iter()
                        .filter(|r| {
                            r.hash == dep_svc.hash
                                && match cond {
                                    DependsOn::Started => r.actual == "running",
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
        if waits.is_empty() {
            scheduled.push(svc);
        } else {
            d.waiting.insert(
                svc.name.clone(),
                format!("waiting for {}", waits.join(", ")),
            );
        }
    }
    // 6: the scheduler.
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
            })
            .collect(),
        existing,
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
            .push(u.to_string());
    }
    for rm in plan.removals {
        if rm.reason == RemovalReason::HostGone {
            continue;
        }
        // The live container of that slot on that host (the newest, for a duplicate).
        let target = alive.get(rm.service.as_str()).and_then(|rs| {
            rs.iter()
                .rev()
                .find(|r| r.slot == rm.slot && r.host_id == rm.host_id && !busy(r))
        });
        if let Some(r) = target {
            let action = Action::Remove {
                id: r.id.clone(),
                reason: rm.reason.to_string(),
            };
            if !d.actions.contains(&action)
                && !d
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::Remove { id, .. } if *id == r.id))
            {
                d.actions.push(action);
            }
        }
    }
    d
}
