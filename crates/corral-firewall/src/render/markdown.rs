//! Markdown: one table per security group with the columns of a cloud provider's
//! security-group documentation (Direction | Protocol | Port | Source | Destination | Purpose |
//! Impact if removed).

use std::fmt::Write as _;

use super::{RenderError, Scope, scoped_groups};
use crate::plan::{Direction, Plan, Traffic};

fn cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

fn port_cell(t: &Traffic) -> String {
    match t {
        Traffic::Tcp { ports } | Traffic::Udp { ports } => ports.to_string(),
        Traffic::Icmp { icmp } => {
            let (t4, c4) = icmp.v4_type_code();
            let (t6, c6) = icmp.v6_type_code();
            format!("ICMP type {t4} code {c4}; ICMPv6 type {t6} code {c6}")
        }
    }
}

pub(super) fn render(plan: &Plan, scope: &Scope) -> Result<String, RenderError> {
    let groups = scoped_groups(plan, scope)?;
    let mut out = String::new();
    let env_summary = plan
        .environments
        .iter()
        .map(|e| format!("{} ({})", e.name, e.overlay.label()))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(out, "# corral firewall rules\n");
    let _ = writeln!(
        out,
        "Server `{}` ({}{}), {} host(s); environments: {}.\n",
        cell(&plan.topology.server.name),
        match plan.topology.server.replicas.len() {
            0 => "no replicas".to_string(),
            1 => "1 replica".to_string(),
            n => format!("{n} replicas"),
        },
        if plan.topology.server.datastore.is_some() {
            ", PostgreSQL datastore"
        } else {
            ", embedded datastore"
        },
        plan.hosts.len(),
        cell(&env_summary)
    );
    let _ = writeln!(
        out,
        "Hosts open **no port to the server**: each agent dials out to the server on {}/tcp \
         and every command comes back over that connection. There is no server-to-host flow.\n",
        plan.agent_port
    );
    if let Some(h) = &scope.host {
        let _ = writeln!(out, "Scope: machine `{}` only.\n", cell(h));
    }
    for (kind, flows) in &groups {
        let Some(g) = plan.group(*kind) else {
            continue;
        };
        let _ = writeln!(
            out,
            "## {} `{}` ({})\n",
            capitalise(kind.label()),
            cell(&g.id),
            cell(&g.name)
        );
        let members = g
            .members
            .iter()
            .map(|m| {
                if m.addresses.is_empty() {
                    format!("{} (no known address)", m.name)
                } else {
                    format!(
                        "{} ({})",
                        m.name,
                        m.addresses
                            .iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        let _ = writeln!(
            out,
            "Members: {}\n",
            if members.is_empty() {
                "none yet".to_string()
            } else {
                cell(&members)
            }
        );
        let _ = writeln!(
            out,
            "| Direction | Protocol | Port | Source | Destination | Purpose | Impact if removed |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for dir in [Direction::Inbound, Direction::Outbound] {
            for f in flows.iter().filter(|f| f.direction == dir) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    f.direction,
                    f.protocol().as_str().to_ascii_uppercase(),
                    cell(&port_cell(&f.traffic)),
                    cell(&plan.endpoint_label(&f.source)),
                    cell(&plan.endpoint_label(&f.destination)),
                    cell(&f.purpose),
                    cell(&f.impact_if_removed)
                );
            }
        }
        if !flows.iter().any(|f| f.direction == Direction::Outbound) {
            let _ = writeln!(
                out,
                "\nNo outbound rule: replies to allowed inbound traffic are allowed by the \
                 security group's connection tracking."
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "Everything not listed is denied. Outbound rules replace the default allow-all egress \
         rule; keep it if you do not harden egress.\n"
    );
    if !plan.warnings.is_empty() {
        let _ = writeln!(out, "## Warnings\n");
        for w in &plan.warnings {
            let _ = writeln!(out, "- **{}**: {}", cell(&w.subject), cell(&w.message));
        }
    }
    Ok(out)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
