//! Containers: desired state from the API, actual state from the agents' reports, and the
//! commands that bring one to the other.
//!
//! The server never talks to Docker. It stores what was asked for, sends `container_*`
//! commands down the host's tunnel (durable, idempotent by corral container id), and records
//! what the host's agent reports: its inventory on every connect, then every change. A
//! container that disappears from a host's inventory behind corral's back becomes `missing`.

use std::sync::Arc;
use std::time::Duration;

use corral_control::states::{Actual, Desired};
use corral_proto::api::{ContainerView, DockerView, RunContainer};
use corral_proto::{
    CommandBody, ContainerRef, ContainerSpec, ContainerStatus, OpenLogs, PortSpec, RemoveContainer,
    Report, StartContainer, StopContainer,
};

use crate::dispatch::{self, CallError, Outcome};
use crate::error::{Error, Progress, Result};
use crate::secrets::new_id;
use crate::state::AppState;
use crate::store::{ContainerRow, HostRow};
use crate::time_fmt::{now_unix, rfc3339};

/// How long `run` waits before answering "accepted, still pending".
const RUN_WAIT: Duration = Duration::from_secs(30);
/// Grace period of `stop` before Docker kills the container.
pub const STOP_GRACE_SECS: u64 = 10;

/// Handles a report from `host_id`'s agent. Only that host's containers are touched; a report
/// that names another host's container is ignored and recorded (`foreign_report`).
pub async fn on_report(state: &AppState, host_id: &str, conn_id: u64, report: Report) {
    let now = now_unix();
    let report = match report {
        // Memory only, for the metrics; nothing to reconcile.
        Report::Overlay(stats) => {
            state.registry.set_overlay(host_id, conn_id, stats);
            return;
        }
        other => other,
    };
    let result = match report {
        Report::Inventory {
            docker,
            docker_error,
            containers,
        } => {
            let available = docker.is_some();
            state.registry.set_docker(
                host_id,
                conn_id,
                DockerView {
                    state: if available {
                        "available"
                    } else {
                        "unavailable"
                    }
                    .into(),
                    info: docker,
                    error: docker_error,
                },
            );
            let recorded = if available {
                reconcile_inventory(state, host_id, &containers, now).await
            } else {
                Ok(())
            };
            match recorded {
                Ok(()) => not_this_hosts(state, host_id, &containers).await,
                Err(e) => Err(e),
            }
        }
        Report::Change { container } => state
            .store
            .record_status(host_id, &container, now)
            .await
            .map(|found| unmatched(found, container.corral_id)),
        Report::Removed { corral_id } => state
            .store
            .set_actual(host_id, &corral_id, Actual::Missing, None, None, now)
            .await
            .map(|found| unmatched(found, corral_id)),
        Report::Pull(progress) => {
            state.pulls.record(host_id, progress);
            Ok(Vec::new())
        }
        Report::BuildLog { build_id, lines } => {
            // Bounded by the agent (64 lines of 1 KiB) and kept only for a build this
            // server started.
            let lines = lines
                .into_iter()
                .take(64)
                .map(|l| crate::text::clip(&l, 1024).into_owned())
                .collect();
            state.progress.build_lines(&build_id, lines);
            Ok(Vec::new())
        }
        Report::Overlay(_) => Ok(Vec::new()),
    };
    match result {
        Ok(ids) => record_foreign(state, host_id, ids).await,
        Err(e) => tracing::error!(error = %e, "cannot record a host report"),
    }
    state.reconciler.wake();
    state.overlay.wake();
}

fn unmatched(found: bool, id: String) -> Vec<String> {
    if found { Vec::new() } else { vec![id] }
}

async fn reconcile_inventory(
    state: &AppState,
    host_id: &str,
    containers: &[ContainerStatus],
    now: i64,
) -> Result<(), crate::store::StoreError> {
    for row in state.store.host_containers(host_id).await? {
        match containers.iter().find(|c| c.corral_id == row.id) {
            Some(c) => {
                state.store.record_status(host_id, c, now).await?;
            }
            // Created once and now gone: removed behind corral's back.
            None if row.docker_id.is_some() && row.actual != Actual::Missing => {
                state
                    .store
                    .set_actual(host_id, &row.id, Actual::Missing, None, None, now)
                    .await?;
            }
            None => {}
        }
    }
    Ok(())
}

/// The ids an inventory names that are not this host's containers.
async fn not_this_hosts(
    state: &AppState,
    host_id: &str,
    containers: &[ContainerStatus],
) -> Result<Vec<String>, crate::store::StoreError> {
    if containers.is_empty() {
        return Ok(Vec::new());
    }
    let rows = state.store.host_containers(host_id).await?;
    let own: std::collections::HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    Ok(containers
        .iter()
        .filter(|c| !own.contains(c.corral_id.as_str()))
        .map(|c| c.corral_id.clone())
        .collect())
}

/// At most this many ids of one report are looked up as another host's.
const FOREIGN_CHECKS: usize = 256;
/// At most this many foreign containers are named in the event, each id cut to this length.
const FOREIGN_NAMED: usize = 3;
const ID_SHOWN: usize = 64;

/// An id as an event shows it: at most [`ID_SHOWN`] characters.
fn shown(id: &str) -> String {
    match id.char_indices().nth(ID_SHOWN) {
        Some((at, _)) => format!("{}…", &id[..at]),
        None => id.to_owned(),
    }
}

/// Ids a report named that are not the reporting host's: those of another host's containers
/// (not merely unknown or already deleted) make one `foreign_report` event for the report.
async fn record_foreign(state: &AppState, host_id: &str, ids: Vec<String>) {
    let mut foreign = Vec::new();
    for id in ids.iter().take(FOREIGN_CHECKS) {
        match state.store.container_host(id).await {
            Ok(Some(owner)) if owner != host_id => foreign.push((id, owner)),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot look up a reported container");
                return;
            }
        }
    }
    if foreign.is_empty() {
        return;
    }
    let names = state.store.host_names().await.unwrap_or_default();
    let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| shown(id));
    let mut listed: Vec<String> = foreign
        .iter()
        .take(FOREIGN_NAMED)
        .map(|(id, owner)| format!("{} of host {}", shown(id), name(owner)))
        .collect();
    if foreign.len() > FOREIGN_NAMED {
        listed.push(format!("and {} more", foreign.len() - FOREIGN_NAMED));
    }
    tracing::warn!(host = %host_id, count = foreign.len(), "a host reported on other hosts' containers; ignored");
    state
        .record_event(
            "foreign_report",
            Some(host_id),
            &format!(
                "host {} reported on containers of other hosts: {}; the report was ignored",
                name(host_id),
                listed.join(", ")
            ),
        )
        .await;
}

fn bad(message: impl Into<String>) -> Error {
    Error::invalid(message)
}

fn validate_name(name: &str) -> Result<()> {
    corral_proto::validate_host_name(name)
        .map_err(|e| bad(e.replacen("host name", "container name", 1)))
}

/// Checks a run request; returns the parsed ports.
fn validate(req: &RunContainer) -> Result<Vec<PortSpec>> {
    validate_name(&req.name)?;
    if req.image.is_empty() || req.image.len() > 256 || req.image.chars().any(char::is_whitespace) {
        return Err(bad(format!("invalid image reference {:?}", req.image)));
    }
    if req.env.len() > 256 || req.cmd.len() > 256 || req.ports.len() > 64 {
        return Err(bad("too many env entries, command arguments or ports"));
    }
    for e in &req.env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() && !k.contains(char::is_whitespace) => {}
            _ => {
                return Err(bad(format!(
                    "invalid environment entry {e:?}: expected KEY=VALUE"
                )));
            }
        }
    }
    for (k, v) in &req.labels {
        corral_proto::validate_label(k, v).map_err(bad)?;
        if k.starts_with("io.corral.") {
            return Err(bad(format!(
                "label {k:?}: the io.corral. prefix is reserved"
            )));
        }
    }
    let ports: Vec<PortSpec> = req
        .ports
        .iter()
        .map(|p| PortSpec::parse(p))
        .collect::<Result<_, _>>()
        .map_err(bad)?;
    for (i, p) in ports.iter().enumerate() {
        if ports[..i]
            .iter()
            .any(|q| q.host == p.host && q.udp == p.udp)
        {
            return Err(bad(format!("host port {} is published twice", p.host)));
        }
    }
    Ok(ports)
}

fn spec_of(row: &ContainerRow) -> Option<ContainerSpec> {
    serde_json::from_str(&row.spec).ok()
}

pub fn view(row: &ContainerRow, host_name: &str) -> ContainerView {
    let spec = spec_of(row);
    ContainerView {
        id: row.id.clone(),
        name: row.name.clone(),
        host: host_name.to_owned(),
        host_id: row.host_id.clone(),
        image: row.image.clone(),
        desired: row.desired.as_str().into(),
        actual: row.actual.as_str().into(),
        docker_id: row.docker_id.clone(),
        exit_code: row.exit_code,
        ports: spec
            .as_ref()
            .map(|s| s.ports.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        env: spec.as_ref().map(|s| s.env.clone()).unwrap_or_default(),
        cmd: spec.as_ref().map(|s| s.cmd.clone()).unwrap_or_default(),
        labels: spec.map(|s| s.labels).unwrap_or_default(),
        created_at: rfc3339(row.created_at),
    }
}

async fn pick_host(state: &AppState, wanted: Option<&str>) -> Result<HostRow> {
    if let Some(name) = wanted {
        return Ok(state.store.find_host(name).await?);
    }
    let hosts = state.store.hosts(false).await?;
    let containers = state.store.containers().await?;
    hosts
        .into_iter()
        .filter(|h| state.registry.info(&h.id).is_some())
        .min_by_key(|h| {
            (
                containers.iter().filter(|c| c.host_id == h.id).count(),
                h.name.clone(),
            )
        })
        .ok_or_else(|| {
            Error::conflict(
                "no host is connected: start an agent (`corral token create` prints the command) or name one with --host",
            )
        })
}

/// Applies the outcome of a `container_run` to the datastore: the status on success; on
/// failure or expiry the row goes (nothing is left half-done) and the error says why.
async fn settle_run(
    state: &AppState,
    row: &ContainerRow,
    outcome: std::result::Result<ContainerStatus, CallError>,
) -> Result<ContainerRow> {
    match outcome {
        Ok(status) => {
            state
                .store
                .record_status(&row.host_id, &status, now_unix())
                .await?;
            Ok(state.store.find_container(&row.id).await?)
        }
        Err(CallError::Failed(message)) => {
            state.store.delete_container(&row.id).await?;
            Err(Error::Refused(message))
        }
        Err(CallError::Expired) => {
            state.store.delete_container(&row.id).await?;
            Err(Error::Timeout(format!(
                "the host did not run {} in time; nothing was created",
                row.name
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// `corral run`.
pub async fn run(state: &Arc<AppState>, req: RunContainer) -> Result<Progress<ContainerView>> {
    let ports = validate(&req)?;
    let host = pick_host(state, req.host.as_deref()).await?;
    let env_name = state.store.environment_name(&host.environment_id).await?;
    let existing = state.store.host_containers(&host.id).await?;
    for p in &ports {
        if let Some(other) = existing.iter().find(|c| {
            c.desired == Desired::Running
                && spec_of(c)
                    .is_some_and(|s| s.ports.iter().any(|q| q.host == p.host && q.udp == p.udp))
        }) {
            return Err(Error::conflict(format!(
                "port {}/{} on host {} is already published by container {}",
                p.host,
                if p.udp { "udp" } else { "tcp" },
                host.name,
                other.name
            )));
        }
    }
    let now = now_unix();
    corral_proto::ImageRef::parse(&req.image).map_err(Error::invalid)?;
    let mut spec = ContainerSpec {
        corral_id: new_id("ctr"),
        name: req.name.clone(),
        environment: env_name,
        image: req.image.clone(),
        env: req.env.clone(),
        ports,
        labels: req.labels.clone(),
        cmd: req.cmd.clone(),
        ..ContainerSpec::default()
    };
    // The environment's admission policy holds for `run` as for `up`; the tag is resolved
    // by the host that runs it (a disconnected host runs what the tag names when it returns).
    let policy = crate::images::policy(state, &host.environment_id).await?;
    let refusals = policy.refusals(&req.name, &spec);
    if !refusals.is_empty() {
        return Err(Error::Refused(crate::images::refusal_text(&refusals)));
    }
    let auths = crate::images::auths(state, &host.environment_id).await?;
    if state.registry.info(&host.id).is_some() {
        let pinned = crate::images::pin(
            state,
            &auths,
            std::slice::from_ref(&host.id),
            &mut [&mut spec],
        )
        .await?;
        if let Some((image, why)) = pinned.failed.iter().next() {
            return Err(Error::Refused(format!(
                "image {image} cannot be resolved: {why}; nothing was created"
            )));
        }
    }
    if let Some(refusal) = policy.check_pinned(&req.name, &spec) {
        return Err(Error::Refused(crate::images::refusal_text(&[refusal])));
    }
    let row = ContainerRow {
        id: spec.corral_id.clone(),
        environment_id: host.environment_id.clone(),
        host_id: host.id.clone(),
        name: spec.name.clone(),
        image: spec.image.clone(),
        spec: serde_json::to_string(&spec).map_err(Error::internal)?,
        desired: Desired::Running,
        actual: Actual::Pending,
        docker_id: None,
        exit_code: None,
        created_at: now,
        updated_at: now,
        stack_id: None,
        service: None,
        slot: None,
        spec_hash: None,
        health: None,
        restart_count: 0,
        ip: None,
    };
    state.store.insert_container(&row).await?;
    // The registry's account goes with the command only, never into the stored spec.
    spec.registry_auth = auths.for_image(&spec.image);
    let mut pending = match dispatch::send(state, &host.id, spec, state.options.command_ttl).await {
        Ok(p) => p,
        Err(e) => {
            let _ = state.store.delete_container(&row.id).await;
            return Err(e.into());
        }
    };
    // A disconnected host gets the command when it reconnects: answer at once.
    let wait = if state.registry.info(&host.id).is_some() {
        RUN_WAIT
    } else {
        Duration::ZERO
    };
    match pending.wait_up_to(wait).await {
        Some(outcome) => {
            let row = settle_run(state, &row, outcome).await?;
            Ok(Progress::Done(view(&row, &host.name)))
        }
        // Still pending (the host is disconnected or slow). Dropping `pending` hands the
        // outcome to `settle_unwatched` when it comes.
        None => Ok(Progress::Accepted(view(&row, &host.name))),
    }
}

/// The outcome of a command nobody waited for (the server restarted, or `run` already
/// answered "pending"): the datastore learns it all the same, so a failure never leaves a row
/// pending forever. Installed as the dispatcher's unwatched-outcome hook.
pub async fn settle_unwatched(state: &AppState, command_id: &str, outcome: Outcome) {
    let body = match state.store.command(command_id).await {
        Ok(Some(body)) => body,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, command = %command_id, "cannot settle a command's outcome");
            return;
        }
    };
    match body {
        CommandBody::ContainerRemove(r)
            if dispatch::read_outcome::<RemoveContainer>("container_remove", outcome.clone())
                .is_ok() =>
        {
            let _ = state.store.delete_container(&r.corral_id).await;
        }
        CommandBody::ContainerRun(spec) => {
            let Ok(row) = state.store.find_container(&spec.corral_id).await else {
                return;
            };
            let outcome = dispatch::read_outcome::<ContainerSpec>("container_run", outcome);
            if let Err(e) = settle_run(state, &row, outcome).await {
                state
                    .record_event(
                        "container_failed",
                        Some(&row.host_id),
                        &format!("container {}: {e}", row.name),
                    )
                    .await;
            }
        }
        _ => {}
    }
}

async fn host_name(state: &AppState, host_id: &str) -> String {
    state
        .store
        .host_names()
        .await
        .ok()
        .and_then(|mut names| names.remove(host_id))
        .unwrap_or_else(|| host_id.to_owned())
}

pub async fn list(state: &AppState) -> Result<Vec<ContainerView>> {
    let hosts = state.store.host_names().await?;
    Ok(state
        .store
        .containers()
        .await?
        .iter()
        .map(|c| {
            view(
                c,
                hosts
                    .get(&c.host_id)
                    .map(String::as_str)
                    .unwrap_or(&c.host_id),
            )
        })
        .collect())
}

pub async fn get(state: &AppState, name: &str) -> Result<ContainerView> {
    let row = state.store.find_container(name).await?;
    Ok(view(&row, &host_name(state, &row.host_id).await))
}

/// What a lifecycle command does.
#[derive(Clone, Copy)]
pub enum Action {
    Start,
    Stop,
    Remove,
}

/// `corral container start|stop|rm`: the container as it is now (`None` once removed).
pub async fn act(
    state: &Arc<AppState>,
    name: &str,
    action: Action,
) -> Result<Progress<Option<ContainerView>>> {
    let row = state.store.find_container(name).await?;
    let host = host_name(state, &row.host_id).await;
    if let Some(d) = match action {
        Action::Start => Some(Desired::Running),
        Action::Stop => Some(Desired::Stopped),
        Action::Remove => None,
    } {
        state.store.set_desired(&row.id, d, now_unix()).await?;
    }
    let target = ContainerRef::lifecycle(&row.id, Some(STOP_GRACE_SECS));
    let ttl = state.options.command_ttl;
    let wait = Duration::from_secs(STOP_GRACE_SECS) + RUN_WAIT;
    let outcome = match action {
        Action::Start => {
            let mut p = dispatch::send(state, &row.host_id, StartContainer(target), ttl).await?;
            p.wait_up_to(wait).await.map(|r| r.map(Some))
        }
        Action::Stop => {
            let mut p = dispatch::send(state, &row.host_id, StopContainer(target), ttl).await?;
            p.wait_up_to(wait).await.map(|r| r.map(Some))
        }
        Action::Remove => {
            let mut p = dispatch::send(state, &row.host_id, RemoveContainer(target), ttl).await?;
            p.wait_up_to(wait).await.map(|r| r.map(|()| None))
        }
    };
    let status = match outcome {
        None => {
            let now = state.store.find_container(&row.id).await?;
            return Ok(Progress::Accepted(Some(view(&now, &host))));
        }
        Some(Err(CallError::Expired)) => {
            return Err(Error::Timeout(format!(
                "host {host} did not carry out the command in time"
            )));
        }
        Some(result) => result?,
    };
    match (action, status) {
        (Action::Remove, _) => {
            state.store.delete_container(&row.id).await?;
            return Ok(Progress::Done(None));
        }
        (_, Some(Some(s))) => {
            state
                .store
                .record_status(&row.host_id, &s, now_unix())
                .await?;
        }
        // The host has no such container: it vanished behind corral's back.
        (_, _) => {
            state
                .store
                .set_actual(
                    &row.host_id,
                    &row.id,
                    Actual::Missing,
                    None,
                    None,
                    now_unix(),
                )
                .await?;
        }
    }
    let now = state.store.find_container(&row.id).await?;
    Ok(Progress::Done(Some(view(&now, &host))))
}

/// Opens a log stream of a container; returns the HTTP body.
pub async fn logs(
    state: &Arc<AppState>,
    name: &str,
    follow: bool,
    tail: Option<u64>,
) -> Result<axum::body::Body> {
    let row = state.store.find_container(name).await?;
    if state.registry.info(&row.host_id).is_none() {
        return Err(Error::conflict(format!(
            "host {} is disconnected: logs are read by its agent",
            host_name(state, &row.host_id).await
        )));
    }
    let (stream_id, rx) = crate::state::streams::open(state, &row.host_id);
    let request = OpenLogs(ContainerRef {
        corral_id: row.id.clone(),
        grace_secs: None,
        stream_id: Some(stream_id.clone()),
        follow,
        tail,
        credit: crate::state::streams::INITIAL_CREDIT,
    });
    let body = crate::state::streams::body(state.clone(), stream_id, rx);
    match dispatch::call(state, &row.host_id, request, LOGS_OPEN_TTL).await {
        Ok(_) => Ok(body),
        Err(CallError::Expired) => Err(Error::Timeout(
            "the agent did not open the log stream in time".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// How long a log stream may take to open.
const LOGS_OPEN_TTL: Duration = Duration::from_secs(15);
