//! The wire protocol between a corral server and its agents.
//!
//! One WebSocket per agent, always opened by the agent. Every WebSocket text frame carries one
//! JSON message in a single envelope ([`AgentMessage`] agent→server, [`ServerMessage`]
//! server→agent). The first message is the agent's [`Hello`]; the server answers [`Welcome`] or
//! closes with a [`CloseReason`].
//!
//! This crate is deliberately free of I/O: it knows nothing of sockets, tokio or clocks.
//!
//! - [`message`]: the message types (hello/welcome, heartbeats, goodbye).
//! - [`command`]: commands and their replies, one payload type and one reply type per kind.
//! - [`codec`]: turning messages into frames and back, with the size limit enforced both ways.
//! - [`close`]: why a connection ends, as a stable WebSocket close code and text.
//! - [`liveness`]: the heartbeat state machine: fed with "a frame arrived" and the current
//!   time, it says when to send a ping and when the link is dead.
//! - [`backoff`]: reconnect delays, exponential with full jitter (randomness passed in).
//! - [`api`]: the JSON bodies of the HTTP API, shared by server and CLI.
//! - [`files`]: project files, configs and secrets shipped with a stack to its containers.
//! - [`image`]: image references, pull policies, registry credentials and the `image_*`
//!   commands.
//! - [`secret`]: the textual form of tokens, credentials and API keys.

#![deny(missing_docs)]

pub mod api;
pub mod backoff;
pub mod close;
pub mod codec;
pub mod command;
pub mod files;
pub mod image;
pub mod liveness;
pub mod message;
pub mod secret;

pub use close::CloseReason;
pub use codec::{CodecError, decode, encode};
pub use command::*;
pub use files::{FileContent, FileEntry, FileKind, FileMount};
pub use image::*;
pub use message::*;

/// The protocol version this build speaks. A server accepts an agent whose [`Hello`] lists it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default maximum size of one message, in bytes, enforced by both ends.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;
