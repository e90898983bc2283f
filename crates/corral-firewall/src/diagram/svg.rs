//! SVG rendering with a small deterministic layered layout (no Graphviz):
//!
//! 1. title; 2. "Users / CLI" (centred) and "Internet" (right) when ports are published;
//! 3. the server row (server and replicas centred, datastore to the left);
//! 4. one dashed container per environment, hosts in rows of at most [`PER_ROW`].
//!
//! Two routing modes. **Direct** (one environment, one row): a line from every host to the
//! server labelled "agent dials out", overlay arcs between every pair of hosts below the row,
//! and published ports as drops from a lane fed by the Internet box. **Bus** (more hosts or
//! environments): hosts join a channel above their row, channels join a trunk on the left that
//! reaches the server once; the overlay is drawn between neighbours and labelled "full mesh";
//! published ports are listed in the host boxes and one arrow from the Internet enters each
//! environment that publishes. Labels sit on white rounded rectangles so that lines never make
//! them unreadable. All text is XML-escaped; the font is `sans-serif` throughout.

use std::fmt::Write as _;

use super::model::{EnvBox, HostBox, Model};

/// Most hosts in one row.
pub const PER_ROW: usize = 5;

const MARGIN: f64 = 32.0;
const HOST_W: f64 = 196.0;
const HOST_GAP: f64 = 36.0;
const ENV_PAD: f64 = 22.0;
const ENV_HEADER: f64 = 46.0;
const ENV_FOOTER: f64 = 34.0;
const SERVER_W: f64 = 236.0;
const SERVER_GAP: f64 = 24.0;
const SIDE_W: f64 = 200.0;
const TOP_H: f64 = 58.0;
const LINE: f64 = 16.0;
const LANE: f64 = 30.0;
const DS_GAP: f64 = 170.0;

const C_TEXT: &str = "#0f172a";
const C_MUTED: &str = "#475569";
const C_BORDER: &str = "#334155";
const C_AGENT: &str = "#2563eb";
const C_API: &str = "#374151";
const C_ENC: &str = "#059669";
const C_VXLAN: &str = "#d97706";
const C_PUB: &str = "#9333ea";
const C_DS: &str = "#6b7280";

/// Escapes text for XML character data and attribute values.
pub(crate) fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 => out.push(' '),
            '\u{fffe}' | '\u{ffff}' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Estimated width of text in px (sans-serif, generous so boxes never clip).
fn text_w(s: &str, size: f64, bold: bool) -> f64 {
    let per = if bold { 0.64 } else { 0.6 };
    s.chars().count() as f64 * size * per
}

/// Width of label text: closer to the real average than [`text_w`], which must never
/// under-estimate because it decides truncation.
fn label_w(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.54
}

/// Truncates text to fit `max` px, with an ellipsis.
fn fit(s: &str, max: f64, size: f64, bold: bool) -> String {
    if text_w(s, size, bold) <= max {
        return s.to_string();
    }
    let per = size * if bold { 0.64 } else { 0.6 };
    let keep = ((max / per).floor() as usize).saturating_sub(1);
    let mut t: String = s.chars().take(keep).collect();
    t.push('…');
    t
}

fn f(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if (r - r.round()).abs() < 1e-9 {
        format!("{}", r.round() as i64)
    } else {
        format!("{r:.1}")
    }
}

struct Svg {
    body: String,
}

impl Svg {
    #[allow(clippy::too_many_arguments)]
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, stroke: &str, extra: &str) {
        let _ = writeln!(
            self.body,
            "  <rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"8\" fill=\"{fill}\" \
             stroke=\"{stroke}\" stroke-width=\"1.4\"{extra}/>",
            f(x),
            f(y),
            f(w),
            f(h)
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn text(&mut self, x: f64, y: f64, s: &str, size: f64, color: &str, bold: bool, anchor: &str) {
        let weight = if bold { " font-weight=\"bold\"" } else { "" };
        let _ = writeln!(
            self.body,
            "  <text x=\"{}\" y=\"{}\" font-size=\"{}\" fill=\"{color}\" \
             text-anchor=\"{anchor}\"{weight}>{}</text>",
            f(x),
            f(y),
            f(size),
            xml(s)
        );
    }

    /// A label: lines of text centred at (cx, cy) on a white rounded rectangle.
    fn label(&mut self, cx: f64, cy: f64, lines: &[String], color: &str) {
        let size = 12.0;
        let w = lines.iter().map(|l| label_w(l, size)).fold(0.0, f64::max) + 14.0;
        let h = lines.len() as f64 * 15.0 + 6.0;
        let _ = writeln!(
            self.body,
            "  <rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"4\" fill=\"#ffffff\" \
             fill-opacity=\"0.95\" stroke=\"{color}\" stroke-opacity=\"0.35\" stroke-width=\"1\"/>",
            f(cx - w / 2.0),
            f(cy - h / 2.0),
            f(w),
            f(h)
        );
        for (i, l) in lines.iter().enumerate() {
            let y = cy - h / 2.0 + 3.0 + 12.0 + i as f64 * 15.0 - 1.0;
            self.text(cx, y, l, size, color, false, "middle");
        }
    }

    fn line(&mut self, pts: &[(f64, f64)], color: &str, arrow: bool, dashed: bool) {
        let d: Vec<String> = pts
            .iter()
            .enumerate()
            .map(|(i, (x, y))| format!("{}{} {}", if i == 0 { "M" } else { "L" }, f(*x), f(*y)))
            .collect();
        let marker = if arrow {
            format!(
                " marker-end=\"url(#arrow-{})\"",
                color.trim_start_matches('#')
            )
        } else {
            String::new()
        };
        let dash = if dashed {
            " stroke-dasharray=\"7 5\""
        } else {
            ""
        };
        let _ = writeln!(
            self.body,
            "  <path d=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\"{dash}{marker}/>",
            d.join(" ")
        );
    }

    fn curve(&mut self, a: (f64, f64), c: (f64, f64), b: (f64, f64), color: &str) {
        let _ = writeln!(
            self.body,
            "  <path d=\"M{} {} Q{} {} {} {}\" fill=\"none\" stroke=\"{color}\" \
             stroke-width=\"1.8\" stroke-dasharray=\"7 5\"/>",
            f(a.0),
            f(a.1),
            f(c.0),
            f(c.1),
            f(b.0),
            f(b.1)
        );
    }
}

struct HostPos {
    x: f64,
    y: f64,
}

struct EnvLayout {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    row_h: f64,
    hosts: Vec<HostPos>,
    rows: usize,
}

fn host_lines(h: &HostBox) -> (Vec<String>, Vec<String>) {
    let mut info = Vec::new();
    for a in h.addresses.iter().take(2) {
        info.push(a.clone());
    }
    if h.addresses.len() > 2 {
        info.push(format!("+{} more addresses", h.addresses.len() - 2));
    }
    if h.addresses.is_empty() {
        info.push("no known address".to_string());
    }
    if h.runs_server {
        info.push("also runs the server".to_string());
    }
    let mut publ: Vec<String> = h.published.iter().take(3).cloned().collect();
    if h.published.len() > 3 {
        publ.push(format!("+{} more published", h.published.len() - 3));
    }
    (info, publ)
}

fn caption_of(env: &EnvBox) -> String {
    if env.hosts.len() > PER_ROW {
        format!(
            "environment {}  ·  {}  ·  full mesh between its {} hosts (neighbours drawn)",
            env.name,
            env.overlay_label,
            env.hosts.len()
        )
    } else if env.hosts.len() > 1 {
        format!(
            "environment {}  ·  {}  ·  full mesh",
            env.name, env.overlay_label
        )
    } else {
        format!("environment {}  ·  {}", env.name, env.overlay_label)
    }
}

fn host_height(h: &HostBox) -> f64 {
    let (info, publ) = host_lines(h);
    16.0 + 18.0 + (info.len() + publ.len()) as f64 * LINE + 8.0
}

fn env_row_height(env: &EnvBox) -> f64 {
    env.hosts.iter().map(host_height).fold(64.0, f64::max)
}

/// Depth (px below the row) the overlay arcs of a direct-mode row need.
fn arc_space(n: usize) -> f64 {
    if n < 2 {
        8.0
    } else {
        let span = (n - 1) as f64;
        (15.0 + 14.0 * span).min(90.0) + 22.0
    }
}

/// Width of an environment box whose widest row holds `n` hosts (at most [`PER_ROW`]).
fn env_inner_w(n: usize) -> f64 {
    let k = n.clamp(1, PER_ROW) as f64;
    ENV_PAD * 2.0 + k * HOST_W + (k - 1.0) * HOST_GAP
}

/// Top of the "Users / CLI" and "Internet" boxes.
const TOP_Y: f64 = 84.0;

/// The routing mode and the horizontal extent, fixed before anything is drawn.
struct Frame {
    /// Direct routing (one environment, one row); otherwise the bus.
    direct: bool,
    has_pub: bool,
    /// Room at each side for the bus: the agent trunk (left), the Internet lane (right).
    side_lane: f64,
    /// Width of the widest environment box; every box has it in bus mode.
    widest_env: f64,
    /// Width of the server row.
    servers_w: f64,
    width: f64,
    /// Horizontal centre.
    cx: f64,
    left: f64,
    right: f64,
}

impl Frame {
    fn of(m: &Model) -> Frame {
        let direct = m.envs.len() == 1 && m.host_count() <= PER_ROW;
        let has_pub = m.has_published();
        let side_lane = if direct { 0.0 } else { LANE };
        let widest_env = m
            .envs
            .iter()
            .map(|e| env_inner_w(e.hosts.len()).max(text_w(&caption_of(e), 13.0, true) + 40.0))
            .fold(0.0, f64::max);
        let n_servers = m.servers.len().max(1) as f64;
        let servers_w = n_servers * SERVER_W + (n_servers - 1.0) * SERVER_GAP;
        // Servers are centred; the datastore (left) and the Internet box (right) need room beside.
        let side_need = if m.datastore.is_some() {
            SIDE_W + DS_GAP
        } else if has_pub {
            SIDE_W + 40.0
        } else {
            0.0
        };
        let content_w = widest_env
            .max(servers_w + 2.0 * side_need)
            .max(2.0 * SIDE_W + 120.0)
            .max(680.0)
            + 2.0 * side_lane;
        let width = content_w + 2.0 * MARGIN;
        Frame {
            direct,
            has_pub,
            side_lane,
            widest_env,
            servers_w,
            width,
            cx: width / 2.0,
            left: MARGIN,
            right: width - MARGIN,
        }
    }

    /// Left edge of the Internet box.
    fn inet_x(&self) -> f64 {
        self.right - self.side_lane - SIDE_W
    }

    /// Centre of the Internet box.
    fn inet_cx(&self) -> f64 {
        self.inet_x() + SIDE_W / 2.0
    }

    /// Places the environment boxes and their hosts, one below the other from `top`.
    fn environments(&self, m: &Model, top: f64) -> Environments {
        let mut y = top;
        let mut layouts: Vec<EnvLayout> = Vec::new();
        for env in &m.envs {
            let lay = self.environment(env, y);
            y += lay.h + 44.0;
            layouts.push(lay);
        }
        Environments { layouts, bottom: y }
    }

    fn environment(&self, env: &EnvBox, y: f64) -> EnvLayout {
        let direct = self.direct;
        let cx = self.cx;
        let n = env.hosts.len();
        let rows = n.div_ceil(PER_ROW).max(1);
        let row_h = env_row_height(env);
        let row_pitch = row_h + if direct { 0.0 } else { 60.0 };
        let caption_w = text_w(&caption_of(env), 13.0, true) + 40.0;
        let w = if direct {
            env_inner_w(n).max(caption_w)
        } else {
            self.widest_env.max(caption_w)
        };
        let x = cx - w / 2.0;
        let arcs = if direct {
            arc_space(n)
        } else if n < 2 {
            12.0
        } else {
            30.0
        };
        let h = ENV_HEADER + rows as f64 * row_pitch - if direct { 0.0 } else { 60.0 }
            + arcs
            + ENV_FOOTER;
        let mut hosts = Vec::new();
        for (i, _) in env.hosts.iter().enumerate() {
            let r = i / PER_ROW;
            let c = i % PER_ROW;
            let in_row = (n - r * PER_ROW).min(PER_ROW) as f64;
            let row_w = in_row * HOST_W + (in_row - 1.0) * HOST_GAP;
            let row_x = cx - row_w / 2.0;
            hosts.push(HostPos {
                x: row_x + c as f64 * (HOST_W + HOST_GAP),
                y: y + ENV_HEADER + r as f64 * row_pitch,
            });
        }
        EnvLayout {
            x,
            y,
            w,
            h,
            row_h,
            hosts,
            rows,
        }
    }
}

/// The environment boxes, in the model's order, and where the last one ends.
struct Environments {
    layouts: Vec<EnvLayout>,
    bottom: f64,
}

/// Where the server row was drawn.
struct ServerRow {
    y: f64,
    h: f64,
    /// Left edge of the first server box.
    first_x: f64,
    /// Centre of the first server box, where the agents' lines arrive.
    first_cx: f64,
    bottom: f64,
}

/// A diagram being drawn: each phase appends its elements to the body, in paint order.
struct Drawing<'a> {
    m: &'a Model,
    fr: Frame,
    s: Svg,
}

pub(crate) fn render(m: &Model) -> String {
    let fr = Frame::of(m);
    let mut d = Drawing {
        m,
        fr,
        s: Svg {
            body: String::new(),
        },
    };
    d.title();
    d.top_row();
    let servers = d.server_row();
    d.api_lines(&servers);
    d.datastore(&servers);
    let top = servers.bottom + if d.fr.direct { 150.0 } else { 110.0 };
    let envs = d.fr.environments(m, top);
    // Containers first, so that lines draw over their fill; hosts last, above every line.
    d.env_containers(&envs.layouts);
    d.overlay_links(&envs.layouts);
    d.agent_links(&envs.layouts, &servers);
    d.published_links(&envs.layouts);
    d.hosts(&envs.layouts);
    let height = d.legend(envs.bottom + 4.0);
    document(d.fr.width, height, &d.s.body)
}

impl Drawing<'_> {
    fn title(&mut self) {
        let left = self.fr.left;
        let s = &mut self.s;
        s.text(left, 36.0, "corral port flows", 20.0, C_TEXT, true, "start");
        s.text(
            left,
            58.0,
            "Agents dial out to the server; hosts open no port to it, and no flow goes from the \
             server to a host.",
            13.0,
            C_MUTED,
            false,
            "start",
        );
    }

    /// "Users / CLI" (centred) and, when ports are published, "Internet" (right).
    fn top_row(&mut self) {
        let (m, fr, s) = (self.m, &self.fr, &mut self.s);
        let cx = fr.cx;
        let users_x = cx - SIDE_W / 2.0;
        s.rect(users_x, TOP_Y, SIDE_W, TOP_H, "#f1f5f9", C_BORDER, "");
        s.text(
            cx,
            TOP_Y + 24.0,
            "Users / CLI",
            14.0,
            C_TEXT,
            true,
            "middle",
        );
        s.text(
            cx,
            TOP_Y + 42.0,
            &fit(&m.users_sub, SIDE_W - 16.0, 12.0, false),
            12.0,
            C_MUTED,
            false,
            "middle",
        );
        if fr.has_pub {
            let inet_cx = fr.inet_cx();
            s.rect(fr.inet_x(), TOP_Y, SIDE_W, TOP_H, "#faf5ff", C_PUB, "");
            s.text(
                inet_cx,
                TOP_Y + 24.0,
                "Internet",
                14.0,
                C_TEXT,
                true,
                "middle",
            );
            s.text(
                inet_cx,
                TOP_Y + 42.0,
                "clients of published services",
                12.0,
                C_MUTED,
                false,
                "middle",
            );
        }
    }

    /// The server and its replicas, centred.
    fn server_row(&mut self) -> ServerRow {
        let (m, fr, s) = (self.m, &self.fr, &mut self.s);
        let server_y = TOP_Y + TOP_H + 96.0;
        let server_line_count = m.servers.iter().map(|b| b.lines.len()).max().unwrap_or(1);
        let server_h = 16.0 + 18.0 + (server_line_count.saturating_sub(1)) as f64 * LINE + 10.0;
        let first_server_x = fr.cx - fr.servers_w / 2.0;
        for (i, b) in m.servers.iter().enumerate() {
            let x = first_server_x + i as f64 * (SERVER_W + SERVER_GAP);
            s.rect(x, server_y, SERVER_W, server_h, "#eff6ff", "#1d4ed8", "");
            for (k, l) in b.lines.iter().enumerate() {
                let (size, color, bold) = if k == 0 {
                    (14.0, C_TEXT, true)
                } else {
                    (12.0, C_MUTED, false)
                };
                s.text(
                    x + SERVER_W / 2.0,
                    server_y + 24.0 + k as f64 * LINE + if k > 0 { 2.0 } else { 0.0 },
                    &fit(l, SERVER_W - 16.0, size, bold),
                    size,
                    color,
                    bold,
                    "middle",
                );
            }
        }
        ServerRow {
            y: server_y,
            h: server_h,
            first_x: first_server_x,
            first_cx: first_server_x + SERVER_W / 2.0,
            bottom: server_y + server_h,
        }
    }

    /// Users -> every server (API), labelled once.
    fn api_lines(&mut self, row: &ServerRow) {
        let (m, fr, s) = (self.m, &self.fr, &mut self.s);
        let cx = fr.cx;
        let users_bottom = TOP_Y + TOP_H;
        for i in 0..m.servers.len() {
            let x = row.first_x + i as f64 * (SERVER_W + SERVER_GAP);
            let tx = x + SERVER_W / 2.0;
            s.line(&[(cx, users_bottom), (tx, row.y - 2.0)], C_API, true, false);
            if i == 0 {
                let ly = (users_bottom + row.y) / 2.0;
                let lx = (cx + tx) / 2.0;
                s.label(lx, ly, std::slice::from_ref(&m.api_label), C_API);
            }
        }
    }

    /// The datastore, left of the servers, and the servers' link to it.
    fn datastore(&mut self, row: &ServerRow) {
        let (m, s) = (self.m, &mut self.s);
        let Some(ds) = &m.datastore else {
            return;
        };
        let dx = row.first_x - DS_GAP - SIDE_W * 0.85;
        let dw = SIDE_W * 0.85;
        let dh = row.h;
        s.rect(dx, row.y, dw, dh, "#f3f4f6", C_DS, "");
        for (k, l) in ds.lines.iter().enumerate() {
            let (size, color, bold) = if k == 0 {
                (13.0, C_TEXT, true)
            } else {
                (12.0, C_MUTED, false)
            };
            let top = row.y + (dh - (18.0 + (ds.lines.len() as f64 - 1.0) * LINE)) / 2.0;
            s.text(
                dx + dw / 2.0,
                top + 14.0 + k as f64 * LINE,
                &fit(l, dw - 14.0, size, bold),
                size,
                color,
                bold,
                "middle",
            );
        }
        let y = row.y + row.h / 2.0;
        s.line(&[(row.first_x, y), (dx + dw + 2.0, y)], C_DS, true, false);
        let text = if m.servers.len() > 1 {
            vec!["replicas".to_string(), ds.link_label.clone()]
        } else {
            vec![ds.link_label.clone()]
        };
        s.label(row.first_x - DS_GAP / 2.0, y, &text, C_DS);
    }

    /// One dashed box per environment, captioned with its overlay.
    fn env_containers(&mut self, layouts: &[EnvLayout]) {
        let (m, s) = (self.m, &mut self.s);
        for (env, lay) in m.envs.iter().zip(layouts) {
            let color = if env.encrypted { C_ENC } else { C_VXLAN };
            s.rect(
                lay.x,
                lay.y,
                lay.w,
                lay.h,
                "#fbfdfc",
                color,
                " stroke-dasharray=\"8 5\"",
            );
            let caption = caption_of(env);
            s.text(
                lay.x + 14.0,
                lay.y + lay.h - 12.0,
                &fit(&caption, lay.w - 28.0, 13.0, true),
                13.0,
                color,
                true,
                "start",
            );
        }
    }

    fn overlay_links(&mut self, layouts: &[EnvLayout]) {
        for (env, lay) in self.m.envs.iter().zip(layouts) {
            if self.fr.direct {
                self.overlay_arcs(env, lay);
            } else {
                self.overlay_neighbours(env, lay);
            }
        }
    }

    /// Direct mode: an arc below the row between every pair of hosts, the deepest labelled.
    fn overlay_arcs(&mut self, env: &EnvBox, lay: &EnvLayout) {
        let s = &mut self.s;
        let color = if env.encrypted { C_ENC } else { C_VXLAN };
        let n = env.hosts.len();
        let base_y = lay.hosts.first().map(|p| p.y).unwrap_or(lay.y) + lay.row_h;
        let mut deepest: Option<(f64, f64)> = None;
        for i in 0..n {
            for j in (i + 1)..n {
                let (Some(a), Some(b)) = (lay.hosts.get(i), lay.hosts.get(j)) else {
                    continue;
                };
                let span = (j - i) as f64;
                let depth = (30.0 + 28.0 * span).min(180.0);
                let ax = a.x + HOST_W / 2.0 + 14.0 * span;
                let bx = b.x + HOST_W / 2.0 - 14.0 * span;
                let mx = (ax + bx) / 2.0;
                s.curve((ax, base_y), (mx, base_y + depth), (bx, base_y), color);
                let bottom = base_y + depth / 2.0;
                if deepest.is_none_or(|(_, d)| bottom > d) {
                    deepest = Some((mx, bottom));
                }
            }
        }
        if let Some((mx, by)) = deepest {
            s.label(mx, by, &[env.mesh_label()], color);
        }
    }

    /// Bus mode: an arc between neighbours of each row (the caption says "full mesh").
    fn overlay_neighbours(&mut self, env: &EnvBox, lay: &EnvLayout) {
        let s = &mut self.s;
        let color = if env.encrypted { C_ENC } else { C_VXLAN };
        let n = env.hosts.len();
        for r in 0..lay.rows {
            let start = r * PER_ROW;
            let end = (start + PER_ROW).min(n);
            for i in start..end.saturating_sub(1) {
                let (Some(a), Some(b)) = (lay.hosts.get(i), lay.hosts.get(i + 1)) else {
                    continue;
                };
                let by = a.y + lay.row_h;
                let ax = a.x + HOST_W / 2.0;
                let bx = b.x + HOST_W / 2.0;
                s.curve((ax, by), ((ax + bx) / 2.0, by + 34.0), (bx, by), color);
            }
        }
    }

    /// Agent -> server: the only control-plane flow.
    fn agent_links(&mut self, layouts: &[EnvLayout], row: &ServerRow) {
        if self.fr.direct {
            if let Some(lay) = layouts.first() {
                self.agent_lines(lay, row);
            }
        } else {
            self.agent_bus(layouts, row);
        }
    }

    /// Direct mode: a labelled line from every host, spread over the server's bottom edge.
    fn agent_lines(&mut self, lay: &EnvLayout, row: &ServerRow) {
        let (m, s) = (self.m, &mut self.s);
        let n = lay.hosts.len();
        let spread = SERVER_W * 0.6;
        for (i, p) in lay.hosts.iter().enumerate() {
            let hx = p.x + HOST_W * 0.4;
            let hy = p.y;
            let off = if n > 1 {
                -spread / 2.0 + spread * i as f64 / (n - 1) as f64
            } else {
                0.0
            };
            let sx = row.first_cx + off;
            s.line(&[(hx, hy), (sx, row.bottom + 2.0)], C_AGENT, true, false);
            let t = 0.55;
            let lx = hx + (sx - hx) * t;
            let ly = hy + (row.bottom - hy) * t;
            let text: Vec<String> = m.agent_label.splitn(2, ", ").map(str::to_string).collect();
            s.label(lx, ly, &text, C_AGENT);
        }
    }

    /// Bus mode: hosts join a channel above their row, channels a trunk on the left, and the
    /// trunk reaches the server once.
    fn agent_bus(&mut self, layouts: &[EnvLayout], row: &ServerRow) {
        let (m, fr, s) = (self.m, &self.fr, &mut self.s);
        let trunk_x = fr.left + 10.0;
        let join_y = row.bottom + 44.0;
        let mut lowest = join_y;
        for lay in layouts {
            for r in 0..lay.rows {
                let hosts: Vec<&HostPos> =
                    lay.hosts.iter().skip(r * PER_ROW).take(PER_ROW).collect();
                let Some(first) = hosts.first() else {
                    continue;
                };
                let ch_y = first.y - 18.0;
                let last_x = hosts.last().map(|p| p.x + HOST_W / 2.0).unwrap_or(trunk_x);
                s.line(&[(trunk_x, ch_y), (last_x, ch_y)], C_AGENT, false, false);
                for p in &hosts {
                    let hx = p.x + HOST_W / 2.0;
                    s.line(&[(hx, p.y), (hx, ch_y)], C_AGENT, false, false);
                }
                lowest = lowest.max(ch_y);
            }
        }
        s.line(
            &[
                (trunk_x, lowest),
                (trunk_x, join_y),
                (row.first_cx, join_y),
                (row.first_cx, row.bottom + 2.0),
            ],
            C_AGENT,
            true,
            false,
        );
        let host_total = m.host_count();
        s.label(
            (trunk_x + row.first_cx) / 2.0,
            join_y,
            &[format!("{} (each of {host_total} hosts)", m.agent_label)],
            C_AGENT,
        );
    }

    /// Internet -> published ports.
    fn published_links(&mut self, layouts: &[EnvLayout]) {
        if !self.fr.has_pub {
            return;
        }
        if self.fr.direct {
            if let (Some(env), Some(lay)) = (self.m.envs.first(), layouts.first()) {
                self.published_drops(env, lay);
            }
        } else {
            self.published_lane(layouts);
        }
    }

    /// Direct mode: a lane fed by the Internet box, with a labelled drop to every host that
    /// publishes.
    fn published_drops(&mut self, env: &EnvBox, lay: &EnvLayout) {
        let (fr, s) = (&self.fr, &mut self.s);
        let inet_cx = fr.inet_cx();
        let inet_bottom = TOP_Y + TOP_H;
        let lane_y = lay.y - 22.0;
        let targets: Vec<(f64, &HostBox, &HostPos)> = env
            .hosts
            .iter()
            .zip(&lay.hosts)
            .filter(|(h, _)| !h.published.is_empty())
            .map(|(h, p)| (p.x + HOST_W * 0.82, h, p))
            .collect();
        let min_x = targets.iter().map(|t| t.0).fold(inet_cx, f64::min);
        let max_x = targets.iter().map(|t| t.0).fold(inet_cx, f64::max);
        s.line(
            &[(inet_cx, inet_bottom), (inet_cx, lane_y)],
            C_PUB,
            false,
            false,
        );
        s.line(&[(min_x, lane_y), (max_x, lane_y)], C_PUB, false, false);
        for (tx, h, p) in &targets {
            s.line(&[(*tx, lane_y), (*tx, p.y - 1.0)], C_PUB, true, false);
            let mut lines: Vec<String> = h.published.iter().take(2).cloned().collect();
            if h.published.len() > 2 {
                lines.push(format!("+{} more", h.published.len() - 2));
            }
            let lh = lines.len() as f64 * 15.0 + 6.0;
            s.label(*tx, p.y - 8.0 - lh / 2.0 - 2.0, &lines, C_PUB);
        }
    }

    /// Bus mode: a lane down the right side, with one arrow into each environment that
    /// publishes (the ports are listed in the host boxes).
    fn published_lane(&mut self, layouts: &[EnvLayout]) {
        let (m, fr, s) = (self.m, &self.fr, &mut self.s);
        let lane_x = fr.right - 10.0;
        let inet_mid = TOP_Y + TOP_H / 2.0;
        let entries: Vec<f64> = m
            .envs
            .iter()
            .zip(layouts)
            .filter(|(e, _)| e.hosts.iter().any(|h| !h.published.is_empty()))
            .map(|(_, l)| l.y + 16.0)
            .collect();
        if let Some(last) = entries.last() {
            s.line(
                &[
                    (fr.inet_x() + SIDE_W, inet_mid),
                    (lane_x, inet_mid),
                    (lane_x, *last),
                ],
                C_PUB,
                false,
                false,
            );
        }
        for (e, lay) in m.envs.iter().zip(layouts) {
            if !e.hosts.iter().any(|h| !h.published.is_empty()) {
                continue;
            }
            let ey = lay.y + 16.0;
            s.line(
                &[(lane_x, ey), (lay.x + lay.w + 2.0, ey)],
                C_PUB,
                true,
                false,
            );
            s.label(
                lay.x + lay.w - 96.0,
                ey,
                &["published ports (see hosts)".to_string()],
                C_PUB,
            );
        }
    }

    fn hosts(&mut self, layouts: &[EnvLayout]) {
        for (env, lay) in self.m.envs.iter().zip(layouts) {
            for (h, p) in env.hosts.iter().zip(&lay.hosts) {
                self.host(h, p, lay.row_h);
            }
        }
    }

    /// A host box: name, addresses and notes, then its published ports.
    fn host(&mut self, h: &HostBox, p: &HostPos, row_h: f64) {
        let s = &mut self.s;
        s.rect(p.x, p.y, HOST_W, row_h, "#f0fdf4", C_BORDER, "");
        s.text(
            p.x + 12.0,
            p.y + 22.0,
            &fit(&h.name, HOST_W - 24.0, 14.0, true),
            14.0,
            C_TEXT,
            true,
            "start",
        );
        let (info, publ) = host_lines(h);
        let mut ly = p.y + 22.0 + 18.0;
        for l in &info {
            s.text(
                p.x + 12.0,
                ly,
                &fit(l, HOST_W - 24.0, 12.0, false),
                12.0,
                C_MUTED,
                false,
                "start",
            );
            ly += LINE;
        }
        for l in &publ {
            s.text(
                p.x + 12.0,
                ly,
                &fit(l, HOST_W - 24.0, 12.0, false),
                12.0,
                C_PUB,
                false,
                "start",
            );
            ly += LINE;
        }
    }

    /// The legend from `legend_y`, wrapped to the width; returns the diagram's height.
    fn legend(&mut self, legend_y: f64) -> f64 {
        let (m, fr, s) = (self.m, &self.fr, &mut self.s);
        let (left, right) = (fr.left, fr.right);
        let mut items: Vec<(&str, bool, String)> = vec![
            (
                C_AGENT,
                false,
                "agent → server (the only control-plane flow)".to_string(),
            ),
            (C_API, false, "users → server API".to_string()),
        ];
        if m.envs.iter().any(|e| e.encrypted) {
            items.push((C_ENC, true, "encrypted overlay between hosts".to_string()));
        }
        if m.envs.iter().any(|e| !e.encrypted) {
            items.push((C_VXLAN, true, "vxlan overlay (cleartext)".to_string()));
        }
        if fr.has_pub {
            items.push((C_PUB, false, "published service port".to_string()));
        }
        if m.datastore.is_some() {
            items.push((C_DS, false, "server → datastore".to_string()));
        }
        let mut lx = left;
        let mut ly = legend_y;
        for (color, dashed, text) in &items {
            let w = 40.0 + text_w(text, 12.0, false) + 28.0;
            if lx + w > right && lx > left {
                lx = left;
                ly += 22.0;
            }
            s.line(&[(lx, ly), (lx + 30.0, ly)], color, !dashed, *dashed);
            s.text(lx + 38.0, ly + 4.0, text, 12.0, C_TEXT, false, "start");
            lx += w;
        }
        ly + 26.0
    }
}

/// The SVG document around the drawn `body`: size, title, arrow markers and background.
fn document(width: f64, height: f64, body: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} \
         {}\" font-family=\"sans-serif\" role=\"img\" aria-label=\"corral port flows\">",
        f(width),
        f(height),
        f(width),
        f(height)
    );
    let _ = writeln!(out, "  <title>corral port flows</title>");
    let _ = writeln!(out, "  <defs>");
    for c in [C_AGENT, C_API, C_PUB, C_DS, C_ENC, C_VXLAN] {
        let _ = writeln!(
            out,
            "    <marker id=\"arrow-{}\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" \
             markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0 0 \
             L10 5 L0 10 z\" fill=\"{c}\"/></marker>",
            c.trim_start_matches('#')
        );
    }
    let _ = writeln!(out, "  </defs>");
    let _ = writeln!(
        out,
        "  <rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"#ffffff\"/>",
        f(width),
        f(height)
    );
    out.push_str(body);
    let _ = writeln!(out, "</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_xml() {
        assert_eq!(
            xml("<a href=\"x\">&'</a>\u{1}"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;&lt;/a&gt; "
        );
    }

    #[test]
    fn fits_text() {
        assert_eq!(fit("short", 100.0, 12.0, false), "short");
        let t = fit(&"x".repeat(100), 100.0, 12.0, false);
        assert!(t.ends_with('…'));
        assert!(text_w(&t, 12.0, false) <= 100.0 + 12.0);
    }

    #[test]
    fn numbers_are_compact() {
        assert_eq!(f(12.0), "12");
        assert_eq!(f(12.25), "12.3");
        assert_eq!(f(-3.0), "-3");
    }
}
