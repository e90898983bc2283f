//! The states the control plane records, as types. The datastore keeps their names
//! (`as_str`); a name this build does not know is an error when read, never a default.

use corral_proto::{ContainerState, Health};

/// A stored state name that this build cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownState {
    what: &'static str,
    value: String,
}

/// What should become of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Desired {
    /// Running (`corral run`, `container start`, every stack replica).
    Running,
    /// Stopped on purpose (`container stop`).
    Stopped,
    /// Being removed: it stays listed until its host confirms.
    Removed,
}

impl Desired {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
            Desired::Removed => "removed",
        }
    }

    /// Reads a stored name.
    pub fn parse(text: &str) -> Result<Desired, UnknownState> {
        match text {
            "running" => Ok(Desired::Running),
            "stopped" => Ok(Desired::Stopped),
            "removed" => Ok(Desired::Removed),
            other => Err(UnknownState {
                what: "desired state",
                value: other.to_owned(),
            }),
        }
    }
}

/// What the control plane knows of a container's actual state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Actual {
    /// Asked for; its host has not reported it yet.
    Pending,
    /// Was created, and vanished from its host behind corral's back.
    Missing,
    /// As its host's Docker last reported it.
    Docker(ContainerState),
}

impl Actual {
    /// The stored name (Docker's own name for Docker states).
    pub fn as_str(self) -> &'static str {
        match self {
            Actual::Pending => "pending",
            Actual::Missing => "missing",
            Actual::Docker(s) => s.as_str(),
        }
    }

    /// Reads a stored name.
    pub fn parse(text: &str) -> Result<Actual, UnknownState> {
        match text {
            "pending" => Ok(Actual::Pending),
            "missing" => Ok(Actual::Missing),
            other => match ContainerState::parse(other) {
                ContainerState::Unknown if other != "unknown" => Err(UnknownState {
                    what: "container state",
                    value: other.to_owned(),
                }),
                s => Ok(Actual::Docker(s)),
            },
        }
    }

    /// Docker reports it running.
    pub fn is_running(self) -> bool {
        self == Actual::Docker(ContainerState::Running)
    }
}

/// Reads a stored health name (`None` stays `None`).
pub fn parse_health(text: Option<&str>) -> Result<Option<Health>, UnknownState> {
    match text {
        None => Ok(None),
        Some(t) => Health::parse(t).map(Some).ok_or_else(|| UnknownState {
            what: "health status",
            value: t.to_owned(),
        }),
    }
}

/// Running, and healthy when it has a healthcheck: what counts as ready for `depends_on`,
/// start-first updates, the name table and `ps`.
pub fn is_ready(actual: Actual, health: Option<Health>) -> bool {
    actual.is_running() && matches!(health, None | Some(Health::Healthy))
}

/// Where a stack is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StackState {
    /// Deployed; the reconciler keeps it converged.
    Active,
    /// `corral down` was asked: its containers are being removed.
    Removing,
}

impl StackState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            StackState::Active => "active",
            StackState::Removing => "removing",
        }
    }

    /// Reads a stored name.
    pub fn parse(text: &str) -> Result<StackState, UnknownState> {
        match text {
            "active" => Ok(StackState::Active),
            "removing" => Ok(StackState::Removing),
            other => Err(UnknownState {
                what: "stack state",
                value: other.to_owned(),
            }),
        }
    }
}

/// Reading stored names with `TryFrom<String>` (as the datastore's row decoding does).
macro_rules! try_from_stored {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = UnknownState;
            fn try_from(text: String) -> Result<Self, UnknownState> {
                <$t>::parse(&text)
            }
        }
    };
}

try_from_stored!(Desired);
try_from_stored!(Actual);
try_from_stored!(StackState);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip_and_unknown_ones_are_errors() {
        for d in [Desired::Running, Desired::Stopped, Desired::Removed] {
            assert_eq!(Desired::parse(d.as_str()), Ok(d));
        }
        for a in [
            Actual::Pending,
            Actual::Missing,
            Actual::Docker(ContainerState::Running),
            Actual::Docker(ContainerState::Exited),
            Actual::Docker(ContainerState::Dead),
        ] {
            assert_eq!(Actual::parse(a.as_str()), Ok(a));
        }
        assert!(Actual::parse("frozen").is_err());
        assert!(Desired::parse("").is_err());
        assert!(StackState::parse("gone").is_err());
        assert_eq!(parse_health(Some("healthy")), Ok(Some(Health::Healthy)));
        assert!(parse_health(Some("fine")).is_err());
        assert!(is_ready(Actual::Docker(ContainerState::Running), None));
        assert!(!is_ready(
            Actual::Docker(ContainerState::Running),
            Some(Health::Starting)
        ));
    }
}
