//! The durable command queue's live half: submitting work for a host, delivering it down the
//! host's tunnel, accepting replies, and waking whoever waits for the outcome.
//!
//! The datastore is the source of truth (`commands` table). A command is `pending` until it is
//! written to a tunnel, then `sent`; a reply makes it `acked` or `failed`; the expiry sweep makes
//! it `expired` past its deadline. Commands not finished are delivered again whenever the host
//! reconnects, including after a server restart; agents carry out a redelivered command
//! idempotently.
//!
//! A reply is accepted only from the host the command was addressed to, and only once. Any other
//! reply is dropped and recorded as a security event (`forged_reply`, `replayed_reply`,
//! `unknown_reply`).

use std::marker::PhantomData;
use std::time::Duration;

use corral_proto::{Command, CommandBody, CommandResult, Request};
use tokio::sync::oneshot;

use crate::error::Error;
use crate::secrets::new_id;
use crate::state::AppState;
pub use crate::state::waiters::Outcome;
use crate::store::{Completion, StoreError};
use crate::text::{MAX_ID, quoted};
use crate::time_fmt::now_unix;

/// How long past a command's deadline a waiter still waits (the expiry sweep runs every
/// second, so an expired command is settled within this slack).
const WAIT_SLACK: Duration = Duration::from_secs(2);

/// Why a call to an agent gave no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The command could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The agent carried it out and it failed; its message says why.
    #[error("{0}")]
    Failed(String),
    /// The agent answered with a reply that does not read as this command's reply type.
    #[error("the host's answer to {kind} could not be read: {error}")]
    Unreadable {
        /// The command's kind.
        kind: &'static str,
        /// Why it does not read.
        error: String,
    },
    /// No answer before the deadline.
    #[error("the host did not answer in time")]
    Expired,
    /// The outcome was lost with the server's waiter (the server is shutting down).
    #[error("the server stopped waiting for the host's answer")]
    Abandoned,
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Store(s) => s.into(),
            CallError::Failed(m) => Error::Agent(m),
            e @ CallError::Unreadable { .. } => Error::Agent(e.to_string()),
            e @ (CallError::Expired | CallError::Abandoned) => Error::Timeout(e.to_string()),
        }
    }
}

/// A submitted command whose typed reply has not been read yet.
pub struct Pending<R: Request> {
    /// The command's id.
    pub id: String,
    kind: &'static str,
    rx: oneshot::Receiver<Outcome>,
    deadline: Duration,
    reply: PhantomData<fn() -> R>,
}

impl<R: Request> Pending<R> {
    /// Waits for the outcome until the command's deadline (and the expiry sweep's slack).
    pub async fn wait(mut self) -> Result<R::Reply, CallError> {
        let limit = self.deadline + WAIT_SLACK;
        match self.wait_up_to(limit).await {
            Some(result) => result,
            None => Err(CallError::Expired),
        }
    }

    /// Waits at most `limit`: `None` when the outcome has not come yet (it still may; drop
    /// the `Pending` to leave it to the unwatched-outcome hook).
    pub async fn wait_up_to(&mut self, limit: Duration) -> Option<Result<R::Reply, CallError>> {
        match tokio::time::timeout(limit, &mut self.rx).await {
            Err(_) => None,
            Ok(Err(_)) => Some(Err(CallError::Abandoned)),
            Ok(Ok(outcome)) => Some(read_outcome::<R>(self.kind, outcome)),
        }
    }
}

/// The typed reply in an outcome.
pub fn read_outcome<R: Request>(
    kind: &'static str,
    outcome: Outcome,
) -> Result<R::Reply, CallError> {
    match outcome {
        Outcome::Done(CommandResult::Ok { value }) => {
            R::decode_reply(value).map_err(|e| CallError::Unreadable {
                kind,
                error: e.to_string(),
            })
        }
        Outcome::Done(CommandResult::Failed { message }) => Err(CallError::Failed(message)),
        Outcome::Expired => Err(CallError::Expired),
    }
}

/// Queues `request` for `host_id` (delivered at once if the host is connected, else when it
/// reconnects) and returns a handle to its typed reply.
pub async fn send<R: Request>(
    state: &AppState,
    host_id: &str,
    request: R,
    ttl: Duration,
) -> Result<Pending<R>, StoreError> {
    let body: CommandBody = request.into();
    let kind = body.kind().as_str();
    let (id, rx) = submit(state, host_id, body, ttl).await?;
    Ok(Pending {
        id,
        kind,
        rx,
        deadline: ttl.max(Duration::from_secs(1)),
        reply: PhantomData,
    })
}

/// Sends `request` to `host_id` and waits for its typed reply (until its deadline).
pub async fn call<R: Request>(
    state: &AppState,
    host_id: &str,
    request: R,
    ttl: Duration,
) -> Result<R::Reply, CallError> {
    send(state, host_id, request, ttl).await?.wait().await
}

/// Queues a command for `host_id` and delivers it at once if the host is connected. Returns the
/// command id and a receiver for its outcome.
async fn submit(
    state: &AppState,
    host_id: &str,
    body: CommandBody,
    ttl: Duration,
) -> Result<(String, oneshot::Receiver<Outcome>), StoreError> {
    let now = now_unix();
    let command = Command {
        id: new_id("cmd"),
        body,
        deadline: now + ttl.as_secs().max(1) as i64,
    };
    let (tx, rx) = oneshot::channel();
    let kind = command.body.kind().as_str();
    state.dispatcher.lock().insert(
        command.id.clone(),
        crate::state::waiters::Waiting {
            tx,
            kind,
            since: std::time::Instant::now(),
        },
    );
    if let Err(e) = state.store.insert_command(host_id, &command, now).await {
        state.dispatcher.lock().remove(&command.id);
        return Err(e);
    }
    state.metrics.command_submitted(kind);
    state.registry.wake_commands(host_id);
    Ok((command.id, rx))
}

/// Many commands of one kind submitted together: their waiters are in place before they are
/// stored (no outcome can come first), and taken away again if storing fails.
struct Batch {
    kind: &'static str,
    deadline: Duration,
    commands: Vec<Command>,
    receivers: Vec<oneshot::Receiver<Outcome>>,
}

impl Batch {
    fn new<R: Request>(state: &AppState, requests: Vec<R>, ttl: Duration) -> Batch {
        let now = now_unix();
        let deadline = now + ttl.as_secs().max(1) as i64;
        let commands: Vec<Command> = requests
            .into_iter()
            .map(|request| Command {
                id: new_id("cmd"),
                body: request.into(),
                deadline,
            })
            .collect();
        let kind = commands
            .first()
            .map_or("unknown", |c| c.body.kind().as_str());
        let since = std::time::Instant::now();
        let mut waiting = state.dispatcher.lock();
        let receivers = commands
            .iter()
            .map(|command| {
                let (tx, rx) = oneshot::channel();
                waiting.insert(
                    command.id.clone(),
                    crate::state::waiters::Waiting { tx, kind, since },
                );
                rx
            })
            .collect();
        Batch {
            kind,
            deadline: ttl.max(Duration::from_secs(1)),
            commands,
            receivers,
        }
    }

    /// Storing failed: nobody waits for these.
    fn abandon(&self, state: &AppState) {
        let mut waiting = state.dispatcher.lock();
        for command in &self.commands {
            waiting.remove(&command.id);
        }
    }

    /// Stored, but for those `left_out` says: their replies to wait for, in order, and each
    /// host woken once.
    fn submitted<R: Request>(
        self,
        state: &AppState,
        hosts: &[&str],
        left_out: impl Fn(usize) -> bool,
    ) -> Vec<Option<Pending<R>>> {
        let mut woken: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut pending = Vec::with_capacity(self.commands.len());
        for (i, (command, rx)) in self.commands.into_iter().zip(self.receivers).enumerate() {
            if left_out(i) {
                state.dispatcher.lock().remove(&command.id);
                pending.push(None);
                continue;
            }
            state.metrics.command_submitted(self.kind);
            if let Some(host) = hosts.get(i) {
                woken.insert(host);
            }
            pending.push(Some(Pending {
                id: command.id,
                kind: self.kind,
                rx,
                deadline: self.deadline,
                reply: PhantomData,
            }));
        }
        for host in woken {
            state.registry.wake_commands(host);
        }
        pending
    }
}

/// Stores each container with the command that runs it on its host, all in one transaction,
/// and delivers them at once to the hosts that are connected: a reconciler pass's new
/// replicas. Returns, in order, each one's pending reply, or `None` for a container whose name
/// was taken (neither it nor its command was stored).
pub async fn send_runs(
    state: &AppState,
    runs: Vec<(crate::store::ContainerRow, corral_proto::ContainerSpec)>,
    ttl: Duration,
) -> Result<Vec<Option<Pending<corral_proto::ContainerSpec>>>, StoreError> {
    let (rows, specs): (Vec<_>, Vec<_>) = runs.into_iter().unzip();
    let batch = Batch::new(state, specs, ttl);
    let items: Vec<_> = rows.iter().zip(batch.commands.iter()).collect();
    let taken = match state
        .store
        .insert_containers_with_commands(&items, now_unix())
        .await
    {
        Ok(taken) => taken,
        Err(e) => {
            batch.abandon(state);
            return Err(e);
        }
    };
    let hosts: Vec<&str> = rows.iter().map(|r| r.host_id.as_str()).collect();
    Ok(batch.submitted(state, &hosts, |i| taken.contains(&i)))
}

/// Marks containers removed and queues the commands that remove them, all in one transaction,
/// and delivers them at once to the hosts that are connected: a reconciler pass's removals.
/// Each item is (container id, its host, the request); the pending replies come back in order.
pub async fn send_removes(
    state: &AppState,
    removals: Vec<(String, String, corral_proto::RemoveContainer)>,
    ttl: Duration,
) -> Result<Vec<Pending<corral_proto::RemoveContainer>>, StoreError> {
    let (places, requests): (Vec<_>, Vec<_>) = removals
        .into_iter()
        .map(|(container, host, request)| ((container, host), request))
        .unzip();
    let batch = Batch::new(state, requests, ttl);
    let rows: Vec<(&str, &str, &Command)> = places
        .iter()
        .zip(&batch.commands)
        .map(|((c, h), command)| (c.as_str(), h.as_str(), command))
        .collect();
    if let Err(e) = state.store.queue_removals(&rows, now_unix()).await {
        batch.abandon(state);
        return Err(e);
    }
    let hosts: Vec<&str> = places.iter().map(|(_, h)| h.as_str()).collect();
    Ok(batch
        .submitted(state, &hosts, |_| false)
        .into_iter()
        .flatten()
        .collect())
}

/// Handles replies that arrived on `host_id`'s tunnel, in the order they came: all are
/// written at once (they share group commits instead of waiting for one each), then each is
/// settled, or recorded as a refused reply, in order.
pub async fn on_replies(state: &AppState, host_id: &str, replies: Vec<(String, CommandResult)>) {
    let now = now_unix();
    let completions = futures_util::future::join_all(
        replies
            .iter()
            .map(|(id, result)| state.store.complete_command(id, host_id, result, now)),
    )
    .await;
    for ((command_id, result), completion) in replies.into_iter().zip(completions) {
        on_completion(state, host_id, &command_id, result, completion).await;
    }
}

async fn on_completion(
    state: &AppState,
    host_id: &str,
    command_id: &str,
    result: CommandResult,
    completion: Result<Completion, StoreError>,
) {
    let completion = match completion {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot record a command reply");
            return;
        }
    };
    let event = match completion {
        Completion::Accepted => {
            state
                .dispatcher
                .settle(state, command_id, Outcome::Done(result))
                .await;
            return;
        }
        Completion::WrongHost { owner } => (
            "forged_reply",
            format!(
                "host {host_id} replied to command {}, which was addressed to host {owner}; the reply was dropped",
                quoted(command_id, MAX_ID)
            ),
        ),
        Completion::AlreadyFinished { state } => (
            "replayed_reply",
            format!(
                "host {host_id} replied again to command {}, already {state}; the reply was dropped",
                quoted(command_id, MAX_ID)
            ),
        ),
        Completion::Unknown => (
            "unknown_reply",
            format!(
                "host {host_id} replied to command {}, which does not exist; the reply was dropped",
                quoted(command_id, MAX_ID)
            ),
        ),
    };
    // Rate limited per host and kind: what is only counted is logged and recorded in a summary
    // when its window ends.
    if state.record_event(event.0, Some(host_id), &event.1).await {
        tracing::warn!(host = %host_id, kind = event.0, "{}", event.1);
    }
}

/// How many commands a session reads from the datastore at a time.
pub const BATCH: usize = 64;

/// A (re)connected host's commands that went out on an earlier connection and were never
/// answered are pending again, to go out on this one.
pub async fn redeliver(state: &AppState, host_id: &str) -> Result<(), StoreError> {
    state.store.requeue_sent_commands(host_id).await
}

/// The host's next pending commands (oldest first, at most [`BATCH`]), marked sent. A stored
/// command that no longer reads fails at once with the reason, and its waiter hears it.
pub async fn next_batch(state: &AppState, host_id: &str) -> Result<Vec<Command>, StoreError> {
    let taken = state
        .store
        .take_pending_commands(host_id, now_unix(), BATCH)
        .await?;
    for (id, why) in taken.unreadable {
        tracing::error!(command = %id, "{why}");
        let failed = Outcome::Done(CommandResult::Failed { message: why });
        state.dispatcher.settle(state, &id, failed).await;
    }
    Ok(taken.commands)
}

/// Marks overdue commands expired and wakes their waiters. Runs until the server shuts down.
pub async fn expiry_loop(state: std::sync::Arc<AppState>) {
    let mut shutdown = state.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match state.store.expire_commands(now_unix()).await {
            Ok(ids) => {
                state.metrics.commands_expired(ids.len() as u64);
                for id in ids {
                    state.dispatcher.settle(&state, &id, Outcome::Expired).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "command expiry failed"),
        }
    }
}

/// Fails every open command of a removed host and wakes their waiters.
pub async fn fail_host(state: &AppState, host_id: &str, why: &str) {
    match state
        .store
        .fail_host_commands(host_id, why, now_unix())
        .await
    {
        Ok(ids) => {
            for id in ids {
                let failed = Outcome::Done(CommandResult::Failed {
                    message: why.to_owned(),
                });
                state.dispatcher.settle(state, &id, failed).await;
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot fail a removed host's commands"),
    }
}
