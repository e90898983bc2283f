//! Helpers to build snapshots concisely and to check plans (in the spirit of Nomad's
//! `scheduler/testing.go`), for this crate's tests, its benchmark and the reconciler's tests.
//!
//! ```
//! use corral_scheduler::testing::{check_plan, host, service, SnapshotBuilder};
//! use corral_scheduler::{schedule, Constraint};
//!
//! let snap = SnapshotBuilder::new()
//!     .host(host("h1").label("zone", "eu"))
//!     .host(host("h2").label("zone", "us"))
//!     .service(service("app", "web", 2).constraint(Constraint::label_eq("zone", "eu")).tcp(80))
//!     .running("h1", "app", "web", 1)
//!     .build();
//! let plan = schedule(&snap);
//! assert_eq!(plan.unplaced[0].to_string(),
//!     "web.2: no host fits — h1 port 80/tcp taken; h2 lacks label zone=eu");
//! check_plan(&snap, &plan).unwrap();
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::{
    Constraint, Existing, Held, Host, HostPort, Plan, Resources, ServiceRef, ServiceSpec, Snapshot,
};

/// One GiB in bytes.
pub const GIB: u64 = 1 << 30;
/// One MiB in bytes.
pub const MIB: u64 = 1 << 20;

/// A ready host whose id is its name, with 16 CPUs and 64 GiB and no labels.
pub fn host(name: &str) -> Host {
    Host {
        id: name.to_owned(),
        name: name.to_owned(),
        labels: BTreeMap::new(),
        ready: true,
        cpu_millis: 16_000,
        memory_bytes: 64 * GIB,
        overlay_addresses: None,
    }
}

/// A service of `replicas` replicas with no constraint, port or reservation, spread on.
pub fn service(stack: &str, name: &str, replicas: u32) -> ServiceSpec {
    ServiceSpec {
        stack: stack.to_owned(),
        service: name.to_owned(),
        replicas,
        constraints: Vec::new(),
        ports: Vec::new(),
        reservations: Resources::default(),
        spread: true,
        max_per_host: None,
        affinity: Vec::new(),
        anti_affinity: Vec::new(),
        overlay_address: true,
    }
}

impl Host {
    pub fn label(mut self, key: &str, value: &str) -> Host {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn with_id(mut self, id: &str) -> Host {
        id.clone_into(&mut self.id);
        self
    }

    pub fn capacity(mut self, cpu_millis: u64, memory_bytes: u64) -> Host {
        self.cpu_millis = cpu_millis;
        self.memory_bytes = memory_bytes;
        self
    }

    pub fn not_ready(mut self) -> Host {
        self.ready = false;
        self
    }

    /// `n` container addresses in its overlay subnet.
    pub fn addresses(mut self, n: u32) -> Host {
        self.overlay_addresses = Some(n);
        self
    }
}

impl ServiceSpec {
    pub fn constraint(mut self, c: Constraint) -> ServiceSpec {
        self.constraints.push(c);
        self
    }

    pub fn tcp(mut self, port: u16) -> ServiceSpec {
        self.ports.push(HostPort::tcp(port));
        self
    }

    pub fn udp(mut self, port: u16) -> ServiceSpec {
        self.ports.push(HostPort::udp(port));
        self
    }

    pub fn reserve(mut self, cpu_millis: u64, memory_bytes: u64) -> ServiceSpec {
        self.reservations = Resources {
            cpu_millis,
            memory_bytes,
        };
        self
    }

    pub fn spread(mut self, spread: bool) -> ServiceSpec {
        self.spread = spread;
        self
    }

    pub fn max_per_host(mut self, max: u32) -> ServiceSpec {
        self.max_per_host = Some(max);
        self
    }

    pub fn affinity(mut self, stack: &str, service: &str) -> ServiceSpec {
        self.affinity.push(ServiceRef::new(stack, service));
        self
    }

    pub fn anti_affinity(mut self, stack: &str, service: &str) -> ServiceSpec {
        self.anti_affinity.push(ServiceRef::new(stack, service));
        self
    }

    /// Its replicas take no overlay address (`network_mode: host` or `none`).
    pub fn off_overlay(mut self) -> ServiceSpec {
        self.overlay_address = false;
        self
    }
}

/// Builds a [`Snapshot`] step by step.
#[derive(Debug, Clone, Default)]
pub struct SnapshotBuilder {
    snapshot: Snapshot,
}

impl SnapshotBuilder {
    pub fn new() -> SnapshotBuilder {
        SnapshotBuilder::default()
    }

    pub fn host(mut self, host: Host) -> SnapshotBuilder {
        self.snapshot.hosts.push(host);
        self
    }

    /// `n` hosts named `h1`..`hN`, each passed through `f(i, host)` (i from 0).
    pub fn hosts(mut self, n: usize, f: impl Fn(usize, Host) -> Host) -> SnapshotBuilder {
        for i in 0..n {
            self.snapshot.hosts.push(f(i, host(&format!("h{}", i + 1))));
        }
        self
    }

    pub fn service(mut self, spec: ServiceSpec) -> SnapshotBuilder {
        self.snapshot.services.push(spec);
        self
    }

    /// A container of `stack/service` slot `slot` on the host with id `host_id`, with the
    /// ports and reservations of that service's spec when it was added before (none otherwise).
    pub fn running(mut self, host_id: &str, stack: &str, service: &str, slot: u32) -> Self {
        let spec = self
            .snapshot
            .services
            .iter()
            .find(|s| s.stack == stack && s.service == service);
        let existing = Existing {
            host_id: host_id.to_owned(),
            stack: stack.to_owned(),
            service: service.to_owned(),
            slot,
            ports: spec.map(|s| s.ports.clone()).unwrap_or_default(),
            reservations: spec.map(|s| s.reservations).unwrap_or_default(),
            overlay_address: spec.is_none_or(|s| s.overlay_address),
        };
        self.snapshot.existing.push(existing);
        self
    }

    pub fn existing(mut self, existing: Existing) -> SnapshotBuilder {
        self.snapshot.existing.push(existing);
        self
    }

    pub fn held(mut self, held: Held) -> SnapshotBuilder {
        self.snapshot.held.push(held);
        self
    }

    pub fn build(self) -> Snapshot {
        self.snapshot
    }
}

impl Plan {
    /// Host ids of the placements of `stack/service`, in slot order.
    pub fn hosts_of(&self, stack: &str, service: &str) -> Vec<&str> {
        let mut v: Vec<_> = self
            .placements
            .iter()
            .filter(|p| p.stack == stack && p.service == service)
            .map(|p| (p.slot, p.host_id.as_str()))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, h)| h).collect()
    }
}

/// Checks a plan against its snapshot, independently of the scheduler's own bookkeeping
/// (plain scans, no index): every placement is on a ready host of the snapshot, satisfies its
/// service's constraints, anti-affinity (both directions), affinity (with services that
/// declare none themselves) and `max_per_host`, takes
/// no host port that an existing container or another placement holds, and does not push a
/// host's reservations over capacity nor its overlay addresses over its subnet's; every slot of a desired service is kept at most once, and
/// each one not kept is placed or unplaced exactly once.
/// Returns the first violation found.
pub fn check_plan(snapshot: &Snapshot, plan: &Plan) -> Result<(), String> {
    let hosts: HashMap<&str, &Host> = snapshot
        .hosts
        .iter()
        .rev()
        .map(|h| (h.id.as_str(), h))
        .collect();
    let spec_of = |stack: &str, service: &str| {
        snapshot
            .services
            .iter()
            .find(|s| s.stack == stack && s.service == service)
    };
    // Removals as a multiset: identical existing entries are indistinguishable.
    let mut removed: HashMap<(&str, &str, u32, &str), usize> = HashMap::new();
    for r in &plan.removals {
        *removed
            .entry((&r.stack, &r.service, r.slot, &r.host_id))
            .or_default() += 1;
    }
    // Kept containers per slot of a desired service (on a host of the snapshot).
    let mut kept_slots: HashMap<(&str, &str, u32), usize> = HashMap::new();
    // Who runs where after the plan (kept containers and placements), for (anti-)affinity.
    let mut runs: HashMap<(&str, &str), HashMap<&str, u32>> = HashMap::new();
    let mut used: HashMap<&str, (u64, u64)> = HashMap::new();
    // Overlay addresses held per host: (by existing containers, by placements).
    let mut addresses: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut ports: HashMap<(&str, HostPort), usize> = HashMap::new();
    // What existing containers and `held` occupy: (host, ports, reservations, addresses).
    let occupying = (snapshot.existing.iter())
        .map(|e| {
            let addresses = u64::from(e.overlay_address);
            (&e.host_id, &e.ports, e.reservations, addresses)
        })
        .chain(snapshot.held.iter().map(|h| {
            let addresses = u64::from(h.overlay_addresses);
            (&h.host_id, &h.ports, h.reservations, addresses)
        }));
    for (host_id, held_ports, reservations, held_addresses) in occupying {
        if !hosts.contains_key(host_id.as_str()) {
            continue;
        }
        let u = used.entry(host_id).or_default();
        u.0 = u.0.saturating_add(reservations.cpu_millis);
        u.1 = u.1.saturating_add(reservations.memory_bytes);
        addresses.entry(host_id).or_default().0 += held_addresses;
        let mut own: Vec<HostPort> = held_ports.clone();
        own.sort_unstable();
        own.dedup();
        for p in own {
            *ports.entry((host_id, p)).or_default() += 1;
        }
    }
    for e in &snapshot.existing {
        if !hosts.contains_key(e.host_id.as_str()) {
            continue;
        }
        let key = (
            e.stack.as_str(),
            e.service.as_str(),
            e.slot,
            e.host_id.as_str(),
        );
        if let Some(n) = removed.get_mut(&key)
            && *n > 0
        {
            *n -= 1;
        } else {
            *kept_slots
                .entry((&e.stack, &e.service, e.slot))
                .or_default() += 1;
            *runs
                .entry((&e.stack, &e.service))
                .or_default()
                .entry(&e.host_id)
                .or_default() += 1;
        }
    }
    let existing_ports = ports.clone();
    let existing_used = used.clone();
    let mut placed_used: HashMap<&str, (u64, u64)> = HashMap::new();
    for p in &plan.placements {
        let Some(host) = hosts.get(p.host_id.as_str()) else {
            return Err(format!("{p:?} is on an unknown host"));
        };
        let Some(spec) = spec_of(&p.stack, &p.service) else {
            return Err(format!("{p:?} is of an unknown service"));
        };
        if !host.ready {
            return Err(format!("{p:?} is on a host that is not ready"));
        }
        if let Some(c) = spec.constraints.iter().find(|c| !c.matches(host)) {
            return Err(format!("{p:?} violates {c}"));
        }
        let u = used.entry(&p.host_id).or_default();
        u.0 = u.0.saturating_add(spec.reservations.cpu_millis);
        u.1 = u.1.saturating_add(spec.reservations.memory_bytes);
        if spec.overlay_address {
            addresses.entry(&p.host_id).or_default().1 += 1;
        }
        let pu = placed_used.entry(&p.host_id).or_default();
        pu.0 += spec.reservations.cpu_millis;
        pu.1 += spec.reservations.memory_bytes;
        let mut own = spec.ports.clone();
        own.sort_unstable();
        own.dedup();
        for port in own {
            *ports.entry((&p.host_id, port)).or_default() += 1;
        }
        *runs
            .entry((&p.stack, &p.service))
            .or_default()
            .entry(&p.host_id)
            .or_default() += 1;
    }
    // Ports: a placement's port is taken by no one else on its host.
    for p in &plan.placements {
        let spec = spec_of(&p.stack, &p.service);
        for port in spec.map(|s| s.ports.as_slice()).unwrap_or_default() {
            let n = ports
                .get(&(p.host_id.as_str(), *port))
                .copied()
                .unwrap_or(0);
            if n > 1 {
                let before = existing_ports
                    .get(&(p.host_id.as_str(), *port))
                    .copied()
                    .unwrap_or(0);
                return Err(format!(
                    "port {port} on {} is double-booked by {p:?} ({before} existing)",
                    p.host_id
                ));
            }
        }
    }
    // Reservations: where a placement reserves something, the host is not over capacity.
    for (host_id, (pc, pm)) in &placed_used {
        let host = hosts[host_id];
        let (c, m) = used[host_id];
        if (*pc > 0 && c > host.cpu_millis) || (*pm > 0 && m > host.memory_bytes) {
            let (ec, em) = existing_used.get(host_id).copied().unwrap_or_default();
            return Err(format!(
                "{host_id} over-committed: {c}m/{}m CPU, {m}/{} bytes (existing {ec}m, {em})",
                host.cpu_millis, host.memory_bytes
            ));
        }
    }
    // Overlay addresses: where a placement takes one, the subnet is not over-full.
    for (host_id, (existing, placed)) in &addresses {
        if let Some(total) = hosts[host_id].overlay_addresses
            && *placed > 0
            && existing + placed > u64::from(total)
        {
            return Err(format!(
                "{host_id}: {placed} placement(s) and {existing} existing container(s) hold more than its {total} overlay addresses"
            ));
        }
    }
    // Affinity, anti-affinity, max per host.
    let count = |stack: &str, service: &str, host: &str| {
        runs.get(&(stack, service))
            .and_then(|m| m.get(host))
            .copied()
            .unwrap_or(0)
    };
    for p in &plan.placements {
        let Some(spec) = spec_of(&p.stack, &p.service) else {
            continue;
        };
        let mine = count(&p.stack, &p.service, &p.host_id);
        if let Some(max) = spec.max_per_host
            && mine > max
        {
            return Err(format!("{p:?}: {mine} replicas on the host, max {max}"));
        }
        for r in &spec.anti_affinity {
            let n = count(&r.stack, &r.service, &p.host_id);
            let me = r.stack == p.stack && r.service == p.service;
            if (me && n > 1) || (!me && n > 0) {
                return Err(format!("{p:?} shares its host with {r} (anti-affinity)"));
            }
        }
        for r in &spec.affinity {
            // Checked when the other service declares no affinity itself (so it was placed
            // first, whatever the cycles) and runs somewhere.
            let me = r.stack == p.stack && r.service == p.service;
            let settled = spec_of(&r.stack, &r.service).is_none_or(|o| o.affinity.is_empty());
            let anywhere = runs
                .get(&(r.stack.as_str(), r.service.as_str()))
                .is_some_and(|m| !m.is_empty());
            if !me && settled && anywhere && count(&r.stack, &r.service, &p.host_id) == 0 {
                return Err(format!("{p:?} is not with {r} (affinity)"));
            }
        }
        for other in &snapshot.services {
            if other
                .anti_affinity
                .iter()
                .any(|r| r.stack == p.stack && r.service == p.service)
                && !(other.stack == p.stack && other.service == p.service)
                && count(&other.stack, &other.service, &p.host_id) > 0
            {
                return Err(format!(
                    "{p:?} shares its host with {}/{}, which is anti-affine with it",
                    other.stack, other.service
                ));
            }
        }
    }
    // Every missing slot is accounted for once.
    let mut seen: HashSet<(&str, &str, u32)> = HashSet::new();
    for (stack, service, slot) in plan
        .placements
        .iter()
        .map(|p| (&p.stack, &p.service, p.slot))
        .chain(plan.unplaced.iter().map(|u| (&u.stack, &u.service, u.slot)))
    {
        if !seen.insert((stack, service, slot)) {
            return Err(format!("{stack}/{service}.{slot} is planned twice"));
        }
    }
    let mut first = HashSet::new();
    for s in &snapshot.services {
        if !first.insert((&s.stack, &s.service)) {
            continue;
        }
        for slot in 1..=s.replicas {
            let kept = match kept_slots.get(&(s.stack.as_str(), s.service.as_str(), slot)) {
                None => false,
                Some(1) => true,
                Some(n) => {
                    return Err(format!(
                        "{}/{}.{slot} is kept {n} times",
                        s.stack, s.service
                    ));
                }
            };
            let planned = seen.contains(&(s.stack.as_str(), s.service.as_str(), slot));
            if kept == planned {
                return Err(format!(
                    "{}/{}.{slot}: kept {kept}, planned {planned}",
                    s.stack, s.service
                ));
            }
        }
    }
    Ok(())
}
