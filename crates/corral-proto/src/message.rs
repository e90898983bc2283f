//! Message types. Field names are part of the wire format: renaming one is a protocol change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::close::CloseReason;

/// Everything an agent sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First message on every connection.
    Hello(Box<Hello>),
    /// Heartbeat; the server answers with [`ServerMessage::Pong`] carrying the same `seq`.
    Ping { seq: u64 },
    /// Answer to a server [`ServerMessage::Ping`].
    Pong { seq: u64 },
    /// The outcome of a [`ServerMessage::Command`]. Accepted only from the host the command
    /// was addressed to, and only once.
    Reply {
        command_id: String,
        result: CommandResult,
    },
    /// What the agent sees on its host: the full inventory on every connect (and when Docker
    /// comes back), then one change at a time from Docker's event stream.
    Report(Report),
    /// Bytes of a stream the server opened (container logs), never more than the credit the
    /// server has granted for it.
    StreamData {
        stream_id: String,
        /// UTF-8 text (Docker log lines, invalid bytes replaced).
        data: String,
    },
    /// The stream ended (the container stopped, or the tail was sent without `follow`).
    StreamEnd {
        stream_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// What an agent reports about its host's containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    Inventory {
        /// `None` while Docker is unavailable; `docker_error` then says why.
        docker: Option<DockerInfo>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        docker_error: Option<String>,
        containers: Vec<ContainerStatus>,
    },
    /// One container changed (created, started, died, removed…).
    Change { container: ContainerStatus },
    /// A container was removed from Docker.
    Removed { corral_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerInfo {
    pub version: String,
    pub api_version: String,
    pub storage_driver: String,
    pub cpus: u32,
    pub memory_bytes: u64,
}

/// A corral container as Docker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub corral_id: String,
    pub docker_id: String,
    pub name: String,
    /// Docker's state: created, running, paused, restarting, removing, exited, dead.
    pub state: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Docker's health status when the container has a healthcheck: starting, healthy,
    /// unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// How many times Docker restarted it under its restart policy.
    #[serde(default)]
    pub restart_count: i64,
    /// Its address on the host's overlay network, when attached to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

impl AgentMessage {
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
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// Work for the agent. Commands are idempotent: one may be delivered again after a
    /// reconnect, and carrying it out twice has the effect of carrying it out once.
    Command(Command),
    /// More bytes may be sent on a stream: credit-based flow control, so a slow reader never
    /// grows memory on the agent or the server.
    StreamCredit {
        stream_id: String,
        bytes: u64,
    },
    /// The reader went away: stop sending.
    StreamCancel {
        stream_id: String,
    },
    /// The overlay as this host should run it: sent after the welcome and whenever it
    /// changes (a host joins, moves, leaves; the pre-shared key rotates).
    Overlay(Box<OverlayConfig>),
    /// The environment's service names (for the agent's DNS responder): sent after the
    /// welcome and whenever a replica starts, stops or changes health.
    Names(NameTable),
    /// Sent right before the server closes the connection, with the full explanation; the
    /// WebSocket close frame repeats the reason as a code (see [`CloseReason::code`]).
    Goodbye {
        reason: CloseReason,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    pub kind: CommandKind,
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Unix seconds after which the server no longer waits for the outcome.
    pub deadline: i64,
}

/// What a command asks for. Unknown kinds from a newer server are answered with an error, not
/// a dropped connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Run the agent's local checks (Docker socket, nft, TUN device, clock) and report them.
    Doctor,
    /// Install the host's rules as corral's own nftables table (`table inet corral`), with a
    /// dead-man timer: if the agent cannot open a new connection to the server within the
    /// confirmation window, it restores the previous rules by itself.
    FirewallApply,
    /// Report whether an overlay probe with this nonce arrives on the overlay socket.
    OverlayExpect,
    /// Send overlay probes with this nonce to a peer's overlay endpoint.
    OverlaySend,
    /// Create (if absent) and start a container. Idempotent by corral container id.
    ContainerRun,
    ContainerStart,
    /// Stop with a grace period, then kill.
    ContainerStop,
    ContainerRemove,
    /// Open a log stream (answered at once; data follows as stream messages).
    ContainerLogs,
    /// Which of these images are missing on the host ([`ImageCheck`]); answered with the
    /// missing ones. Lets `corral up` refuse a stack before anything is created.
    ImageCheck,
    /// Remove what a stack left on the host besides containers ([`StackCleanup`]): its network
    /// and, when asked, its named volumes.
    StackCleanup,
    #[serde(other)]
    Unknown,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Doctor => "doctor",
            CommandKind::FirewallApply => "firewall_apply",
            CommandKind::OverlayExpect => "overlay_expect",
            CommandKind::OverlaySend => "overlay_send",
            CommandKind::ContainerRun => "container_run",
            CommandKind::ContainerStart => "container_start",
            CommandKind::ContainerStop => "container_stop",
            CommandKind::ContainerRemove => "container_remove",
            CommandKind::ContainerLogs => "container_logs",
            CommandKind::ImageCheck => "image_check",
            CommandKind::StackCleanup => "stack_cleanup",
            CommandKind::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CommandResult {
    Ok {
        #[serde(default)]
        value: serde_json::Value,
    },
    Failed {
        message: String,
    },
}

/// Payload of [`CommandKind::FirewallApply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallApply {
    /// An nftables script that touches only `table inet corral`.
    pub ruleset: String,
    /// Only check the ruleset (`nft -c`); change nothing.
    pub dry_run: bool,
    /// Roll back unless a new connection to the server succeeds within this many seconds.
    pub confirm_within_secs: u64,
}

/// Payload of [`CommandKind::OverlayExpect`] and [`CommandKind::OverlaySend`]: a
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
    pub const MANAGED: &str = "io.corral.managed";
    pub const CONTAINER_ID: &str = "io.corral.container-id";
    pub const ENVIRONMENT: &str = "io.corral.environment";
    pub const STACK: &str = "io.corral.stack";
    pub const SERVICE: &str = "io.corral.service";
    /// The replica's slot (1-based) within its service.
    pub const SLOT: &str = "io.corral.slot";
}

/// Payload of [`CommandKind::ImageCheck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCheck {
    pub images: Vec<String>,
}

/// Payload of [`CommandKind::StackCleanup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackCleanup {
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
        source: String,
        target: String,
        #[serde(default)]
        read_only: bool,
    },
    /// A host path.
    Bind {
        source: String,
        target: String,
        #[serde(default)]
        read_only: bool,
    },
    /// An anonymous volume.
    Anonymous { target: String },
}

/// A container's healthcheck (durations in milliseconds; `None` keeps the image's value).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HealthSpec {
    /// `["CMD", …]`, `["CMD-SHELL", "…"]` or `["NONE"]` (disabled).
    #[serde(default)]
    pub test: Option<Vec<String>>,
    #[serde(default)]
    pub interval_ms: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub start_period_ms: Option<u64>,
    #[serde(default)]
    pub retries: Option<u32>,
}

/// A Docker restart policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestartSpec {
    /// `no`, `always`, `on-failure` or `unless-stopped`.
    pub name: String,
    #[serde(default)]
    pub max_retries: Option<u32>,
}

/// A published port: `HOST:CONTAINER[/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub host: u16,
    pub container: u16,
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
    pub corral_id: String,
    pub name: String,
    pub environment: String,
    pub image: String,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Some(vec![])` clears the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
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
}

/// The network a stack container joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// Payload of container_start / container_stop / container_remove / container_logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    pub corral_id: String,
    /// Stop: seconds before SIGKILL.
    #[serde(default)]
    pub grace_secs: Option<u64>,
    /// Logs: the stream to send on.
    #[serde(default)]
    pub stream_id: Option<String>,
    #[serde(default)]
    pub follow: bool,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What would make a failing check pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the agent can speak, preferred first.
    pub protocol_versions: Vec<u32>,
    pub agent_version: String,
    pub auth: Auth,
    pub facts: HostFacts,
}

/// The overlay of a host's environment, as that host should run it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayConfig {
    pub environment: String,
    /// `wireguard` (encrypted, UDP 51820) or `vxlan` (unencrypted, UDP 4789).
    pub mode: String,
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
            .finish()
    }
}

/// Which overlay addresses answer to which service name, in one environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameTable {
    pub services: Vec<ServiceAddresses>,
}

/// A service's running (and, with a healthcheck, healthy) replicas' overlay addresses, and
/// the addresses of all its replicas (so a query can be attributed to the asker's stack).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAddresses {
    pub stack: String,
    pub service: String,
    /// Addresses to answer with.
    pub ready: Vec<std::net::Ipv4Addr>,
    /// Every replica's address, ready or not.
    #[serde(default)]
    pub members: Vec<std::net::Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayPeer {
    pub host_id: String,
    pub name: String,
    /// X25519 public key, 64 hex digits.
    pub public_key: String,
    /// Where its overlay socket was last seen (`ip:port`); absent until it has connected.
    #[serde(default)]
    pub endpoint: Option<String>,
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
    Register { token: String, credential: String },
    Credential { credential: String },
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
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    /// The UDP port of the agent's overlay socket, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_port: Option<u16>,
    /// The host's overlay public key (X25519, 64 hex digits). Its private key never leaves
    /// the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_public_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    pub host_id: String,
    pub host_name: String,
    pub environment: String,
    /// The agent sends a ping this often; either end declares the link dead after
    /// [`Welcome::dead_after_ms`] without receiving anything.
    pub heartbeat_interval_ms: u64,
    pub dead_after_ms: u64,
    pub max_message_bytes: usize,
}

/// Limits on the strings inside a [`Hello`], checked by the server before it stores anything.
pub mod limits {
    pub const NAME_MAX: usize = 63;
    pub const LABELS_MAX: usize = 64;
    pub const LABEL_KEY_MAX: usize = 128;
    pub const LABEL_VALUE_MAX: usize = 256;
    pub const FACT_MAX: usize = 256;
}

/// Checks a host name: 1–63 characters of `[a-z0-9-]`, not starting or ending with `-`
/// (a DNS label, so it can later be used in names).
pub fn validate_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > limits::NAME_MAX {
        return Err(format!(
            "host name {name:?} must be 1 to {} characters long",
            limits::NAME_MAX
        ));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "host name {name:?} may contain only lowercase letters, digits and '-', and may not start or end with '-'"
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
