//! `/v1/containers`: run, list, show, start, stop, remove, logs.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use corral_proto::api::{ContainerView, RunContainer};
use serde::Deserialize;

use super::{Admin, ApiError, Body, Params, progress};
use crate::containers::{self, Action};
use crate::error::Progress;
use crate::state::AppState;

pub(super) async fn run(
    _: Admin,
    State(state): State<Arc<AppState>>,
    body: Body<RunContainer>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    Ok(progress(
        containers::run(&state, req).await?,
        StatusCode::CREATED,
    ))
}

pub(super) async fn list(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<ContainerView>>, ApiError> {
    Ok(Json(containers::list(&state).await?))
}

pub(super) async fn get(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<ContainerView>, ApiError> {
    Ok(Json(containers::get(&state, &name).await?))
}

async fn act(state: &Arc<AppState>, name: &str, action: Action) -> Result<Response, ApiError> {
    Ok(match containers::act(state, name, action).await? {
        Progress::Done(None) => StatusCode::OK.into_response(),
        Progress::Done(Some(view)) => (StatusCode::OK, Json(view)).into_response(),
        Progress::Accepted(view) => (StatusCode::ACCEPTED, Json(view)).into_response(),
    })
}

pub(super) async fn start(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    act(&state, &name, Action::Start).await
}

pub(super) async fn stop(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    act(&state, &name, Action::Stop).await
}

pub(super) async fn remove(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    act(&state, &name, Action::Remove).await
}

#[derive(Deserialize)]
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

pub(super) async fn logs(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    q: Params<LogsQuery>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    Ok(text(
        containers::logs(&state, &name, q.follow, q.tail).await?,
    ))
}
