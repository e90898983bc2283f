//! Stages 6 and 7 — typed project and warnings: the validated document becomes a [`Project`];
//! every key corral does not act on becomes a [`Warning`] (but `x-` extension fields, which are
//! for other tools and YAML anchors, as in Compose); cross-service checks (unknown
//! `depends_on` targets, dependency cycles, undeclared volumes, configs and secrets) run here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::error::{LoadError, Location, Warning, clip};
use crate::limits;
use crate::limits::{MAX_MESSAGE_BYTES, MAX_NAME_BYTES};
use crate::model::*;
use crate::node::{Node, Pos, Seg, Value, render_path};
use crate::parse;
use crate::paths::project_path;

/// Service keys corral acts on.
pub const SUPPORTED_SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "labels",
    "ports",
    "expose",
    "volumes",
    "restart",
    "healthcheck",
    "depends_on",
    "deploy",
    "scale",
    "stop_grace_period",
    "user",
    "working_dir",
    "hostname",
    "networks",
    "pull_policy",
    "privileged",
    "cap_add",
    "cap_drop",
    "network_mode",
    "pid",
    "devices",
    "build",
    "configs",
    "secrets",
    "x-corral",
];

pub(crate) struct Cx<'a> {
    pub files: &'a [String],
    /// The files' texts, by the same index: to see how a number was written (`mode: 0440`,
    /// which the YAML 1.2 parser reads as decimal 440).
    pub texts: &'a [&'a str],
    /// The caller's environment (fills `environment:` entries written without a value).
    pub env: &'a BTreeMap<String, String>,
    /// The interpolation environment (env files, the caller's environment on top): build
    /// `args:` written without a value, and configs' and secrets' `environment:`.
    pub vars: &'a BTreeMap<String, String>,
    /// `env_file:` contents by normalized name; `None` when they are not known yet
    /// ([`crate::project_references`]), and `env_file:` entries are not looked up.
    pub env_files: Option<&'a BTreeMap<String, BTreeMap<String, String>>>,
    pub warnings: Vec<Warning>,
    /// Warnings past [`limits::MAX_WARNINGS`], counted.
    pub more_warnings: usize,
    pub errors: Vec<LoadError>,
}

/// `./a/b.env` and `a/b.env` name the same file.
pub(crate) fn normalize_file_name(name: &str) -> String {
    let mut s = name.trim();
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    s.to_owned()
}

impl Cx<'_> {
    pub fn location(&self, pos: Pos) -> Option<Location> {
        let file = self.files.get(pos.file)?;
        Some(Location {
            file: file.clone(),
            line: pos.line,
            column: pos.column,
        })
    }

    pub fn error(&mut self, path: &[Seg], pos: Pos, message: impl Into<String>) {
        let loc = self.location(pos);
        self.errors
            .push(LoadError::at(loc, Some(render_path(path)), message));
    }

    /// Keeps the first [`limits::MAX_WARNINGS`] warnings and counts the rest (see
    /// [`Cx::finish_warnings`]).
    fn warn(&mut self, path: &[Seg], pos: Pos, message: impl Into<String>) {
        if self.warnings.len() >= limits::MAX_WARNINGS {
            self.more_warnings += 1;
            return;
        }
        self.warnings.push(Warning {
            path: clip(&render_path(path), MAX_NAME_BYTES),
            location: self.location(pos).map(|mut l| {
                l.file = clip(&l.file, MAX_NAME_BYTES);
                l
            }),
            message: clip(&message.into(), MAX_MESSAGE_BYTES),
        });
    }

    /// The digits written at `pos` in its file (empty when there are none, or the position is
    /// not known).
    fn written_digits(&self, pos: Pos) -> String {
        let Some(text) = self.texts.get(pos.file) else {
            return String::new();
        };
        let (Ok(line), Ok(column)) = (
            usize::try_from(pos.line.saturating_sub(1)),
            usize::try_from(pos.column.saturating_sub(1)),
        ) else {
            return String::new();
        };
        text.lines()
            .nth(line)
            .map(|l| {
                l.chars()
                    .skip(column)
                    .take_while(char::is_ascii_digit)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The warnings, the last one saying how many more there were past the limit.
    pub fn finish_warnings(&mut self) -> Vec<Warning> {
        let mut warnings = std::mem::take(&mut self.warnings);
        if self.more_warnings > 0 {
            warnings.push(Warning {
                path: "…".to_owned(),
                location: None,
                message: format!(
                    "{} more warnings not shown (at most {} are listed)",
                    self.more_warnings,
                    limits::MAX_WARNINGS
                ),
            });
        }
        warnings
    }

    /// Warns that the key at `path` is ignored — unless it is an `x-` extension field: the
    /// spec reserves those for other tools (and YAML anchors to reuse), and Compose ignores
    /// them silently; the schema refuses them where the spec does not allow them.
    fn ignored(&mut self, path: &[Seg], pos: Pos) {
        let name = match path.last() {
            Some(Seg::Key(k)) => k.clone(),
            _ => render_path(path),
        };
        if name.starts_with("x-") {
            return;
        }
        self.warn(
            path,
            pos,
            format!("`{name}` is not supported by corral and is ignored"),
        );
    }
}

fn with(path: &[Seg], key: &str) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(Seg::Key(key.to_owned()));
    p
}

fn at(path: &[Seg], i: usize) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(Seg::Index(i));
    p
}

/// The text of a scalar (numbers and booleans as written by YAML 1.2).
fn scalar_text(node: &Node) -> Option<String> {
    match &node.value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Iterates a mapping's entries with their paths and key positions.
fn entries(node: &Node) -> Vec<(String, Pos, &Node)> {
    node.as_map()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let pos = if k.pos.file == usize::MAX {
                        v.pos
                    } else {
                        k.pos
                    };
                    (k.name.clone(), pos, v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Builds the project from the validated, merged document.
pub(crate) fn build(cx: &mut Cx<'_>, doc: &Node, name: String) -> Option<Project> {
    let mut volumes = BTreeSet::new();
    let mut services = BTreeMap::new();
    let mut configs = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    let mut policy = None;
    for (key, pos, value) in entries(doc) {
        let path = vec![Seg::Key(key.clone())];
        match key.as_str() {
            "services" => {}
            "x-corral" => {
                for (k, kpos, v) in entries(value) {
                    let kp = with(&path, &k);
                    if k != "policy" {
                        cx.ignored(&kp, kpos);
                        continue;
                    }
                    match serde_json::from_value::<corral_policy::StackRules>(v.to_json()) {
                        Ok(rules) => policy = Some(rules),
                        Err(e) => cx.error(&kp, v.pos, format!("the stack's network policy: {e}")),
                    }
                }
            }
            "configs" => configs = file_sources(cx, &path, value, FileKind::Config),
            "secrets" => secrets = file_sources(cx, &path, value, FileKind::Secret),
            "volumes" => {
                for (vname, _, vdef) in entries(value) {
                    volumes.insert(vname.clone());
                    for (opt, opos, _) in entries(vdef) {
                        cx.ignored(&with(&with(&path, &vname), &opt), opos);
                    }
                }
            }
            "networks" => {
                for (nname, npos, _) in entries(value) {
                    cx.warn(
                        &with(&path, &nname),
                        npos,
                        "network definitions are ignored: every service joins the stack's default network",
                    );
                }
            }
            "version" => cx.warn(&path, pos, "`version` is obsolete and is ignored"),
            _ => cx.ignored(&path, pos),
        }
    }
    let services_path = vec![Seg::Key("services".to_owned())];
    let Some(service_nodes) = doc.get("services") else {
        cx.errors.push(LoadError::msg("no services are defined"));
        return None;
    };
    let service_entries = entries(service_nodes);
    if service_entries.is_empty() {
        cx.error(&services_path, service_nodes.pos, "no services are defined");
        return None;
    }
    // Every config and secret written at the top level, valid or not: a service naming one
    // that has an error of its own gets no second error.
    let declared = |kind: &str| -> BTreeSet<String> {
        doc.get(kind)
            .map(|defs| entries(defs).into_iter().map(|(n, _, _)| n).collect())
            .unwrap_or_default()
    };
    let top = TopLevel {
        project: &name,
        volumes: &volumes,
        configs: declared("configs"),
        secrets: declared("secrets"),
    };
    for (sname, _, node) in &service_entries {
        let path = with(&services_path, sname);
        if let Some(service) = service(cx, &path, sname, node, &top) {
            services.insert(sname.clone(), service);
        }
    }
    if !cx.errors.is_empty() {
        return None;
    }
    cross_checks(cx, &services, service_nodes);
    if !cx.errors.is_empty() {
        return None;
    }
    let start_order = start_order(cx, &services, service_nodes)?;
    Some(Project {
        name,
        services,
        volumes,
        configs,
        secrets,
        start_order,
        policy,
    })
}

fn string_map(cx: &mut Cx<'_>, path: &[Seg], node: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, pos, v) in entries(node) {
        match &v.value {
            Value::Null => {}
            _ => match scalar_text(v) {
                Some(s) => {
                    out.insert(k, s);
                }
                None => cx.error(&with(path, &k), pos, "must be a string, number or boolean"),
            },
        }
    }
    out
}

fn words(cx: &mut Cx<'_>, path: &[Seg], node: &Node) -> Option<Vec<String>> {
    match &node.value {
        Value::Null => None,
        Value::Str(s) => match parse::shell_words(s) {
            Ok(w) => Some(w),
            Err(e) => {
                cx.error(path, node.pos, e);
                None
            }
        },
        Value::Seq(items) => Some(items.iter().filter_map(scalar_text).collect()),
        _ => {
            cx.error(path, node.pos, "must be a string or a list of strings");
            None
        }
    }
}

fn text(cx: &mut Cx<'_>, path: &[Seg], node: &Node) -> Option<String> {
    match scalar_text(node) {
        Some(s) => Some(s),
        None => {
            cx.error(path, node.pos, "must be a string");
            None
        }
    }
}

fn duration_of(cx: &mut Cx<'_>, path: &[Seg], node: &Node) -> Option<Duration> {
    let s = text(cx, path, node)?;
    match parse::duration(&s) {
        Ok(d) => Some(d),
        Err(e) => {
            cx.error(path, node.pos, e);
            None
        }
    }
}

fn count(cx: &mut Cx<'_>, path: &[Seg], node: &Node, max: u32) -> Option<u32> {
    let n = match &node.value {
        Value::Int(i) => Some(*i),
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e12 => Some(*f as i64),
        Value::Str(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n.and_then(|n| u32::try_from(n).ok()) {
        Some(n) if n <= max => Some(n),
        Some(n) => {
            cx.error(path, node.pos, format!("{n} is over the limit of {max}"));
            None
        }
        None => {
            cx.error(path, node.pos, "must be a whole number, 0 or more");
            None
        }
    }
}

/// What a service may refer to at the top level of the project.
struct TopLevel<'a> {
    project: &'a str,
    volumes: &'a BTreeSet<String>,
    /// The names of the top-level configs and secrets.
    configs: BTreeSet<String>,
    secrets: BTreeSet<String>,
}

#[allow(clippy::too_many_lines)]
fn service(
    cx: &mut Cx<'_>,
    path: &[Seg],
    name: &str,
    node: &Node,
    top: &TopLevel<'_>,
) -> Option<Service> {
    let errors_before = cx.errors.len();
    let mut svc = Service {
        image: String::new(),
        build: None,
        command: None,
        entrypoint: None,
        environment: BTreeMap::new(),
        labels: BTreeMap::new(),
        ports: Vec::new(),
        expose: Vec::new(),
        volumes: Vec::new(),
        restart: RestartPolicy::No,
        healthcheck: Healthcheck::Inherit,
        depends_on: BTreeMap::new(),
        replicas: 1,
        constraints: Vec::new(),
        reservations: Reservations::default(),
        update: UpdateConfig::default(),
        stop_grace_period: Duration::from_secs(10),
        user: None,
        working_dir: None,
        hostname: None,
        networks: Vec::new(),
        affinity: Vec::new(),
        anti_affinity: Vec::new(),
        pull_policy: PullPolicy::default(),
        privileged: false,
        cap_add: Vec::new(),
        cap_drop: Vec::new(),
        network_mode: NetworkMode::default(),
        pid_host: false,
        devices: Vec::new(),
        configs: Vec::new(),
        secrets: Vec::new(),
    };
    let has_image = node
        .get("image")
        .is_some_and(|v| !matches!(v.value, Value::Null));
    // Without `image:`, `build:` names the image (below).
    if !has_image && node.get("build").is_none() {
        cx.error(path, node.pos, format!("service {name} has no `image`"));
        return None;
    }
    // Every config and secret reference, with where it was written, for the target check.
    let mut file_refs: Vec<(FileRef, Vec<Seg>, Pos)> = Vec::new();
    let mut env_from_files = BTreeMap::new();
    let mut environment = BTreeMap::new();
    let mut replicas: Option<(u32, Pos)> = None;
    let mut scale: Option<(u32, Pos)> = None;
    // Where `ports:` and a non-empty `network_mode:` were written, for the checks after the
    // loop (they concern two keys, in whichever order they come).
    let mut ports_pos: Option<Pos> = None;
    let mut network_mode_pos: Option<Pos> = None;
    for (key, pos, v) in entries(node) {
        let p = with(path, &key);
        match key.as_str() {
            "image" => {
                if let Some(s) = text(cx, &p, v) {
                    if s.trim().is_empty() {
                        cx.error(&p, v.pos, "must not be empty");
                    }
                    svc.image = s;
                }
            }
            "build" => svc.build = build_of(cx, &p, v),
            "configs" => {
                let refs = file_refs_of(cx, &p, v, FileKind::Config, &top.configs);
                svc.configs = refs.iter().map(|(r, _, _)| r.clone()).collect();
                file_refs.extend(refs);
            }
            "secrets" => {
                let refs = file_refs_of(cx, &p, v, FileKind::Secret, &top.secrets);
                svc.secrets = refs.iter().map(|(r, _, _)| r.clone()).collect();
                file_refs.extend(refs);
            }
            "command" => svc.command = words(cx, &p, v),
            "entrypoint" => svc.entrypoint = words(cx, &p, v),
            "environment" => {
                for (k, kpos, value) in entries(v) {
                    match &value.value {
                        // `KEY` alone: the value comes from the caller's environment, or the
                        // variable is left out.
                        Value::Null => {
                            if let Some(val) = cx.env.get(&k) {
                                environment.insert(k, val.clone());
                            }
                        }
                        _ => match scalar_text(value) {
                            Some(s) => {
                                environment.insert(k, s);
                            }
                            None => {
                                cx.error(&with(&p, &k), kpos, "must be a string, number or boolean")
                            }
                        },
                    }
                }
            }
            "env_file" => {
                let list: Vec<(Vec<Seg>, &Node)> = match &v.value {
                    Value::Seq(items) => items
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (at(&p, i), n))
                        .collect(),
                    _ => vec![(p.clone(), v)],
                };
                for (ip, item) in list {
                    let Some(file) = text(cx, &ip, item) else {
                        continue;
                    };
                    let Some(env_files) = cx.env_files else {
                        continue;
                    };
                    match env_files.get(&normalize_file_name(&file)) {
                        Some(vars) => env_from_files.extend(vars.clone()),
                        None => cx.error(
                            &ip,
                            item.pos,
                            format!("env file `{file}` was not provided with the Compose files"),
                        ),
                    }
                }
            }
            "labels" => svc.labels = string_map(cx, &p, v),
            "ports" => {
                ports_pos = Some(pos);
                ports(cx, &p, v, &mut svc.ports);
            }
            "expose" => {
                if let Value::Seq(items) = &v.value {
                    for (i, item) in items.iter().enumerate() {
                        let ip = at(&p, i);
                        let Some(s) = scalar_text(item) else {
                            cx.error(&ip, item.pos, "must be a port or range");
                            continue;
                        };
                        match parse::expose(&s) {
                            Ok(e) => svc.expose.push(e),
                            Err(e) => cx.error(&ip, item.pos, e),
                        }
                    }
                }
            }
            "volumes" => mounts(cx, &p, v, top.volumes, &mut svc.volumes),
            "restart" => {
                if let Some(s) = text(cx, &p, v) {
                    match parse::restart(&s) {
                        Ok(r) => svc.restart = r,
                        Err(e) => cx.error(&p, v.pos, e),
                    }
                }
            }
            "healthcheck" => svc.healthcheck = healthcheck(cx, &p, v),
            "depends_on" => {
                for (dep, _, spec) in entries(v) {
                    let dp = with(&p, &dep);
                    let mut condition = Condition::ServiceStarted;
                    for (k, kpos, val) in entries(spec) {
                        match (k.as_str(), val.as_str()) {
                            ("condition", Some("service_started")) => {}
                            ("condition", Some("service_healthy")) => condition = Condition::ServiceHealthy,
                            ("condition", other) => cx.error(
                                &with(&dp, "condition"),
                                val.pos,
                                format!(
                                    "condition `{}` is not supported (service_started or service_healthy)",
                                    other.unwrap_or("?")
                                ),
                            ),
                            _ => cx.ignored(&with(&dp, &k), kpos),
                        }
                    }
                    svc.depends_on.insert(dep, condition);
                }
            }
            "deploy" => deploy(cx, &p, v, &mut svc, &mut replicas),
            "scale" => {
                if let Some(n) = count(cx, &p, v, limits::MAX_REPLICAS) {
                    scale = Some((n, v.pos));
                }
            }
            "stop_grace_period" => {
                if let Some(d) = duration_of(cx, &p, v) {
                    svc.stop_grace_period = d;
                }
            }
            "user" => svc.user = text(cx, &p, v),
            "working_dir" => svc.working_dir = text(cx, &p, v),
            "hostname" => svc.hostname = text(cx, &p, v),
            "networks" => {
                for (net, _, spec) in entries(v) {
                    for (k, kpos, _) in entries(spec) {
                        cx.ignored(&with(&with(&p, &net), &k), kpos);
                    }
                    svc.networks.push(net);
                }
            }
            "pull_policy" => {
                if let Some(s) = text(cx, &p, v) {
                    match parse::pull_policy(&s) {
                        Ok(policy) => svc.pull_policy = policy,
                        Err(e) => cx.error(&p, v.pos, e),
                    }
                }
            }
            "privileged" => match v.value {
                Value::Bool(b) => svc.privileged = b,
                _ => cx.error(&p, v.pos, "must be true or false"),
            },
            "cap_add" => svc.cap_add = capabilities(cx, &p, v),
            "cap_drop" => svc.cap_drop = capabilities(cx, &p, v),
            "network_mode" => {
                if let Some(s) = text(cx, &p, v) {
                    match parse::network_mode(&s) {
                        Ok(mode) => {
                            svc.network_mode = mode;
                            if !s.is_empty() {
                                network_mode_pos = Some(v.pos);
                            }
                        }
                        Err(e) => cx.error(&p, v.pos, e),
                    }
                }
            }
            "pid" => {
                // `pid:` with no value is allowed by the schema and means no mode.
                if !matches!(v.value, Value::Null)
                    && let Some(s) = text(cx, &p, v)
                {
                    match parse::pid_host(&s) {
                        Ok(host) => svc.pid_host = host,
                        Err(e) => cx.error(&p, v.pos, e),
                    }
                }
            }
            "devices" => devices(cx, &p, v, &mut svc.devices),
            "x-corral" => {
                if v.as_map().is_none() && !matches!(v.value, Value::Null) {
                    cx.error(
                        &p,
                        v.pos,
                        "must be a mapping with `affinity` and/or `anti_affinity`",
                    );
                }
                for (k, kpos, val) in entries(v) {
                    let kp = with(&p, &k);
                    let target = match k.as_str() {
                        "affinity" => &mut svc.affinity,
                        "anti_affinity" => &mut svc.anti_affinity,
                        _ => {
                            cx.ignored(&kp, kpos);
                            continue;
                        }
                    };
                    match &val.value {
                        Value::Seq(items) => {
                            for (i, item) in items.iter().enumerate() {
                                match item.as_str() {
                                    Some(s) if !s.trim().is_empty() => {
                                        target.push(s.trim().to_owned())
                                    }
                                    _ => cx.error(&at(&kp, i), item.pos, "must be a service name"),
                                }
                            }
                        }
                        Value::Str(s) => target.push(s.trim().to_owned()),
                        _ => cx.error(&kp, val.pos, "must be a list of service names"),
                    }
                }
            }
            _ => cx.ignored(&p, pos),
        }
    }
    if let Some(mode_pos) = network_mode_pos
        && !svc.networks.is_empty()
    {
        // The Compose spec forbids the combination: with a network mode there is no network
        // of the service's own to attach.
        cx.error(
            &with(path, "network_mode"),
            mode_pos,
            "`network_mode` and `networks` cannot be combined: remove one",
        );
    }
    if svc.network_mode == NetworkMode::Host
        && !svc.ports.is_empty()
        && let Some(ppos) = ports_pos
    {
        // As Compose (and Docker) do: the ports are kept, but nothing is published, since the
        // containers listen on the host's own addresses.
        cx.warn(
            &with(path, "ports"),
            ppos,
            "published ports are ignored with `network_mode: host`: the service listens on the host's ports directly",
        );
    }
    if !has_image && let Some(b) = node.get("build") {
        // As Compose names the images it builds (in lower case: an image name cannot hold
        // capitals, a service name can).
        let image = format!("{}-{name}", top.project).to_ascii_lowercase();
        if parse::image_path_component(&image) {
            svc.image = image;
        } else {
            cx.error(
                &with(path, "build"),
                b.pos,
                format!(
                    "`{image}`, the image name made of the project and service names, is not a valid image name: name the image with `image:`"
                ),
            );
        }
    }
    // Two files mounted at one path: one would hide the other.
    let mut targets: BTreeMap<&str, &[Seg]> = BTreeMap::new();
    for (r, rpath, rpos) in &file_refs {
        match targets.get(r.target.as_str()) {
            Some(first) => {
                let message = format!(
                    "`{}` is also the target of {}: give each config and secret its own `target`",
                    r.target,
                    render_path(first)
                );
                cx.error(rpath, *rpos, message);
            }
            None => {
                targets.insert(&r.target, rpath);
            }
        }
    }
    svc.environment = env_from_files;
    svc.environment.extend(environment);
    svc.replicas = match (replicas, scale) {
        (Some((r, _)), Some((s, spos))) if r != s => {
            cx.error(
                &with(path, "scale"),
                spos,
                format!("`scale: {s}` and `deploy.replicas: {r}` disagree; keep one"),
            );
            r
        }
        (Some((r, _)), _) => r,
        (None, Some((s, _))) => s,
        (None, None) => 1,
    };
    (cx.errors.len() == errors_before).then_some(svc)
}

/// Top-level `configs:` or `secrets:`, and the services' references to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Config,
    Secret,
}

impl FileKind {
    fn name(self) -> &'static str {
        match self {
            FileKind::Config => "config",
            FileKind::Secret => "secret",
        }
    }

    /// Where a reference without `target:` mounts the file.
    fn default_target(self, source: &str) -> String {
        match self {
            FileKind::Config => format!("/{source}"),
            FileKind::Secret => format!("/run/secrets/{source}"),
        }
    }

    /// The absolute path a `target:` names: as written when absolute; relative, a secret's
    /// goes under `/run/secrets/` (as in Compose), a config's is refused (Compose would make
    /// it relative to the container's working directory, which the image decides).
    fn target(self, target: &str) -> Result<String, String> {
        if target.starts_with('/') {
            return Ok(target.to_owned());
        }
        match self {
            FileKind::Config => Err(format!(
                "`{target}` must be an absolute path in the container (without `target:`, a config is mounted at `/NAME`)"
            )),
            FileKind::Secret => match project_path(target) {
                Some(p) if p != "." => Ok(format!("/run/secrets/{p}")),
                _ => Err(format!(
                    "`{target}` must be an absolute path in the container, or a file name under /run/secrets/"
                )),
            },
        }
    }
}

/// Top-level `configs:` or `secrets:`: each takes its content from exactly one of `file:`,
/// `environment:` and `content:`. Error messages name variables and paths, never a value.
fn file_sources(
    cx: &mut Cx<'_>,
    path: &[Seg],
    node: &Node,
    kind: FileKind,
) -> BTreeMap<String, FileSource> {
    let kind_name = kind.name();
    let mut out = BTreeMap::new();
    for (name, npos, def) in entries(node) {
        let np = with(path, &name);
        let mut given: Vec<&str> = Vec::new();
        let mut source = None;
        let mut external = None;
        for (k, kpos, v) in entries(def) {
            let kp = with(&np, &k);
            match k.as_str() {
                "file" => {
                    given.push("file");
                    if let Some(file) = text(cx, &kp, v) {
                        match project_path(&file) {
                            Some(p) => source = Some(FileSource::File { path: p }),
                            None => cx.error(
                                &kp,
                                v.pos,
                                format!(
                                    "`{file}` must be a path inside the project directory: the file is sent with the stack"
                                ),
                            ),
                        }
                    }
                }
                "environment" => {
                    given.push("environment");
                    match v.as_str() {
                        Some(var) if !var.trim().is_empty() => match cx.vars.get(var) {
                            Some(value) => {
                                source = Some(FileSource::Environment {
                                    variable: var.to_owned(),
                                    value: value.clone(),
                                });
                            }
                            None => cx.error(
                                &kp,
                                v.pos,
                                format!(
                                    "variable `{var}` is not set: set it where `corral up` runs, or in an env file"
                                ),
                            ),
                        },
                        _ => cx.error(&kp, v.pos, "must be the name of a variable"),
                    }
                }
                "content" => {
                    given.push("content");
                    match scalar_text(v) {
                        Some(value) => source = Some(FileSource::Content { value }),
                        None => cx.error(&kp, v.pos, "must be a string"),
                    }
                }
                // `external: false` is the default; anything else asks for a secret or config
                // managed outside the stack, which corral has no store for.
                "external" => {
                    if !matches!(v.value, Value::Bool(false)) {
                        external = Some((kp, kpos));
                    }
                }
                _ => cx.ignored(&kp, kpos),
            }
        }
        if let Some((kp, kpos)) = external {
            cx.error(
                &kp,
                kpos,
                format!(
                    "external {kind_name}s are not supported: define it with `file:`, `environment:` or `content:`"
                ),
            );
            continue;
        }
        match given.as_slice() {
            [_] => {
                if let Some(source) = source {
                    out.insert(name, source);
                }
            }
            [] => cx.error(
                &np,
                npos,
                format!("a {kind_name} needs one of `file:`, `environment:` or `content:`"),
            ),
            several => {
                let keys: Vec<String> = several.iter().map(|k| format!("`{k}:`")).collect();
                cx.error(
                    &np,
                    npos,
                    format!(
                        "a {kind_name} takes one of `file:`, `environment:` or `content:`, not {}",
                        keys.join(" and ")
                    ),
                );
            }
        }
    }
    out
}

/// A service's `configs:` or `secrets:`: each reference with its key path and position.
fn file_refs_of(
    cx: &mut Cx<'_>,
    path: &[Seg],
    node: &Node,
    kind: FileKind,
    defined: &BTreeSet<String>,
) -> Vec<(FileRef, Vec<Seg>, Pos)> {
    let kind_name = kind.name();
    let mut out = Vec::new();
    let Value::Seq(items) = &node.value else {
        cx.error(path, node.pos, format!("must be a list of {kind_name}s"));
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let ip = at(path, i);
        let mut source = None;
        let mut target = None;
        let mut mode = 0o444;
        match &item.value {
            Value::Str(s) => source = Some(s.clone()),
            Value::Map(_) => {
                for (k, kpos, v) in entries(item) {
                    let kp = with(&ip, &k);
                    match k.as_str() {
                        "source" => source = text(cx, &kp, v),
                        "target" => target = text(cx, &kp, v).map(|t| (t, kp, v.pos)),
                        "mode" => {
                            if let Some(m) = file_mode(cx, &kp, v) {
                                mode = m;
                            }
                        }
                        // `uid` and `gid` among them: the file belongs to root.
                        _ => cx.ignored(&kp, kpos),
                    }
                }
            }
            _ => {
                cx.error(
                    &ip,
                    item.pos,
                    format!("must be a {kind_name} name or `{{ source, target, mode }}`"),
                );
                continue;
            }
        }
        let Some(source) = source.filter(|s| !s.is_empty()) else {
            cx.error(&ip, item.pos, format!("a {kind_name} needs a `source`"));
            continue;
        };
        if !defined.contains(&source) {
            cx.error(
                &ip,
                item.pos,
                format!("no top-level {kind_name} `{source}`: define it under `{kind_name}s:`"),
            );
            continue;
        }
        let target = match target {
            None => kind.default_target(&source),
            Some((t, tp, tpos)) => match kind.target(&t) {
                Ok(t) => t,
                Err(e) => {
                    cx.error(&tp, tpos, e);
                    continue;
                }
            },
        };
        out.push((
            FileRef {
                source,
                target,
                mode,
            },
            ip,
            item.pos,
        ));
    }
    out
}

/// A config's or secret's `mode:`, read the way Compose reads it: `0440` is octal (YAML 1.1,
/// and Go's, reading — the YAML 1.2 parser here reads decimal 440, so the digits as written
/// decide), as are `0o440` and strings (`"0440"`, `"440"`); a number without a leading zero
/// (`288`) is taken as it is. At most 0777: setuid, setgid and sticky bits are refused.
fn file_mode(cx: &mut Cx<'_>, path: &[Seg], node: &Node) -> Option<u32> {
    let whole = match &node.value {
        Value::Int(n) => Some(*n),
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => Some(*f as i64),
        _ => None,
    };
    let (value, shown) = match (&node.value, whole) {
        (_, Some(n)) => {
            let digits = cx.written_digits(node.written);
            if digits.len() > 1 && digits.starts_with('0') && digits.parse::<i64>() == Ok(n) {
                (u32::from_str_radix(&digits, 8).ok(), digits)
            } else {
                (u32::try_from(n).ok(), n.to_string())
            }
        }
        (Value::Str(s), None) => {
            let t = s.trim();
            let digits = t
                .strip_prefix("0o")
                .or_else(|| t.strip_prefix("0O"))
                .unwrap_or(t);
            let valid = !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
            (
                valid.then(|| u32::from_str_radix(digits, 8).ok()).flatten(),
                s.clone(),
            )
        }
        _ => {
            cx.error(path, node.pos, "must be a file mode (octal, like 0440)");
            return None;
        }
    };
    match value {
        Some(m) if m <= 0o777 => Some(m),
        Some(_) => {
            cx.error(
                path,
                node.pos,
                format!("`{shown}` is not a file mode: at most 0777 (read, write and execute for owner, group and others)"),
            );
            None
        }
        None => {
            cx.error(
                path,
                node.pos,
                format!("`{shown}` is not a file mode (octal, like 0440)"),
            );
            None
        }
    }
}

/// Build contexts that name something other than a directory of the project.
fn is_remote(context: &str) -> bool {
    ["http://", "https://", "git@", "git://"]
        .iter()
        .any(|p| context.starts_with(p))
        || context.contains("://")
}

/// `build:`. The merge stage has brought `build: ./dir` to `{ context: ./dir }`; the short
/// form is read here too all the same.
fn build_of(cx: &mut Cx<'_>, path: &[Seg], node: &Node) -> Option<Build> {
    let errors_before = cx.errors.len();
    let mut b = Build {
        context: ".".to_owned(),
        dockerfile: None,
        args: BTreeMap::new(),
        target: None,
    };
    let mut context = None;
    match &node.value {
        Value::Str(s) => context = Some((s.clone(), path.to_vec(), node.pos)),
        Value::Map(_) => {
            for (k, kpos, v) in entries(node) {
                let kp = with(path, &k);
                match k.as_str() {
                    "context" => {
                        if let Some(s) = text(cx, &kp, v) {
                            context = Some((s, kp, v.pos));
                        }
                    }
                    "dockerfile" => {
                        if let Some(d) = text(cx, &kp, v) {
                            // Relative to the context, and inside it: the context is what
                            // is sent to build from.
                            if project_path(&d).is_none() {
                                cx.error(
                                    &kp,
                                    v.pos,
                                    format!(
                                        "`{d}` must be a path inside the build context (which is what is sent to build from)"
                                    ),
                                );
                            }
                            b.dockerfile = Some(d);
                        }
                    }
                    "args" => b.args = build_args(cx, &kp, v),
                    "target" => b.target = text(cx, &kp, v),
                    "dockerfile_inline" => cx.error(
                        &kp,
                        kpos,
                        "`dockerfile_inline` is not supported: write the Dockerfile to a file in the build context and name it with `dockerfile:`",
                    ),
                    _ => cx.ignored(&kp, kpos),
                }
            }
        }
        _ => {
            cx.error(
                path,
                node.pos,
                "must be a directory or a mapping with `context:`",
            );
            return None;
        }
    }
    if let Some((c, cp, cpos)) = context {
        if is_remote(&c) {
            cx.error(
                &cp,
                cpos,
                "remote build contexts are not supported: build from a directory of the project",
            );
        } else if project_path(&c).is_none() {
            cx.error(
                &cp,
                cpos,
                format!(
                    "`{c}` must be a path inside the project directory (which is what is sent to build from)"
                ),
            );
        }
        b.context = c;
    }
    (cx.errors.len() == errors_before).then_some(b)
}

/// `build.args`: a mapping (the merge stage brings the `KEY=VALUE` list to one) or such a
/// list. A key without a value takes it from the interpolation environment, and is left out
/// when the variable is not set, as in Compose.
fn build_args(cx: &mut Cx<'_>, path: &[Seg], node: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match &node.value {
        Value::Map(_) => {
            for (k, kpos, v) in entries(node) {
                match &v.value {
                    Value::Null => {
                        if let Some(value) = cx.vars.get(&k) {
                            out.insert(k, value.clone());
                        }
                    }
                    _ => match scalar_text(v) {
                        Some(s) => {
                            out.insert(k, s);
                        }
                        None => {
                            cx.error(&with(path, &k), kpos, "must be a string, number or boolean")
                        }
                    },
                }
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) => match s.split_once('=') {
                        Some((k, v)) => {
                            out.insert(k.to_owned(), v.to_owned());
                        }
                        None => {
                            if let Some(value) = cx.vars.get(s) {
                                out.insert(s.to_owned(), value.clone());
                            }
                        }
                    },
                    None => cx.error(&at(path, i), item.pos, "must be `KEY=VALUE` or `KEY`"),
                }
            }
        }
        Value::Null => {}
        _ => cx.error(path, node.pos, "must be a mapping or a list of `KEY=VALUE`"),
    }
    out
}

fn ports(cx: &mut Cx<'_>, path: &[Seg], node: &Node, out: &mut Vec<Port>) {
    let Value::Seq(items) = &node.value else {
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let ip = at(path, i);
        match &item.value {
            Value::Map(_) => {
                let mut port = Port {
                    published: None,
                    target: 0,
                    protocol: Protocol::Tcp,
                    host_ip: None,
                };
                for (k, kpos, v) in entries(item) {
                    let kp = with(&ip, &k);
                    let s = scalar_text(v).unwrap_or_default();
                    match k.as_str() {
                        "target" => match parse::port_range(&s) {
                            Ok(r) if r.start == r.end => port.target = r.start,
                            Ok(_) => cx.error(&kp, v.pos, "must be one port"),
                            Err(e) => cx.error(&kp, v.pos, e),
                        },
                        "published" => match parse::port_range(&s) {
                            Ok(r) => port.published = Some(r),
                            Err(e) => cx.error(&kp, v.pos, e),
                        },
                        "protocol" => match parse::protocol(&s) {
                            Ok(p) => port.protocol = p,
                            Err(e) => cx.error(&kp, v.pos, e),
                        },
                        "host_ip" => match s.parse() {
                            Ok(addr) => port.host_ip = Some(addr),
                            Err(_) => cx.error(&kp, v.pos, format!("`{s}` is not an IP address")),
                        },
                        _ => cx.ignored(&kp, kpos),
                    }
                }
                if port.target == 0 {
                    cx.error(&ip, item.pos, "a port needs a `target`");
                } else if !out.contains(&port) {
                    out.push(port);
                }
            }
            _ => {
                let Some(s) = scalar_text(item) else {
                    cx.error(&ip, item.pos, "must be a port mapping");
                    continue;
                };
                match parse::ports_short(&s) {
                    Ok(ps) => {
                        for p in ps {
                            if !out.contains(&p) {
                                out.push(p);
                            }
                        }
                    }
                    Err(e) => cx.error(&ip, item.pos, e),
                }
            }
        }
    }
}

/// `cap_add` / `cap_drop`: normalized names, each once (`NET_ADMIN` and `cap_net_admin` are the
/// same capability, which the schema's `uniqueItems` cannot see).
fn capabilities(cx: &mut Cx<'_>, path: &[Seg], node: &Node) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Value::Seq(items) = &node.value else {
        cx.error(path, node.pos, "must be a list of capability names");
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let ip = at(path, i);
        let Some(s) = item.as_str() else {
            cx.error(&ip, item.pos, "must be a capability name");
            continue;
        };
        match parse::capability(s) {
            Ok(name) => {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
            Err(e) => cx.error(&ip, item.pos, e),
        }
    }
    out
}

/// `devices`, in the short syntax only.
fn devices(cx: &mut Cx<'_>, path: &[Seg], node: &Node, out: &mut Vec<Device>) {
    let Value::Seq(items) = &node.value else {
        cx.error(path, node.pos, "must be a list of devices");
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let ip = at(path, i);
        match &item.value {
            Value::Str(s) => match parse::device(s) {
                Ok(d) => {
                    if !out.contains(&d) {
                        out.push(d);
                    }
                }
                Err(e) => cx.error(&ip, item.pos, e),
            },
            // Newer Compose files may use `{ source, target, permissions }`; the vendored
            // schema refuses it before this point, but say what to write should it get here.
            Value::Map(_) => cx.error(
                &ip,
                item.pos,
                "the long syntax is not supported: write the device as `HOST:CONTAINER:PERMS`",
            ),
            _ => cx.error(&ip, item.pos, "must be a device (`HOST:CONTAINER:PERMS`)"),
        }
    }
}

fn is_path(source: &str) -> bool {
    source.starts_with('/') || source.starts_with('.') || source.starts_with('~')
}

fn mounts(
    cx: &mut Cx<'_>,
    path: &[Seg],
    node: &Node,
    volumes: &BTreeSet<String>,
    out: &mut Vec<Mount>,
) {
    let Value::Seq(items) = &node.value else {
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let ip = at(path, i);
        let mount = match &item.value {
            Value::Str(s) => mount_short(cx, &ip, item.pos, s),
            Value::Map(_) => mount_long(cx, &ip, item),
            _ => {
                cx.error(&ip, item.pos, "must be a volume");
                None
            }
        };
        let Some(mount) = mount else { continue };
        if let Mount::Bind { source, .. } = &mount
            && let Err(e) = bind_source(source)
        {
            cx.error(&ip, item.pos, e);
            continue;
        }
        if let Mount::Named { source, .. } = &mount
            && !volumes.contains(source)
        {
            cx.error(
                &ip,
                item.pos,
                format!("volume `{source}` is not declared under the top-level `volumes:`"),
            );
            continue;
        }
        out.push(mount);
    }
}

/// A bind mount's source: an absolute path on the host, or a path inside the project
/// directory (shipped with the stack).
fn bind_source(source: &str) -> Result<(), String> {
    if source.starts_with('~') {
        return Err("`~` is not supported: corral runs containers on other machines; use a path relative to the project directory (shipped with the stack) or an absolute path on the host".to_owned());
    }
    if source.starts_with('/') || project_path(source).is_some() {
        Ok(())
    } else {
        Err(format!(
            "bind mount source `{source}` is outside the project directory: only files inside it are shipped with the stack (or use an absolute path on the host)"
        ))
    }
}

fn mount_short(cx: &mut Cx<'_>, path: &[Seg], pos: Pos, s: &str) -> Option<Mount> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [target] => {
            return Some(Mount::Anonymous {
                target: (*target).to_owned(),
            });
        }
        [source, target] => (*source, *target, ""),
        [source, target, mode] => (*source, *target, *mode),
        _ => {
            cx.error(
                path,
                pos,
                format!("`{s}` is not a volume (SOURCE:TARGET[:MODE])"),
            );
            return None;
        }
    };
    if source.is_empty() || target.is_empty() {
        cx.error(
            path,
            pos,
            format!("`{s}` is not a volume (SOURCE:TARGET[:MODE])"),
        );
        return None;
    }
    let mut read_only = false;
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => read_only = true,
            "rw" => read_only = false,
            other => cx.warn(
                path,
                pos,
                format!("volume option `{other}` is not supported by corral and is ignored"),
            ),
        }
    }
    let (source, target) = (source.to_owned(), target.to_owned());
    Some(if is_path(&source) {
        Mount::Bind {
            source,
            target,
            read_only,
        }
    } else {
        Mount::Named {
            source,
            target,
            read_only,
        }
    })
}

fn mount_long(cx: &mut Cx<'_>, path: &[Seg], node: &Node) -> Option<Mount> {
    let mut kind = None;
    let mut source = None;
    let mut target = None;
    let mut read_only = false;
    for (k, kpos, v) in entries(node) {
        let kp = with(path, &k);
        match k.as_str() {
            "type" => kind = v.as_str().map(str::to_owned),
            "source" => source = v.as_str().map(str::to_owned),
            "target" => target = v.as_str().map(str::to_owned),
            "read_only" => read_only = matches!(v.value, Value::Bool(true)),
            _ => cx.ignored(&kp, kpos),
        }
    }
    let Some(target) = target.filter(|t| !t.is_empty()) else {
        cx.error(path, node.pos, "a volume needs a `target`");
        return None;
    };
    match kind.as_deref() {
        Some("volume") => Some(match source.filter(|s| !s.is_empty()) {
            Some(source) => Mount::Named {
                source,
                target,
                read_only,
            },
            None => Mount::Anonymous { target },
        }),
        Some("bind") => match source.filter(|s| !s.is_empty()) {
            Some(source) => Some(Mount::Bind {
                source,
                target,
                read_only,
            }),
            None => {
                cx.error(path, node.pos, "a bind mount needs a `source`");
                None
            }
        },
        other => {
            cx.warn(
                path,
                node.pos,
                format!(
                    "volume type `{}` is not supported by corral (volume or bind); this mount is ignored",
                    other.unwrap_or("?")
                ),
            );
            None
        }
    }
}

fn healthcheck(cx: &mut Cx<'_>, path: &[Seg], node: &Node) -> Healthcheck {
    let mut cfg = HealthcheckConfig {
        test: None,
        interval: None,
        timeout: None,
        start_period: None,
        retries: None,
    };
    let mut disabled = false;
    for (k, kpos, v) in entries(node) {
        let kp = with(path, &k);
        match k.as_str() {
            "disable" => disabled |= matches!(v.value, Value::Bool(true)),
            "test" => match &v.value {
                Value::Str(s) => cfg.test = Some(vec!["CMD-SHELL".to_owned(), s.clone()]),
                Value::Seq(items) => {
                    let test: Vec<String> = items.iter().filter_map(scalar_text).collect();
                    match test.first().map(String::as_str) {
                        Some("NONE") => disabled = true,
                        Some("CMD") | Some("CMD-SHELL") if test.len() > 1 => cfg.test = Some(test),
                        _ => cx.error(
                            &kp,
                            v.pos,
                            "must start with `CMD` or `CMD-SHELL` followed by the command, or be [\"NONE\"]",
                        ),
                    }
                }
                _ => cx.error(&kp, v.pos, "must be a string or a list"),
            },
            "interval" => cfg.interval = duration_of(cx, &kp, v),
            "timeout" => cfg.timeout = duration_of(cx, &kp, v),
            "start_period" => cfg.start_period = duration_of(cx, &kp, v),
            "retries" => cfg.retries = count(cx, &kp, v, 1000),
            _ => cx.ignored(&kp, kpos),
        }
    }
    if disabled {
        Healthcheck::Disabled
    } else {
        Healthcheck::Custom(cfg)
    }
}

fn deploy(
    cx: &mut Cx<'_>,
    path: &[Seg],
    node: &Node,
    svc: &mut Service,
    replicas: &mut Option<(u32, Pos)>,
) {
    for (k, kpos, v) in entries(node) {
        let kp = with(path, &k);
        match k.as_str() {
            "replicas" => {
                if let Some(n) = count(cx, &kp, v, limits::MAX_REPLICAS) {
                    *replicas = Some((n, v.pos));
                }
            }
            "placement" => {
                for (pk, ppos, pv) in entries(v) {
                    let pp = with(&kp, &pk);
                    if pk != "constraints" {
                        cx.ignored(&pp, ppos);
                        continue;
                    }
                    let Value::Seq(items) = &pv.value else {
                        continue;
                    };
                    for (i, item) in items.iter().enumerate() {
                        let Some(s) = item.as_str() else { continue };
                        match parse::constraint(s) {
                            Ok(c) => svc.constraints.push(c),
                            Err(e) => cx.error(&at(&pp, i), item.pos, e),
                        }
                    }
                }
            }
            "resources" => {
                for (rk, rpos, rv) in entries(v) {
                    let rp = with(&kp, &rk);
                    if rk != "reservations" {
                        cx.ignored(&rp, rpos);
                        continue;
                    }
                    for (ck, cpos, cv) in entries(rv) {
                        let cp = with(&rp, &ck);
                        match ck.as_str() {
                            "cpus" => {
                                let x = match &cv.value {
                                    Value::Int(i) => Some(*i as f64),
                                    Value::Float(f) => Some(*f),
                                    Value::Str(s) => s.trim().parse::<f64>().ok(),
                                    _ => None,
                                };
                                match x.map(parse::cpu_millis) {
                                    Some(Ok(m)) => svc.reservations.cpu_millis = m,
                                    Some(Err(e)) => cx.error(&cp, cv.pos, e),
                                    None => {
                                        cx.error(&cp, cv.pos, "must be a number of CPUs (like 0.5)")
                                    }
                                }
                            }
                            "memory" => {
                                let s = scalar_text(cv).unwrap_or_default();
                                match parse::bytes(&s) {
                                    Ok(b) => svc.reservations.memory_bytes = b,
                                    Err(e) => cx.error(&cp, cv.pos, e),
                                }
                            }
                            _ => cx.ignored(&cp, cpos),
                        }
                    }
                }
            }
            "update_config" => {
                for (uk, upos, uv) in entries(v) {
                    let up = with(&kp, &uk);
                    match uk.as_str() {
                        "parallelism" => {
                            if let Some(n) = count(cx, &up, uv, limits::MAX_REPLICAS) {
                                if n == 0 {
                                    cx.error(&up, uv.pos, "must be at least 1");
                                } else {
                                    svc.update.parallelism = n;
                                }
                            }
                        }
                        "delay" => {
                            if let Some(d) = duration_of(cx, &up, uv) {
                                svc.update.delay = d;
                            }
                        }
                        "order" => match uv.as_str() {
                            Some("start-first") => svc.update.order = UpdateOrder::StartFirst,
                            Some("stop-first") => svc.update.order = UpdateOrder::StopFirst,
                            _ => cx.error(&up, uv.pos, "must be `start-first` or `stop-first`"),
                        },
                        _ => cx.ignored(&up, upos),
                    }
                }
            }
            _ => cx.ignored(&kp, kpos),
        }
    }
}

fn service_pos(nodes: &Node, name: &str) -> Pos {
    nodes.lookup(&[Seg::Key(name.to_owned())])
}

fn cross_checks(cx: &mut Cx<'_>, services: &BTreeMap<String, Service>, nodes: &Node) {
    for (name, svc) in services {
        let base = vec![Seg::Key("services".into()), Seg::Key(name.clone())];
        for dep in svc.depends_on.keys() {
            if !services.contains_key(dep) {
                let p = with(&with(&base, "depends_on"), dep);
                let pos = nodes.lookup(&[
                    Seg::Key(name.clone()),
                    Seg::Key("depends_on".into()),
                    Seg::Key(dep.clone()),
                ]);
                cx.error(
                    &p,
                    pos,
                    format!("service {name} depends on unknown service `{dep}`"),
                );
            }
        }
        for (key, list) in [
            ("affinity", &svc.affinity),
            ("anti_affinity", &svc.anti_affinity),
        ] {
            for other in list {
                if !services.contains_key(other) {
                    let p = with(&with(&base, "x-corral"), key);
                    let pos = nodes.lookup(&[
                        Seg::Key(name.clone()),
                        Seg::Key("x-corral".into()),
                        Seg::Key(key.into()),
                    ]);
                    cx.error(&p, pos, format!("`{other}` is not a service of this stack"));
                }
            }
        }
    }
}

/// Topological order of `depends_on` (dependencies first, ties by name), or a cycle error.
fn start_order(
    cx: &mut Cx<'_>,
    services: &BTreeMap<String, Service>,
    nodes: &Node,
) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> =
        services.keys().map(|k| (k.as_str(), Mark::New)).collect();
    let mut order = Vec::new();
    // Iterative DFS: (service, index of the next dependency to visit).
    for root in services.keys() {
        if marks.get(root.as_str()) != Some(&Mark::New) {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(root.as_str(), 0)];
        marks.insert(root.as_str(), Mark::Active);
        while let Some((name, next)) = stack.last().copied() {
            let deps: Vec<&str> = services
                .get(name)
                .map(|s| s.depends_on.keys().map(String::as_str).collect())
                .unwrap_or_default();
            if let Some(dep) = deps.get(next).copied() {
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                match marks.get(dep).copied() {
                    Some(Mark::New) => {
                        marks.insert(dep, Mark::Active);
                        stack.push((dep, 0));
                    }
                    Some(Mark::Active) => {
                        let start = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        let mut cycle: Vec<&str> = stack[start..].iter().map(|(n, _)| *n).collect();
                        cycle.push(dep);
                        let path = vec![
                            Seg::Key("services".into()),
                            Seg::Key(name.to_owned()),
                            Seg::Key("depends_on".into()),
                        ];
                        let pos = service_pos(nodes, name);
                        cx.error(
                            &path,
                            pos,
                            format!("dependency cycle: {}", cycle.join(" → ")),
                        );
                        return None;
                    }
                    _ => {}
                }
            } else {
                marks.insert(name, Mark::Done);
                order.push(name.to_owned());
                stack.pop();
            }
        }
    }
    Some(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx<'a>(
        env: &'a BTreeMap<String, String>,
        env_files: &'a BTreeMap<String, BTreeMap<String, String>>,
    ) -> Cx<'a> {
        Cx {
            files: &[],
            texts: &[],
            env,
            vars: env,
            env_files: Some(env_files),
            warnings: Vec::new(),
            more_warnings: 0,
            errors: Vec::new(),
        }
    }

    #[test]
    fn long_device_syntax_says_what_to_write() {
        // The vendored schema refuses a mapping here before the loader sees it; a newer schema
        // would not, and then this is the message.
        let (env, files) = (BTreeMap::new(), BTreeMap::new());
        let mut cx = cx(&env, &files);
        let node = Node::new(
            Pos::NONE,
            Value::Seq(vec![
                Node::new(Pos::NONE, Value::Str("/dev/fuse".into())),
                Node::new(Pos::NONE, Value::Map(Vec::new())),
                Node::new(Pos::NONE, Value::Int(3)),
            ]),
        );
        let path = [
            Seg::Key("services".into()),
            Seg::Key("web".into()),
            Seg::Key("devices".into()),
        ];
        let mut out = Vec::new();
        devices(&mut cx, &path, &node, &mut out);
        assert_eq!(out.len(), 1);
        let shown: Vec<String> = cx.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "services.web.devices[1]: the long syntax is not supported: write the device as `HOST:CONTAINER:PERMS`",
                "services.web.devices[2]: must be a device (`HOST:CONTAINER:PERMS`)",
            ]
        );
    }

    #[test]
    fn capability_lists_must_be_lists_of_names() {
        let (env, files) = (BTreeMap::new(), BTreeMap::new());
        let mut cx = cx(&env, &files);
        let path = [
            Seg::Key("services".into()),
            Seg::Key("web".into()),
            Seg::Key("cap_add".into()),
        ];
        let scalar = Node::new(Pos::NONE, Value::Str("NET_ADMIN".into()));
        assert!(capabilities(&mut cx, &path, &scalar).is_empty());
        let list = Node::new(
            Pos::NONE,
            Value::Seq(vec![Node::new(Pos::NONE, Value::Bool(true))]),
        );
        assert!(capabilities(&mut cx, &path, &list).is_empty());
        let shown: Vec<String> = cx.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "services.web.cap_add: must be a list of capability names",
                "services.web.cap_add[0]: must be a capability name",
            ]
        );
    }

    #[test]
    fn file_modes_without_the_text_are_taken_as_numbers() {
        let (env, files) = (BTreeMap::new(), BTreeMap::new());
        let mut cx = cx(&env, &files);
        let path = [Seg::Key("mode".into())];
        let mode =
            |cx: &mut Cx<'_>, value: Value| file_mode(cx, &path, &Node::new(Pos::NONE, value));
        // No file text to look at (a node the loader made): the number as it is.
        assert_eq!(mode(&mut cx, Value::Int(288)), Some(0o440));
        assert_eq!(mode(&mut cx, Value::Int(440)), Some(0o670));
        assert_eq!(mode(&mut cx, Value::Float(256.0)), Some(0o400));
        assert_eq!(mode(&mut cx, Value::Str("0o644".into())), Some(0o644));
        assert_eq!(mode(&mut cx, Value::Str("644".into())), Some(0o644));
        assert_eq!(mode(&mut cx, Value::Str("".into())), None);
        assert_eq!(mode(&mut cx, Value::Str("0o".into())), None);
        assert_eq!(mode(&mut cx, Value::Float(0.5)), None);
        assert_eq!(mode(&mut cx, Value::Bool(true)), None);
        assert_eq!(mode(&mut cx, Value::Int(512)), None);
        assert_eq!(cx.errors.len(), 5);
    }

    #[test]
    fn file_targets_and_remote_contexts() {
        assert_eq!(FileKind::Secret.default_target("t"), "/run/secrets/t");
        assert_eq!(FileKind::Config.default_target("c"), "/c");
        assert_eq!(
            FileKind::Secret.target("a/./b").unwrap(),
            "/run/secrets/a/b"
        );
        assert_eq!(FileKind::Secret.target("/etc/t").unwrap(), "/etc/t");
        assert_eq!(FileKind::Config.target("/etc/c").unwrap(), "/etc/c");
        for bad in ["", ".", "..", "../t", "~/t"] {
            assert!(FileKind::Secret.target(bad).is_err(), "{bad:?}");
        }
        assert!(FileKind::Config.target("etc/c").is_err());
        for remote in [
            "https://github.com/a/b.git#main",
            "http://x/y.tgz",
            "git@github.com:a/b.git",
            "git://x/y",
            "ssh://git@x/y",
        ] {
            assert!(is_remote(remote), "{remote}");
        }
        for local in [".", "./api", "api", "github.com/a/b"] {
            assert!(!is_remote(local), "{local}");
        }
    }

    #[test]
    fn supported_keys_are_in_the_schema() {
        let schema: serde_json::Value = serde_json::from_str(crate::COMPOSE_SPEC_SCHEMA).unwrap();
        let props = &schema["definitions"]["service"]["properties"];
        for key in SUPPORTED_SERVICE_KEYS {
            assert!(key.starts_with("x-") || props.get(key).is_some(), "{key}");
        }
    }
}
