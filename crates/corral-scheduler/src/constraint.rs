//! Placement constraints as Compose writes them in `deploy.placement.constraints`.
//!
//! Supported: `node.hostname`, `node.id` and `node.labels.KEY`, each with `==` or `!=`.
//! Matching follows Docker Swarm: values compare case-insensitively, and `!=` matches a host
//! that lacks the label altogether.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Host;

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConstraintField {
    /// `node.hostname`: the host's name.
    Hostname,
    /// `node.id`: the host's id.
    Id,
    /// `node.labels.KEY`: the value of one label (keys compare exactly).
    Label(String),
}

/// `==` or `!=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConstraintOp {
    Eq,
    Ne,
}

/// One hard placement rule, e.g. `node.labels.zone == eu`.
///
/// Serialised as its text form (`"node.labels.zone == eu"`) and parsed back with
/// [`Constraint::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Constraint {
    pub field: ConstraintField,
    pub op: ConstraintOp,
    pub value: String,
}

/// Why a constraint string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error(
        "constraint `{0}` has no operator; expected `==` or `!=`, as in `node.labels.zone == eu`"
    )]
    NoOperator(String),
    #[error("constraint `{0}` has no value after the operator")]
    NoValue(String),
    #[error("constraint `{0}` has more than one operator")]
    TwoOperators(String),
    #[error("constraint `{0}` names an empty label; write node.labels.KEY")]
    EmptyLabel(String),
    #[error("unsupported constraint field {0}; supported: node.hostname, node.id, node.labels.KEY")]
    UnsupportedField(String),
}

impl Constraint {
    /// Parses `FIELD == VALUE` or `FIELD != VALUE` (spaces optional).
    pub fn parse(text: &str) -> Result<Constraint, ConstraintError> {
        let s = text.trim();
        let eq = s.find("==");
        let ne = s.find("!=");
        let (at, op) = match (eq, ne) {
            (None, None) => return Err(ConstraintError::NoOperator(s.to_owned())),
            (Some(e), None) => (e, ConstraintOp::Eq),
            (None, Some(n)) => (n, ConstraintOp::Ne),
            (Some(_), Some(_)) => return Err(ConstraintError::TwoOperators(s.to_owned())),
        };
        let field = s[..at].trim();
        let value = s[at + 2..].trim();
        if value.contains("==") || value.contains("!=") {
            return Err(ConstraintError::TwoOperators(s.to_owned()));
        }
        if value.is_empty() {
            return Err(ConstraintError::NoValue(s.to_owned()));
        }
        let field = match field {
            "node.hostname" => ConstraintField::Hostname,
            "node.id" => ConstraintField::Id,
            other => match other.strip_prefix("node.labels.") {
                Some("") => return Err(ConstraintError::EmptyLabel(s.to_owned())),
                Some(key) => ConstraintField::Label(key.to_owned()),
                None if other == "node.labels" => {
                    return Err(ConstraintError::EmptyLabel(s.to_owned()));
                }
                None if other.is_empty() => {
                    return Err(ConstraintError::UnsupportedField("(nothing)".to_owned()));
                }
                None => return Err(ConstraintError::UnsupportedField(other.to_owned())),
            },
        };
        Ok(Constraint {
            field,
            op,
            value: value.to_owned(),
        })
    }

    /// `node.labels.KEY == VALUE`.
    pub fn label_eq(key: &str, value: &str) -> Constraint {
        Constraint::new(
            ConstraintField::Label(key.to_owned()),
            ConstraintOp::Eq,
            value,
        )
    }

    /// `node.labels.KEY != VALUE`.
    pub fn label_ne(key: &str, value: &str) -> Constraint {
        Constraint::new(
            ConstraintField::Label(key.to_owned()),
            ConstraintOp::Ne,
            value,
        )
    }

    /// `node.hostname == NAME`.
    pub fn hostname_eq(name: &str) -> Constraint {
        Constraint::new(ConstraintField::Hostname, ConstraintOp::Eq, name)
    }

    /// `node.hostname != NAME`.
    pub fn hostname_ne(name: &str) -> Constraint {
        Constraint::new(ConstraintField::Hostname, ConstraintOp::Ne, name)
    }

    /// `node.id == ID`.
    pub fn id_eq(id: &str) -> Constraint {
        Constraint::new(ConstraintField::Id, ConstraintOp::Eq, id)
    }

    /// `node.id != ID`.
    pub fn id_ne(id: &str) -> Constraint {
        Constraint::new(ConstraintField::Id, ConstraintOp::Ne, id)
    }

    fn new(field: ConstraintField, op: ConstraintOp, value: &str) -> Constraint {
        Constraint {
            field,
            op,
            value: value.to_owned(),
        }
    }

    /// The host's value for this constraint's field (`None`: the host lacks the label).
    pub(crate) fn subject<'h>(&self, host: &'h Host) -> Option<&'h str> {
        match &self.field {
            ConstraintField::Hostname => Some(&host.name),
            ConstraintField::Id => Some(&host.id),
            ConstraintField::Label(key) => host.labels.get(key).map(String::as_str),
        }
    }

    /// Whether `host` satisfies this constraint (Swarm semantics: case-insensitive values,
    /// `!=` matches a missing label).
    pub fn matches(&self, host: &Host) -> bool {
        let equal = self
            .subject(host)
            .is_some_and(|v| v.to_lowercase() == self.value.to_lowercase());
        match self.op {
            ConstraintOp::Eq => equal,
            ConstraintOp::Ne => !equal,
        }
    }
}

impl fmt::Display for ConstraintField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstraintField::Hostname => f.write_str("node.hostname"),
            ConstraintField::Id => f.write_str("node.id"),
            ConstraintField::Label(key) => write!(f, "node.labels.{key}"),
        }
    }
}

impl fmt::Display for ConstraintOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConstraintOp::Eq => "==",
            ConstraintOp::Ne => "!=",
        })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.field, self.op, self.value)
    }
}

impl std::str::FromStr for Constraint {
    type Err = ConstraintError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Constraint::parse(s)
    }
}

impl TryFrom<String> for Constraint {
    type Error = ConstraintError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Constraint::parse(&s)
    }
}

impl From<Constraint> for String {
    fn from(c: Constraint) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_form() {
        let c = Constraint::parse("node.hostname == h1").unwrap();
        assert_eq!(c, Constraint::hostname_eq("h1"));
        assert_eq!(
            Constraint::parse("node.hostname!=h1").unwrap(),
            Constraint::hostname_ne("h1")
        );
        assert_eq!(
            Constraint::parse("  node.labels.zone == eu ").unwrap(),
            Constraint::label_eq("zone", "eu")
        );
        assert_eq!(
            Constraint::parse("node.labels.zone!= eu").unwrap(),
            Constraint::label_ne("zone", "eu")
        );
        assert_eq!(
            Constraint::parse("node.id == abc123").unwrap(),
            Constraint::id_eq("abc123")
        );
        assert_eq!(
            Constraint::parse("node.labels.a.b == c").unwrap(),
            Constraint::label_eq("a.b", "c")
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "node.hostname == h1",
            "node.id != x",
            "node.labels.zone == eu",
            "node.labels.disk != hdd",
        ] {
            let c = Constraint::parse(s).unwrap();
            assert_eq!(c.to_string(), s);
            assert_eq!(Constraint::parse(&c.to_string()).unwrap(), c);
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = Constraint::parse("node.role == manager").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported constraint field node.role; supported: node.hostname, node.id, node.labels.KEY"
        );
        let e = Constraint::parse("node.labels.zone = eu").unwrap_err();
        assert!(matches!(e, ConstraintError::NoOperator(_)), "{e}");
        assert!(e.to_string().contains("expected `==` or `!=`"));
        assert!(matches!(
            Constraint::parse("node.labels.zone ==").unwrap_err(),
            ConstraintError::NoValue(_)
        ));
        assert!(matches!(
            Constraint::parse("node.labels. == x").unwrap_err(),
            ConstraintError::EmptyLabel(_)
        ));
        assert!(matches!(
            Constraint::parse("node.labels == x").unwrap_err(),
            ConstraintError::EmptyLabel(_)
        ));
        assert!(matches!(
            Constraint::parse("node.hostname == a != b").unwrap_err(),
            ConstraintError::TwoOperators(_)
        ));
        assert!(matches!(
            Constraint::parse("== x").unwrap_err(),
            ConstraintError::UnsupportedField(_)
        ));
        assert!(matches!(
            Constraint::parse("engine.labels.os == linux").unwrap_err(),
            ConstraintError::UnsupportedField(_)
        ));
    }

    #[test]
    fn serde_uses_the_text_form() {
        let c = Constraint::label_eq("zone", "eu");
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, "\"node.labels.zone == eu\"");
        let back: Constraint = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        let bad: Result<Constraint, _> = serde_json::from_str("\"node.role == manager\"");
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("unsupported constraint field")
        );
    }

    #[test]
    fn matching_follows_swarm() {
        let host = crate::testing::host("Web1").label("zone", "EU");
        assert!(Constraint::label_eq("zone", "eu").matches(&host));
        assert!(!Constraint::label_ne("zone", "eu").matches(&host));
        // `!=` matches a host without the label; `==` does not.
        assert!(Constraint::label_ne("disk", "ssd").matches(&host));
        assert!(!Constraint::label_eq("disk", "ssd").matches(&host));
        assert!(Constraint::hostname_eq("web1").matches(&host));
        assert!(Constraint::id_eq("Web1").matches(&host));
        assert!(Constraint::id_ne("other").matches(&host));
        // Label keys compare exactly.
        assert!(!Constraint::label_eq("Zone", "eu").matches(&host));
    }
}
