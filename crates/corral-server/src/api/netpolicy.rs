//! `/v1/environments/{name}/network-policy`: apply, show, roll back, diff, test.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use corral_proto::api::{
    NetworkPolicyRequest, NetworkPolicyView, PolicyDiffRequest, PolicyDiffView,
    PolicyRollbackRequest, PolicyTestAnswer, PolicyTestRequest,
};

use super::access::{Access, Of, check};
use super::{ApiError, Body, Principal};
use crate::netpolicy;
use crate::state::AppState;

/// A request carrying a document: the document's own limit (64 KiB) is checked by the
/// policy reader, which says so; the body may be larger once JSON escapes it.
pub const MAX_POLICY_BODY_BYTES: usize = 4 * corral_policy::document::MAX_DOCUMENT_BYTES;

pub(super) async fn show(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
) -> Result<Json<NetworkPolicyView>, ApiError> {
    check(&p, &state, Of::Env(&env), Access::Read).await?;
    Ok(Json(netpolicy::show(&state, &env).await?))
}

pub(super) async fn apply(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
    body: Body<NetworkPolicyRequest>,
) -> Result<Json<NetworkPolicyView>, ApiError> {
    check(&p, &state, Of::Env(&env), Access::Manage).await?;
    let Json(req) = body?;
    Ok(Json(netpolicy::apply(&state, &env, &req.document).await?))
}

pub(super) async fn rollback(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
    body: Body<PolicyRollbackRequest>,
) -> Result<Json<NetworkPolicyView>, ApiError> {
    check(&p, &state, Of::Env(&env), Access::Manage).await?;
    let Json(req) = body?;
    Ok(Json(
        netpolicy::rollback(&state, &env, req.generation).await?,
    ))
}

pub(super) async fn diff(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
    body: Body<PolicyDiffRequest>,
) -> Result<Json<PolicyDiffView>, ApiError> {
    check(&p, &state, Of::Env(&env), Access::Read).await?;
    let Json(req) = body?;
    Ok(Json(netpolicy::diff(&state, &env, &req).await?))
}

pub(super) async fn test(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
    body: Body<PolicyTestRequest>,
) -> Result<Json<PolicyTestAnswer>, ApiError> {
    check(&p, &state, Of::Env(&env), Access::Read).await?;
    let Json(req) = body?;
    Ok(Json(netpolicy::test(&state, &env, &req).await?))
}
