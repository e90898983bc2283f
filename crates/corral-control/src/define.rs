//! A loaded Compose project becomes the service definitions the datastore keeps and the
//! reconciler acts on. No I/O.

use std::collections::BTreeMap;

use corral_compose as compose;
use corral_proto::{
    ContainerSpec, DeviceSpec, FileEntry, FileKind, FileMount, HealthSpec, MountSpec, NetworkMode,
    NetworkSpec, PortSpec, PullPolicy, RestartPolicyName, RestartSpec, labels,
};
use corral_scheduler::{self as sched, HostPort, Resources};
use serde::{Deserialize, Serialize};

/// One service as stored: everything needed to make a replica and to place it. Its replica
/// count is stored beside it (so `scale` is not a change of definition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDef {
    /// The container every replica is made from (`corral_id`, `name` and `environment` are
    /// filled per replica).
    pub template: ContainerSpec,
    pub constraints: Vec<sched::Constraint>,
    pub reservations: Resources,
    pub affinity: Vec<String>,
    pub anti_affinity: Vec<String>,
    pub update: UpdateDef,
    /// Service → `started` | `healthy`.
    pub depends_on: BTreeMap<String, DependsOn>,
    pub restart: RestartSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateDef {
    pub parallelism: u32,
    pub delay_ms: u64,
    pub start_first: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependsOn {
    Started,
    Healthy,
}

/// A stack ready to store.
#[derive(Debug, Clone)]
pub struct StackDef {
    pub name: String,
    /// In start order.
    pub services: Vec<(String, u32, ServiceDef)>,
    /// Docker names of the named volumes.
    pub volumes: Vec<String>,
    /// What the stack ships, by digest (project files, configs, secrets).
    pub files: BTreeMap<String, Shipped>,
    /// What people should know of how the files were taken (once per project file).
    pub notes: Vec<String>,
    /// The stack's own network policy rules, confined to the stack
    /// (`corral_policy::StackRules::scoped`).
    pub policy: Option<corral_policy::StackRules>,
}

/// A content the stack ships.
#[derive(Clone, PartialEq, Eq)]
pub struct Shipped {
    pub secret: bool,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Shipped {
    // A secret's bytes never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipped")
            .field("secret", &self.secret)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// The project's files as `corral up` sent them: normalised relative path → (mode, bytes).
pub type ProjectFiles = BTreeMap<String, (u32, Vec<u8>)>;

/// The SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Collects the files of one service: mounts and the contents they need.
struct Shipping<'a> {
    project: &'a compose::Project,
    sent: &'a ProjectFiles,
    files: BTreeMap<String, Shipped>,
    notes: Vec<String>,
    noted: std::collections::BTreeSet<String>,
}

impl Shipping<'_> {
    fn keep(&mut self, data: &[u8], secret: bool) -> String {
        let digest = sha256_hex(data);
        let entry = self.files.entry(digest.clone()).or_insert(Shipped {
            secret,
            data: data.to_vec(),
        });
        // A content that is a secret anywhere is treated as one everywhere.
        entry.secret |= secret;
        digest
    }

    /// A relative bind mount: the project's file, or directory of files, at `path`.
    fn project_mount(
        &mut self,
        service: &str,
        path: &str,
        target: &str,
    ) -> Result<FileMount, String> {
        let name = format!("./{path}");
        if let Some((mode, data)) = self.sent.get(path) {
            let (mode, data) = (*mode, data.clone());
            let digest = self.keep(&data, false);
            self.note(service, &name);
            return Ok(FileMount {
                name,
                kind: FileKind::Config,
                target: target.to_owned(),
                mode: mode & 0o777,
                digest,
                entries: Vec::new(),
            });
        }
        let prefix = if path == "." {
            String::new()
        } else {
            format!("{path}/")
        };
        let inside: Vec<(String, u32, Vec<u8>)> = self
            .sent
            .iter()
            .filter_map(|(p, (mode, data))| {
                p.strip_prefix(&prefix)
                    .map(|rest| (rest.to_owned(), *mode, data.clone()))
            })
            .collect();
        if inside.is_empty() {
            return Err(format!(
                "services.{service}.volumes: {name} was not sent with the project (is it a file or directory of the project?)"
            ));
        }
        let mut entries = Vec::new();
        for (rest, mode, data) in inside {
            let digest = self.keep(&data, false);
            entries.push(FileEntry {
                path: rest,
                digest,
                mode: mode & 0o777,
            });
        }
        self.note(service, &name);
        Ok(FileMount {
            name,
            kind: FileKind::Config,
            target: target.to_owned(),
            mode: 0o755,
            digest: corral_proto::files::tree_digest(&entries, sha256_hex),
            entries,
        })
    }

    fn note(&mut self, service: &str, name: &str) {
        if self.noted.insert(name.to_owned()) {
            self.notes.push(format!(
                "services.{service}.volumes: {name} is shipped with the stack and mounted read-only on every host that runs it (a change to it rolls the services that mount it; writes inside it would not be shared between hosts)"
            ));
        }
    }

    /// A `configs:` or `secrets:` reference.
    fn reference(
        &mut self,
        service: &str,
        r: &compose::FileRef,
        secret: bool,
    ) -> Result<FileMount, String> {
        let (what, defs) = if secret {
            ("secret", &self.project.secrets)
        } else {
            ("config", &self.project.configs)
        };
        let source = defs
            .get(&r.source)
            .ok_or_else(|| format!("services.{service}: no top-level {what} {}", r.source))?;
        let data = match source {
            compose::FileSource::File { path } => match self.sent.get(path) {
                Some((_, data)) => data.clone(),
                None => {
                    return Err(format!(
                        "{what}s.{}: file ./{path} was not sent with the project (is it a file of the project?)",
                        r.source
                    ));
                }
            },
            compose::FileSource::Environment { value, .. } => value.clone().into_bytes(),
            compose::FileSource::Content { value } => value.clone().into_bytes(),
        };
        if data.len() > corral_proto::files::MAX_FILE_BYTES {
            return Err(format!(
                "{what}s.{}: {} bytes; the limit is {}",
                r.source,
                data.len(),
                corral_proto::files::MAX_FILE_BYTES
            ));
        }
        let digest = self.keep(&data, secret);
        Ok(FileMount {
            name: format!("{what} {}", r.source),
            kind: if secret {
                FileKind::Secret
            } else {
                FileKind::Config
            },
            target: r.target.clone(),
            mode: r.mode & 0o777,
            digest,
            entries: Vec::new(),
        })
    }
}

/// The Docker network of a stack.
pub fn network_name(stack: &str) -> String {
    format!("corral_{stack}")
}

/// The Docker name of a stack's named volume.
pub fn volume_name(stack: &str, volume: &str) -> String {
    format!("{stack}_{volume}")
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn restart_of(policy: compose::RestartPolicy) -> RestartSpec {
    let (name, max_retries) = match policy {
        compose::RestartPolicy::No => (RestartPolicyName::No, None),
        compose::RestartPolicy::Always => (RestartPolicyName::Always, None),
        compose::RestartPolicy::OnFailure { max_retries } => {
            (RestartPolicyName::OnFailure, max_retries)
        }
        compose::RestartPolicy::UnlessStopped => (RestartPolicyName::UnlessStopped, None),
    };
    RestartSpec { name, max_retries }
}

fn health_of(h: &compose::Healthcheck) -> Option<HealthSpec> {
    match h {
        compose::Healthcheck::Inherit => None,
        compose::Healthcheck::Disabled => Some(HealthSpec {
            test: Some(vec!["NONE".into()]),
            ..HealthSpec::default()
        }),
        compose::Healthcheck::Custom(c) => Some(HealthSpec {
            test: c.test.clone(),
            interval_ms: c.interval.map(millis),
            timeout_ms: c.timeout.map(millis),
            start_period_ms: c.start_period.map(millis),
            retries: c.retries,
        }),
    }
}

fn protocol_name(p: compose::Protocol) -> &'static str {
    match p {
        compose::Protocol::Tcp => "tcp",
        compose::Protocol::Udp => "udp",
    }
}

/// Turns a loaded project into stored definitions, with no project files sent.
pub fn define(project: &compose::Project) -> Result<StackDef, Vec<String>> {
    define_with_files(project, &ProjectFiles::new())
}

/// Turns a loaded project, and the project files `corral up` sent, into stored definitions.
/// A relative bind mount becomes a read-only file (or directory) shipped with the stack;
/// configs and secrets become files too (secrets kept in memory on the hosts). Refuses what
/// corral cannot run: a mount or `file:` that was not sent, and published port ranges of
/// unequal length.
pub fn define_with_files(
    project: &compose::Project,
    sent: &ProjectFiles,
) -> Result<StackDef, Vec<String>> {
    let stack = &project.name;
    let mut errors = Vec::new();
    let mut services = Vec::new();
    let mut shipping = Shipping {
        project,
        sent,
        files: BTreeMap::new(),
        notes: Vec::new(),
        noted: Default::default(),
    };
    for name in &project.start_order {
        let Some(svc) = project.services.get(name) else {
            continue;
        };
        let mut ports = Vec::new();
        for p in &svc.ports {
            // An unpublished `ports:` entry only opens the port on the stack network.
            let Some(published) = p.published else {
                continue;
            };
            if published.start != published.end {
                errors.push(format!(
                    "services.{name}.ports: host port range {}-{} for container port {}: corral publishes one host port per container port (its scheduler keeps host ports exclusive), so name one",
                    published.start, published.end, p.target
                ));
                continue;
            }
            ports.push(PortSpec {
                host: published.start,
                container: p.target,
                udp: p.protocol == compose::Protocol::Udp,
                host_ip: p.host_ip,
            });
        }
        let mut expose: Vec<String> = svc
            .ports
            .iter()
            .filter(|p| p.published.is_none())
            .map(|p| format!("{}/{}", p.target, protocol_name(p.protocol)))
            .collect();
        for e in &svc.expose {
            for port in e.ports.start..=e.ports.end {
                expose.push(format!("{port}/{}", protocol_name(e.protocol)));
            }
        }
        let mut mounts = Vec::new();
        let mut files = Vec::new();
        for m in &svc.volumes {
            mounts.push(match m {
                compose::Mount::Named {
                    source,
                    target,
                    read_only,
                } => MountSpec::Volume {
                    source: volume_name(stack, source),
                    target: target.clone(),
                    read_only: *read_only,
                },
                compose::Mount::Bind {
                    source,
                    target,
                    read_only,
                } => {
                    if !source.starts_with('/') {
                        match compose::project_path(source) {
                            Some(path) => match shipping.project_mount(name, &path, target) {
                                Ok(f) => files.push(f),
                                Err(e) => errors.push(e),
                            },
                            None => errors.push(format!(
                                "services.{name}.volumes: bind mount source {source:?} is outside the project; corral runs containers on other machines, so write a path inside the project (shipped with the stack) or an absolute path on the host"
                            )),
                        }
                        continue;
                    }
                    MountSpec::Bind {
                        source: source.clone(),
                        target: target.clone(),
                        read_only: *read_only,
                    }
                }
                compose::Mount::Anonymous { target } => MountSpec::Anonymous {
                    target: target.clone(),
                },
            });
        }
        let mut container_labels = svc.labels.clone();
        for key in container_labels.keys() {
            if key.starts_with("io.corral.") {
                errors.push(format!(
                    "services.{name}.labels: {key:?}: the io.corral. prefix is reserved"
                ));
            }
        }
        container_labels.insert(labels::STACK.into(), stack.clone());
        container_labels.insert(labels::SERVICE.into(), name.clone());
        for r in &svc.configs {
            match shipping.reference(name, r, false) {
                Ok(f) => files.push(f),
                Err(e) => errors.push(e),
            }
        }
        for r in &svc.secrets {
            match shipping.reference(name, r, true) {
                Ok(f) => files.push(f),
                Err(e) => errors.push(e),
            }
        }
        let restart = restart_of(svc.restart);
        let template = ContainerSpec {
            image: svc.image.clone(),
            env: svc
                .environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            ports,
            labels: container_labels,
            cmd: svc.command.clone().unwrap_or_default(),
            entrypoint: svc.entrypoint.clone(),
            mounts,
            restart: Some(restart.clone()),
            healthcheck: health_of(&svc.healthcheck),
            user: svc.user.clone(),
            working_dir: svc.working_dir.clone(),
            hostname: svc.hostname.clone(),
            network: Some(NetworkSpec {
                name: network_name(stack),
                aliases: vec![name.clone(), format!("{name}.{stack}")],
            }),
            expose,
            stop_grace_secs: Some(svc.stop_grace_period.as_secs()),
            pull: match svc.pull_policy {
                compose::PullPolicy::Always => PullPolicy::Always,
                compose::PullPolicy::Missing => PullPolicy::Missing,
                compose::PullPolicy::Never => PullPolicy::Never,
            },
            privileged: svc.privileged,
            cap_add: svc.cap_add.clone(),
            cap_drop: svc.cap_drop.clone(),
            network_mode: match svc.network_mode {
                compose::NetworkMode::Default => NetworkMode::Default,
                compose::NetworkMode::Host => NetworkMode::Host,
                compose::NetworkMode::None => NetworkMode::None,
            },
            pid_host: svc.pid_host,
            files,
            devices: svc
                .devices
                .iter()
                .map(|d| DeviceSpec {
                    host: d.host.clone(),
                    container: d.container.clone(),
                    permissions: d.permissions.clone(),
                })
                .collect(),
            ..ContainerSpec::default()
        };
        if let Err(why) = corral_proto::ImageRef::parse(&svc.image) {
            errors.push(format!("services.{name}.image: {why}"));
        }
        let constraints = svc
            .constraints
            .iter()
            .map(|c| sched::Constraint {
                field: match &c.attribute {
                    compose::ConstraintAttribute::Hostname => sched::ConstraintField::Hostname,
                    compose::ConstraintAttribute::Label(l) => {
                        sched::ConstraintField::Label(l.clone())
                    }
                },
                op: match c.op {
                    compose::ConstraintOp::Eq => sched::ConstraintOp::Eq,
                    compose::ConstraintOp::Ne => sched::ConstraintOp::Ne,
                },
                value: c.value.clone(),
            })
            .collect();
        let def = ServiceDef {
            template,
            constraints,
            reservations: Resources {
                cpu_millis: svc.reservations.cpu_millis,
                memory_bytes: svc.reservations.memory_bytes,
            },
            affinity: svc.affinity.clone(),
            anti_affinity: svc.anti_affinity.clone(),
            update: UpdateDef {
                parallelism: svc.update.parallelism,
                delay_ms: millis(svc.update.delay),
                start_first: svc.update.order == compose::UpdateOrder::StartFirst,
            },
            depends_on: svc
                .depends_on
                .iter()
                .map(|(k, c)| {
                    (
                        k.clone(),
                        match c {
                            compose::Condition::ServiceStarted => DependsOn::Started,
                            compose::Condition::ServiceHealthy => DependsOn::Healthy,
                        },
                    )
                })
                .collect(),
            restart,
        };
        services.push((name.clone(), svc.replicas, def));
    }
    let total: usize = shipping.files.values().map(|f| f.data.len()).sum();
    if total > corral_proto::files::MAX_PROJECT_FILES_BYTES {
        errors.push(format!(
            "the stack ships {total} bytes of files, configs and secrets; the limit is {}",
            corral_proto::files::MAX_PROJECT_FILES_BYTES
        ));
    }
    let policy = match project.policy.as_ref().map(|r| r.scoped(stack)) {
        Some(Ok(rules)) => Some(rules),
        Some(Err(e)) => {
            errors.push(format!("x-corral.policy: {e}"));
            None
        }
        None => None,
    };
    if errors.is_empty() {
        Ok(StackDef {
            policy,
            name: stack.clone(),
            services,
            volumes: project
                .volumes
                .iter()
                .map(|v| volume_name(stack, v))
                .collect(),
            files: shipping.files,
            notes: shipping.notes,
        })
    } else {
        Err(errors)
    }
}

/// Host ports a container publishes (what the scheduler keeps exclusive per host).
pub fn host_ports(spec: &ContainerSpec) -> Vec<HostPort> {
    spec.ports
        .iter()
        .map(|p| HostPort {
            port: p.host,
            protocol: if p.udp {
                sched::Protocol::Udp
            } else {
                sched::Protocol::Tcp
            },
        })
        .collect()
}

/// Whether a stack's container takes an address of its host's overlay subnet: all do but
/// those on the host's network or on none.
pub fn takes_overlay_address(spec: &ContainerSpec) -> bool {
    spec.network_mode == NetworkMode::Default
}

impl ServiceDef {
    /// Host ports every replica publishes.
    pub fn host_ports(&self) -> Vec<HostPort> {
        host_ports(&self.template)
    }

    /// Every replica takes an overlay address.
    pub fn takes_overlay_address(&self) -> bool {
        takes_overlay_address(&self.template)
    }

    /// The stored JSON and its SHA-256 (hex): a change of definition changes the hash.
    pub fn encode(&self) -> Result<(String, String), serde_json::Error> {
        let json = serde_json::to_string(self)?;
        let hash = sha256_hex(json.as_bytes());
        Ok((json, hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> compose::Project {
        compose::load(&compose::Input {
            files: vec![compose::SourceFile::new("compose.yaml", text)],
            project_name: Some("shop".into()),
            ..compose::Input::default()
        })
        .unwrap()
        .project
    }

    #[test]
    fn every_supported_key_reaches_the_container_template() {
        let p = load(
            r#"
services:
  db:
    image: corral-test/busybox:latest
    healthcheck:
      test: ["CMD", "true"]
      interval: 2s
      retries: 3
  web:
    image: corral-test/busybox:latest
    command: httpd -f -p 80
    entrypoint: ["/bin/sh", "-c"]
    environment: { A: "1" }
    labels: { team: shop }
    ports: ["127.0.0.1:8080:80", "9000-9001:9000-9001/udp", "7000"]
    expose: ["5000"]
    volumes: ["data:/data", "/srv:/srv:ro", "/tmp/x"]
    restart: on-failure:3
    depends_on: { db: { condition: service_healthy } }
    deploy:
      replicas: 3
      placement: { constraints: ["node.labels.zone == eu"] }
      resources: { reservations: { cpus: "0.5", memory: 64M } }
      update_config: { parallelism: 2, delay: 1s, order: start-first }
    stop_grace_period: 3s
    user: "1000"
    working_dir: /srv
    hostname: web
    x-corral: { anti_affinity: [db] }
volumes:
  data: {}
"#,
        );
        let def = define(&p).unwrap();
        assert_eq!(
            def.services
                .iter()
                .map(|s| s.0.as_str())
                .collect::<Vec<_>>(),
            ["db", "web"]
        );
        assert_eq!(def.volumes, ["shop_data"]);
        let (_, replicas, web) = &def.services[1];
        assert_eq!(*replicas, 3);
        let t = &web.template;
        assert_eq!(t.cmd, ["httpd", "-f", "-p", "80"]);
        assert_eq!(
            t.entrypoint.as_deref(),
            Some(&["/bin/sh".to_string(), "-c".into()][..])
        );
        assert_eq!(t.env, ["A=1"]);
        assert_eq!(t.labels["team"], "shop");
        assert_eq!(t.labels[labels::STACK], "shop");
        assert_eq!(t.labels[labels::SERVICE], "web");
        let ports: Vec<String> = t.ports.iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["8080:80/tcp", "9000:9000/udp", "9001:9001/udp"]);
        assert_eq!(t.ports[0].host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(t.expose, ["7000/tcp", "5000/tcp"]);
        assert_eq!(
            t.mounts,
            [
                MountSpec::Volume {
                    source: "shop_data".into(),
                    target: "/data".into(),
                    read_only: false
                },
                MountSpec::Bind {
                    source: "/srv".into(),
                    target: "/srv".into(),
                    read_only: true
                },
                MountSpec::Anonymous {
                    target: "/tmp/x".into()
                },
            ]
        );
        assert_eq!(
            t.restart,
            Some(RestartSpec {
                name: RestartPolicyName::OnFailure,
                max_retries: Some(3)
            })
        );
        assert_eq!(t.stop_grace_secs, Some(3));
        assert_eq!(t.user.as_deref(), Some("1000"));
        assert_eq!(t.working_dir.as_deref(), Some("/srv"));
        assert_eq!(t.hostname.as_deref(), Some("web"));
        let net = t.network.as_ref().unwrap();
        assert_eq!(net.name, "corral_shop");
        assert_eq!(net.aliases, ["web", "web.shop"]);
        assert_eq!(web.constraints[0].to_string(), "node.labels.zone == eu");
        assert_eq!(web.reservations.cpu_millis, 500);
        assert_eq!(web.reservations.memory_bytes, 64 * 1024 * 1024);
        assert_eq!(
            web.update,
            UpdateDef {
                parallelism: 2,
                delay_ms: 1000,
                start_first: true
            }
        );
        assert_eq!(web.depends_on["db"], DependsOn::Healthy);
        assert_eq!(web.anti_affinity, ["db"]);
        let db = &def.services[0].2;
        let h = db.template.healthcheck.as_ref().unwrap();
        assert_eq!(
            h.test.as_deref(),
            Some(&["CMD".to_string(), "true".into()][..])
        );
        assert_eq!((h.interval_ms, h.retries), (Some(2000), Some(3)));
    }

    #[test]
    fn unsent_project_files_and_reserved_labels_are_refused() {
        let p = load(
            "services:\n  a:\n    image: x\n    volumes: ['./data:/data']\n    labels: { io.corral.stack: evil }\n",
        );
        let errors = define(&p).unwrap_err();
        assert!(errors[0].contains("./data was not sent"), "{errors:?}");
        assert!(errors[1].contains("reserved"), "{errors:?}");
    }

    #[test]
    fn a_stacks_own_policy_is_confined_to_it() {
        let p = load(
            "services:\n  web:\n    image: x\nx-corral:\n  policy:\n    allow:\n      - within: stack\n    deny:\n      - to: { stack: other }\n",
        );
        let stack = define(&p).unwrap();
        let rules = stack.policy.unwrap();
        assert_eq!(rules.allow[0].in_stack.as_deref(), Some("shop"));
        assert_eq!(rules.deny[0].name.as_deref(), Some("stack shop: deny[0]"));
        let p = load(
            "services:\n  web:\n    image: x\nx-corral:\n  policy:\n    allow:\n      - to: { stack: other }\n",
        );
        let errors = define(&p).unwrap_err();
        assert!(
            errors[0].starts_with("x-corral.policy: allow[0]") && errors[0].contains("\"other\""),
            "{errors:?}"
        );
        // A mistake inside the rules is named with its place by the loader.
        let loaded = compose::load(&compose::Input {
            files: vec![compose::SourceFile::new(
                "compose.yaml",
                "services:\n  web:\n    image: x\nx-corral:\n  policy:\n    default: deny\n",
            )],
            project_name: Some("shop".into()),
            ..compose::Input::default()
        });
        let text = format!("{:?}", loaded.err());
        assert!(
            text.contains("x-corral.policy") && text.contains("default"),
            "{text}"
        );
    }

    fn load_with_env(text: &str, env: &[(&str, &str)]) -> compose::Project {
        compose::load(&compose::Input {
            files: vec![compose::SourceFile::new("compose.yaml", text)],
            project_name: Some("shop".into()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..compose::Input::default()
        })
        .unwrap()
        .project
    }

    #[test]
    fn project_files_configs_and_secrets_become_mounts_named_by_content() {
        let text = "services:\n  proxy:\n    image: x\n    volumes: ['./nginx.conf:/etc/nginx/nginx.conf', './conf.d:/etc/conf.d:ro']\n    configs: [app]\n    secrets: [pw]\n  api:\n    image: x\n    secrets: [{ source: pw, target: db_pw, mode: 0400 }]\nconfigs:\n  app: { file: ./app.yml }\nsecrets:\n  pw: { environment: DB_PW }\n";
        let p = load_with_env(text, &[("DB_PW", "TOPSECRET")]);
        let mut sent = ProjectFiles::new();
        sent.insert("nginx.conf".into(), (0o644, b"listen 80;".to_vec()));
        sent.insert("conf.d/a.conf".into(), (0o600, b"a".to_vec()));
        sent.insert("conf.d/sub/b.conf".into(), (0o644, b"b".to_vec()));
        sent.insert("app.yml".into(), (0o644, b"x: 1".to_vec()));
        let def = define_with_files(&p, &sent).unwrap();
        let proxy = &def.services.iter().find(|s| s.0 == "proxy").unwrap().2;
        let files = &proxy.template.files;
        assert_eq!(files.len(), 4, "{files:?}");
        assert_eq!(files[0].name, "./nginx.conf");
        assert_eq!(files[0].digest, sha256_hex(b"listen 80;"));
        assert_eq!(files[0].kind, FileKind::Config);
        assert_eq!(files[1].entries.len(), 2);
        assert_eq!(files[1].entries[1].path, "sub/b.conf");
        assert_eq!(files[2].target, "/app");
        assert_eq!(files[3].kind, FileKind::Secret);
        assert_eq!(files[3].target, "/run/secrets/pw");
        let api = &def.services.iter().find(|s| s.0 == "api").unwrap().2;
        assert_eq!(api.template.files[0].target, "/run/secrets/db_pw");
        assert_eq!(api.template.files[0].mode, 0o400);
        let secret = &def.files[&sha256_hex(b"TOPSECRET")];
        assert!(secret.secret);
        assert!(!format!("{def:?}").contains("TOPSECRET"));
        assert!(!serde_json::to_string(&proxy).unwrap().contains("TOPSECRET"));
        assert_eq!(def.notes.len(), 2, "{:?}", def.notes);

        // A change of one file changes only the definitions that mount it.
        let hash = |d: &StackDef, s: &str| {
            d.services
                .iter()
                .find(|x| x.0 == s)
                .unwrap()
                .2
                .encode()
                .unwrap()
                .1
        };
        let mut changed = sent.clone();
        changed.insert("nginx.conf".into(), (0o644, b"listen 81;".to_vec()));
        let def2 = define_with_files(&p, &changed).unwrap();
        assert_ne!(hash(&def, "proxy"), hash(&def2, "proxy"));
        assert_eq!(hash(&def, "api"), hash(&def2, "api"));
        // A rotated secret rolls both.
        let def3 = define_with_files(&load_with_env(text, &[("DB_PW", "NEW")]), &sent).unwrap();
        assert_ne!(hash(&def, "api"), hash(&def3, "api"));

        // A file not sent is named.
        let mut missing = sent.clone();
        missing.remove("app.yml");
        let errors = define_with_files(&p, &missing).unwrap_err();
        assert!(
            errors[0].contains("configs.app: file ./app.yml was not sent"),
            "{errors:?}"
        );
    }

    #[test]
    fn the_hash_changes_with_the_definition_only() {
        let a = define(&load("services:\n  a:\n    image: x\n")).unwrap();
        let b = define(&load(
            "services:\n  a:\n    image: x\n    deploy: { replicas: 4 }\n",
        ))
        .unwrap();
        let c = define(&load("services:\n  a:\n    image: y\n")).unwrap();
        let h = |d: &StackDef| d.services[0].2.encode().unwrap().1;
        assert_eq!(h(&a), h(&b));
        assert_ne!(h(&a), h(&c));
    }
}
