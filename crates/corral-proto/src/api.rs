//! JSON bodies of the server's HTTP API (`/v1/…`), shared by the server and the CLI so that
//! both sides agree on one definition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every error answer: `{"error": "…what happened and what to do…"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateToken {
    /// Environment name; `default` when absent.
    pub environment: Option<String>,
    /// Lifetime in seconds; absent means the default (24 h), 0 means it never expires.
    pub ttl_seconds: Option<u64>,
    /// How many hosts may register with it; absent means unlimited within its lifetime.
    pub max_uses: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub id: String,
    /// The secret itself. Shown once; the server keeps only its hash.
    pub token: String,
    /// The exact command to run on a host.
    pub command: String,
    pub environment: String,
    pub expires_at: Option<String>,
    pub max_uses: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub environment: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub max_uses: Option<u32>,
    pub uses: u32,
    /// `active`, `expired`, `used up` or `revoked`.
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostView {
    pub id: String,
    pub name: String,
    pub environment: String,
    pub labels: BTreeMap<String, String>,
    /// `active` while its tunnel is up, else `disconnected`.
    pub state: String,
    pub last_seen_at: String,
    pub connected_since: Option<String>,
    pub agent_version: String,
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub remote_addr: String,
    pub registered_at: String,
    /// Docker on the host while it is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerView>,
    /// The host's lease of its environment's overlay range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_subnet: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventView {
    pub id: i64,
    pub at: String,
    pub kind: String,
    pub host_id: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvironmentView {
    pub id: String,
    pub name: String,
    pub created_at: String,
    /// `wireguard` or `vxlan`.
    #[serde(default)]
    pub overlay_mode: String,
    #[serde(default)]
    pub overlay_cidr: String,
    /// How many pre-shared keys the environment has had (0: none made yet).
    #[serde(default)]
    pub overlay_key_generation: u32,
}

/// The answer to `POST /v1/environments/{name}/rotate-key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotatedKey {
    pub environment: String,
    pub generation: u32,
}

/// `corral doctor` for one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoctorReport {
    pub host: String,
    pub host_id: String,
    /// `active` or `disconnected`.
    pub state: String,
    pub checks: Vec<crate::Check>,
}

/// `POST /v1/hosts/{id}/firewall`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FirewallApplyRequest {
    #[serde(default)]
    pub admin_cidrs: Vec<String>,
    #[serde(default)]
    pub api_cidrs: Vec<String>,
    #[serde(default)]
    pub dry_run: bool,
    /// Dead-man window; 60 s when absent.
    pub confirm_within_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirewallApplyReport {
    pub host: String,
    pub dry_run: bool,
    /// The rules are in force (false for a dry run or a rollback).
    pub applied: bool,
    pub message: String,
    pub ruleset: String,
}

/// `POST /v1/containers`: run one container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunContainer {
    pub name: String,
    pub image: String,
    /// Host name or id; the connected host with the fewest containers when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// `HOSTPORT:CONTAINERPORT[/udp]` entries.
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub cmd: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerView {
    pub id: String,
    pub name: String,
    pub host: String,
    pub host_id: String,
    pub image: String,
    /// What was asked for: `running` or `stopped`.
    pub desired: String,
    /// What the host last reported: `pending`, a Docker state, or `missing` (removed behind
    /// corral's back).
    pub actual: String,
    pub docker_id: Option<String>,
    pub exit_code: Option<i64>,
    pub ports: Vec<String>,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub created_at: String,
}

/// Docker on a host, as its agent last reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerView {
    /// `available` or `unavailable`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<crate::DockerInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A file sent with `corral up`: its name as given and its text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileBody {
    pub name: String,
    pub text: String,
}

/// `POST /v1/stacks`: deploy (or update) a stack from Compose files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpRequest {
    /// `-p NAME`; else the files' top-level `name:`.
    #[serde(default)]
    pub name: Option<String>,
    /// Environment name; `default` when absent.
    #[serde(default)]
    pub environment: Option<String>,
    /// Compose files in `-f` order.
    pub files: Vec<FileBody>,
    /// `--env-file` files (or the project's `.env`), for interpolation.
    #[serde(default)]
    pub env_files: Vec<FileBody>,
    /// Files the services name in `env_file:`.
    #[serde(default)]
    pub referenced_files: Vec<FileBody>,
    /// The caller's environment variables that the files may interpolate.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The answer to `POST /v1/stacks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpResponse {
    pub stack: String,
    /// The stack did not exist before.
    pub created: bool,
    /// Services whose containers will be replaced (rolling update) because their definition
    /// changed.
    pub changed: Vec<String>,
    /// Keys accepted but ignored, and the like.
    pub warnings: Vec<String>,
}

/// `POST /v1/stacks/{name}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub service: String,
    pub replicas: u32,
}

/// One line of `corral stack ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackSummary {
    pub name: String,
    pub environment: String,
    /// `active` or `removing`.
    pub state: String,
    pub services: usize,
    /// Replicas running the current definition.
    pub running: u32,
    /// Replicas desired.
    pub desired: u32,
    pub converged: bool,
    pub updated_at: String,
}

/// `GET /v1/stacks/{name}`: a stack with its services and replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackView {
    pub name: String,
    pub environment: String,
    pub state: String,
    /// Every service has exactly its desired replicas running the current definition (and
    /// healthy where a healthcheck exists), nothing else is left, and nothing is unplaced.
    pub converged: bool,
    pub services: Vec<ServiceView>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub image: String,
    pub desired: u32,
    /// Replicas of the current definition that are running (and healthy, with a healthcheck).
    pub ready: u32,
    /// Replicas still running an older definition.
    pub outdated: u32,
    pub ports: Vec<String>,
    /// Why replicas could not be placed ("web.3: no host fits — …").
    pub unplaced: Vec<String>,
    /// What the service waits for before it starts (its `depends_on`).
    #[serde(default)]
    pub waiting: Option<String>,
    /// The last failure starting a replica, while it is being retried.
    #[serde(default)]
    pub last_error: Option<String>,
    pub replicas: Vec<ReplicaView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaView {
    pub name: String,
    pub slot: u32,
    pub host: String,
    /// `running` or `removed` (being removed).
    pub desired: String,
    pub actual: String,
    #[serde(default)]
    pub health: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Runs the service's current definition.
    pub current: bool,
    /// Its address on the host's overlay network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}
