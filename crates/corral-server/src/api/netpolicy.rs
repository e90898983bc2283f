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

pub(super) async fn show(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
) -> Result<Json<NetworkPolicyView>, ApiError> {
    check(&p, &state, Of::Env(&env), Access::Read).await?;
    Ok(Json(netpolicy::show(&state, &env).await?))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DiagramQuery {
    /// `svg` (default), `dot`, `mermaid` or `markdown`.
    #[serde(default)]
    format: Option<String>,
}

/// `GET /v1/environments/{name}/network-policy/diagram`: the services and what the policy
/// lets flow between them, drawn (SVG, DOT, Mermaid) or as the firewall export's Markdown
/// section.
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
