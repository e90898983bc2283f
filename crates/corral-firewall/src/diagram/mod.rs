//! Port-flow diagrams of a topology: who talks to whom on which port.
//!
//! Boxes: "Users / CLI", the server (with replicas and datastore), every host grouped by
//! environment, and "Internet" when ports are published. Arrows: users → server (API),
//! host → server ("agent dials out") — never server → host —, the overlay mesh between the
//! hosts of an environment, and published ports from the Internet to the hosts publishing them.
//!
//! [`diagram`] never fails: it draws whatever the topology holds (it does not validate; use
//! [`crate::plan()`] for that), escaping every user string for the output language. The SVG is
//! laid out here (module `svg`), without Graphviz.

mod model;
pub mod services;
mod svg;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::topology::Topology;
pub(crate) use model::Model;

/// Diagram output languages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiagramFormat {
    /// Self-contained SVG, laid out by this crate.
    Svg,
    /// Graphviz DOT (lay out with `dot -Tsvg`).
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

/// Above this many hosts in one environment, DOT and Mermaid draw the overlay as a chain
/// labelled "full mesh" instead of every pair.
pub const FULL_MESH_LIMIT: usize = 6;

/// Draws the topology's port flows.
pub fn diagram(topology: &Topology, format: DiagramFormat) -> String {
    let model = Model::from_topology(topology);
    match format {
        DiagramFormat::Svg => svg::render(&model),
        DiagramFormat::Dot => dot(&model),
        DiagramFormat::Mermaid => mermaid(&model),
    }
}

fn dot_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Pairs of host indexes the overlay is drawn between.
pub(crate) fn overlay_pairs(n: usize, limit: usize) -> Vec<(usize, usize)> {
    if n <= limit {
        let mut v = Vec::new();
        for i in 0..n {
            for j in (i + 1)..n {
                v.push((i, j));
            }
        }
        v
    } else {
        (1..n).map(|i| (i - 1, i)).collect()
    }
}

fn dot(m: &Model) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "digraph corral {{");
    let _ = writeln!(
        o,
        "  graph [rankdir=TB, fontname=\"sans-serif\", fontsize=16, nodesep=0.5, ranksep=0.9, \
         labelloc=t, label={}];",
        dot_str("corral port flows: agents dial out; hosts open no port to the server")
    );
    let _ = writeln!(
        o,
        "  node [shape=box, style=\"rounded,filled\", fontname=\"sans-serif\", fontsize=12, \
         fillcolor=\"#f8fafc\", color=\"#334155\"];"
    );
    let _ = writeln!(o, "  edge [fontname=\"sans-serif\", fontsize=10];");
    let _ = writeln!(
        o,
        "  users [label={}, fillcolor=\"#f1f5f9\"];",
        dot_str(&format!("Users / CLI\n{}", m.users_sub))
    );
    if m.has_published() {
        let _ = writeln!(
            o,
            "  internet [label={}, fillcolor=\"#faf5ff\"];",
            dot_str("Internet\nclients of published services")
        );
    }
    for (i, s) in m.servers.iter().enumerate() {
        let _ = writeln!(
            o,
            "  server{i} [label={}, fillcolor=\"#eff6ff\", color=\"#1d4ed8\"];",
            dot_str(&s.lines.join("\n"))
        );
    }
    if let Some(ds) = &m.datastore {
        let _ = writeln!(
            o,
            "  datastore [label={}, shape=cylinder, fillcolor=\"#f3f4f6\"];",
            dot_str(&ds.lines.join("\n"))
        );
    }
    let _ = writeln!(o, "  {{ rank=same; {} }}", {
        let mut v: Vec<String> = (0..m.servers.len())
            .map(|i| format!("server{i};"))
            .collect();
        if m.datastore.is_some() {
            v.push("datastore;".to_string());
        }
        v.join(" ")
    });
    for (e, env) in m.envs.iter().enumerate() {
        let _ = writeln!(o, "  subgraph cluster_env{e} {{");
        let _ = writeln!(
            o,
            "    label={}; style=\"rounded,dashed\"; color={}; fontname=\"sans-serif\";",
            dot_str(&format!("environment {}: {}", env.name, env.overlay_label)),
            if env.encrypted {
                "\"#059669\""
            } else {
                "\"#d97706\""
            }
        );
        for h in &env.hosts {
            let mut lines = vec![h.name.clone()];
            lines.extend(h.addresses.iter().cloned());
            if h.runs_server {
                lines.push("also runs the server".to_string());
            }
            for p in &h.published {
                lines.push(format!("publishes {p}"));
            }
            let _ = writeln!(
                o,
                "    h{} [label={}, fillcolor=\"#f0fdf4\"];",
                h.id,
                dot_str(&lines.join("\n"))
            );
        }
        let _ = writeln!(o, "  }}");
    }
    for i in 0..m.servers.len() {
        let _ = writeln!(
            o,
            "  users -> server{i} [label={}, color=\"#374151\"];",
            dot_str(&m.api_label)
        );
    }
    if let Some(ds) = &m.datastore {
        for i in 0..m.servers.len() {
            let _ = writeln!(
                o,
                "  server{i} -> datastore [label={}, color=\"#6b7280\"];",
                dot_str(&ds.link_label)
            );
        }
    }
    let _ = writeln!(
        o,
        "  // Agent edges are written server -> host with dir=back only so that the server ranks \
         above the hosts;\n  // the arrowhead is at the server: the agent dials out, nothing \
         goes from the server to a host."
    );
    for env in &m.envs {
        for h in &env.hosts {
            let _ = writeln!(
                o,
                "  server0 -> h{} [dir=back, label={}, color=\"#2563eb\"];",
                h.id,
                dot_str(&m.agent_label)
            );
        }
    }
    for env in &m.envs {
        let pairs = overlay_pairs(env.hosts.len(), FULL_MESH_LIMIT);
        let color = if env.encrypted { "#059669" } else { "#d97706" };
        for (k, (i, j)) in pairs.iter().enumerate() {
            let (Some(a), Some(b)) = (env.hosts.get(*i), env.hosts.get(*j)) else {
                continue;
            };
            let label = if k == 0 {
                format!(" label={},", dot_str(&env.mesh_label()))
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "  h{} -> h{} [dir=both, style=dashed,{label} color=\"{color}\", \
                 constraint=false];",
                a.id, b.id
            );
        }
    }
    for env in &m.envs {
        for h in &env.hosts {
            if !h.published.is_empty() {
                let _ = writeln!(
                    o,
                    "  internet -> h{} [label={}, color=\"#9333ea\"];",
                    h.id,
                    dot_str(&h.published.join("\n"))
                );
            }
        }
    }
    let _ = writeln!(o, "}}");
    o
}

fn mm_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '#' => out.push_str("#35;"),
            '\n' => out.push_str("<br/>"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn mermaid(m: &Model) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "flowchart TB");
    let _ = writeln!(
        o,
        "  users[{}]",
        mm_str(&format!("Users / CLI\n{}", m.users_sub))
    );
    if m.has_published() {
        let _ = writeln!(
            o,
            "  internet[{}]",
            mm_str("Internet\nclients of published services")
        );
    }
    for (i, s) in m.servers.iter().enumerate() {
        let _ = writeln!(o, "  server{i}[{}]", mm_str(&s.lines.join("\n")));
    }
    if let Some(ds) = &m.datastore {
        let _ = writeln!(o, "  datastore[({})]", mm_str(&ds.lines.join("\n")));
    }
    for (e, env) in m.envs.iter().enumerate() {
        let _ = writeln!(
            o,
            "  subgraph env{e}[{}]",
            mm_str(&format!("environment {}: {}", env.name, env.overlay_label))
        );
        for h in &env.hosts {
            let mut lines = vec![h.name.clone()];
            lines.extend(h.addresses.iter().cloned());
            if h.runs_server {
                lines.push("also runs the server".to_string());
            }
            let _ = writeln!(o, "    h{}[{}]", h.id, mm_str(&lines.join("\n")));
        }
        let _ = writeln!(o, "  end");
    }
    for i in 0..m.servers.len() {
        let _ = writeln!(o, "  users -->|{}| server{i}", mm_str(&m.api_label));
    }
    if let Some(ds) = &m.datastore {
        for i in 0..m.servers.len() {
            let _ = writeln!(o, "  server{i} -->|{}| datastore", mm_str(&ds.link_label));
        }
    }
    for env in &m.envs {
        for h in &env.hosts {
            let _ = writeln!(o, "  h{} -->|{}| server0", h.id, mm_str(&m.agent_label));
        }
    }
    for env in &m.envs {
        for (k, (i, j)) in overlay_pairs(env.hosts.len(), FULL_MESH_LIMIT)
            .iter()
            .enumerate()
        {
            let (Some(a), Some(b)) = (env.hosts.get(*i), env.hosts.get(*j)) else {
                continue;
            };
            if k == 0 {
                let _ = writeln!(
                    o,
                    "  h{} <-.->|{}| h{}",
                    a.id,
                    mm_str(&env.mesh_label()),
                    b.id
                );
            } else {
                let _ = writeln!(o, "  h{} <-.-> h{}", a.id, b.id);
            }
        }
    }
    for env in &m.envs {
        for h in &env.hosts {
            if !h.published.is_empty() {
                let _ = writeln!(
                    o,
                    "  internet -->|{}| h{}",
                    mm_str(&h.published.join("\n")),
                    h.id
                );
            }
        }
    }
    let _ = writeln!(o, "  classDef server fill:#eff6ff,stroke:#1d4ed8");
    let _ = writeln!(o, "  classDef host fill:#f0fdf4,stroke:#334155");
    let servers: Vec<String> = (0..m.servers.len()).map(|i| format!("server{i}")).collect();
    if !servers.is_empty() {
        let _ = writeln!(o, "  class {} server", servers.join(","));
    }
    let hosts: Vec<String> = m
        .envs
        .iter()
        .flat_map(|e| e.hosts.iter().map(|h| format!("h{}", h.id)))
        .collect();
    if !hosts.is_empty() {
        let _ = writeln!(o, "  class {} host", hosts.join(","));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(dot_str("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        assert_eq!(mm_str("a\"<b>#"), "\"a#quot;#lt;b#gt;#35;\"");
    }

    #[test]
    fn mesh_pairs() {
        assert_eq!(overlay_pairs(3, 6), vec![(0, 1), (0, 2), (1, 2)]);
        assert_eq!(overlay_pairs(8, 6).len(), 7);
        assert!(overlay_pairs(0, 6).is_empty());
        assert!(overlay_pairs(1, 6).is_empty());
    }
}
