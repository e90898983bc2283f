//! A loaded Compose project becomes the service definitions the datastore keeps and the
//! reconciler acts on. No I/O.

use std::collections::BTreeMap;

use corral_compose as compose;
use corral_proto::{
    ContainerSpec, DeviceSpec, HealthSpec, MountSpec, NetworkMode, NetworkSpec, PortSpec,
    PullPolicy, RestartPolicyName, RestartSpec, labels,
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

/// Turns a loaded project into stored definitions. Refuses what corral cannot run: relative
/// bind mounts (the path would be read on the machine that ran `corral up`, not the host) and
/// published port ranges of unequal length.
pub fn define(project: &compose::Project) -> Result<StackDef, Vec<String>> {
    let stack = &project.name;
    let mut errors = Vec::new();
    let mut services = Vec::new();
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
                        errors.push(format!(
                            "services.{name}.volumes: bind mount source {source:?} is relative; corral runs containers on other machines, so write an absolute path on the host (or use a named volume)"
                        ));
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
    if errors.is_empty() {
        Ok(StackDef {
            name: stack.clone(),
            services,
            volumes: project
                .volumes
                .iter()
                .map(|v| volume_name(stack, v))
                .collect(),
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

impl ServiceDef {
    /// Host ports every replica publishes.
    pub fn host_ports(&self) -> Vec<HostPort> {
        host_ports(&self.template)
    }

    /// The stored JSON and its SHA-256 (hex): a change of definition changes the hash.
    pub fn encode(&self) -> Result<(String, String), serde_json::Error> {
        let json = serde_json::to_string(self)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, json.as_bytes());
        let hash = digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
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
    fn relative_bind_mounts_and_reserved_labels_are_refused() {
        let p = load(
            "services:\n  a:\n    image: x\n    volumes: ['./data:/data']\n    labels: { io.corral.stack: evil }\n",
        );
        let errors = define(&p).unwrap_err();
        assert!(errors[0].contains("relative"), "{errors:?}");
        assert!(errors[1].contains("reserved"), "{errors:?}");
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
