//! # corral-firewall
//!
//! The pure core of `corral firewall` and `corral diagram`: it derives the least-privilege
//! network flows of a corral deployment and renders them as security-group tables, cloud API
//! inputs, host firewall rulesets and diagrams.
//!
//! ## Pipeline
//!
//! ```text
//! Topology ──plan()──▶ Plan ──render(plan, Format, Scope)──▶ String
//!    │                  (groups, flows, warnings)
//!    └──diagram(topology, DiagramFormat)──▶ String (SVG / DOT / Mermaid)
//! ```
//!
//! 1. [`Topology`] (serde both ways) describes what corral knows: server endpoints (listen
//!    port, advertised URL), replicas and PostgreSQL datastore, hosts (addresses, labels,
//!    role, environment), environments with their overlay mode, published service ports,
//!    admin CIDRs, DNS/NTP/registry destinations.
//! 2. [`plan()`] validates it (every problem is reported, with what to fix) and returns a
//!    [`Plan`]: the security groups (`server`, `hosts`, optional `datastore`) and the minimal
//!    list of [`Flow`]s, one per security-group rule, with the columns of a provider's
//!    security-group documentation: direction, protocol, port, source, destination, purpose,
//!    impact if removed.
//! 3. [`render()`] writes a plan as [`Format::Markdown`], [`Format::AwsJson`] (EC2
//!    `AuthorizeSecurityGroupIngress`/`Egress` inputs), [`Format::Terraform`],
//!    [`Format::Nftables`], [`Format::Iptables`] / [`Format::Ip6tables`], [`Format::Ufw`],
//!    [`Format::Firewalld`], or a diagram ([`Format::Dot`], [`Format::Mermaid`],
//!    [`Format::Svg`]). A [`Scope`] picks the server or host role, or one machine; the
//!    per-machine formats require one machine.
//! 4. [`diagram()`] draws the port flows; the SVG is laid out by this crate (no Graphviz).
//!
//! ## Modules
//!
//! - [`net`]: CIDR blocks (strict: host bits are refused, not guessed), protocols, port ranges.
//! - [`topology`]: the input types and corral's default ports.
//! - [`mod@plan`]: the planner, flows, groups, plan errors and warnings.
//! - [`mod@render`]: formats, scopes, render errors, and one private module per format.
//! - [`mod@diagram`]: the diagram model and the SVG, DOT and Mermaid writers.
//!
//! ## Invariants
//!
//! - **No I/O.** No files, sockets, processes, environment or clock: the same input always
//!   gives the same bytes. The CLI and agent do the I/O; tests run the real tools (`nft -c`,
//!   `iptables-restore --test`, botocore's EC2 model) on the output.
//! - **Never opens more than the flows require.** Every rule in every format comes from a
//!   [`Flow`]; per-machine formats add only what the machine's own networking needs
//!   (established/related, loopback, IPv6 neighbour discovery, DNS from container bridges to
//!   the agent's DNS responder). With defaults the host group has no inbound TCP port except
//!   published service ports, and no rule admits `0.0.0.0/0` or `::/0` except published ports
//!   and the server API.
//! - **No server → host flow exists.** Agents dial out to the server (default 8443/tcp) over
//!   one TLS WebSocket and every command comes back over it; that host-outbound /
//!   server-inbound pair is the only control-plane flow. The overlay port (51820/udp encrypted,
//!   4789/udp vxlan) is open only between hosts.
//! - **No panics on input.** Bad input is an error value with an explanation; lists and names
//!   are bounded ([`plan::MAX_HOSTS`], [`plan::MAX_NAME`], ...).
//!
//! ## Decisions
//!
//! - **CIDRs with host bits** (`10.0.0.1/8`) are refused, naming both possible fixes; lists
//!   with duplicates or blocks inside other blocks are normalised (the narrower block dropped)
//!   with a warning, which never widens what is open.
//! - **nftables**: one `table inet corral`, re-created atomically on every load. Its `input`
//!   chain has `policy drop` (established/related, loopback, IPv6 neighbour discovery, container
//!   DNS to the agent, then the flows); a `forward` chain with `policy accept` exists only to
//!   drop DNAT'd connections to source-restricted published ports, because Docker-published
//!   ports never traverse `input`. No other table is named.
//! - **iptables**: own chains `CORRAL-INPUT` (ends in DROP) and `CORRAL-FORWARD`, loaded with
//!   `iptables-restore --noflush` so Docker's chains survive; IPv6 is a separate `ip6tables`
//!   document ([`Format::Ip6tables`]).
//! - **Per-machine formats** enforce inbound flows; outbound flows are listed as comments (the
//!   security groups harden egress).
//! - **Security groups**: a service published on one host opens its port on the whole host
//!   group in aws-json/terraform (a shared group cannot target one instance; a warning says
//!   so); the per-machine formats open it only on that host.
//! - **aws-json** is `{"AuthorizeSecurityGroupIngress": [input...], "AuthorizeSecurityGroupEgress":
//!   [input...]}`; [`aws_requests`] returns the calls one by one.
//!
//! ## Example
//!
//! ```
//! use corral_firewall::{Format, Host, Scope, Server, Topology, plan, render};
//!
//! let mut t = Topology::new(Server::at(vec!["10.0.0.10".parse().unwrap()]));
//! t.hosts.push(Host::new("web-1", vec!["10.0.1.11".parse().unwrap()]));
//! t.hosts.push(Host::new("web-2", vec!["10.0.1.12".parse().unwrap()]));
//! t.admin_cidrs.push("203.0.113.0/24".to_string());
//! let plan = plan(&t).unwrap();
//! let table = render(&plan, Format::Markdown, &Scope::all()).unwrap();
//! assert!(table.contains("| Outbound | TCP | 8443 |"));
//! let nft = render(&plan, Format::Nftables, &Scope::host("web-1")).unwrap();
//! assert!(nft.contains("table inet corral"));
//! ```

pub mod diagram;
pub mod net;
pub mod plan;
pub mod render;
pub mod topology;

pub use diagram::services::{
    ServiceBox, ServiceFlow, ServiceMap, services_diagram, services_markdown,
};
pub use diagram::{DiagramFormat, diagram};
pub use net::{Cidr, CidrError, Family, PortError, PortRange, Protocol};
pub use plan::{
    Direction, Endpoint, Flow, FlowKind, GroupKind, IcmpMatch, Plan, PlanError, PlanWarning,
    SecurityGroup, Traffic, plan,
};
pub use render::{
    AwsOperation, AwsRequest, Format, RenderError, Role, Scope, aws_requests, render,
};
pub use topology::{
    Datastore, Environment, Host, HostRole, Machine, Overlay, PublishedPort, SecurityGroupIds,
    Server, Topology,
};
