//! What a document decides for one connection, and which rule decided it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::document::{Action, Document, Rule, RuleId, Scope, Selector, Within};
use crate::net::Traffic;

/// A stack service as a policy sees it: its replicas all match the same rules.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct Workload {
    /// The stack's name.
    pub stack: String,
    /// The service's name.
    pub service: String,
    /// The service's labels (`labels:` in its Compose file).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.stack, self.service)
    }
}

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// A replica of a stack service (an overlay address).
    Replica(&'a Workload),
    /// An address outside the overlay.
    Outside(Ipv4Addr),
}

/// Which default applies to a connection no rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Stack container to stack container (`default`).
    EastWest,
    /// From outside the overlay to a stack container (`ingress`).
    Ingress,
    /// From a stack container to outside the overlay (`egress`).
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::EastWest => "default",
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// What decided a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    /// A rule (a deny rule whenever one matches).
    Rule(RuleId),
    /// No rule matched: the document's default for the direction.
    Default(Direction),
    /// Neither end is a stack container: not the policy's business.
    NotGoverned,
}

/// The answer for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Decision {
    /// Allowed or denied.
    pub action: Action,
    /// Why.
    pub by: DecidedBy,
}

impl Selector {
    /// Whether a service's replicas are among the containers it names.
    pub fn matches(&self, w: &Workload) -> bool {
        self.stack.as_ref().is_none_or(|s| *s == w.stack)
            && self.service.as_ref().is_none_or(|s| *s == w.service)
            && self.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
    }
}

impl Rule {
    /// Whether a stack container may be an end of this rule's traffic (`in_stack`).
    pub fn admits(&self, w: &Workload) -> bool {
        self.in_stack.as_ref().is_none_or(|s| *s == w.stack)
    }

    /// Whether the rule is about traffic between these two ends (whatever the port).
    pub fn matches_ends(&self, from: &Endpoint<'_>, to: &Endpoint<'_>) -> bool {
        for end in [from, to] {
            if let Endpoint::Replica(w) = end
                && !self.admits(w)
            {
                return false;
            }
        }
        match (&self.scope, from, to) {
            (Scope::Between { from: f, to: t }, Endpoint::Replica(a), Endpoint::Replica(b)) => {
                f.matches(a) && t.matches(b)
            }
            (Scope::Within(Within::Stack), Endpoint::Replica(a), Endpoint::Replica(b)) => {
                a.stack == b.stack
            }
            (Scope::Within(Within::Service), Endpoint::Replica(a), Endpoint::Replica(b)) => {
                a.stack == b.stack && a.service == b.service
            }
            (Scope::GroupBy(label), Endpoint::Replica(a), Endpoint::Replica(b)) => {
                matches!((a.labels.get(label), b.labels.get(label)), (Some(x), Some(y)) if x == y)
            }
            (Scope::Ingress { from: net, to: t }, Endpoint::Outside(ip), Endpoint::Replica(b)) => {
                net.contains(*ip) && t.matches(b)
            }
            (Scope::Egress { from: f, to: net }, Endpoint::Replica(a), Endpoint::Outside(ip)) => {
                f.matches(a) && net.contains(*ip)
            }
            _ => false,
        }
    }

    /// Whether the rule covers this traffic: a rule without ports covers everything.
    pub fn covers(&self, traffic: Traffic) -> bool {
        match traffic {
            _ if self.ports.is_empty() => true,
            Traffic::Port(proto, port) => self.ports.iter().any(|r| r.contains(proto, port)),
            Traffic::Other => false,
        }
    }
}

/// What `doc` decides for a new connection from `from` to `to`: denied if any deny rule
/// matches (the first one is named), else allowed if any allow rule matches (the first one
/// is named), else the default of its direction. Replies to an allowed connection are not
/// connections of their own: they are always let through.
pub fn evaluate(
    doc: &Document,
    from: &Endpoint<'_>,
    to: &Endpoint<'_>,
    traffic: Traffic,
) -> Decision {
    let direction = match (from, to) {
        (Endpoint::Replica(_), Endpoint::Replica(_)) => Direction::EastWest,
        (Endpoint::Outside(_), Endpoint::Replica(_)) => Direction::Ingress,
        (Endpoint::Replica(_), Endpoint::Outside(_)) => Direction::Egress,
        (Endpoint::Outside(_), Endpoint::Outside(_)) => {
            return Decision {
                action: Action::Allow,
                by: DecidedBy::NotGoverned,
            };
        }
    };
    for (id, rule) in doc.rules() {
        if rule.matches_ends(from, to) && rule.covers(traffic) {
            return Decision {
                action: id.action,
                by: DecidedBy::Rule(id),
            };
        }
    }
    let action = match direction {
        Direction::EastWest => doc.default,
        Direction::Ingress => doc.ingress,
        Direction::Egress => doc.egress,
    };
    Decision {
        action,
        by: DecidedBy::Default(direction),
    }
}

/// What a document names that matches nothing deployed: each such selector or label, as a
/// warning (the document is still accepted: the services may come later).
pub fn unmatched(doc: &Document, workloads: &[Workload]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (id, rule) in doc.rules() {
        let at = doc.describe(id);
        let mut check = |end: &str, s: &Selector| {
            if !s.is_any() && !workloads.iter().any(|w| s.matches(w)) {
                warnings.push(format!("{at}: `{end}` ({s}) matches no service"));
            }
        };
        match &rule.scope {
            Scope::Between { from, to } => {
                check("from", from);
                check("to", to);
            }
            Scope::Ingress { to, .. } => check("to", to),
            Scope::Egress { from, .. } => check("from", from),
            Scope::Within(_) => {}
            Scope::GroupBy(label) => {
                if !workloads.iter().any(|w| w.labels.contains_key(label)) {
                    warnings.push(format!("{at}: no service carries the label {label:?}"));
                }
            }
        }
    }
    warnings
}
