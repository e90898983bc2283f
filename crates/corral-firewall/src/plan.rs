//! The planner: [`plan`] turns a [`Topology`] into the minimal set of [`Flow`]s, one row per
//! rule of a security group, with the same columns as a cloud provider's security-group table
//! (direction, protocol, port, source, destination, purpose, impact if removed).
//!
//! Invariants, tested in `tests/`:
//! - The only control-plane flow is agent → server (host group outbound, server group
//!   inbound). No flow has the server group as source and a host as destination.
//! - With defaults, the host group has no inbound TCP port except published service ports,
//!   and no rule has `0.0.0.0/0` / `::/0` as source except published ports and the server API.
//! - The overlay port is open only between hosts (of the same environment when several exist).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::net::{Cidr, CidrError, Family, PortRange, Protocol, minimize};
use crate::topology::{Environment, HostRole, Overlay, PublishedPort, SSH_PORT, Topology};

/// Most hosts a topology may hold.
pub const MAX_HOSTS: usize = 4096;
/// Most published ports a topology may hold.
pub const MAX_PUBLISHED: usize = 8192;
/// Most environments a topology may hold.
pub const MAX_ENVIRONMENTS: usize = 256;
/// Most entries in one CIDR or address list.
pub const MAX_LIST: usize = 1024;
/// Longest name (host, service, environment...).
pub const MAX_NAME: usize = 63;
/// Published ranges wider than this draw a warning.
pub const WIDE_RANGE_WARNING: u32 = 1024;

/// The security groups corral's machines fall into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    /// The server and its replicas (and hosts with role `server`).
    Server,
    /// Every host running the agent.
    Hosts,
    /// The PostgreSQL datastore.
    Datastore,
}

impl GroupKind {
    /// `server group`, `host group`, `datastore group`.
    pub fn label(self) -> &'static str {
        match self {
            GroupKind::Server => "server group",
            GroupKind::Hosts => "host group",
            GroupKind::Datastore => "datastore group",
        }
    }
}

/// Rule direction, relative to the group the rule belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic entering the group's members.
    Inbound,
    /// Traffic leaving the group's members.
    Outbound,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Inbound => "Inbound",
            Direction::Outbound => "Outbound",
        })
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Endpoint {
    /// Every member of a security group.
    Group(GroupKind),
    /// The hosts of one environment (a subset of the host group).
    Environment(String),
    /// One host (a member of the host group).
    Host(String),
    /// Explicit CIDR blocks (minimal: no duplicates, none inside another).
    Cidrs(Vec<Cidr>),
}

impl Endpoint {
    /// `0.0.0.0/0` and `::/0`.
    pub fn anywhere() -> Endpoint {
        Endpoint::Cidrs(vec![Cidr::any_v4(), Cidr::any_v6()])
    }

    /// True when the endpoint holds `0.0.0.0/0` or `::/0`.
    pub fn includes_anywhere(&self) -> bool {
        matches!(self, Endpoint::Cidrs(c) if c.iter().any(Cidr::is_any))
    }

    /// True for endpoints inside the host group (the group, an environment or one host).
    pub fn is_hosts(&self) -> bool {
        matches!(
            self,
            Endpoint::Group(GroupKind::Hosts) | Endpoint::Environment(_) | Endpoint::Host(_)
        )
    }

    /// The security group a group-based format uses for this endpoint (`None` for CIDRs).
    pub fn group(&self) -> Option<GroupKind> {
        match self {
            Endpoint::Group(g) => Some(*g),
            Endpoint::Environment(_) | Endpoint::Host(_) => Some(GroupKind::Hosts),
            Endpoint::Cidrs(_) => None,
        }
    }
}

/// ICMP messages a flow may allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IcmpMatch {
    /// ICMP type 3 code 4 "fragmentation needed" / ICMPv6 type 2 "packet too big".
    PathMtu,
}

impl IcmpMatch {
    /// ICMP (IPv4) type and code.
    pub fn v4_type_code(self) -> (u8, u8) {
        (3, 4)
    }

    /// ICMPv6 type and code.
    pub fn v6_type_code(self) -> (u8, u8) {
        (2, 0)
    }
}

/// Protocol and ports of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "protocol", rename_all = "lowercase")]
pub enum Traffic {
    /// TCP to the given destination ports.
    Tcp {
        /// Destination ports.
        ports: PortRange,
    },
    /// UDP to the given destination ports.
    Udp {
        /// Destination ports.
        ports: PortRange,
    },
    /// ICMP / ICMPv6 messages.
    Icmp {
        /// Which messages.
        icmp: IcmpMatch,
    },
}

impl Traffic {
    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        match self {
            Traffic::Tcp { .. } => Protocol::Tcp,
            Traffic::Udp { .. } => Protocol::Udp,
            Traffic::Icmp { .. } => Protocol::Icmp,
        }
    }

    /// Destination ports (`None` for ICMP).
    pub fn ports(&self) -> Option<PortRange> {
        match self {
            Traffic::Tcp { ports } | Traffic::Udp { ports } => Some(*ports),
            Traffic::Icmp { .. } => None,
        }
    }

    fn of(protocol: Protocol, ports: PortRange) -> Traffic {
        match protocol {
            Protocol::Udp => Traffic::Udp { ports },
            // ICMP is never published (refused by the planner); TCP is the default.
            Protocol::Tcp | Protocol::Icmp => Traffic::Tcp { ports },
        }
    }
}

/// Why a flow exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// Users / CLI → server API.
    Api,
    /// Agent → server tunnel (the only control-plane flow).
    AgentTunnel,
    /// Host ↔ host overlay.
    Overlay,
    /// A port a service publishes.
    Published,
    /// SSH administration.
    Ssh,
    /// Server → PostgreSQL.
    Datastore,
    /// Server → server: a waiting server relays its connections to the active one.
    ServerRelay,
    /// DNS egress.
    Dns,
    /// NTP egress.
    Ntp,
    /// Image pulls from registries.
    ImagePull,
    /// ICMP for path MTU discovery.
    PathMtu,
}

/// One rule of one security group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// The group the rule belongs to.
    pub group: GroupKind,
    /// Direction relative to `group`.
    pub direction: Direction,
    /// Protocol and ports.
    #[serde(flatten)]
    pub traffic: Traffic,
    /// Where the traffic comes from.
    pub source: Endpoint,
    /// Where it goes.
    pub destination: Endpoint,
    /// Why the flow exists (machine-readable).
    pub kind: FlowKind,
    /// Service name for published ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Why the flow exists (for people).
    pub purpose: String,
    /// What breaks without it.
    pub impact_if_removed: String,
}

impl Flow {
    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        self.traffic.protocol()
    }

    /// Destination ports (`None` for ICMP).
    pub fn ports(&self) -> Option<PortRange> {
        self.traffic.ports()
    }

    /// The other side: the source of an inbound rule, the destination of an outbound one.
    pub fn peer(&self) -> &Endpoint {
        match self.direction {
            Direction::Inbound => &self.source,
            Direction::Outbound => &self.destination,
        }
    }

    /// The group's own side: the destination of an inbound rule, the source of an outbound one.
    pub fn local(&self) -> &Endpoint {
        match self.direction {
            Direction::Inbound => &self.destination,
            Direction::Outbound => &self.source,
        }
    }
}

/// A machine in a security group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Name.
    pub name: String,
    /// Addresses (may be empty).
    pub addresses: Vec<IpAddr>,
}

/// A security group and its members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SecurityGroup {
    /// Which group.
    pub kind: GroupKind,
    /// Security group id (placeholder such as `sg-corral-server` unless set in the topology).
    pub id: String,
    /// Name (`corral-server`, `corral-hosts`, `corral-datastore`).
    pub name: String,
    /// One-line description.
    pub description: String,
    /// Members.
    pub members: Vec<Member>,
}

/// A host after validation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedHost {
    /// Name.
    pub name: String,
    /// Addresses (may be empty).
    pub addresses: Vec<IpAddr>,
    /// Effective environment.
    pub environment: String,
    /// Effective role.
    pub role: HostRole,
}

/// Something worth telling the user that does not stop planning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanWarning {
    /// What it is about (`host web-1`, `admin_cidrs`, ...).
    pub subject: String,
    /// The explanation.
    pub message: String,
}

impl fmt::Display for PlanWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

/// The result of planning: validated input, groups, flows and warnings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// The topology the plan was made from.
    pub topology: Topology,
    /// Effective environments (an implicit `default` when the topology has none).
    pub environments: Vec<Environment>,
    /// Hosts with their effective environment and role.
    pub hosts: Vec<PlannedHost>,
    /// Security groups (server, hosts, and datastore when there is one).
    pub groups: Vec<SecurityGroup>,
    /// The flows, grouped by security group, inbound first.
    pub flows: Vec<Flow>,
    /// Warnings.
    pub warnings: Vec<PlanWarning>,
    /// Port hosts dial to reach the server (the advertised port).
    pub agent_port: u16,
}

/// Addresses of an endpoint as CIDR blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expanded {
    /// Minimal CIDR list.
    pub cidrs: Vec<Cidr>,
    /// Members of the endpoint that have no address.
    pub unaddressed: Vec<String>,
}

impl Expanded {
    /// The blocks of one family.
    pub fn family(&self, family: Family) -> Vec<Cidr> {
        self.cidrs
            .iter()
            .copied()
            .filter(|c| c.family() == family)
            .collect()
    }
}

impl Plan {
    /// The group of a kind, if the plan has it.
    pub fn group(&self, kind: GroupKind) -> Option<&SecurityGroup> {
        self.groups.iter().find(|g| g.kind == kind)
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Option<&PlannedHost> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The members an endpoint stands for (`None` for explicit CIDRs).
    pub fn members(&self, endpoint: &Endpoint) -> Option<Vec<Member>> {
        match endpoint {
            Endpoint::Group(kind) => Some(
                self.group(*kind)
                    .map(|g| g.members.clone())
                    .unwrap_or_default(),
            ),
            Endpoint::Environment(env) => Some(
                self.hosts
                    .iter()
                    .filter(|h| &h.environment == env)
                    .map(|h| Member {
                        name: h.name.clone(),
                        addresses: h.addresses.clone(),
                    })
                    .collect(),
            ),
            Endpoint::Host(name) => Some(
                self.host(name)
                    .map(|h| Member {
                        name: h.name.clone(),
                        addresses: h.addresses.clone(),
                    })
                    .into_iter()
                    .collect(),
            ),
            Endpoint::Cidrs(_) => None,
        }
    }

    /// The endpoint as CIDR blocks (/32 and /128 for machines), for formats that cannot
    /// reference groups. Members without an address are listed in `unaddressed`.
    pub fn expand(&self, endpoint: &Endpoint) -> Expanded {
        match self.members(endpoint) {
            None => match endpoint {
                Endpoint::Cidrs(c) => Expanded {
                    cidrs: c.clone(),
                    unaddressed: Vec::new(),
                },
                _ => Expanded::default(),
            },
            Some(members) => {
                let mut cidrs = Vec::new();
                let mut unaddressed = Vec::new();
                for m in members {
                    if m.addresses.is_empty() {
                        unaddressed.push(m.name.clone());
                    }
                    cidrs.extend(m.addresses.iter().map(|a| Cidr::host(*a)));
                }
                let (cidrs, _) = minimize(&cidrs);
                Expanded { cidrs, unaddressed }
            }
        }
    }

    /// Does `endpoint` include the host `name`?
    pub fn endpoint_has_host(&self, endpoint: &Endpoint, name: &str) -> bool {
        match endpoint {
            Endpoint::Group(GroupKind::Hosts) => self.host(name).is_some(),
            Endpoint::Group(GroupKind::Server) => {
                self.host(name).is_some_and(|h| h.role == HostRole::Server)
            }
            Endpoint::Group(GroupKind::Datastore) => false,
            Endpoint::Environment(env) => self.host(name).is_some_and(|h| &h.environment == env),
            Endpoint::Host(h) => h == name,
            Endpoint::Cidrs(_) => false,
        }
    }

    /// A readable label of an endpoint, with group ids.
    pub fn endpoint_label(&self, endpoint: &Endpoint) -> String {
        match endpoint {
            Endpoint::Group(kind) => match self.group(*kind) {
                Some(g) => format!("{} ({})", kind.label(), g.id),
                None => kind.label().to_string(),
            },
            Endpoint::Environment(env) => format!("hosts of environment {env}"),
            Endpoint::Host(h) => format!("host {h}"),
            Endpoint::Cidrs(c) => c.iter().map(Cidr::to_string).collect::<Vec<_>>().join(", "),
        }
    }
}

/// Why a topology cannot be planned. Every variant names what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A CIDR was refused (host bits set, bad prefix, not an address...).
    #[error("{context}: {error}")]
    BadCidr {
        /// Which field or service.
        context: String,
        /// What is wrong.
        error: CidrError,
    },
    /// A name contains characters that renderers could not carry safely.
    #[error(
        "{what} name `{name}` is not allowed: use 1-63 characters from A-Z a-z 0-9 . _ -, \
         starting with a letter or digit"
    )]
    BadName {
        /// host, service, environment...
        what: &'static str,
        /// The name (escaped for display).
        name: String,
    },
    /// Two things of one kind share a name.
    #[error("{what} name `{name}` is used twice")]
    DuplicateName {
        /// host, environment...
        what: &'static str,
        /// The name.
        name: String,
    },
    /// An address that peers cannot use.
    #[error("{owner}: address {address} {reason}")]
    BadAddress {
        /// Which machine.
        owner: String,
        /// The address.
        address: IpAddr,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// One address on two machines.
    #[error(
        "address {address} belongs to both {first} and {second}; a firewall cannot tell them \
         apart{hint}"
    )]
    DuplicateAddress {
        /// The address.
        address: IpAddr,
        /// First owner.
        first: String,
        /// Second owner.
        second: String,
        /// A hint (e.g. about `role: server`).
        hint: String,
    },
    /// A host names an environment that does not exist.
    #[error(
        "host `{host}` names environment `{environment}`, which is not defined (defined: {known})"
    )]
    UnknownEnvironment {
        /// The host.
        host: String,
        /// The environment it names.
        environment: String,
        /// The defined ones.
        known: String,
    },
    /// A host names no environment although several exist.
    #[error(
        "host `{host}` names no environment, but the topology defines {count}; set its \
         `environment`"
    )]
    AmbiguousEnvironment {
        /// The host.
        host: String,
        /// How many environments exist.
        count: usize,
    },
    /// A published port names a host that does not exist.
    #[error("service `{service}` is published on host `{host}`, which is not in the topology")]
    UnknownHost {
        /// The service.
        service: String,
        /// The host it names.
        host: String,
    },
    /// A service publishes a port corral itself needs on that machine.
    #[error(
        "service `{service}` publishes {ports}/{protocol} on {on}, but corral needs \
         {port}/{protocol} there for {used_by}; publish the service on another port"
    )]
    PortReservedByCorral {
        /// The service.
        service: String,
        /// `host web-1` or `every host`.
        on: String,
        /// Protocol.
        protocol: Protocol,
        /// What the service publishes.
        ports: PortRange,
        /// The port corral needs.
        port: u16,
        /// What corral needs it for.
        used_by: String,
    },
    /// Two services publish overlapping ports on one host.
    #[error(
        "services `{first}` and `{second}` both publish {protocol} ports on host `{host}` \
         ({first_ports} and {second_ports} overlap)"
    )]
    PortClash {
        /// First service.
        first: String,
        /// Second service.
        second: String,
        /// Where.
        host: String,
        /// Protocol.
        protocol: Protocol,
        /// First service's ports.
        first_ports: PortRange,
        /// Second service's ports.
        second_ports: PortRange,
    },
    /// ICMP is not a publishable protocol.
    #[error("service `{service}` publishes ICMP; only tcp and udp ports can be published")]
    PublishedIcmp {
        /// The service.
        service: String,
    },
    /// Port 0 where a port is needed.
    #[error("{context}: port 0 is not a usable port")]
    ZeroPort {
        /// Which field.
        context: String,
    },
    /// The advertised URL cannot be used.
    #[error("server advertised_url `{url}`: {reason}")]
    BadAdvertisedUrl {
        /// The URL (escaped).
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The server would be unreachable from hosts.
    #[error(
        "server listen_addresses are all loopback ({addresses}): agents on other hosts could never connect"
    )]
    ServerListensOnLoopback {
        /// The addresses.
        addresses: String,
    },
    /// A list is longer than the planner accepts.
    #[error("too many {what}: {count} (limit {limit})")]
    TooMany {
        /// Which list.
        what: String,
        /// How many were given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An interface pattern that renderers could not carry safely.
    #[error(
        "bridge interface `{name}` is not allowed: use 1-15 characters from A-Z a-z 0-9 . _ - \
         with an optional trailing *"
    )]
    BadInterface {
        /// The pattern (escaped).
        name: String,
    },
    /// Several problems; each is listed.
    #[error("{} problems in the topology:\n{}", .0.len(), list_errors(.0))]
    Many(Vec<PlanError>),
}

fn list_errors(errors: &[PlanError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl PlanError {
    /// The individual problems (a single error yields itself).
    pub fn problems(&self) -> Vec<&PlanError> {
        match self {
            PlanError::Many(v) => v.iter().collect(),
            other => vec![other],
        }
    }
}

/// Escapes a user-supplied string for an error message (control characters, long input).
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_debug).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// True for names that every renderer can carry without quoting problems.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_interface(name: &str) -> bool {
    let core = name.strip_suffix('*').unwrap_or(name);
    !core.is_empty()
        && name.len() <= 15
        && core
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parsed advertised URL.
struct Advertised {
    port: u16,
    ip: Option<IpAddr>,
}

fn parse_advertised(url: &str) -> Result<Advertised, String> {
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("wss://") {
        r
    } else {
        return Err("must start with https:// (the server speaks TLS only)".to_string());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("must not contain user information".to_string());
    }
    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let Some((h, tail)) = after.split_once(']') else {
            return Err("unclosed [ in IPv6 host".to_string());
        };
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p),
            None if tail.is_empty() => None,
            None => return Err("unexpected text after ]".to_string()),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host".to_string());
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
    {
        return Err("host contains characters that are not allowed".to_string());
    }
    let port = match port {
        None => 443,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("port `{}` is not 1-65535", shown(p))),
            Ok(p) => p,
        },
    };
    Ok(Advertised {
        port,
        ip: host.parse().ok(),
    })
}

fn address_problem(addr: &IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        return Some("is the unspecified address; give the address peers reach the machine at");
    }
    if addr.is_loopback() {
        return Some("is a loopback address; other machines cannot reach it");
    }
    if addr.is_multicast() {
        return Some("is a multicast address");
    }
    match addr {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("is the broadcast address"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            Some("is an IPv4-mapped IPv6 address; give the IPv4 form")
        }
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some(
            "is an IPv6 link-local address; it is ambiguous without an interface, give a global \
             or unique-local address",
        ),
        _ => None,
    }
}

/// Problems and warnings collected while planning.
#[derive(Default)]
struct Ctx {
    errors: Vec<PlanError>,
    warnings: Vec<PlanWarning>,
}

impl Ctx {
    fn warn(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(PlanWarning {
            subject: subject.into(),
            message: message.into(),
        });
    }

    fn name(&mut self, what: &'static str, name: &str) {
        if !valid_name(name) {
            self.errors.push(PlanError::BadName {
                what,
                name: shown(name),
            });
        }
    }

    fn limit(&mut self, what: &str, count: usize, limit: usize) -> bool {
        if count > limit {
            self.errors.push(PlanError::TooMany {
                what: what.to_string(),
                count,
                limit,
            });
            false
        } else {
            true
        }
    }

    /// Parses and minimises a CIDR list; `None` when it had errors.
    fn cidrs(&mut self, context: &str, list: &[String]) -> Option<Vec<Cidr>> {
        if !self.limit(&format!("entries in {context}"), list.len(), MAX_LIST) {
            return None;
        }
        let mut parsed = Vec::new();
        let mut ok = true;
        for s in list {
            match s.parse::<Cidr>() {
                Ok(c) => parsed.push(c),
                Err(error) => {
                    ok = false;
                    self.errors.push(PlanError::BadCidr {
                        context: context.to_string(),
                        error,
                    });
                }
            }
        }
        if !ok {
            return None;
        }
        let (kept, dropped) = minimize(&parsed);
        for (d, k) in dropped {
            if d == k {
                self.warn(context, format!("{d} is listed twice; kept once"));
            } else {
                self.warn(
                    context,
                    format!(
                        "{d} lies inside {k}; dropped it (normalised, nothing is opened wider)"
                    ),
                );
            }
        }
        Some(kept)
    }

    /// Ends planning with the problems found so far.
    fn stop(&mut self) -> PlanError {
        finish_errors(std::mem::take(&mut self.errors))
    }
}

fn or_anywhere(c: Vec<Cidr>) -> Endpoint {
    if c.is_empty() {
        Endpoint::anywhere()
    } else {
        Endpoint::Cidrs(c)
    }
}

/// Plans the minimal flows for a topology.
///
/// Every problem found is reported (as [`PlanError::Many`] when there are several); warnings
/// that do not stop planning are in [`Plan::warnings`].
pub fn plan(topology: &Topology) -> Result<Plan, PlanError> {
    let mut cx = Ctx::default();
    let checked = check(&mut cx, topology)?;
    let groups = security_groups(&mut cx, topology, &checked);
    let flows = FlowPlanner::flows(topology, &checked);
    warn_about_egress(&mut cx, topology);
    Ok(Plan {
        topology: topology.clone(),
        environments: checked.environments,
        hosts: checked.hosts,
        groups,
        flows,
        warnings: cx.warnings,
        agent_port: checked.ports.agent,
    })
}

/// The topology after every check passed: what the groups and flows are built from.
struct Checked {
    ports: ServerPorts,
    addresses: AddressBook,
    environments: Vec<Environment>,
    hosts: Vec<PlannedHost>,
    cidrs: CidrLists,
    published: Vec<Published>,
}

/// The checking phases, in the order their problems are reported. Each phase records every
/// problem it finds; only a list too long to look at stops planning at once.
fn check(cx: &mut Ctx, t: &Topology) -> Result<Checked, PlanError> {
    check_list_lengths(cx, t)?;
    let host_names = check_names(cx, t)?;
    check_interfaces_and_group_ids(cx, t)?;
    let ports = check_server_ports(cx, t);
    let addresses = check_addresses(cx, t)?;
    let environments = effective_environments(cx, t);
    let hosts = place_hosts(cx, t, &environments);
    let cidrs = parse_cidr_lists(cx, t);
    let published = PublishChecks {
        host_names: &host_names,
        hosts: &hosts,
        environments: &environments,
        listen_port: ports.listen,
        ssh_administered: !cidrs.admin.is_empty(),
    }
    .check_all(cx, &t.published);
    check_port_clashes(cx, &published, &hosts);
    if !cx.errors.is_empty() {
        return Err(cx.stop());
    }
    Ok(Checked {
        ports,
        addresses,
        environments,
        hosts,
        cidrs,
        published,
    })
}

fn check_list_lengths(cx: &mut Ctx, t: &Topology) -> Result<(), PlanError> {
    let hosts_ok = cx.limit("hosts", t.hosts.len(), MAX_HOSTS);
    let pub_ok = cx.limit("published ports", t.published.len(), MAX_PUBLISHED);
    let env_ok = cx.limit("environments", t.environments.len(), MAX_ENVIRONMENTS);
    let rep_ok = cx.limit("server replicas", t.server.replicas.len(), MAX_LIST);
    if !(hosts_ok && pub_ok && env_ok && rep_ok) {
        return Err(cx.stop());
    }
    Ok(())
}

/// Checks the names of machines, environments and services; returns the host names.
fn check_names(cx: &mut Ctx, t: &Topology) -> Result<BTreeSet<String>, PlanError> {
    cx.name("server", &t.server.name);
    for r in &t.server.replicas {
        cx.name("server replica", &r.name);
    }
    if let Some(ds) = &t.server.datastore {
        cx.name("datastore", &ds.name);
    }
    let mut machine_names = BTreeSet::new();
    machine_names.insert(t.server.name.clone());
    for r in &t.server.replicas {
        if !machine_names.insert(r.name.clone()) {
            cx.errors.push(PlanError::DuplicateName {
                what: "server replica",
                name: shown(&r.name),
            });
        }
    }
    let mut host_names = BTreeSet::new();
    for h in &t.hosts {
        cx.name("host", &h.name);
        if !host_names.insert(h.name.clone()) {
            cx.errors.push(PlanError::DuplicateName {
                what: "host",
                name: shown(&h.name),
            });
        }
        if !cx.limit(
            &format!("addresses of host {}", shown(&h.name)),
            h.addresses.len(),
            MAX_LIST,
        ) {
            return Err(cx.stop());
        }
    }
    let mut env_names = BTreeSet::new();
    for e in &t.environments {
        cx.name("environment", &e.name);
        if !env_names.insert(e.name.clone()) {
            cx.errors.push(PlanError::DuplicateName {
                what: "environment",
                name: shown(&e.name),
            });
        }
    }
    for p in &t.published {
        cx.name("service", &p.service);
        if let Some(s) = &p.stack {
            cx.name("stack", s);
        }
    }
    Ok(host_names)
}

fn check_interfaces_and_group_ids(cx: &mut Ctx, t: &Topology) -> Result<(), PlanError> {
    if !cx.limit(
        "bridge interfaces",
        t.bridge_interfaces.len(),
        MAX_ENVIRONMENTS,
    ) {
        return Err(cx.stop());
    }
    for i in &t.bridge_interfaces {
        if !valid_interface(i) {
            cx.errors.push(PlanError::BadInterface { name: shown(i) });
        }
    }
    let sg = &t.security_groups;
    for (what, id) in [
        ("server security group id", &sg.server),
        ("host security group id", &sg.hosts),
        ("datastore security group id", &sg.datastore),
    ] {
        if !valid_name(id) {
            cx.errors.push(PlanError::BadName {
                what,
                name: shown(id),
            });
        }
    }
    Ok(())
}

/// Where the server listens and where agents dial it.
struct ServerPorts {
    /// The port the server listens on.
    listen: u16,
    /// The port agents dial: the advertised URL's, else `listen`.
    agent: u16,
    /// The advertised URL's host when it is an address.
    advertised_ip: Option<IpAddr>,
}

fn check_server_ports(cx: &mut Ctx, t: &Topology) -> ServerPorts {
    let listen_port = t.server.listen_port;
    if listen_port == 0 {
        cx.errors.push(PlanError::ZeroPort {
            context: "server listen_port".to_string(),
        });
    }
    let mut agent_port = listen_port;
    let mut advertised_ip = None;
    if let Some(url) = &t.server.advertised_url {
        match parse_advertised(url) {
            Ok(a) => {
                agent_port = a.port;
                advertised_ip = a.ip;
                if a.port != listen_port {
                    cx.warn(
                        "server advertised_url",
                        format!(
                            "agents dial port {} but the server listens on {listen_port}: a load \
                             balancer or port forward must map {} to {listen_port}; the rules \
                             allow {} out of the hosts and {listen_port} into the server",
                            a.port, a.port, a.port
                        ),
                    );
                }
            }
            Err(reason) => cx.errors.push(PlanError::BadAdvertisedUrl {
                url: shown(url),
                reason,
            }),
        }
    }
    let real_listen: Vec<&IpAddr> = t
        .server
        .listen_addresses
        .iter()
        .filter(|a| !a.is_unspecified())
        .collect();
    if !real_listen.is_empty() && real_listen.iter().all(|a| a.is_loopback()) {
        cx.errors.push(PlanError::ServerListensOnLoopback {
            addresses: real_listen
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    ServerPorts {
        listen: listen_port,
        agent: agent_port,
        advertised_ip,
    }
}

/// The owner of every machine address, so that one address on two machines is refused.
#[derive(Default)]
struct AddressBook {
    /// Owner, and whether it is on the server side (server, replica).
    owners: BTreeMap<IpAddr, (String, bool)>,
}

impl AddressBook {
    fn claim(&mut self, cx: &mut Ctx, owner: String, is_server_side: bool, addr: &IpAddr) {
        if let Some(reason) = address_problem(addr) {
            cx.errors.push(PlanError::BadAddress {
                owner: owner.clone(),
                address: *addr,
                reason,
            });
            return;
        }
        match self.owners.get(addr) {
            None => {
                self.owners.insert(*addr, (owner, is_server_side));
            }
            Some((first, _)) if first == &owner => {}
            Some((first, first_server)) => {
                let hint = if *first_server || is_server_side {
                    "; if the host runs the server too, give it `role: server` and keep the \
                     address only on the host"
                } else {
                    ""
                };
                cx.errors.push(PlanError::DuplicateAddress {
                    address: *addr,
                    first: first.clone(),
                    second: owner,
                    hint: hint.to_string(),
                });
            }
        }
    }

    fn contains(&self, addr: &IpAddr) -> bool {
        self.owners.contains_key(addr)
    }
}

fn check_addresses(cx: &mut Ctx, t: &Topology) -> Result<AddressBook, PlanError> {
    let mut book = AddressBook::default();
    if !cx.limit("server addresses", t.server.addresses.len(), MAX_LIST) {
        return Err(cx.stop());
    }
    for a in &t.server.addresses {
        book.claim(cx, format!("server {}", t.server.name), true, a);
    }
    for r in &t.server.replicas {
        for a in &r.addresses {
            book.claim(cx, format!("server replica {}", r.name), true, a);
        }
    }
    if let Some(ds) = &t.server.datastore {
        for a in &ds.addresses {
            book.claim(cx, format!("datastore {}", ds.name), false, a);
        }
        if ds.port == 0 {
            cx.errors.push(PlanError::ZeroPort {
                context: "datastore port".to_string(),
            });
        }
    }
    for h in &t.hosts {
        for a in &h.addresses {
            book.claim(cx, format!("host {}", h.name), false, a);
        }
        if h.addresses.is_empty() {
            cx.warn(
                format!("host {}", h.name),
                "has no known address: group-based formats (markdown, aws-json, terraform) \
                 still cover it through the host security group, but CIDR-based formats \
                 (nftables, iptables, ufw, firewalld) cannot list it as a peer and will refuse \
                 rules that need it",
            );
        }
    }
    for a in &t.server.listen_addresses {
        if a.is_multicast() {
            cx.errors.push(PlanError::BadAddress {
                owner: "server listen_addresses".to_string(),
                address: *a,
                reason: "is a multicast address",
            });
        }
    }
    Ok(book)
}

/// The topology's environments, or an implicit `default` when it has none.
fn effective_environments(cx: &mut Ctx, t: &Topology) -> Vec<Environment> {
    let environments: Vec<Environment> = if t.environments.is_empty() {
        vec![Environment {
            name: "default".to_string(),
            overlay: Overlay::default(),
        }]
    } else {
        t.environments.clone()
    };
    for e in &environments {
        let port = e.overlay.port();
        if port == 0 {
            cx.errors.push(PlanError::ZeroPort {
                context: format!("environment {} overlay port", e.name),
            });
        }
        if !e.overlay.is_encrypted() {
            cx.warn(
                format!("environment {}", e.name),
                format!(
                    "uses the unencrypted vxlan overlay ({port}/udp): container traffic between \
                     hosts crosses the network in cleartext; use it only on trusted networks"
                ),
            );
        }
    }
    environments
}

/// Gives every host its effective environment and role; hosts whose environment is unknown
/// or ambiguous are reported and left out.
fn place_hosts(cx: &mut Ctx, t: &Topology, environments: &[Environment]) -> Vec<PlannedHost> {
    let known_envs = environments
        .iter()
        .map(|e| e.name.clone())
        .collect::<Vec<_>>()
        .join(", ");
    let mut hosts: Vec<PlannedHost> = Vec::new();
    for h in &t.hosts {
        let env = match &h.environment {
            Some(e) => {
                if environments.iter().any(|x| &x.name == e) {
                    e.clone()
                } else {
                    cx.errors.push(PlanError::UnknownEnvironment {
                        host: shown(&h.name),
                        environment: shown(e),
                        known: known_envs.clone(),
                    });
                    continue;
                }
            }
            None if environments.len() == 1 => match environments.first() {
                Some(e) => e.name.clone(),
                None => continue,
            },
            None => {
                cx.errors.push(PlanError::AmbiguousEnvironment {
                    host: shown(&h.name),
                    count: environments.len(),
                });
                continue;
            }
        };
        hosts.push(PlannedHost {
            name: h.name.clone(),
            addresses: h.addresses.clone(),
            environment: env,
            role: h.role(),
        });
    }
    hosts
}

fn overlay_of(environments: &[Environment], env: &str) -> Overlay {
    environments
        .iter()
        .find(|e| e.name == env)
        .map(|e| e.overlay)
        .unwrap_or_default()
}

/// The topology's CIDR lists, parsed and minimised (empty where they had errors).
struct CidrLists {
    admin: Vec<Cidr>,
    api: Vec<Cidr>,
    dns: Vec<Cidr>,
    ntp: Vec<Cidr>,
    registries: Vec<Cidr>,
}

fn parse_cidr_lists(cx: &mut Ctx, t: &Topology) -> CidrLists {
    let admin = cx.cidrs("admin_cidrs", &t.admin_cidrs).unwrap_or_default();
    if admin.iter().any(Cidr::is_any) {
        cx.warn(
            "admin_cidrs",
            "contains 0.0.0.0/0 or ::/0: SSH and the API are opened to the whole internet; give \
             the networks administrators really come from",
        );
    }
    let api = match &t.api_cidrs {
        Some(list) => cx.cidrs("api_cidrs", list).unwrap_or_default(),
        None => admin.clone(),
    };
    if matches!(&t.api_cidrs, Some(l) if l.is_empty()) {
        cx.warn(
            "api_cidrs",
            "is an empty list: treated as 0.0.0.0/0 and ::/0 (everyone); omit it or list networks",
        );
    }
    let dns = cx
        .cidrs("dns_resolvers", &t.dns_resolvers)
        .unwrap_or_default();
    let ntp = cx.cidrs("ntp_servers", &t.ntp_servers).unwrap_or_default();
    let registries = cx
        .cidrs("registry_cidrs", &t.registry_cidrs)
        .unwrap_or_default();
    CidrLists {
        admin,
        api,
        dns,
        ntp,
        registries,
    }
}

/// A published port that passed its checks, with its sources parsed.
struct Published {
    /// `web` or `shop/web`.
    name: String,
    service: String,
    host: Option<String>,
    protocol: Protocol,
    ports: PortRange,
    sources: Endpoint,
}

/// What a published port is checked against.
struct PublishChecks<'a> {
    host_names: &'a BTreeSet<String>,
    hosts: &'a [PlannedHost],
    environments: &'a [Environment],
    listen_port: u16,
    /// Admin networks are given, so 22/tcp of every host is open to them for sshd.
    ssh_administered: bool,
}

impl PublishChecks<'_> {
    fn check_all(&self, cx: &mut Ctx, published: &[PublishedPort]) -> Vec<Published> {
        published.iter().filter_map(|p| self.check(cx, p)).collect()
    }

    /// `None` when the port yields no rule: it was refused, or it is open to nobody.
    fn check(&self, cx: &mut Ctx, p: &PublishedPort) -> Option<Published> {
        let name = p.display_name();
        let label = format!("published port {} {}/{}", name, p.port, p.protocol);
        if p.protocol == Protocol::Icmp {
            cx.errors.push(PlanError::PublishedIcmp {
                service: shown(&name),
            });
            return None;
        }
        if let Some(h) = &p.host
            && !self.host_names.contains(h)
        {
            cx.errors.push(PlanError::UnknownHost {
                service: shown(&name),
                host: shown(h),
            });
            return None;
        }
        let sources = match &p.sources {
            None => Endpoint::anywhere(),
            Some(list) if list.is_empty() => {
                cx.warn(
                    &label,
                    "has an empty sources list: the port would be open to nobody, so no rule is \
                     emitted for it",
                );
                return None;
            }
            Some(list) => Endpoint::Cidrs(cx.cidrs(&format!("{label}, sources"), list)?),
        };
        let width = u32::from(p.port.to()) - u32::from(p.port.from()) + 1;
        if width > WIDE_RANGE_WARNING {
            cx.warn(
                &label,
                format!("opens {width} ports; check that the service really needs them all"),
            );
        }
        if self.reserved_by_corral(cx, p, &name) {
            return None;
        }
        if p.protocol == Protocol::Tcp && p.port.contains(SSH_PORT) && self.ssh_administered {
            cx.warn(
                &label,
                "publishes 22/tcp while SSH administration is configured on the same hosts; \
                 the service and sshd cannot both listen on it",
            );
        }
        if p.host.is_some() {
            cx.warn(
                &label,
                "is published on one host, but a shared host security group (aws-json, \
                 terraform) opens it on every host; the per-host formats (nftables, iptables, \
                 ufw, firewalld) open it only where it is published",
            );
        }
        Some(Published {
            name,
            service: p.service.clone(),
            host: p.host.clone(),
            protocol: p.protocol,
            ports: p.port,
            sources,
        })
    }

    /// Reports every port corral itself needs on the machines that publish `p`; true when
    /// there is one.
    fn reserved_by_corral(&self, cx: &mut Ctx, p: &PublishedPort, name: &str) -> bool {
        let targets: Vec<&PlannedHost> = match &p.host {
            Some(h) => self.hosts.iter().filter(|x| &x.name == h).collect(),
            None => self.hosts.iter().collect(),
        };
        let on = match &p.host {
            Some(h) => format!("host `{h}`"),
            None => "every host".to_string(),
        };
        let mut reserved = false;
        if p.protocol == Protocol::Udp {
            let mut seen = BTreeSet::new();
            for h in &targets {
                let o = overlay_of(self.environments, &h.environment);
                if p.port.contains(o.port()) && seen.insert(o.port()) {
                    reserved = true;
                    cx.errors.push(PlanError::PortReservedByCorral {
                        service: name.to_string(),
                        on: on.clone(),
                        protocol: Protocol::Udp,
                        ports: p.port,
                        port: o.port(),
                        used_by: format!(
                            "the host-to-host {} of environment {}",
                            o.label(),
                            h.environment
                        ),
                    });
                }
            }
        }
        if p.protocol == Protocol::Tcp
            && p.port.contains(self.listen_port)
            && let Some(h) = targets.iter().find(|h| h.role == HostRole::Server)
        {
            reserved = true;
            cx.errors.push(PlanError::PortReservedByCorral {
                service: name.to_string(),
                on: format!("host `{}` (which runs the server)", h.name),
                protocol: Protocol::Tcp,
                ports: p.port,
                port: self.listen_port,
                used_by: "the server API and agent tunnel".to_string(),
            });
        }
        reserved
    }
}

/// Reports services publishing overlapping ports of one protocol on one host.
fn check_port_clashes(cx: &mut Ctx, published: &[Published], hosts: &[PlannedHost]) {
    for (i, a) in published.iter().enumerate() {
        for b in published.iter().skip(i + 1) {
            if a.protocol != b.protocol || !a.ports.overlaps(&b.ports) {
                continue;
            }
            let clash_host = match (&a.host, &b.host) {
                (Some(x), Some(y)) if x == y => Some(x.clone()),
                (Some(_), Some(_)) => None,
                (Some(x), None) | (None, Some(x)) => Some(x.clone()),
                (None, None) => hosts.first().map(|h| h.name.clone()),
            };
            if let Some(host) = clash_host {
                // The same service listed twice with the same ports is a duplicate, not a clash.
                if a.name == b.name && a.ports == b.ports {
                    continue;
                }
                cx.errors.push(PlanError::PortClash {
                    first: a.name.clone(),
                    second: b.name.clone(),
                    host,
                    protocol: a.protocol,
                    first_ports: a.ports,
                    second_ports: b.ports,
                });
            }
        }
    }
}

fn security_groups(cx: &mut Ctx, t: &Topology, checked: &Checked) -> Vec<SecurityGroup> {
    let server_members = server_members(t, checked);
    let has_server_host = checked.hosts.iter().any(|h| h.role == HostRole::Server);
    if has_server_host && t.server.addresses.is_empty() && checked.ports.advertised_ip.is_none() {
        // The server runs on a host: its addresses are the host's. Nothing to warn about.
    } else if server_members.iter().all(|m| m.addresses.is_empty()) {
        cx.warn(
            format!("server {}", t.server.name),
            "has no known address: CIDR-based formats cannot express the agent's egress to it \
             (group-based formats can)",
        );
    }
    let sg = &t.security_groups;
    let listen_port = checked.ports.listen;
    let mut groups = vec![
        SecurityGroup {
            kind: GroupKind::Server,
            id: sg.server.clone(),
            name: "corral-server".to_string(),
            description: format!("corral server: API and agent tunnel on {listen_port}/tcp"),
            members: server_members,
        },
        SecurityGroup {
            kind: GroupKind::Hosts,
            id: sg.hosts.clone(),
            name: "corral-hosts".to_string(),
            description: "corral hosts: agents dial out; overlay between hosts; published ports"
                .to_string(),
            members: checked
                .hosts
                .iter()
                .map(|h| Member {
                    name: h.name.clone(),
                    addresses: h.addresses.clone(),
                })
                .collect(),
        },
    ];
    if let Some(ds) = &t.server.datastore {
        if ds.addresses.is_empty() {
            cx.warn(
                format!("datastore {}", ds.name),
                "has no known address: CIDR-based formats cannot express the server's egress to \
                 it (group-based formats can)",
            );
        }
        groups.push(SecurityGroup {
            kind: GroupKind::Datastore,
            id: sg.datastore.clone(),
            name: "corral-datastore".to_string(),
            description: format!("corral PostgreSQL datastore on {}/tcp", ds.port),
            members: vec![Member {
                name: ds.name.clone(),
                addresses: ds.addresses.clone(),
            }],
        });
    }
    groups
}

/// The server, its replicas and the hosts with role `server`.
fn server_members(t: &Topology, checked: &Checked) -> Vec<Member> {
    let mut server_members = Vec::new();
    let mut server_addrs = t.server.addresses.clone();
    if let Some(ip) = checked.ports.advertised_ip
        && !server_addrs.contains(&ip)
        && !checked.addresses.contains(&ip)
    {
        server_addrs.push(ip);
    }
    server_members.push(Member {
        name: t.server.name.clone(),
        addresses: server_addrs,
    });
    for r in &t.server.replicas {
        server_members.push(Member {
            name: r.name.clone(),
            addresses: r.addresses.clone(),
        });
    }
    for h in checked.hosts.iter().filter(|h| h.role == HostRole::Server) {
        server_members.push(Member {
            name: h.name.clone(),
            addresses: h.addresses.clone(),
        });
    }
    server_members
}

const SERVER_GROUP: Endpoint = Endpoint::Group(GroupKind::Server);
const HOST_GROUP: Endpoint = Endpoint::Group(GroupKind::Hosts);
const DATASTORE_GROUP: Endpoint = Endpoint::Group(GroupKind::Datastore);

fn single_port(port: u16) -> Option<PortRange> {
    PortRange::single(port).ok()
}

/// Builds the flows in the order the plan lists them: group by group, inbound before
/// outbound.
struct FlowPlanner<'a> {
    t: &'a Topology,
    checked: &'a Checked,
    overlay_scopes: Vec<(Endpoint, Overlay, String)>,
    flows: Vec<Flow>,
}

impl<'a> FlowPlanner<'a> {
    fn flows(t: &'a Topology, checked: &'a Checked) -> Vec<Flow> {
        let mut planner = FlowPlanner {
            t,
            checked,
            overlay_scopes: overlay_scopes(&checked.environments, &checked.hosts),
            flows: Vec::new(),
        };
        planner.server_inbound();
        planner.server_outbound();
        planner.hosts_inbound();
        planner.hosts_outbound();
        planner.datastore_inbound();
        planner.flows
    }

    /// The API and the agent tunnel, then administration.
    fn server_inbound(&mut self) {
        let api = &self.checked.cidrs.api;
        let api_from = if api.is_empty() || api.iter().any(Cidr::is_any) {
            ""
        } else if self.t.api_cidrs.is_some() {
            " from the allowed API networks"
        } else {
            " from the admin networks"
        };
        if let Some(ports) = single_port(self.checked.ports.listen) {
            self.flows.push(Flow {
                group: GroupKind::Server,
                direction: Direction::Inbound,
                traffic: Traffic::Tcp { ports },
                source: or_anywhere(api.clone()),
                destination: SERVER_GROUP,
                kind: FlowKind::Api,
                service: None,
                purpose: format!("Users and the CLI reach the server API over HTTPS{api_from}"),
                impact_if_removed: "Nobody can use the API or the CLI; agents stay connected \
                                    and running containers keep running"
                    .to_string(),
            });
            self.flows.push(Flow {
                group: GroupKind::Server,
                direction: Direction::Inbound,
                traffic: Traffic::Tcp { ports },
                source: HOST_GROUP,
                destination: SERVER_GROUP,
                kind: FlowKind::AgentTunnel,
                service: None,
                purpose: "Agents dial out to the server: one TLS WebSocket per host carries \
                          every command and reply; the server never connects to hosts"
                    .to_string(),
                impact_if_removed: "Agents cannot connect: hosts show as disconnected, no \
                                    deploys, logs or status; running containers keep running"
                    .to_string(),
            });
        }
        // Several servers: each relays its clients' connections to the one holding the
        // datastore's write lock, on the same port.
        if !self.t.server.replicas.is_empty()
            && let Some(ports) = single_port(self.checked.ports.listen)
        {
            self.flows.push(Flow {
                group: GroupKind::Server,
                direction: Direction::Inbound,
                traffic: Traffic::Tcp { ports },
                source: SERVER_GROUP,
                destination: SERVER_GROUP,
                kind: FlowKind::ServerRelay,
                service: None,
                purpose: "Server replicas relay their clients' connections to the active \
                          server (TLS, the deployment's CA)"
                    .to_string(),
                impact_if_removed: "Agents, users and the CLI reach only the active server \
                                    directly; through another they get no answer"
                    .to_string(),
            });
        }
        self.administration(GroupKind::Server, &SERVER_GROUP);
    }

    /// The datastore, then DNS and NTP.
    fn server_outbound(&mut self) {
        if let Some(ds) = &self.t.server.datastore
            && let Some(ports) = single_port(ds.port)
        {
            self.flows.push(Flow {
                group: GroupKind::Server,
                direction: Direction::Outbound,
                traffic: Traffic::Tcp { ports },
                source: SERVER_GROUP,
                destination: DATASTORE_GROUP,
                kind: FlowKind::Datastore,
                service: None,
                purpose: "Server replicas read and write the shared PostgreSQL datastore (TLS)"
                    .to_string(),
                impact_if_removed: "The server cannot load or store state: API calls and \
                                    scheduling fail"
                    .to_string(),
            });
        }
        if !self.t.server.replicas.is_empty()
            && let Some(ports) = single_port(self.checked.ports.listen)
        {
            self.flows.push(Flow {
                group: GroupKind::Server,
                direction: Direction::Outbound,
                traffic: Traffic::Tcp { ports },
                source: SERVER_GROUP,
                destination: SERVER_GROUP,
                kind: FlowKind::ServerRelay,
                service: None,
                purpose: "A waiting server relays its clients' connections to the active one"
                    .to_string(),
                impact_if_removed: "Agents, users and the CLI reach only the active server \
                                    directly; through another they get no answer"
                    .to_string(),
            });
        }
        let cidrs = &self.checked.cidrs;
        let basics = egress_basics(GroupKind::Server, &SERVER_GROUP, &cidrs.dns, &cidrs.ntp);
        self.flows.extend(basics);
    }

    /// The overlay from peer hosts, published ports, then administration.
    fn hosts_inbound(&mut self) {
        for (endpoint, overlay, envs) in &self.overlay_scopes {
            let Some(ports) = single_port(overlay.port()) else {
                continue;
            };
            let what = if overlay.is_encrypted() {
                "Encrypted overlay between hosts (WireGuard protocol)"
            } else {
                "Unencrypted vxlan overlay between hosts (trusted networks only)"
            };
            self.flows.push(Flow {
                group: GroupKind::Hosts,
                direction: Direction::Inbound,
                traffic: Traffic::Udp { ports },
                source: endpoint.clone(),
                destination: endpoint.clone(),
                kind: FlowKind::Overlay,
                service: None,
                purpose: format!("{what}, environment {envs}"),
                impact_if_removed: "Containers on different hosts cannot reach each other; \
                                    traffic within one host still works"
                    .to_string(),
            });
        }
        let published = self.checked.published.iter().map(published_flow);
        self.flows.extend(published);
        self.administration(GroupKind::Hosts, &HOST_GROUP);
    }

    /// The agent tunnel, the overlay to peer hosts, image pulls, then DNS and NTP.
    fn hosts_outbound(&mut self) {
        if let Some(ports) = single_port(self.checked.ports.agent) {
            self.flows.push(Flow {
                group: GroupKind::Hosts,
                direction: Direction::Outbound,
                traffic: Traffic::Tcp { ports },
                source: HOST_GROUP,
                destination: SERVER_GROUP,
                kind: FlowKind::AgentTunnel,
                service: None,
                purpose: "Agent dials out to the server (TLS WebSocket, CA pinned); the only \
                          control-plane flow, commands come back over it"
                    .to_string(),
                impact_if_removed: "The agent cannot reach the server: the host shows as \
                                    disconnected and its containers run unmanaged"
                    .to_string(),
            });
        }
        for (endpoint, overlay, envs) in &self.overlay_scopes {
            let Some(ports) = single_port(overlay.port()) else {
                continue;
            };
            self.flows.push(Flow {
                group: GroupKind::Hosts,
                direction: Direction::Outbound,
                traffic: Traffic::Udp { ports },
                source: endpoint.clone(),
                destination: endpoint.clone(),
                kind: FlowKind::Overlay,
                service: None,
                purpose: format!(
                    "Overlay to peer hosts ({}), environment {envs}",
                    overlay.label()
                ),
                impact_if_removed: "Containers on different hosts cannot reach each other"
                    .to_string(),
            });
        }
        let cidrs = &self.checked.cidrs;
        if let Some(ports) = single_port(443) {
            self.flows.push(Flow {
                group: GroupKind::Hosts,
                direction: Direction::Outbound,
                traffic: Traffic::Tcp { ports },
                source: HOST_GROUP,
                destination: or_anywhere(cidrs.registries.clone()),
                kind: FlowKind::ImagePull,
                service: None,
                purpose: "Docker pulls images from registries over HTTPS".to_string(),
                impact_if_removed: "Deploys and upgrades cannot pull images; running \
                                    containers keep running"
                    .to_string(),
            });
        }
        let basics = egress_basics(GroupKind::Hosts, &HOST_GROUP, &cidrs.dns, &cidrs.ntp);
        self.flows.extend(basics);
    }

    fn datastore_inbound(&mut self) {
        if let Some(ds) = &self.t.server.datastore
            && let Some(ports) = single_port(ds.port)
        {
            self.flows.push(Flow {
                group: GroupKind::Datastore,
                direction: Direction::Inbound,
                traffic: Traffic::Tcp { ports },
                source: SERVER_GROUP,
                destination: DATASTORE_GROUP,
                kind: FlowKind::Datastore,
                service: None,
                purpose: "Server replicas use the shared PostgreSQL datastore".to_string(),
                impact_if_removed: "The server cannot load or store state: API calls and \
                                    scheduling fail"
                    .to_string(),
            });
        }
    }

    /// SSH from the admin networks when there are any, and path MTU discovery when allowed.
    fn administration(&mut self, group: GroupKind, local: &Endpoint) {
        let admin = &self.checked.cidrs.admin;
        if !admin.is_empty()
            && let Some(ports) = single_port(SSH_PORT)
        {
            self.flows.push(ssh_flow(group, local, admin, ports));
        }
        if self.t.allow_path_mtu_icmp {
            self.flows.push(pmtu_flow(group, local));
        }
    }
}

fn published_flow(p: &Published) -> Flow {
    let dest = match &p.host {
        Some(h) => Endpoint::Host(h.clone()),
        None => HOST_GROUP,
    };
    let on = match &p.host {
        Some(h) => format!("on host {h}"),
        None => "on every host".to_string(),
    };
    Flow {
        group: GroupKind::Hosts,
        direction: Direction::Inbound,
        traffic: Traffic::of(p.protocol, p.ports),
        source: p.sources.clone(),
        destination: dest,
        kind: FlowKind::Published,
        service: Some(p.name.clone()),
        purpose: format!(
            "Service {} publishes {}/{} {on}",
            p.name, p.ports, p.protocol
        ),
        impact_if_removed: format!(
            "Clients cannot reach service {} on {}/{}",
            p.service, p.ports, p.protocol
        ),
    }
}

/// Warnings about the egress every plan hardens.
fn warn_about_egress(cx: &mut Ctx, t: &Topology) {
    if t.dns_resolvers.is_empty() {
        cx.warn(
            "dns_resolvers",
            "not given: outbound DNS is allowed to any address; list the resolvers to narrow it",
        );
    }
    if t.ntp_servers.is_empty() {
        cx.warn(
            "ntp_servers",
            "not given: outbound NTP is allowed to any address; list the servers to narrow it",
        );
    }
    cx.warn(
        "outbound rules",
        "hardened egress also limits what containers can reach (their traffic leaves through the \
         host); add outbound rules for your services' own dependencies",
    );
}

fn finish_errors(mut errors: Vec<PlanError>) -> PlanError {
    if errors.len() == 1
        && let Some(e) = errors.pop()
    {
        return e;
    }
    PlanError::Many(errors)
}

/// Overlay scopes: one entry when every environment uses the same overlay (the whole host
/// group), otherwise one per environment that has hosts.
fn overlay_scopes(
    environments: &[Environment],
    hosts: &[PlannedHost],
) -> Vec<(Endpoint, Overlay, String)> {
    let used: Vec<&Environment> = environments
        .iter()
        .filter(|e| hosts.iter().any(|h| h.environment == e.name))
        .collect();
    let Some(first) = used.first() else {
        return Vec::new();
    };
    if used.iter().all(|e| e.overlay == first.overlay) {
        let names = used
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return vec![(Endpoint::Group(GroupKind::Hosts), first.overlay, names)];
    }
    used.iter()
        .map(|e| {
            (
                Endpoint::Environment(e.name.clone()),
                e.overlay,
                e.name.clone(),
            )
        })
        .collect()
}

fn ssh_flow(group: GroupKind, local: &Endpoint, admin: &[Cidr], ports: PortRange) -> Flow {
    Flow {
        group,
        direction: Direction::Inbound,
        traffic: Traffic::Tcp { ports },
        source: Endpoint::Cidrs(admin.to_vec()),
        destination: local.clone(),
        kind: FlowKind::Ssh,
        service: None,
        purpose: "SSH administration from the admin networks".to_string(),
        impact_if_removed: "No SSH login from the admin networks; corral itself is unaffected"
            .to_string(),
    }
}

fn pmtu_flow(group: GroupKind, local: &Endpoint) -> Flow {
    Flow {
        group,
        direction: Direction::Inbound,
        traffic: Traffic::Icmp {
            icmp: IcmpMatch::PathMtu,
        },
        source: Endpoint::anywhere(),
        destination: local.clone(),
        kind: FlowKind::PathMtu,
        service: None,
        purpose: "Path MTU discovery: ICMP fragmentation needed and ICMPv6 packet too big"
            .to_string(),
        impact_if_removed: "Large packets may stall on paths with a smaller MTU (tunnels)"
            .to_string(),
    }
}

fn egress_basics(group: GroupKind, local: &Endpoint, dns: &[Cidr], ntp: &[Cidr]) -> Vec<Flow> {
    let mut v = Vec::new();
    let Ok(p53) = PortRange::single(53) else {
        return v;
    };
    let Ok(p123) = PortRange::single(123) else {
        return v;
    };
    for traffic in [Traffic::Udp { ports: p53 }, Traffic::Tcp { ports: p53 }] {
        v.push(Flow {
            group,
            direction: Direction::Outbound,
            traffic,
            source: local.clone(),
            destination: or_anywhere(dns.to_vec()),
            kind: FlowKind::Dns,
            service: None,
            purpose: "DNS lookups (TCP for large answers)".to_string(),
            impact_if_removed: match group {
                GroupKind::Hosts => "Name resolution fails: the agent cannot find the server by \
                                     name and images cannot be pulled"
                    .to_string(),
                _ => "Name resolution fails: the server cannot reach its datastore or other \
                      services by name"
                    .to_string(),
            },
        });
    }
    v.push(Flow {
        group,
        direction: Direction::Outbound,
        traffic: Traffic::Udp { ports: p123 },
        source: local.clone(),
        destination: or_anywhere(ntp.to_vec()),
        kind: FlowKind::Ntp,
        service: None,
        purpose: "Time synchronisation (NTP)".to_string(),
        impact_if_removed: "Clocks drift: TLS certificate and token validity checks start to \
                            fail"
            .to_string(),
    });
    v
}
