//! HTTP routes and their authentication.
//!
//! Every `/v1/` route except the agent tunnel needs an API key (`Authorization: Bearer
//! crl_key_…`). An agent credential or a registration token is refused with 403 on all of them:
//! a credential authorizes only its own tunnel at `/v1/connect`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use corral_proto::CloseReason;
use corral_proto::api::{
    CreateToken, CreatedToken, DoctorReport, EnvironmentView, ErrorBody, EventView,
    FirewallApplyReport, FirewallApplyRequest, HostView, TokenView,
};
use corral_proto::secret::SecretKind;
use corral_proto::{Check, CommandKind, CommandResult};
use serde::Deserialize;

use crate::AppState;
use crate::secrets::{SecretHash, new_id, new_secret};
use crate::store::{HostRow, StoreError, TokenRow};
use crate::time_fmt::{now_unix, rfc3339};

/// Largest API request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Default lifetime of a registration token.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 24 * 3600;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/connect", get(connect))
        .route("/v1/environments", get(list_environments))
        .route(
            "/v1/environments/{name}/rotate-key",
            post(rotate_overlay_key),
        )
        .route("/v1/environments/{name}/overlay", post(set_overlay_mode))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/hosts", get(list_hosts))
        .route("/v1/hosts/{id}", get(get_host).delete(remove_host))
        .route("/v1/hosts/{id}/doctor", post(doctor))
        .route("/v1/hosts/{id}/firewall", post(apply_firewall))
        .route("/v1/containers", get(list_containers).post(run_container))
        .route(
            "/v1/containers/{name}",
            get(get_container).delete(remove_container),
        )
        .route("/v1/containers/{name}/start", post(start_container))
        .route("/v1/containers/{name}/stop", post(stop_container))
        .route("/v1/containers/{name}/logs", get(container_logs))
        .route(
            "/v1/stacks",
            get(list_stacks)
                .post(up_stack)
                .layer(DefaultBodyLimit::max(crate::stacks::MAX_UP_BODY_BYTES)),
        )
        .route("/v1/stacks/{name}", get(get_stack).delete(down_stack))
        .route("/v1/stacks/{name}/scale", post(scale_stack))
        .route(
            "/v1/stacks/{name}/services/{service}/logs",
            get(service_logs),
        )
        .route("/v1/events", get(list_events))
        .route("/v1/topology", get(topology))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An error answer: a status and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// A body that is not the JSON a route takes: axum's status and explanation.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::new(e.status(), e.body_text())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            other => {
                tracing::error!(error = %other, "datastore failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the server's datastore failed; see the server log",
                )
            }
        }
    }
}

/// Proof that the request carried a valid admin API key.
pub struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        authorize(&parts.headers, state).await
    }
}

async fn authorize(headers: &HeaderMap, state: &AppState) -> Result<Admin, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            unauthorized(
                "missing API key: send `Authorization: Bearer <key>` (the CLI reads CORRAL_API_KEY; the server's admin.env holds one)",
            )
        })?
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not valid text"))?;
    let key = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <API key>`"))?
        .trim();
    match SecretKind::of(key) {
        Some(SecretKind::HostCredential) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "an agent credential authorizes only its own tunnel (/v1/connect), never the API; use an API key",
            ));
        }
        Some(SecretKind::RegistrationToken) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a registration token can only register a host; use an API key for the API",
            ));
        }
        _ => {}
    }
    let row = state.store.api_key_by_hash(&SecretHash::of(key)).await?;
    match row {
        Some(k) if k.revoked_at.is_none() && k.role == "admin" => Ok(Admin),
        Some(k) if k.revoked_at.is_some() => Err(unauthorized("this API key was revoked")),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this API key's role does not allow this",
        )),
        None => Err(unauthorized(
            "unknown API key: check CORRAL_API_KEY against the server's admin.env",
        )),
    }
}

async fn connect(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let limit = state.options.max_message_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        // Small buffers: an idle tunnel must cost little, so one server holds many thousands.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(limit * 2)
        .on_upgrade(move |socket| crate::tunnel::serve(state, socket, remote))
}

async fn list_environments(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<EnvironmentView>>, ApiError> {
    let mut out = Vec::new();
    for e in state.store.environments().await? {
        let overlay = state.store.overlay_env(&e.id).await?;
        out.push(EnvironmentView {
            overlay_mode: overlay
                .as_ref()
                .map(|o| o.overlay_mode.clone())
                .unwrap_or_default(),
            overlay_cidr: overlay
                .as_ref()
                .map(|o| o.overlay_cidr.clone())
                .unwrap_or_default(),
            overlay_key_generation: overlay
                .map(|o| u32::try_from(o.overlay_psk_generation).unwrap_or(0))
                .unwrap_or(0),
            id: e.id,
            name: e.name,
            created_at: rfc3339(e.created_at),
        });
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct OverlayModeBody {
    mode: String,
}

/// `corral env set-overlay ENV --mode wireguard|vxlan`.
async fn set_overlay_mode(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Json<OverlayModeBody>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(body) = body?;
    if body.mode != "wireguard" && body.mode != "vxlan" {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "overlay mode {:?}: expected wireguard (encrypted) or vxlan (unencrypted, for trusted networks)",
                body.mode
            ),
        ));
    }
    let env = state
        .store
        .environment_by_name(&name)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no environment {name:?}; list them with `corral env ls`"),
            )
        })?;
    state.store.set_overlay_mode(&env.id, &body.mode).await?;
    let _ = state
        .store
        .record_event(
            now_unix(),
            "overlay_mode_changed",
            None,
            &format!("environment {} overlay mode {}", env.name, body.mode),
        )
        .await;
    state.overlay.wake();
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate_overlay_key(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<corral_proto::api::RotatedKey>, ApiError> {
    let env = state
        .store
        .environment_by_name(&name)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no environment {name:?}; list them with `corral env ls`"),
            )
        })?;
    let generation = crate::overlay::rotate(&state, &env.id).await?;
    let _ = state
        .store
        .record_event(
            now_unix(),
            "overlay_key_rotated",
            None,
            &format!(
                "environment {} overlay key generation {generation}",
                env.name
            ),
        )
        .await;
    Ok(Json(corral_proto::api::RotatedKey {
        environment: env.name,
        generation: u32::try_from(generation).unwrap_or(0),
    }))
}

async fn create_token(
    _: Admin,
    State(state): State<Arc<AppState>>,
    body: Result<Json<CreateToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let Json(req) = body?;
    Ok((StatusCode::CREATED, Json(mint_token(&state, req).await?)))
}

/// Creates a registration token and the agent command that uses it.
pub async fn mint_token(state: &AppState, req: CreateToken) -> Result<CreatedToken, ApiError> {
    let env_name = req.environment.unwrap_or_else(|| "default".into());
    let env = state
        .store
        .environment_by_name(&env_name)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no environment named {env_name:?}"),
            )
        })?;
    let ttl = req.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if ttl > 10 * 365 * 86400 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ttl must be at most 10 years (0 means the token never expires)",
        ));
    }
    if req.max_uses == Some(0) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "max_uses must be at least 1 (omit it for unlimited uses)",
        ));
    }
    let now = now_unix();
    let secret = new_secret(SecretKind::RegistrationToken);
    let row = TokenRow {
        id: new_id("tok"),
        environment_id: env.id,
        secret_hash: SecretHash::of(&secret).as_bytes().to_vec(),
        created_at: now,
        expires_at: (ttl > 0).then(|| now + ttl as i64),
        max_uses: req.max_uses.map(i64::from),
        uses: 0,
        revoked_at: None,
    };
    state.store.insert_token(&row).await?;
    let command = format!(
        "corral agent --server {} --token {} --ca-checksum {}",
        state.advertise_url, secret, state.checksum
    );
    Ok(CreatedToken {
        id: row.id,
        token: secret,
        command,
        environment: env.name,
        expires_at: row.expires_at.map(rfc3339),
        max_uses: req.max_uses,
    })
}

async fn list_tokens(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let now = now_unix();
    let envs = state.store.environments().await?;
    let tokens = state.store.tokens().await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| {
                let st = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.expires_at.is_some_and(|e| now >= e) {
                    "expired"
                } else if t.max_uses.is_some_and(|m| t.uses >= m) {
                    "used up"
                } else {
                    "active"
                };
                TokenView {
                    environment: envs
                        .iter()
                        .find(|e| e.id == t.environment_id)
                        .map(|e| e.name.clone())
                        .unwrap_or_else(|| t.environment_id.clone()),
                    id: t.id,
                    created_at: rfc3339(t.created_at),
                    expires_at: t.expires_at.map(rfc3339),
                    max_uses: t.max_uses.map(|m| m as u32),
                    uses: t.uses as u32,
                    state: st.into(),
                }
            })
            .collect(),
    ))
}

async fn revoke_token(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.revoke_token(&id, now_unix()).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn host_view(
    state: &AppState,
    h: HostRow,
    env_names: &[(String, String)],
    leases: &[(String, String)],
) -> HostView {
    let live = state.registry.info(&h.id);
    let overlay_subnet = leases
        .iter()
        .find(|(id, _)| *id == h.id)
        .map(|(_, s)| s.clone());
    let labels = h.labels();
    HostView {
        environment: env_names
            .iter()
            .find(|(id, _)| *id == h.environment_id)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| h.environment_id.clone()),
        state: if live.is_some() {
            "active"
        } else {
            "disconnected"
        }
        .into(),
        last_seen_at: rfc3339(live.as_ref().map(|l| l.last_rx).unwrap_or(h.last_seen_at)),
        connected_since: live.as_ref().map(|l| rfc3339(l.connected_at)),
        docker: live.as_ref().and_then(|l| l.docker.clone()),
        remote_addr: live.map(|l| l.remote).unwrap_or(h.remote_addr),
        id: h.id,
        name: h.name,
        labels,
        agent_version: h.agent_version,
        hostname: h.hostname,
        os: h.os,
        kernel: h.kernel,
        arch: h.arch,
        registered_at: rfc3339(h.registered_at),
        overlay_subnet,
    }
}

async fn env_names(state: &AppState) -> Result<Vec<(String, String)>, ApiError> {
    Ok(state
        .store
        .environments()
        .await?
        .into_iter()
        .map(|e| (e.id, e.name))
        .collect())
}

async fn list_hosts(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<HostView>>, ApiError> {
    let envs = env_names(&state).await?;
    let leases = state.store.all_overlay_leases().await?;
    let hosts = state.store.hosts(false).await?;
    Ok(Json(
        hosts
            .into_iter()
            .map(|h| host_view(&state, h, &envs, &leases))
            .collect(),
    ))
}

async fn get_host(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<HostView>, ApiError> {
    let envs = env_names(&state).await?;
    let leases = state.store.all_overlay_leases().await?;
    let h = state.store.find_host(&id).await?;
    Ok(Json(host_view(&state, h, &envs, &leases)))
}

async fn remove_host(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let h = state.store.find_host(&id).await?;
    state.store.remove_host(&h.id, now_unix()).await?;
    state.overlay.wake();
    crate::dispatch::fail_host(&state, &h.id, "the host was removed").await;
    state.registry.close(
        &h.id,
        CloseReason::HostRemoved,
        format!(
            "host {} ({}) was removed by an operator; its credential is revoked. The agent stops; to bring the host back, delete its state dir and register it again with a new token",
            h.name, h.id
        ),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// The deployment as the firewall planner and the diagram see it, from live state: the
/// server's listener and advertised URL, every host with the address its tunnel comes from
/// (loopback addresses are left out: they say nothing about the network), its labels and
/// environment, and every environment with its overlay mode.
async fn topology(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<corral_firewall::Topology>, ApiError> {
    Ok(Json(live_topology(&state).await?))
}

async fn live_topology(state: &AppState) -> Result<corral_firewall::Topology, ApiError> {
    use corral_firewall::topology as t;
    let listen = state.options.listen;
    let mut server = t::Server::at(Vec::new());
    server.name = "corral".into();
    if !listen.ip().is_unspecified() {
        server.listen_addresses = vec![listen.ip()];
    }
    server.listen_port = state.local_port;
    server.advertised_url = Some(state.advertise_url.clone());
    let envs = state.store.environments().await?;
    let mut topo = corral_firewall::Topology::new(server);
    for e in &envs {
        // The rules follow each environment's overlay mode (51820/udp encrypted, or 4789/udp).
        let vxlan = state
            .store
            .overlay_env(&e.id)
            .await?
            .is_some_and(|o| o.overlay_mode == "vxlan");
        topo.environments.push(t::Environment {
            name: e.name.clone(),
            overlay: if vxlan {
                t::Overlay::Vxlan {
                    port: corral_firewall::topology::DEFAULT_VXLAN_PORT,
                }
            } else {
                t::Overlay::default()
            },
        });
    }
    for h in state.store.hosts(false).await? {
        let remote = state
            .registry
            .info(&h.id)
            .map(|l| l.remote)
            .unwrap_or_else(|| h.remote_addr.clone());
        let addresses = remote
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip().to_canonical())
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .into_iter()
            .collect();
        topo.hosts.push(t::Host {
            environment: envs
                .iter()
                .find(|e| e.id == h.environment_id)
                .map(|e| e.name.clone()),
            labels: h.labels(),
            name: h.name,
            addresses,
            role: None,
        });
    }
    Ok(topo)
}

/// Extra time the API waits beyond an agent's dead-man window.
const FIREWALL_SLACK: std::time::Duration = std::time::Duration::from_secs(20);

async fn apply_firewall(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Result<Json<FirewallApplyRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<FirewallApplyReport>, ApiError> {
    let Json(req) = body?;
    let h = state.store.find_host(&id).await?;
    if state.registry.info(&h.id).is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "host {} is disconnected: rules are applied by its agent, which must be connected",
                h.name
            ),
        ));
    }
    let window = req.confirm_within_secs.unwrap_or(60);
    if !(1..=3600).contains(&window) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the confirmation window must be between 1 s and 1 h",
        ));
    }
    let mut topo = live_topology(&state).await?;
    topo.admin_cidrs = req.admin_cidrs;
    if !req.api_cidrs.is_empty() {
        topo.api_cidrs = Some(req.api_cidrs);
    }
    let plan = corral_firewall::plan(&topo).map_err(|e| {
        let problems: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("cannot derive the rules: {}", problems.join("; ")),
        )
    })?;
    let ruleset = corral_firewall::render(
        &plan,
        corral_firewall::Format::Nftables,
        &corral_firewall::Scope::host(&h.name),
    )
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let payload = serde_json::to_value(corral_proto::FirewallApply {
        ruleset: ruleset.clone(),
        dry_run: req.dry_run,
        confirm_within_secs: window,
    })
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let ttl = std::time::Duration::from_secs(window) + FIREWALL_SLACK;
    let (_, rx) =
        crate::dispatch::submit(&state, &h.id, CommandKind::FirewallApply, payload, ttl).await?;
    let outcome = tokio::time::timeout(ttl + std::time::Duration::from_secs(2), rx).await;
    let (applied, message) = match outcome {
        Ok(Ok(crate::dispatch::Outcome::Done(CommandResult::Ok { value }))) => {
            if req.dry_run {
                (false, "dry run: the ruleset loads on the host (nft -c); nothing changed".to_string())
            } else {
                let ms = value.get("confirmed_after_ms").and_then(serde_json::Value::as_u64).unwrap_or(0);
                (true, format!("applied as table inet corral; the agent reached the server through the new rules after {ms} ms"))
            }
        }
        Ok(Ok(crate::dispatch::Outcome::Done(CommandResult::Failed { message }))) => (false, message),
        _ => (false, "the agent did not answer in time; if the rules were applied and not confirmed, the agent rolls them back by itself".to_string()),
    };
    Ok(Json(FirewallApplyReport {
        host: h.name,
        dry_run: req.dry_run,
        applied,
        message,
        ruleset,
    }))
}

async fn run_container(
    _: Admin,
    State(state): State<Arc<AppState>>,
    body: Result<Json<corral_proto::api::RunContainer>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<corral_proto::api::ContainerView>), ApiError> {
    let Json(req) = body?;
    let (status, view) = crate::containers::run(&state, req).await?;
    Ok((status, Json(view)))
}

async fn list_containers(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<corral_proto::api::ContainerView>>, ApiError> {
    Ok(Json(crate::containers::list(&state).await?))
}

async fn get_container(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<corral_proto::api::ContainerView>, ApiError> {
    Ok(Json(crate::containers::get(&state, &name).await?))
}

async fn act_on(
    state: &Arc<AppState>,
    name: &str,
    action: crate::containers::Action,
) -> Result<Response, ApiError> {
    let (status, view) = crate::containers::act(state, name, action).await?;
    Ok(match view {
        Some(v) => (status, Json(v)).into_response(),
        None => status.into_response(),
    })
}

async fn start_container(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    act_on(&state, &name, crate::containers::Action::Start).await
}

async fn stop_container(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    act_on(&state, &name, crate::containers::Action::Stop).await
}

async fn remove_container(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    act_on(&state, &name, crate::containers::Action::Remove).await
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<u64>,
}

async fn container_logs(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let body = crate::containers::logs(&state, &name, q.follow, q.tail).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

async fn up_stack(
    _: Admin,
    State(state): State<Arc<AppState>>,
    body: Result<Json<corral_proto::api::UpRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<corral_proto::api::UpResponse>), ApiError> {
    let Json(req) = body?;
    let (status, resp) = crate::stacks::up(&state, req).await?;
    Ok((status, Json(resp)))
}

async fn list_stacks(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<corral_proto::api::StackSummary>>, ApiError> {
    Ok(Json(crate::stacks::list(&state).await?))
}

async fn get_stack(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<corral_proto::api::StackView>, ApiError> {
    Ok(Json(crate::stacks::get(&state, &name).await?))
}

#[derive(Deserialize)]
struct DownQuery {
    #[serde(default)]
    volumes: bool,
}

async fn down_stack(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<DownQuery>,
) -> Result<(StatusCode, Json<corral_proto::api::StackView>), ApiError> {
    let view = crate::stacks::down(&state, &name, q.volumes).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

async fn scale_stack(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Json<corral_proto::api::ScaleRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<corral_proto::api::StackView>, ApiError> {
    let Json(req) = body?;
    Ok(Json(crate::stacks::scale(&state, &name, req).await?))
}

async fn service_logs(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path((name, service)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let body = crate::stacks::logs(&state, &name, &service, q.follow, q.tail).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// How long `doctor` waits for an agent's checks.
const DOCTOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

async fn doctor(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<DoctorReport>, ApiError> {
    let h = state.store.find_host(&id).await?;
    let failed = |detail: String, fix: &str| {
        vec![Check {
            name: "server tunnel".into(),
            ok: false,
            detail,
            fix: Some(fix.into()),
        }]
    };
    let live = state.registry.info(&h.id).is_some();
    let checks = if !live {
        failed(
            format!("disconnected; last seen {}", rfc3339(h.last_seen_at)),
            "start the agent on the host, and allow outbound 8443/tcp from the host to the server (nothing inbound is needed)",
        )
    } else {
        let server_time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let (_, rx) = crate::dispatch::submit(
            &state,
            &h.id,
            CommandKind::Doctor,
            serde_json::json!({ "server_time_ms": server_time_ms }),
            DOCTOR_TIMEOUT,
        )
        .await?;
        match tokio::time::timeout(DOCTOR_TIMEOUT + std::time::Duration::from_secs(2), rx).await {
            Ok(Ok(crate::dispatch::Outcome::Done(CommandResult::Ok { value }))) => {
                serde_json::from_value(value).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        format!("the agent sent unreadable checks: {e}"),
                    )
                })?
            }
            Ok(Ok(crate::dispatch::Outcome::Done(CommandResult::Failed { message }))) => {
                failed(message, "see the agent's log")
            }
            _ => failed(
                format!(
                    "the agent did not answer within {} s",
                    DOCTOR_TIMEOUT.as_secs()
                ),
                "check the agent's log; the tunnel may be stalled",
            ),
        }
    };
    let mut checks = checks;
    if live {
        checks.extend(overlay_checks(&state, &h).await?);
    }
    Ok(Json(DoctorReport {
        host: h.name,
        host_id: h.id,
        state: if live { "active" } else { "disconnected" }.into(),
        checks,
    }))
}

/// How long a receiving agent waits for an overlay probe.
const PROBE_WINDOW_MS: u64 = 3000;
/// At most this many peers are probed by one doctor run.
const MAX_PROBED_PEERS: usize = 64;

fn overlay_endpoint(info: &crate::registry::SessionInfo) -> Option<SocketAddr> {
    let ip = info.remote.parse::<SocketAddr>().ok()?.ip().to_canonical();
    Some(SocketAddr::new(ip, info.overlay_port?))
}

/// One server-coordinated probe: `receiver` waits for a nonce on its overlay socket while
/// `sender` sends it there. Neither opens anything new: both use their overlay socket.
async fn probe(
    state: &AppState,
    sender: &str,
    receiver: &str,
    endpoint: SocketAddr,
) -> Result<bool, String> {
    let nonce: String = crate::secrets::random_bytes::<16>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let ttl = std::time::Duration::from_secs(10);
    let submit = |host: &str, kind, peer: String, window_ms| {
        let payload = serde_json::to_value(corral_proto::OverlayProbe {
            nonce: nonce.clone(),
            peer,
            window_ms,
        })
        .unwrap_or_default();
        let host = host.to_owned();
        async move { crate::dispatch::submit(state, &host, kind, payload, ttl).await }
    };
    let (_, expect_rx) = submit(
        receiver,
        CommandKind::OverlayExpect,
        String::new(),
        PROBE_WINDOW_MS,
    )
    .await
    .map_err(|e| e.to_string())?;
    let (_, send_rx) = submit(sender, CommandKind::OverlaySend, endpoint.to_string(), 1000)
        .await
        .map_err(|e| e.to_string())?;
    let (sent, expected) = futures_util::future::join(send_rx, expect_rx).await;
    if let Ok(crate::dispatch::Outcome::Done(CommandResult::Failed { message })) = sent {
        return Err(message);
    }
    match expected {
        Ok(crate::dispatch::Outcome::Done(CommandResult::Ok { value })) => Ok(value
            .get("received")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)),
        Ok(crate::dispatch::Outcome::Done(CommandResult::Failed { message })) => Err(message),
        _ => Err("the receiving agent did not answer".into()),
    }
}

/// Overlay reachability between `host` and every connected peer of its environment, in both
/// directions, probed through the agents' own overlay sockets.
async fn overlay_checks(state: &AppState, host: &HostRow) -> Result<Vec<Check>, ApiError> {
    let Some(me) = state.registry.info(&host.id) else {
        return Ok(Vec::new());
    };
    // Without an overlay socket the agent's own "overlay socket" check already says why.
    let Some(my_endpoint) = overlay_endpoint(&me) else {
        return Ok(Vec::new());
    };
    let peers: Vec<(HostRow, SocketAddr)> = state
        .store
        .hosts(false)
        .await?
        .into_iter()
        .filter(|p| p.id != host.id && p.environment_id == host.environment_id)
        .filter_map(|p| {
            let endpoint = state
                .registry
                .info(&p.id)
                .as_ref()
                .and_then(overlay_endpoint)?;
            Some((p, endpoint))
        })
        .take(MAX_PROBED_PEERS)
        .collect();
    let probes = peers.iter().map(|(peer, endpoint)| async move {
        let out = probe(state, &host.id, &peer.id, *endpoint).await;
        let back = probe(state, &peer.id, &host.id, my_endpoint).await;
        let check = |name: String,
                     from: &str,
                     from_addr: SocketAddr,
                     to: &str,
                     to_addr: SocketAddr,
                     r: Result<bool, String>| {
            let route = format!("{from} ({}) → {to} ({to_addr}/udp)", from_addr.ip());
            let fix = format!(
                "allow {}/udp into {to} from {}; `corral firewall` lists the rule",
                to_addr.port(),
                from_addr.ip()
            );
            match r {
                Ok(true) => Check {
                    name,
                    ok: true,
                    detail: format!("{route}: probe received"),
                    fix: None,
                },
                Ok(false) => Check {
                    name,
                    ok: false,
                    detail: format!(
                        "{route}: no probe arrived within {} s",
                        PROBE_WINDOW_MS / 1000
                    ),
                    fix: Some(fix),
                },
                Err(e) => Check {
                    name,
                    ok: false,
                    detail: format!("{route}: {e}"),
                    fix: Some(fix),
                },
            }
        };
        [
            check(
                format!("overlay to {}", peer.name),
                &host.name,
                my_endpoint,
                &peer.name,
                *endpoint,
                out,
            ),
            check(
                format!("overlay from {}", peer.name),
                &peer.name,
                *endpoint,
                &host.name,
                my_endpoint,
                back,
            ),
        ]
    });
    Ok(futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect())
}

#[derive(Deserialize)]
struct EventsQuery {
    limit: Option<i64>,
}

async fn list_events(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let events = state.store.events(limit).await?;
    Ok(Json(
        events
            .into_iter()
            .map(|e| EventView {
                id: e.id,
                at: rfc3339(e.at),
                kind: e.kind,
                host_id: e.host_id,
                message: e.message,
            })
            .collect(),
    ))
}

async fn metrics(_: Admin, State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let hosts = state.store.hosts(false).await?.len();
    let rss = crate::resident_bytes().unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let body = format!(
        "# HELP corral_agents_connected Agents with a live tunnel.\n# TYPE corral_agents_connected gauge\ncorral_agents_connected {}\n\
# HELP corral_hosts Registered hosts (not removed).\n# TYPE corral_hosts gauge\ncorral_hosts {hosts}\n\
# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n\
# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {fds}\n\
# HELP process_uptime_seconds Seconds since the server started.\n# TYPE process_uptime_seconds gauge\nprocess_uptime_seconds {}\n",
        state.registry.len(),
        state.started.elapsed().as_secs()
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}
