//! Message types. Field names are part of the wire format: renaming one is a protocol change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::close::CloseReason;
use crate::command::{Command, CommandResult};
use crate::files::{FileContent, FileMount};
use crate::image::{DeviceSpec, NetworkMode, PullPolicy, PullProgress, RegistryAuth};

/// Everything an agent sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First message on every connection.
    Hello(Box<Hello>),
    /// Heartbeat; the server answers with [`ServerMessage::Pong`] carrying the same `seq`.
    Ping {
        /// This ping's number on the connection; the pong repeats it.
        seq: u64,
    },
    /// Answer to a server [`ServerMessage::Ping`].
    Pong {
        /// The `seq` of the ping it answers.
        seq: u64,
    },
    /// The outcome of a [`ServerMessage::Command`]. Accepted only from the host the command
    /// was addressed to, and only once.
    Reply {
        /// The [`Command::id`] it answers.
        command_id: String,
        /// Done with a reply, or failed and why.
        result: CommandResult,
    },
    /// What the agent sees on its host: the full inventory on every connect (and when Docker
    /// comes back), then one change at a time from Docker's event stream.
    Report(Report),
    /// Bytes of a stream the server opened (container logs), never more than the credit the
    /// server has granted for it.
    StreamData {
        /// The stream, as named by the command that opened it.
        stream_id: String,
        /// UTF-8 text (Docker log lines, invalid bytes replaced).
        data: String,
    },
    /// The stream ended (the container stopped, or the tail was sent without `follow`).
    StreamEnd {
        /// The stream, as named by the command that opened it.
        stream_id: String,
        /// Why it ended early (Docker's error); absent when it simply ended.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// What an agent reports about its host's containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    /// Everything corral manages on the host: sent on every connect, and whenever Docker
    /// becomes available or unavailable.
    Inventory {
        /// `None` while Docker is unavailable; `docker_error` then says why.
        docker: Option<DockerInfo>,
        /// Why Docker is unavailable.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        docker_error: Option<String>,
        /// Every container labelled `io.corral.managed=true`, in any state (none while Docker
        /// is unavailable).
        containers: Vec<ContainerStatus>,
    },
    /// One container changed (created, started, died, removed…).
    Change {
        /// The container as it is now.
        container: ContainerStatus,
    },
    /// A container was removed from Docker.
    Removed {
        /// Its corral id.
        corral_id: String,
    },
    /// How an image pull is going.
    Pull(PullProgress),
    /// Lines of a build's output, as the build goes (at most 64 lines of at most 1 KiB each
    /// per report).
    BuildLog {
        /// The build (`bld-…`).
        build_id: String,
        /// The new lines.
        lines: Vec<String>,
    },
    /// The host's encrypted overlay since the agent started: sent when it changed, at most
    /// once per heartbeat interval, only to a server whose welcome said `overlay_stats`.
    Overlay(OverlayStats),
}

/// What a host's encrypted overlay has carried and refused since its agent started. Every
/// figure but `peers` and `sessions` only grows (a peer's own counters restart with each
/// session; the agent adds them up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayStats {
    /// Peers configured.
    pub peers: u32,
    /// Peers with an established session now.
    pub sessions: u32,
    /// Inner bytes sent to peers.
    pub tx_bytes: u64,
    /// Inner bytes received from peers.
    pub rx_bytes: u64,
    /// Handshakes completed (either side initiating).
    pub handshakes: u64,
    /// Datagrams refused: failed authentication or replay checks.
    pub rejected: u64,
    /// Datagrams refused: well-formed, for no configured peer.
    pub unknown_peer: u64,
    /// Datagrams refused: not WireGuard messages at all.
    pub garbage: u64,
    /// Decrypted packets refused: their inner source is not the sending peer's.
    pub spoofed: u64,
}

/// The Docker engine on a host, as its agent reads it (empty or 0 where Docker does not say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DockerInfo {
    /// The engine's version.
    pub version: String,
    /// The engine's API version.
    pub api_version: String,
    /// The engine's storage driver.
    pub storage_driver: String,
    /// CPUs the engine sees.
    pub cpus: u32,
    /// Memory the engine sees, in bytes.
    pub memory_bytes: u64,
}

/// A corral container as Docker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// corral's id for it (`ctr-…`), read from its `io.corral.container-id` label.
    pub corral_id: String,
    /// Docker's id for it.
    pub docker_id: String,
    /// Docker's name for it (without the leading `/`).
    pub name: String,
    /// Docker's state.
    pub state: ContainerState,
    /// Its main process's exit code, as Docker reports it.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Docker's health status when the container has a healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// How many times Docker restarted it under its restart policy.
    #[serde(default)]
    pub restart_count: i64,
    /// Its address on the host's overlay network, when attached to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// A container's state as Docker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Its main process runs.
    Running,
    /// Frozen (`docker pause`).
    Paused,
    /// Being restarted by Docker's restart policy.
    Restarting,
    /// Being removed.
    Removing,
    /// Its main process ended.
    Exited,
    /// Docker failed to remove or stop it.
    Dead,
    /// A state this build does not know (from a newer Docker).
    #[serde(other)]
    Unknown,
}

impl ContainerState {
    /// Docker's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Restarting => "restarting",
            ContainerState::Removing => "removing",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
            ContainerState::Unknown => "unknown",
        }
    }

    /// Reads Docker's name of a state (`Unknown` for anything else).
    pub fn parse(text: &str) -> ContainerState {
        serde_json::from_value(serde_json::Value::String(text.to_owned()))
            .unwrap_or(ContainerState::Unknown)
    }

    /// Running, paused or restarting: a process exists (or is about to).
    pub fn is_up(self) -> bool {
        matches!(
            self,
            ContainerState::Running | ContainerState::Paused | ContainerState::Restarting
        )
    }
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container's health as Docker reports it, when it has a healthcheck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Within the start period, or not yet checked.
    Starting,
    /// The last checks passed.
    Healthy,
    /// The checks failed `retries` times in a row.
    Unhealthy,
    /// A status this build does not know.
    #[serde(other)]
    Unknown,
}

impl Health {
    /// Docker's name for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        }
    }

    /// Reads Docker's name of a health status; `None` for "none" or anything unknown.
    pub fn parse(text: &str) -> Option<Health> {
        match text {
            "starting" => Some(Health::Starting),
            "healthy" => Some(Health::Healthy),
            "unhealthy" => Some(Health::Unhealthy),
            _ => None,
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AgentMessage {
    /// An [`AgentMessage::Hello`] (the variant boxes it).
    pub fn hello(hello: Hello) -> Self {
        AgentMessage::Hello(Box::new(hello))
    }
}

/// Everything a server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The hello was accepted.
    Welcome(Welcome),
    /// Heartbeat; the agent answers with [`AgentMessage::Pong`] carrying the same `seq`.
    Ping {
        /// This ping's number on the connection; the pong repeats it.
        seq: u64,
    },
    /// Answer to an agent's [`AgentMessage::Ping`].
    Pong {
        /// The `seq` of the ping it answers.
        seq: u64,
    },
    /// Work for the agent. Commands are idempotent: one may be delivered again after a
    /// reconnect, and carrying it out twice has the effect of carrying it out once.
    Command(Command),
    /// More bytes may be sent on a stream: credit-based flow control, so a slow reader never
    /// grows memory on the agent or the server.
    StreamCredit {
        /// The stream, as named by the command that opened it.
        stream_id: String,
        /// How many more bytes of data the agent may send on it.
        bytes: u64,
    },
    /// The reader went away: stop sending.
    StreamCancel {
        /// The stream, as named by the command that opened it.
        stream_id: String,
    },
    /// The overlay as this host should run it: sent after the welcome and whenever it
    /// changes (a host joins, moves, leaves; the pre-shared key rotates).
    Overlay(Box<OverlayConfig>),
    /// What changed in the overlay since the configuration (or delta) of version `from` that
    /// this connection received: sent only to agents that said `overlay_deltas` in their hello,
    /// so one host joining an environment of N costs N small messages, not N full peer lists.
    OverlayDelta(Box<OverlayDelta>),
    /// The environment's service names (for the agent's DNS responder): sent after the
    /// welcome and whenever a replica starts, stops or changes health.
    Names(NameTable),
    /// The environment's network policy: sent after the welcome and whenever a new generation
    /// is applied, only to agents that said `network_policy` in their hello. The agent
    /// enforces it with the name table (which address is which service).
    NetworkPolicy(NetworkPolicy),
    /// Sent right before the server closes the connection, with the full explanation; the
    /// WebSocket close frame repeats the reason as a code (see [`CloseReason::code`]).
    Goodbye {
        /// Why, as a stable reason ([`CloseReason::is_permanent`]: whether to reconnect).
        reason: CloseReason,
        /// What happened and what to do, for people.
        message: String,
    },
}

/// Payload of [`CommandBody::FirewallApply`](crate::CommandBody::FirewallApply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallApply {
    /// An nftables script that touches only `table inet corral`.
    pub ruleset: String,
    /// Only check the ruleset (`nft -c`); change nothing.
    pub dry_run: bool,
    /// Roll back unless a new connection to the server succeeds within this many seconds.
    pub confirm_within_secs: u64,
}

/// Payload of [`CommandBody::OverlayExpect`](crate::CommandBody::OverlayExpect) and [`CommandBody::OverlaySend`](crate::CommandBody::OverlaySend): a
/// server-coordinated reachability probe of the overlay port between two hosts. The nonce is
/// 128 random bits, so only the datagrams the server asked for count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayProbe {
    /// 32 hex digits.
    pub nonce: String,
    /// For `overlay_send`: where to send (`ip:port`).
    #[serde(default)]
    pub peer: String,
    /// How long to wait (expect) or to keep sending (send), in milliseconds.
    pub window_ms: u64,
}

/// Labels corral puts on every container it creates.
pub mod labels {
    /// `true` on every container, network and volume corral creates.
    pub const MANAGED: &str = "io.corral.managed";
    /// The container's corral id (`ctr-…`).
    pub const CONTAINER_ID: &str = "io.corral.container-id";
    /// The name of the container's environment.
    pub const ENVIRONMENT: &str = "io.corral.environment";
    /// The stack a container, network or volume belongs to (absent outside stacks).
    pub const STACK: &str = "io.corral.stack";
    /// The service a stack container is a replica of.
    pub const SERVICE: &str = "io.corral.service";
    /// The replica's slot (1-based) within its service.
    pub const SLOT: &str = "io.corral.slot";
}

/// Payload of [`CommandBody::ImageCheck`](crate::CommandBody::ImageCheck).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCheck {
    /// Image references, as the services name them.
    pub images: Vec<String>,
}

/// Payload of [`CommandBody::StackCleanup`](crate::CommandBody::StackCleanup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackCleanup {
    /// The stack's name: only networks and volumes corral created for it are removed.
    pub stack: String,
    /// The stack's network, removed if no container uses it any more.
    pub network: String,
    /// Named volumes (Docker names) to remove; empty unless `down --volumes`.
    #[serde(default)]
    pub volumes: Vec<String>,
}

/// A mount of a stack container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MountSpec {
    /// A named volume (Docker name; created with the stack's labels when absent).
    Volume {
        /// The volume's Docker name (a stack's: `STACK_VOLUME`).
        source: String,
        /// Where it appears in the container.
        target: String,
        /// Mounted read-only.
        #[serde(default)]
        read_only: bool,
    },
    /// A host path.
    Bind {
        /// The path on the host (absolute).
        source: String,
        /// Where it appears in the container.
        target: String,
        /// Mounted read-only.
        #[serde(default)]
        read_only: bool,
    },
    /// An anonymous volume.
    Anonymous {
        /// Where it appears in the container.
        target: String,
    },
}

/// A container's healthcheck (durations in milliseconds; `None` keeps the image's value).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HealthSpec {
    /// `["CMD", …]`, `["CMD-SHELL", "…"]` or `["NONE"]` (disabled).
    #[serde(default)]
    pub test: Option<Vec<String>>,
    /// Time between two checks.
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// How long one check may take before it counts as failed.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Time after the start during which failed checks do not count.
    #[serde(default)]
    pub start_period_ms: Option<u64>,
    /// Failed checks in a row that make the container unhealthy.
    #[serde(default)]
    pub retries: Option<u32>,
}

/// The name of a Docker restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicyName {
    /// Never restart (Compose's default).
    #[default]
    No,
    /// Always, also after the engine restarts.
    Always,
    /// When the main process exits non-zero, up to `max_retries` times.
    OnFailure,
    /// Always, unless it was stopped on purpose.
    UnlessStopped,
}

impl RestartPolicyName {
    /// Docker's name for the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicyName::No => "no",
            RestartPolicyName::Always => "always",
            RestartPolicyName::OnFailure => "on-failure",
            RestartPolicyName::UnlessStopped => "unless-stopped",
        }
    }
}

/// A Docker restart policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestartSpec {
    /// Which policy.
    pub name: RestartPolicyName,
    /// Most restarts; only with `on-failure` (the agent refuses it with any other policy).
    #[serde(default)]
    pub max_retries: Option<u32>,
}

/// A published port: `HOST:CONTAINER[/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The port on the host.
    pub host: u16,
    /// The port in the container.
    pub container: u16,
    /// UDP; TCP when false.
    pub udp: bool,
    /// The host address to bind (all addresses when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<std::net::IpAddr>,
}

impl PortSpec {
    /// Parses `8080:80`, `53:53/udp` or `80:80/tcp`.
    pub fn parse(text: &str) -> Result<PortSpec, String> {
        let bad = || {
            format!(
                "invalid port spec {text:?}: expected HOSTPORT:CONTAINERPORT[/udp], e.g. 8080:80"
            )
        };
        let (ports, proto) = match text.split_once('/') {
            Some((p, "udp")) => (p, true),
            Some((p, "tcp")) => (p, false),
            Some(_) => return Err(bad()),
            None => (text, false),
        };
        let (h, c) = ports.split_once(':').ok_or_else(bad)?;
        let host: u16 = h.parse().map_err(|_| bad())?;
        let container: u16 = c.parse().map_err(|_| bad())?;
        if host == 0 || container == 0 {
            return Err(format!("invalid port spec {text:?}: ports must be 1-65535"));
        }
        Ok(PortSpec {
            host,
            container,
            udp: proto,
            host_ip: None,
        })
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host,
            self.container,
            if self.udp { "udp" } else { "tcp" }
        )
    }
}

/// What the agent needs to run a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// corral's id for the container (`ctr-…`): the agent labels the container with it and
    /// finds it by it, which makes running it idempotent.
    pub corral_id: String,
    /// Docker's name for it (a stack replica's: `STACK_SERVICE.SLOT.SUFFIX`).
    pub name: String,
    /// The name of the host's environment.
    pub environment: String,
    /// The image reference Docker runs: `NAME@sha256:…` once the server has resolved the
    /// service's tag (every host then runs the same bytes), else as written.
    pub image: String,
    /// The reference as the Compose file wrote it, when `image` is the digest it resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_source: Option<String>,
    /// When the host pulls the image.
    #[serde(default, skip_serializing_if = "PullPolicy::is_default")]
    pub pull: PullPolicy,
    /// What the image's registry needs for a pull: set only on the command that runs the
    /// container, never in what the server stores about it, never written on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
    /// `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Ports published on the host.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// The container's labels; the agent adds corral's own (see [`labels`]).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Command and arguments; the image's own when empty.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Some(vec![])` clears the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Volumes and bind mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    /// Docker's restart policy; Docker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartSpec>,
    /// The healthcheck, over the image's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthSpec>,
    /// The user to run as, in Docker's form (`user[:group]`); the image's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The working directory; the image's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// The container's hostname; Docker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// A bridge network to attach to (created with the stack's labels when absent), and the
    /// names the container answers to on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// Ports reachable on the stack network only (`expose:`), e.g. `9000/tcp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    /// Seconds between SIGTERM and SIGKILL when the container is stopped or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_secs: Option<u64>,
    /// DNS servers for the container (the agent sets its own responder on the overlay).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// Full access to the host (`privileged: true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Capabilities added (`NET_ADMIN`, …; `ALL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Whose network stack the container uses.
    #[serde(default, skip_serializing_if = "NetworkMode::is_default")]
    pub network_mode: NetworkMode,
    /// Shares the host's process namespace (`pid: host`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pid_host: bool,
    /// Host devices given to the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSpec>,
    /// Project files, configs and secrets mounted read-only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileMount>,
    /// The contents `files` name: set only on the command that runs the container, never in
    /// what the server stores about it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_contents: Vec<FileContent>,
}

/// The network a stack container joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The network's Docker name (a stack's: `corral_STACK`).
    pub name: String,
    /// Names the container answers to on it (a stack replica's: `SERVICE` and
    /// `SERVICE.STACK`).
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// Payload of container_start / container_stop / container_remove / container_logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    /// The container's corral id.
    pub corral_id: String,
    /// Stop: seconds before SIGKILL.
    #[serde(default)]
    pub grace_secs: Option<u64>,
    /// Logs: the stream to send on.
    #[serde(default)]
    pub stream_id: Option<String>,
    /// Logs: keep sending new output until the container stops; else end after the tail.
    #[serde(default)]
    pub follow: bool,
    /// Logs: only the last this many lines (all of them when absent).
    #[serde(default)]
    pub tail: Option<u64>,
    /// Logs: initial credit in bytes.
    #[serde(default)]
    pub credit: u64,
}

impl ContainerRef {
    /// A lifecycle command's payload (start, stop, remove): no stream.
    pub fn lifecycle(corral_id: &str, grace_secs: Option<u64>) -> ContainerRef {
        ContainerRef {
            corral_id: corral_id.to_owned(),
            grace_secs,
            stream_id: None,
            follow: false,
            tail: None,
            credit: 0,
        }
    }
}

/// One check of `corral doctor`, as an agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Check {
    /// What was checked, in a few words (`server tunnel`, `overlay to web-2`, …).
    pub name: String,
    /// It passed.
    pub ok: bool,
    /// What was found, for people.
    pub detail: String,
    /// What would make a failing check pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The agent's first message on every connection: who it is and what its host is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the agent can speak, preferred first.
    pub protocol_versions: Vec<u32>,
    /// The agent's release (at most [`limits::FACT_MAX`] bytes).
    pub agent_version: String,
    /// How it proves who it is.
    pub auth: Auth,
    /// What it reports about its host.
    pub facts: HostFacts,
    /// The agent applies [`ServerMessage::OverlayDelta`]; without it the server sends only
    /// full configurations (an agent of an earlier release).
    #[serde(default)]
    pub overlay_deltas: bool,
    /// The agent enforces [`ServerMessage::NetworkPolicy`]; without it the server sends no
    /// policy (an agent of an earlier release, which could not read one).
    #[serde(default)]
    pub network_policy: bool,
}

/// The overlay of a host's environment, as that host should run it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayConfig {
    /// The environment's name.
    pub environment: String,
    /// Encrypted or not.
    pub mode: OverlayMode,
    /// The environment's overlay range, e.g. `10.42.0.0/16`.
    pub cidr: String,
    /// This host's lease, e.g. `10.42.3.0/24`: its container network.
    pub subnet: String,
    /// The environment's pre-shared key (64 hex digits; `wireguard` only).
    #[serde(default)]
    pub psk: Option<String>,
    /// Bumped by every rotation.
    pub psk_generation: u32,
    /// Every other host of the environment.
    pub peers: Vec<OverlayPeer>,
    /// The environment's overlay version this configuration is of; a later
    /// [`OverlayDelta`] names it as its `from`.
    #[serde(default)]
    pub version: u64,
}

/// Peers that changed in an environment's overlay between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayDelta {
    /// The environment's name (as in [`OverlayConfig::environment`]).
    pub environment: String,
    /// The version the agent must hold for this delta to apply; any other means a message
    /// was missed, and the agent reconnects to get a full configuration.
    pub from: u64,
    /// The version once applied.
    pub to: u64,
    /// Peers added or changed (replace any peer with the same `host_id`).
    pub upsert: Vec<OverlayPeer>,
    /// Host ids of peers that left (or lost their key or lease).
    pub remove: Vec<String>,
}

impl OverlayConfig {
    /// Applies `delta`, or says why it does not follow this configuration.
    pub fn apply_delta(&mut self, delta: &OverlayDelta) -> Result<(), String> {
        if delta.environment != self.environment || delta.from != self.version {
            return Err(format!(
                "an overlay delta from version {} of environment {} does not follow the configuration held (version {} of {})",
                delta.from, delta.environment, self.version, self.environment
            ));
        }
        let gone: std::collections::HashSet<&str> = delta
            .remove
            .iter()
            .map(String::as_str)
            .chain(delta.upsert.iter().map(|p| p.host_id.as_str()))
            .collect();
        self.peers.retain(|p| !gone.contains(p.host_id.as_str()));
        self.peers.extend(delta.upsert.iter().cloned());
        self.peers.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        self.version = delta.to;
        Ok(())
    }
}

impl std::fmt::Debug for OverlayConfig {
    // The pre-shared key never reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayConfig")
            .field("environment", &self.environment)
            .field("mode", &self.mode)
            .field("cidr", &self.cidr)
            .field("subnet", &self.subnet)
            .field("psk", &self.psk.as_ref().map(|_| "<redacted>"))
            .field("psk_generation", &self.psk_generation)
            .field("peers", &self.peers)
            .field("version", &self.version)
            .finish()
    }
}

/// How an environment's overlay carries traffic between hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlayMode {
    /// WireGuard's protocol (encrypted, UDP 51820 by default).
    #[default]
    Wireguard,
    /// Plain VXLAN (unencrypted, UDP 4789), for networks that are trusted.
    Vxlan,
}

impl OverlayMode {
    /// The mode's name in the API, the datastore and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            OverlayMode::Wireguard => "wireguard",
            OverlayMode::Vxlan => "vxlan",
        }
    }

    /// Reads a mode's name.
    pub fn parse(text: &str) -> Result<OverlayMode, String> {
        match text {
            "wireguard" => Ok(OverlayMode::Wireguard),
            "vxlan" => Ok(OverlayMode::Vxlan),
            other => Err(format!(
                "unknown overlay mode {other:?}: expected wireguard or vxlan"
            )),
        }
    }
}

/// A name that is not an overlay mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown overlay mode {0:?}: expected wireguard or vxlan")]
pub struct UnknownOverlayMode(pub String);

impl TryFrom<String> for OverlayMode {
    type Error = UnknownOverlayMode;
    fn try_from(text: String) -> Result<Self, UnknownOverlayMode> {
        OverlayMode::parse(&text).map_err(|_| UnknownOverlayMode(text))
    }
}

impl std::fmt::Display for OverlayMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which overlay addresses answer to which service name, in one environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameTable {
    /// Each stack service with replicas on the overlay.
    pub services: Vec<ServiceAddresses>,
}

/// A service's running (and, with a healthcheck, healthy) replicas' overlay addresses, and
/// the addresses of all its replicas (so a query can be attributed to the asker's stack).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAddresses {
    /// The stack's name.
    pub stack: String,
    /// The service's name.
    pub service: String,
    /// Addresses to answer with.
    pub ready: Vec<std::net::Ipv4Addr>,
    /// Every replica's address, ready or not.
    #[serde(default)]
    pub members: Vec<std::net::Ipv4Addr>,
    /// The service's labels (`labels:` in its Compose file, corral's own left out), which
    /// network policy rules select on.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// An environment's network policy, as its hosts enforce it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// The environment's name.
    pub environment: String,
    /// Which version of the environment's policy this is (0: none was ever applied).
    pub generation: u64,
    /// The checked document; `None`: no policy, nothing filtered.
    pub document: Option<corral_policy::Document>,
}

/// Another host of the environment, as an overlay peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayPeer {
    /// The peer's host id.
    pub host_id: String,
    /// The peer's host name.
    pub name: String,
    /// X25519 public key, 64 hex digits.
    pub public_key: String,
    /// Where its overlay socket was last seen (`ip:port`); absent until it has connected.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The peer's lease (its container network), e.g. `10.42.4.0/24`.
    pub subnet: String,
}

/// How an agent proves who it is.
///
/// On first contact the agent generates its own credential, saves it, and sends it together
/// with the registration token; the server stores only its hash. Because the agent holds the
/// credential before the server records it, a crash or restart on either side at any point
/// leaves either no host or a host whose credential the agent has: retrying the same
/// registration is idempotent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Auth {
    /// First contact: a registration token, and the credential the agent made for itself.
    Register {
        /// The registration token (`crl_reg_…`).
        token: String,
        /// The agent's new credential (`crl_host_…`); the server stores only its hash.
        credential: String,
    },
    /// A registered host: its credential.
    Credential {
        /// The host's credential (`crl_host_…`).
        credential: String,
    },
}

impl std::fmt::Debug for Auth {
    // Secrets never reach logs, even at debug level.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Register { .. } => {
                f.write_str("Register { token: <redacted>, credential: <redacted> }")
            }
            Auth::Credential { .. } => f.write_str("Credential { credential: <redacted> }"),
        }
    }
}

/// What the agent reports about its host on every connect.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostFacts {
    /// Requested host name (used at registration; later connects keep the registered name).
    pub name: String,
    /// The machine's own hostname.
    pub hostname: String,
    /// Labels for placement constraints (`--label k=v`); the server keeps those sent at
    /// registration.
    pub labels: BTreeMap<String, String>,
    /// The OS name (`PRETTY_NAME` of `/etc/os-release`).
    pub os: String,
    /// The kernel release.
    pub kernel: String,
    /// The CPU architecture, as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// The UDP port of the agent's overlay socket, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_port: Option<u16>,
    /// The host's overlay public key (X25519, 64 hex digits). Its private key never leaves
    /// the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_public_key: Option<String>,
}

/// The server's answer to an accepted [`Hello`]: who the host is, and the link's timing and
/// size limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version of this connection.
    pub protocol_version: u32,
    /// The host's id (`host-…`).
    pub host_id: String,
    /// The host's registered name.
    pub host_name: String,
    /// The name of the host's environment.
    pub environment: String,
    /// The agent sends a ping this often; either end declares the link dead after
    /// [`Welcome::dead_after_ms`] without receiving anything.
    pub heartbeat_interval_ms: u64,
    /// Silence after which either end declares the link dead, in milliseconds.
    pub dead_after_ms: u64,
    /// The server's limit on one message, in bytes.
    pub max_message_bytes: usize,
    /// The server reads [`Report::Overlay`]; without it the agent sends none (a server of an
    /// earlier release could not read one).
    #[serde(default)]
    pub overlay_stats: bool,
    /// Where the deployment's servers are reached (their advertised URLs, this one's first):
    /// an agent that loses its server dials the others. At most [`MAX_SERVERS`] are read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
}

/// Most server URLs a [`Welcome`] lists (an agent keeps no more).
pub const MAX_SERVERS: usize = 16;

/// Limits on the strings inside a [`Hello`], checked by the server before it stores anything.
pub mod limits {
    /// Longest host name, in bytes.
    pub const NAME_MAX: usize = 63;
    /// Most labels on one host.
    pub const LABELS_MAX: usize = 64;
    /// Longest label key, in bytes.
    pub const LABEL_KEY_MAX: usize = 128;
    /// Longest label value, in bytes.
    pub const LABEL_VALUE_MAX: usize = 256;
    /// Longest `hostname`, `os`, `kernel`, `arch` and agent version, in bytes.
    pub const FACT_MAX: usize = 256;
}

/// Checks a host name: 1–63 characters of `[a-z0-9-]`, not starting or ending with `-`
/// (a DNS label, so it can later be used in names).
pub fn validate_host_name(name: &str) -> Result<(), String> {
    validate_dns_label("host name", name)
}

/// Checks a name that must be a DNS label (1–63 characters of `[a-z0-9-]`, not starting or
/// ending with `-`); `what` names it in the error ("environment name").
pub fn validate_dns_label(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > limits::NAME_MAX {
        return Err(format!(
            "{what} {name:?} must be 1 to {} characters long",
            limits::NAME_MAX
        ));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "{what} {name:?} may contain only lowercase letters, digits and '-', and may not start or end with '-'"
        ));
    }
    Ok(())
}

/// Checks one label. Keys: `[A-Za-z0-9._/-]`, non-empty; values: printable, no control chars.
pub fn validate_label(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > limits::LABEL_KEY_MAX {
        return Err(format!(
            "label key {key:?} must be 1 to {} characters long",
            limits::LABEL_KEY_MAX
        ));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
    {
        return Err(format!(
            "label key {key:?} may contain only letters, digits, '.', '_', '/' and '-'"
        ));
    }
    if value.len() > limits::LABEL_VALUE_MAX || value.chars().any(char::is_control) {
        return Err(format!(
            "label value for {key:?} must be at most {} printable characters",
            limits::LABEL_VALUE_MAX
        ));
    }
    Ok(())
}

impl HostFacts {
    /// Validates everything the server will store from these facts.
    pub fn validate(&self) -> Result<(), String> {
        validate_host_name(&self.name)?;
        if self.labels.len() > limits::LABELS_MAX {
            return Err(format!("at most {} labels are allowed", limits::LABELS_MAX));
        }
        for (k, v) in &self.labels {
            validate_label(k, v)?;
        }
        for (what, v) in [
            ("hostname", &self.hostname),
            ("os", &self.os),
            ("kernel", &self.kernel),
            ("arch", &self.arch),
        ] {
            if v.len() > limits::FACT_MAX || v.chars().any(char::is_control) {
                return Err(format!(
                    "{what} must be at most {} printable characters",
                    limits::FACT_MAX
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert!(validate_host_name("web-1").is_ok());
        assert!(validate_host_name("").is_err());
        assert!(validate_host_name("-a").is_err());
        assert!(validate_host_name("Web").is_err());
        assert!(validate_host_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn labels() {
        assert!(validate_label("zone", "eu").is_ok());
        assert!(validate_label("corral.io/role", "db").is_ok());
        assert!(validate_label("", "x").is_err());
        assert!(validate_label("a b", "x").is_err());
        assert!(validate_label("a", "x\ny").is_err());
    }

    #[test]
    fn auth_debug_redacts() {
        let a = Auth::Register {
            token: "crl_reg_secret".into(),
            credential: "crl_host_secret".into(),
        };
        assert!(!format!("{a:?}").contains("secret"));
    }
}
