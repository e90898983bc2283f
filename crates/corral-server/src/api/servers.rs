//! `/v1/servers`: the deployment's servers and which one is active.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use corral_proto::api::ServerView;

use super::{ApiError, Principal};
use crate::state::AppState;

/// The servers seen in the last 30 s (as of the active server's last look, at most 5 s old),
/// the active one — the one answering — first.
#[utoipa::path(
    get,
    operation_id = "servers_list",
    path = "/v1/servers",
    tag = "servers",
    summary = "The deployment's servers, the active one first",
    responses((status = 200, description = "The servers", body = Vec<ServerView>))
)]
pub(super) async fn list(
    _p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<ServerView>>, ApiError> {
    let rows = state.servers.rows();
    let now = crate::time_fmt::now_unix_millis();
    Ok(Json(
        rows.iter()
            .enumerate()
            .map(|(i, r)| ServerView {
                id: r.id.clone(),
                advertise_url: r.advertise_url.clone(),
                peer_url: r.peer_url.clone(),
                // The first is this server, answering now.
                seen_at: crate::time_fmt::rfc3339_millis(if i == 0 { now } else { r.seen_at }),
                active: r.active,
            })
            .collect(),
    ))
}
