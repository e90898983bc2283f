//! JSON bodies of the server's HTTP API (`/v1/…`), shared by the server and the CLI so that
//! both sides agree on one definition. The request bodies the server reads refuse fields they
//! do not know (`deny_unknown_fields`), so a misspelt field is an error naming it, never a
//! silent default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every error answer: `{"error": "…what happened and what to do…"}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What happened and what to do, for people.
    pub error: String,
}

/// `POST /v1/tokens`: make a registration token.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Environment name; `default` when absent.
    pub environment: Option<String>,
    /// Lifetime in seconds; absent means the default (24 h), 0 means it never expires.
    pub ttl_seconds: Option<u64>,
    /// How many hosts may register with it; absent means unlimited within its lifetime.
    pub max_uses: Option<u32>,
}

/// The answer to `POST /v1/tokens`: the new token, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// The token's id (`tok-…`), to list or revoke it by.
    pub id: String,
    /// The secret itself. Shown once; the server keeps only its hash.
    pub token: String,
    /// The exact command to run on a host.
    pub command: String,
    /// The environment that hosts registered with it join.
    pub environment: String,
    /// When it expires (RFC 3339); `null` when it never does.
    pub expires_at: Option<String>,
    /// How many hosts may register with it; `null` for unlimited.
    pub max_uses: Option<u32>,
}

/// A registration token in `GET /v1/tokens` (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    /// The token's id (`tok-…`).
    pub id: String,
    /// The environment that hosts registered with it join.
    pub environment: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When it expires (RFC 3339); `null` when it never does.
    pub expires_at: Option<String>,
    /// How many hosts may register with it; `null` for unlimited.
    pub max_uses: Option<u32>,
    /// How many hosts have registered with it.
    pub uses: u32,
    /// `active`, `expired`, `used up` or `revoked`.
    pub state: String,
}

/// A server of the deployment in `GET /v1/servers`: several servers on one PostgreSQL
/// datastore, one of them active (it holds the write lock; the others relay to it).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerView {
    /// The server's id for this run (`srv-…`; a new one at every start).
    pub id: String,
    /// Where agents reach it (`--advertise-url`).
    pub advertise_url: String,
    /// Where the other servers reach it (`--peer-url`).
    pub peer_url: String,
    /// When it last said it runs (RFC 3339).
    pub seen_at: String,
    /// It holds the datastore's write lock: it acts, the others relay to it.
    pub active: bool,
}

/// A host in `GET /v1/hosts` and `GET /v1/hosts/{id}`: its registered facts beside its live
/// tunnel state.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostView {
    /// The host's id (`host-…`).
    pub id: String,
    /// The host's name, unique in its environment.
    pub name: String,
    /// The name of the host's environment.
    pub environment: String,
    /// Labels for placement constraints, as given at registration.
    pub labels: BTreeMap<String, String>,
    /// `active` while its tunnel is up, else `disconnected`.
    pub state: String,
    /// When its agent was last heard from (RFC 3339).
    pub last_seen_at: String,
    /// When its current tunnel opened (RFC 3339); `null` while disconnected.
    pub connected_since: Option<String>,
    /// The agent's release, as of its last connect.
    pub agent_version: String,
    /// The machine's own hostname, as its agent last reported it.
    pub hostname: String,
    /// The OS name (`PRETTY_NAME` of `/etc/os-release`).
    pub os: String,
    /// The kernel release.
    pub kernel: String,
    /// The CPU architecture, as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// Where its tunnel comes (or last came) from, `ip:port`.
    pub remote_addr: String,
    /// When it registered (RFC 3339).
    pub registered_at: String,
    /// Docker on the host while it is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerView>,
    /// The host's lease of its environment's overlay range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_subnet: Option<String>,
    /// Overlay addresses its stacks' containers hold (absent when the host is on no overlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_addresses_used: Option<u32>,
    /// Container addresses its subnet has (0 while it has none); the scheduler places no
    /// replica beyond them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_addresses_total: Option<u32>,
}

/// Most events one `GET /v1/events?limit=N` returns; a larger `limit` is refused (400).
pub const MAX_EVENTS_PER_REQUEST: u32 = 1_000;

/// The request header that names the environment a request works in (the CLI's `--env`,
/// `CORRAL_ENV` or the environment `corral env use` saved): names of hosts, stacks and
/// containers are looked up in it alone, and listings show only it. Without it, a name is
/// looked up across every environment the caller has a role in.
pub const ENVIRONMENT_HEADER: &str = "corral-environment";

/// `POST /v1/login`: a user's name and password for a new API key of theirs.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The user's name.
    pub user: String,
    /// Their password.
    pub password: String,
    /// A name for the key (default `login`).
    #[serde(default)]
    pub key_name: Option<String>,
    /// How long the key lives, in seconds (default 30 days, at most a year).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// `POST /ui/login`: the web UI's login, with a user's password or an API key (exactly one
/// of the two). Either way the browser gets a session of its own (a new key of the user that
/// lives [`WEB_SESSION_SECS`]) in an HttpOnly cookie; the key sent is never stored by it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebLoginRequest {
    /// The user's name (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    /// Their password.
    #[serde(default)]
    pub password: Option<String>,
    /// An API key instead of a user and password.
    #[serde(default)]
    pub key: Option<String>,
}

/// How long a web session lives.
pub const WEB_SESSION_SECS: u64 = 12 * 3600;

/// The cookie that carries a web session's key: `__Host-` so that only this origin over
/// HTTPS may set it, HttpOnly so that no script reads it.
pub const WEB_SESSION_COOKIE: &str = "__Host-corral-session";

/// The header that carries the session's CSRF token on every request of the web UI that
/// changes state; such a request with the cookie and without the token is refused (403).
pub const CSRF_HEADER: &str = "x-corral-csrf";

/// `POST /ui/login` and `GET /ui/session`: who the browser is logged in as.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebSessionView {
    /// The user's name.
    pub user: String,
    /// May do everything.
    pub admin: bool,
    /// Their role in each environment (empty for an admin, who has every one).
    pub roles: Vec<RoleView>,
    /// To send as [`CSRF_HEADER`] with every request that changes state.
    pub csrf: String,
    /// When the session ends (RFC 3339).
    pub expires_at: Option<String>,
}

/// A new API key: its secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewKeyView {
    /// The key (`crl_key_…`): the only time it is shown.
    pub key: String,
    /// Its id, to list or remove it.
    pub key_id: String,
    /// Whose it is.
    pub user: String,
    /// When it stops working (RFC 3339), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// `POST /v1/keys`: a new API key of the caller.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// A name for it.
    pub name: String,
    /// How long it lives, in seconds (none: until removed).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// One of a user's API keys (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When it stops working, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
}

/// A role in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoleView {
    /// The environment.
    pub environment: String,
    /// `owner`, `member`, `restricted` or `read-only`.
    pub role: String,
}

/// A user (`GET /v1/users`, `GET /v1/whoami`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserView {
    /// Their name.
    pub name: String,
    /// May do everything.
    pub admin: bool,
    /// Their role in each environment.
    pub roles: Vec<RoleView>,
    /// Can log in with a password.
    pub password: bool,
    /// Locked after failed logins until then (RFC 3339), if locked now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<String>,
    /// When the user was made (RFC 3339).
    pub created_at: String,
}

/// `POST /v1/users`: a new user.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    /// Their name (a DNS label).
    pub name: String,
    /// Their password (none: they log in only with keys an admin makes for them).
    #[serde(default)]
    pub password: Option<String>,
    /// May do everything.
    #[serde(default)]
    pub admin: bool,
}

/// `PUT /v1/users/{name}/password`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    /// The new password.
    pub password: String,
}

/// `PUT /v1/users/{name}/roles/{env}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleRequest {
    /// `owner`, `member`, `restricted` or `read-only`.
    pub role: String,
}

/// Most entries one `GET /v1/audit` or `GET /v1/audit/export` returns.
pub const MAX_AUDIT_PER_REQUEST: u32 = 10_000;

/// One entry of the audit log (`GET /v1/audit`, `GET /v1/audit/export`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntryView {
    /// 1, 2, 3, … with no gaps.
    pub seq: i64,
    /// When (RFC 3339, milliseconds).
    pub at: String,
    /// An API key's name, `server` for the server's own security events, `anonymous` for a
    /// request without a valid key.
    pub actor: String,
    /// The API key's id, when one was presented and known.
    pub key_id: String,
    /// The key's role.
    pub role: String,
    /// The environment the request named, if any.
    pub environment: String,
    /// `POST /v1/stacks`, or a security event's kind.
    pub action: String,
    /// What it acted on: the request's path, or a host id.
    pub target: String,
    /// The answer (`201 Created`, `403 Forbidden: …`), or the event's message.
    pub outcome: String,
    /// The client's address, when there was a request.
    pub source: String,
    /// The entry's chained hash (hex), in exports only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// The answer to `GET /v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditVerifyView {
    /// Entries read.
    pub entries: u64,
    /// The chain holds from the first entry to the last.
    pub intact: bool,
    /// The last entry of the unbroken chain: compare it and [`Self::head_hash`] with an
    /// exported copy to see that nothing was cut off the end.
    pub head_seq: i64,
    /// That entry's hash (hex).
    pub head_hash: String,
    /// Where it breaks first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<i64>,
    /// How it breaks there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One audit or security event of `GET /v1/events` (its message at most 1 KiB: longer ones
/// are cut and say how long they were).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    /// The event's number; later events have larger ones.
    pub id: i64,
    /// When it happened (RFC 3339).
    pub at: String,
    /// What happened, as a `snake_case` name (`stack_created`, `credential_superseded`, …).
    pub kind: String,
    /// The host it concerns, if any.
    pub host_id: Option<String>,
    /// What happened, for people.
    pub message: String,
}

/// An environment in `GET /v1/environments`, with its overlay.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvironmentView {
    /// The environment's id (`env-…`).
    pub id: String,
    /// The environment's name.
    pub name: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// `wireguard` or `vxlan`.
    #[serde(default)]
    pub overlay_mode: String,
    /// The overlay's range, e.g. `10.42.0.0/16` (empty when the environment has no overlay).
    #[serde(default)]
    pub overlay_cidr: String,
    /// How many pre-shared keys the environment has had (0: none made yet).
    #[serde(default)]
    pub overlay_key_generation: u32,
    /// The prefix length of every host's subnet of the range (24: a /24 each).
    #[serde(default)]
    pub host_subnet_prefix: u8,
    /// Container addresses in each host's subnet (253 in a /24).
    #[serde(default)]
    pub addresses_per_host: u32,
    /// How many hosts the range holds.
    #[serde(default)]
    pub hosts_capacity: u32,
    /// How many hosts hold a subnet of it now.
    #[serde(default)]
    pub hosts_leased: u32,
}

/// The answer to `POST /v1/environments/{name}/rotate-key`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotatedKey {
    /// The environment's name.
    pub environment: String,
    /// The new key's generation (see [`EnvironmentView::overlay_key_generation`]).
    pub generation: u32,
}

/// `corral doctor` for one host.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DoctorReport {
    /// The host's name.
    pub host: String,
    /// The host's id.
    pub host_id: String,
    /// `active` or `disconnected`.
    pub state: String,
    /// The agent's own checks, then overlay probes to and from each connected peer; only a
    /// failed `server tunnel` check when the host is disconnected or its agent did not answer.
    pub checks: Vec<crate::Check>,
}

/// `POST /v1/hosts/{id}/firewall`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallApplyRequest {
    /// Where administrators come from (CIDRs): SSH is allowed from them, and so is the API
    /// unless `api_cidrs` is given. Empty: no SSH rule at all.
    #[serde(default)]
    pub admin_cidrs: Vec<String>,
    /// Who may reach the server API (CIDRs); empty: `admin_cidrs`, or everyone when that is
    /// empty too.
    #[serde(default)]
    pub api_cidrs: Vec<String>,
    /// Only have the host check the rules (`nft -c`); change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Dead-man window; 60 s when absent.
    pub confirm_within_secs: Option<u64>,
}

/// The answer to `POST /v1/hosts/{id}/firewall`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FirewallApplyReport {
    /// The host's name.
    pub host: String,
    /// It was a dry run.
    pub dry_run: bool,
    /// The rules are in force (false for a dry run or a rollback).
    pub applied: bool,
    /// What happened, for people (the agent's error when it failed).
    pub message: String,
    /// The nftables script derived for the host.
    pub ruleset: String,
}

/// `POST /v1/containers`: run one container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunContainer {
    /// The container's name: 1–63 characters of `[a-z0-9-]`, not starting or ending with `-`.
    pub name: String,
    /// Image reference; it must already be on the host (corral never pulls).
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
    /// Container labels; keys starting with `io.corral.` are reserved.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Command and arguments; the image's own when empty.
    #[serde(default)]
    pub cmd: Vec<String>,
}

/// A container, as `GET /v1/containers` and the other container routes show it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContainerView {
    /// corral's id for it (`ctr-…`).
    pub id: String,
    /// Its name (Docker's name on the host).
    pub name: String,
    /// The name of the host it runs on.
    pub host: String,
    /// The id of the host it runs on.
    pub host_id: String,
    /// The image reference it runs.
    pub image: String,
    /// What was asked for: `running` or `stopped`.
    pub desired: String,
    /// What the host last reported: `pending`, a Docker state, or `missing` (removed behind
    /// corral's back).
    pub actual: String,
    /// Docker's id for it, once its host has created it.
    pub docker_id: Option<String>,
    /// Its main process's exit code, as its host last reported it.
    pub exit_code: Option<i64>,
    /// Published ports, `HOSTPORT:CONTAINERPORT/tcp` or `…/udp`.
    pub ports: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Command and arguments; empty for the image's own.
    pub cmd: Vec<String>,
    /// Labels from its definition (the agent adds corral's own on the host).
    pub labels: BTreeMap<String, String>,
    /// When it was asked for (RFC 3339).
    pub created_at: String,
}

/// Docker on a host, as its agent last reported.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DockerView {
    /// `available` or `unavailable`.
    pub state: String,
    /// The engine's details, while it is available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<crate::DockerInfo>,
    /// Why Docker is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A file sent with `corral up`: its name as given and its text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileBody {
    /// The name as given (on the command line, or in `env_file:`).
    pub name: String,
    /// The file's contents.
    pub text: String,
}

/// `POST /v1/stacks`: deploy (or update) a stack from Compose files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
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
    /// The project's files the stack ships: relative bind mounts (a directory as its files),
    /// and configs' and secrets' `file:` sources.
    #[serde(default)]
    pub project_files: Vec<crate::files::ProjectFile>,
    /// An id the CLI chose to follow the `up` by (`GET /v1/progress/ID`): builds' output.
    #[serde(default)]
    pub progress_id: Option<String>,
    /// Each built service's context, uploaded before (`PUT /v1/build-contexts/SHA256`):
    /// service → the SHA-256 (hex) of its tar.
    #[serde(default)]
    pub build_contexts: BTreeMap<String, String>,
}

/// The answer to `POST /v1/stacks`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpResponse {
    /// The stack's name.
    pub stack: String,
    /// The stack did not exist before.
    pub created: bool,
    /// Services whose containers will be replaced (rolling update) because their definition
    /// changed.
    pub changed: Vec<String>,
    /// Keys accepted but ignored, and the like.
    pub warnings: Vec<String>,
    /// What `up` resolved: each image tag and the digest every host runs, and digests that
    /// changed since the last `up` (those services roll).
    #[serde(default)]
    pub images: Vec<String>,
}

/// `POST /v1/stacks/{name}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The service to scale.
    pub service: String,
    /// How many replicas it should have (at most 1 000, as in a Compose file).
    pub replicas: u32,
}

/// One line of `corral stack ls`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StackSummary {
    /// The stack's name.
    pub name: String,
    /// The name of its environment.
    pub environment: String,
    /// `active`, `removing`, or `failed` when the server cannot read its definition.
    pub state: String,
    /// How many services it has.
    pub services: usize,
    /// Replicas running the current definition.
    pub running: u32,
    /// Replicas desired.
    pub desired: u32,
    /// As [`StackView::converged`].
    pub converged: bool,
    /// When the stack last changed (RFC 3339).
    pub updated_at: String,
}

/// `GET /v1/stacks/{name}`: a stack with its services and replicas.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StackView {
    /// The stack's name.
    pub name: String,
    /// The name of its environment.
    pub environment: String,
    /// `active`, `removing`, or `failed` when the server cannot read its definition.
    pub state: String,
    /// Why the stack is `failed`: nothing of it is touched until it is deployed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every service has exactly its desired replicas running the current definition (and
    /// healthy where a healthcheck exists), nothing else is left, and nothing is unplaced.
    pub converged: bool,
    /// Its services, with their replicas.
    pub services: Vec<ServiceView>,
    /// When it was first deployed (RFC 3339).
    pub created_at: String,
    /// When the stack last changed (RFC 3339).
    pub updated_at: String,
}

/// One service of a stack, with its replicas.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceView {
    /// The service's name.
    pub name: String,
    /// The image of its current definition, as the Compose file names it.
    pub image: String,
    /// The digest every replica runs, when the server resolved the tag (or the file named one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Replicas asked for.
    pub desired: u32,
    /// Replicas of the current definition that are running (and healthy, with a healthcheck).
    pub ready: u32,
    /// Replicas still running an older definition.
    pub outdated: u32,
    /// Published ports, `HOSTPORT:CONTAINERPORT/tcp` or `…/udp`.
    pub ports: Vec<String>,
    /// Why replicas could not be placed, grouped by reason ("web.3: no host fits — …",
    /// "web.1, web.2, web.3 and 997 more: no host fits — …"); a few lines at most.
    pub unplaced: Vec<String>,
    /// How many replicas could not be placed.
    #[serde(default)]
    pub unplaced_count: u64,
    /// What the service waits for before it starts (its `depends_on`).
    #[serde(default)]
    pub waiting: Option<String>,
    /// The last failure starting a replica, while it is being retried.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Its containers, current and outdated.
    pub replicas: Vec<ReplicaView>,
}

/// One container of a service.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaView {
    /// The container's name (`STACK_SERVICE.SLOT.SUFFIX`).
    pub name: String,
    /// The replica's slot within its service, from 1.
    pub slot: u32,
    /// The name of the host it runs on.
    pub host: String,
    /// `running` or `removed` (being removed).
    pub desired: String,
    /// What its host last reported: `pending`, a Docker state, or `missing`.
    pub actual: String,
    /// Docker's health status (`starting`, `healthy`, `unhealthy`) when it has a healthcheck.
    #[serde(default)]
    pub health: Option<String>,
    /// Its main process's exit code, as its host last reported it.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Runs the service's current definition.
    pub current: bool,
    /// Its address on the host's overlay network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The pull of its image in progress on its host (`pulling IMAGE: 12.3 of 40.0 MB, 2 of
    /// 5 layers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulling: Option<String>,
}

/// `POST /v1/registries`: add a registry to an environment (or replace its account and CA).
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryRequest {
    /// The environment (`default` when absent).
    #[serde(default)]
    pub environment: Option<String>,
    /// `HOST[:PORT]`, as image references name it.
    pub registry: String,
    /// The account to pull with (none: anonymous pulls).
    #[serde(default)]
    pub username: Option<String>,
    /// Its password or token.
    #[serde(default)]
    pub password: Option<String>,
    /// The PEM CA that signed the registry's certificate, when it is a private one.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Push the environment's built images here (one registry per environment does).
    #[serde(default)]
    pub builds: bool,
}

impl std::fmt::Debug for RegistryRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryRequest")
            .field("environment", &self.environment)
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish_non_exhaustive()
    }
}

/// A registry as listed: never its password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegistryView {
    /// The environment it belongs to.
    pub environment: String,
    /// `HOST[:PORT]`.
    pub registry: String,
    /// The account, if any.
    pub username: Option<String>,
    /// A password or token is stored (sealed).
    pub has_password: bool,
    /// A private CA is stored.
    pub has_ca: bool,
    /// Built images are pushed here.
    #[serde(default)]
    pub builds: bool,
    /// RFC 3339.
    pub updated_at: String,
}

/// `PUT /v1/environments/{name}/admission`: apply a policy document.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdmissionRequest {
    /// The policy document (YAML or JSON).
    pub document: String,
}

/// An environment's admission policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdmissionView {
    /// The environment.
    pub environment: String,
    /// The applied version (1, 2, …); `None`: none applied, the default is in force.
    pub generation: Option<i64>,
    /// The document as applied (empty when none was).
    pub document: String,
    /// The policy in force, every key spelled out (JSON).
    pub effective: String,
    /// RFC 3339, when applied.
    pub applied_at: Option<String>,
}

/// `POST /v1/environments/{name}/admission/test`: would this Compose project be admitted?
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdmissionTestRequest {
    /// The project, as `corral up` sends it.
    pub project: UpRequest,
    /// A policy document to test against instead of the environment's.
    #[serde(default)]
    pub policy: Option<String>,
}

/// One refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefusalView {
    /// The policy key that refuses.
    pub rule: String,
    /// The service.
    pub service: String,
    /// The Compose key that asks for it.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// The verdict of `corral admission test`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdmissionVerdict {
    /// Nothing is refused.
    pub admitted: bool,
    /// Every refusal.
    pub refusals: Vec<RefusalView>,
    /// What the test could not decide without asking registries (tags `up` resolves).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// `POST /v1/hosts/{id}/images`: pull an image on one host.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// The reference to pull.
    pub image: String,
}

/// A secret as `corral secret ls` shows it: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretView {
    /// The environment of its stack.
    pub environment: String,
    /// The stack that ships it.
    pub stack: String,
    /// Its name in the Compose file.
    pub name: String,
    /// The first 12 hex digits of its content's SHA-256: a new value is a new version.
    pub version: String,
    /// The services that mount it, and where.
    pub mounts: Vec<String>,
}

/// `GET /v1/progress/{id}?after=N`: what a long `up` has said since line N.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProgressView {
    /// The new lines.
    pub lines: Vec<String>,
    /// The offset to ask from next.
    pub next: usize,
}

/// `PUT /v1/environments/{name}/network-policy`: a new generation of the network policy.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyRequest {
    /// The document (YAML), at most 64 KiB.
    pub document: String,
}

/// `POST /v1/environments/{name}/network-policy/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRollbackRequest {
    /// The generation to apply again; `None`: the one before the one in force.
    #[serde(default)]
    pub generation: Option<i64>,
}

/// One kept generation of a network policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyGenerationView {
    /// Its number.
    pub generation: i64,
    /// RFC 3339, when applied.
    pub applied_at: String,
}

/// What may flow from one service to another under a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowView {
    /// `STACK/SERVICE`.
    pub from: String,
    /// `STACK/SERVICE`.
    pub to: String,
    /// `all traffic`, `nothing`, `8080/tcp, 53/udp`, `all traffic except 22/tcp`.
    pub access: String,
    /// The allowed part, typed (for diagrams and scripts).
    pub allowed: corral_policy::Access,
    /// Why: the rules that opened and closed it, or the default.
    pub reason: String,
}

/// An environment's network policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkPolicyView {
    /// The environment.
    pub environment: String,
    /// The generation in force; `None`: none was ever applied (nothing is filtered).
    pub generation: Option<i64>,
    /// The document as applied (empty when none was).
    pub document: String,
    /// The checked document (`None` when none was applied).
    pub policy: Option<corral_policy::Document>,
    /// RFC 3339, when applied.
    pub applied_at: Option<String>,
    /// What the document names that matches no deployed service.
    pub warnings: Vec<String>,
    /// The deployed services with their labels.
    pub services: Vec<corral_policy::Workload>,
    /// Every ordered pair of deployed services (at most 10,000) and what may flow.
    pub flows: Vec<FlowView>,
    /// Pairs left out beyond the limit.
    pub flows_left_out: usize,
    /// The generations kept, newest first.
    pub history: Vec<PolicyGenerationView>,
}

/// `POST /v1/environments/{name}/network-policy/test`: what would happen to one connection?
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyTestRequest {
    /// `STACK/SERVICE` of a deployed service, or an IPv4 address outside the overlay.
    pub from: String,
    /// `STACK/SERVICE` of a deployed service, or an IPv4 address outside the overlay.
    pub to: String,
    /// `5432/tcp`, `53/udp`, `5432` (TCP) or `icmp`.
    pub traffic: String,
    /// Test this document instead of the one in force.
    #[serde(default)]
    pub document: Option<String>,
}

/// The answer of a policy test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyTestAnswer {
    /// `allow` or `deny`.
    pub action: corral_policy::Action,
    /// What decided, for people: `allow[0] "web-to-api"`, `the default (deny)`.
    pub decided_by: String,
    /// The deciding rule as data (`None`: a default, or not governed).
    pub rule: Option<corral_policy::RuleId>,
    /// The generation tested (`None`: a document given with the request, or none applied).
    pub generation: Option<i64>,
}

/// `POST /v1/environments/{name}/network-policy/diff`: what changes between two documents.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDiffRequest {
    /// The old side: a generation (`None`: the one before the new side's, or the one in
    /// force when `document` is given).
    #[serde(default)]
    pub from: Option<i64>,
    /// The new side as a document not applied yet (`None`: the one in force).
    #[serde(default)]
    pub document: Option<String>,
}

/// What changes for the deployed services between two policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyDiffView {
    /// The old side (`generation N`, or `none` when no policy was in force).
    pub from: String,
    /// The new side (`generation N` or `the document given`).
    pub to: String,
    /// Each pair of services whose flow changes: before → after.
    pub changes: Vec<FlowChange>,
    /// Whether the documents themselves differ (a rule that matches nothing today still
    /// counts).
    pub documents_differ: bool,
}

/// One pair of services whose flow changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowChange {
    /// `STACK/SERVICE`.
    pub from: String,
    /// `STACK/SERVICE`.
    pub to: String,
    /// What may flow before.
    pub before: String,
    /// What may flow after.
    pub after: String,
}
