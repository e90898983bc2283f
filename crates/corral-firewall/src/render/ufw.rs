//! ufw: `ufw allow ...` commands for ONE machine's inbound flows (ufw's default policy already
//! denies other inbound traffic). ufw cannot express ICMP rules on the command line nor match
//! DNAT'd (Docker-published) traffic; both limits are stated as comments in the output.

use std::fmt::Write as _;

use super::{
    FamilySources, Format, RenderError, Scope, comment_text, machine, machine_rules,
    outbound_comment_lines, restricted_published,
};
use crate::net::Family;
use crate::plan::{Plan, Traffic};

pub(super) fn render(plan: &Plan, scope: &Scope) -> Result<String, RenderError> {
    let view = machine(plan, scope, Format::Ufw)?;
    let rules = machine_rules(plan, &view, Format::Ufw)?;
    let mut out = String::new();
    let _ = writeln!(out, "#!/bin/sh");
    let _ = writeln!(
        out,
        "# corral firewall for {} as ufw commands (generated). Review, then run as root.",
        comment_text(&view.title)
    );
    let _ = writeln!(
        out,
        "# ufw denies other inbound traffic by default (ufw default deny incoming)."
    );
    for line in outbound_comment_lines(plan, &view) {
        let _ = writeln!(out, "# {}", comment_text(&line));
    }
    let _ = writeln!(out, "set -e");
    if view.is_host {
        for iface in &plan.topology.bridge_interfaces {
            if iface.ends_with('*') {
                let _ = writeln!(
                    out,
                    "# ufw cannot match the interface pattern {iface}: allow DNS (53) from \
                     those bridges by name for the agent's DNS responder"
                );
                continue;
            }
            for proto in ["udp", "tcp"] {
                let _ = writeln!(
                    out,
                    "ufw allow in on {iface} proto {proto} to any port 53 comment 'corral agent \
                     DNS responder for containers'"
                );
            }
        }
    }
    for r in &rules {
        let (proto, ports) = match r.traffic {
            Traffic::Tcp { ports } => ("tcp", ports),
            Traffic::Udp { ports } => ("udp", ports),
            Traffic::Icmp { .. } => {
                let _ = writeln!(
                    out,
                    "# {}: ufw has no command for ICMP; its default before.rules already \
                     accept destination-unreachable (IPv4) and packet-too-big (IPv6)",
                    r.comment
                );
                continue;
            }
        };
        let port = ports.display_with(":");
        let tail = format!("to any port {port} comment '{}'", r.comment);
        if r.v4 == FamilySources::Any && r.v6 == FamilySources::Any {
            let _ = writeln!(out, "ufw allow proto {proto} from any {tail}");
            continue;
        }
        for fam in [Family::V4, Family::V6] {
            match r.family(fam) {
                FamilySources::None => {}
                FamilySources::Any => {
                    let any = match fam {
                        Family::V4 => "0.0.0.0/0",
                        Family::V6 => "::/0",
                    };
                    let _ = writeln!(out, "ufw allow proto {proto} from {any} {tail}");
                }
                FamilySources::Some(list) => {
                    for c in list {
                        let src = if c.is_single() {
                            c.addr().to_string()
                        } else {
                            c.to_string()
                        };
                        let _ = writeln!(out, "ufw allow proto {proto} from {src} {tail}");
                    }
                }
            }
        }
    }
    if view.is_host {
        for r in restricted_published(&rules) {
            let _ = writeln!(
                out,
                "# {}: Docker-published ports bypass ufw (they are DNAT'd and forwarded, not \
                 input); enforce this source restriction with the nftables or iptables output",
                r.comment
            );
        }
    }
    let _ = writeln!(out, "# ufw enable");
    Ok(out)
}
