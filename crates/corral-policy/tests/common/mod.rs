//! Random documents for the property tests: nine services over three stacks with `zone` and
//! `tier` labels, and rules of every kind over them.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use corral_policy::{
    Action, Cidr, Document, PortRange, Proto, Rule, Scope, Selector, Traffic, Within, Workload,
};
use proptest::prelude::*;

pub fn workloads() -> Vec<Workload> {
    let mut v = Vec::new();
    for (i, stack) in ["a", "b", "c"].iter().enumerate() {
        for (j, service) in ["x", "y", "z"].iter().enumerate() {
            let zone = ["dmz", "app", "db", ""][(i + 2 * j) % 4];
            let mut labels = BTreeMap::new();
            if !zone.is_empty() {
                labels.insert("zone".into(), zone.into());
            }
            if (i + j) % 2 == 0 {
                labels.insert("tier".into(), "front".into());
            }
            v.push(Workload {
                stack: (*stack).into(),
                service: (*service).into(),
                labels,
            });
        }
    }
    v
}

pub fn selector() -> impl Strategy<Value = Selector> {
    (
        prop::option::of(prop::sample::select(vec!["a", "b", "c", "nope"])),
        prop::option::of(prop::sample::select(vec!["x", "y", "z"])),
        prop::option::of(prop::sample::select(vec!["dmz", "app", "db"])),
        any::<bool>(),
    )
        .prop_map(|(stack, service, zone, tier)| {
            let mut labels = BTreeMap::new();
            if let Some(z) = zone {
                labels.insert("zone".to_string(), z.to_string());
            }
            if tier {
                labels.insert("tier".to_string(), "front".to_string());
            }
            Selector {
                stack: stack.map(Into::into),
                service: service.map(Into::into),
                labels,
            }
        })
}

pub fn cidr() -> impl Strategy<Value = Cidr> {
    prop::sample::select(vec![
        "0.0.0.0/0",
        "203.0.113.0/24",
        "203.0.113.7/32",
        "10.0.0.0/8",
        "198.51.100.0/25",
    ])
    .prop_map(|c| c.parse().unwrap())
}

pub fn ports() -> impl Strategy<Value = Vec<PortRange>> {
    prop::collection::vec(
        prop::sample::select(vec![
            "80/tcp",
            "80-90/tcp",
            "85/tcp",
            "53/udp",
            "1-1000/udp",
            "5432/tcp",
            "443",
        ]),
        0..3,
    )
    .prop_map(|v| v.into_iter().map(|p| p.parse().unwrap()).collect())
}

pub fn rule() -> impl Strategy<Value = Rule> {
    let scope = prop_oneof![
        (selector(), selector()).prop_map(|(from, to)| Scope::Between { from, to }),
        Just(Scope::Within(Within::Stack)),
        Just(Scope::Within(Within::Service)),
        prop::sample::select(vec!["zone", "tier", "missing"])
            .prop_map(|l| Scope::GroupBy(l.into())),
        (cidr(), selector()).prop_map(|(from, to)| Scope::Ingress { from, to }),
        (selector(), cidr()).prop_map(|(from, to)| Scope::Egress { from, to }),
    ];
    (
        scope,
        ports(),
        prop::option::weighted(0.2, prop::sample::select(vec!["a", "b"])),
    )
        .prop_map(|(scope, ports, in_stack)| Rule {
            name: None,
            scope,
            ports,
            in_stack: in_stack.map(Into::into),
        })
}

pub fn action() -> impl Strategy<Value = Action> {
    prop_oneof![Just(Action::Allow), Just(Action::Deny)]
}

pub fn document() -> impl Strategy<Value = Document> {
    (
        action(),
        action(),
        action(),
        prop::collection::vec(rule(), 0..6),
        prop::collection::vec(rule(), 0..4),
    )
        .prop_map(|(default, ingress, egress, allow, deny)| Document {
            default,
            ingress,
            egress,
            allow,
            deny,
        })
}

pub fn traffic() -> impl Strategy<Value = Traffic> {
    prop_oneof![
        Just(Traffic::Other),
        prop::sample::select(vec![80u16, 85, 91, 53, 443, 5432, 1000, 1001]).prop_flat_map(
            |p| prop_oneof![
                Just(Traffic::Port(Proto::Tcp, p)),
                Just(Traffic::Port(Proto::Udp, p))
            ]
        ),
    ]
}
