//! `/v1/environments/{name}/network-policy`: apply, show, roll back, diff, test.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use corral_proto::api::{
    NetworkPolicyRequest, NetworkPolicyView, PolicyDiffRequest, PolicyDiffView,
    PolicyRollbackRequest, PolicyTestAnswer, PolicyTestRequest,
};

use super::{Admin, ApiError, Body};
use crate::netpolicy;
use crate::state::AppState;

/// A request carrying a document: the document's own limit (64 KiB) is checked by the
/// policy reader, which says so; the body may be larger once JSON escapes it.
pub const MAX_POLICY_BODY_BYTES: usize = 4 * corral_policy::document::MAX_DOCUMENT_BYTES;

pub(super) async fn show(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
) -> Result<Json<NetworkPolicyView>, ApiError> {
    Ok(Json(netpolicy::show(&state, &env).await?))
}

pub(super) async fn apply(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
    body: Body<NetworkPolicyRequest>,
) -> Result<Json<NetworkPolicyView>, ApiError> {
    let Json(req) = body?;
    Ok(Json(netpolicy::apply(&state, &env, &req.document).await?))
}

pub(super) async fn rollback(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
    body: Body<PolicyRollbackRequest>,
) -> Result<Json<NetworkPolicyView>, ApiError> {
    let Json(req) = body?;
    Ok(Json(
        netpolicy::rollback(&state, &env, req.generation).await?,
    ))
}

pub(super) async fn diff(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
    body: Body<PolicyDiffRequest>,
) -> Result<Json<PolicyDiffView>, ApiError> {
    let Json(req) = body?;
    Ok(Json(netpolicy::diff(&state, &env, &req).await?))
}

pub(super) async fn test(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
    body: Body<PolicyTestRequest>,
) -> Result<Json<PolicyTestAnswer>, ApiError> {
    let Json(req) = body?;
    Ok(Json(netpolicy::test(&state, &env, &req).await?))
}
