//! `GET /metrics`: Prometheus text.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{Admin, ApiError};
use crate::state::AppState;

pub(super) async fn metrics(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Response, ApiError> {
    let hosts = state.store.host_count().await?;
    let rss = crate::process::resident_bytes().unwrap_or(0);
    let cpu = crate::process::cpu_seconds().unwrap_or(0.0);
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let body = format!(
        "# HELP corral_agents_connected Agents with a live tunnel.\n# TYPE corral_agents_connected gauge\ncorral_agents_connected {}\n\
# HELP corral_hosts Registered hosts (not removed).\n# TYPE corral_hosts gauge\ncorral_hosts {hosts}\n\
# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n\
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}\n\
# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {fds}\n\
# HELP process_uptime_seconds Seconds since the server started.\n# TYPE process_uptime_seconds gauge\nprocess_uptime_seconds {}\n\
# HELP corral_unauthenticated_connections Connections held that have not authenticated.\n# TYPE corral_unauthenticated_connections gauge\ncorral_unauthenticated_connections {}\n\
# HELP corral_unauthenticated_connections_max The cap on them (--max-unauthenticated-connections).\n# TYPE corral_unauthenticated_connections_max gauge\ncorral_unauthenticated_connections_max {}\n\
# HELP corral_connections_evicted_total Unauthenticated connections closed because the cap was reached.\n# TYPE corral_connections_evicted_total counter\ncorral_connections_evicted_total {}\n",
        state.registry.len(),
        state.started.elapsed().as_secs(),
        state.gate.unauthenticated(),
        state.gate.cap(),
        state.gate.evictions(),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}
