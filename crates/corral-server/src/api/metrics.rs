//! `GET /metrics`: OpenMetrics text (which Prometheus scrapes), from `state::metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Admin, ApiError};
use crate::state::AppState;
use crate::state::metrics::Snapshot;

pub(super) async fn metrics(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Response, ApiError> {
    let hosts = state.store.host_count().await?;
    // Open commands are `pending` in the datastore until answered; those already written to a
    // tunnel are counted by the sessions.
    let commands_open = state.store.open_command_count().await?;
    let commands_sent = state.metrics.commands_in_flight().min(commands_open);
    let commands_pending = commands_open - commands_sent;
    let snapshot = Snapshot {
        agents_connected: state.registry.len() as u64,
        hosts,
        commands_pending,
        commands_sent,
        unplaced_replicas: state
            .reconciler
            .lock()
            .status
            .values()
            .flat_map(|s| s.unplaced.values())
            .map(|u| u.count)
            .sum(),
        unauthenticated_connections: state.gate.unauthenticated() as u64,
        unauthenticated_connections_max: state.gate.cap() as u64,
        connections_evicted: state.gate.evictions(),
        connections_shed: state.gate.shed(),
        connections_waiting: state.gate.waiting() as u64,
        overlay: state.registry.overlay_stats(),
        resident_memory_bytes: crate::process::resident_bytes().unwrap_or(0),
        cpu_seconds: crate::process::cpu_seconds().unwrap_or(0.0),
        open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
        uptime_seconds: state.started.elapsed().as_secs(),
    };
    let body = state.metrics.encode(snapshot).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be written",
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// Counts and times every request by route template (`unmatched` for a path no route has),
/// method (`other` for one the API does not use) and status.
pub(super) async fn observe(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::http::Method;
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = match *req.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let response = next.run(req).await;
    state.metrics.api_request(
        &route,
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
