//! Renderers: a [`Plan`] in one of several [`Format`]s, for a [`Scope`].
//!
//! Two kinds of format:
//! - **group-based** (`markdown`, `aws-json`, `terraform`): one table / set of rules per
//!   security group; groups are referenced as groups, so hosts without a known address are fine.
//! - **per-machine** (`nftables`, `iptables`, `ip6tables`, `ufw`, `firewalld`): the inbound
//!   rules of ONE machine (the server, or one host), with groups expanded to the members'
//!   addresses (/32, /128). A peer without an address is a [`RenderError::Unaddressed`].
//!   Outbound flows are listed as comments: they are enforced by the security groups.
//!
//! The diagram formats (`dot`, `mermaid`, `svg`) draw the plan's topology and ignore the scope.

mod aws;
mod firewalld;
mod iptables;
mod markdown;
mod nftables;
mod terraform;
mod ufw;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::diagram::{DiagramFormat, diagram};
use crate::net::{Cidr, Family};
use crate::plan::{Direction, Endpoint, Flow, FlowKind, GroupKind, Plan, Traffic};
use crate::topology::HostRole;

pub use aws::{AwsOperation, AwsRequest, aws_requests};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Markdown tables, one per security group.
    Markdown,
    /// Inputs of EC2 `AuthorizeSecurityGroupIngress` / `AuthorizeSecurityGroupEgress`.
    AwsJson,
    /// Terraform `aws_security_group` + `aws_vpc_security_group_{ingress,egress}_rule`.
    Terraform,
    /// An nftables ruleset in `table inet corral` for one machine.
    Nftables,
    /// `iptables-restore` text (IPv4) for one machine.
    Iptables,
    /// `ip6tables-restore` text (IPv6) for one machine.
    Ip6tables,
    /// `ufw` commands for one machine.
    Ufw,
    /// `firewall-cmd` commands for one machine.
    Firewalld,
    /// Graphviz DOT diagram.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
    /// Self-contained SVG diagram.
    Svg,
}

impl Format {
    /// Every format, in documentation order.
    pub const ALL: [Format; 11] = [
        Format::Markdown,
        Format::AwsJson,
        Format::Terraform,
        Format::Nftables,
        Format::Iptables,
        Format::Ip6tables,
        Format::Ufw,
        Format::Firewalld,
        Format::Dot,
        Format::Mermaid,
        Format::Svg,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Markdown => "markdown",
            Format::AwsJson => "aws-json",
            Format::Terraform => "terraform",
            Format::Nftables => "nftables",
            Format::Iptables => "iptables",
            Format::Ip6tables => "ip6tables",
            Format::Ufw => "ufw",
            Format::Firewalld => "firewalld",
            Format::Dot => "dot",
            Format::Mermaid => "mermaid",
            Format::Svg => "svg",
        }
    }

    /// True for formats that describe one machine's own firewall.
    pub fn is_per_machine(self) -> bool {
        matches!(
            self,
            Format::Nftables
                | Format::Iptables
                | Format::Ip6tables
                | Format::Ufw
                | Format::Firewalld
        )
    }

    /// Usual file name suffix (without the leading dot).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Markdown => "md",
            Format::AwsJson => "json",
            Format::Terraform => "tf",
            Format::Nftables => "nft",
            Format::Iptables => "rules.v4",
            Format::Ip6tables => "rules.v6",
            Format::Ufw => "ufw.sh",
            Format::Firewalld => "firewalld.sh",
            Format::Dot => "dot",
            Format::Mermaid => "mmd",
            Format::Svg => "svg",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown format name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown format `{0}`; known: markdown, aws-json, terraform, nftables, iptables, ip6tables, ufw, firewalld, dot, mermaid, svg"
)]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Format, UnknownFormat> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "markdown" | "md" => Format::Markdown,
            "aws-json" | "aws" | "json" => Format::AwsJson,
            "terraform" | "tf" => Format::Terraform,
            "nftables" | "nft" => Format::Nftables,
            "iptables" => Format::Iptables,
            "ip6tables" => Format::Ip6tables,
            "ufw" => Format::Ufw,
            "firewalld" | "firewall-cmd" => Format::Firewalld,
            "dot" | "graphviz" => Format::Dot,
            "mermaid" => Format::Mermaid,
            "svg" => Format::Svg,
            _ => return Err(UnknownFormat(s.chars().take(40).collect())),
        })
    }
}

/// Which machines a rendering is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The server group (and the datastore group).
    Server,
    /// The host group.
    Host,
    /// Everything.
    #[default]
    All,
}

/// Role and optionally one machine by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// Which role.
    pub role: Role,
    /// One machine: a host name, or the server's / a replica's name.
    pub host: Option<String>,
}

impl Scope {
    /// Every group.
    pub fn all() -> Scope {
        Scope {
            role: Role::All,
            host: None,
        }
    }

    /// The server group (and datastore); for per-machine formats, the server machine.
    pub fn server() -> Scope {
        Scope {
            role: Role::Server,
            host: None,
        }
    }

    /// The host group.
    pub fn hosts() -> Scope {
        Scope {
            role: Role::Host,
            host: None,
        }
    }

    /// One host (or server machine) by name.
    pub fn host(name: &str) -> Scope {
        Scope {
            role: Role::Host,
            host: Some(name.to_string()),
        }
    }
}

/// Why a plan cannot be rendered in a format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// Per-machine formats need one machine.
    #[error(
        "{format} describes the firewall of one machine: choose the server (role server) or one \
         host by name"
    )]
    NeedsOneMachine {
        /// The format.
        format: Format,
    },
    /// The scope names a machine the plan does not have.
    #[error("`{name}` is neither a host nor the server or a server replica in this plan")]
    UnknownMachine {
        /// The name (escaped).
        name: String,
    },
    /// Peers without a known address cannot be written as CIDRs.
    #[error(
        "{format} cannot express {needed_for}: {members} {verb} no known address. CIDR-based \
         formats must list every peer's address; add the address(es) to the topology, or use a \
         group-based format (markdown, aws-json, terraform)"
    )]
    Unaddressed {
        /// The format.
        format: Format,
        /// Which rule needs them.
        needed_for: String,
        /// The machines without address.
        members: String,
        /// `has` or `have`.
        verb: &'static str,
    },
}

/// Renders a plan.
///
/// `scope` selects groups for group-based formats and exactly one machine for per-machine
/// formats (see the module documentation). Diagram formats ignore it.
pub fn render(plan: &Plan, format: Format, scope: &Scope) -> Result<String, RenderError> {
    match format {
        Format::Markdown => markdown::render(plan, scope),
        Format::AwsJson => aws::render(plan, scope),
        Format::Terraform => terraform::render(plan, scope),
        Format::Nftables => nftables::render(plan, scope),
        Format::Iptables => iptables::render(plan, scope, Family::V4),
        Format::Ip6tables => iptables::render(plan, scope, Family::V6),
        Format::Ufw => ufw::render(plan, scope),
        Format::Firewalld => firewalld::render(plan, scope),
        Format::Dot => Ok(diagram(&plan.topology, DiagramFormat::Dot)),
        Format::Mermaid => Ok(diagram(&plan.topology, DiagramFormat::Mermaid)),
        Format::Svg => Ok(diagram(&plan.topology, DiagramFormat::Svg)),
    }
}

// ----------------------------------------------------------------------------------------------
// Shared helpers.

/// Keeps only characters that every target accepts in a comment or description (the AWS
/// description alphabet minus `{`, `}` and `$`, which HCL and shells treat specially), squashes
/// whitespace and truncates to `max` bytes.
pub(crate) fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut last_space = true;
    for ch in text.chars() {
        let ok = ch.is_ascii_alphanumeric()
            || matches!(
                ch,
                '.' | '_'
                    | '-'
                    | ':'
                    | '/'
                    | '('
                    | ')'
                    | '#'
                    | ','
                    | '@'
                    | '['
                    | ']'
                    | '+'
                    | '='
                    | '&'
                    | ';'
                    | '!'
                    | '*'
            );
        if ok {
            out.push(ch);
            last_space = false;
        } else if !last_space {
            out.push(' ');
            last_space = true;
        }
    }
    let mut s = out.trim_end().to_string();
    if s.len() > max {
        s.truncate(max);
        s = s.trim_end().to_string();
    }
    s
}

/// Groups selected by a scope for group-based formats, each with its flows.
pub(crate) fn scoped_groups<'a>(
    plan: &'a Plan,
    scope: &Scope,
) -> Result<Vec<(GroupKind, Vec<&'a Flow>)>, RenderError> {
    let kinds: Vec<GroupKind> = plan.groups.iter().map(|g| g.kind).collect();
    if let Some(name) = &scope.host {
        if let Some(h) = plan.host(name) {
            let mut out = Vec::new();
            for kind in kinds {
                let member = match kind {
                    GroupKind::Hosts => true,
                    GroupKind::Server => h.role == HostRole::Server,
                    GroupKind::Datastore => false,
                };
                if !member {
                    continue;
                }
                let flows = plan
                    .flows
                    .iter()
                    .filter(|f| f.group == kind && applies_to_host(plan, f, name))
                    .collect();
                out.push((kind, flows));
            }
            return Ok(out);
        }
        if is_server_machine(plan, name) {
            return Ok(vec![(
                GroupKind::Server,
                group_flows(plan, GroupKind::Server),
            )]);
        }
        return Err(RenderError::UnknownMachine {
            name: name.chars().take(80).collect(),
        });
    }
    Ok(kinds
        .into_iter()
        .filter(|k| match scope.role {
            Role::All => true,
            Role::Server => matches!(k, GroupKind::Server | GroupKind::Datastore),
            Role::Host => *k == GroupKind::Hosts,
        })
        .map(|k| (k, group_flows(plan, k)))
        .collect())
}

fn group_flows(plan: &Plan, kind: GroupKind) -> Vec<&Flow> {
    plan.flows.iter().filter(|f| f.group == kind).collect()
}

fn applies_to_host(plan: &Plan, flow: &Flow, host: &str) -> bool {
    match flow.group {
        GroupKind::Hosts => plan.endpoint_has_host(flow.local(), host),
        GroupKind::Server => plan.host(host).is_some_and(|h| h.role == HostRole::Server),
        GroupKind::Datastore => false,
    }
}

fn is_server_machine(plan: &Plan, name: &str) -> bool {
    plan.topology.server.name == name
        || plan.topology.server.replicas.iter().any(|r| r.name == name)
}

/// The machine a per-machine format is rendered for.
pub(crate) struct MachineView<'a> {
    /// `host web-1` or `server server (and its replicas)`.
    pub title: String,
    /// True for a host (runs containers: bridge DNS, forward chain).
    pub is_host: bool,
    /// The machine's name when it is a host.
    pub name: Option<String>,
    /// Inbound flows that apply to the machine.
    pub inbound: Vec<&'a Flow>,
    /// Outbound flows (listed as comments).
    pub outbound: Vec<&'a Flow>,
}

pub(crate) fn machine<'a>(
    plan: &'a Plan,
    scope: &Scope,
    format: Format,
) -> Result<MachineView<'a>, RenderError> {
    let (title, is_host, flows): (String, bool, Vec<&Flow>) = match &scope.host {
        Some(name) => {
            if let Some(h) = plan.host(name) {
                let flows = plan
                    .flows
                    .iter()
                    .filter(|f| applies_to_host(plan, f, &h.name))
                    .collect();
                let title = if h.role == HostRole::Server {
                    format!("host {} (also runs the server)", h.name)
                } else {
                    format!("host {}", h.name)
                };
                (title, true, flows)
            } else if is_server_machine(plan, name) {
                (
                    format!("server machine {name}"),
                    false,
                    group_flows(plan, GroupKind::Server),
                )
            } else {
                return Err(RenderError::UnknownMachine {
                    name: name.chars().take(80).collect(),
                });
            }
        }
        None => match scope.role {
            Role::Server => (
                format!(
                    "server machine {} (the same rules apply to every replica)",
                    plan.topology.server.name
                ),
                false,
                group_flows(plan, GroupKind::Server),
            ),
            Role::Host | Role::All => return Err(RenderError::NeedsOneMachine { format }),
        },
    };
    Ok(MachineView {
        name: if is_host { scope.host.clone() } else { None },
        title,
        is_host,
        inbound: flows
            .iter()
            .copied()
            .filter(|f| f.direction == Direction::Inbound)
            .collect(),
        outbound: flows
            .iter()
            .copied()
            .filter(|f| f.direction == Direction::Outbound)
            .collect(),
    })
}

/// Which sources of one family a rule admits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FamilySources {
    /// Any address of the family.
    Any,
    /// Exactly these blocks (non-empty).
    Some(Vec<Cidr>),
    /// No address of the family: no rule for it.
    None,
}

/// One inbound rule of one machine, with sources expanded to CIDRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MachineRule {
    pub traffic: Traffic,
    pub v4: FamilySources,
    pub v6: FamilySources,
    pub comment: String,
    pub kind: FlowKind,
}

impl MachineRule {
    pub fn family(&self, family: Family) -> &FamilySources {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
}

/// Expands an endpoint into per-family source lists, refusing members without address
/// (except the machine itself, which never needs to admit its own traffic from the network).
pub(crate) fn expand_sources(
    plan: &Plan,
    endpoint: &Endpoint,
    format: Format,
    needed_for: &str,
    itself: Option<&str>,
) -> Result<(FamilySources, FamilySources), RenderError> {
    let mut ex = plan.expand(endpoint);
    ex.unaddressed.retain(|m| Some(m.as_str()) != itself);
    if !ex.unaddressed.is_empty() {
        let verb = if ex.unaddressed.len() == 1 {
            "has"
        } else {
            "have"
        };
        return Err(RenderError::Unaddressed {
            format,
            needed_for: needed_for.to_string(),
            members: ex.unaddressed.join(", "),
            verb,
        });
    }
    let one = |family: Family| -> FamilySources {
        let list = ex.family(family);
        if list.iter().any(Cidr::is_any) {
            FamilySources::Any
        } else if list.is_empty() {
            FamilySources::None
        } else {
            FamilySources::Some(list)
        }
    };
    Ok((one(Family::V4), one(Family::V6)))
}

/// Text for a rule's comment: purpose, shortened.
pub(crate) fn rule_comment(flow: &Flow) -> String {
    let base = match (&flow.kind, &flow.service) {
        (FlowKind::Published, Some(s)) => format!("corral published {s}"),
        (FlowKind::Api, _) => "corral server API".to_string(),
        (FlowKind::AgentTunnel, _) => "corral agent tunnel (agents dial out)".to_string(),
        (FlowKind::Overlay, _) => "corral overlay between hosts".to_string(),
        (FlowKind::Ssh, _) => "corral SSH from admin networks".to_string(),
        (FlowKind::Datastore, _) => "corral datastore".to_string(),
        (FlowKind::ServerRelay, _) => "corral server relay".to_string(),
        (FlowKind::PathMtu, _) => "corral path MTU discovery".to_string(),
        (FlowKind::Dns, _) => "corral DNS".to_string(),
        (FlowKind::Ntp, _) => "corral NTP".to_string(),
        (FlowKind::ImagePull, _) => "corral image pulls".to_string(),
        (FlowKind::Published, None) => "corral published port".to_string(),
    };
    sanitize(&base, 120)
}

/// The inbound rules of a machine, expanded and de-duplicated.
pub(crate) fn machine_rules(
    plan: &Plan,
    view: &MachineView<'_>,
    format: Format,
) -> Result<Vec<MachineRule>, RenderError> {
    let mut rules: Vec<MachineRule> = Vec::new();
    for f in &view.inbound {
        let needed_for = format!(
            "the {} rule ({}) from {}",
            rule_comment(f),
            traffic_label(&f.traffic),
            plan.endpoint_label(&f.source)
        );
        let (v4, v6) = expand_sources(plan, &f.source, format, &needed_for, view.name.as_deref())?;
        let rule = MachineRule {
            traffic: f.traffic,
            v4,
            v6,
            comment: rule_comment(f),
            kind: f.kind,
        };
        if !rules
            .iter()
            .any(|r| r.traffic == rule.traffic && r.v4 == rule.v4 && r.v6 == rule.v6)
        {
            rules.push(rule);
        }
    }
    Ok(rules)
}

/// `8443/tcp`, `30000-30010/udp`, `icmp path-mtu`.
pub(crate) fn traffic_label(t: &Traffic) -> String {
    match t {
        Traffic::Tcp { ports } => format!("{ports}/tcp"),
        Traffic::Udp { ports } => format!("{ports}/udp"),
        Traffic::Icmp { .. } => "ICMP path-MTU messages".to_string(),
    }
}

/// Comment lines listing a machine's outbound flows.
pub(crate) fn outbound_comment_lines(plan: &Plan, view: &MachineView<'_>) -> Vec<String> {
    let mut lines = vec![
        "Outbound flows this machine needs (not enforced here; allowed by the cloud security \
         group or an output policy):"
            .to_string(),
    ];
    for f in &view.outbound {
        let ex = plan.expand(&f.destination);
        let addrs = if matches!(f.destination, Endpoint::Cidrs(_)) || ex.cidrs.is_empty() {
            String::new()
        } else {
            format!(
                " [{}]",
                ex.cidrs
                    .iter()
                    .map(Cidr::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        lines.push(format!(
            "  {} to {}{}: {}",
            traffic_label(&f.traffic),
            plan.endpoint_label(&f.destination),
            addrs,
            f.purpose
        ));
    }
    lines
}

/// Published flows whose sources are restricted, for the forward-path rules that stop
/// DNAT'd (Docker-published) connections from other sources.
pub(crate) fn restricted_published(rules: &[MachineRule]) -> Vec<&MachineRule> {
    rules
        .iter()
        .filter(|r| {
            r.kind == FlowKind::Published
                && !(r.v4 == FamilySources::Any && r.v6 == FamilySources::Any)
        })
        .collect()
}

/// Makes a free-text line safe for a `#` comment (no newlines or control characters).
pub(crate) fn comment_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_the_aws_alphabet() {
        assert_eq!(
            sanitize("Service `web` publishes 80/tcp — \"x\" ${evil}\n", 255),
            "Service web publishes 80/tcp x evil"
        );
        assert_eq!(sanitize("a'b", 255), "a b");
        let long = "x".repeat(300);
        assert_eq!(sanitize(&long, 255).len(), 255);
    }

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>(), Ok(f));
        }
        assert!("pdf".parse::<Format>().is_err());
    }
}
