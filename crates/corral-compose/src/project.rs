//! Stages 6 and 7 — typed project and warnings: the validated document becomes a [`Project`];
//! every key corral does not act on becomes a [`Warning`]; cross-service checks (unknown
//! `depends_on` targets, dependency cycles, undeclared volumes) run here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::error::{LoadError, Location, Warning, clip};
use crate::limits;
use crate::limits::{MAX_MESSAGE_BYTES, MAX_NAME_BYTES};
use crate::model::*;
use crate::node::{Node, Pos, Seg, Value, render_path};
use crate::parse;

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
    "x-corral",
];

pub(crate) struct Cx<'a> {
    pub files: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    /// `env_file:` contents by normalized name.
    pub env_files: &'a BTreeMap<String, BTreeMap<String, String>>,
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

    /// Warns that the key at `path` is ignored.
    fn ignored(&mut self, path: &[Seg], pos: Pos) {
        let name = match path.last() {
            Some(Seg::Key(k)) => k.clone(),
            _ => render_path(path),
        };
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
    for (key, pos, value) in entries(doc) {
        let path = vec![Seg::Key(key.clone())];
        match key.as_str() {
            "services" => {}
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
    for (sname, _, node) in &service_entries {
        let path = with(&services_path, sname);
        if let Some(service) = service(cx, &path, sname, node, &volumes) {
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
        start_order,
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

#[allow(clippy::too_many_lines)]
fn service(
    cx: &mut Cx<'_>,
    path: &[Seg],
    name: &str,
    node: &Node,
    volumes: &BTreeSet<String>,
) -> Option<Service> {
    let errors_before = cx.errors.len();
    let mut svc = Service {
        image: String::new(),
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
    };
    let has_image = node
        .get("image")
        .is_some_and(|v| !matches!(v.value, Value::Null));
    if !has_image {
        if node.get("build").is_some() {
            cx.error(
                path,
                node.pos,
                format!("service {name}: corral deploys images; `build:` without `image:` is not supported"),
            );
        } else {
            cx.error(path, node.pos, format!("service {name} has no `image`"));
        }
        return None;
    }
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
            "build" => cx.warn(
                &p,
                pos,
                "`build` is ignored: corral deploys the image named by `image:`",
            ),
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
                    match cx.env_files.get(&normalize_file_name(&file)) {
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
            "volumes" => mounts(cx, &p, v, volumes, &mut svc.volumes),
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
            env,
            env_files,
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
    fn supported_keys_are_in_the_schema() {
        let schema: serde_json::Value = serde_json::from_str(crate::COMPOSE_SPEC_SCHEMA).unwrap();
        let props = &schema["definitions"]["service"]["properties"];
        for key in SUPPORTED_SERVICE_KEYS {
            assert!(key.starts_with("x-") || props.get(key).is_some(), "{key}");
        }
    }
}
