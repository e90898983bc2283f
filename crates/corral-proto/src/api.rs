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
