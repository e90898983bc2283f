//! The agent's side of Docker: the only code in corral that talks to a Docker engine, over the
//! local socket (`--docker-host`, default `unix:///var/run/docker.sock`).
//!
//! - [`Engine`] keeps a connection (API version negotiated: Debian's dockerd speaks 1.41),
//!   reconnects when dockerd returns, and reports the inventory of corral's containers
//!   whenever it (re)connects, then each change from Docker's event stream.
//! - Container operations are idempotent by corral container id (a label on the container):
//!   a redelivered `container_run` finds the container it created before instead of creating a
//!   second one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, DeviceMapping, EndpointSettings, HealthConfig,
    HealthStatusEnum, HostConfig, Mount, MountType, NetworkCreateRequest, NetworkingConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, InspectNetworkOptions,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptions, StopContainerOptionsBuilder,
};
use corral_proto::{
    CleanupOutcome, ContainerSpec, ContainerState, ContainerStatus, DockerInfo, Health, HealthSpec,
    MountSpec, Report, RestartPolicyName, RestartSpec, StackCleanup, labels,
};
use futures_util::StreamExt;
use tokio::sync::{Mutex, mpsc};

pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// The host's overlay network: a bridge on the host's lease of the overlay range, shared by
/// every stack container on the host once the overlay is configured.
pub const OVERLAY_NETWORK: &str = "corral";
/// Its Linux bridge.
pub const OVERLAY_BRIDGE: &str = "corral-br0";

/// How many containers the inventory inspects at once.
const INSPECT_CONCURRENCY: usize = 8;

pub struct Engine {
    host: String,
    host_name: String,
    client: Mutex<Option<Docker>>,
    reports: mpsc::Sender<Report>,
    /// Serializes creating and removing networks and volumes. Docker before API 1.44 happily
    /// creates two networks with the same name when two creates race, and a name that matches
    /// two networks is unusable afterwards.
    resources: Mutex<()>,
    /// Set once the host's overlay network exists: stack containers join it instead of a
    /// per-stack network.
    overlay: std::sync::Mutex<Option<OverlayNet>>,
    /// This agent runs the overlay (no `--no-overlay`): a stack container waits for the
    /// overlay network rather than start without it (no overlay address, no service names).
    expects_overlay: std::sync::atomic::AtomicBool,
    /// The network policy is known and in force (or known to be none): until then a stack
    /// container on the overlay waits, so none runs unfiltered (see `netpolicy`).
    policy_ready: std::sync::atomic::AtomicBool,
    /// Where dockerd reads registries' CAs (`--docker-certs-dir`).
    certs_dir: std::path::PathBuf,
    /// Where shipped files and secrets go; `None` (an engine without a state dir) refuses
    /// containers that mount any.
    files: Option<crate::files::FileStore>,
    /// One pull per image reference at a time: replicas of a service created together share
    /// it instead of each asking dockerd (whose concurrent pulls of one image wait on each
    /// other). Entries go when no replica waits on them.
    pub(crate) pulls: crate::images::PullGate,
}

/// Docker's bridge driver option for the MTU of a network's interfaces.
const NETWORK_MTU_OPTION: &str = "com.docker.network.driver.mtu";

/// The host's overlay network as containers join it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayNet {
    /// e.g. `10.42.3.0/24`.
    pub subnet: String,
    /// e.g. `10.42.3.1`: the bridge's address (and the DNS responder's).
    pub gateway: String,
    /// The containers' MTU on it: the overlay's, so they never send what the tunnel cannot
    /// carry whole.
    pub mtu: u16,
}

/// The spec a stack container is created from once the overlay is up: it joins the host's
/// overlay network, answering there to `SERVICE.STACK` only (stacks share that network, so the
/// bare service name would be ambiguous between stacks).
pub fn on_overlay(spec: &ContainerSpec, overlay: &OverlayNet) -> ContainerSpec {
    let mut spec = spec.clone();
    if let Some(net) = spec.network.as_mut() {
        net.name = OVERLAY_NETWORK.into();
        // Names are answered by the agent's DNS responder for every host's replicas; a Docker
        // alias would make Docker's own resolver answer with this host's replicas only.
        net.aliases.clear();
    }
    spec.dns = vec![overlay.gateway.clone()];
    spec
}

fn unavailable(e: impl std::fmt::Display) -> String {
    format!("docker unavailable: {e}")
}

/// The HTTP status of a Docker error response, if it is one.
fn status_code(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// A client whose request timeout outlasts a stop with this grace period (dockerd answers a
/// stop only once the container is down: up to `grace_secs` later).
fn patient(docker: &Docker, grace_secs: u64) -> Docker {
    let needed = Duration::from_secs(grace_secs.saturating_add(60));
    if needed > docker.timeout() {
        docker.clone().with_timeout(needed)
    } else {
        docker.clone()
    }
}

/// What the list of containers says about one, before it is inspected.
struct Listed {
    docker_id: String,
    name: String,
    state: ContainerState,
}

impl Engine {
    /// Starts watching Docker; reports go to `reports`.
    pub fn watch(host: String, host_name: String, reports: mpsc::Sender<Report>) -> Arc<Engine> {
        Engine::watch_with(
            host,
            host_name,
            crate::images::DEFAULT_CERTS_DIR.into(),
            None,
            reports,
        )
    }

    /// [`Engine::watch`], with registries' CAs installed under `certs_dir`.
    pub fn watch_with(
        host: String,
        host_name: String,
        certs_dir: std::path::PathBuf,
        files: Option<crate::files::FileStore>,
        reports: mpsc::Sender<Report>,
    ) -> Arc<Engine> {
        let engine = Arc::new(Engine {
            host,
            host_name,
            client: Mutex::new(None),
            reports,
            resources: Mutex::new(()),
            overlay: std::sync::Mutex::new(None),
            expects_overlay: std::sync::atomic::AtomicBool::new(false),
            policy_ready: std::sync::atomic::AtomicBool::new(false),
            certs_dir,
            files,
            pulls: Default::default(),
        });
        tokio::spawn(watch(engine.clone()));
        engine
    }

    /// The host's name, for messages.
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// Where registries' CAs go.
    pub fn certs_dir(&self) -> &std::path::Path {
        &self.certs_dir
    }

    /// Queues a report that may be dropped when the queue is full (progress, superseded by
    /// the next one). Returns false once the agent is shutting down.
    pub(crate) fn try_report(&self, report: Report) -> bool {
        self.report(report)
    }

    /// The Docker socket's path, from `--docker-host unix:///PATH`.
    pub fn socket_path(&self) -> Result<&str, String> {
        self.host.strip_prefix("unix://").ok_or_else(|| {
            format!(
                "--docker-host {:?} must be unix:///path/to/docker.sock",
                self.host
            )
        })
    }

    async fn connect(&self) -> Result<Docker, String> {
        let path = self.socket_path()?;
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
        let listed = list(&docker, &format!("{}=true", labels::MANAGED)).await?;
        // The list lacks health and restart counts: inspect each (a few at a time). One that
        // disappears in between is simply not reported; its destroy event follows.
        let inspected: Vec<Result<Option<ContainerStatus>, String>> =
            futures_util::stream::iter(listed)
                .map(|c| {
                    let docker = docker.clone();
                    async move { inspect(&docker, &c.docker_id).await }
                })
                .buffered(INSPECT_CONCURRENCY)
                .collect()
                .await;
        let mut containers = Vec::with_capacity(inspected.len());
        for c in inspected {
            if let Some(c) = c? {
                containers.push(c);
            }
        }
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
    async fn find(&self, docker: &Docker, corral_id: &str) -> Result<Option<Listed>, String> {
        let label = format!("{}={corral_id}", labels::CONTAINER_ID);
        Ok(list(docker, &label).await?.into_iter().next())
    }

    async fn status(&self, docker: &Docker, docker_id: &str) -> Result<ContainerStatus, String> {
        inspect(docker, docker_id)
            .await?
            .ok_or_else(|| format!("container {docker_id} no longer exists"))
    }

    /// Creates the host's overlay network on `net.subnet` with MTU `net.mtu` (replacing one on
    /// another subnet if no container uses it; one with another MTU is replaced only if no
    /// container uses it, and kept with a warning otherwise), then has stack containers join it.
    pub async fn ensure_overlay_network(&self, net: &OverlayNet) -> Result<(), String> {
        let docker = self.client().await?;
        let _serialized = self.resources.lock().await;
        let current = docker
            .inspect_network(OVERLAY_NETWORK, None::<InspectNetworkOptions>)
            .await;
        let fail = |what: &str, e: DockerError| {
            format!(
                "cannot {what} the overlay network {OVERLAY_NETWORK} on host {}: {e}",
                self.host_name
            )
        };
        match current {
            Ok(n) if n.name.as_deref() == Some(OVERLAY_NETWORK) => {
                let subnets: Vec<String> = n
                    .ipam
                    .and_then(|i| i.config)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| c.subnet)
                    .collect();
                let mtu = n
                    .options
                    .as_ref()
                    .and_then(|o| o.get(NETWORK_MTU_OPTION))
                    .and_then(|m| m.parse::<u16>().ok());
                let in_use = n.containers.as_ref().is_some_and(|c| !c.is_empty());
                if subnets.contains(&net.subnet) {
                    if mtu != Some(net.mtu) && in_use {
                        tracing::warn!(
                            network = OVERLAY_NETWORK,
                            current = ?mtu,
                            wanted = net.mtu,
                            "the overlay network keeps its MTU while containers use it; it changes when it is next empty"
                        );
                    }
                    if mtu == Some(net.mtu) || in_use {
                        *self.overlay.lock().unwrap_or_else(|p| p.into_inner()) = Some(net.clone());
                        return Ok(());
                    }
                }
                docker
                    .remove_network(OVERLAY_NETWORK)
                    .await
                    .map_err(|e| fail("replace (its subnet or MTU changed)", e))?;
            }
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => return Err(fail("inspect", e)),
        }
        let mut labels = resource_labels(None);
        labels.insert("io.corral.overlay".into(), "true".into());
        let request = NetworkCreateRequest {
            name: OVERLAY_NETWORK.into(),
            driver: Some("bridge".into()),
            labels: Some(labels),
            // Docker would masquerade everything leaving the bridge, overlay traffic
            // included; the agent masquerades only what leaves the overlay range.
            options: Some(HashMap::from([
                (
                    "com.docker.network.bridge.name".to_string(),
                    OVERLAY_BRIDGE.to_string(),
                ),
                (
                    "com.docker.network.bridge.enable_ip_masquerade".to_string(),
                    "false".to_string(),
                ),
                (NETWORK_MTU_OPTION.to_string(), net.mtu.to_string()),
            ])),
            ipam: Some(bollard::models::Ipam {
                config: Some(vec![bollard::models::IpamConfig {
                    subnet: Some(net.subnet.clone()),
                    gateway: Some(net.gateway.clone()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(409) => {}
            Err(e) => return Err(fail("create", e)),
        }
        tracing::info!(subnet = %net.subnet, "overlay network ready");
        *self.overlay.lock().unwrap_or_else(|p| p.into_inner()) = Some(net.clone());
        Ok(())
    }

    /// From now on stack containers start only on the overlay network (see `expects_overlay`).
    pub fn expect_overlay(&self) {
        self.expects_overlay
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The network policy is in force (see `policy_ready`).
    pub fn set_policy_ready(&self, ready: bool) {
        self.policy_ready
            .store(ready, std::sync::atomic::Ordering::Release);
    }

    /// Creates (unless it exists) and starts a container.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<ContainerStatus, String> {
        let overlay = self
            .overlay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // A container on the host's network (or none) joins no overlay.
        let in_stack = spec.labels.contains_key(labels::STACK)
            && spec.network_mode == corral_proto::NetworkMode::Default;
        let spec = match &overlay {
            // Fail closed: started now it would have no overlay address and resolve no
            // service names, and nothing would move it later. The reconciler retries.
            None if in_stack
                && self
                    .expects_overlay
                    .load(std::sync::atomic::Ordering::Acquire) =>
            {
                return Err(format!(
                    "the overlay network is not ready on host {} yet (its configuration has not arrived or could not be applied: `corral doctor --host {}` says which); {} is started once it is. A host that needs no overlay runs its agent with --no-overlay",
                    self.host_name, self.host_name, spec.name
                ));
            }
            Some(_)
                if in_stack && !self.policy_ready.load(std::sync::atomic::Ordering::Acquire) =>
            {
                return Err(format!(
                    "the network policy is not in force on host {} yet (`corral doctor --host {}` says why); {} is started once it is, so that it never runs unfiltered",
                    self.host_name, self.host_name, spec.name
                ));
            }
            Some(net) if in_stack => on_overlay(spec, net),
            _ => spec.clone(),
        };
        let spec = &spec;
        let docker = self.client().await?;
        let id = match self.find(&docker, &spec.corral_id).await? {
            Some(existing) => existing.docker_id,
            None => self.create(&docker, spec).await?,
        };
        let current = self.status(&docker, &id).await?;
        if current.state != ContainerState::Running
            && let Err(e) = docker.start_container(&id, None).await
        {
            // A run that fails leaves nothing: the server forgets this container (a retry
            // makes a new one), so a created one left here would be nobody's.
            if let Err(removal) = self.remove(&spec.corral_id, None).await {
                tracing::warn!(container = %spec.name, error = %removal, "cannot remove a container that did not start");
            }
            return Err(format!(
                "cannot start {} on host {}: {e}",
                spec.name, self.host_name
            ));
        }
        self.status(&docker, &id).await
    }

    async fn create(&self, docker: &Docker, spec: &ContainerSpec) -> Result<String, String> {
        // Everything that can be checked without Docker fails before anything is created.
        let mut body =
            create_body(spec).map_err(|e| format!("cannot create {}: {e}", spec.name))?;
        self.ensure_image(docker, spec).await?;
        let shipped = match (&self.files, spec.files.is_empty()) {
            (_, true) => Vec::new(),
            (Some(store), false) => store.materialize(spec).map_err(|e| {
                format!(
                    "cannot create {} on host {}: {e}",
                    spec.name, self.host_name
                )
            })?,
            (None, false) => {
                return Err(format!(
                    "cannot create {}: this agent keeps no shipped files",
                    spec.name
                ));
            }
        };
        if !shipped.is_empty() {
            let host_config = body.host_config.get_or_insert_with(Default::default);
            let mounts = host_config.mounts.get_or_insert_with(Vec::new);
            for (source, target) in shipped {
                mounts.push(Mount {
                    typ: Some(MountType::BIND),
                    source: Some(source.display().to_string()),
                    target: Some(target),
                    read_only: Some(true),
                    ..Default::default()
                });
            }
        }
        let stack = spec.labels.get(labels::STACK).map(String::as_str);
        if let Some(network) = &spec.network
            && spec.network_mode == corral_proto::NetworkMode::Default
        {
            self.ensure_network(docker, &network.name, stack).await?;
        }
        for mount in &spec.mounts {
            if let MountSpec::Volume { source, .. } = mount {
                self.ensure_volume(docker, source, stack).await?;
            }
        }
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
            .map_err(|e| match status_code(&e) {
                Some(409) => format!(
                    "a container named {} that corral does not manage already exists on host {}",
                    spec.name, self.host_name
                ),
                _ => format!(
                    "cannot create {} on host {}: {e}",
                    spec.name, self.host_name
                ),
            })?;
        Ok(created.id)
    }

    /// Creates the bridge network `name` unless it exists.
    async fn ensure_network(
        &self,
        docker: &Docker,
        name: &str,
        stack: Option<&str>,
    ) -> Result<(), String> {
        let _serialized = self.resources.lock().await;
        match docker
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            // Docker also matches an id prefix; only the exact name counts.
            Ok(n) if n.name.as_deref() == Some(name) => return Ok(()),
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(404) => {}
            // Two networks of that name (another agent on this engine raced us): keep one.
            Err(e) if status_code(&e) == Some(400) => {
                return self.dedupe_network(docker, name).await;
            }
            Err(e) => {
                return Err(format!(
                    "cannot inspect network {name} on host {}: {e}",
                    self.host_name
                ));
            }
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            labels: Some(resource_labels(stack)),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => tracing::info!(network = name, "created network"),
            // Created meanwhile by someone else: just as good.
            Err(e) if status_code(&e) == Some(409) => {}
            Err(e) => {
                return Err(format!(
                    "cannot create network {name} on host {}: {e}",
                    self.host_name
                ));
            }
        }
        // Docker before API 1.44 lets two clients create one name twice at the same moment.
        self.dedupe_network(docker, name).await
    }

    /// Leaves one network named `name`: the oldest (then the smallest id) survives, so every
    /// racer keeps the same one.
    async fn dedupe_network(&self, docker: &Docker, name: &str) -> Result<(), String> {
        let filters = HashMap::from([("name".to_string(), vec![name.to_owned()])]);
        let found = docker
            .list_networks(Some(
                bollard::query_parameters::ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| format!("cannot list networks on host {}: {e}", self.host_name))?;
        let mut same = Vec::new();
        for n in found
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
        {
            let id = n.id.unwrap_or_default();
            // The list omits attached containers; a container may already have joined either
            // copy in the instant both existed.
            let attached = docker
                .inspect_network(&id, None::<InspectNetworkOptions>)
                .await
                .ok()
                .and_then(|i| i.containers)
                .map_or(0, |c| c.len());
            same.push((
                std::cmp::Reverse(attached),
                n.created.unwrap_or_default(),
                id,
            ));
        }
        // Keep the copy in use (then the oldest, then the smallest id): every racer agrees.
        same.sort();
        for (std::cmp::Reverse(attached), _, id) in same.iter().skip(1) {
            if *attached > 0 {
                tracing::warn!(network = name, %id, "a duplicate network is in use; it goes with its containers");
                continue;
            }
            if let Err(e) = docker.remove_network(id).await {
                tracing::warn!(network = name, %id, error = %e, "cannot remove a duplicate network");
            }
        }
        Ok(())
    }

    /// Creates the named volume `name` unless it exists.
    async fn ensure_volume(
        &self,
        docker: &Docker,
        name: &str,
        stack: Option<&str>,
    ) -> Result<(), String> {
        let _serialized = self.resources.lock().await;
        match docker.inspect_volume(name).await {
            Ok(_) => return Ok(()),
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => {
                return Err(format!(
                    "cannot inspect volume {name} on host {}: {e}",
                    self.host_name
                ));
            }
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(resource_labels(stack)),
            ..Default::default()
        };
        match docker.create_volume(request).await {
            Ok(_) => {
                tracing::info!(volume = name, "created volume");
                Ok(())
            }
            Err(e) if status_code(&e) == Some(409) => Ok(()),
            Err(e) => Err(format!(
                "cannot create volume {name} on host {}: {e}",
                self.host_name
            )),
        }
    }

    async fn existing(&self, corral_id: &str) -> Result<(Docker, Option<Listed>), String> {
        let docker = self.client().await?;
        let found = self.find(&docker, corral_id).await?;
        Ok((docker, found))
    }

    pub async fn start(&self, corral_id: &str) -> Result<Option<ContainerStatus>, String> {
        let (docker, found) = self.existing(corral_id).await?;
        let Some(c) = found else { return Ok(None) };
        if c.state != ContainerState::Running {
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
        if c.state.is_up() {
            stop_container(&docker, &c.docker_id, grace_secs)
                .await
                .map_err(|e| format!("cannot stop {}: {e}", c.name))?;
        }
        self.status(&docker, &c.docker_id).await.map(Some)
    }

    /// Removes the container, with its anonymous volumes. With a grace period it is stopped
    /// first (SIGTERM, then SIGKILL after `grace_secs`); without one it is killed at once.
    /// Removing one that is gone is not an error.
    pub async fn remove(&self, corral_id: &str, grace_secs: Option<u64>) -> Result<(), String> {
        let (docker, found) = self.existing(corral_id).await?;
        let Some(c) = found else {
            if let Some(files) = &self.files {
                files.forget(corral_id);
            }
            return Ok(());
        };
        if let Some(grace) = grace_secs
            && c.state.is_up()
        {
            match stop_container(&docker, &c.docker_id, grace).await {
                Ok(()) => {}
                Err(e) if status_code(&e) == Some(404) => return Ok(()),
                // The forced removal below kills it anyway.
                Err(e) => {
                    tracing::warn!(container = %c.name, error = %e, "cannot stop before removing")
                }
            }
        }
        match docker
            .remove_container(
                &c.docker_id,
                Some(
                    RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await
        {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                if let Some(files) = &self.files {
                    files.forget(corral_id);
                }
                Ok(())
            }
            Err(e) => Err(format!("cannot remove {}: {e}", c.name)),
        }
    }

    /// Which of `images` are not present on the host (each listed once, in the order given).
    pub async fn missing_images(&self, images: &[String]) -> Result<Vec<String>, String> {
        let docker = self.client().await?;
        let mut seen = HashSet::new();
        let mut missing = Vec::new();
        for image in images {
            if !seen.insert(image.as_str()) {
                continue;
            }
            match docker.inspect_image(image).await {
                Ok(_) => {}
                // 400: not even a valid reference, so certainly not present.
                Err(e) if matches!(status_code(&e), Some(404 | 400)) => {
                    missing.push(image.clone());
                }
                Err(e) => {
                    return Err(format!(
                        "cannot inspect image {image} on host {}: {e}",
                        self.host_name
                    ));
                }
            }
        }
        Ok(missing)
    }

    /// Removes a stack's network and the named volumes asked for. Absent ones are fine;
    /// ones that containers still use are an error; ones corral did not create for this stack
    /// are left alone (and listed as skipped).
    pub async fn stack_cleanup(&self, req: &StackCleanup) -> Result<CleanupOutcome, String> {
        let docker = self.client().await?;
        let _serialized = self.resources.lock().await;
        let host = &self.host_name;
        let mut outcome = CleanupOutcome {
            network_removed: false,
            volumes_removed: Vec::new(),
            skipped: Vec::new(),
        };
        let name = req.network.as_str();
        if !name.is_empty() {
            let network = match docker
                .inspect_network(name, None::<InspectNetworkOptions>)
                .await
            {
                // Docker also matches an id prefix; only the exact name counts.
                Ok(n) if n.name.as_deref() == Some(name) => Some(n),
                Ok(_) => None,
                Err(e) if status_code(&e) == Some(404) => None,
                Err(e) => return Err(format!("cannot inspect network {name} on host {host}: {e}")),
            };
            if let Some(network) = network {
                let users: Vec<String> = network
                    .containers
                    .unwrap_or_default()
                    .into_values()
                    .filter_map(|c| c.name)
                    .collect();
                if !belongs_to(network.labels.as_ref(), &req.stack) {
                    tracing::info!(
                        network = name,
                        stack = %req.stack,
                        "not removing a network corral did not create for this stack"
                    );
                    outcome.skipped.push(name.to_owned());
                } else if !users.is_empty() {
                    return Err(network_in_use(name, host, &users));
                } else {
                    match docker.remove_network(name).await {
                        Ok(()) => outcome.network_removed = true,
                        Err(e) if status_code(&e) == Some(404) => {}
                        // A container joined it since the inspection.
                        Err(e) if status_code(&e) == Some(403) => {
                            return Err(network_in_use(name, host, &[]));
                        }
                        Err(e) => {
                            return Err(format!(
                                "cannot remove network {name} on host {host}: {e}"
                            ));
                        }
                    }
                }
            }
        }
        let mut errors = Vec::new();
        let mut seen = HashSet::new();
        for volume in &req.volumes {
            if !seen.insert(volume.as_str()) {
                continue;
            }
            match docker.inspect_volume(volume).await {
                Ok(v) if !belongs_to(Some(&v.labels), &req.stack) => {
                    tracing::info!(
                        volume = %volume,
                        stack = %req.stack,
                        "not removing a volume corral did not create for this stack"
                    );
                    outcome.skipped.push(volume.clone());
                    continue;
                }
                Ok(_) => {}
                Err(e) if status_code(&e) == Some(404) => continue,
                Err(e) => {
                    errors.push(format!("cannot inspect volume {volume}: {e}"));
                    continue;
                }
            }
            match docker
                .remove_volume(volume, None::<RemoveVolumeOptions>)
                .await
            {
                Ok(()) => outcome.volumes_removed.push(volume.clone()),
                Err(e) if status_code(&e) == Some(404) => {}
                Err(e) if status_code(&e) == Some(409) => errors.push(format!(
                    "volume {volume} is still used by a container (remove the containers first)"
                )),
                Err(e) => errors.push(format!("cannot remove volume {volume}: {e}")),
            }
        }
        if !errors.is_empty() {
            let removed = if outcome.volumes_removed.is_empty() {
                String::new()
            } else {
                format!(" (removed: {})", outcome.volumes_removed.join(", "))
            };
            return Err(format!(
                "cleaning up stack {} on host {host}: {}{removed}",
                req.stack,
                errors.join("; ")
            ));
        }
        Ok(outcome)
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

fn network_in_use(name: &str, host: &str, users: &[String]) -> String {
    if users.is_empty() {
        format!(
            "network {name} on host {host} is still used by containers: remove them first, then retry"
        )
    } else {
        format!(
            "network {name} on host {host} is still used by containers {}: remove them first, then retry",
            users.join(", ")
        )
    }
}

/// Whether corral created this network or volume for `stack` (by its labels).
fn belongs_to(labels: Option<&HashMap<String, String>>, stack: &str) -> bool {
    let Some(labels) = labels else { return false };
    labels.get(labels::MANAGED).map(String::as_str) == Some("true")
        && labels.get(labels::STACK).is_none_or(|s| s == stack)
}

/// Labels of the networks and volumes corral creates.
fn resource_labels(stack: Option<&str>) -> HashMap<String, String> {
    let mut l = HashMap::from([(labels::MANAGED.to_owned(), "true".to_owned())]);
    if let Some(stack) = stack {
        l.insert(labels::STACK.to_owned(), stack.to_owned());
    }
    l
}

async fn stop_container(docker: &Docker, id: &str, grace_secs: u64) -> Result<(), DockerError> {
    let t = i32::try_from(grace_secs).unwrap_or(i32::MAX);
    patient(docker, grace_secs)
        .stop_container(
            id,
            Some(StopContainerOptionsBuilder::default().t(t).build()),
        )
        .await
}

/// The container's status, `None` if it does not exist.
async fn inspect(docker: &Docker, docker_id: &str) -> Result<Option<ContainerStatus>, String> {
    match docker.inspect_container(docker_id, None).await {
        Ok(c) => Ok(Some(status_of_inspect(c))),
        Err(e) if status_code(&e) == Some(404) => Ok(None),
        Err(e) => Err(format!("cannot inspect container {docker_id}: {e}")),
    }
}

/// A [`ContainerStatus`] from Docker's inspection of the container.
fn status_of_inspect(c: ContainerInspectResponse) -> ContainerStatus {
    let labels = c
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(labels::CONTAINER_ID))
        .cloned()
        .unwrap_or_default();
    let state = c.state.unwrap_or_default();
    ContainerStatus {
        corral_id: labels,
        docker_id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        state: state.status.map_or(ContainerState::Unknown, |s| {
            ContainerState::parse(s.as_ref())
        }),
        exit_code: state.exit_code,
        health: state
            .health
            .and_then(|h| h.status)
            .filter(|s| !matches!(s, HealthStatusEnum::EMPTY | HealthStatusEnum::NONE))
            .and_then(|s| Health::parse(s.as_ref())),
        restart_count: c.restart_count.unwrap_or(0),
        ip: c
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(OVERLAY_NETWORK))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty()),
    }
}

/// Nanoseconds (Docker's unit for healthcheck durations) from milliseconds.
fn ms_to_ns(ms: u64) -> i64 {
    i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

fn health_config(h: &HealthSpec) -> HealthConfig {
    HealthConfig {
        test: h.test.clone(),
        interval: h.interval_ms.map(ms_to_ns),
        timeout: h.timeout_ms.map(ms_to_ns),
        start_period: h.start_period_ms.map(ms_to_ns),
        retries: h.retries.map(i64::from),
        ..Default::default()
    }
}

fn restart_policy(r: &RestartSpec) -> Result<RestartPolicy, String> {
    let name = match r.name {
        RestartPolicyName::No => RestartPolicyNameEnum::NO,
        RestartPolicyName::Always => RestartPolicyNameEnum::ALWAYS,
        RestartPolicyName::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        RestartPolicyName::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
    };
    let maximum_retry_count = match (r.name, r.max_retries) {
        (_, None) => None,
        (RestartPolicyName::OnFailure, Some(n)) => Some(i64::from(n)),
        (other, Some(_)) => {
            return Err(format!(
                "max_retries applies only to the on-failure restart policy, not {:?}",
                other.as_str()
            ));
        }
    };
    Ok(RestartPolicy {
        name: Some(name),
        maximum_retry_count,
    })
}

/// Docker's keys (`9000/tcp`) for an `expose:` entry: `PORT[/PROTO]` or `START-END[/PROTO]`,
/// TCP when no protocol is given.
fn exposed_ports(text: &str) -> Result<Vec<String>, String> {
    let bad = || {
        format!(
            "invalid exposed port {text:?}: expected PORT[/PROTOCOL] or START-END[/PROTOCOL], e.g. 9000/tcp"
        )
    };
    let (ports, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    if !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    let (start, end) = ports.split_once('-').unwrap_or((ports, ports));
    let start: u16 = start.parse().map_err(|_| bad())?;
    let end: u16 = end.parse().map_err(|_| bad())?;
    if start == 0 || end < start {
        return Err(bad());
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

fn mount(m: &MountSpec) -> Result<Mount, String> {
    let (typ, source, target, read_only) = match m {
        MountSpec::Volume {
            source,
            target,
            read_only,
        } => (MountType::VOLUME, Some(source), target, *read_only),
        MountSpec::Bind {
            source,
            target,
            read_only,
        } => (MountType::BIND, Some(source), target, *read_only),
        MountSpec::Anonymous { target } => (MountType::VOLUME, None, target, false),
    };
    if target.is_empty() {
        return Err("a mount needs a target path".into());
    }
    if source.is_some_and(|s| s.is_empty()) {
        return Err(format!("the mount on {target} needs a source"));
    }
    Ok(Mount {
        typ: Some(typ),
        source: source.cloned(),
        target: Some(target.clone()),
        read_only: read_only.then_some(true),
        ..Default::default()
    })
}

/// Docker's create body for a container spec (pure: no Docker involved). Networks and named
/// volumes it refers to must exist by the time it is sent.
pub fn create_body(spec: &ContainerSpec) -> Result<ContainerCreateBody, String> {
    let mut container_labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    container_labels.insert(labels::MANAGED.into(), "true".into());
    container_labels.insert(labels::CONTAINER_ID.into(), spec.corral_id.clone());
    container_labels.insert(labels::ENVIRONMENT.into(), spec.environment.clone());
    let mut exposed = BTreeSet::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        let key = format!("{}/{}", p.container, if p.udp { "udp" } else { "tcp" });
        exposed.insert(key.clone());
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.map(|ip| ip.to_string()),
                host_port: Some(p.host.to_string()),
            });
    }
    for e in &spec.expose {
        exposed.extend(exposed_ports(e)?);
    }
    let mounts = spec
        .mounts
        .iter()
        .map(mount)
        .collect::<Result<Vec<_>, _>>()?;
    let restart = spec.restart.as_ref().map(restart_policy).transpose()?;
    let (network_mode, networking_config) = match (&spec.network, spec.network_mode) {
        (_, corral_proto::NetworkMode::Host) => (Some("host".to_owned()), None),
        (_, corral_proto::NetworkMode::None) => (Some("none".to_owned()), None),
        (Some(n), _) if n.name.is_empty() => return Err("the network needs a name".into()),
        (Some(n), _) => (
            Some(n.name.clone()),
            Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    n.name.clone(),
                    EndpointSettings {
                        aliases: (!n.aliases.is_empty()).then(|| n.aliases.clone()),
                        ..Default::default()
                    },
                )])),
            }),
        ),
        (None, _) => (None, None),
    };
    // Docker discards published ports on the host's network; say nothing twice.
    let bindings = if spec.network_mode == corral_proto::NetworkMode::Default {
        bindings
    } else {
        HashMap::new()
    };
    let devices: Vec<DeviceMapping> = spec
        .devices
        .iter()
        .map(|d| DeviceMapping {
            path_on_host: Some(d.host.clone()),
            path_in_container: Some(d.container.clone()),
            cgroup_permissions: Some(d.permissions.clone()),
        })
        .collect();
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        env: Some(spec.env.clone()),
        cmd: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
        // `Some(vec![])` is sent as `[]`, which clears the image's entrypoint.
        entrypoint: spec.entrypoint.clone(),
        user: spec.user.clone(),
        working_dir: spec.working_dir.clone(),
        hostname: spec.hostname.clone(),
        labels: Some(container_labels),
        exposed_ports: (!exposed.is_empty()).then(|| exposed.into_iter().collect()),
        healthcheck: spec.healthcheck.as_ref().map(health_config),
        stop_timeout: spec
            .stop_grace_secs
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
        host_config: Some(HostConfig {
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            mounts: (!mounts.is_empty()).then_some(mounts),
            restart_policy: restart,
            network_mode,
            dns: (!spec.dns.is_empty()).then(|| spec.dns.clone()),
            privileged: spec.privileged.then_some(true),
            cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
            cap_drop: (!spec.cap_drop.is_empty()).then(|| spec.cap_drop.clone()),
            pid_mode: spec.pid_host.then(|| "host".to_owned()),
            devices: (!devices.is_empty()).then_some(devices),
            ..Default::default()
        }),
        networking_config,
        ..Default::default()
    })
}

fn listed_of_summary(c: bollard::models::ContainerSummary) -> Option<Listed> {
    // Only corral's own containers (the label filter should guarantee it).
    c.labels.as_ref()?.get(labels::CONTAINER_ID)?;
    Some(Listed {
        docker_id: c.id.unwrap_or_default(),
        name: c
            .names
            .and_then(|n| n.into_iter().next())
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        state: c.state.map_or(ContainerState::Unknown, |s| {
            ContainerState::parse(s.as_ref())
        }),
    })
}

/// Containers (in any state) carrying `label` (`key=value`).
async fn list(docker: &Docker, label: &str) -> Result<Vec<Listed>, String> {
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
    Ok(found.into_iter().filter_map(listed_of_summary).collect())
}

/// Whether a container event may change what corral reports. Healthchecks run as execs, so
/// a container with a healthcheck emits exec events every interval: they change nothing
/// (a change of health comes as `health_status: healthy` and the like, which does count).
fn changes_status(action: &str) -> bool {
    !(action.starts_with("exec_")
        || matches!(
            action,
            "attach"
                | "detach"
                | "resize"
                | "top"
                | "copy"
                | "archive-path"
                | "extract-to-dir"
                | "export"
                | "commit"
        ))
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
                } else if changes_status(&action) {
                    match engine
                        .status(&docker, actor.id.as_deref().unwrap_or_default())
                        .await
                    {
                        Ok(container) => Report::Change { container },
                        Err(_) => continue,
                    }
                } else {
                    continue;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use corral_proto::{NetworkSpec, PortSpec};

    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            corral_id: "c1".into(),
            name: "shop-web-1".into(),
            environment: "prod".into(),
            image: "nginx:1.27".into(),
            env: vec!["A=1".into()],
            ports: Vec::new(),
            labels: BTreeMap::from([(labels::STACK.to_owned(), "shop".to_owned())]),
            cmd: Vec::new(),
            entrypoint: None,
            mounts: Vec::new(),
            restart: None,
            healthcheck: None,
            user: None,
            working_dir: None,
            hostname: None,
            network: None,
            expose: Vec::new(),
            stop_grace_secs: None,
            dns: Vec::new(),
            ..ContainerSpec::default()
        }
    }

    #[test]
    fn isolation_options_reach_docker_and_host_mode_drops_the_network() {
        let mut s = spec();
        s.privileged = true;
        s.cap_add = vec!["NET_ADMIN".into()];
        s.cap_drop = vec!["MKNOD".into()];
        s.pid_host = true;
        s.devices = vec![corral_proto::DeviceSpec {
            host: "/dev/fuse".into(),
            container: "/dev/fuse".into(),
            permissions: "rwm".into(),
        }];
        s.network_mode = corral_proto::NetworkMode::Host;
        let body = create_body(&s).unwrap();
        let hc = body.host_config.unwrap();
        assert_eq!(hc.privileged, Some(true));
        assert_eq!(hc.cap_add, Some(vec!["NET_ADMIN".to_string()]));
        assert_eq!(hc.cap_drop, Some(vec!["MKNOD".to_string()]));
        assert_eq!(hc.pid_mode.as_deref(), Some("host"));
        assert_eq!(hc.network_mode.as_deref(), Some("host"));
        assert!(hc.port_bindings.is_none());
        assert!(body.networking_config.is_none());
        let d = &hc.devices.unwrap()[0];
        assert_eq!(d.path_on_host.as_deref(), Some("/dev/fuse"));
        assert_eq!(d.cgroup_permissions.as_deref(), Some("rwm"));
    }

    #[test]
    fn plain_spec_sets_only_what_it_says() {
        let body = create_body(&spec()).unwrap();
        let labels = body.labels.clone().unwrap();
        assert_eq!(labels[labels::MANAGED], "true");
        assert_eq!(labels[labels::CONTAINER_ID], "c1");
        assert_eq!(labels[labels::ENVIRONMENT], "prod");
        assert_eq!(labels[labels::STACK], "shop");
        assert_eq!(body.entrypoint, None);
        assert_eq!(body.cmd, None);
        assert_eq!(body.healthcheck, None);
        assert_eq!(body.exposed_ports, None);
        assert_eq!(body.networking_config, None);
        assert_eq!(body.stop_timeout, None);
        let host = body.host_config.unwrap();
        assert_eq!(host.restart_policy, None);
        assert_eq!(host.mounts, None);
        assert_eq!(host.network_mode, None);
        assert_eq!(host.port_bindings, None);
    }

    #[test]
    fn healthcheck_durations_are_nanoseconds() {
        let mut s = spec();
        s.healthcheck = Some(HealthSpec {
            test: Some(vec!["CMD-SHELL".into(), "true".into()]),
            interval_ms: Some(1_500),
            timeout_ms: Some(2_000),
            start_period_ms: None,
            retries: Some(3),
        });
        let h = create_body(&s).unwrap().healthcheck.unwrap();
        assert_eq!(h.test, Some(vec!["CMD-SHELL".into(), "true".into()]));
        assert_eq!(h.interval, Some(1_500_000_000));
        assert_eq!(h.timeout, Some(2_000_000_000));
        assert_eq!(h.start_period, None);
        assert_eq!(h.retries, Some(3));
        assert_eq!(ms_to_ns(u64::MAX), i64::MAX);
        // Serialized as Docker expects.
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["Interval"], 1_500_000_000_i64);
    }

    #[test]
    fn restart_policies() {
        let policy = |name: &str, max_retries| {
            let mut s = spec();
            s.restart = Some(RestartSpec {
                name: serde_json::from_value(serde_json::json!(name)).unwrap(),
                max_retries,
            });
            create_body(&s).map(|b| b.host_config.unwrap().restart_policy.unwrap())
        };
        for (name, want) in [
            ("no", RestartPolicyNameEnum::NO),
            ("always", RestartPolicyNameEnum::ALWAYS),
            ("on-failure", RestartPolicyNameEnum::ON_FAILURE),
            ("unless-stopped", RestartPolicyNameEnum::UNLESS_STOPPED),
        ] {
            let p = policy(name, None).unwrap();
            assert_eq!(p.name, Some(want));
            assert_eq!(p.maximum_retry_count, None);
            assert_eq!(serde_json::to_value(&p).unwrap()["Name"], name);
        }
        let p = policy("on-failure", Some(5)).unwrap();
        assert_eq!(p.maximum_retry_count, Some(5));
        assert!(policy("always", Some(5)).is_err());
        // An unknown policy does not even decode: the command is unreadable, not guessed.
        assert!(
            serde_json::from_value::<RestartSpec>(serde_json::json!({"name": "sometimes"}))
                .is_err()
        );
    }

    #[test]
    fn ports_with_host_addresses_and_expose() {
        let mut s = spec();
        s.ports = vec![
            PortSpec {
                host: 8080,
                container: 80,
                udp: false,
                host_ip: Some("127.0.0.1".parse().unwrap()),
            },
            PortSpec {
                host: 8080,
                container: 80,
                udp: false,
                host_ip: Some("::1".parse().unwrap()),
            },
            PortSpec {
                host: 53,
                container: 53,
                udp: true,
                host_ip: None,
            },
        ];
        s.expose = vec!["9000/tcp".into(), "9001".into(), "7000-7002/udp".into()];
        let body = create_body(&s).unwrap();
        let exposed = body.exposed_ports.clone().unwrap();
        assert_eq!(
            exposed,
            [
                "53/udp", "7000/udp", "7001/udp", "7002/udp", "80/tcp", "9000/tcp", "9001/tcp"
            ]
        );
        let bindings = body.host_config.unwrap().port_bindings.unwrap();
        let web = bindings["80/tcp"].clone().unwrap();
        assert_eq!(web.len(), 2);
        assert_eq!(web[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(web[1].host_ip.as_deref(), Some("::1"));
        assert_eq!(web[0].host_port.as_deref(), Some("8080"));
        let dns = bindings["53/udp"].clone().unwrap();
        assert_eq!(dns[0].host_ip, None);
        for bad in ["", "x", "0", "9000/icmp", "9-8", "70000", "9000/"] {
            let mut s = spec();
            s.expose = vec![bad.into()];
            assert!(create_body(&s).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn network_with_aliases() {
        let mut s = spec();
        s.network = Some(NetworkSpec {
            name: "shop_default".into(),
            aliases: vec!["web".into(), "www".into()],
        });
        let body = create_body(&s).unwrap();
        assert_eq!(
            body.host_config.unwrap().network_mode.as_deref(),
            Some("shop_default")
        );
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(endpoints.len(), 1);
        assert_eq!(
            endpoints["shop_default"].aliases,
            Some(vec!["web".to_owned(), "www".to_owned()])
        );
        s.network = Some(NetworkSpec {
            name: String::new(),
            aliases: Vec::new(),
        });
        assert!(create_body(&s).is_err());
    }

    #[test]
    fn mounts_entrypoint_and_the_rest() {
        let mut s = spec();
        s.mounts = vec![
            MountSpec::Volume {
                source: "shop_data".into(),
                target: "/data".into(),
                read_only: false,
            },
            MountSpec::Bind {
                source: "/srv/conf".into(),
                target: "/conf".into(),
                read_only: true,
            },
            MountSpec::Anonymous {
                target: "/cache".into(),
            },
        ];
        s.entrypoint = Some(Vec::new());
        s.user = Some("1000:1000".into());
        s.working_dir = Some("/app".into());
        s.hostname = Some("web".into());
        s.stop_grace_secs = Some(30);
        let body = create_body(&s).unwrap();
        assert_eq!(body.entrypoint, Some(Vec::new()));
        // An empty list, not an absent field: that is what clears the image's entrypoint.
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["Entrypoint"], serde_json::json!([]));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.working_dir.as_deref(), Some("/app"));
        assert_eq!(body.hostname.as_deref(), Some("web"));
        assert_eq!(body.stop_timeout, Some(30));
        let mounts = body.host_config.unwrap().mounts.unwrap();
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[0].source.as_deref(), Some("shop_data"));
        assert_eq!(mounts[0].read_only, None);
        assert_eq!(mounts[1].typ, Some(MountType::BIND));
        assert_eq!(mounts[1].read_only, Some(true));
        assert_eq!(mounts[2].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[2].source, None);
        assert_eq!(mounts[2].target.as_deref(), Some("/cache"));
        s.mounts = vec![MountSpec::Bind {
            source: String::new(),
            target: "/x".into(),
            read_only: false,
        }];
        assert!(create_body(&s).is_err());
    }

    #[test]
    fn status_from_inspection() {
        let c: ContainerInspectResponse = serde_json::from_value(serde_json::json!({
            "Id": "abc",
            "Name": "/shop-web-1",
            "RestartCount": 2,
            "State": {"Status": "running", "ExitCode": 0, "Health": {"Status": "healthy"}},
            "Config": {"Labels": {"io.corral.container-id": "c1"}},
        }))
        .unwrap();
        let s = status_of_inspect(c);
        assert_eq!(s.corral_id, "c1");
        assert_eq!(s.name, "shop-web-1");
        assert_eq!(s.state, ContainerState::Running);
        assert_eq!(s.health, Some(Health::Healthy));
        assert_eq!(s.restart_count, 2);
        let c: ContainerInspectResponse = serde_json::from_value(serde_json::json!({
            "Id": "abc",
            "Name": "/x",
            "State": {"Status": "exited", "ExitCode": 3},
        }))
        .unwrap();
        let s = status_of_inspect(c);
        assert_eq!(s.health, None);
        assert_eq!(s.restart_count, 0);
        assert_eq!(s.exit_code, Some(3));
    }

    #[test]
    fn which_events_count() {
        assert!(changes_status("health_status: healthy"));
        assert!(changes_status("health_status: unhealthy"));
        assert!(changes_status("die"));
        assert!(changes_status("start"));
        assert!(!changes_status("exec_create: /bin/sh -c true"));
        assert!(!changes_status("exec_die"));
    }

    #[test]
    fn ownership_of_networks_and_volumes() {
        let l = resource_labels(Some("shop"));
        assert!(belongs_to(Some(&l), "shop"));
        assert!(!belongs_to(Some(&l), "blog"));
        assert!(belongs_to(Some(&resource_labels(None)), "shop"));
        assert!(!belongs_to(Some(&HashMap::new()), "shop"));
        assert!(!belongs_to(None, "shop"));
    }
}
