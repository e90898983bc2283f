//! The meaning of a document: unit examples, then properties over random documents — a deny
//! rule always wins, the order of allow rules does not matter, and a host's compiled rule set
//! decides every connection exactly as `evaluate` (and so `corral policy test`) does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use corral_policy::{
    Action, Cidr, Class, DecidedBy, Direction, Document, Endpoint, Proto, RuleId, Traffic, Verdict,
    Workload, compile, evaluate, parse, unmatched,
};
use proptest::prelude::*;

mod common;
use common::*;

fn w(stack: &str, service: &str, zone: Option<&str>) -> Workload {
    Workload {
        stack: stack.into(),
        service: service.into(),
        labels: zone
            .map(|z| BTreeMap::from([("zone".to_string(), z.to_string())]))
            .unwrap_or_default(),
    }
}

fn tcp(port: u16) -> Traffic {
    Traffic::Port(Proto::Tcp, port)
}

const EXAMPLE: &str = "
default: deny
allow:
  - name: web-to-api
    from: { labels: { zone: dmz } }
    to: { service: api }
    ports: [8080/tcp]
  - name: api-to-db
    from: { service: api }
    to: { labels: { zone: db } }
    ports: [5432/tcp]
deny:
  - name: nothing-from-outside-to-db
    from: { cidr: 0.0.0.0/0 }
    to: { labels: { zone: db } }
";

#[test]
fn the_worked_example() {
    let doc = parse(EXAMPLE).unwrap();
    let web = w("shop", "web", Some("dmz"));
    let api = w("shop", "api", Some("app"));
    let db = w("shop", "db", Some("db"));
    let r = Endpoint::Replica;
    let d = evaluate(&doc, &r(&web), &r(&api), tcp(8080));
    assert_eq!(d.action, Action::Allow);
    assert_eq!(
        d.by,
        DecidedBy::Rule(RuleId {
            action: Action::Allow,
            index: 0
        })
    );
    assert_eq!(
        doc.describe(RuleId {
            action: Action::Allow,
            index: 0
        }),
        "allow[0] \"web-to-api\""
    );
    assert_eq!(
        evaluate(&doc, &r(&web), &r(&api), tcp(22)).action,
        Action::Deny
    );
    assert_eq!(
        evaluate(&doc, &r(&web), &r(&db), tcp(5432)).by,
        DecidedBy::Default(Direction::EastWest)
    );
    assert_eq!(
        evaluate(&doc, &r(&api), &r(&db), tcp(5432)).action,
        Action::Allow
    );
    assert_eq!(
        evaluate(&doc, &r(&api), &r(&db), Traffic::Other).action,
        Action::Deny
    );
    let outside = Endpoint::Outside(Ipv4Addr::new(203, 0, 113, 7));
    let d = evaluate(&doc, &outside, &r(&db), tcp(5432));
    assert_eq!(
        (d.action, d.by),
        (
            Action::Deny,
            DecidedBy::Rule(RuleId {
                action: Action::Deny,
                index: 0
            })
        )
    );
    assert_eq!(
        evaluate(&doc, &outside, &r(&web), tcp(80)).by,
        DecidedBy::Default(Direction::Ingress)
    );
    assert_eq!(
        evaluate(&doc, &r(&web), &outside, tcp(443)),
        corral_policy::Decision {
            action: Action::Allow,
            by: DecidedBy::Default(Direction::Egress)
        }
    );
    let warnings = unmatched(&doc, &[web, api]);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("zone=db"), "{warnings:?}");
}

#[test]
fn rancher_shorthands() {
    let doc = parse("default: deny\nallow:\n  - within: service\n  - between: { groupBy: zone }\n")
        .unwrap();
    let a1 = w("a", "x", Some("eu"));
    let a2 = w("a", "y", Some("us"));
    let b1 = w("b", "z", Some("eu"));
    let b2 = w("b", "q", None);
    let r = Endpoint::Replica;
    assert_eq!(
        evaluate(&doc, &r(&a1), &r(&a1), tcp(1)).action,
        Action::Allow
    );
    assert_eq!(
        evaluate(&doc, &r(&a1), &r(&a2), tcp(1)).action,
        Action::Deny
    );
    assert_eq!(
        evaluate(&doc, &r(&a1), &r(&b1), tcp(1)).action,
        Action::Allow
    );
    assert_eq!(
        evaluate(&doc, &r(&b2), &r(&b2), tcp(1)).action,
        Action::Allow
    );
    assert_eq!(
        evaluate(&doc, &r(&b2), &r(&a1), tcp(1)).action,
        Action::Deny
    );
    let stack = parse("default: deny\nallow:\n  - within: stack\n").unwrap();
    assert_eq!(
        evaluate(&stack, &r(&a1), &r(&a2), tcp(1)).action,
        Action::Allow
    );
    assert_eq!(
        evaluate(&stack, &r(&a1), &r(&b1), tcp(1)).action,
        Action::Deny
    );
}

// ---- properties ---------------------------------------------------------------------------

const OUTSIDE: [Ipv4Addr; 4] = [
    Ipv4Addr::new(203, 0, 113, 7),
    Ipv4Addr::new(203, 0, 113, 200),
    Ipv4Addr::new(10, 1, 2, 3),
    Ipv4Addr::new(8, 8, 8, 8),
];

/// The environment: each workload with two replicas at 10.42.(i/4).(10+…), and which of them
/// are on the overlay.
fn classes(present: &[bool]) -> Vec<Class> {
    workloads()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| present[*i])
        .map(|(i, workload)| Class {
            workload,
            addresses: vec![
                Ipv4Addr::new(10, 42, (i % 4) as u8, 10 + i as u8),
                Ipv4Addr::new(10, 42, ((i + 1) % 4) as u8, 40 + i as u8),
            ],
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_compiled_rules_decide_as_the_document_does(
        doc in document(),
        present in prop::collection::vec(any::<bool>(), 9),
        src_pick in 0usize..24,
        dst_pick in 0usize..24,
        t in traffic(),
    ) {
        let classes = classes(&present);
        let range: Cidr = "10.42.0.0/16".parse().unwrap();
        let rules = compile(&doc, &classes, range, 7);
        prop_assert!(rules.conflicts.is_empty());
        // Picks: a replica of the environment, an address outside, or an overlay address
        // that is no replica.
        let all: Vec<(Ipv4Addr, Option<&Workload>)> = classes
            .iter()
            .flat_map(|c| c.addresses.iter().map(move |a| (*a, Some(&c.workload))))
            .chain(OUTSIDE.iter().map(|a| (*a, None)))
            .chain([(Ipv4Addr::new(10, 42, 3, 250), None)])
            .collect();
        let (src, sw) = all[src_pick % all.len()];
        let (dst, dw) = all[dst_pick % all.len()];
        fn endpoint(range: Cidr, ip: Ipv4Addr, w: Option<&Workload>) -> Option<Endpoint<'_>> {
            match w {
                Some(w) => Some(Endpoint::Replica(w)),
                None if !range.contains(ip) => Some(Endpoint::Outside(ip)),
                None => None,
            }
        }
        let got = rules.decide(src, dst, t);
        match (endpoint(range, src, sw), endpoint(range, dst, dw)) {
            (Some(a), Some(b)) => {
                let want = evaluate(&doc, &a, &b, t);
                prop_assert_eq!(got, Verdict::Decided(want), "{} -> {} {}", src, dst, t);
            }
            _ => prop_assert_eq!(got, Verdict::Unknown),
        }
    }

    #[test]
    fn a_matching_deny_always_wins_and_allow_order_does_not_matter(
        doc in document(),
        a in 0usize..9,
        b in 0usize..9,
        t in traffic(),
        seed in any::<u64>(),
    ) {
        let all = workloads();
        let (x, y) = (Endpoint::Replica(&all[a]), Endpoint::Replica(&all[b]));
        let d = evaluate(&doc, &x, &y, t);
        let denied = doc.deny.iter().any(|r| r.matches_ends(&x, &y) && r.covers(t));
        if denied {
            prop_assert_eq!(d.action, Action::Deny);
        }
        let mut shuffled = doc.clone();
        let n = shuffled.allow.len();
        if n > 1 {
            shuffled.allow.rotate_left((seed as usize) % n);
            shuffled.allow.swap(0, (seed as usize / 7) % n);
        }
        prop_assert_eq!(evaluate(&shuffled, &x, &y, t).action, d.action);
    }

    #[test]
    fn a_flow_holds_exactly_the_traffic_evaluate_allows(
        doc in document(),
        a in 0usize..9,
        b in 0usize..9,
        t in traffic(),
    ) {
        let all = workloads();
        let f = corral_policy::flow(&doc, &all[a], &all[b]);
        let d = evaluate(&doc, &Endpoint::Replica(&all[a]), &Endpoint::Replica(&all[b]), t);
        prop_assert_eq!(f.access.allows(t), d.action == Action::Allow, "{} {}", f.access, t);
    }

    #[test]
    fn documents_survive_their_written_form(doc in document()) {
        let json = serde_json::to_string(&doc).unwrap();
        let back: Document = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, doc);
    }
}

#[test]
fn an_address_claimed_twice_stays_with_one_service_and_is_reported() {
    let doc = Document::default();
    let ip = Ipv4Addr::new(10, 42, 0, 5);
    let classes = vec![
        Class {
            workload: w("a", "x", None),
            addresses: vec![ip],
        },
        Class {
            workload: w("a", "y", None),
            addresses: vec![ip, Ipv4Addr::new(10, 42, 0, 6)],
        },
    ];
    let rules = compile(&doc, &classes, "10.42.0.0/16".parse().unwrap(), 1);
    assert_eq!(rules.conflicts, vec![ip]);
    assert_eq!(rules.classes[0].addresses, vec![ip]);
    assert_eq!(
        rules.classes[1].addresses,
        vec![Ipv4Addr::new(10, 42, 0, 6)]
    );
}

#[test]
fn a_stacks_rules_stay_inside_the_stack() {
    use corral_policy::{StackRules, combine};
    let rules: StackRules = serde_json::from_value(serde_json::json!({
        "allow": [
            {"from": {"service": "web"}, "to": {"service": "db"}, "ports": ["5432/tcp"]},
            {"within": "stack"},
            {"between": {"groupBy": "zone"}}
        ],
        "deny": [
            {"from": {"service": "web"}, "to": {"stack": "other", "service": "db"}},
            {"to": {"cidr": "0.0.0.0/0"}, "ports": ["25/tcp"]}
        ]
    }))
    .unwrap();
    let scoped = rules.scoped("shop").unwrap();
    assert_eq!(
        scoped.allow[0].name.as_deref(),
        Some("stack shop: allow[0]")
    );
    let env = parse("default: deny\n").unwrap();
    let doc = combine(&env, &[("shop".into(), scoped)]);
    let web = w("shop", "web", Some("eu"));
    let db = w("shop", "db", Some("eu"));
    let other_db = w("other", "db", Some("eu"));
    let other_x = w("other", "x", Some("eu"));
    let r = Endpoint::Replica;
    assert_eq!(
        evaluate(&doc, &r(&web), &r(&db), tcp(5432)).action,
        Action::Allow
    );
    // `within: stack` and `between` of a stack do not open other stacks' traffic.
    assert_eq!(
        evaluate(&doc, &r(&other_db), &r(&other_x), tcp(1)).action,
        Action::Deny
    );
    assert_eq!(
        evaluate(&doc, &r(&web), &r(&other_x), tcp(1)).action,
        Action::Deny
    );
    // Its denies reach other stacks and the outside, from its own services.
    let allow_all = combine(
        &parse("").unwrap(),
        &[("shop".into(), rules.scoped("shop").unwrap())],
    );
    assert_eq!(
        evaluate(&allow_all, &r(&web), &r(&other_db), tcp(1)).action,
        Action::Deny
    );
    assert_eq!(
        evaluate(&allow_all, &r(&other_x), &r(&other_db), tcp(1)).action,
        Action::Allow
    );
    let mail = Endpoint::Outside(Ipv4Addr::new(198, 51, 100, 25));
    assert_eq!(
        evaluate(&allow_all, &r(&web), &mail, tcp(25)).action,
        Action::Deny
    );
    assert_eq!(
        evaluate(&allow_all, &r(&other_x), &mail, tcp(25)).action,
        Action::Allow
    );
    let d = evaluate(&allow_all, &r(&web), &mail, tcp(25));
    assert_eq!(
        allow_all.describe(match d.by {
            DecidedBy::Rule(id) => id,
            _ => panic!(),
        }),
        "deny[1] \"stack shop: deny[1]\""
    );

    // A stack cannot open traffic to another stack or to the outside.
    for bad in [
        serde_json::json!({"allow": [{"to": {"stack": "other"}}]}),
        serde_json::json!({"allow": [{"to": {"cidr": "0.0.0.0/0"}}]}),
        serde_json::json!({"allow": [{"within": "stack", "in_stack": "other"}]}),
    ] {
        let rules: StackRules = serde_json::from_value(bad.clone()).unwrap();
        assert!(rules.scoped("shop").is_err(), "{bad}");
    }
    assert!(serde_json::from_value::<StackRules>(serde_json::json!({"default": "deny"})).is_err());
}
