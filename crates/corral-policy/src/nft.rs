//! A [`Ruleset`] as an nftables script for `nft -f`: it replaces corral's policy table
//! (`table inet corral_policy`) in one transaction, so a host enforces either the old
//! rules or the new ones, never a mix, and never none.
//!
//! The forward hook sees traffic between containers of one host (bridged frames, with the
//! kernel's bridge netfilter on) and across hosts (routed through the overlay), in both
//! overlay modes. Layout:
//!
//! - `forward`: replies of tracked connections (and related ICMP errors) pass; so does a
//!   connection already judged under this rule set (its conntrack mark is the set's epoch);
//!   traffic with neither end in the overlay range is not ours; the rest goes to
//!   `east_west`, `egress` or `ingress`. An allow marks the connection with the epoch. A new
//!   rule set has a new epoch, so every open connection is judged again on its next packet:
//!   one the new rules deny stops there.
//! - `east_west` / `egress` / `ingress`: a verdict map from the replica's address (the
//!   source; for ingress the destination) to its service's chain. An overlay address that is
//!   no known replica is dropped (counter `unknown`).
//! - one chain per service and direction: a set lookup per deny rule (its own counter,
//!   `deny_N`), then the allows (two merged sets), then the default (counters
//!   `default_east_west`, `default_egress`, `default_ingress`).

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::compile::{Chain, Match, Peers, PortSet, Ruleset};
use crate::document::Action;
use crate::net::Cidr;

/// The table the policy lives in (never the one `corral firewall apply` owns).
pub const TABLE: &str = "corral_policy";

/// Stands for the rule set's epoch until the script is complete (see [`render`]).
const EPOCH: &str = "@EPOCH@";
/// What an allow does: the connection is marked with the epoch it was judged in, then let
/// through.
const ACCEPT: &str = "ct mark set @EPOCH@ accept";

fn verdict(a: Action) -> &'static str {
    match a {
        Action::Allow => ACCEPT,
        Action::Deny => "drop",
    }
}

fn elements(out: &mut String, items: &[String]) {
    if !items.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", items.join(",\n\t\t\t"));
    }
}

fn port_elements(prefix: &str, ports: &PortSet) -> Vec<String> {
    let mut v = Vec::new();
    for (proto, ranges) in ports {
        for (a, b) in ranges {
            if a == b {
                v.push(format!("{prefix}{proto} . {a}"));
            } else {
                v.push(format!("{prefix}{proto} . {a}-{b}"));
            }
        }
    }
    v
}

struct Writer {
    sets: String,
    chains: String,
}

impl Writer {
    fn replica_set(&mut self, name: &str, with_ports: bool, items: &[String]) {
        if with_ports {
            let _ = writeln!(
                self.sets,
                "\tset {name} {{\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tflags interval"
            );
        } else {
            let _ = writeln!(self.sets, "\tset {name} {{\n\t\ttype ipv4_addr");
        }
        elements(&mut self.sets, items);
        let _ = writeln!(self.sets, "\t}}");
    }

    /// One match as a rule of `chain`; `peer_field` is `ip daddr` or `ip saddr`.
    fn rule(&mut self, set_name: &str, m: &Match, peer_field: &str, action: &str, tail: &str) {
        match (&m.peers, &m.ports) {
            (Peers::Replicas(addrs), None) => {
                let items: Vec<String> = addrs.iter().map(Ipv4Addr::to_string).collect();
                self.replica_set(set_name, false, &items);
                let _ = writeln!(self.chains, "\t\t{peer_field} @{set_name}{tail} {action}");
            }
            (Peers::Replicas(addrs), Some(ports)) => {
                let mut items = Vec::new();
                for a in addrs {
                    items.extend(port_elements(&format!("{a} . "), ports));
                }
                self.replica_set(set_name, true, &items);
                let _ = writeln!(
                    self.chains,
                    "\t\t{peer_field} . meta l4proto . th dport @{set_name}{tail} {action}"
                );
            }
            (Peers::Network(net), None) => {
                let _ = writeln!(self.chains, "\t\t{peer_field} {net}{tail} {action}");
            }
            (Peers::Network(net), Some(ports)) => {
                let items = port_elements("", ports);
                let _ = writeln!(
                    self.chains,
                    "\t\t{peer_field} {net} meta l4proto . th dport {{ {} }}{tail} {action}",
                    items.join(", ")
                );
            }
        }
    }

    fn chain(&mut self, name: &str, chain: &Chain, peer_field: &str, default_counter: &str) {
        let _ = writeln!(self.chains, "\tchain {name} {{");
        for m in &chain.denies {
            let set = format!("{name}_d{}", m.rule.index);
            let tail = format!(" counter name deny_{}", m.rule.index);
            self.rule(&set, m, peer_field, "drop", &tail);
        }
        // Allows: merged into two sets for replicas (any traffic; listed ports), one rule
        // per network.
        let mut any = Vec::new();
        let mut ported = Vec::new();
        for m in &chain.allows {
            match (&m.peers, &m.ports) {
                (Peers::Replicas(addrs), None) => any.extend(addrs.iter().copied()),
                (Peers::Replicas(addrs), Some(ports)) => {
                    for a in addrs {
                        ported.push((*a, ports.clone()));
                    }
                }
                (Peers::Network(_), _) => {
                    let set = format!("{name}_a{}", m.rule.index);
                    self.rule(&set, m, peer_field, ACCEPT, "");
                }
            }
        }
        if !any.is_empty() {
            any.sort_unstable();
            any.dedup();
            let items: Vec<String> = any.iter().map(Ipv4Addr::to_string).collect();
            let set = format!("{name}_any");
            self.replica_set(&set, false, &items);
            let _ = writeln!(self.chains, "\t\t{peer_field} @{set} {ACCEPT}");
        }
        if !ported.is_empty() {
            // Merge each address's ports across rules: interval sets refuse overlaps.
            let mut by_addr: std::collections::BTreeMap<Ipv4Addr, Vec<crate::net::PortRange>> =
                std::collections::BTreeMap::new();
            for (a, ports) in ported {
                let list = by_addr.entry(a).or_default();
                for (proto, ranges) in ports {
                    for (first, last) in ranges {
                        list.push(crate::net::PortRange { proto, first, last });
                    }
                }
            }
            let mut items = Vec::new();
            for (a, ranges) in by_addr {
                items.extend(port_elements(
                    &format!("{a} . "),
                    &crate::compile::port_set(&ranges),
                ));
            }
            let set = format!("{name}_ports");
            self.replica_set(&set, true, &items);
            let _ = writeln!(
                self.chains,
                "\t\t{peer_field} . meta l4proto . th dport @{set} {ACCEPT}"
            );
        }
        let _ = writeln!(
            self.chains,
            "\t\tcounter name {default_counter} {}\n\t}}",
            verdict(chain.default)
        );
    }
}

/// The nft script that makes `rules` the host's policy.
pub fn render(rules: &Ruleset) -> String {
    let mut w = Writer {
        sets: String::new(),
        chains: String::new(),
    };
    let mut deny_counters = std::collections::BTreeSet::new();
    let (mut ew, mut eg, mut ing, mut known) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, class) in rules.classes.iter().enumerate() {
        for a in &class.addresses {
            known.push(a.to_string());
            ew.push(format!("{a} : jump ew{i}"));
            eg.push(format!("{a} : jump eg{i}"));
            ing.push(format!("{a} : jump in{i}"));
        }
        for chain in [&class.east_west, &class.egress, &class.ingress] {
            deny_counters.extend(chain.denies.iter().map(|m| m.rule.index));
        }
        w.chain(
            &format!("ew{i}"),
            &class.east_west,
            "ip daddr",
            "default_east_west",
        );
        w.chain(
            &format!("eg{i}"),
            &class.egress,
            "ip daddr",
            "default_egress",
        );
        w.chain(
            &format!("in{i}"),
            &class.ingress,
            "ip saddr",
            "default_ingress",
        );
    }
    let range = rules.range;
    let mut out = String::new();
    let _ = writeln!(out, "table inet {TABLE}\ndelete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");
    let _ = writeln!(
        out,
        "\tcomment \"corral network policy, generation {}\"",
        rules.generation
    );
    for c in [
        "unknown",
        "default_east_west",
        "default_egress",
        "default_ingress",
    ] {
        let _ = writeln!(out, "\tcounter {c} {{ }}");
    }
    for k in &deny_counters {
        let _ = writeln!(out, "\tcounter deny_{k} {{ }}");
    }
    let _ = writeln!(out, "\tset known {{\n\t\ttype ipv4_addr");
    elements(&mut out, &known);
    let _ = writeln!(out, "\t}}");
    for (name, items) in [("ew_of", &ew), ("egress_of", &eg), ("ingress_of", &ing)] {
        let _ = writeln!(out, "\tmap {name} {{\n\t\ttype ipv4_addr : verdict");
        elements(&mut out, items);
        let _ = writeln!(out, "\t}}");
    }
    out.push_str(&w.sets);
    let _ = writeln!(
        out,
        "\tchain forward {{
\t\ttype filter hook forward priority filter - 5; policy accept;
\t\tct state established,related ct direction reply accept
\t\tct state related accept
\t\tct state established ct mark {EPOCH} accept
\t\tip saddr != {range} ip daddr != {range} accept
\t\tip saddr {range} ip daddr {range} jump east_west
\t\tip saddr {range} jump egress
\t\tip daddr {range} jump ingress
\t}}
\tchain east_west {{
\t\tip daddr != @known counter name unknown drop
\t\tip saddr vmap @ew_of
\t\tcounter name unknown drop
\t}}
\tchain egress {{
\t\tip saddr vmap @egress_of
\t\tcounter name unknown drop
\t}}
\tchain ingress {{
\t\tip daddr vmap @ingress_of
\t\tcounter name unknown drop
\t}}"
    );
    out.push_str(&w.chains);
    out.push_str("}\n");
    // The epoch names this exact rule set: a connection judged under it goes through on its
    // mark alone (one comparison per packet, however many rules), and any change of rules or
    // replicas makes every open connection be judged again on its next packet, so a
    // connection a new generation denies stops there.
    let epoch = epoch_of(&out);
    out.replace(EPOCH, &format!("0x{epoch:08x}"))
}

/// A non-zero 32-bit digest of the script (FNV-1a; 0 is an unmarked connection).
fn epoch_of(script: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in script.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// The script that removes the policy table (no policy in force). Safe when it is absent.
pub fn render_removal() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// Where the kernel cannot show bridged frames to the forward hook (no bridge netfilter),
/// same-host traffic between containers would escape the policy; this table cuts it instead
/// (fail closed): bridged frames between two overlay addresses are dropped. (Only the overlay
/// bridge carries overlay addresses; traffic across hosts is routed, not bridged.)
pub fn render_bridge_cut(range: Cidr) -> String {
    format!(
        "table bridge {TABLE}\ndelete table bridge {TABLE}\ntable bridge {TABLE} {{\n\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tip saddr {range} ip daddr {range} counter drop\n\t}}\n}}\n"
    )
}

/// The script that removes [`render_bridge_cut`]'s table. Safe when it is absent.
pub fn render_bridge_cut_removal() -> String {
    format!("table bridge {TABLE}\ndelete table bridge {TABLE}\n")
}
