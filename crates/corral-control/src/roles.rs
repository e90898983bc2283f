//! Roles a user holds in an environment (the store keeps them by name; the server's API checks
//! them; a directory maps groups to them).

/// A role in one environment, from most to least allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EnvRole {
    /// Everything in the environment, members and tokens included.
    Owner,
    /// Deploy, scale, run, logs, and host operations (doctor, firewall, images, removal).
    Member,
    /// A member without host or token changes.
    Restricted,
    /// Listings, logs, diagrams, firewall export.
    ReadOnly,
}

impl EnvRole {
    pub const ALL: [EnvRole; 4] = [
        EnvRole::Owner,
        EnvRole::Member,
        EnvRole::Restricted,
        EnvRole::ReadOnly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EnvRole::Owner => "owner",
            EnvRole::Member => "member",
            EnvRole::Restricted => "restricted",
            EnvRole::ReadOnly => "read-only",
        }
    }

    pub fn parse(text: &str) -> Option<EnvRole> {
        EnvRole::ALL.into_iter().find(|r| r.as_str() == text)
    }
}
