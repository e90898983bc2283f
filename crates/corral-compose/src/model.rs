//! The typed result: a [`Project`] of [`Service`]s with everything corral acts on, and nothing
//! it does not (ignored keys are in [`crate::Loaded::warnings`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

/// A loaded stack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Project {
    /// The stack's name: `-p NAME`, else the top-level `name:`.
    pub name: String,
    pub services: BTreeMap<String, Service>,
    /// Named volumes declared at the top level.
    pub volumes: BTreeSet<String>,
    /// Top-level `configs:`, by name.
    pub configs: BTreeMap<String, FileSource>,
    /// Top-level `secrets:`, by name.
    pub secrets: BTreeMap<String, FileSource>,
    /// Service names, every service after the services it `depends_on` (ties broken by name).
    pub start_order: Vec<String>,
    /// `x-corral: policy:` — the stack's own network policy rules (as written; the server
    /// confines them to the stack).
    pub policy: Option<corral_policy::StackRules>,
}

/// One service, with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// The image to run: `image:`, else (with `build:`) `PROJECT-SERVICE` in lower case, the
    /// name Compose gives the image it builds.
    pub image: String,
    /// `build:`: the image is built from the project's files (and tagged [`Service::image`]).
    pub build: Option<Build>,
    /// `None`: the image's CMD. Strings are split like a shell would (no expansion).
    pub command: Option<Vec<String>>,
    /// `None`: the image's ENTRYPOINT; `Some(vec![])` clears it.
    pub entrypoint: Option<Vec<String>>,
    /// `env_file:` files first, then `environment:` on top.
    pub environment: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    pub expose: Vec<Expose>,
    pub volumes: Vec<Mount>,
    pub restart: RestartPolicy,
    pub healthcheck: Healthcheck,
    pub depends_on: BTreeMap<String, Condition>,
    /// `deploy.replicas` or `scale` (1 when neither is given).
    pub replicas: u32,
    pub constraints: Vec<Constraint>,
    pub reservations: Reservations,
    pub update: UpdateConfig,
    /// 10 s when not given.
    pub stop_grace_period: Duration,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub hostname: Option<String>,
    /// Networks named by the service. Today every service of a stack is attached to the stack's
    /// one default network whatever is named here.
    pub networks: Vec<String>,
    /// `x-corral.affinity`: services of this stack to place on the same host as this one.
    pub affinity: Vec<String>,
    /// `x-corral.anti_affinity`: services of this stack never to share a host with this one
    /// (naming the service itself spreads its replicas one per host).
    pub anti_affinity: Vec<String>,
    /// `pull_policy`: [`PullPolicy::Missing`] when not given, as in Compose.
    pub pull_policy: PullPolicy,
    /// `privileged` (false when not given).
    pub privileged: bool,
    /// `cap_add`: capability names in upper case without the `CAP_` prefix (`NET_ADMIN`, or
    /// `ALL`), each once, in the order written.
    pub cap_add: Vec<String>,
    /// `cap_drop`: as `cap_add`.
    pub cap_drop: Vec<String>,
    /// `network_mode` ([`NetworkMode::Default`] when not given).
    pub network_mode: NetworkMode,
    /// `pid: host`: the containers share the host's process namespace.
    pub pid_host: bool,
    /// `devices`: host devices to make available in the containers.
    pub devices: Vec<Device>,
    /// `configs:`: top-level configs mounted as files, in the order written.
    pub configs: Vec<FileRef>,
    /// `secrets:`: top-level secrets mounted as files, in the order written.
    pub secrets: Vec<FileRef>,
}

/// `build:`: what to build the service's image from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Build {
    /// The context directory as written (relative to the project directory, e.g. `.` or
    /// `./api`); the loader has checked that it stays inside the project directory.
    pub context: String,
    /// The Dockerfile, relative to the context (and inside it); `None`: `Dockerfile`.
    pub dockerfile: Option<String>,
    /// `args:` (map or `KEY=VALUE` list; a key without value takes it from the interpolation
    /// environment if set, else is dropped).
    pub args: BTreeMap<String, String>,
    /// `target:` stage.
    pub target: Option<String>,
}

/// Where a config's or secret's content comes from (top-level `configs:` / `secrets:`).
/// A value read here may be a secret: neither `Debug` nor `Serialize` shows it (only its
/// length), so no log, error or `corral config` output can.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum FileSource {
    /// `file:` — a path relative to the project directory (normalised by
    /// [`crate::project_path`]).
    File { path: String },
    /// `environment:` — the value of this variable in the interpolation environment
    /// (`Input.env` / env files), read at load time.
    Environment {
        variable: String,
        #[serde(serialize_with = "hidden")]
        value: String,
    },
    /// `content:` (configs only in the spec; accepted for both) — inline text, after
    /// interpolation.
    Content {
        #[serde(serialize_with = "hidden")]
        value: String,
    },
}

fn hidden<S: serde::Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("<{} bytes, not shown>", value.len()))
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileSource::File { path } => f.debug_struct("File").field("path", path).finish(),
            FileSource::Environment { variable, value } => f
                .debug_struct("Environment")
                .field("variable", variable)
                .field("bytes", &value.len())
                .finish(),
            FileSource::Content { value } => f
                .debug_struct("Content")
                .field("bytes", &value.len())
                .finish(),
        }
    }
}

/// A service's use of a config or secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRef {
    /// The top-level name.
    pub source: String,
    /// Absolute path in the container: configs default to `/<source>`, secrets to
    /// `/run/secrets/<source>`; a relative `target` is, for secrets, under `/run/secrets/`,
    /// for configs an error.
    pub target: String,
    /// File mode; default 0o444.
    pub mode: u32,
}

/// `pull_policy`: when a host pulls the image before it creates a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull every time, even when the host has the image (to follow a moving tag).
    Always,
    /// Pull only when the host does not have the image (`missing` or `if_not_present`; the
    /// Compose default).
    #[default]
    Missing,
    /// Never pull: the image must already be on the host.
    Never,
}

/// `network_mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The stack's network (no `network_mode`, or `bridge`).
    #[default]
    Default,
    /// The host's network stack: the containers listen on the host's addresses directly.
    Host,
    /// No network but loopback.
    None,
}

/// A `devices` entry (`HOST[:CONTAINER[:PERMISSIONS]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// Absolute path of the device on the host.
    pub host: String,
    /// Absolute path in the container (the host path when not given).
    pub container: String,
    /// Some of `r` (read), `w` (write), `m` (mknod), in that order; `rwm` when not given.
    pub permissions: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// An inclusive port range (`start == end` for one port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

/// A container port, published on the host when `published` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    /// Host port(s); `None` leaves the port unpublished.
    pub published: Option<PortRange>,
    pub target: u16,
    pub protocol: Protocol,
    /// Host address to bind, when given (`127.0.0.1:8080:80`).
    pub host_ip: Option<IpAddr>,
}

/// A port exposed to the stack's network only (`expose:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expose {
    pub ports: PortRange,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Mount {
    /// A named volume of the stack (declared under top-level `volumes:`).
    Named {
        source: String,
        target: String,
        read_only: bool,
    },
    /// A host path, kept as written: absolute (a path on the host that runs the container),
    /// or relative to the project directory (the first Compose file's directory on the
    /// machine that sent it) and inside it — never `~`, never climbing out with `..`. A
    /// relative path names files shipped with the stack; [`crate::project_path`] normalises it.
    Bind {
        source: String,
        target: String,
        read_only: bool,
    },
    /// A volume without a name, made for the container.
    Anonymous { target: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "policy", rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    Always,
    OnFailure { max_retries: Option<u32> },
    UnlessStopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Healthcheck {
    /// No `healthcheck:`: whatever the image says.
    Inherit,
    /// `disable: true` or `test: ["NONE"]`.
    Disabled,
    Custom(HealthcheckConfig),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthcheckConfig {
    /// `["CMD", …]` or `["CMD-SHELL", "…"]`; `None` keeps the image's test (timings only).
    pub test: Option<Vec<String>>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub retries: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    ServiceStarted,
    ServiceHealthy,
}

/// `deploy.placement.constraints` entry: `node.hostname == x`, `node.labels.K != v`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Constraint {
    pub attribute: ConstraintAttribute,
    pub op: ConstraintOp,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintAttribute {
    Hostname,
    Label(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConstraintOp {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

/// `deploy.resources.reservations` (0 = none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Reservations {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// `deploy.update_config`: defaults parallelism 1, delay 0, stop-first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UpdateConfig {
    pub parallelism: u32,
    pub delay: Duration,
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            parallelism: 1,
            delay: Duration::ZERO,
            order: UpdateOrder::StopFirst,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    StartFirst,
    StopFirst,
}
