//! Carrying out commands: one function from a typed [`CommandBody`] to its typed reply. Every
//! kind is idempotent, so a command delivered again after a reconnect does no harm.

use std::sync::Arc;
use std::time::Duration;

use corral_proto::{
    AgentMessage, BuildChunk, BuildImage, CommandBody, CommandResult, ContainerRef, ContainerSpec,
    DoctorRequest, ExpectProbe, FirewallApply, ImageCheck, ListImages, OpenLogs, ProbeReceived,
    ProbeSent, PullImage, RemoveContainer, RemoveImage, ResolveImages, SendProbe, StackCleanup,
    StartContainer, StopContainer, StreamOpened,
};

use crate::{AGENT_VERSION, Context, docker, doctor, firewall, overlay};

/// Carries out one command (log streams excepted: the session opens those).
pub(crate) async fn execute(body: CommandBody, ctx: Context) -> CommandResult {
    match body {
        CommandBody::Doctor(req) => CommandResult::of::<DoctorRequest>(run_doctor(req, ctx).await),
        CommandBody::FirewallApply(req) => CommandResult::of::<FirewallApply>(
            firewall::apply(req, ctx.state_dir, &ctx.dialer).await,
        ),
        CommandBody::OverlayExpect(probe) => {
            CommandResult::of::<ExpectProbe>(expect_probe(probe, &ctx).await)
        }
        CommandBody::OverlaySend(probe) => {
            CommandResult::of::<SendProbe>(send_probe(probe, &ctx).await)
        }
        CommandBody::ContainerRun(spec) => {
            CommandResult::of::<ContainerSpec>(ctx.engine.run(&spec).await)
        }
        CommandBody::ContainerStart(r) => {
            CommandResult::of::<StartContainer>(ctx.engine.start(&r.corral_id).await)
        }
        CommandBody::ContainerStop(r) => CommandResult::of::<StopContainer>(
            ctx.engine
                .stop(&r.corral_id, r.grace_secs.unwrap_or(10))
                .await,
        ),
        CommandBody::ContainerRemove(r) => CommandResult::of::<RemoveContainer>(
            ctx.engine.remove(&r.corral_id, r.grace_secs).await,
        ),
        CommandBody::ImageCheck(req) => {
            CommandResult::of::<ImageCheck>(ctx.engine.missing_images(&req.images).await)
        }
        CommandBody::ImageResolve(req) => {
            CommandResult::of::<ResolveImages>(ctx.engine.resolve(&req).await)
        }
        CommandBody::ImagePull(req) => {
            CommandResult::of::<PullImage>(ctx.engine.pull_now(&req).await)
        }
        CommandBody::ImageList(_) => CommandResult::of::<ListImages>(ctx.engine.images().await),
        CommandBody::ImageRemove(req) => {
            CommandResult::of::<RemoveImage>(ctx.engine.remove_image(&req.reference).await)
        }
        CommandBody::ImageBuildChunk(chunk) => CommandResult::of::<BuildChunk>(
            crate::builds::BuildStore::new(&ctx.state_dir).chunk(&chunk),
        ),
        CommandBody::ImageBuild(req) => {
            let store = crate::builds::BuildStore::new(&ctx.state_dir);
            CommandResult::of::<BuildImage>(ctx.engine.build(&store, &req).await)
        }
        CommandBody::StackCleanup(req) => {
            CommandResult::of::<StackCleanup>(ctx.engine.stack_cleanup(&req).await)
        }
        // Log streams are opened by the session, which owns the stream table.
        CommandBody::ContainerLogs(_) => CommandResult::Failed {
            message: "log streams are opened by the session".into(),
        },
        CommandBody::Unreadable { kind, error } => CommandResult::Failed {
            message: format!(
                "this agent ({AGENT_VERSION}) cannot read the {kind:?} command ({error}); upgrade the agent"
            ),
        },
    }
}

async fn run_doctor(req: DoctorRequest, ctx: Context) -> Result<Vec<corral_proto::Check>, String> {
    let overlay_port = ctx.overlay.as_ref().and_then(|o| o.port());
    let wanted_overlay_port = ctx.overlay_port;
    let overlay_enabled = ctx.overlay_enabled;
    let embedded = ctx.embedded;
    let docker_socket = ctx.engine.socket_path().map(std::path::PathBuf::from);
    let overlay = match &ctx.mesh {
        Some(mesh) => mesh.view().await,
        None => doctor::OverlayView::Disabled,
    };
    let policy = match &ctx.mesh {
        Some(mesh) => Some(doctor::PolicyView {
            status: mesh.policy().status(),
            counters: mesh.policy().counters().await,
        }),
        None => None,
    };
    tokio::task::spawn_blocking(move || {
        doctor::run(&doctor::DoctorInput {
            server: &ctx.server,
            pin: ctx.pin.clone(),
            server_time_ms: req.server_time_ms,
            now_ms: crate::now_ms(),
            docker_socket: docker_socket.as_deref().map_err(String::as_str),
            overlay_port,
            wanted_overlay_port,
            overlay_enabled,
            embedded,
            overlay,
            policy,
        })
    })
    .await
    .map_err(|e| format!("the checks failed: {e}"))
}

/// The overlay socket, or why there is none.
fn overlay_socket(ctx: &Context) -> Result<&Arc<overlay::Overlay>, String> {
    ctx.overlay.as_ref().ok_or_else(|| {
        if ctx.overlay_enabled {
            format!(
                "the agent has no overlay socket: UDP port {} could not be bound (see the agent's log)",
                ctx.overlay_port
            )
        } else {
            "the agent runs with --no-overlay: it has no overlay socket".to_owned()
        }
    })
}

fn probe_window(probe: &corral_proto::OverlayProbe) -> Duration {
    Duration::from_millis(probe.window_ms.clamp(100, 30_000))
}

async fn expect_probe(
    probe: corral_proto::OverlayProbe,
    ctx: &Context,
) -> Result<ProbeReceived, String> {
    let socket = overlay_socket(ctx)?;
    let nonce = overlay::parse_nonce(&probe.nonce)?;
    let received = socket.expect(nonce, probe_window(&probe)).await;
    Ok(ProbeReceived { received })
}

async fn send_probe(probe: corral_proto::OverlayProbe, ctx: &Context) -> Result<ProbeSent, String> {
    let socket = overlay_socket(ctx)?;
    let nonce = overlay::parse_nonce(&probe.nonce)?;
    let peer = probe
        .peer
        .parse::<std::net::SocketAddr>()
        .map_err(|_| format!("bad peer address {:?}", probe.peer))?;
    let sent = socket.send(nonce, peer, probe_window(&probe)).await?;
    Ok(ProbeSent { sent })
}

/// Largest piece of log text sent in one stream message.
const STREAM_PIECE: usize = 16 * 1024;

/// Streams a container's logs under the server's credit: never more bytes in flight than it
/// granted, so a slow reader stops the Docker stream instead of growing memory.
pub(crate) async fn stream_logs(
    engine: Arc<docker::Engine>,
    command_id: String,
    r: ContainerRef,
    stream_id: String,
    credit: Arc<tokio::sync::Semaphore>,
    done_tx: tokio::sync::mpsc::Sender<(String, CommandResult)>,
    out_tx: tokio::sync::mpsc::Sender<AgentMessage>,
) {
    use futures_util::StreamExt;
    let stream = match engine.logs(&r.corral_id, r.follow, r.tail).await {
        Ok(s) => s,
        Err(message) => {
            let _ = done_tx
                .send((command_id, CommandResult::Failed { message }))
                .await;
            return;
        }
    };
    let opened = CommandResult::of::<OpenLogs>(Ok(StreamOpened {
        stream_id: stream_id.clone(),
    }));
    if done_tx.send((command_id, opened)).await.is_err() {
        return;
    }
    let mut stream = std::pin::pin!(stream);
    let mut error = None;
    while let Some(item) = stream.next().await {
        let text = match item {
            Ok(t) => t,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(STREAM_PIECE);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, tail) = rest.split_at(cut);
            rest = tail;
            match credit.acquire_many(piece.len() as u32).await {
                Ok(p) => p.forget(),
                Err(_) => return,
            }
            let msg = AgentMessage::StreamData {
                stream_id: stream_id.clone(),
                data: piece.to_owned(),
            };
            if out_tx.send(msg).await.is_err() {
                return;
            }
        }
    }
    let _ = out_tx
        .send(AgentMessage::StreamEnd { stream_id, error })
        .await;
}
