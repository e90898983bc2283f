//! A stack's own rules (`x-corral: policy:` in its Compose file), and how they join the
//! environment's document.
//!
//! - In a stack's rules, a selector that names no stack means **this** stack.
//! - An allow rule may only open traffic between the stack's own services: naming another
//!   stack or an address outside the overlay is refused (that is the environment's call).
//! - A deny rule may close anything that touches the stack: its services' traffic to other
//!   stacks' services (`to: {stack: other}`) or to and from outside addresses.
//! - A stack has no defaults of its own (`default`, `ingress`, `egress` are the
//!   environment's).
//!
//! The environment's rules and every stack's rules apply together: a deny rule from either
//! beats every allow rule from either. So a stack can tighten what the environment allows,
//! and open traffic among its own services that the environment's default denies, but never
//! open anything towards another stack or outside.

use serde::{Deserialize, Serialize};

use crate::document::{Action, Document, MAX_RULES, Rule, Scope, Selector};

/// A stack's own rules, as written under `x-corral: policy:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StackRules {
    /// Allow rules (between this stack's services only).
    #[serde(default)]
    pub allow: Vec<Rule>,
    /// Deny rules (touching this stack's services).
    #[serde(default)]
    pub deny: Vec<Rule>,
}

fn own(stack: &str, s: &Selector) -> Result<Selector, String> {
    match &s.stack {
        Some(other) if other != stack => Err(format!(
            "names stack {other:?}; an allow rule of stack {stack:?} may only open traffic between its own services"
        )),
        _ => Ok(Selector {
            stack: Some(stack.to_owned()),
            ..s.clone()
        }),
    }
}

fn here(stack: &str, s: &Selector) -> Selector {
    Selector {
        stack: Some(s.stack.clone().unwrap_or_else(|| stack.to_owned())),
        ..s.clone()
    }
}

impl StackRules {
    /// The rules confined to `stack`, named after it (`stack shop: allow[0] "web-to-db"`),
    /// or why they cannot be.
    pub fn scoped(&self, stack: &str) -> Result<StackRules, String> {
        for (list, rules) in [("allow", &self.allow), ("deny", &self.deny)] {
            if rules.len() > MAX_RULES {
                return Err(format!(
                    "{list}: {} rules; the limit is {MAX_RULES}",
                    rules.len()
                ));
            }
        }
        let name = |action: Action, i: usize, rule: &Rule| {
            let own = rule
                .name
                .as_deref()
                .map(|n| format!(" {n:?}"))
                .unwrap_or_default();
            Some(format!("stack {stack}: {action}[{i}]{own}"))
        };
        let mut allow = Vec::with_capacity(self.allow.len());
        for (i, rule) in self.allow.iter().enumerate() {
            let at = |e: String| format!("allow[{i}]: {e}");
            if rule.in_stack.as_deref().is_some_and(|s| s != stack) {
                return Err(at(format!(
                    "`in_stack` names another stack; an allow rule of stack {stack:?} may only open traffic between its own services"
                )));
            }
            let scope = match &rule.scope {
                Scope::Between { from, to } => Scope::Between {
                    from: own(stack, from).map_err(at)?,
                    to: own(stack, to).map_err(at)?,
                },
                Scope::Within(w) => Scope::Within(*w),
                Scope::GroupBy(label) => Scope::GroupBy(label.clone()),
                Scope::Ingress { .. } | Scope::Egress { .. } => {
                    return Err(at(
                        "a stack may not allow traffic from or to outside the overlay; the environment's policy decides that (`corral policy apply`)".into(),
                    ));
                }
            };
            allow.push(confined(
                &Rule {
                    name: name(Action::Allow, i, rule),
                    scope,
                    ports: rule.ports.clone(),
                    in_stack: rule.in_stack.clone(),
                },
                stack,
            ));
        }
        let mut deny = Vec::with_capacity(self.deny.len());
        for (i, rule) in self.deny.iter().enumerate() {
            let scope = match &rule.scope {
                Scope::Between { from, to } => Scope::Between {
                    from: here(stack, from),
                    to: here(stack, to),
                },
                Scope::Within(w) => Scope::Within(*w),
                Scope::GroupBy(label) => Scope::GroupBy(label.clone()),
                Scope::Ingress { from, to } => Scope::Ingress {
                    from: *from,
                    to: here(stack, to),
                },
                Scope::Egress { from, to } => Scope::Egress {
                    from: here(stack, from),
                    to: *to,
                },
            };
            deny.push(confined(
                &Rule {
                    name: name(Action::Deny, i, rule),
                    scope,
                    ports: rule.ports.clone(),
                    in_stack: rule.in_stack.clone(),
                },
                stack,
            ));
        }
        Ok(StackRules { allow, deny })
    }
}

/// A stack's copy of a `within`/`between` rule: those shorthands match pairs in any stack, so
/// it is confined to pairs whose both ends are in the stack.
fn confined(rule: &Rule, stack: &str) -> Rule {
    match &rule.scope {
        Scope::Within(_) | Scope::GroupBy(_) => Rule {
            in_stack: Some(stack.to_owned()),
            ..rule.clone()
        },
        _ => rule.clone(),
    }
}

/// The document every host enforces: the environment's, with each stack's scoped rules
/// added. `stacks` holds each stack's name and its rules as [`StackRules::scoped`] made them.
pub fn combine(env: &Document, stacks: &[(String, StackRules)]) -> Document {
    let mut doc = env.clone();
    for (stack, rules) in stacks {
        doc.allow
            .extend(rules.allow.iter().map(|r| confined(r, stack)));
        doc.deny
            .extend(rules.deny.iter().map(|r| confined(r, stack)));
    }
    doc
}
