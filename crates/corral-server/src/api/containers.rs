//! `/v1/containers`: run, list, show, start, stop, remove, logs.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use corral_proto::api::{ContainerView, RunContainer};
use serde::Deserialize;

use super::access::{Access, Of, check};
use super::{ApiError, Body, Params, Principal, progress};
use crate::containers::{self, Action};
use crate::error::Progress;
use crate::state::AppState;

#[utoipa::path(
    post,
    operation_id = "containers_run",
    path = "/v1/containers",
    tag = "containers",
    summary = "Run a single container",
    request_body = RunContainer,
    responses((status = 201, description = "Running", body = ContainerView), (status = 202, description = "Accepted; the host has not answered yet", body = ContainerView))
)]
pub(super) async fn run(
    p: Principal,
    State(state): State<Arc<AppState>>,
    body: Body<RunContainer>,
) -> Result<Response, ApiError> {
    let Json(mut req) = body?;
    match req.host.as_deref() {
        Some(host) => req.host = Some(check(&p, &state, Of::Host(host), Access::Operate).await?),
        None => super::access::admin_only(&p).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "name the host to run on (--host): only admins let the server pick one among every environment's",
            )
        })?,
    }
    Ok(progress(
        containers::run(&state, req).await?,
        StatusCode::CREATED,
    ))
}

/// The containers of the environments the caller has a role in.
#[utoipa::path(
    get,
    operation_id = "containers_list",
    path = "/v1/containers",
    tag = "containers",
    summary = "Containers the caller may see",
    responses((status = 200, description = "The containers", body = Vec<ContainerView>))
)]
pub(super) async fn list(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<ContainerView>>, ApiError> {
    let mut all = containers::list(&state).await?;
    if !p.admin || p.scope.is_some() {
        let envs = super::access::host_environments(&state).await?;
        all.retain(|c| envs.get(&c.host_id).is_some_and(|e| p.in_scope(e)));
    }
    Ok(Json(all))
}

#[utoipa::path(
    get,
    operation_id = "containers_get",
    path = "/v1/containers/{name}",
    tag = "containers",
    summary = "One container",
    params(("name" = String, Path, description = "Container name or id")),
    responses((status = 200, description = "The container", body = ContainerView))
)]
pub(super) async fn get(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<ContainerView>, ApiError> {
    let id = check(&p, &state, Of::Container(&name), Access::Read).await?;
    Ok(Json(containers::get(&state, &id).await?))
}

async fn act(state: &Arc<AppState>, name: &str, action: Action) -> Result<Response, ApiError> {
    Ok(match containers::act(state, name, action).await? {
        Progress::Done(None) => StatusCode::OK.into_response(),
        Progress::Done(Some(view)) => (StatusCode::OK, Json(view)).into_response(),
        Progress::Accepted(view) => (StatusCode::ACCEPTED, Json(view)).into_response(),
    })
}

#[utoipa::path(
    post,
    operation_id = "containers_start",
    path = "/v1/containers/{name}/start",
    tag = "containers",
    summary = "Start a container",
    params(("name" = String, Path, description = "Container name or id")),
    responses((status = 200, description = "Started", body = ContainerView), (status = 202, description = "Accepted; the host has not answered yet", body = ContainerView))
)]
pub(super) async fn start(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let id = check(&p, &state, Of::Container(&name), Access::Operate).await?;
    act(&state, &id, Action::Start).await
}

#[utoipa::path(
    post,
    operation_id = "containers_stop",
    path = "/v1/containers/{name}/stop",
    tag = "containers",
    summary = "Stop a container",
    params(("name" = String, Path, description = "Container name or id")),
    responses((status = 200, description = "Stopped", body = ContainerView), (status = 202, description = "Accepted; the host has not answered yet", body = ContainerView))
)]
pub(super) async fn stop(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let id = check(&p, &state, Of::Container(&name), Access::Operate).await?;
    act(&state, &id, Action::Stop).await
}

#[utoipa::path(
    delete,
    operation_id = "containers_remove",
    path = "/v1/containers/{name}",
    tag = "containers",
    summary = "Remove a container",
    params(("name" = String, Path, description = "Container name or id")),
    responses((status = 200, description = "Removed"), (status = 202, description = "Accepted; the host has not answered yet", body = ContainerView))
)]
pub(super) async fn remove(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let id = check(&p, &state, Of::Container(&name), Access::Operate).await?;
    act(&state, &id, Action::Remove).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    #[serde(default)]
    pub(super) follow: bool,
    pub(super) tail: Option<u64>,
}

/// A log stream as a plain-text response.
pub(super) fn text(body: axum::body::Body) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

#[utoipa::path(
    get,
    operation_id = "containers_logs",
    path = "/v1/containers/{name}/logs",
    tag = "containers",
    summary = "A container's logs, streamed while `follow`",
    params(("name" = String, Path, description = "Container name or id"), LogsQuery),
    responses((status = 200, description = "Log lines", body = String, content_type = "text/plain"))
)]
pub(super) async fn logs(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    q: Params<LogsQuery>,
) -> Result<Response, ApiError> {
    let id = check(&p, &state, Of::Container(&name), Access::Read).await?;
    let Query(q) = q?;
    let body = containers::logs(&state, &id, q.follow, q.tail).await?;
    Ok(text(super::access::revocable(
        state.clone(),
        p.key_id.clone(),
        body,
    )))
}
