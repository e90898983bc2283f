//! The agent's side of Docker: the only code in corral that talks to a Docker engine, over the
//! local socket (`--docker-host`, default `unix:///var/run/docker.sock`).
//!
//! - [`Engine`] keeps a connection (API version negotiated: Debian's dockerd speaks 1.41),
//!   reconnects when dockerd returns, and reports the inventory of corral's containers
//!   whenever it (re)connects, then each change from Docker's event stream.
//! - Container operations are idempotent by corral container id (a label on the container):
//!   a redelivered `container_run` finds the container it created before instead of creating a
//!   second one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use corral_proto::{ContainerSpec, ContainerStatus, DockerInfo, Report, labels};
use futures_util::StreamExt;
use tokio::sync::{Mutex, mpsc};

pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

pub struct Engine {
    host: String,
    host_name: String,
    client: Mutex<Option<Docker>>,
    reports: mpsc::Sender<Report>,
}

fn unavailable(e: impl std::fmt::Display) -> String {
    format!("docker unavailable: {e}")
}

impl Engine {
    /// Starts watching Docker; reports go to `reports`.
    pub fn watch(host: String, host_name: String, reports: mpsc::Sender<Report>) -> Arc<Engine> {
        let engine = Arc::new(Engine {
            host,
            host_name,
            client: Mutex::new(None),
            reports,
        });
        tokio::spawn(watch(engine.clone()));
        engine
    }

    async fn connect(&self) -> Result<Docker, String> {
        let path = self.host.strip_prefix("unix://").ok_or_else(|| {
            format!(
                "--docker-host {:?} must be unix:///path/to/docker.sock",
                self.host
            )
        })?;
        let docker = Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
            .map_err(unavailable)?
            .negotiate_version()
            .await
            .map_err(unavailable)?;
        docker.ping().await.map_err(unavailable)?;
        Ok(docker)
    }

    /// The connected client, connecting first if needed.
    pub async fn client(&self) -> Result<Docker, String> {
        let mut guard = self.client.lock().await;
        if let Some(d) = guard.as_ref() {
            return Ok(d.clone());
        }
        let d = self.connect().await?;
        *guard = Some(d.clone());
        Ok(d)
    }

    /// Queues a report for the tunnel. With no tunnel up the queue may fill: the report is
    /// dropped, since every connect sends a full inventory. Returns false once the agent is
    /// shutting down.
    fn report(&self, report: Report) -> bool {
        !matches!(
            self.reports.try_send(report),
            Err(mpsc::error::TrySendError::Closed(_))
        )
    }

    async fn forget(&self) {
        *self.client.lock().await = None;
    }

    /// The full inventory, or why Docker cannot be reached.
    pub async fn inventory(&self) -> Report {
        match self.try_inventory().await {
            Ok(r) => r,
            Err(e) => {
                self.forget().await;
                Report::Inventory {
                    docker: None,
                    docker_error: Some(e),
                    containers: Vec::new(),
                }
            }
        }
    }

    async fn try_inventory(&self) -> Result<Report, String> {
        let docker = self.client().await?;
        let version = docker.version().await.map_err(unavailable)?;
        let info = docker.info().await.map_err(unavailable)?;
        let containers = list(&docker, &format!("{}=true", labels::MANAGED)).await?;
        Ok(Report::Inventory {
            docker: Some(DockerInfo {
                version: version.version.unwrap_or_default(),
                api_version: version.api_version.unwrap_or_default(),
                storage_driver: info.driver.unwrap_or_default(),
                cpus: info.ncpu.unwrap_or(0).max(0) as u32,
                memory_bytes: info.mem_total.unwrap_or(0).max(0) as u64,
            }),
            docker_error: None,
            containers,
        })
    }

    /// The container with this corral id, if it exists.
    async fn find(
        &self,
        docker: &Docker,
        corral_id: &str,
    ) -> Result<Option<ContainerStatus>, String> {
        let label = format!("{}={corral_id}", labels::CONTAINER_ID);
        Ok(list(docker, &label).await?.into_iter().next())
    }

    async fn status(&self, docker: &Docker, docker_id: &str) -> Result<ContainerStatus, String> {
        let c = docker
            .inspect_container(docker_id, None)
            .await
            .map_err(|e| format!("cannot inspect container {docker_id}: {e}"))?;
        let labels = c
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        Ok(ContainerStatus {
            corral_id: labels
                .get(labels::CONTAINER_ID)
                .cloned()
                .unwrap_or_default(),
            docker_id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            state: c
                .state
                .as_ref()
                .and_then(|s| s.status)
                .map(|s| s.to_string())
                .unwrap_or_default(),
            exit_code: c.state.and_then(|s| s.exit_code),
        })
    }

    /// Creates (unless it exists) and starts a container.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<ContainerStatus, String> {
        let docker = self.client().await?;
        let id = match self.find(&docker, &spec.corral_id).await? {
            Some(existing) => existing.docker_id,
            None => self.create(&docker, spec).await?,
        };
        let current = self.status(&docker, &id).await?;
        if current.state != "running" {
            docker.start_container(&id, None).await.map_err(|e| {
                format!("cannot start {} on host {}: {e}", spec.name, self.host_name)
            })?;
        }
        self.status(&docker, &id).await
    }

    async fn create(&self, docker: &Docker, spec: &ContainerSpec) -> Result<String, String> {
        if docker.inspect_image(&spec.image).await.is_err() {
            return Err(format!(
                "image {} is not present on host {} (corral never pulls implicitly: load or pull it there first)",
                spec.image, self.host_name
            ));
        }
        let mut container_labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        container_labels.insert(labels::MANAGED.into(), "true".into());
        container_labels.insert(labels::CONTAINER_ID.into(), spec.corral_id.clone());
        container_labels.insert(labels::ENVIRONMENT.into(), spec.environment.clone());
        let mut exposed = Vec::new();
        let mut bindings = HashMap::new();
        for p in &spec.ports {
            let key = format!("{}/{}", p.container, if p.udp { "udp" } else { "tcp" });
            exposed.push(key.clone());
            bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: Some(p.host.to_string()),
                }]),
            );
        }
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.clone()),
            cmd: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
            labels: Some(container_labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(HostConfig {
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::default()
                        .name(&spec.name)
                        .build(),
                ),
                body,
            )
            .await
            .map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 409, ..
                } => format!(
                    "a container named {} that corral does not manage already exists on host {}",
                    spec.name, self.host_name
                ),
                other => format!(
                    "cannot create {} on host {}: {other}",
                    spec.name, self.host_name
                ),
            })?;
        Ok(created.id)
    }

    async fn existing(&self, corral_id: &str) -> Result<(Docker, Option<ContainerStatus>), String> {
        let docker = self.client().await?;
        let found = self.find(&docker, corral_id).await?;
        Ok((docker, found))
    }

    pub async fn start(&self, corral_id: &str) -> Result<Option<ContainerStatus>, String> {
        let (docker, found) = self.existing(corral_id).await?;
        let Some(c) = found else { return Ok(None) };
        if c.state != "running" {
            docker
                .start_container(&c.docker_id, None)
                .await
                .map_err(|e| format!("cannot start {}: {e}", c.name))?;
        }
        self.status(&docker, &c.docker_id).await.map(Some)
    }

    pub async fn stop(
        &self,
        corral_id: &str,
        grace_secs: u64,
    ) -> Result<Option<ContainerStatus>, String> {
        let (docker, found) = self.existing(corral_id).await?;
        let Some(c) = found else { return Ok(None) };
        if c.state == "running" || c.state == "restarting" || c.state == "paused" {
            let t = i32::try_from(grace_secs).unwrap_or(i32::MAX);
            docker
                .stop_container(
                    &c.docker_id,
                    Some(StopContainerOptionsBuilder::default().t(t).build()),
                )
                .await
                .map_err(|e| format!("cannot stop {}: {e}", c.name))?;
        }
        self.status(&docker, &c.docker_id).await.map(Some)
    }

    /// Removes the container (stopping it first). Removing one that is gone is not an error.
    pub async fn remove(&self, corral_id: &str) -> Result<(), String> {
        let (docker, found) = self.existing(corral_id).await?;
        let Some(c) = found else { return Ok(()) };
        match docker
            .remove_container(
                &c.docker_id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", c.name)),
        }
    }

    /// A stream of log text for the container.
    pub async fn logs(
        &self,
        corral_id: &str,
        follow: bool,
        tail: Option<u64>,
    ) -> Result<impl futures_util::Stream<Item = Result<String, String>> + use<>, String> {
        let (docker, found) = self.existing(corral_id).await?;
        let c = found.ok_or_else(|| "the container does not exist on this host".to_string())?;
        let tail = tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into());
        let options = LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let stream = docker.logs(&c.docker_id, Some(options));
        Ok(stream.map(|item| match item {
            Ok(chunk) => Ok(String::from_utf8_lossy(&chunk.into_bytes()).into_owned()),
            Err(e) => Err(e.to_string()),
        }))
    }
}

fn status_of_summary(c: bollard::models::ContainerSummary) -> Option<ContainerStatus> {
    let labels = c.labels.unwrap_or_default();
    Some(ContainerStatus {
        corral_id: labels.get(labels::CONTAINER_ID)?.clone(),
        docker_id: c.id.unwrap_or_default(),
        name: c
            .names
            .and_then(|n| n.into_iter().next())
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        state: c.state.map(|s| s.to_string()).unwrap_or_default(),
        exit_code: None,
    })
}

/// Containers (in any state) carrying `label` (`key=value`).
async fn list(docker: &Docker, label: &str) -> Result<Vec<ContainerStatus>, String> {
    let filters = HashMap::from([("label".to_string(), vec![label.to_owned()])]);
    let found = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(unavailable)?;
    Ok(found.into_iter().filter_map(status_of_summary).collect())
}

/// Follows Docker: inventory on every (re)connect, then changes from the event stream; when
/// Docker goes away, an inventory saying so, and retries every 2 s.
async fn watch(engine: Arc<Engine>) {
    let mut was_available = None;
    loop {
        let inventory = engine.inventory().await;
        let available = matches!(
            &inventory,
            Report::Inventory {
                docker: Some(_),
                ..
            }
        );
        // Report transitions (and every reconnect to Docker); while Docker stays down, once.
        if (available || was_available != Some(false)) && !engine.report(inventory) {
            return;
        }
        was_available = Some(available);
        if available && let Ok(docker) = engine.client().await {
            let filters = HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                (
                    "label".to_string(),
                    vec![format!("{}=true", labels::MANAGED)],
                ),
            ]);
            let mut events = docker.events(Some(
                EventsOptionsBuilder::default().filters(&filters).build(),
            ));
            while let Some(event) = events.next().await {
                let Ok(event) = event else { break };
                let actor = event.actor.unwrap_or_default();
                let attributes = actor.attributes.unwrap_or_default();
                let Some(corral_id) = attributes.get(labels::CONTAINER_ID).cloned() else {
                    continue;
                };
                let action = event.action.unwrap_or_default();
                let report = if action == "destroy" {
                    Report::Removed { corral_id }
                } else {
                    match engine
                        .status(&docker, actor.id.as_deref().unwrap_or_default())
                        .await
                    {
                        Ok(container) => Report::Change { container },
                        Err(_) => continue,
                    }
                };
                if !engine.report(report) {
                    return;
                }
            }
            // The event stream ended: dockerd stopped or restarted.
            engine.forget().await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
