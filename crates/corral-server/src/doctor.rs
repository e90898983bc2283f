//! `corral doctor`: a host's own checks (from its agent) and the overlay between it and every
//! connected peer, probed both ways through the agents' overlay sockets.

use std::net::SocketAddr;
use std::time::Duration;

use corral_proto::api::DoctorReport;
use corral_proto::{Check, DoctorRequest, ExpectProbe, OverlayProbe, SendProbe};

use crate::dispatch::{self, CallError};
use crate::error::Result;
use crate::state::AppState;
use crate::state::registry::SessionInfo;
use crate::store::HostRow;
use crate::time_fmt::rfc3339;

/// How long `doctor` waits for an agent's checks.
const DOCTOR_TIMEOUT: Duration = Duration::from_secs(20);

/// `corral doctor HOST`: the agent's own checks, then overlay probes with every connected peer
/// of its environment, both ways.
pub async fn run(state: &AppState, id: &str) -> Result<DoctorReport> {
    let h = state.store.find_host(id).await?;
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
        let request = DoctorRequest {
            server_time_ms: Some(server_time_ms),
        };
        match dispatch::call(state, &h.id, request, DOCTOR_TIMEOUT).await {
            Ok(checks) => checks,
            Err(CallError::Store(e)) => return Err(e.into()),
            Err(e @ CallError::Unreadable { .. }) => return Err(e.into()),
            Err(CallError::Failed(message)) => failed(message, "see the agent's log"),
            Err(CallError::Expired | CallError::Abandoned) => failed(
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
        checks.extend(overlay_checks(state, &h).await?);
    }
    Ok(DoctorReport {
        host: h.name,
        host_id: h.id,
        state: if live { "active" } else { "disconnected" }.into(),
        checks,
    })
}

/// How long the agents may take to answer a probe command.
const PROBE_TTL: Duration = Duration::from_secs(10);
/// How long a receiving agent waits for an overlay probe.
const PROBE_WINDOW_MS: u64 = 3000;
/// At most this many peers are probed by one doctor run.
const MAX_PROBED_PEERS: usize = 64;

fn overlay_endpoint(info: &SessionInfo) -> Option<SocketAddr> {
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
    let probe = |peer: String, window_ms| OverlayProbe {
        nonce: nonce.clone(),
        peer,
        window_ms,
    };
    let expect = dispatch::send(
        state,
        receiver,
        ExpectProbe(probe(String::new(), PROBE_WINDOW_MS)),
        PROBE_TTL,
    )
    .await
    .map_err(|e| e.to_string())?;
    let send = dispatch::send(
        state,
        sender,
        SendProbe(probe(endpoint.to_string(), 1000)),
        PROBE_TTL,
    )
    .await
    .map_err(|e| e.to_string())?;
    let (sent, expected) = futures_util::future::join(send.wait(), expect.wait()).await;
    if let Err(e @ (CallError::Failed(_) | CallError::Unreadable { .. })) = sent {
        return Err(e.to_string());
    }
    match expected {
        Ok(reply) => Ok(reply.received),
        Err(CallError::Expired | CallError::Abandoned) => {
            Err("the receiving agent did not answer".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Overlay reachability between `host` and every connected peer of its environment, in both
/// directions, probed through the agents' own overlay sockets.
async fn overlay_checks(state: &AppState, host: &HostRow) -> Result<Vec<Check>> {
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
