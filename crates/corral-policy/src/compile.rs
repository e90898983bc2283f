//! A document and the environment's replicas (which overlay address is which service) become
//! one host's rule set: per service, three chains (its replicas' traffic to other replicas,
//! to outside the overlay, and from outside the overlay to them), each a list of deny
//! matches (one per deny rule, so each keeps a counter), the allow matches merged, and the
//! default. [`Ruleset::decide`] reads it the way the kernel reads the nftables rules
//! [`crate::nft::render`] writes from it, so tests can hold the two meanings side by side.
//!
//! Cost per packet: one lookup of the source's (or destination's) service, then one set
//! lookup per deny rule that concerns that service and two for all its allows — independent of
//! the number of replicas.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use crate::document::{Action, Document, RuleId, Scope};
use crate::evaluate::{DecidedBy, Decision, Direction, Endpoint, Workload};
use crate::net::{Cidr, PortRange, Proto, Traffic};

/// A service's replicas on the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// The service.
    pub workload: Workload,
    /// Its replicas' overlay addresses.
    pub addresses: Vec<Ipv4Addr>,
}

/// The other end a match is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// Replicas' addresses (sorted, no duplicates).
    Replicas(Vec<Ipv4Addr>),
    /// A network outside the overlay.
    Network(Cidr),
}

impl Peers {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        match self {
            Peers::Replicas(a) => a.binary_search(&ip).is_ok(),
            Peers::Network(n) => n.contains(ip),
        }
    }
}

/// Ports as disjoint, sorted ranges per protocol; `None` in a [`Match`]: everything.
pub type PortSet = BTreeMap<Proto, Vec<(u16, u16)>>;

/// Merges ranges into disjoint sorted ones per protocol.
pub fn port_set(ranges: &[PortRange]) -> PortSet {
    let mut by: BTreeMap<Proto, Vec<(u16, u16)>> = BTreeMap::new();
    for r in ranges {
        by.entry(r.proto).or_default().push((r.first, r.last));
    }
    for list in by.values_mut() {
        list.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(list.len());
        for &(a, b) in list.iter() {
            match merged.last_mut() {
                Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *list = merged;
    }
    by
}

fn ports_cover(ports: &Option<PortSet>, traffic: Traffic) -> bool {
    match (ports, traffic) {
        (None, _) => true,
        (Some(set), Traffic::Port(proto, port)) => set
            .get(&proto)
            .is_some_and(|l| l.iter().any(|(a, b)| (*a..=*b).contains(&port))),
        (Some(_), Traffic::Other) => false,
    }
}

/// One rule's part in one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The rule.
    pub rule: RuleId,
    /// The other end.
    pub peers: Peers,
    /// The traffic (`None`: every port and protocol).
    pub ports: Option<PortSet>,
}

/// What one chain does, in order: the first deny match drops, then any allow match accepts,
/// then the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Deny matches, in rule order.
    pub denies: Vec<Match>,
    /// Allow matches, in rule order.
    pub allows: Vec<Match>,
    /// What happens to the rest.
    pub default: Action,
}

impl Chain {
    fn decide(&self, peer: Ipv4Addr, traffic: Traffic, direction: Direction) -> Decision {
        for list in [&self.denies, &self.allows] {
            if let Some(m) = list
                .iter()
                .find(|m| m.peers.contains(peer) && ports_cover(&m.ports, traffic))
            {
                return Decision {
                    action: m.rule.action,
                    by: DecidedBy::Rule(m.rule),
                };
            }
        }
        Decision {
            action: self.default,
            by: DecidedBy::Default(direction),
        }
    }
}

/// One service's chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRules {
    /// The service.
    pub workload: Workload,
    /// Its replicas' addresses (each in exactly one class).
    pub addresses: Vec<Ipv4Addr>,
    /// Its replicas' traffic to other replicas (peers: destinations).
    pub east_west: Chain,
    /// Its replicas' traffic to outside the overlay (peers: destinations).
    pub egress: Chain,
    /// Traffic from outside the overlay to its replicas (peers: sources).
    pub ingress: Chain,
}

/// A host's rule set for one policy generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The policy generation it enforces.
    pub generation: u64,
    /// The overlay's range: traffic with neither end in it is not governed.
    pub range: Cidr,
    /// One per service with replicas on the overlay.
    pub classes: Vec<ClassRules>,
    /// Addresses claimed by two services (a stale name table): each kept in the first
    /// service only, and reported.
    pub conflicts: Vec<Ipv4Addr>,
}

/// Why a packet was dropped or let through, as the rule set tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Decided by the policy.
    Decided(Decision),
    /// An overlay address that belongs to no known replica: dropped, so a replica is
    /// reachable only once its rules are in place.
    Unknown,
}

/// Builds a host's rule set. Addresses outside `range` are ignored (they cannot be stack
/// containers on the overlay).
pub fn compile(doc: &Document, classes: &[Class], range: Cidr, generation: u64) -> Ruleset {
    let mut owner: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut conflicts = BTreeSet::new();
    let mut addresses: Vec<Vec<Ipv4Addr>> = Vec::with_capacity(classes.len());
    for (i, c) in classes.iter().enumerate() {
        let mut own = Vec::with_capacity(c.addresses.len());
        for ip in &c.addresses {
            if !range.contains(*ip) {
                continue;
            }
            match owner.get(ip) {
                Some(&o) if o != i => {
                    conflicts.insert(*ip);
                }
                Some(_) => {}
                None => {
                    owner.insert(*ip, i);
                    own.push(*ip);
                }
            }
        }
        own.sort_unstable();
        addresses.push(own);
    }
    let ports_of = |ranges: &[PortRange]| (!ranges.is_empty()).then(|| port_set(ranges));
    let rules: Vec<(RuleId, &crate::document::Rule)> = doc.rules().collect();
    let mut out = Vec::with_capacity(classes.len());
    for (i, class) in classes.iter().enumerate() {
        let me = Endpoint::Replica(&class.workload);
        let mut east_west = Chain {
            denies: Vec::new(),
            allows: Vec::new(),
            default: doc.default,
        };
        let mut egress = Chain {
            denies: Vec::new(),
            allows: Vec::new(),
            default: doc.egress,
        };
        let mut ingress = Chain {
            denies: Vec::new(),
            allows: Vec::new(),
            default: doc.ingress,
        };
        for (id, rule) in &rules {
            let push = |chain: &mut Chain, peers: Peers| {
                let m = Match {
                    rule: *id,
                    peers,
                    ports: ports_of(&rule.ports),
                };
                match id.action {
                    Action::Deny => chain.denies.push(m),
                    Action::Allow => chain.allows.push(m),
                }
            };
            match &rule.scope {
                Scope::Ingress { from, to } => {
                    if to.matches(&class.workload) && rule.admits(&class.workload) {
                        push(&mut ingress, Peers::Network(*from));
                    }
                }
                Scope::Egress { from, to } => {
                    if from.matches(&class.workload) && rule.admits(&class.workload) {
                        push(&mut egress, Peers::Network(*to));
                    }
                }
                _ => {
                    let mut peers: Vec<Ipv4Addr> = Vec::new();
                    for (j, other) in classes.iter().enumerate() {
                        if rule.matches_ends(&me, &Endpoint::Replica(&other.workload)) {
                            peers.extend(&addresses[j]);
                        }
                    }
                    if !peers.is_empty() {
                        peers.sort_unstable();
                        peers.dedup();
                        push(&mut east_west, Peers::Replicas(peers));
                    }
                }
            }
        }
        out.push(ClassRules {
            workload: class.workload.clone(),
            addresses: addresses[i].clone(),
            east_west,
            egress,
            ingress,
        });
    }
    Ruleset {
        generation,
        range,
        classes: out,
        conflicts: conflicts.into_iter().collect(),
    }
}

impl Ruleset {
    fn class_of(&self, ip: Ipv4Addr) -> Option<&ClassRules> {
        self.classes
            .iter()
            .find(|c| c.addresses.binary_search(&ip).is_ok())
    }

    /// What the rules do with the first packet of a connection from `src` to `dst`.
    pub fn decide(&self, src: Ipv4Addr, dst: Ipv4Addr, traffic: Traffic) -> Verdict {
        let (s_in, d_in) = (self.range.contains(src), self.range.contains(dst));
        match (s_in, d_in) {
            (false, false) => Verdict::Decided(Decision {
                action: Action::Allow,
                by: DecidedBy::NotGoverned,
            }),
            (true, true) => match (self.class_of(src), self.class_of(dst)) {
                (Some(c), Some(_)) => {
                    Verdict::Decided(c.east_west.decide(dst, traffic, Direction::EastWest))
                }
                _ => Verdict::Unknown,
            },
            (true, false) => match self.class_of(src) {
                Some(c) => Verdict::Decided(c.egress.decide(dst, traffic, Direction::Egress)),
                None => Verdict::Unknown,
            },
            (false, true) => match self.class_of(dst) {
                Some(c) => Verdict::Decided(c.ingress.decide(src, traffic, Direction::Ingress)),
                None => Verdict::Unknown,
            },
        }
    }
}
