//! The policy document: what people write (YAML), checked into typed rules.
//!
//! ```yaml
//! default: deny            # between stack containers: allow (the default) or deny
//! ingress: allow           # from outside the overlay to stack containers (published ports)
//! egress: allow            # from stack containers to outside the overlay (the internet)
//! allow:
//!   - name: web-to-api
//!     from: { labels: { zone: dmz } }
//!     to: { stack: shop, service: api }
//!     ports: [8080/tcp]
//!   - within: stack        # or: service
//!   - between: { groupBy: zone }
//! deny:
//!   - from: { cidr: 0.0.0.0/0 }
//!     to: { labels: { zone: db } }
//! ```
//!
//! A deny rule beats every allow rule; among allows the order does not matter.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::net::{Cidr, PortRange};

/// Largest document accepted (bytes): room for a thousand rules written one per line.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Most rules in `allow`, and in `deny`.
pub const MAX_RULES: usize = 1_000;
/// Most port ranges one rule names.
pub const MAX_PORTS: usize = 64;
/// Most labels one selector names.
pub const MAX_LABELS: usize = 16;
/// Longest name, stack, service, label key or value (bytes).
pub const MAX_NAME: usize = 128;

/// What happens to traffic no rule decides, or what a rule does.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through.
    #[default]
    Allow,
    /// Drop it.
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// An environment's network policy (or a stack's own rules).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Traffic between stack containers that no rule decides.
    #[serde(default)]
    pub default: Action,
    /// Traffic from outside the overlay to stack containers that no rule decides.
    #[serde(default)]
    pub ingress: Action,
    /// Traffic from stack containers to outside the overlay that no rule decides.
    #[serde(default)]
    pub egress: Action,
    /// Allow rules (their order does not matter).
    #[serde(default)]
    pub allow: Vec<Rule>,
    /// Deny rules: one that matches beats every allow rule.
    #[serde(default)]
    pub deny: Vec<Rule>,
}

/// Stack containers a rule names: every key given must match (none given: every stack
/// container of the environment).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// The stack's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// The service's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Labels the service carries (`labels:` in the Compose file), all of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    /// Whether it names no key, so matches every stack container.
    pub fn is_any(&self) -> bool {
        self.stack.is_none() && self.service.is_none() && self.labels.is_empty()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            return f.write_str("any stack container");
        }
        let mut parts = Vec::new();
        match (&self.stack, &self.service) {
            (Some(st), Some(sv)) => parts.push(format!("{st}/{sv}")),
            (Some(st), None) => parts.push(format!("stack {st}")),
            (None, Some(sv)) => parts.push(format!("service {sv}")),
            (None, None) => {}
        }
        for (k, v) in &self.labels {
            parts.push(format!("{k}={v}"));
        }
        f.write_str(&parts.join(" "))
    }
}

/// `within:` — traffic that stays inside one stack or one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Within {
    /// Between containers of the same stack.
    Stack,
    /// Between replicas of the same service.
    Service,
}

/// Which traffic a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// From stack containers to stack containers.
    Between {
        /// The sources.
        from: Selector,
        /// The destinations.
        to: Selector,
    },
    /// Between containers of one stack, or of one service.
    Within(Within),
    /// Between containers that carry the label with the same value (Rancher's
    /// `between: {groupBy: LABEL}`).
    GroupBy(String),
    /// From outside the overlay (a published port, a routed network) to stack containers.
    Ingress {
        /// Where the traffic comes from.
        from: Cidr,
        /// The destinations.
        to: Selector,
    },
    /// From stack containers to outside the overlay.
    Egress {
        /// The sources.
        from: Selector,
        /// Where it goes.
        to: Cidr,
    },
}

/// One allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawRule", into = "RawRule")]
pub struct Rule {
    /// A name people chose, shown where the rule decided something.
    pub name: Option<String>,
    /// Which traffic.
    pub scope: Scope,
    /// The ports it covers; empty: every port and every protocol (ICMP too).
    pub ports: Vec<PortRange>,
    /// Only traffic whose stack-container ends are all in this stack (what a stack's own
    /// `within`/`between` rules become; may be written in any rule).
    pub in_stack: Option<String>,
}

// A rule reads and writes as written, so that is its schema too.
impl utoipa::PartialSchema for Rule {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <RawRule as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for Rule {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <RawRule as utoipa::ToSchema>::schemas(schemas);
    }
}

/// A rule as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<RawPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<RawPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    within: Option<Within>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    between: Option<RawBetween>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    in_stack: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cidr: Option<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stack: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

impl RawPeer {
    fn selector(&self) -> Selector {
        Selector {
            stack: self.stack.clone(),
            service: self.service.clone(),
            labels: self.labels.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RawBetween {
    #[serde(rename = "groupBy", alias = "group_by")]
    group_by: String,
}

fn check_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > MAX_NAME {
        return Err(format!(
            "{what} is {} bytes; the limit is {MAX_NAME}",
            s.len()
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} holds a control character"));
    }
    Ok(())
}

fn check_selector(at: &str, s: &Selector) -> Result<(), String> {
    if let Some(st) = &s.stack {
        check_name(&format!("{at}.stack"), st)?;
    }
    if let Some(sv) = &s.service {
        check_name(&format!("{at}.service"), sv)?;
    }
    if s.labels.len() > MAX_LABELS {
        return Err(format!(
            "{at}.labels: {} labels; the limit is {MAX_LABELS}",
            s.labels.len()
        ));
    }
    for (k, v) in &s.labels {
        check_name(&format!("{at}.labels key"), k)?;
        if v.len() > MAX_NAME {
            return Err(format!(
                "{at}.labels.{k}: the value is longer than {MAX_NAME} bytes"
            ));
        }
    }
    Ok(())
}

impl TryFrom<RawRule> for Rule {
    type Error = String;

    fn try_from(raw: RawRule) -> Result<Rule, String> {
        if let Some(n) = &raw.name {
            check_name("name", n)?;
        }
        if let Some(s) = &raw.in_stack {
            check_name("in_stack", s)?;
        }
        if raw.ports.len() > MAX_PORTS {
            return Err(format!(
                "ports: {} entries; the limit is {MAX_PORTS}",
                raw.ports.len()
            ));
        }
        let shorthand = raw.within.is_some() || raw.between.is_some();
        if raw.within.is_some() && raw.between.is_some() {
            return Err("a rule has either `within` or `between`, not both".into());
        }
        if shorthand && (raw.from.is_some() || raw.to.is_some()) {
            return Err(
                "`within` and `between` name both ends of the traffic; a rule with them has no `from` or `to`"
                    .into(),
            );
        }
        let scope = if let Some(w) = raw.within {
            Scope::Within(w)
        } else if let Some(b) = raw.between {
            check_name("between.groupBy", &b.group_by)?;
            Scope::GroupBy(b.group_by)
        } else {
            let from = raw.from.unwrap_or_default();
            let to = raw.to.unwrap_or_default();
            for (at, p) in [("from", &from), ("to", &to)] {
                check_selector(at, &p.selector())?;
                if p.cidr.is_some() && !p.selector().is_any() {
                    return Err(format!(
                        "{at}: `cidr` names addresses outside the overlay; it cannot be combined with stack, service or labels"
                    ));
                }
            }
            match (from.cidr, to.cidr) {
                (Some(_), Some(_)) => {
                    return Err(
                        "`from` and `to` are both addresses outside the overlay: a policy governs traffic of stack containers only"
                            .into(),
                    );
                }
                (Some(cidr), None) => Scope::Ingress {
                    from: cidr,
                    to: to.selector(),
                },
                (None, Some(cidr)) => Scope::Egress {
                    from: from.selector(),
                    to: cidr,
                },
                (None, None) => Scope::Between {
                    from: from.selector(),
                    to: to.selector(),
                },
            }
        };
        Ok(Rule {
            name: raw.name,
            scope,
            ports: raw.ports,
            in_stack: raw.in_stack,
        })
    }
}

impl From<Rule> for RawRule {
    fn from(rule: Rule) -> RawRule {
        let mut raw = RawRule {
            name: rule.name,
            ports: rule.ports,
            in_stack: rule.in_stack,
            ..RawRule::default()
        };
        let peer = |s: Selector| RawPeer {
            cidr: None,
            stack: s.stack,
            service: s.service,
            labels: s.labels,
        };
        let net = |cidr: Cidr| RawPeer {
            cidr: Some(cidr),
            ..RawPeer::default()
        };
        match rule.scope {
            Scope::Between { from, to } => {
                raw.from = (!from.is_any()).then(|| peer(from));
                raw.to = (!to.is_any()).then(|| peer(to));
            }
            Scope::Within(w) => raw.within = Some(w),
            Scope::GroupBy(label) => raw.between = Some(RawBetween { group_by: label }),
            Scope::Ingress { from, to } => {
                raw.from = Some(net(from));
                raw.to = (!to.is_any()).then(|| peer(to));
            }
            Scope::Egress { from, to } => {
                raw.from = (!from.is_any()).then(|| peer(from));
                raw.to = Some(net(to));
            }
        }
        raw
    }
}

/// Which list a rule is in and where: `deny[0]`, `allow[3]`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub struct RuleId {
    /// Allow or deny.
    pub action: Action,
    /// Position in its list.
    pub index: usize,
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.action, self.index)
    }
}

impl Document {
    /// The rule a [`RuleId`] names.
    pub fn rule(&self, id: RuleId) -> Option<&Rule> {
        match id.action {
            Action::Allow => self.allow.get(id.index),
            Action::Deny => self.deny.get(id.index),
        }
    }

    /// `deny[0] "no-dmz-to-db"`, or `deny[0]` for a rule without a name.
    pub fn describe(&self, id: RuleId) -> String {
        match self.rule(id).and_then(|r| r.name.as_deref()) {
            Some(name) => format!("{id} {name:?}"),
            None => id.to_string(),
        }
    }

    /// Every rule with its id, denies first.
    pub fn rules(&self) -> impl Iterator<Item = (RuleId, &Rule)> {
        let deny = self.deny.iter().enumerate().map(|(index, rule)| {
            let id = RuleId {
                action: Action::Deny,
                index,
            };
            (id, rule)
        });
        let allow = self.allow.iter().enumerate().map(|(index, rule)| {
            let id = RuleId {
                action: Action::Allow,
                index,
            };
            (id, rule)
        });
        deny.chain(allow)
    }
}

/// Why a document was refused. The message names the line, column and key where the YAML
/// reader could tell them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError(pub String);

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DocumentError {}

/// Reads and checks a policy document (YAML or JSON). An empty document is the default
/// policy: everything allowed.
pub fn parse(text: &str) -> Result<Document, DocumentError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(DocumentError(format!(
            "the policy document is {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
            text.len()
        )));
    }
    if text.trim().is_empty() {
        return Ok(Document::default());
    }
    // serde-saphyr's default budget refuses alias bombs and deep nesting; the path of the key
    // where reading stopped (`allow[0].ports[1]`) is recorded alongside its line and column.
    let mut at = String::new();
    let read: Result<Document, serde_saphyr::Error> =
        serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                at = e.path().to_string();
                e.into_inner()
            })
        });
    let doc = read.map_err(|e| {
        let text = e.to_string();
        let text = text.strip_prefix("error: ").unwrap_or(&text);
        if at.is_empty() || at == "." {
            DocumentError(text.to_owned())
        } else {
            DocumentError(format!("{at}: {text}"))
        }
    })?;
    for (list, rules) in [("allow", &doc.allow), ("deny", &doc.deny)] {
        if rules.len() > MAX_RULES {
            return Err(DocumentError(format!(
                "{list}: {} rules; the limit is {MAX_RULES}",
                rules.len()
            )));
        }
    }
    Ok(doc)
}
