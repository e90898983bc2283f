//! Terraform (AWS provider ≥ 5): `aws_security_group` resources for the groups (no inline
//! rules, so Terraform removes AWS's default allow-all egress rule) plus one
//! `aws_vpc_security_group_ingress_rule` / `aws_vpc_security_group_egress_rule` per peer:
//! `referenced_security_group_id` for group peers, `cidr_ipv4` / `cidr_ipv6` otherwise.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{RenderError, Scope, sanitize, scoped_groups};
use crate::net::{Cidr, Family};
use crate::plan::{Direction, Endpoint, GroupKind, Plan, Traffic};

fn resource_name(kind: GroupKind) -> &'static str {
    match kind {
        GroupKind::Server => "corral_server",
        GroupKind::Hosts => "corral_hosts",
        GroupKind::Datastore => "corral_datastore",
    }
}

fn ident(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    while out.contains("__") {
        out = out.replace("__", "_");
    }
    out.trim_matches('_').to_string()
}

enum Peer {
    Group(GroupKind),
    Cidr(Cidr),
}

fn proto(t: &Traffic, family: Family) -> (&'static str, i64, i64, String) {
    match t {
        Traffic::Tcp { ports } => (
            "tcp",
            i64::from(ports.from()),
            i64::from(ports.to()),
            ports.display_with("_"),
        ),
        Traffic::Udp { ports } => (
            "udp",
            i64::from(ports.from()),
            i64::from(ports.to()),
            ports.display_with("_"),
        ),
        Traffic::Icmp { icmp } => match family {
            Family::V4 => {
                let (ty, code) = icmp.v4_type_code();
                ("icmp", i64::from(ty), i64::from(code), "pmtu".to_string())
            }
            Family::V6 => {
                let (ty, code) = icmp.v6_type_code();
                ("icmpv6", i64::from(ty), i64::from(code), "pmtu".to_string())
            }
        },
    }
}

pub(super) fn render(plan: &Plan, scope: &Scope) -> Result<String, RenderError> {
    let groups = scoped_groups(plan, scope)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# corral firewall: security groups and rules (generated; edit the topology, not this \
         file)."
    );
    let _ = writeln!(
        out,
        "# Hosts open no port to the server: agents dial out on {}/tcp. No server-to-host rule \
         exists.\n",
        plan.agent_port
    );
    let _ = writeln!(out, "variable \"vpc_id\" {{");
    let _ = writeln!(out, "  type        = string");
    let _ = writeln!(
        out,
        "  description = \"VPC holding the corral server and hosts\""
    );
    let _ = writeln!(out, "}}\n");
    // Every group in the plan is declared so that references always resolve.
    for g in &plan.groups {
        let _ = writeln!(
            out,
            "resource \"aws_security_group\" \"{}\" {{",
            resource_name(g.kind)
        );
        let _ = writeln!(out, "  name        = \"{}\"", g.name);
        let _ = writeln!(out, "  description = \"{}\"", sanitize(&g.description, 255));
        let _ = writeln!(out, "  vpc_id      = var.vpc_id");
        let _ = writeln!(out, "  tags = {{");
        let _ = writeln!(out, "    Name = \"{}\"", g.name);
        let _ = writeln!(out, "  }}");
        let _ = writeln!(out, "}}\n");
    }
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (kind, flows) in &groups {
        for dir in [Direction::Inbound, Direction::Outbound] {
            for f in flows.iter().filter(|f| f.direction == dir) {
                let peers: Vec<Peer> = match f.peer() {
                    Endpoint::Cidrs(c) => c.iter().copied().map(Peer::Cidr).collect(),
                    other => other.group().map(Peer::Group).into_iter().collect(),
                };
                for peer in peers {
                    let families: Vec<Family> = match (&peer, &f.traffic) {
                        (Peer::Cidr(c), _) => vec![c.family()],
                        (Peer::Group(_), Traffic::Icmp { .. }) => vec![Family::V4, Family::V6],
                        (Peer::Group(_), _) => vec![Family::V4],
                    };
                    for fam in families {
                        let (p, from, to, port_id) = proto(&f.traffic, fam);
                        let (peer_line, peer_id) = match &peer {
                            Peer::Group(g) => (
                                format!(
                                    "referenced_security_group_id = aws_security_group.{}.id",
                                    resource_name(*g)
                                ),
                                resource_name(*g).trim_start_matches("corral_").to_string(),
                            ),
                            Peer::Cidr(c) => {
                                let id = if c.is_any() {
                                    match c.family() {
                                        Family::V4 => "any_v4".to_string(),
                                        Family::V6 => "any_v6".to_string(),
                                    }
                                } else {
                                    ident(&c.to_cidr_string())
                                };
                                let line = match c.family() {
                                    Family::V4 => {
                                        format!("cidr_ipv4                    = \"{c}\"")
                                    }
                                    Family::V6 => {
                                        format!("cidr_ipv6                    = \"{c}\"")
                                    }
                                };
                                (line, id)
                            }
                        };
                        let dedupe_key = (*kind, dir, p, from, to, peer_line.clone());
                        if !seen.insert(dedupe_key) {
                            continue;
                        }
                        let (rtype, dshort) = match dir {
                            Direction::Inbound => ("aws_vpc_security_group_ingress_rule", "in"),
                            Direction::Outbound => ("aws_vpc_security_group_egress_rule", "out"),
                        };
                        let base = ident(&format!(
                            "{}_{dshort}_{p}_{port_id}_{peer_id}",
                            resource_name(*kind)
                        ));
                        let mut name = base.clone();
                        let mut n = 2;
                        while !names.insert(name.clone()) {
                            name = format!("{base}_{n}");
                            n += 1;
                        }
                        let _ = writeln!(out, "resource \"{rtype}\" \"{name}\" {{");
                        let _ = writeln!(
                            out,
                            "  security_group_id            = aws_security_group.{}.id",
                            resource_name(*kind)
                        );
                        let _ = writeln!(
                            out,
                            "  description                  = \"{}\"",
                            sanitize(&f.purpose, 255)
                        );
                        let _ = writeln!(out, "  ip_protocol                  = \"{p}\"");
                        let _ = writeln!(out, "  from_port                    = {from}");
                        let _ = writeln!(out, "  to_port                      = {to}");
                        let _ = writeln!(out, "  {peer_line}");
                        let _ = writeln!(out, "}}\n");
                    }
                }
            }
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    Ok(out)
}
