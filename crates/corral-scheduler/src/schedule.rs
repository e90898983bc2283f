//! The placement algorithm (see the crate docs for the rules).

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use crate::bitset::BitSet;
use crate::explain::{self, Why};
use crate::{
    Constraint, ConstraintField, ConstraintOp, Existing, Held, Host, HostPort, Placement, Plan,
    Protocol, Removal, RemovalReason, Resources, ServiceSpec, Snapshot, Unplaced,
};

/// Places every missing replica of `snapshot.services`; see the crate docs for the rules.
pub fn schedule(snapshot: &Snapshot) -> Plan {
    let mut s = Scheduler::new(snapshot);
    s.absorb_existing(&snapshot.existing);
    s.absorb_held(&snapshot.held);
    s.by_load = (s.hosts.iter().enumerate())
        .map(|(rank, h)| (h.load, rank as Rank))
        .collect();
    for sid in s.service_order() {
        s.place_service(sid);
    }
    let mut plan = s.plan;
    plan.removals.sort_by(|a, b| {
        (&a.stack, &a.service, a.slot, &a.host_id, a.reason)
            .cmp(&(&b.stack, &b.service, b.slot, &b.host_id, b.reason))
    });
    plan
}

/// Rank of a host: its index in (name, id) order.
type Rank = u32;
/// Interned (stack, service).
type Sid = usize;

struct HostState<'a> {
    host: &'a Host,
    used: Resources,
    /// `compute_load()` of `used`, kept up to date by `occupy`.
    load: u64,
    /// Sorted `port_key`s of the ports in use.
    ports: Vec<u32>,
    /// Overlay addresses held (kept containers and placements of this plan).
    addresses: u32,
}

/// Hosts by the lowercased value of each field constraints can test.
struct Index<'a> {
    len: usize,
    names: HashMap<String, Vec<Rank>>,
    ids: HashMap<String, Vec<Rank>>,
    labels: HashMap<&'a str, HashMap<String, Vec<Rank>>>,
    cache: HashMap<&'a Constraint, BitSet>,
}

impl<'a> Index<'a> {
    fn new(hosts: &[HostState<'a>]) -> Index<'a> {
        let mut index = Index {
            len: hosts.len(),
            names: HashMap::new(),
            ids: HashMap::new(),
            labels: HashMap::new(),
            cache: HashMap::new(),
        };
        for (rank, h) in hosts.iter().enumerate() {
            let rank = rank as Rank;
            let host = h.host;
            index
                .names
                .entry(host.name.to_lowercase())
                .or_default()
                .push(rank);
            index
                .ids
                .entry(host.id.to_lowercase())
                .or_default()
                .push(rank);
            for (k, v) in &host.labels {
                index
                    .labels
                    .entry(k.as_str())
                    .or_default()
                    .entry(v.to_lowercase())
                    .or_default()
                    .push(rank);
            }
        }
        index
    }

    /// The hosts that satisfy `c` (cached per distinct constraint).
    fn hosts(&mut self, c: &'a Constraint) -> &BitSet {
        let (len, names, ids, labels) = (self.len, &self.names, &self.ids, &self.labels);
        self.cache.entry(c).or_insert_with(|| {
            let value = c.value.to_lowercase();
            let list = match &c.field {
                ConstraintField::Hostname => names.get(&value),
                ConstraintField::Id => ids.get(&value),
                ConstraintField::Label(k) => labels.get(k.as_str()).and_then(|m| m.get(&value)),
            };
            let equal = BitSet::from_indices(len, list.map_or(&[], Vec::as_slice));
            match c.op {
                ConstraintOp::Eq => equal,
                ConstraintOp::Ne => equal.complement(),
            }
        })
    }
}

struct Scheduler<'a> {
    hosts: Vec<HostState<'a>>,
    by_id: HashMap<&'a str, Rank>,
    ready: BitSet,
    /// (load, rank) of every host; filled once the existing containers are absorbed.
    by_load: BTreeSet<(u64, Rank)>,
    index: Index<'a>,
    /// (stack, service) → sid.
    sids: HashMap<&'a str, HashMap<&'a str, Sid>>,
    /// Per sid: its spec, when it is a desired service.
    specs: Vec<Option<&'a ServiceSpec>>,
    /// Per sid: the services that declare anti-affinity with it.
    anti_of: Vec<Vec<Sid>>,
    /// Per sid: host → replicas there (kept containers and placements of this plan).
    running: Vec<HashMap<Rank, u32>>,
    /// (sid, slot) of desired services that a kept container fills → index in `existing`.
    filled: HashMap<(Sid, u32), usize>,
    plan: Plan,
}

fn port_key(p: HostPort) -> u32 {
    (u32::from(p.port) << 1)
        | match p.protocol {
            Protocol::Tcp => 0,
            Protocol::Udp => 1,
        }
}

/// Parts per million of `cap` that `used` takes (`u64::MAX` for anything on no capacity).
fn ratio(used: u64, cap: u64) -> u64 {
    if cap == 0 {
        return if used == 0 { 0 } else { u64::MAX };
    }
    u64::try_from(u128::from(used) * 1_000_000 / u128::from(cap)).unwrap_or(u64::MAX)
}

impl<'a> HostState<'a> {
    /// Parts per million reserved: the larger of the CPU and memory ratios.
    fn compute_load(&self) -> u64 {
        ratio(self.used.cpu_millis, self.host.cpu_millis)
            .max(ratio(self.used.memory_bytes, self.host.memory_bytes))
    }

    fn free(&self) -> Resources {
        Resources {
            cpu_millis: self.host.cpu_millis.saturating_sub(self.used.cpu_millis),
            memory_bytes: self
                .host
                .memory_bytes
                .saturating_sub(self.used.memory_bytes),
        }
    }

    fn port_taken(&self, key: u32) -> bool {
        self.ports.binary_search(&key).is_ok()
    }

    /// An overlay address is free (always, on a host with no overlay limit).
    fn address_free(&self) -> bool {
        self.host
            .overlay_addresses
            .is_none_or(|n| self.addresses < n)
    }

    fn occupy(&mut self, ports: impl IntoIterator<Item = u32>, res: Resources, addresses: u32) {
        self.addresses = self.addresses.saturating_add(addresses);
        for key in ports {
            if let Err(at) = self.ports.binary_search(&key) {
                self.ports.insert(at, key);
            }
        }
        self.used.cpu_millis = self.used.cpu_millis.saturating_add(res.cpu_millis);
        self.used.memory_bytes = self.used.memory_bytes.saturating_add(res.memory_bytes);
        self.load = self.compute_load();
    }
}

/// What a service needs from a host, worked out once per service.
struct Needs {
    sid: Sid,
    ports: Vec<u32>,
    res: Resources,
    cap: u32,
    /// The cap of 1 comes from anti-affinity with itself (for the explanation).
    self_anti: bool,
    /// Each replica takes an overlay address.
    address: bool,
}

impl<'a> Scheduler<'a> {
    fn new(snapshot: &'a Snapshot) -> Scheduler<'a> {
        let mut sorted: Vec<&Host> = snapshot.hosts.iter().collect();
        sorted.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        let mut hosts = Vec::with_capacity(sorted.len());
        let mut by_id = HashMap::with_capacity(sorted.len());
        for host in sorted {
            if let Entry::Vacant(v) = by_id.entry(host.id.as_str()) {
                v.insert(hosts.len() as Rank);
                hosts.push(HostState {
                    host,
                    used: Resources::default(),
                    load: 0,
                    ports: Vec::new(),
                    addresses: 0,
                });
            }
        }
        let mut ready = BitSet::empty(hosts.len());
        for (rank, h) in hosts.iter().enumerate() {
            if h.host.ready {
                ready.insert(rank);
            }
        }
        let index = Index::new(&hosts);
        let mut s = Scheduler {
            hosts,
            by_id,
            ready,
            by_load: BTreeSet::new(),
            index,
            sids: HashMap::new(),
            specs: Vec::new(),
            anti_of: Vec::new(),
            running: Vec::new(),
            filled: HashMap::new(),
            plan: Plan::default(),
        };
        for spec in &snapshot.services {
            let sid = s.intern(&spec.stack, &spec.service);
            if s.specs[sid].is_none() {
                s.specs[sid] = Some(spec);
            }
        }
        for sid in 0..s.specs.len() {
            let Some(spec) = s.specs[sid] else { continue };
            for r in &spec.anti_affinity {
                let other = s.intern(&r.stack, &r.service);
                if !s.anti_of[other].contains(&sid) {
                    s.anti_of[other].push(sid);
                }
            }
            for r in &spec.affinity {
                s.intern(&r.stack, &r.service);
            }
        }
        s
    }

    fn intern(&mut self, stack: &'a str, service: &'a str) -> Sid {
        let next = self.specs.len();
        let sid = *self
            .sids
            .entry(stack)
            .or_default()
            .entry(service)
            .or_insert(next);
        if sid == next {
            self.specs.push(None);
            self.anti_of.push(Vec::new());
            self.running.push(HashMap::new());
        }
        sid
    }

    fn lookup(&self, stack: &str, service: &str) -> Option<Sid> {
        self.sids.get(stack)?.get(service).copied()
    }

    /// What containers outside the plan occupy, host by host.
    fn absorb_held(&mut self, held: &[Held]) {
        for h in held {
            if let Some(&rank) = self.by_id.get(h.host_id.as_str()) {
                self.hosts[rank as usize].occupy(
                    h.ports.iter().map(|&p| port_key(p)),
                    h.reservations,
                    h.overlay_addresses,
                );
            }
        }
    }

    /// Existing containers: who keeps which slot, what they occupy, what goes.
    fn absorb_existing(&mut self, existing: &'a [Existing]) {
        // Pick the keeper of each slot: the first listed on a ready host, else the first listed.
        for (i, e) in existing.iter().enumerate() {
            let Some(&rank) = self.by_id.get(e.host_id.as_str()) else {
                continue;
            };
            let sid = self.intern(&e.stack, &e.service);
            let Some(spec) = self.specs[sid] else {
                continue;
            };
            if e.slot == 0 || e.slot > spec.replicas {
                continue;
            }
            match self.filled.entry((sid, e.slot)) {
                Entry::Vacant(v) => {
                    v.insert(i);
                }
                Entry::Occupied(mut o) => {
                    let kept = &existing[*o.get()];
                    let kept_ready = self
                        .by_id
                        .get(kept.host_id.as_str())
                        .is_some_and(|&r| self.hosts[r as usize].host.ready);
                    if !kept_ready && self.hosts[rank as usize].host.ready {
                        o.insert(i);
                    }
                }
            }
        }
        for (i, e) in existing.iter().enumerate() {
            let sid = self.intern(&e.stack, &e.service);
            let spec = self.specs[sid];
            let surplus = spec.is_some_and(|s| e.slot == 0 || e.slot > s.replicas);
            let removal = |reason| Removal {
                stack: e.stack.clone(),
                service: e.service.clone(),
                slot: e.slot,
                host_id: e.host_id.clone(),
                reason,
            };
            let Some(&rank) = self.by_id.get(e.host_id.as_str()) else {
                if spec.is_some() {
                    let reason = if surplus {
                        RemovalReason::Surplus
                    } else {
                        RemovalReason::HostGone
                    };
                    self.plan.removals.push(removal(reason));
                }
                continue;
            };
            self.hosts[rank as usize].occupy(
                e.ports.iter().map(|&p| port_key(p)),
                e.reservations,
                u32::from(e.overlay_address),
            );
            if spec.is_none() {
                *self.running[sid].entry(rank).or_default() += 1;
            } else if surplus {
                self.plan.removals.push(removal(RemovalReason::Surplus));
            } else if self.filled.get(&(sid, e.slot)) == Some(&i) {
                *self.running[sid].entry(rank).or_default() += 1;
            } else {
                self.plan.removals.push(removal(RemovalReason::Duplicate));
            }
        }
    }

    /// Desired services, each after the services it is affine with; ties and cycles broken by
    /// (stack, service).
    fn service_order(&self) -> Vec<Sid> {
        let desired: Vec<(Sid, &'a ServiceSpec)> = self
            .specs
            .iter()
            .enumerate()
            .filter_map(|(sid, s)| s.map(|s| (sid, s)))
            .collect();
        let mut waiting_on: HashMap<Sid, usize> = HashMap::new();
        let mut dependents: HashMap<Sid, Vec<Sid>> = HashMap::new();
        for &(sid, spec) in &desired {
            let mut deps: Vec<Sid> = spec
                .affinity
                .iter()
                .filter_map(|r| self.lookup(&r.stack, &r.service))
                .filter(|&d| d != sid && self.specs[d].is_some())
                .collect();
            deps.sort_unstable();
            deps.dedup();
            waiting_on.insert(sid, deps.len());
            for d in deps {
                dependents.entry(d).or_default().push(sid);
            }
        }
        let key = |sid: Sid| -> (&'a str, &'a str, Sid) {
            let spec = self.specs[sid];
            (
                spec.map_or("", |s| s.stack.as_str()),
                spec.map_or("", |s| s.service.as_str()),
                sid,
            )
        };
        let mut pending: BTreeSet<(&str, &str, Sid)> =
            desired.iter().map(|&(sid, _)| key(sid)).collect();
        let mut free: BTreeSet<(&str, &str, Sid)> = desired
            .iter()
            .filter(|(sid, _)| waiting_on.get(sid) == Some(&0))
            .map(|&(sid, _)| key(sid))
            .collect();
        let mut order = Vec::with_capacity(desired.len());
        // A cycle leaves nothing free: take the first pending one by name.
        while let Some(next) = free.pop_first().or_else(|| pending.first().copied()) {
            pending.remove(&next);
            let sid = next.2;
            order.push(sid);
            for &d in dependents.get(&sid).map_or(&[][..], Vec::as_slice) {
                if let Some(n) = waiting_on.get_mut(&d) {
                    *n = n.saturating_sub(1);
                    if *n == 0 && pending.contains(&key(d)) {
                        free.insert(key(d));
                    }
                }
            }
        }
        order
    }

    fn fits(&self, rank: usize, count: u32, needs: &Needs) -> bool {
        let h = &self.hosts[rank];
        let free = h.free();
        count < needs.cap
            && (!needs.address || h.address_free())
            && needs.ports.iter().all(|&p| !h.port_taken(p))
            && needs.res.cpu_millis <= free.cpu_millis
            && needs.res.memory_bytes <= free.memory_bytes
    }

    fn count(&self, sid: Sid, rank: usize) -> u32 {
        let running = &self.running[sid];
        if running.is_empty() {
            return 0;
        }
        running.get(&(rank as Rank)).copied().unwrap_or(0)
    }

    fn place_service(&mut self, sid: Sid) {
        let Some(spec) = self.specs[sid] else { return };
        let self_anti = spec
            .anti_affinity
            .iter()
            .any(|r| r.stack == spec.stack && r.service == spec.service);
        let mut ports: Vec<u32> = spec.ports.iter().map(|&p| port_key(p)).collect();
        ports.sort_unstable();
        ports.dedup();
        let needs = Needs {
            sid,
            ports,
            res: spec.reservations,
            cap: match (spec.max_per_host, self_anti) {
                (Some(m), true) => m.min(1),
                (Some(m), false) => m,
                (None, true) => 1,
                (None, false) => u32::MAX,
            },
            self_anti: self_anti && spec.max_per_host.is_none_or(|m| m >= 1),
            address: spec.overlay_address,
        };

        // Static filter: ready, constraints, anti-affinity, affinity.
        let mut candidates = self.ready.clone();
        for c in &spec.constraints {
            candidates.intersect(self.index.hosts(c));
        }
        for other in self.anti_sids(sid, spec) {
            for &rank in self.running[other].keys() {
                candidates.remove(rank as usize);
            }
        }
        for other in self.affinity_sids(sid, spec) {
            let on: Vec<Rank> = self.running[other].keys().copied().collect();
            candidates.intersect(&BitSet::from_indices(self.hosts.len(), &on));
        }

        let missing: Vec<u32> = (1..=spec.replicas)
            .filter(|&slot| !self.filled.contains_key(&(sid, slot)))
            .collect();
        let mut slots = missing.into_iter();
        // Fast path, while no host has a replica of this service yet (spread on): every key is
        // (0, load, rank), so the best hosts are the first fitting ones in (load, rank) order,
        // one replica each. Placing on one host changes no other host's key or fit.
        if spec.spread && self.running[sid].is_empty() {
            let want = spec.replicas as usize;
            let chosen: Vec<usize> = self
                .by_load
                .iter()
                .map(|&(_, rank)| rank as usize)
                .filter(|&rank| candidates.contains(rank) && self.fits(rank, 0, &needs))
                .take(want)
                .collect();
            for (rank, slot) in chosen.into_iter().zip(&mut slots) {
                self.place(spec, &needs, slot, rank);
            }
        }

        // General path: a heap of the hosts that fit, keyed by (replicas here, load, rank). A
        // host that stops fitting never fits again while this service is placed.
        let key = |s: &Self, rank: usize| -> Reverse<(u32, u64, Rank)> {
            let count = if spec.spread { s.count(sid, rank) } else { 0 };
            Reverse((count, s.hosts[rank].load, rank as Rank))
        };
        let mut heap: Option<BinaryHeap<Reverse<(u32, u64, Rank)>>> = None;
        let mut reasons: Option<Vec<String>> = None;
        for slot in slots {
            let heap = heap.get_or_insert_with(|| {
                candidates
                    .iter()
                    .filter(|&rank| self.fits(rank, self.count(sid, rank), &needs))
                    .map(|rank| key(self, rank))
                    .collect()
            });
            let mut chosen = None;
            while let Some(Reverse((_, _, rank))) = heap.pop() {
                let rank = rank as usize;
                if self.fits(rank, self.count(sid, rank), &needs) {
                    chosen = Some(rank);
                    break;
                }
            }
            match chosen {
                Some(rank) => {
                    self.place(spec, &needs, slot, rank);
                    if self.fits(rank, self.count(sid, rank), &needs) {
                        heap.push(key(self, rank));
                    }
                }
                None => {
                    let reasons = reasons
                        .get_or_insert_with(|| self.explain(spec, &needs))
                        .clone();
                    self.plan.unplaced.push(Unplaced {
                        stack: spec.stack.clone(),
                        service: spec.service.clone(),
                        slot,
                        reasons,
                    });
                }
            }
        }
    }

    fn place(&mut self, spec: &ServiceSpec, needs: &Needs, slot: u32, rank: usize) {
        let h = &mut self.hosts[rank];
        self.by_load.remove(&(h.load, rank as Rank));
        h.occupy(
            needs.ports.iter().copied(),
            needs.res,
            u32::from(needs.address),
        );
        self.by_load.insert((h.load, rank as Rank));
        *self.running[needs.sid].entry(rank as Rank).or_default() += 1;
        self.plan.placements.push(Placement {
            stack: spec.stack.clone(),
            service: spec.service.clone(),
            slot,
            host_id: h.host.id.clone(),
        });
    }

    /// Services `spec` may not share a host with (either side declaring it), itself excluded.
    fn anti_sids(&self, sid: Sid, spec: &ServiceSpec) -> Vec<Sid> {
        let mut out: Vec<Sid> = spec
            .anti_affinity
            .iter()
            .filter_map(|r| self.lookup(&r.stack, &r.service))
            .chain(self.anti_of[sid].iter().copied())
            .filter(|&o| o != sid)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Services `spec` must share a host with: those it names that run somewhere.
    fn affinity_sids(&self, sid: Sid, spec: &ServiceSpec) -> Vec<Sid> {
        spec.affinity
            .iter()
            .filter_map(|r| self.lookup(&r.stack, &r.service))
            .filter(|&o| o != sid && !self.running[o].is_empty())
            .collect()
    }

    /// Why each host refuses a replica of `spec` now, grouped.
    fn explain(&mut self, spec: &'a ServiceSpec, needs: &Needs) -> Vec<String> {
        let sid = needs.sid;
        // Warm the constraint cache so the loop below only reads.
        for c in &spec.constraints {
            self.index.hosts(c);
        }
        let mut anti: Vec<(Sid, &'a str, &'a str)> = spec
            .anti_affinity
            .iter()
            .filter_map(|r| Some((self.lookup(&r.stack, &r.service)?, r)))
            .map(|(o, r)| (o, r.stack.as_str(), r.service.as_str()))
            .collect();
        // Services that declared anti-affinity with this one, by name: name them.
        let mut declared: Vec<(Sid, &'a str, &'a str)> = self.anti_of[sid]
            .iter()
            .filter_map(|&o| {
                let other = self.specs[o]?;
                Some((o, other.stack.as_str(), other.service.as_str()))
            })
            .collect();
        declared.sort_by_key(|&(_, stack, service)| (stack, service));
        anti.extend(declared);
        anti.retain(|&(o, _, _)| o != sid);
        let affinity: Vec<(Sid, &'a str, &'a str)> = spec
            .affinity
            .iter()
            .filter_map(|r| Some((self.lookup(&r.stack, &r.service)?, r)))
            .filter(|&(o, _)| o != sid && !self.running[o].is_empty())
            .map(|(o, r)| (o, r.stack.as_str(), r.service.as_str()))
            .collect();
        let this = self;
        let per_host = this.hosts.iter().enumerate().map(|(rank, h)| {
            let why = this.why_not(rank, h, spec, needs, &anti, &affinity);
            (h.host.name.as_str(), why)
        });
        explain::render(per_host, &spec.service)
    }

    fn why_not(
        &self,
        rank: usize,
        h: &HostState<'a>,
        spec: &'a ServiceSpec,
        needs: &Needs,
        anti: &[(Sid, &'a str, &'a str)],
        affinity: &[(Sid, &'a str, &'a str)],
    ) -> Why<'a> {
        if !h.host.ready {
            return Why::NotReady;
        }
        for c in &spec.constraints {
            if !self.index.cache.get(c).is_some_and(|b| b.contains(rank)) {
                return Why::Constraint(c);
            }
        }
        let r = rank as Rank;
        if let Some(&(_, stack, service)) = anti
            .iter()
            .find(|(o, _, _)| self.running[*o].contains_key(&r))
        {
            return Why::AntiAffinity { stack, service };
        }
        if let Some(&(_, stack, service)) = affinity
            .iter()
            .find(|(o, _, _)| !self.running[*o].contains_key(&r))
        {
            return Why::Affinity { stack, service };
        }
        if self.count(needs.sid, rank) >= needs.cap {
            return Why::Cap {
                cap: needs.cap,
                anti_self: needs.self_anti,
            };
        }
        if needs.address
            && let Some(total) = h.host.overlay_addresses
            && h.addresses >= total
        {
            return Why::NoAddress {
                used: h.addresses,
                total,
            };
        }
        if let Some(&p) = spec.ports.iter().find(|&&p| h.port_taken(port_key(p))) {
            return Why::PortTaken(p);
        }
        let free = h.free();
        if needs.res.cpu_millis > free.cpu_millis {
            return Why::Cpu {
                free: free.cpu_millis,
                need: needs.res.cpu_millis,
            };
        }
        if needs.res.memory_bytes > free.memory_bytes {
            return Why::Memory {
                free: free.memory_bytes,
                need: needs.res.memory_bytes,
            };
        }
        Why::Fits
    }
}
