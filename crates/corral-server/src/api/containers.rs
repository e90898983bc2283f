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

pub(super) async fn start(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let id = check(&p, &state, Of::Container(&name), Access::Operate).await?;
    act(&state, &id, Action::Start).await
}

pub(super) async fn stop(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let id = check(&p, &state, Of::Container(&name), Access::Operate).await?;
    act(&state, &id, Action::Stop).await
}

pub(super) async fn remove(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let id = check(&p, &state, Of::Container(&name), Access::Operate).await?;
    act(&state, &id, Action::Remove).await
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
