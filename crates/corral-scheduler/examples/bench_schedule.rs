//! Scheduler benchmark: 100,000 replicas over 5,000 hosts with constraints.
//!
//! `cargo run --release -p corral-scheduler --example bench_schedule`
//!
//! Hosts: labels zone ∈ {eu, us, ap} and disk ∈ {ssd, hdd}, 16000m CPU / 64 GiB each.
//! Services: 98 of 1,000 replicas each, every one with a reservation; a quarter constrained to
//! `node.labels.zone == eu`, a quarter to `node.labels.zone != ap`, a quarter to
//! `node.labels.disk == ssd`, a quarter unconstrained; every tenth service publishes its own
//! TCP port (one replica per host). One extra service asks for more replicas than its hosts
//! can take (2,000 replicas with port 8080 on the 1,667 `zone == eu` hosts), so the run also
//! exercises the explanations; 100,000 replicas in all. A second scenario spreads the same
//! 100,000 replicas over 10,000 services of 10 (no ports), where the per-service cost dominates.
//! Prints the median and min of 5 runs of `schedule()` for each, and checks one plan with the
//! independent checker.

use std::time::Instant;

use corral_scheduler::testing::{MIB, SnapshotBuilder, service};
use corral_scheduler::{Constraint, Plan, Snapshot, schedule};

const HOSTS: usize = 5_000;
const SERVICES: usize = 98;
const REPLICAS: u32 = 1_000;
const RUNS: usize = 5;

fn hosts() -> SnapshotBuilder {
    SnapshotBuilder::new().hosts(HOSTS, |i, h| {
        h.with_id(&format!("host-{i:05}"))
            .label("zone", ["eu", "us", "ap"][i % 3])
            .label("disk", if (i / 3) % 2 == 0 { "ssd" } else { "hdd" })
            // A /24 overlay subnet each: every replica takes one of its addresses.
            .addresses(253)
    })
}

fn snapshot() -> Snapshot {
    let mut b = hosts();
    for i in 0..SERVICES {
        let mut s = service(&format!("stack{}", i / 10), &format!("svc{i}"), REPLICAS)
            .reserve(50 + (i as u64 % 4) * 25, (64 + (i as u64 % 8) * 32) * MIB);
        s = match i % 4 {
            0 => s.constraint(Constraint::label_eq("zone", "eu")),
            1 => s.constraint(Constraint::label_ne("zone", "ap")),
            2 => s.constraint(Constraint::label_eq("disk", "ssd")),
            _ => s,
        };
        if i % 10 == 0 {
            s = s.tcp(10_000 + i as u16);
        }
        b = b.service(s);
    }
    b.service(
        service("edge", "web", 2_000)
            .constraint(Constraint::label_eq("zone", "eu"))
            .tcp(8080)
            .reserve(100, 128 * MIB),
    )
    .build()
}

/// The same 100,000 replicas as 10,000 services of 10 (the per-service cost dominates).
fn many_small() -> Snapshot {
    let mut b = hosts();
    for i in 0..10_000usize {
        let mut s = service(&format!("stack{}", i / 10), &format!("svc{i}"), 10)
            .reserve(50 + (i as u64 % 4) * 25, (64 + (i as u64 % 8) * 32) * MIB);
        s = match i % 4 {
            0 => s.constraint(Constraint::label_eq("zone", "eu")),
            1 => s.constraint(Constraint::label_ne("zone", "ap")),
            2 => s.constraint(Constraint::label_eq("disk", "ssd")),
            _ => s,
        };
        b = b.service(s);
    }
    b.build()
}

fn main() {
    bench("100 services", &snapshot());
    bench("10,000 small services", &many_small());
}

fn bench(title: &str, snap: &Snapshot) {
    let replicas: u64 = snap.services.iter().map(|s| u64::from(s.replicas)).sum();
    println!(
        "{title}: {} hosts, {} services, {replicas} replicas",
        snap.hosts.len(),
        snap.services.len()
    );
    let mut times = Vec::with_capacity(RUNS);
    let mut plans: Vec<Plan> = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        let plan = schedule(snap);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        plans.push(plan);
    }
    let deterministic = plans.windows(2).all(|w| w[0] == w[1]);
    let plan = &plans[0];
    times.sort_by(f64::total_cmp);
    println!(
        "schedule(): median {:.1} ms, min {:.1} ms over {RUNS} runs",
        times[RUNS / 2],
        times[0]
    );
    println!(
        "placed {}, unplaced {}, deterministic across runs: {deterministic}",
        plan.placements.len(),
        plan.unplaced.len()
    );
    if let Some(u) = plan.unplaced.first() {
        println!("first unplaced: {u}");
    }
    // The plan is also checked by the independent checker (slow: plain scans), once.
    let t = Instant::now();
    match corral_scheduler::testing::check_plan(snap, plan) {
        Ok(()) => println!(
            "check_plan: ok ({:.0} ms)",
            t.elapsed().as_secs_f64() * 1000.0
        ),
        Err(e) => {
            println!("check_plan: VIOLATION {e}");
            std::process::exit(1);
        }
    }
}
