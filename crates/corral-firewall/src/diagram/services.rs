//! The application layer: an environment's services and the flows its network policy allows
//! between them, with their ports — the "boxes, lines and arrows" of what talks to what inside
//! the overlay (the port-flow diagram draws the hosts). The caller computes the flows (the
//! policy crate); this module only draws them (SVG laid out here: services in columns by the
//! flows, so `web → api → db` reads left to right; DOT and Mermaid group them by stack) and
//! lists them for the firewall export's markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::svg::xml;
use super::{DiagramFormat, dot_str, mm_str};

/// One service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBox {
    /// Its stack.
    pub stack: String,
    /// Its name.
    pub service: String,
    /// Its labels (drawn under the name).
    pub labels: Vec<(String, String)>,
}

impl ServiceBox {
    fn id(&self) -> String {
        format!("{}/{}", self.stack, self.service)
    }
}

/// What may flow from one service to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFlow {
    /// `STACK/SERVICE`.
    pub from: String,
    /// `STACK/SERVICE`.
    pub to: String,
    /// `8080/tcp`, `all traffic`, `all traffic except 22/tcp` (`nothing` is not drawn).
    pub access: String,
    /// Why (the rules, or the default).
    pub reason: String,
}

/// An environment's services and their flows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceMap {
    /// The environment.
    pub environment: String,
    /// What is in force: `network policy generation 3 (default: deny)`, `no network policy`.
    pub policy: String,
    /// The services.
    pub services: Vec<ServiceBox>,
    /// The flows (pairs where nothing may flow are left out when drawn).
    pub flows: Vec<ServiceFlow>,
}

impl ServiceMap {
    fn drawn_flows(&self) -> impl Iterator<Item = &ServiceFlow> {
        self.flows.iter().filter(|f| f.access != "nothing")
    }

    fn stacks(&self) -> BTreeMap<&str, Vec<&ServiceBox>> {
        let mut by: BTreeMap<&str, Vec<&ServiceBox>> = BTreeMap::new();
        for s in &self.services {
            by.entry(s.stack.as_str()).or_default().push(s);
        }
        by
    }
}

fn label_lines(s: &ServiceBox) -> Vec<String> {
    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Draws the services and their allowed flows.
pub fn services_diagram(map: &ServiceMap, format: DiagramFormat) -> String {
    match format {
        DiagramFormat::Svg => svg(map),
        DiagramFormat::Dot => dot(map),
        DiagramFormat::Mermaid => mermaid(map),
    }
}

/// The service-to-service section of the firewall export (markdown).
pub fn services_markdown(map: &ServiceMap) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Service to service (environment {}: {})\n",
        map.environment, map.policy
    );
    let _ = writeln!(
        out,
        "Traffic between stack containers on the overlay, enforced on every host by the agent (`table inet corral_policy`). New connections only: replies to an allowed connection always pass, and so do DNS queries to the host's service-discovery responder.\n"
    );
    let drawn: Vec<&ServiceFlow> = map.drawn_flows().collect();
    if drawn.is_empty() {
        let _ = writeln!(out, "No service may reach another.");
        return out;
    }
    let _ = writeln!(out, "| From | To | May carry | Why |");
    let _ = writeln!(out, "|---|---|---|---|");
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    for f in &drawn {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            cell(&f.from),
            cell(&f.to),
            cell(&f.access),
            cell(&f.reason)
        );
    }
    let _ = writeln!(
        out,
        "\nEvery pair of services not listed: nothing (new connections are dropped)."
    );
    out
}

fn dot(map: &ServiceMap) -> String {
    let mut out = String::from(
        "digraph services {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"sans-serif\"];\n  edge [fontname=\"sans-serif\", fontsize=10];\n",
    );
    let _ = writeln!(
        out,
        "  label={};\n  labelloc=t;",
        dot_str(&format!("environment {}: {}", map.environment, map.policy))
    );
    for (i, (stack, services)) in map.stacks().into_iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{i} {{\n    label={};",
            dot_str(&format!("stack {stack}"))
        );
        for s in services {
            let mut text = s.service.clone();
            for l in label_lines(s) {
                text.push('\n');
                text.push_str(&l);
            }
            let _ = writeln!(out, "    {} [label={}];", dot_str(&s.id()), dot_str(&text));
        }
        out.push_str("  }\n");
    }
    for f in map.drawn_flows() {
        let _ = writeln!(
            out,
            "  {} -> {} [label={}];",
            dot_str(&f.from),
            dot_str(&f.to),
            dot_str(&f.access)
        );
    }
    out.push_str("}\n");
    out
}

fn mermaid(map: &ServiceMap) -> String {
    let mut out = String::from("flowchart LR\n");
    let ids: BTreeMap<String, String> = map
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id(), format!("s{i}")))
        .collect();
    for (i, (stack, services)) in map.stacks().into_iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph st{i}[{}]",
            mm_str(&format!("stack {stack}"))
        );
        for s in services {
            let mut text = s.service.clone();
            for l in label_lines(s) {
                text.push_str("<br/>");
                text.push_str(&l);
            }
            let id = &ids[&s.id()];
            let _ = writeln!(
                out,
                "    {id}[{}]",
                mm_str(&text).replace("#lt;br/#gt;", "<br/>")
            );
        }
        out.push_str("  end\n");
    }
    for f in map.drawn_flows() {
        if let (Some(a), Some(b)) = (ids.get(&f.from), ids.get(&f.to)) {
            let _ = writeln!(out, "  {a} -- {} --> {b}", mm_str(&f.access));
        }
    }
    out
}

const BOX_W: f64 = 200.0;
const BOX_H: f64 = 76.0;
/// Vertical room per flow routed above or below the boxes.
const LANE: f64 = 24.0;
const COL_GAP: f64 = 190.0;
const ROW_GAP: f64 = 50.0;
const MARGIN: f64 = 30.0;
const HEAD: f64 = 76.0;

fn text_width(s: &str) -> f64 {
    s.chars().count() as f64 * 6.6
}

/// Columns by the flows: a service sits one column right of the furthest service that may
/// open connections to it (longest path, cycles cut after as many rounds as services), so
/// `web → api → db` reads left to right.
fn ranks(map: &ServiceMap) -> BTreeMap<String, usize> {
    let mut rank: BTreeMap<String, usize> = map.services.iter().map(|s| (s.id(), 0)).collect();
    let edges: Vec<(&str, &str)> = map
        .drawn_flows()
        .filter(|f| f.from != f.to)
        .map(|f| (f.from.as_str(), f.to.as_str()))
        .collect();
    for _ in 0..map.services.len() {
        let mut changed = false;
        for (a, b) in &edges {
            let (Some(&ra), Some(&rb)) = (rank.get(*a), rank.get(*b)) else {
                continue;
            };
            if rb < ra + 1 && ra + 1 < map.services.len() {
                rank.insert((*b).to_owned(), ra + 1);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    rank
}

fn svg(map: &ServiceMap) -> String {
    let rank = ranks(map);
    let columns = rank.values().copied().max().map_or(1, |m| m + 1);
    let mut by_column: Vec<Vec<&ServiceBox>> = vec![Vec::new(); columns];
    for s in &map.services {
        by_column[rank.get(&s.id()).copied().unwrap_or(0)].push(s);
    }
    let col_of = |id: &str| rank.get(id).copied().unwrap_or(0);
    // Flows that skip a column go over the boxes, flows back (or within a column) under them.
    let over = map
        .drawn_flows()
        .filter(|f| col_of(&f.to) > col_of(&f.from) + 1)
        .count();
    let under = map
        .drawn_flows()
        .filter(|f| f.from != f.to && col_of(&f.to) <= col_of(&f.from))
        .count();
    let top = HEAD + 20.0 + over as f64 * LANE;
    let mut at: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let tallest = by_column.iter().map(Vec::len).max().unwrap_or(1).max(1);
    for (col, services) in by_column.iter_mut().enumerate() {
        services.sort_by(|a, b| (&a.stack, &a.service).cmp(&(&b.stack, &b.service)));
        for (row, s) in services.iter().enumerate() {
            let x = MARGIN + col as f64 * (BOX_W + COL_GAP);
            let y = top + row as f64 * (BOX_H + ROW_GAP);
            at.insert(s.id(), (x, y));
        }
    }
    let title = format!("Services of environment {}", map.environment);
    let subtitle = format!(
        "{}; arrows: new connections the policy allows (replies always pass)",
        map.policy
    );
    let width = (2.0 * MARGIN + columns as f64 * BOX_W + (columns as f64 - 1.0) * COL_GAP)
        .max(2.0 * MARGIN + text_width(&subtitle))
        .max(2.0 * MARGIN + text_width(&title) * 1.5);
    let bottom = top + tallest as f64 * (BOX_H + ROW_GAP) - ROW_GAP + 24.0;
    let height = bottom + under as f64 * LANE + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"##
    );
    out.push_str(r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#2e7d32"/></marker></defs>
<rect width="100%" height="100%" fill="#ffffff"/>
"##);
    let _ = writeln!(
        out,
        r##"<text x="{MARGIN}" y="32" font-size="18" font-weight="bold">{}</text>"##,
        xml(&title)
    );
    let _ = writeln!(
        out,
        r##"<text x="{MARGIN}" y="54" fill="#555">{}</text>"##,
        xml(&subtitle)
    );
    let mut self_flows: BTreeMap<String, String> = BTreeMap::new();
    let mut labels = String::new();
    let (mut below, mut above) = (0usize, 0usize);
    for f in map.drawn_flows() {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (at.get(&f.from), at.get(&f.to)) else {
            continue;
        };
        if f.from == f.to {
            self_flows.insert(f.from.clone(), f.access.clone());
            continue;
        }
        let (c1, c2) = (col_of(&f.from), col_of(&f.to));
        let (path, lx, ly) = if c2 == c1 + 1 {
            let (sx, sy, ex, ey) = (x1 + BOX_W, y1 + BOX_H / 2.0, x2, y2 + BOX_H / 2.0);
            let mid = (sx + ex) / 2.0;
            (
                format!("M{sx:.1},{sy:.1} C{mid:.1},{sy:.1} {mid:.1},{ey:.1} {ex:.1},{ey:.1}"),
                mid,
                (sy + ey) / 2.0,
            )
        } else if c2 > c1 {
            // Over the boxes in between, one lane per flow, from top to top.
            let lane = top - 14.0 - above as f64 * LANE;
            above += 1;
            let (sx, sy, ex, ey) = (x1 + BOX_W * 0.6, y1, x2 + BOX_W * 0.4, y2);
            (
                format!("M{sx:.1},{sy:.1} C{sx:.1},{lane:.1} {ex:.1},{lane:.1} {ex:.1},{ey:.1}"),
                (sx + ex) / 2.0,
                lane + 8.0,
            )
        } else {
            // Below every box, one lane per flow, from the source's bottom to the target's.
            let lane = bottom + below as f64 * LANE;
            below += 1;
            let (sx, sy, ex, ey) = (x1 + BOX_W * 0.6, y1 + BOX_H, x2 + BOX_W * 0.4, y2 + BOX_H);
            (
                format!("M{sx:.1},{sy:.1} C{sx:.1},{lane:.1} {ex:.1},{lane:.1} {ex:.1},{ey:.1}"),
                (sx + ex) / 2.0,
                lane - 6.0,
            )
        };
        let _ = writeln!(
            out,
            r##"<path d="{path}" fill="none" stroke="#2e7d32" stroke-width="1.6" marker-end="url(#arrow)"><title>{}</title></path>"##,
            xml(&format!(
                "{} → {}: {} ({})",
                f.from, f.to, f.access, f.reason
            ))
        );
        let w = text_width(&f.access) + 10.0;
        let _ = writeln!(
            labels,
            r##"<rect x="{:.1}" y="{:.1}" width="{w:.1}" height="16" rx="3" fill="#e8f5e9" stroke="#a5d6a7"/><text x="{lx:.1}" y="{:.1}" text-anchor="middle" fill="#1b5e20">{}</text>"##,
            lx - w / 2.0,
            ly - 11.0,
            ly + 1.0,
            xml(&f.access)
        );
    }
    for s in &map.services {
        let Some(&(x, y)) = at.get(&s.id()) else {
            continue;
        };
        let _ = writeln!(
            out,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="#e3f2fd" stroke="#1565c0"/><text x="{:.1}" y="{:.1}" font-weight="bold">{}</text><text x="{:.1}" y="{:.1}" fill="#37474f" font-size="11">{}</text>"##,
            x + 10.0,
            y + 20.0,
            xml(&s.service),
            x + 10.0,
            y + 36.0,
            xml(&format!("stack {}", s.stack))
        );
        let text = label_lines(s).join(", ");
        if !text.is_empty() {
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" fill="#455a64" font-size="11">{}</text>"##,
                x + 10.0,
                y + 52.0,
                xml(&text)
            );
        }
        if let Some(access) = self_flows.get(&s.id()) {
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" fill="#1b5e20" font-size="11">{}</text>"##,
                x + 10.0,
                y + 68.0,
                xml(&format!("↺ replica to replica: {access}"))
            );
        }
    }
    // Labels last, over the lines.
    out.push_str(&labels);
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> ServiceMap {
        let b = |stack: &str, service: &str, zone: &str| ServiceBox {
            stack: stack.into(),
            service: service.into(),
            labels: vec![("zone".into(), zone.into())],
        };
        let f = |from: &str, to: &str, access: &str| ServiceFlow {
            from: from.into(),
            to: to.into(),
            access: access.into(),
            reason: "allow[0] \"x\"".into(),
        };
        ServiceMap {
            environment: "default".into(),
            policy: "network policy generation 2 (default: deny)".into(),
            services: vec![
                b("front", "web", "dmz"),
                b("app", "api", "app"),
                b("app", "worker", "app"),
                b("data", "db", "db<&>"),
            ],
            flows: vec![
                f("front/web", "app/api", "8080/tcp"),
                f("app/api", "data/db", "5432/tcp"),
                f("app/worker", "app/api", "all traffic"),
                f("data/db", "front/web", "nothing"),
                f("app/api", "app/api", "5353/udp"),
            ],
        }
    }

    #[test]
    fn every_format_draws_the_allowed_flows_only() {
        let map = sample();
        let svg = services_diagram(&map, DiagramFormat::Svg);
        assert!(
            svg.contains("8080/tcp") && svg.contains("db&lt;&amp;&gt;"),
            "{svg}"
        );
        assert_eq!(svg.matches("marker-end").count(), 3, "{svg}");
        assert!(svg.contains("replica to replica: 5353/udp"));
        let dot = services_diagram(&map, DiagramFormat::Dot);
        assert!(
            dot.contains("\"front/web\" -> \"app/api\" [label=\"8080/tcp\"]"),
            "{dot}"
        );
        assert!(!dot.contains("nothing"), "{dot}");
        let mm = services_diagram(&map, DiagramFormat::Mermaid);
        assert!(mm.contains("-- \"8080/tcp\" -->"), "{mm}");
        let md = services_markdown(&map);
        assert!(md.contains("| front/web | app/api | 8080/tcp |"), "{md}");
        assert!(!md.contains("| data/db | front/web"), "{md}");
    }
}
