//! `/v1/registries`, `/v1/environments/{name}/admission` and `/v1/hosts/{id}/images`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use corral_proto::api::{
    AdmissionRequest, AdmissionTestRequest, AdmissionVerdict, AdmissionView, PullRequest,
    RegistryRequest, RegistryView,
};
use corral_proto::{ImageSummary, RemovedImage};
use serde::Deserialize;

use super::access::{Access, Of, check};
use super::{ApiError, Body, Params, Principal};
use crate::state::AppState;
use crate::{images, stacks};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct EnvQuery {
    #[serde(default)]
    environment: Option<String>,
}

#[utoipa::path(
    get,
    operation_id = "images_list_registries",
    path = "/v1/registries",
    tag = "registries",
    summary = "Registry accounts of an environment",
    params(EnvQuery),
    responses((status = 200, description = "The registries (secrets never shown)", body = Vec<RegistryView>))
)]
pub(super) async fn list_registries(
    p: Principal,
    State(state): State<Arc<AppState>>,
    q: Params<EnvQuery>,
) -> Result<Json<Vec<RegistryView>>, ApiError> {
    let Query(q) = q?;
    check(
        &p,
        &state,
        Of::Env(q.environment.as_deref().unwrap_or("default")),
        Access::Read,
    )
    .await?;
    Ok(Json(
        images::list_registries(&state, q.environment.as_deref()).await?,
    ))
}

#[utoipa::path(
    post,
    operation_id = "images_put_registry",
    path = "/v1/registries",
    tag = "registries",
    summary = "Add or replace a registry account",
    request_body = RegistryRequest,
    responses((status = 200, description = "Stored (sealed)", body = RegistryView))
)]
pub(super) async fn put_registry(
    p: Principal,
    State(state): State<Arc<AppState>>,
    body: Body<RegistryRequest>,
) -> Result<Json<RegistryView>, ApiError> {
    let Json(req) = body?;
    check(
        &p,
        &state,
        Of::Env(req.environment.as_deref().unwrap_or("default")),
        Access::Manage,
    )
    .await?;
    Ok(Json(images::put_registry(&state, req).await?))
}

#[utoipa::path(
    delete,
    operation_id = "images_remove_registry",
    path = "/v1/registries/{registry}",
    tag = "registries",
    summary = "Remove a registry account",
    params(("registry" = String, Path, description = "Registry host[:port]"), EnvQuery),
    responses((status = 204, description = "Removed"))
)]
pub(super) async fn remove_registry(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(registry): Path<String>,
    q: Params<EnvQuery>,
) -> Result<StatusCode, ApiError> {
    let Query(q) = q?;
    check(
        &p,
        &state,
        Of::Env(q.environment.as_deref().unwrap_or("default")),
        Access::Manage,
    )
    .await?;
    images::remove_registry(&state, q.environment.as_deref(), &registry).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    operation_id = "images_show_admission",
    path = "/v1/environments/{name}/admission",
    tag = "admission",
    summary = "The admission policy",
    params(("name" = String, Path, description = "Environment name")),
    responses((status = 200, description = "The policy", body = AdmissionView))
)]
pub(super) async fn show_admission(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
) -> Result<Json<AdmissionView>, ApiError> {
    check(&p, &state, Of::Env(&env), Access::Read).await?;
    Ok(Json(images::show_policy(&state, &env).await?))
}

#[utoipa::path(
    put,
    operation_id = "images_apply_admission",
    path = "/v1/environments/{name}/admission",
    tag = "admission",
    summary = "Apply an admission policy",
    params(("name" = String, Path, description = "Environment name")),
    request_body = AdmissionRequest,
    responses((status = 200, description = "Applied", body = AdmissionView))
)]
pub(super) async fn apply_admission(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
    body: Body<AdmissionRequest>,
) -> Result<Json<AdmissionView>, ApiError> {
    check(&p, &state, Of::Env(&env), Access::Manage).await?;
    let Json(req) = body?;
    Ok(Json(
        images::apply_policy(&state, &env, &req.document).await?,
    ))
}

#[utoipa::path(
    post,
    operation_id = "images_test_admission",
    path = "/v1/environments/{name}/admission/test",
    tag = "admission",
    summary = "Judge a project against the policy without deploying it",
    params(("name" = String, Path, description = "Environment name")),
    request_body = AdmissionTestRequest,
    responses((status = 200, description = "The verdict", body = AdmissionVerdict))
)]
pub(super) async fn test_admission(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
    body: Body<AdmissionTestRequest>,
) -> Result<Json<AdmissionVerdict>, ApiError> {
    check(&p, &state, Of::Env(&env), Access::Read).await?;
    let Json(req) = body?;
    Ok(Json(stacks::admission_test(&state, &env, req).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ImageQuery {
    image: String,
}

#[utoipa::path(
    get,
    operation_id = "images_host_images",
    path = "/v1/hosts/{id}/images",
    tag = "images",
    summary = "Images on a host",
    params(("id" = String, Path, description = "Host id or name")),
    responses((status = 200, description = "The images", body = Vec<ImageSummary>))
)]
pub(super) async fn host_images(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(host): Path<String>,
) -> Result<Json<Vec<ImageSummary>>, ApiError> {
    let id = check(&p, &state, Of::Host(&host), Access::Read).await?;
    Ok(Json(images::host_images(&state, &id).await?))
}

#[utoipa::path(
    post,
    operation_id = "images_pull",
    path = "/v1/hosts/{id}/images",
    tag = "images",
    summary = "Pull an image on a host",
    params(("id" = String, Path, description = "Host id or name")),
    request_body = PullRequest,
    responses((status = 200, description = "Pulled", body = ImageSummary))
)]
pub(super) async fn pull(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(host): Path<String>,
    body: Body<PullRequest>,
) -> Result<Json<ImageSummary>, ApiError> {
    let id = check(&p, &state, Of::Host(&host), Access::Hosts).await?;
    let Json(req) = body?;
    Ok(Json(images::pull_on_host(&state, &id, &req.image).await?))
}

#[utoipa::path(
    delete,
    operation_id = "images_remove_image",
    path = "/v1/hosts/{id}/images",
    tag = "images",
    summary = "Remove an image from a host",
    params(("id" = String, Path, description = "Host id or name"), ImageQuery),
    responses((status = 200, description = "What was untagged and deleted", body = RemovedImage))
)]
pub(super) async fn remove_image(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(host): Path<String>,
    q: Params<ImageQuery>,
) -> Result<Json<RemovedImage>, ApiError> {
    let id = check(&p, &state, Of::Host(&host), Access::Hosts).await?;
    let Query(q) = q?;
    Ok(Json(images::remove_on_host(&state, &id, &q.image).await?))
}

#[utoipa::path(
    get,
    operation_id = "images_has_context",
    path = "/v1/build-contexts/{sha}",
    tag = "images",
    summary = "Whether the server holds a build context",
    params(("sha" = String, Path, description = "SHA-256 of the context, hex")),
    responses((status = 204, description = "Held"))
)]
pub(super) async fn has_context(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(sha): Path<String>,
) -> Result<StatusCode, ApiError> {
    super::access::operates_somewhere(&p)?;
    Ok(if crate::builds::has_context(&state, &sha)? {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    })
}

#[utoipa::path(
    put,
    operation_id = "images_put_context",
    path = "/v1/build-contexts/{sha}",
    tag = "images",
    summary = "Upload a build context (a tar archive)",
    params(("sha" = String, Path, description = "SHA-256 of the context, hex")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The context as `corral up` packs it (a tar archive)"),
    responses((status = 204, description = "Stored"))
)]
pub(super) async fn put_context(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(sha): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    super::access::operates_somewhere(&p)?;
    // Hashing and writing up to 64 MiB: off the async workers.
    let state2 = state.clone();
    tokio::task::spawn_blocking(move || crate::builds::put_context(&state2, &sha, &body))
        .await
        .map_err(crate::error::Error::internal)??;
    Ok(StatusCode::NO_CONTENT)
}
