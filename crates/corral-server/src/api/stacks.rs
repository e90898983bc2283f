//! `/v1/stacks`: up, list, show, scale, down, logs of a service.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use corral_proto::api::{ScaleRequest, StackSummary, StackView, UpRequest};
use serde::Deserialize;

use super::containers::{LogsQuery, text};
use super::{Admin, ApiError, Body, Params, created};
use crate::stacks;
use crate::state::AppState;

pub(super) async fn up(
    _: Admin,
    State(state): State<Arc<AppState>>,
    body: Body<UpRequest>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let response = stacks::up(&state, req).await?;
    Ok(created(response.created, response))
}

pub(super) async fn list(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<StackSummary>>, ApiError> {
    Ok(Json(stacks::list(&state).await?))
}

pub(super) async fn get(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<StackView>, ApiError> {
    Ok(Json(stacks::get(&state, &name).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DownQuery {
    #[serde(default)]
    volumes: bool,
}

pub(super) async fn down(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    q: Params<DownQuery>,
) -> Result<(StatusCode, Json<StackView>), ApiError> {
    let Query(q) = q?;
    let view = stacks::down(&state, &name, q.volumes).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

pub(super) async fn scale(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body<ScaleRequest>,
) -> Result<Json<StackView>, ApiError> {
    let Json(req) = body?;
    Ok(Json(stacks::scale(&state, &name, req).await?))
}

pub(super) async fn logs(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path((name, service)): Path<(String, String)>,
    q: Params<LogsQuery>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    Ok(text(
        stacks::logs(&state, &name, &service, q.follow, q.tail).await?,
    ))
}

pub(super) async fn secrets(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<corral_proto::api::SecretView>>, ApiError> {
    Ok(Json(stacks::secrets(&state).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProgressQuery {
    #[serde(default)]
    after: usize,
}

pub(super) async fn progress(
    _: Admin,
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
