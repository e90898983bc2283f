//! What may flow between two services, whatever the port: the allowed part of the traffic
//! space (TCP ports, UDP ports, other protocols) and the rules that shaped it. Used for
//! `corral policy show` and `diff`, the firewall export's service-to-service section and the
//! services diagram.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::compile::port_set;
use crate::document::{Action, Document, RuleId};
use crate::evaluate::{Endpoint, Workload};
use crate::net::{PortRange, Proto};

/// Disjoint, sorted inclusive port ranges (1–65535).
type Ranges = Vec<(u16, u16)>;

const FULL: (u16, u16) = (1, 65535);

/// A part of the traffic space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Access {
    /// TCP ports.
    #[schema(value_type = Vec<Vec<u16>>)]
    pub tcp: Ranges,
    /// UDP ports.
    #[schema(value_type = Vec<Vec<u16>>)]
    pub udp: Ranges,
    /// Protocols without ports (ICMP, …).
    pub other: bool,
}

impl Access {
    /// Everything.
    pub fn all() -> Access {
        Access {
            tcp: vec![FULL],
            udp: vec![FULL],
            other: true,
        }
    }

    /// Nothing.
    pub fn none() -> Access {
        Access {
            tcp: Vec::new(),
            udp: Vec::new(),
            other: false,
        }
    }

    /// What a rule's `ports` cover (none listed: everything).
    pub fn of_ports(ports: &[PortRange]) -> Access {
        if ports.is_empty() {
            return Access::all();
        }
        let set = port_set(ports);
        Access {
            tcp: set.get(&Proto::Tcp).cloned().unwrap_or_default(),
            udp: set.get(&Proto::Udp).cloned().unwrap_or_default(),
            other: false,
        }
    }

    /// Whether the traffic is in it.
    pub fn allows(&self, traffic: crate::net::Traffic) -> bool {
        let within = |r: &Ranges, p: u16| r.iter().any(|(a, b)| (*a..=*b).contains(&p));
        match traffic {
            crate::net::Traffic::Port(Proto::Tcp, p) => within(&self.tcp, p),
            crate::net::Traffic::Port(Proto::Udp, p) => within(&self.udp, p),
            crate::net::Traffic::Other => self.other,
        }
    }

    /// Whether nothing is in it.
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty() && !self.other
    }

    /// Whether everything is in it.
    pub fn is_all(&self) -> bool {
        *self == Access::all()
    }

    fn union(&self, o: &Access) -> Access {
        Access {
            tcp: union(&self.tcp, &o.tcp),
            udp: union(&self.udp, &o.udp),
            other: self.other || o.other,
        }
    }

    fn minus(&self, o: &Access) -> Access {
        Access {
            tcp: minus(&self.tcp, &o.tcp),
            udp: minus(&self.udp, &o.udp),
            other: self.other && !o.other,
        }
    }
}

fn union(a: &Ranges, b: &Ranges) -> Ranges {
    let mut all: Ranges = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Ranges = Vec::with_capacity(all.len());
    for (x, y) in all {
        match out.last_mut() {
            Some(last) if u32::from(x) <= u32::from(last.1) + 1 => last.1 = last.1.max(y),
            _ => out.push((x, y)),
        }
    }
    out
}

fn minus(a: &Ranges, b: &Ranges) -> Ranges {
    let mut out = Vec::new();
    for &(x, y) in a {
        let mut start = u32::from(x);
        let end = u32::from(y);
        for &(p, q) in b {
            let (p, q) = (u32::from(p), u32::from(q));
            if q < start || p > end {
                continue;
            }
            if p > start {
                out.push((start as u16, (p - 1) as u16));
            }
            start = q + 1;
            if start > end {
                break;
            }
        }
        if start <= end {
            out.push((start as u16, end as u16));
        }
    }
    out
}

fn ranges_text(proto: &str, ranges: &Ranges) -> Vec<String> {
    ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                format!("{a}/{proto}")
            } else {
                format!("{a}-{b}/{proto}")
            }
        })
        .collect()
}

impl fmt::Display for Access {
    /// `all traffic`, `nothing`, `8080/tcp, 53/udp`, or `all traffic except 22/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all traffic");
        }
        if self.is_empty() {
            return f.write_str("nothing");
        }
        let rest = Access::all().minus(self);
        let listed = |a: &Access| {
            let mut parts = ranges_text("tcp", &a.tcp);
            parts.extend(ranges_text("udp", &a.udp));
            if a.other {
                parts.push("other protocols".into());
            }
            parts
        };
        let (mine, missing) = (listed(self), listed(&rest));
        if self.other && missing.len() < mine.len() {
            write!(f, "all traffic except {}", missing.join(", "))
        } else {
            f.write_str(&mine.join(", "))
        }
    }
}

/// What may flow from one service to another, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Flow {
    /// The source service.
    pub from: Workload,
    /// The destination service.
    pub to: Workload,
    /// What new connections may carry.
    pub access: Access,
    /// Allow rules that open part of it (empty: the default does).
    pub allowed_by: Vec<RuleId>,
    /// Deny rules that close part of what would be open.
    pub denied_by: Vec<RuleId>,
}

/// What `doc` lets flow from `a` to `b`.
pub fn flow(doc: &Document, a: &Workload, b: &Workload) -> Flow {
    let (x, y) = (Endpoint::Replica(a), Endpoint::Replica(b));
    let mut opened = match doc.default {
        Action::Allow => Access::all(),
        Action::Deny => Access::none(),
    };
    let mut closed = Access::none();
    let (mut allowed_by, mut denied_by) = (Vec::new(), Vec::new());
    for (id, rule) in doc.rules() {
        if !rule.matches_ends(&x, &y) {
            continue;
        }
        let covered = Access::of_ports(&rule.ports);
        match id.action {
            Action::Allow => {
                opened = opened.union(&covered);
                allowed_by.push(id);
            }
            Action::Deny => {
                closed = closed.union(&covered);
                denied_by.push(id);
            }
        }
    }
    Flow {
        from: a.clone(),
        to: b.clone(),
        access: opened.minus(&closed),
        allowed_by,
        denied_by,
    }
}

/// Every ordered pair of `services` with what may flow between them (pairs where nothing may
/// are included: a reviewer asks about those too), at most `limit` pairs.
pub fn flows(doc: &Document, services: &[Workload], limit: usize) -> Vec<Flow> {
    let mut out = Vec::new();
    for a in services {
        for b in services {
            if out.len() >= limit {
                return out;
            }
            out.push(flow(doc, a, b));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn interval_arithmetic() {
        assert_eq!(
            minus(&vec![(1, 100)], &vec![(10, 20), (50, 50)]),
            vec![(1, 9), (21, 49), (51, 100)]
        );
        assert_eq!(minus(&vec![(1, 10)], &vec![(1, 10)]), vec![]);
        assert_eq!(
            minus(&vec![(1, 65535)], &vec![(65535, 65535)]),
            vec![(1, 65534)]
        );
        assert_eq!(
            union(&vec![(1, 5)], &vec![(6, 9), (20, 30)]),
            vec![(1, 9), (20, 30)]
        );
    }

    #[test]
    fn texts() {
        assert_eq!(Access::all().to_string(), "all traffic");
        assert_eq!(Access::none().to_string(), "nothing");
        let p = |s: &str| s.parse::<PortRange>().unwrap();
        assert_eq!(
            Access::of_ports(&[p("8080/tcp"), p("53/udp")]).to_string(),
            "8080/tcp, 53/udp"
        );
        let a = Access::all().minus(&Access::of_ports(&[p("22/tcp")]));
        assert_eq!(a.to_string(), "all traffic except 22/tcp");
    }
}
