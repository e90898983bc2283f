//! Why a connection ends. Each reason has a stable WebSocket close code in the private range
//! 4000–4999, so even a client that never parsed the [`crate::ServerMessage::Goodbye`] learns
//! what happened.

use serde::{Deserialize, Serialize};

/// Why the server ends an agent's connection (or refuses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// No protocol version in common.
    BadVersion,
    /// The credential is unknown.
    BadCredential,
    /// The registration token is unknown, expired, used up or revoked.
    BadToken,
    /// The host was removed by an operator; its credential is revoked for good.
    HostRemoved,
    /// A message exceeded the maximum size.
    TooLarge,
    /// A frame that is not a valid message, or a message out of order.
    Malformed,
    /// Another connection presented the same credential; the newer one wins.
    Superseded,
    /// Nothing was received for too long.
    HeartbeatTimeout,
    /// The requested host name is taken in this environment.
    NameTaken,
    /// The environment's overlay range has no subnet left for a new host. Not permanent: the
    /// agent keeps trying, and joins once an operator grows the range or removes a host.
    OverlayFull,
    /// The server is shutting down; reconnect later.
    ServerShutdown,
    /// The server failed internally; reconnect later.
    ServerError,
}

impl CloseReason {
    /// Every reason.
    pub const ALL: [CloseReason; 12] = [
        CloseReason::BadVersion,
        CloseReason::BadCredential,
        CloseReason::BadToken,
        CloseReason::HostRemoved,
        CloseReason::TooLarge,
        CloseReason::Malformed,
        CloseReason::Superseded,
        CloseReason::HeartbeatTimeout,
        CloseReason::NameTaken,
        CloseReason::OverlayFull,
        CloseReason::ServerShutdown,
        CloseReason::ServerError,
    ];

    /// The WebSocket close code. `TooLarge` uses the standard 1009.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::BadVersion => 4001,
            CloseReason::BadCredential => 4002,
            CloseReason::BadToken => 4003,
            CloseReason::HostRemoved => 4004,
            CloseReason::TooLarge => 1009,
            CloseReason::Malformed => 4006,
            CloseReason::Superseded => 4007,
            CloseReason::HeartbeatTimeout => 4008,
            CloseReason::NameTaken => 4009,
            CloseReason::OverlayFull => 4010,
            CloseReason::ServerShutdown => 1001,
            CloseReason::ServerError => 1011,
        }
    }

    /// The reason a close code stands for, if it is one of [`CloseReason::code`]'s.
    pub fn from_code(code: u16) -> Option<CloseReason> {
        CloseReason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Short text for the close frame (at most 123 bytes by the WebSocket spec).
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::BadVersion => "bad version",
            CloseReason::BadCredential => "bad credential",
            CloseReason::BadToken => "bad token",
            CloseReason::HostRemoved => "host removed",
            CloseReason::TooLarge => "too large",
            CloseReason::Malformed => "malformed",
            CloseReason::Superseded => "superseded",
            CloseReason::HeartbeatTimeout => "heartbeat timeout",
            CloseReason::NameTaken => "name taken",
            CloseReason::OverlayFull => "overlay full",
            CloseReason::ServerShutdown => "server shutdown",
            CloseReason::ServerError => "server error",
        }
    }

    /// Whether an agent should keep reconnecting after this reason. Permanent reasons need an
    /// operator; retrying would only hammer the server.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            CloseReason::BadVersion
                | CloseReason::BadCredential
                | CloseReason::BadToken
                | CloseReason::HostRemoved
                | CloseReason::Superseded
                | CloseReason::NameTaken
        )
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        for r in CloseReason::ALL {
            assert_eq!(CloseReason::from_code(r.code()), Some(r));
            assert!(r.as_str().len() <= 123);
        }
        let mut codes: Vec<u16> = CloseReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), CloseReason::ALL.len());
    }
}
