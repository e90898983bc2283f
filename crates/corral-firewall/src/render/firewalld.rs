//! firewalld: `firewall-cmd --permanent` commands for ONE machine, building a dedicated zone
//! `corral` with target `DROP`: ports open to everyone become `--add-port`, source-restricted
//! ones rich rules (`rule family=... source address=... port ... accept`). The zone is not
//! bound to an interface automatically (that would move the interface out of its current
//! zone); the command to do so is printed as a comment.

use std::fmt::Write as _;

use super::{
    FamilySources, Format, RenderError, Scope, comment_text, machine, machine_rules,
    outbound_comment_lines, restricted_published,
};
use crate::net::Family;
use crate::plan::{Plan, Traffic};

const CMD: &str = "firewall-cmd --permanent --zone=corral";

pub(super) fn render(plan: &Plan, scope: &Scope) -> Result<String, RenderError> {
    let view = machine(plan, scope, Format::Firewalld)?;
    let rules = machine_rules(plan, &view, Format::Firewalld)?;
    let mut out = String::new();
    let _ = writeln!(out, "#!/bin/sh");
    let _ = writeln!(
        out,
        "# corral firewall for {} as firewalld commands (generated). Review, then run as root.",
        comment_text(&view.title)
    );
    for line in outbound_comment_lines(plan, &view) {
        let _ = writeln!(out, "# {}", comment_text(&line));
    }
    let _ = writeln!(out, "set -e");
    let _ = writeln!(
        out,
        "# Re-running: firewall-cmd --permanent --delete-zone=corral first."
    );
    let _ = writeln!(out, "firewall-cmd --permanent --new-zone=corral");
    let _ = writeln!(out, "{CMD} --set-target=DROP");
    for r in &rules {
        let _ = writeln!(out, "# {}", r.comment);
        match r.traffic {
            Traffic::Icmp { .. } => {
                for (fam, name) in [
                    (Family::V4, "fragmentation-needed"),
                    (Family::V6, "packet-too-big"),
                ] {
                    let family = match fam {
                        Family::V4 => "ipv4",
                        Family::V6 => "ipv6",
                    };
                    if r.family(fam) != &FamilySources::None {
                        let _ = writeln!(
                            out,
                            "{CMD} --add-rich-rule='rule family=\"{family}\" icmp-type \
                             name=\"{name}\" accept'"
                        );
                    }
                }
            }
            Traffic::Tcp { ports } | Traffic::Udp { ports } => {
                let proto = r.traffic.protocol().as_str();
                let port = ports.display_with("-");
                if r.v4 == FamilySources::Any && r.v6 == FamilySources::Any {
                    let _ = writeln!(out, "{CMD} --add-port={port}/{proto}");
                    continue;
                }
                for fam in [Family::V4, Family::V6] {
                    let family = match fam {
                        Family::V4 => "ipv4",
                        Family::V6 => "ipv6",
                    };
                    let sources: Vec<String> = match r.family(fam) {
                        FamilySources::None => Vec::new(),
                        FamilySources::Any => vec![String::new()],
                        FamilySources::Some(list) => list
                            .iter()
                            .map(|c| format!(" source address=\"{}\"", c.to_cidr_string()))
                            .collect(),
                    };
                    for src in sources {
                        let _ = writeln!(
                            out,
                            "{CMD} --add-rich-rule='rule family=\"{family}\"{src} port \
                             port=\"{port}\" protocol=\"{proto}\" accept'"
                        );
                    }
                }
            }
        }
    }
    if view.is_host {
        let _ = writeln!(
            out,
            "# Container bridges ({}) stay in their own zone (Docker's zone): the agent's DNS \
             responder on the bridge address is reached from there.",
            plan.topology.bridge_interfaces.join(", ")
        );
        for r in restricted_published(&rules) {
            let _ = writeln!(
                out,
                "# {}: Docker-published ports are forwarded, not input; enforce this source \
                 restriction with the nftables or iptables output",
                r.comment
            );
        }
    }
    let _ = writeln!(
        out,
        "# Bind the zone to the interface facing the network (moves it out of its current zone):"
    );
    let _ = writeln!(out, "# {CMD} --change-interface=eth0");
    let _ = writeln!(out, "firewall-cmd --reload");
    Ok(out)
}
