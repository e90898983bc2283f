//! Property tests over generated snapshots: no constraint violated, no host port
//! double-booked (existing containers included), no over-commit, deterministic and
//! order-independent, and spreading; and, for snapshots without affinity, the plan equals that
//! of a naive reference scheduler (a scan of every host for every replica); and containers
//! that nothing refers to may be summed per host ([`Held`]) without changing the plan.

use std::collections::{HashMap, HashSet};

use corral_scheduler::testing::{GIB, check_plan, host, service};
use corral_scheduler::{
    Constraint, Existing, Held, Host, HostPort, Resources, ServiceRef, ServiceSpec, Snapshot,
    schedule,
};
use proptest::prelude::*;

const ZONES: [&str; 3] = ["eu", "us", "ap"];

fn arb_host(i: usize) -> impl Strategy<Value = Host> {
    (
        proptest::option::of(0..3usize),
        proptest::option::of(any::<bool>()),
        proptest::bool::weighted(0.85),
        prop_oneof![Just(0u64), Just(500), Just(1000), Just(4000)],
        prop_oneof![Just(0u64), Just(GIB), Just(4 * GIB)],
        proptest::option::weighted(0.4, 0..5u32),
    )
        .prop_map(move |(zone, ssd, ready, cpu, mem, addresses)| {
            let mut h = host(&format!("h{i}"))
                .with_id(&format!("id{i}"))
                .capacity(cpu, mem);
            if let Some(z) = zone {
                h = h.label("zone", ZONES[z]);
            }
            if let Some(ssd) = ssd {
                h = h.label("disk", if ssd { "ssd" } else { "hdd" });
            }
            if !ready {
                h = h.not_ready();
            }
            h.overlay_addresses = addresses;
            h
        })
}

fn arb_constraint(hosts: usize) -> impl Strategy<Value = Constraint> {
    prop_oneof![
        (0..3usize).prop_map(|z| Constraint::label_eq("zone", ZONES[z])),
        (0..3usize).prop_map(|z| Constraint::label_ne("zone", ZONES[z])),
        Just(Constraint::label_eq("disk", "ssd")),
        Just(Constraint::label_ne("disk", "ssd")),
        (0..hosts.max(1)).prop_map(|i| Constraint::hostname_eq(&format!("h{i}"))),
        (0..hosts.max(1)).prop_map(|i| Constraint::hostname_ne(&format!("H{i}"))),
        (0..hosts.max(1)).prop_map(|i| Constraint::id_ne(&format!("id{i}"))),
    ]
}

fn arb_ports() -> impl Strategy<Value = Vec<HostPort>> {
    proptest::sample::subsequence(
        vec![HostPort::tcp(80), HostPort::udp(80), HostPort::tcp(443)],
        0..=2,
    )
}

fn arb_resources() -> impl Strategy<Value = Resources> {
    (
        prop_oneof![Just(0u64), Just(100), Just(300), Just(700)],
        prop_oneof![Just(0u64), Just(GIB / 4), Just(GIB)],
    )
        .prop_map(|(cpu_millis, memory_bytes)| Resources {
            cpu_millis,
            memory_bytes,
        })
}

fn name(i: usize) -> (String, String) {
    (["a", "b"][i % 2].to_owned(), format!("s{i}"))
}

fn arb_service(i: usize, hosts: usize, services: usize) -> impl Strategy<Value = ServiceSpec> {
    let refs = proptest::collection::vec(0..services + 1, 0..=2);
    (
        0..8u32,
        proptest::collection::vec(arb_constraint(hosts), 0..=2),
        arb_ports(),
        arb_resources(),
        proptest::bool::weighted(0.8),
        proptest::option::weighted(0.2, 1..3u32),
        refs.clone(),
        refs,
        proptest::bool::weighted(0.8),
    )
        .prop_map(
            move |(replicas, constraints, ports, res, spread, max, aff, anti, address)| {
                let (stack, svc) = name(i);
                let mut s = service(&stack, &svc, replicas);
                s.constraints = constraints;
                s.ports = ports;
                s.reservations = res;
                s.spread = spread;
                s.max_per_host = max;
                s.overlay_address = address;
                // Index `services` names a service that is not desired ("x/ghost").
                let to_ref = |j: usize| {
                    if j == services {
                        ServiceRef::new("x", "ghost")
                    } else {
                        let (st, sv) = name(j);
                        ServiceRef::new(&st, &sv)
                    }
                };
                s.affinity = aff.into_iter().map(to_ref).collect();
                s.anti_affinity = anti.into_iter().map(to_ref).collect();
                s
            },
        )
}

fn arb_existing(hosts: usize, services: usize) -> impl Strategy<Value = Existing> {
    (
        0..hosts + 1,
        0..services + 2,
        0..9u32,
        arb_ports(),
        arb_resources(),
        any::<bool>(),
    )
        .prop_map(move |(h, s, slot, ports, reservations, overlay_address)| {
            // Index `hosts` is a host that is gone; index `services` a service not desired;
            // `services + 1` one that nothing refers to either.
            let (stack, service) = if s == services {
                ("x".to_owned(), "ghost".to_owned())
            } else if s > services {
                ("y".to_owned(), "bystander".to_owned())
            } else {
                name(s)
            };
            Existing {
                host_id: format!("id{h}"),
                stack,
                service,
                slot,
                ports,
                reservations,
                overlay_address,
            }
        })
}

fn arb_held(hosts: usize) -> impl Strategy<Value = Held> {
    (0..hosts + 1, arb_ports(), arb_resources(), 0..3u32).prop_map(
        move |(h, ports, reservations, overlay_addresses)| Held {
            host_id: format!("id{h}"),
            ports,
            reservations,
            overlay_addresses,
        },
    )
}

/// `snap` with its containers of `y/bystander` (which no service is or refers to) summed
/// per host into `held`, one entry per host, in reverse order of hosts.
fn folded(snap: &Snapshot) -> Snapshot {
    let mut out = snap.clone();
    let mut sums: Vec<Held> = Vec::new();
    for e in snap.existing.iter().filter(|e| e.stack == "y") {
        let i = match sums.iter().position(|h| h.host_id == e.host_id) {
            Some(i) => i,
            None => {
                sums.push(Held {
                    host_id: e.host_id.clone(),
                    ..Held::default()
                });
                sums.len() - 1
            }
        };
        let h = &mut sums[i];
        h.ports.extend(e.ports.iter().copied());
        h.reservations.cpu_millis += e.reservations.cpu_millis;
        h.reservations.memory_bytes += e.reservations.memory_bytes;
        h.overlay_addresses += u32::from(e.overlay_address);
    }
    sums.reverse();
    out.existing.retain(|e| e.stack != "y");
    out.held.extend(sums);
    out
}

fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
    (0..10usize, 1..6usize).prop_flat_map(|(nh, ns)| {
        let hosts: Vec<_> = (0..nh).map(arb_host).collect();
        let services: Vec<_> = (0..ns).map(|i| arb_service(i, nh, ns)).collect();
        (
            hosts,
            services,
            proptest::collection::vec(arb_existing(nh, ns), 0..10),
            proptest::collection::vec(arb_held(nh), 0..3),
        )
            .prop_map(|(hosts, services, existing, held)| Snapshot {
                hosts,
                services,
                existing,
                held,
            })
    })
}

/// The rules, naively: for each service by (stack, service), each slot, scan every host and
/// take the best key. Handles snapshots whose existing containers all belong to services that
/// are not desired and whose services have no affinity.
fn reference(snap: &Snapshot) -> Vec<(String, String, u32, String)> {
    let mut hosts: Vec<&Host> = snap.hosts.iter().collect();
    hosts.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    let mut used = vec![(0u64, 0u64); hosts.len()];
    let mut ports: Vec<HashSet<HostPort>> = vec![HashSet::new(); hosts.len()];
    let mut addresses = vec![0u32; hosts.len()];
    let mut runs: HashMap<(String, String), Vec<u32>> = HashMap::new();
    let rank_of = |id: &str| hosts.iter().position(|h| h.id == id);
    for e in &snap.existing {
        let Some(r) = rank_of(&e.host_id) else {
            continue;
        };
        used[r].0 += e.reservations.cpu_millis;
        used[r].1 += e.reservations.memory_bytes;
        ports[r].extend(e.ports.iter().copied());
        addresses[r] += u32::from(e.overlay_address);
        runs.entry((e.stack.clone(), e.service.clone()))
            .or_insert_with(|| vec![0; hosts.len()])[r] += 1;
    }
    for h in &snap.held {
        let Some(r) = rank_of(&h.host_id) else {
            continue;
        };
        used[r].0 += h.reservations.cpu_millis;
        used[r].1 += h.reservations.memory_bytes;
        ports[r].extend(h.ports.iter().copied());
        addresses[r] += h.overlay_addresses;
    }
    let ratio = |u: u64, c: u64| -> u64 {
        if c == 0 {
            if u == 0 { 0 } else { u64::MAX }
        } else {
            (u128::from(u) * 1_000_000 / u128::from(c)) as u64
        }
    };
    let mut specs: Vec<&ServiceSpec> = snap.services.iter().collect();
    specs.sort_by(|a, b| (&a.stack, &a.service).cmp(&(&b.stack, &b.service)));
    let mut out = Vec::new();
    for spec in specs {
        let me = (spec.stack.clone(), spec.service.clone());
        let self_anti = spec
            .anti_affinity
            .iter()
            .any(|r| r.stack == me.0 && r.service == me.1);
        let cap = match (spec.max_per_host, self_anti) {
            (Some(m), true) => m.min(1),
            (Some(m), false) => m,
            (None, true) => 1,
            (None, false) => u32::MAX,
        };
        let mut anti: Vec<(String, String)> = spec
            .anti_affinity
            .iter()
            .map(|r| (r.stack.clone(), r.service.clone()))
            .collect();
        for o in &snap.services {
            if o.anti_affinity
                .iter()
                .any(|r| r.stack == me.0 && r.service == me.1)
            {
                anti.push((o.stack.clone(), o.service.clone()));
            }
        }
        anti.retain(|a| *a != me);
        let count = |runs: &HashMap<(String, String), Vec<u32>>, k: &(String, String), r: usize| {
            runs.get(k).map_or(0, |v| v[r])
        };
        for slot in 1..=spec.replicas {
            let mut best: Option<((u32, u64, usize), usize)> = None;
            for (r, h) in hosts.iter().enumerate() {
                let mine = count(&runs, &me, r);
                let ok = h.ready
                    && spec.constraints.iter().all(|c| c.matches(h))
                    && mine < cap
                    && anti.iter().all(|a| count(&runs, a, r) == 0)
                    && spec.ports.iter().all(|p| !ports[r].contains(p))
                    && (!spec.overlay_address
                        || h.overlay_addresses.is_none_or(|n| addresses[r] < n))
                    // What is free (none if existing containers over-commit) must hold the
                    // reservation; reserving nothing always fits.
                    && spec.reservations.cpu_millis <= h.cpu_millis.saturating_sub(used[r].0)
                    && spec.reservations.memory_bytes <= h.memory_bytes.saturating_sub(used[r].1);
                if !ok {
                    continue;
                }
                let load = ratio(used[r].0, h.cpu_millis).max(ratio(used[r].1, h.memory_bytes));
                let key = (if spec.spread { mine } else { 0 }, load, r);
                if best.is_none_or(|(k, _)| key < k) {
                    best = Some((key, r));
                }
            }
            if let Some((_, r)) = best {
                used[r].0 += spec.reservations.cpu_millis;
                used[r].1 += spec.reservations.memory_bytes;
                ports[r].extend(spec.ports.iter().copied());
                addresses[r] += u32::from(spec.overlay_address);
                runs.entry(me.clone())
                    .or_insert_with(|| vec![0; hosts.len()])[r] += 1;
                out.push((me.0.clone(), me.1.clone(), slot, hosts[r].id.clone()));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Constraints, readiness, ports, reservations, (anti-)affinity, caps and slot accounting,
    /// checked by the independent checker.
    #[test]
    fn plans_never_break_a_rule(snap in arb_snapshot()) {
        let plan = schedule(&snap);
        if let Err(e) = check_plan(&snap, &plan) {
            prop_assert!(false, "{e}\nplan: {plan:#?}");
        }
        for u in &plan.unplaced {
            prop_assert!(!u.reasons.is_empty());
            let prefix = format!("{}.{}: no host fits — ", u.service, u.slot);
            prop_assert!(u.to_string().starts_with(&prefix), "{u}");
        }
    }

    /// Same snapshot, same plan; and the order of hosts and services does not matter.
    #[test]
    fn plans_are_deterministic(snap in arb_snapshot()) {
        let plan = schedule(&snap);
        prop_assert_eq!(&schedule(&snap.clone()), &plan);
        let mut shuffled = snap.clone();
        shuffled.hosts.reverse();
        shuffled.services.reverse();
        prop_assert_eq!(&schedule(&shuffled), &plan);
    }

    /// A service with no more replicas than feasible hosts (and nothing else placed) never
    /// puts two on one host, whatever its constraints, ports and reservations.
    #[test]
    fn replicas_spread_one_per_host_while_hosts_last(
        hosts in (1..12usize).prop_flat_map(|n| (0..n).map(arb_host).collect::<Vec<_>>()),
        constraints in proptest::collection::vec(arb_constraint(12), 0..=2),
        ports in arb_ports(),
        res in arb_resources(),
        extra in 0..3u32,
    ) {
        let fits = |h: &Host| {
            h.ready
                && constraints.iter().all(|c| c.matches(h))
                && res.cpu_millis <= h.cpu_millis
                && res.memory_bytes <= h.memory_bytes
                && h.overlay_addresses.is_none_or(|n| n > 0)
        };
        let feasible = hosts.iter().filter(|h| fits(h)).count() as u32;
        let replicas = feasible.saturating_sub(extra);
        let mut spec = service("app", "web", replicas);
        spec.constraints = constraints.clone();
        spec.ports = ports;
        spec.reservations = res;
        let snap = Snapshot { hosts, services: vec![spec], existing: vec![], held: vec![] };
        let plan = schedule(&snap);
        prop_assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
        let mut used: Vec<&str> = plan.placements.iter().map(|p| p.host_id.as_str()).collect();
        used.sort_unstable();
        let n = used.len();
        used.dedup();
        prop_assert_eq!(used.len(), n, "two replicas on one host: {:?}", plan.placements);
    }

    /// The indexes, the heap and the fast path change nothing: same placements as the naive
    /// reference, in the same order.
    #[test]
    fn plans_equal_the_naive_reference(snap in arb_snapshot()) {
        let mut snap = snap;
        for s in &mut snap.services {
            s.affinity.clear();
        }
        snap.existing.retain(|e| e.service == "ghost" || e.stack == "y");
        let plan = schedule(&snap);
        let got: Vec<_> = plan
            .placements
            .iter()
            .map(|p| (p.stack.clone(), p.service.clone(), p.slot, p.host_id.clone()))
            .collect();
        prop_assert_eq!(got, reference(&snap));
    }

    /// Summing what nothing refers to per host changes nothing: same plan, explanations
    /// included.
    #[test]
    fn containers_summed_per_host_place_like_containers_listed(snap in arb_snapshot()) {
        let folded = folded(&snap);
        prop_assert_eq!(schedule(&folded), schedule(&snap));
    }

    /// Constraints print and parse back to themselves.
    #[test]
    fn constraints_round_trip(c in arb_constraint(5), spaces in 0..3usize) {
        let text = c.to_string().replace(' ', &" ".repeat(spaces));
        prop_assert_eq!(Constraint::parse(&text).unwrap(), c);
    }
}
