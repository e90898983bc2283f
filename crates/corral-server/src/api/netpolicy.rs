//! `/v1/environments/{name}/network-policy`: apply, show, roll back, diff, test, and the
//! services diagram.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use corral_proto::api::{
    NetworkPolicyRequest, NetworkPolicyView, PolicyDiffRequest, PolicyDiffView,
    PolicyRollbackRequest, PolicyTestAnswer, PolicyTestRequest,
};

use super::access::{Access, Of, check};
use super::{ApiError, Body, Params, Principal};
use crate::netpolicy;
use crate::state::AppState;

/// A request carrying a document: the document's own limit (64 KiB) is checked by the
/// policy reader, which says so; the body may be larger once JSON escapes it.
pub const MAX_POLICY_BODY_BYTES: usize = 4 * corral_policy::document::MAX_DOCUMENT_BYTES;

#[utoipa::path(
    get,
    operation_id = "netpolicy_show",
    path = "/v1/environments/{name}/network-policy",
    tag = "network-policy",
    summary = "The network policy and the flows it allows",
    params(("name" = String, Path, description = "Environment name")),
    responses((status = 200, description = "The policy", body = NetworkPolicyView))
)]
pub(super) async fn show(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
) -> Result<Json<NetworkPolicyView>, ApiError> {
    check(&p, &state, Of::Env(&env), Access::Read).await?;
    Ok(Json(netpolicy::show(&state, &env).await?))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct DiagramQuery {
    /// `svg` (default), `dot`, `mermaid` or `markdown`.
    #[serde(default)]
    format: Option<String>,
}

/// `GET /v1/environments/{name}/network-policy/diagram`: the services and what the policy
/// lets flow between them, drawn (SVG, DOT, Mermaid) or as the firewall export's Markdown
/// section.
#[utoipa::path(
    get,
    operation_id = "netpolicy_diagram",
    path = "/v1/environments/{name}/network-policy/diagram",
    tag = "network-policy",
    summary = "The services and allowed flows, drawn",
    params(("name" = String, Path, description = "Environment name"), DiagramQuery),
    responses((status = 200, description = "SVG (default), DOT, Mermaid or Markdown", body = String, content_type = "image/svg+xml"))
)]
pub(super) async fn diagram(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
    q: Params<DiagramQuery>,
) -> Result<Response, ApiError> {
    use axum::http::header;
    use corral_firewall::DiagramFormat;
    check(&p, &state, Of::Env(&env), Access::Read).await?;
    let Query(q) = q?;
    let map = netpolicy::service_map(&netpolicy::show(&state, &env).await?);
    let (text, content_type) = match q.format.as_deref().unwrap_or("svg") {
        "svg" => (
            corral_firewall::services_diagram(&map, DiagramFormat::Svg),
            "image/svg+xml",
        ),
        "dot" => (
            corral_firewall::services_diagram(&map, DiagramFormat::Dot),
            "text/plain; charset=utf-8",
        ),
        "mermaid" => (
            corral_firewall::services_diagram(&map, DiagramFormat::Mermaid),
            "text/plain; charset=utf-8",
        ),
        "markdown" => (
            corral_firewall::services_markdown(&map),
            "text/markdown; charset=utf-8",
        ),
        other => {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                format!(
                    "format {} is not one of svg, dot, mermaid, markdown",
                    crate::text::quoted(other, crate::text::MAX_ID)
                ),
            ));
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; sandbox",
            ),
        ],
        text,
    )
        .into_response())
}

#[utoipa::path(
    put,
    operation_id = "netpolicy_apply",
    path = "/v1/environments/{name}/network-policy",
    tag = "network-policy",
    summary = "Apply a network policy document",
    params(("name" = String, Path, description = "Environment name")),
    request_body = NetworkPolicyRequest,
    responses((status = 200, description = "Applied", body = NetworkPolicyView))
)]
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

#[utoipa::path(
    post,
    operation_id = "netpolicy_rollback",
    path = "/v1/environments/{name}/network-policy/rollback",
    tag = "network-policy",
    summary = "Go back to an earlier generation",
    params(("name" = String, Path, description = "Environment name")),
    request_body = PolicyRollbackRequest,
    responses((status = 200, description = "Rolled back", body = NetworkPolicyView))
)]
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

#[utoipa::path(
    post,
    operation_id = "netpolicy_diff",
    path = "/v1/environments/{name}/network-policy/diff",
    tag = "network-policy",
    summary = "What a document or a generation would change",
    params(("name" = String, Path, description = "Environment name")),
    request_body = PolicyDiffRequest,
    responses((status = 200, description = "The changed flows", body = PolicyDiffView))
)]
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

#[utoipa::path(
    post,
    operation_id = "netpolicy_test",
    path = "/v1/environments/{name}/network-policy/test",
    tag = "network-policy",
    summary = "Whether some traffic is allowed, and by which rule",
    params(("name" = String, Path, description = "Environment name")),
    request_body = PolicyTestRequest,
    responses((status = 200, description = "The answer", body = PolicyTestAnswer))
)]
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
