//! The input: what corral knows about a deployment (server endpoints, hosts, environments,
//! published ports, admin and egress settings). Plain data, `serde` both ways, no validation
//! here: [`crate::plan()`] validates and explains every problem.
//!
//! CIDR fields are strings on purpose, so that a bad one is reported by the planner with the
//! field and the service it belongs to (`published port web 80/tcp, source 10.0.0.1/8: ...`)
//! instead of a bare deserialization error.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::net::{PortRange, Protocol};

/// Default port of the server's single HTTPS listener (API and agent tunnel).
pub const DEFAULT_SERVER_PORT: u16 = 8443;
/// Default UDP port of the encrypted overlay (WireGuard protocol).
pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;
/// Default UDP port of the unencrypted `vxlan` overlay.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Default PostgreSQL port.
pub const DEFAULT_DATASTORE_PORT: u16 = 5432;
/// SSH.
pub const SSH_PORT: u16 = 22;

fn default_server_name() -> String {
    "server".to_string()
}
fn default_server_port() -> u16 {
    DEFAULT_SERVER_PORT
}
fn default_datastore_name() -> String {
    "datastore".to_string()
}
fn default_datastore_port() -> u16 {
    DEFAULT_DATASTORE_PORT
}
fn default_wireguard_port() -> u16 {
    DEFAULT_WIREGUARD_PORT
}
fn default_vxlan_port() -> u16 {
    DEFAULT_VXLAN_PORT
}
fn default_tcp() -> Protocol {
    Protocol::Tcp
}
fn default_bridges() -> Vec<String> {
    vec!["docker0".to_string(), "br-*".to_string()]
}

/// Everything the planner needs to know about one corral deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The corral server (control plane), its replicas and datastore.
    pub server: Server,
    /// The hosts running `corral agent`.
    #[serde(default)]
    pub hosts: Vec<Host>,
    /// Environments (overlay scopes). When empty, one implicit environment named `default`
    /// with the encrypted overlay on 51820/udp holds every host.
    #[serde(default)]
    pub environments: Vec<Environment>,
    /// Ports that services publish on hosts.
    #[serde(default)]
    pub published: Vec<PublishedPort>,
    /// Where administrators come from. When non-empty: SSH (22/tcp) is allowed from these
    /// CIDRs to every server and host, and the server API is limited to them too (unless
    /// `api_cidrs` says otherwise). When empty: no SSH rule at all.
    #[serde(default)]
    pub admin_cidrs: Vec<String>,
    /// Who may reach the server API. `None`: `admin_cidrs` if given, else
    /// `0.0.0.0/0` and `::/0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_cidrs: Option<Vec<String>>,
    /// DNS resolvers the machines use (egress 53/udp+tcp is limited to them). Empty: any.
    #[serde(default)]
    pub dns_resolvers: Vec<String>,
    /// NTP servers the machines use (egress 123/udp is limited to them). Empty: any.
    #[serde(default)]
    pub ntp_servers: Vec<String>,
    /// Where image registries are (egress 443/tcp from hosts for image pulls). Empty: any.
    #[serde(default)]
    pub registry_cidrs: Vec<String>,
    /// Security group ids (placeholders by default) used by the AWS renderers.
    #[serde(default)]
    pub security_groups: SecurityGroupIds,
    /// Also allow inbound ICMP "fragmentation needed" / ICMPv6 "packet too big" from anywhere
    /// (path MTU discovery through tunnels). Off by default.
    #[serde(default)]
    pub allow_path_mtu_icmp: bool,
    /// Interfaces behind which containers live on a host: the host rulesets accept DNS
    /// (53/udp+tcp) from them for the agent's DNS responder, which listens only on the bridge
    /// address. nftables-style wildcards (`br-*`) are allowed.
    #[serde(default = "default_bridges")]
    pub bridge_interfaces: Vec<String>,
}

impl Topology {
    /// A topology with only a server at the given addresses, default settings otherwise.
    pub fn new(server: Server) -> Topology {
        Topology {
            server,
            hosts: Vec::new(),
            environments: Vec::new(),
            published: Vec::new(),
            admin_cidrs: Vec::new(),
            api_cidrs: None,
            dns_resolvers: Vec::new(),
            ntp_servers: Vec::new(),
            registry_cidrs: Vec::new(),
            security_groups: SecurityGroupIds::default(),
            allow_path_mtu_icmp: false,
            bridge_interfaces: default_bridges(),
        }
    }
}

/// The corral server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Display name.
    #[serde(default = "default_server_name")]
    pub name: String,
    /// Addresses of the server machine as hosts and users reach it.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
    /// Addresses the listener binds; empty (or `0.0.0.0`/`::`) means all.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub listen_addresses: Vec<IpAddr>,
    /// Port of the HTTPS listener (API and the `/v1/connect` agent tunnel).
    #[serde(default = "default_server_port")]
    pub listen_port: u16,
    /// The URL agents and users are given, e.g. `https://corral.example.com:8443`. Its port
    /// (default 443 when the URL names none, `listen_port` when no URL is given) is what hosts
    /// dial out to. An IP literal host counts as a server address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_url: Option<String>,
    /// Further server replicas sharing one PostgreSQL datastore.
    #[serde(default)]
    pub replicas: Vec<Machine>,
    /// PostgreSQL datastore (HA setups). `None`: embedded SQLite, no flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<Datastore>,
}

impl Server {
    /// A server with the given addresses and default settings.
    pub fn at(addresses: Vec<IpAddr>) -> Server {
        Server {
            name: default_server_name(),
            addresses,
            listen_addresses: Vec::new(),
            listen_port: DEFAULT_SERVER_PORT,
            advertised_url: None,
            replicas: Vec::new(),
            datastore: None,
        }
    }
}

/// A named machine with addresses (server replica).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Name.
    pub name: String,
    /// Addresses.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
}

/// The PostgreSQL datastore shared by server replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Datastore {
    /// Display name.
    #[serde(default = "default_datastore_name")]
    pub name: String,
    /// Addresses (needed only by CIDR-based formats).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
    /// PostgreSQL port.
    #[serde(default = "default_datastore_port")]
    pub port: u16,
}

/// What a host does besides running the agent.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum HostRole {
    /// Runs only the agent (the default).
    #[default]
    Worker,
    /// Also runs `corral server`: the machine is in both the server and the host group.
    Server,
}

/// A host running `corral agent`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Unique host name.
    pub name: String,
    /// Addresses peers reach it at (IPv4 and/or IPv6). May be empty: group-based formats
    /// (AWS, Terraform, Markdown) still work, CIDR-based ones cannot express the host.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
    /// Free-form labels (shown, not interpreted by the planner).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Role; `None` means [`HostRole::Worker`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<HostRole>,
    /// Environment name; may be omitted when the topology has at most one environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

impl Host {
    /// A worker host with the given addresses.
    pub fn new(name: &str, addresses: Vec<IpAddr>) -> Host {
        Host {
            name: name.to_string(),
            addresses,
            labels: BTreeMap::new(),
            role: None,
            environment: None,
        }
    }

    /// The effective role.
    pub fn role(&self) -> HostRole {
        self.role.unwrap_or_default()
    }
}

/// An environment: a set of hosts sharing one overlay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Unique name.
    pub name: String,
    /// Overlay between the environment's hosts.
    #[serde(default)]
    pub overlay: Overlay,
}

/// Host-to-host overlay mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum Overlay {
    /// WireGuard protocol (encrypted), UDP.
    Encrypted {
        /// UDP port, default 51820.
        #[serde(default = "default_wireguard_port")]
        port: u16,
    },
    /// VXLAN (cleartext, trusted networks only), UDP.
    Vxlan {
        /// UDP port, default 4789.
        #[serde(default = "default_vxlan_port")]
        port: u16,
    },
}

impl Default for Overlay {
    fn default() -> Overlay {
        Overlay::Encrypted {
            port: DEFAULT_WIREGUARD_PORT,
        }
    }
}

impl Overlay {
    /// The UDP port.
    pub fn port(&self) -> u16 {
        match self {
            Overlay::Encrypted { port } | Overlay::Vxlan { port } => *port,
        }
    }

    /// True for the WireGuard-protocol mode.
    pub fn is_encrypted(&self) -> bool {
        matches!(self, Overlay::Encrypted { .. })
    }

    /// Short label: `overlay 51820/udp, encrypted` or `vxlan 4789/udp, cleartext`.
    pub fn label(&self) -> String {
        match self {
            Overlay::Encrypted { port } => format!("overlay {port}/udp, encrypted"),
            Overlay::Vxlan { port } => format!("vxlan {port}/udp, cleartext"),
        }
    }
}

/// A port a service publishes on one host or on every host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishedPort {
    /// Service name.
    pub service: String,
    /// Stack the service belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// Host that publishes it; `None` means every host (a global service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port or range (`80`, `"30000-30010"`).
    pub port: PortRange,
    /// `tcp` (default) or `udp`.
    #[serde(default = "default_tcp")]
    pub protocol: Protocol,
    /// Allowed source CIDRs; `None` means `0.0.0.0/0` and `::/0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
}

impl PublishedPort {
    /// `web` or `shop/web`.
    pub fn display_name(&self) -> String {
        match &self.stack {
            Some(stack) => format!("{stack}/{}", self.service),
            None => self.service.clone(),
        }
    }
}

/// Security-group ids for the AWS renderers (placeholders unless set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityGroupIds {
    /// Group of the server and its replicas.
    pub server: String,
    /// Group of the hosts.
    pub hosts: String,
    /// Group of the PostgreSQL datastore.
    pub datastore: String,
}

impl Default for SecurityGroupIds {
    fn default() -> SecurityGroupIds {
        SecurityGroupIds {
            server: "sg-corral-server".to_string(),
            hosts: "sg-corral-hosts".to_string(),
            datastore: "sg-corral-datastore".to_string(),
        }
    }
}
