//! nftables: a ruleset for ONE machine, entirely inside corral's own `table inet corral`
//! (other tables are never named, flushed or changed).
//!
//! The file is idempotent and atomic (`nft -f` applies it as one transaction): it creates the
//! table if missing, deletes it, and declares it again.
//!
//! - `chain input`: `policy drop`. Accepts established/related traffic, loopback, the ICMPv6
//!   neighbour-discovery / MLD / DHCPv6-client traffic IPv6 needs, DNS from container bridges
//!   to the agent's DNS responder (hosts only), then exactly the plan's inbound flows. Because
//!   nftables evaluates every base chain on a hook, this drop applies even if other tables
//!   accept: loading the table makes the machine default-deny for inbound traffic.
//! - `chain forward` (hosts with source-restricted published ports only): `policy accept`,
//!   so Docker's own forwarding is untouched; it drops connections DNAT'd to a published port
//!   (matched on the original destination port) whose source is not allowed. Docker-published
//!   ports never traverse `input`, so this is where their source restriction is enforced.

use std::fmt::Write as _;

use super::{
    FamilySources, Format, MachineRule, RenderError, Scope, comment_text, machine, machine_rules,
    outbound_comment_lines, restricted_published,
};
use crate::net::{Cidr, Family};
use crate::plan::{Plan, Traffic};

fn set(cidrs: &[Cidr]) -> String {
    let items: Vec<String> = cidrs
        .iter()
        .map(|c| {
            if c.is_single() {
                c.addr().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    if items.len() == 1 {
        items.join("")
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

fn saddr(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip saddr",
        Family::V6 => "ip6 saddr",
    }
}

fn nfproto(family: Family) -> &'static str {
    match family {
        Family::V4 => "meta nfproto ipv4",
        Family::V6 => "meta nfproto ipv6",
    }
}

/// The match on protocol/ports for one family (ICMP differs per family).
fn traffic_match(t: &Traffic, family: Family) -> String {
    match t {
        Traffic::Tcp { ports } => format!("tcp dport {ports}"),
        Traffic::Udp { ports } => format!("udp dport {ports}"),
        Traffic::Icmp { .. } => match family {
            Family::V4 => "icmp type destination-unreachable icmp code frag-needed".to_string(),
            Family::V6 => "icmpv6 type packet-too-big".to_string(),
        },
    }
}

fn input_lines(rule: &MachineRule) -> Vec<String> {
    let comment = format!("comment \"{}\"", rule.comment);
    let is_icmp = matches!(rule.traffic, Traffic::Icmp { .. });
    if !is_icmp && rule.v4 == FamilySources::Any && rule.v6 == FamilySources::Any {
        let m = traffic_match(&rule.traffic, Family::V4);
        return vec![format!("{m} accept {comment}")];
    }
    let mut out = Vec::new();
    for fam in [Family::V4, Family::V6] {
        let m = traffic_match(&rule.traffic, fam);
        match rule.family(fam) {
            FamilySources::None => {}
            FamilySources::Any => {
                if is_icmp {
                    out.push(format!("{m} accept {comment}"));
                } else {
                    out.push(format!("{} {m} accept {comment}", nfproto(fam)));
                }
            }
            FamilySources::Some(c) => {
                out.push(format!("{} {} {m} accept {comment}", saddr(fam), set(c)));
            }
        }
    }
    out
}

fn forward_lines(rule: &MachineRule) -> Vec<String> {
    let (proto, ports) = match rule.traffic {
        Traffic::Tcp { ports } => ("tcp", ports),
        Traffic::Udp { ports } => ("udp", ports),
        Traffic::Icmp { .. } => return Vec::new(),
    };
    let comment = format!("comment \"{} source restriction\"", rule.comment);
    let base = format!("meta l4proto {proto} ct original proto-dst {ports} ct status dnat");
    let mut out = Vec::new();
    for fam in [Family::V4, Family::V6] {
        match rule.family(fam) {
            FamilySources::Any => {}
            FamilySources::None => out.push(format!("{} {base} drop {comment}", nfproto(fam))),
            FamilySources::Some(c) => {
                out.push(format!(
                    "{base} {} != {} drop {comment}",
                    saddr(fam),
                    set(c)
                ));
            }
        }
    }
    out
}

pub(super) fn render(plan: &Plan, scope: &Scope) -> Result<String, RenderError> {
    let view = machine(plan, scope, Format::Nftables)?;
    let rules = machine_rules(plan, &view, Format::Nftables)?;
    let mut out = String::new();
    let _ = writeln!(out, "#!/usr/sbin/nft -f");
    let _ = writeln!(
        out,
        "# corral firewall for {} (generated).",
        comment_text(&view.title)
    );
    let _ = writeln!(
        out,
        "# Only table inet corral is touched. Load with: nft -f FILE (atomic; reloading \
         replaces the table)."
    );
    let _ = writeln!(
        out,
        "# Input policy is drop: everything not accepted below is refused, whatever other \
         tables accept."
    );
    let _ = writeln!(out, "# Remove with: nft delete table inet corral");
    for line in outbound_comment_lines(plan, &view) {
        let _ = writeln!(out, "# {}", comment_text(&line));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "table inet corral");
    let _ = writeln!(out, "delete table inet corral");
    let _ = writeln!(out, "table inet corral {{");
    let _ = writeln!(out, "\tchain input {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook input priority filter; policy drop;"
    );
    let _ = writeln!(out, "\t\tct state established,related accept");
    let _ = writeln!(out, "\t\tct state invalid drop");
    let _ = writeln!(out, "\t\tiif \"lo\" accept");
    let _ = writeln!(
        out,
        "\t\ticmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, \
         nd-router-advert }} accept comment \"IPv6 neighbour discovery\""
    );
    let _ = writeln!(
        out,
        "\t\tip6 saddr fe80::/10 icmpv6 type {{ mld-listener-query, mld-listener-report, \
         mld-listener-done, mld2-listener-report }} accept comment \"IPv6 multicast listener \
         discovery\""
    );
    let _ = writeln!(
        out,
        "\t\tip6 saddr fe80::/10 udp sport 547 udp dport 546 accept comment \"DHCPv6 client\""
    );
    if view.is_host {
        for iface in &plan.topology.bridge_interfaces {
            let _ = writeln!(
                out,
                "\t\tiifname \"{iface}\" meta l4proto {{ tcp, udp }} th dport 53 accept comment \
                 \"corral agent DNS responder for containers\""
            );
        }
    }
    for r in &rules {
        for line in input_lines(r) {
            let _ = writeln!(out, "\t\t{line}");
        }
    }
    let _ = writeln!(out, "\t}}");
    let restricted = restricted_published(&rules);
    let forward: Vec<String> = restricted.iter().flat_map(|r| forward_lines(r)).collect();
    if view.is_host && !forward.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "\tchain forward {{");
        let _ = writeln!(
            out,
            "\t\ttype filter hook forward priority filter - 10; policy accept;"
        );
        for line in forward {
            let _ = writeln!(out, "\t\t{line}");
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
    Ok(out)
}
