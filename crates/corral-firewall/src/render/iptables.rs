//! iptables / ip6tables: `iptables-save` text for ONE machine and one address family, using
//! corral's own chains `CORRAL-INPUT` (ends in DROP) and, on hosts with source-restricted
//! published ports, `CORRAL-FORWARD` (drops DNAT'd connections to those ports from other
//! sources, returns everything else). Meant for `iptables-restore --noflush` /
//! `ip6tables-restore --noflush`, which leaves every other chain (Docker's included) alone;
//! the declared corral chains are flushed and refilled, and one jump to each is inserted at
//! the top of `INPUT` / `FORWARD` (reloading adds another identical jump, which is harmless;
//! `iptables -D INPUT -j CORRAL-INPUT` removes one).

use std::fmt::Write as _;

use super::{
    FamilySources, Format, MachineRule, RenderError, Scope, comment_text, machine, machine_rules,
    outbound_comment_lines, restricted_published,
};
use crate::net::Family;
use crate::plan::{Plan, Traffic};

fn proto_match(t: &Traffic, family: Family) -> String {
    match t {
        Traffic::Tcp { ports } => format!("-p tcp -m tcp --dport {}", ports.display_with(":")),
        Traffic::Udp { ports } => format!("-p udp -m udp --dport {}", ports.display_with(":")),
        Traffic::Icmp { icmp } => match family {
            Family::V4 => {
                let (ty, code) = icmp.v4_type_code();
                format!("-p icmp -m icmp --icmp-type {ty}/{code}")
            }
            Family::V6 => {
                let (ty, code) = icmp.v6_type_code();
                format!("-p ipv6-icmp -m icmp6 --icmpv6-type {ty}/{code}")
            }
        },
    }
}

fn input_lines(rule: &MachineRule, family: Family) -> Vec<String> {
    let m = proto_match(&rule.traffic, family);
    let comment = format!("-m comment --comment \"{}\"", rule.comment);
    match rule.family(family) {
        FamilySources::None => Vec::new(),
        FamilySources::Any => vec![format!("-A CORRAL-INPUT {m} {comment} -j ACCEPT")],
        FamilySources::Some(list) => list
            .iter()
            .map(|c| {
                format!(
                    "-A CORRAL-INPUT -s {} {m} {comment} -j ACCEPT",
                    c.to_cidr_string()
                )
            })
            .collect(),
    }
}

fn forward_lines(rule: &MachineRule, family: Family) -> Vec<String> {
    let (proto, ports) = match rule.traffic {
        Traffic::Tcp { ports } => ("tcp", ports),
        Traffic::Udp { ports } => ("udp", ports),
        Traffic::Icmp { .. } => return Vec::new(),
    };
    let base = format!(
        "-A CORRAL-FORWARD -p {proto} -m conntrack --ctstate DNAT --ctorigdstport {}",
        ports.display_with(":")
    );
    let comment = format!(
        "-m comment --comment \"{} source restriction\"",
        rule.comment
    );
    match rule.family(family) {
        FamilySources::Any => Vec::new(),
        FamilySources::None => vec![format!("{base} {comment} -j DROP")],
        FamilySources::Some(list) => {
            let mut v: Vec<String> = list
                .iter()
                .map(|c| format!("{base} -s {} {comment} -j RETURN", c.to_cidr_string()))
                .collect();
            v.push(format!("{base} {comment} -j DROP"));
            v
        }
    }
}

fn iface(pattern: &str) -> String {
    match pattern.strip_suffix('*') {
        Some(prefix) => format!("{prefix}+"),
        None => pattern.to_string(),
    }
}

pub(super) fn render(plan: &Plan, scope: &Scope, family: Family) -> Result<String, RenderError> {
    let format = match family {
        Family::V4 => Format::Iptables,
        Family::V6 => Format::Ip6tables,
    };
    let view = machine(plan, scope, format)?;
    let rules = machine_rules(plan, &view, format)?;
    let (tool, other) = match family {
        Family::V4 => ("iptables", "ip6tables"),
        Family::V6 => ("ip6tables", "iptables"),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# corral firewall ({}) for {} (generated).",
        match family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        },
        comment_text(&view.title)
    );
    let _ = writeln!(
        out,
        "# Load with: {tool}-restore --noflush FILE   (other chains, Docker's included, are left \
         alone)."
    );
    let _ = writeln!(
        out,
        "# The {} rules are a separate file: render format {other}.",
        match family {
            Family::V4 => "IPv6",
            Family::V6 => "IPv4",
        }
    );
    for line in outbound_comment_lines(plan, &view) {
        let _ = writeln!(out, "# {}", comment_text(&line));
    }
    let restricted = restricted_published(&rules);
    let forward: Vec<String> = if view.is_host {
        restricted
            .iter()
            .flat_map(|r| forward_lines(r, family))
            .collect()
    } else {
        Vec::new()
    };
    let _ = writeln!(out, "*filter");
    let _ = writeln!(out, ":CORRAL-INPUT - [0:0]");
    if !forward.is_empty() {
        let _ = writeln!(out, ":CORRAL-FORWARD - [0:0]");
    }
    let _ = writeln!(
        out,
        "-A CORRAL-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    let _ = writeln!(
        out,
        "-A CORRAL-INPUT -m conntrack --ctstate INVALID -j DROP"
    );
    let _ = writeln!(out, "-A CORRAL-INPUT -i lo -j ACCEPT");
    if family == Family::V6 {
        for ty in [133, 134, 135, 136] {
            let _ = writeln!(
                out,
                "-A CORRAL-INPUT -p ipv6-icmp -m icmp6 --icmpv6-type {ty} -m comment --comment \
                 \"IPv6 neighbour discovery\" -j ACCEPT"
            );
        }
        for ty in [130, 131, 132, 143] {
            let _ = writeln!(
                out,
                "-A CORRAL-INPUT -s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type {ty} -m \
                 comment --comment \"IPv6 multicast listener discovery\" -j ACCEPT"
            );
        }
        let _ = writeln!(
            out,
            "-A CORRAL-INPUT -s fe80::/10 -p udp -m udp --sport 547 --dport 546 -m comment \
             --comment \"DHCPv6 client\" -j ACCEPT"
        );
    }
    if view.is_host {
        for pattern in &plan.topology.bridge_interfaces {
            for proto in ["udp", "tcp"] {
                let _ = writeln!(
                    out,
                    "-A CORRAL-INPUT -i {} -p {proto} -m {proto} --dport 53 -m comment --comment \
                     \"corral agent DNS responder for containers\" -j ACCEPT",
                    iface(pattern)
                );
            }
        }
    }
    for r in &rules {
        for line in input_lines(r, family) {
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(out, "-A CORRAL-INPUT -j DROP");
    for line in &forward {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "-I INPUT 1 -j CORRAL-INPUT");
    if !forward.is_empty() {
        let _ = writeln!(out, "-I FORWARD 1 -j CORRAL-FORWARD");
    }
    let _ = writeln!(out, "COMMIT");
    Ok(out)
}
