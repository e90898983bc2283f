//! `/v1/stacks`: up, list, show, scale, down, logs of a service.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use corral_proto::api::{ScaleRequest, StackSummary, StackView, UpRequest};
use serde::Deserialize;

use super::access::{Access, Of, check};
use super::containers::{LogsQuery, text};
use super::{ApiError, Body, Params, Principal, created};
use crate::stacks;
use crate::state::AppState;

#[utoipa::path(
    post,
    operation_id = "stacks_up",
    path = "/v1/stacks",
    tag = "stacks",
    summary = "Deploy (or update) a Compose project as a stack",
    request_body = UpRequest,
    responses((status = 201, description = "Created", body = corral_proto::api::UpResponse), (status = 200, description = "Updated", body = corral_proto::api::UpResponse))
)]
pub(super) async fn up(
    p: Principal,
    State(state): State<Arc<AppState>>,
    body: Body<UpRequest>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let env = req.environment.as_deref().unwrap_or("default");
    check(&p, &state, Of::Env(env), Access::Operate).await?;
    let response = stacks::up(&state, req).await?;
    Ok(created(response.created, response))
}

#[utoipa::path(
    get,
    operation_id = "stacks_list",
    path = "/v1/stacks",
    tag = "stacks",
    summary = "The stacks the caller may see",
    responses((status = 200, description = "The stacks", body = Vec<StackSummary>))
)]
pub(super) async fn list(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<StackSummary>>, ApiError> {
    let mut all = stacks::list(&state).await?;
    all.retain(|s| p.in_scope(&s.environment));
    Ok(Json(all))
}

#[utoipa::path(
    get,
    operation_id = "stacks_get",
    path = "/v1/stacks/{name}",
    tag = "stacks",
    summary = "One stack, every replica",
    params(("name" = String, Path, description = "Stack name")),
    responses((status = 200, description = "The stack", body = StackView))
)]
pub(super) async fn get(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<StackView>, ApiError> {
    let id = check(&p, &state, Of::Stack(&name), Access::Read).await?;
    Ok(Json(stacks::get(&state, &id).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct DownQuery {
    #[serde(default)]
    volumes: bool,
}

#[utoipa::path(
    delete,
    operation_id = "stacks_down",
    path = "/v1/stacks/{name}",
    tag = "stacks",
    summary = "Remove a stack",
    params(("name" = String, Path, description = "Stack name"), DownQuery),
    responses((status = 202, description = "Being removed", body = StackView))
)]
pub(super) async fn down(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    q: Params<DownQuery>,
) -> Result<(StatusCode, Json<StackView>), ApiError> {
    let id = check(&p, &state, Of::Stack(&name), Access::Operate).await?;
    let Query(q) = q?;
    let view = stacks::down(&state, &id, q.volumes).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

#[utoipa::path(
    post,
    operation_id = "stacks_scale",
    path = "/v1/stacks/{name}/scale",
    tag = "stacks",
    summary = "Set a service's replicas",
    params(("name" = String, Path, description = "Stack name")),
    request_body = ScaleRequest,
    responses((status = 200, description = "The stack", body = StackView))
)]
pub(super) async fn scale(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body<ScaleRequest>,
) -> Result<Json<StackView>, ApiError> {
    let id = check(&p, &state, Of::Stack(&name), Access::Operate).await?;
    let Json(req) = body?;
    Ok(Json(stacks::scale(&state, &id, req).await?))
}

#[utoipa::path(
    get,
    operation_id = "stacks_logs",
    path = "/v1/stacks/{name}/services/{service}/logs",
    tag = "stacks",
    summary = "A service's logs, every replica merged",
    params(("name" = String, Path, description = "Stack name"), ("service" = String, Path, description = "Service name"), LogsQuery),
    responses((status = 200, description = "Log lines", body = String, content_type = "text/plain"))
)]
pub(super) async fn logs(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path((name, service)): Path<(String, String)>,
    q: Params<LogsQuery>,
) -> Result<Response, ApiError> {
    let id = check(&p, &state, Of::Stack(&name), Access::Read).await?;
    let Query(q) = q?;
    let body = stacks::logs(&state, &id, &service, q.follow, q.tail).await?;
    Ok(text(super::access::revocable(
        state.clone(),
        p.key_id.clone(),
        body,
    )))
}

#[utoipa::path(
    get,
    operation_id = "stacks_secrets",
    path = "/v1/secrets",
    tag = "stacks",
    summary = "Secrets and configs of the caller's stacks (names and versions only)",
    responses((status = 200, description = "The secrets", body = Vec<corral_proto::api::SecretView>))
)]
pub(super) async fn secrets(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<corral_proto::api::SecretView>>, ApiError> {
    let mut all = stacks::secrets(&state).await?;
    all.retain(|s| p.in_scope(&s.environment));
    Ok(Json(all))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ProgressQuery {
    #[serde(default)]
    after: usize,
}

#[utoipa::path(
    get,
    operation_id = "stacks_progress",
    path = "/v1/progress/{id}",
    tag = "stacks",
    summary = "Progress lines of a running `up`",
    params(("id" = String, Path, description = "Progress id the client chose"), ProgressQuery),
    responses((status = 200, description = "Lines after `after`", body = corral_proto::api::ProgressView))
)]
pub(super) async fn progress(
    _: Principal,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    q: Params<ProgressQuery>,
) -> Result<Json<corral_proto::api::ProgressView>, ApiError> {
    let Query(q) = q?;
    if !crate::state::progress::valid_id(&id) {
        return Err(crate::error::Error::invalid("not a progress id").into());
    }
    let (lines, next) = state.progress.read(&id, q.after);
    Ok(Json(corral_proto::api::ProgressView { lines, next }))
}
