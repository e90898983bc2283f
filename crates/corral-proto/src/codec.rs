//! Messages ⇄ frames. A frame is the payload of one WebSocket text message: UTF-8 JSON.
//! Both directions enforce the size limit, so neither end can be made to buffer more than it
//! agreed to.

use serde::{Serialize, de::DeserializeOwned};

/// Why a message could not be turned into a frame, or a frame into a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Over the size limit (a frame is refused before it is parsed).
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The message's or frame's size, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// Not JSON of the expected message type (or a message that does not serialize); the
    /// text is serde_json's explanation.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes a message, refusing to produce a frame larger than `limit`.
pub fn encode<T: Serialize>(msg: &T, limit: usize) -> Result<String, CodecError> {
    let text = serde_json::to_string(msg).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if text.len() > limit {
        return Err(CodecError::TooLarge {
            size: text.len(),
            limit,
        });
    }
    Ok(text)
}

/// Decodes a frame, refusing frames larger than `limit` before parsing them.
pub fn decode<T: DeserializeOwned>(frame: &[u8], limit: usize) -> Result<T, CodecError> {
    if frame.len() > limit {
        return Err(CodecError::TooLarge {
            size: frame.len(),
            limit,
        });
    }
    serde_json::from_slice(frame).map_err(|e| CodecError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use proptest::prelude::*;

    fn hello() -> AgentMessage {
        AgentMessage::hello(Hello {
            protocol_versions: vec![PROTOCOL_VERSION],
            agent_version: "0.1.0".into(),
            auth: Auth::Credential {
                credential: "crl_host_x".into(),
            },
            facts: HostFacts {
                name: "h1".into(),
                ..Default::default()
            },
            overlay_deltas: true,
            network_policy: true,
        })
    }

    #[test]
    fn round_trip() {
        let text = encode(&hello(), DEFAULT_MAX_MESSAGE_BYTES).unwrap();
        let back: AgentMessage = decode(text.as_bytes(), DEFAULT_MAX_MESSAGE_BYTES).unwrap();
        assert_eq!(back, hello());
    }

    #[test]
    fn wire_shape_is_stable() {
        let text = encode(&AgentMessage::Ping { seq: 7 }, 100).unwrap();
        assert_eq!(text, r#"{"type":"ping","seq":7}"#);
        let bye = ServerMessage::Goodbye {
            reason: CloseReason::HostRemoved,
            message: "gone".into(),
        };
        assert_eq!(
            encode(&bye, 100).unwrap(),
            r#"{"type":"goodbye","reason":"host_removed","message":"gone"}"#
        );
    }

    #[test]
    fn limits_both_ways() {
        assert!(matches!(
            encode(&hello(), 10),
            Err(CodecError::TooLarge { limit: 10, .. })
        ));
        let big = vec![b' '; 2000];
        assert!(matches!(
            decode::<AgentMessage>(&big, 1000),
            Err(CodecError::TooLarge { size: 2000, .. })
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            &b"not json"[..],
            b"{}",
            br#"{"type":"nope"}"#,
            br#"{"type":"ping"}"#,
            b"\xff\xfe",
        ] {
            assert!(matches!(
                decode::<AgentMessage>(bad, 1000),
                Err(CodecError::Malformed(_))
            ));
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<AgentMessage>(&bytes, 256);
            let _ = decode::<ServerMessage>(&bytes, 256);
        }

        #[test]
        fn ping_round_trips(seq in any::<u64>()) {
            let text = encode(&AgentMessage::Ping { seq }, 100).unwrap();
            prop_assert_eq!(decode::<AgentMessage>(text.as_bytes(), 100).unwrap(), AgentMessage::Ping { seq });
        }
    }
}
