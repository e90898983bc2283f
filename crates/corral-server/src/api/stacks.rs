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

pub(super) async fn list(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<StackSummary>>, ApiError> {
    let mut all = stacks::list(&state).await?;
    all.retain(|s| p.in_scope(&s.environment));
    Ok(Json(all))
}

pub(super) async fn get(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<StackView>, ApiError> {
    let id = check(&p, &state, Of::Stack(&name), Access::Read).await?;
    Ok(Json(stacks::get(&state, &id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DownQuery {
    #[serde(default)]
    volumes: bool,
}

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

pub(super) async fn secrets(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<corral_proto::api::SecretView>>, ApiError> {
    let mut all = stacks::secrets(&state).await?;
    all.retain(|s| p.in_scope(&s.environment));
    Ok(Json(all))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProgressQuery {
    #[serde(default)]
    after: usize,
}

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
