//! One test per scheduling rule, and the exact wording of explanations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_scheduler::testing::{GIB, MIB, SnapshotBuilder, check_plan, host, service};
use corral_scheduler::{
    Constraint, Existing, HostPort, Plan, RemovalReason, Resources, Snapshot, schedule,
};

fn run(snap: &Snapshot) -> Plan {
    let plan = schedule(snap);
    check_plan(snap, &plan).unwrap();
    assert_eq!(schedule(snap), plan, "not deterministic");
    plan
}

fn unplaced(plan: &Plan) -> Vec<String> {
    plan.unplaced.iter().map(ToString::to_string).collect()
}

#[test]
fn label_constraints_are_hard() {
    let snap = SnapshotBuilder::new()
        .host(host("h1").label("zone", "eu"))
        .host(host("h2").label("zone", "us"))
        .host(host("h3"))
        .service(service("app", "web", 2).constraint(Constraint::label_eq("zone", "eu")))
        .service(service("app", "api", 2).constraint(Constraint::label_ne("zone", "eu")))
        .build();
    let plan = run(&snap);
    // Spread is a preference: with one eu host, both replicas go there.
    assert_eq!(plan.hosts_of("app", "web"), ["h1", "h1"]);
    // `!=` admits a host without the label.
    assert_eq!(plan.hosts_of("app", "api"), ["h2", "h3"]);
    assert!(plan.unplaced.is_empty());
}

#[test]
fn hostname_and_id_constraints() {
    let snap = SnapshotBuilder::new()
        .host(host("h1").with_id("id-1"))
        .host(host("h2").with_id("id-2"))
        .service(service("app", "a", 2).constraint(Constraint::hostname_eq("h2")))
        .service(service("app", "b", 1).constraint(Constraint::hostname_ne("h1")))
        .service(service("app", "c", 1).constraint(Constraint::id_eq("id-1")))
        .service(service("app", "d", 1).constraint(Constraint::id_ne("id-1")))
        .service(service("app", "e", 1).constraint(Constraint::hostname_eq("nope")))
        .build();
    let plan = run(&snap);
    assert_eq!(plan.hosts_of("app", "a"), ["id-2", "id-2"]);
    assert_eq!(plan.hosts_of("app", "b"), ["id-2"]);
    assert_eq!(plan.hosts_of("app", "c"), ["id-1"]);
    assert_eq!(plan.hosts_of("app", "d"), ["id-2"]);
    assert_eq!(
        unplaced(&plan),
        ["e.1: no host fits — h1 fails node.hostname == nope; h2 fails node.hostname == nope"]
    );
}

#[test]
fn hosts_that_are_not_ready_get_nothing() {
    let snap = SnapshotBuilder::new()
        .host(host("h1").not_ready())
        .host(host("h2"))
        .service(service("app", "web", 2).max_per_host(1))
        .build();
    let plan = run(&snap);
    assert_eq!(plan.hosts_of("app", "web"), ["h2"]);
    assert_eq!(
        unplaced(&plan),
        ["web.2: no host fits — h1 is not ready; h2 already runs 1 of web (max 1 per host)"]
    );
}

#[test]
fn host_ports_are_exclusive_per_protocol() {
    let snap = SnapshotBuilder::new()
        .hosts(3, |_, h| h)
        .service(service("lb", "proxy", 0).tcp(80))
        .running("h1", "lb", "proxy", 1) // surplus (replicas 0) but still holds 80/tcp
        .service(service("app", "web", 3).tcp(80))
        .service(service("app", "dns", 3).udp(80))
        .build();
    let plan = run(&snap);
    assert_eq!(plan.hosts_of("app", "web"), ["h2", "h3"]);
    assert_eq!(
        unplaced(&plan),
        ["web.3: no host fits — h1 port 80/tcp taken; h2 port 80/tcp taken; h3 port 80/tcp taken"]
    );
    // 80/udp is another port.
    assert_eq!(plan.hosts_of("app", "dns"), ["h1", "h2", "h3"]);
}

#[test]
fn reservations_never_over_commit() {
    let snap = SnapshotBuilder::new()
        .host(host("h1").capacity(1000, 4 * GIB))
        .host(host("h2").capacity(4000, 768 * MIB))
        .service(service("app", "web", 3).reserve(600, 512 * MIB))
        .build();
    let plan = run(&snap);
    assert_eq!(plan.hosts_of("app", "web"), ["h1", "h2"]);
    assert_eq!(
        unplaced(&plan),
        ["web.3: no host fits — h1 has 400m CPU free, needs 600m; \
             h2 has 256MiB memory free, needs 512MiB"]
    );
}

#[test]
fn memory_is_explained_in_binary_units() {
    let snap = SnapshotBuilder::new()
        .host(host("h1").capacity(1000, 3 * GIB / 2))
        .service(service("app", "db", 1).reserve(0, 2 * GIB))
        .build();
    let plan = run(&snap);
    assert_eq!(
        unplaced(&plan),
        ["db.1: no host fits — h1 has 1536MiB memory free, needs 2GiB"]
    );
}

#[test]
fn the_example_explanation() {
    // web.1 and web.2 run on h2 and h3 (web.2 started before web published a port).
    let snap = SnapshotBuilder::new()
        .host(host("h1"))
        .host(host("h2").label("zone", "eu"))
        .host(host("h3").label("zone", "eu").capacity(700, 64 * GIB))
        .service(
            service("app", "web", 3)
                .constraint(Constraint::label_eq("zone", "eu"))
                .tcp(80)
                .reserve(500, 0),
        )
        .running("h2", "app", "web", 1)
        .existing(Existing {
            host_id: "h3".into(),
            stack: "app".into(),
            service: "web".into(),
            slot: 2,
            ports: vec![],
            reservations: Resources {
                cpu_millis: 500,
                memory_bytes: 0,
            },
            overlay_address: true,
        })
        .build();
    let plan = run(&snap);
    assert!(plan.placements.is_empty());
    assert_eq!(
        unplaced(&plan),
        [
            "web.3: no host fits — h1 lacks label zone=eu; h2 port 80/tcp taken; \
             h3 has 200m CPU free, needs 500m"
        ]
    );
}

#[test]
fn many_hosts_with_one_reason_are_grouped() {
    let snap = SnapshotBuilder::new()
        .hosts(5000, |i, h| {
            let h = h.with_id(&format!("id{i}"));
            if i == 4999 {
                h.label("zone", "eu").capacity(200, GIB)
            } else {
                h
            }
        })
        .service(
            service("app", "web", 1)
                .constraint(Constraint::label_eq("zone", "eu"))
                .reserve(500, 0),
        )
        .build();
    // Names are h1..h5000, ranked by name: h1, h10, h100, h1000, …
    let plan = run(&snap);
    assert_eq!(
        unplaced(&plan),
        [
            "web.1: no host fits — h1 lacks label zone=eu; h10 lacks label zone=eu; \
             h100 lacks label zone=eu; 4,996 more hosts lack label zone=eu; \
             h5000 has 200m CPU free, needs 500m"
        ]
    );
    assert_eq!(plan.unplaced[0].reasons.len(), 5);
}

#[test]
fn no_hosts_at_all() {
    let snap = SnapshotBuilder::new()
        .service(service("app", "web", 2))
        .build();
    let plan = run(&snap);
    assert_eq!(
        unplaced(&plan),
        [
            "web.1: no host fits — there are no hosts",
            "web.2: no host fits — there are no hosts"
        ]
    );
}

#[test]
fn spread_one_per_host_then_evenly() {
    let snap = SnapshotBuilder::new()
        .hosts(3, |_, h| h)
        .service(service("app", "web", 7))
        .build();
    let plan = run(&snap);
    assert_eq!(
        plan.hosts_of("app", "web"),
        ["h1", "h2", "h3", "h1", "h2", "h3", "h1"]
    );
}

#[test]
fn spread_counts_existing_replicas_and_prefers_the_least_reserved() {
    let snap = SnapshotBuilder::new()
        .hosts(3, |_, h| h)
        .service(service("app", "web", 3))
        .service(service("app", "batch", 1).reserve(8000, 0))
        .running("h1", "app", "web", 1)
        .running("h2", "app", "batch", 1)
        .build();
    let plan = run(&snap);
    // Slot 1 stays on h1; h3 is less reserved than h2, so it comes first.
    assert_eq!(plan.hosts_of("app", "web"), ["h3", "h2"]);
    assert_eq!(plan.placement("app", "web", 2).unwrap().host_id, "h3");
    assert!(plan.placement("app", "web", 1).is_none());
}

#[test]
fn spread_off_ignores_the_replica_count() {
    let snap = SnapshotBuilder::new()
        .hosts(3, |_, h| h)
        .service(service("app", "web", 3).spread(false))
        .service(service("app", "api", 3).spread(false).reserve(1000, 0))
        .build();
    let plan = run(&snap);
    // No reservation: the load never changes, so the first host by name takes all.
    assert_eq!(plan.hosts_of("app", "web"), ["h1", "h1", "h1"]);
    // With reservations, least reserved first (h2 and h3 are empty, h1 got api.1).
    assert_eq!(plan.hosts_of("app", "api"), ["h1", "h2", "h3"]);
}

#[test]
fn max_per_host_is_a_hard_cap() {
    let snap = SnapshotBuilder::new()
        .hosts(2, |_, h| h)
        .service(service("app", "web", 5).max_per_host(2))
        .build();
    let plan = run(&snap);
    assert_eq!(plan.hosts_of("app", "web"), ["h1", "h2", "h1", "h2"]);
    assert_eq!(
        unplaced(&plan),
        [
            "web.5: no host fits — h1 already runs 2 of web (max 2 per host); \
             h2 already runs 2 of web (max 2 per host)"
        ]
    );
}

#[test]
fn anti_affinity_with_itself_means_one_per_host() {
    let snap = SnapshotBuilder::new()
        .hosts(2, |_, h| h)
        .service(service("app", "web", 3).anti_affinity("app", "web"))
        .build();
    let plan = run(&snap);
    assert_eq!(plan.hosts_of("app", "web"), ["h1", "h2"]);
    assert_eq!(
        unplaced(&plan),
        [
            "web.3: no host fits — h1 already runs web (anti-affinity); h2 already runs web (anti-affinity)"
        ]
    );
}

#[test]
fn anti_affinity_is_hard_and_symmetric() {
    // web declares it; db is placed first (by name), web still avoids it.
    let snap = SnapshotBuilder::new()
        .hosts(2, |_, h| h)
        .service(service("app", "db", 1))
        .service(service("app", "web", 2).anti_affinity("app", "db"))
        .build();
    let plan = run(&snap);
    assert_eq!(plan.hosts_of("app", "db"), ["h1"]);
    assert_eq!(plan.hosts_of("app", "web"), ["h2", "h2"]);

    // db declares it; web (placed after db) still avoids db's host.
    let snap = SnapshotBuilder::new()
        .hosts(2, |_, h| h)
        .service(service("app", "db", 1).anti_affinity("app", "web"))
        .service(service("app", "web", 2))
        .build();
    let plan = run(&snap);
    assert_eq!(plan.hosts_of("app", "web"), ["h2", "h2"]);

    // An existing container of another stack counts too, and the explanation names it.
    let snap = SnapshotBuilder::new()
        .hosts(1, |_, h| h)
        .service(service("app", "web", 1).anti_affinity("other", "noisy"))
        .running("h1", "other", "noisy", 1)
        .build();
    let plan = run(&snap);
    assert_eq!(
        unplaced(&plan),
        ["web.1: no host fits — h1 runs other/noisy (anti-affinity)"]
    );
    assert!(
        plan.removals.is_empty(),
        "other stacks' containers are never removed"
    );
}

#[test]
fn affinity_follows_the_other_service_once_it_runs() {
    let snap = SnapshotBuilder::new()
        .hosts(3, |_, h| h)
        // `cache` sorts before `db`, but is placed after it because it is affine with it.
        .service(service("app", "cache", 2).affinity("app", "db"))
        .service(service("app", "db", 1).constraint(Constraint::hostname_eq("h2")))
        // Affinity with a service that runs nowhere is ignored.
        .service(service("app", "lonely", 2).affinity("app", "ghost"))
        .build();
    let plan = run(&snap);
    assert_eq!(plan.hosts_of("app", "db"), ["h2"]);
    assert_eq!(plan.hosts_of("app", "cache"), ["h2", "h2"]);
    assert_eq!(plan.hosts_of("app", "lonely"), ["h1", "h2"]);
    let order: Vec<&str> = plan.placements.iter().map(|p| p.service.as_str()).collect();
    assert_eq!(order, ["db", "cache", "cache", "lonely", "lonely"]);

    let snap = SnapshotBuilder::new()
        .hosts(2, |_, h| h)
        .service(service("app", "sidecar", 1).affinity("app", "db").tcp(9000))
        .service(service("app", "db", 1).tcp(9000))
        .build();
    assert_eq!(
        unplaced(&run(&snap)),
        ["sidecar.1: no host fits — h1 port 9000/tcp taken; h2 does not run app/db (affinity)"]
    );
}

#[test]
fn affinity_cycles_terminate_in_name_order() {
    let snap = SnapshotBuilder::new()
        .hosts(2, |_, h| h)
        .service(service("app", "b", 1).affinity("app", "a"))
        .service(service("app", "a", 1).affinity("app", "b"))
        .service(service("app", "c", 1).affinity("app", "c"))
        .build();
    let plan = run(&snap);
    let order: Vec<&str> = plan.placements.iter().map(|p| p.service.as_str()).collect();
    // `c` (self-affinity is ignored) is free first; the a ⇄ b cycle is broken by name.
    assert_eq!(order, ["c", "a", "b"]);
    assert_eq!(plan.hosts_of("app", "b"), ["h1"]);
}

#[test]
fn existing_replicas_keep_their_hosts_and_surplus_goes() {
    let snap = SnapshotBuilder::new()
        .hosts(3, |_, h| h)
        .service(service("app", "web", 2))
        .running("h3", "app", "web", 2)
        .running("h3", "app", "web", 3)
        .running("h1", "app", "web", 0)
        .build();
    let plan = run(&snap);
    assert_eq!(plan.hosts_of("app", "web"), ["h1"]);
    assert_eq!(plan.placement("app", "web", 1).unwrap().host_id, "h1");
    let removals: Vec<_> = plan
        .removals
        .iter()
        .map(|r| (r.slot, r.host_id.as_str(), r.reason))
        .collect();
    assert_eq!(
        removals,
        [
            (0, "h1", RemovalReason::Surplus),
            (3, "h3", RemovalReason::Surplus)
        ]
    );
}

#[test]
fn lost_hosts_are_rescheduled_and_duplicates_removed() {
    // h9 is not in the snapshot (lost): web.1 is placed again and the old one listed.
    let snap = SnapshotBuilder::new()
        .hosts(2, |_, h| h)
        .service(service("app", "web", 2))
        .running("h9", "app", "web", 1)
        .running("h2", "app", "web", 2)
        .build();
    let plan = run(&snap);
    assert_eq!(plan.placement("app", "web", 1).unwrap().host_id, "h1");
    assert_eq!(plan.removals.len(), 1);
    assert_eq!(plan.removals[0].reason, RemovalReason::HostGone);
    assert_eq!(plan.removals[0].host_id, "h9");

    // h9 came back: two containers hold slot 1; the first listed (on a ready host) stays.
    let snap = SnapshotBuilder::new()
        .hosts(2, |_, h| h)
        .host(host("h9"))
        .service(service("app", "web", 2))
        .running("h1", "app", "web", 1)
        .running("h9", "app", "web", 1)
        .running("h2", "app", "web", 2)
        .build();
    let plan = run(&snap);
    assert!(plan.placements.is_empty());
    assert_eq!(plan.removals.len(), 1);
    assert_eq!(
        (plan.removals[0].host_id.as_str(), plan.removals[0].reason),
        ("h9", RemovalReason::Duplicate)
    );

    // A duplicate on a ready host beats the first listed on a host that is not ready.
    let snap = SnapshotBuilder::new()
        .host(host("h1").not_ready())
        .host(host("h2"))
        .service(service("app", "web", 1))
        .running("h1", "app", "web", 1)
        .running("h2", "app", "web", 1)
        .build();
    let plan = run(&snap);
    assert_eq!(plan.removals[0].host_id, "h1");
}

#[test]
fn replicas_on_a_host_that_is_not_ready_stay() {
    let snap = SnapshotBuilder::new()
        .host(host("h1").not_ready())
        .host(host("h2"))
        .service(service("app", "web", 2))
        .running("h1", "app", "web", 1)
        .build();
    let plan = run(&snap);
    assert_eq!(plan.hosts_of("app", "web"), ["h2"]);
    assert_eq!(plan.placement("app", "web", 2).unwrap().host_id, "h2");
    assert!(plan.removals.is_empty());
}

#[test]
fn removed_containers_hold_their_ports_until_gone() {
    let snap = SnapshotBuilder::new()
        .hosts(1, |_, h| h)
        .service(service("app", "web", 1).tcp(80))
        .running("h1", "app", "web", 2)
        .build();
    let plan = run(&snap);
    assert_eq!(plan.removals[0].reason, RemovalReason::Surplus);
    assert_eq!(
        unplaced(&plan),
        ["web.1: no host fits — h1 port 80/tcp taken"]
    );
}

#[test]
fn the_plan_does_not_depend_on_input_order() {
    let build = |rev: bool| {
        let mut snap = SnapshotBuilder::new()
            .hosts(6, |i, h| {
                h.label("zone", ["eu", "us"][i % 2]).capacity(2000, 8 * GIB)
            })
            .service(service("a", "web", 5).tcp(80).reserve(300, GIB))
            .service(
                service("a", "api", 4)
                    .constraint(Constraint::label_eq("zone", "eu"))
                    .reserve(700, 0),
            )
            .service(service("b", "web", 9).reserve(100, 3 * GIB))
            .build();
        if rev {
            snap.hosts.reverse();
            snap.services.reverse();
        }
        snap
    };
    assert_eq!(run(&build(false)), run(&build(true)));
}

#[test]
fn duplicate_ports_in_a_spec_count_once() {
    let snap = SnapshotBuilder::new()
        .hosts(1, |_, h| h)
        .service(service("app", "web", 1).tcp(80).tcp(80))
        .build();
    assert_eq!(run(&snap).hosts_of("app", "web"), ["h1"]);
}

#[test]
fn snapshots_and_plans_round_trip_through_json() {
    let json = r#"{
        "hosts": [{"id": "i1", "name": "h1", "ready": true, "cpu_millis": 1000,
                   "memory_bytes": 1073741824, "labels": {"zone": "eu"}}],
        "services": [{"stack": "app", "service": "web", "replicas": 2,
                      "constraints": ["node.labels.zone == eu"],
                      "ports": [{"port": 80, "protocol": "tcp"}],
                      "reservations": {"cpu_millis": 100, "memory_bytes": 0}}]
    }"#;
    let snap: Snapshot = serde_json::from_str(json).unwrap();
    assert!(snap.services[0].spread, "spread defaults to true");
    assert_eq!(snap.services[0].ports, [HostPort::tcp(80)]);
    let plan = run(&snap);
    let text = serde_json::to_string(&plan).unwrap();
    assert_eq!(serde_json::from_str::<Plan>(&text).unwrap(), plan);
    let again: Snapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
    assert_eq!(again, snap);
    let bad = json.replace("node.labels.zone == eu", "node.role == manager");
    let err = serde_json::from_str::<Snapshot>(&bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unsupported constraint field node.role"),
        "{err}"
    );
}

#[test]
fn a_full_overlay_subnet_sends_replicas_to_the_other_host() {
    // h1's subnet holds 3 addresses and another stack already holds 2 of them: spread would
    // put 2 of web's 4 replicas on h1, but only one fits there.
    let snap = SnapshotBuilder::new()
        .host(host("h1").addresses(3))
        .host(host("h2").addresses(10))
        .service(service("app", "web", 4))
        .service(service("other", "db", 2))
        .running("h1", "other", "db", 1)
        .running("h1", "other", "db", 2)
        .build();
    let plan = run(&snap);
    assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
    let on_h1 = plan
        .hosts_of("app", "web")
        .iter()
        .filter(|h| **h == "h1")
        .count();
    assert_eq!(on_h1, 1, "{:?}", plan.placements);
}

#[test]
fn replicas_beyond_every_subnet_are_explained() {
    let snap = SnapshotBuilder::new()
        .host(host("h1").addresses(253))
        .service(service("app", "web", 300))
        .build();
    let plan = run(&snap);
    assert_eq!(plan.placements.len(), 253);
    assert_eq!(plan.unplaced.len(), 47);
    assert_eq!(
        plan.unplaced[0].to_string(),
        "web.254: no host fits — h1: no free overlay address (253 of 253 in use)"
    );
    // A host without a subnet, and many full ones, grouped.
    let snap = SnapshotBuilder::new()
        .hosts(6, |_, h| h.addresses(1))
        .host(host("h9").addresses(0))
        .service(service("app", "web", 7))
        .build();
    let plan = run(&snap);
    assert_eq!(
        unplaced(&plan),
        [
            "web.7: no host fits — h1: no free overlay address (1 of 1 in use); \
             h2: no free overlay address (1 of 1 in use); h3: no free overlay address (1 of 1 in use); \
             3 more hosts have no free overlay address; \
             h9: no overlay subnet (its environment's range is full)"
        ]
    );
}

#[test]
fn replicas_off_the_overlay_take_no_address() {
    let snap = SnapshotBuilder::new()
        .host(host("h1").addresses(2))
        .service(service("app", "web", 2))
        .service(service("app", "probe", 3).off_overlay())
        .running("h1", "app", "web", 1)
        .running("h1", "app", "web", 2)
        .build();
    let plan = run(&snap);
    assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
    assert_eq!(plan.hosts_of("app", "probe"), ["h1", "h1", "h1"]);
}
