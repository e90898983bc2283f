//! The audit log: what is recorded (every request that changes state, every refused request —
//! a failed login — with who, from where and the answer), and the routes that read it:
//! `GET /v1/audit` (the newest entries), `GET /v1/audit/export` (pages in order, with hashes,
//! for a SIEM) and `GET /v1/audit/verify` (the chain checked from the first entry).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use corral_control::audit::{Entry, Verifier};
use corral_proto::api::{AuditEntryView, AuditVerifyView, MAX_AUDIT_PER_REQUEST};
use corral_proto::secret::SecretKind;
use serde::Deserialize;

use super::{Admin, ApiError, Params};
use crate::error::Error;
use crate::secrets::SecretHash;
use crate::state::AppState;
use crate::time_fmt::{now_unix_millis, parse_instant_millis, rfc3339_millis};

/// What an error answer said, for the audit entry (the body itself is already serialised).
#[derive(Clone)]
pub(super) struct ErrorNote(pub String);

/// Who the request was on behalf of when no key says it (a login names its user).
#[derive(Clone)]
pub(super) struct Actor(pub String);

/// Records the request when it changed (or tried to change) state or was refused. The agents'
/// tunnel is left to the tunnel's own events.
pub(super) async fn record(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.to_string())
        .unwrap_or_default();
    let key = bearer(req.headers());
    let response = next.run(req).await;
    let status = response.status();
    let changes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let refused = matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    );
    if path == "/v1/connect" || !(changes || refused) {
        return response;
    }
    let (mut actor, key_id, role) = identify(&state, key.as_deref()).await;
    if key.is_none()
        && let Some(Actor(named)) = response.extensions().get::<Actor>()
    {
        actor = named.clone();
    }
    let mut outcome = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    );
    if let Some(ErrorNote(message)) = response.extensions().get::<ErrorNote>() {
        outcome.push_str(": ");
        outcome.push_str(message);
    }
    let entry = Entry {
        seq: 0,
        at: now_unix_millis(),
        actor,
        key_id,
        role,
        environment: environment_of(&path, query.as_deref()),
        action: format!("{method} {}", route.as_deref().unwrap_or(&path)),
        target: path,
        outcome,
        source,
    };
    if refused {
        // Anyone can send these: recorded one by one up to the events' rate limit, counted
        // beyond it (the count is an entry too).
        let message = format!(
            "{} from {} ({}): {}",
            entry.action, entry.source, entry.actor, entry.outcome
        );
        state
            .record_event_audited("api_refused", None, &message, entry)
            .await;
    } else {
        state.audit(entry).await;
    }
    response
}

/// The key the request presents (bearer or the web UI's cookie), if any.
fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    super::presented_key(headers).ok().flatten().map(|p| p.key)
}

/// (actor, key id, role) of the key presented.
async fn identify(state: &AppState, key: Option<&str>) -> (String, String, String) {
    let anonymous = |why: &str| (format!("anonymous ({why})"), String::new(), String::new());
    let Some(key) = key else {
        return anonymous("no key");
    };
    match SecretKind::of(key) {
        Some(SecretKind::HostCredential) => return anonymous("an agent credential"),
        Some(SecretKind::RegistrationToken) => return anonymous("a registration token"),
        _ => {}
    }
    match state.store.key_auth(&SecretHash::of(key)).await {
        Ok(Some(k)) => (
            k.user_name,
            k.key_id,
            if k.admin { "admin" } else { "user" }.to_owned(),
        ),
        Ok(None) => anonymous("unknown key"),
        Err(e) => {
            tracing::error!(error = %e, "cannot look up an API key for the audit log");
            anonymous("key not looked up: datastore failure")
        }
    }
}

/// The environment a request names: `/v1/environments/{name}/…` or `?env=`.
fn environment_of(path: &str, query: Option<&str>) -> String {
    if let Some(rest) = path.strip_prefix("/v1/environments/") {
        return rest.split('/').next().unwrap_or_default().to_owned();
    }
    query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("env="))
        .unwrap_or_default()
        .to_owned()
}

fn view(e: Entry, hash: Option<&[u8]>) -> AuditEntryView {
    AuditEntryView {
        seq: e.seq,
        at: rfc3339_millis(e.at),
        actor: e.actor,
        key_id: e.key_id,
        role: e.role,
        environment: e.environment,
        action: e.action,
        target: e.target,
        outcome: e.outcome,
        source: e.source,
        hash: hash.map(hex),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_limit(limit: Option<u32>, default: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=MAX_AUDIT_PER_REQUEST).contains(&limit) {
        return Err(Error::invalid(format!(
            "limit={limit}: ask for 1 to {MAX_AUDIT_PER_REQUEST} entries per request"
        ))
        .into());
    }
    Ok(limit)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct RecentQuery {
    /// RFC 3339 or Unix seconds.
    since: Option<String>,
    actor: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/audit`: the newest entries (100 by default), oldest first.
#[utoipa::path(
    get,
    operation_id = "audit_recent",
    path = "/v1/audit",
    tag = "audit",
    summary = "The newest audit entries (admins)",
    params(RecentQuery),
    responses((status = 200, description = "Entries, oldest first", body = Vec<AuditEntryView>))
)]
pub(super) async fn recent(
    _: Admin,
    State(state): State<Arc<AppState>>,
    q: Params<RecentQuery>,
) -> Result<Json<Vec<AuditEntryView>>, ApiError> {
    let Query(q) = q?;
    let limit = check_limit(q.limit, 100)?;
    let since = q
        .since
        .as_deref()
        .map(|s| {
            parse_instant_millis(s).ok_or_else(|| {
                Error::invalid(format!(
                    "since={s:?}: expected an RFC 3339 time (2026-11-25T09:00:00Z) or Unix seconds"
                ))
            })
        })
        .transpose()?;
    let entries = state
        .store
        .audit_recent(since, q.actor.as_deref(), limit)
        .await?;
    Ok(Json(entries.into_iter().map(|e| view(e, None)).collect()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ExportQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

/// `GET /v1/audit/export?after=SEQ`: the entries after `after`, in order, with their hashes.
#[utoipa::path(
    get,
    operation_id = "audit_export",
    path = "/v1/audit/export",
    tag = "audit",
    summary = "Audit entries after a sequence number, with their hashes (admins)",
    params(ExportQuery),
    responses((status = 200, description = "Entries in order", body = Vec<AuditEntryView>))
)]
pub(super) async fn export(
    _: Admin,
    State(state): State<Arc<AppState>>,
    q: Params<ExportQuery>,
) -> Result<Json<Vec<AuditEntryView>>, ApiError> {
    let Query(q) = q?;
    let limit = check_limit(q.limit, MAX_AUDIT_PER_REQUEST)?;
    let page = state.store.audit_page(q.after.unwrap_or(0), limit).await?;
    Ok(Json(
        page.into_iter()
            .map(|(e, hash)| view(e, Some(&hash)))
            .collect(),
    ))
}

/// `GET /v1/audit/verify`: the chain checked from the first entry to the last.
#[utoipa::path(
    get,
    operation_id = "audit_verify",
    path = "/v1/audit/verify",
    tag = "audit",
    summary = "Check the audit log's hash chain (admins)",
    responses((status = 200, description = "Whether the chain is intact", body = AuditVerifyView))
)]
pub(super) async fn verify(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<AuditVerifyView>, ApiError> {
    let mut verifier = Verifier::new(state.vault.audit_key());
    let mut after = 0;
    loop {
        let page = state.store.audit_page(after, MAX_AUDIT_PER_REQUEST).await?;
        let Some((last, _)) = page.last() else { break };
        after = last.seq;
        for (entry, hash) in &page {
            verifier.feed(entry, hash);
        }
    }
    let (head_seq, head_hash) = verifier.head();
    let broken = verifier.broken().cloned();
    Ok(Json(AuditVerifyView {
        entries: verifier.checked(),
        intact: broken.is_none(),
        head_seq,
        head_hash: hex(&head_hash),
        broken_at: broken.as_ref().map(|b| b.seq),
        problem: broken.map(|b| b.problem),
    }))
}
