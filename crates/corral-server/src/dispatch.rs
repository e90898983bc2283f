//! The durable command queue's live half: submitting work for a host, delivering it down the
//! host's tunnel, accepting replies, and waking whoever waits for the outcome.
//!
//! The datastore is the source of truth (`commands` table). A command is `pending` until its
//! host answers: a reply makes it `acked` or `failed`, the expiry sweep makes it `expired` past
//! its deadline. Which pending commands a connection has written is kept by its session
//! ([`Delivery`]), so delivering costs the writer nothing, and everything still pending goes
//! out again whenever the host reconnects, including after a server restart; agents carry out
//! a redelivered command idempotently.
//!
//! A reply is accepted only from the host the command was addressed to, and only once. Any other
//! reply is dropped and recorded as a security event (`forged_reply`, `replayed_reply`,
//! `unknown_reply`).

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_proto::{Command, CommandBody, CommandResult, Request};
use tokio::sync::oneshot;

use crate::error::Error;
use crate::secrets::new_id;
use crate::state::AppState;
pub use crate::state::waiters::Outcome;
use crate::store::{Completion, Delivered, StoreError};
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

/// Queues one request for each of `hosts`, all in one transaction, and delivers them at once
/// to the hosts that are connected (a stack's clean-up on every host of its environment).
/// The pending replies come back in the order of `hosts`.
pub async fn send_to_each<R: Request + Clone>(
    state: &AppState,
    hosts: &[&str],
    request: R,
    ttl: Duration,
) -> Result<Vec<Pending<R>>, StoreError> {
    let batch = Batch::new(state, vec![request; hosts.len()], ttl);
    let items: Vec<(&str, &Command)> = hosts.iter().copied().zip(&batch.commands).collect();
    if let Err(e) = state.store.insert_commands(&items, now_unix()).await {
        batch.abandon(state);
        return Err(e);
    }
    Ok(batch
        .submitted(state, hosts, |_| false)
        .into_iter()
        .flatten()
        .collect())
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
/// written at once (they share group commits instead of waiting for one each), the commands
/// they finished are taken out of the session's outstanding ones (`answers`; returns whether
/// that made room in its full window), then each is settled, or recorded as a refused reply,
/// in order.
pub async fn on_replies(
    state: &AppState,
    host_id: &str,
    replies: Vec<(String, CommandResult)>,
    answers: &AnswersWritten,
) -> bool {
    let now = now_unix();
    let completions = futures_util::future::join_all(
        replies
            .iter()
            .map(|(id, result)| state.store.complete_command(id, host_id, result, now)),
    )
    .await;
    // Committed: no longer pending, so no longer outstanding on the session.
    let made_room = answers.answered(
        replies
            .iter()
            .zip(&completions)
            .filter(|(_, c)| {
                matches!(
                    c,
                    Ok(Completion::Accepted | Completion::AlreadyFinished { .. })
                )
            })
            .map(|((id, _), _)| id.as_str()),
    );
    for ((command_id, result), completion) in replies.into_iter().zip(completions) {
        on_completion(state, host_id, &command_id, result, completion).await;
    }
    made_room
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

/// How many commands a session keeps written to its tunnel and unanswered at most: past it,
/// the session waits for answers before writing more (what a host has not answered waits in
/// the datastore, not in the server's or the agent's memory).
pub const WINDOW: usize = 512;

/// A session's delivery of its host's commands: what it has written to the tunnel and not
/// yet seen settled (see `store::queue`). A new connection starts with nothing written, so
/// everything still pending goes out again on it.
pub struct Delivery<'a> {
    state: &'a AppState,
    host_id: String,
    written: Arc<Mutex<Delivered>>,
}

/// The reply writer's end of a [`Delivery`]: it takes answered commands out.
pub struct AnswersWritten {
    metrics: crate::state::metrics::Metrics,
    written: Arc<Mutex<Delivered>>,
}

/// What one look at the queue gave.
pub struct Taken {
    /// To write to the tunnel now, oldest first.
    pub commands: Vec<Command>,
    /// More may be waiting: look again without waiting for a wake-up.
    pub more: bool,
}

fn lock(written: &Mutex<Delivered>) -> std::sync::MutexGuard<'_, Delivered> {
    // Every method of `Delivered` leaves it whole: one a panicking holder left is usable.
    written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<'a> Delivery<'a> {
    pub fn new(state: &'a AppState, host_id: &str) -> Self {
        Delivery {
            state,
            host_id: host_id.to_owned(),
            written: Arc::default(),
        }
    }

    /// The end the session's reply writer holds.
    pub fn answers(&self) -> AnswersWritten {
        AnswersWritten {
            metrics: self.state.metrics.clone(),
            written: self.written.clone(),
        }
    }

    /// The host's next pending commands not yet written on this connection (oldest first, at
    /// most [`BATCH`], none past [`WINDOW`]: with a full window, nothing, and the reply
    /// writer wakes the session when answers make room). A stored command that no longer
    /// reads fails at once with the reason, and its waiter hears it.
    pub async fn next_batch(&mut self) -> Result<Taken, StoreError> {
        let want = WINDOW.saturating_sub(lock(&self.written).len()).min(BATCH);
        if want == 0 {
            return Ok(Taken {
                commands: Vec::new(),
                more: false,
            });
        }
        let taken = self
            .state
            .store
            .take_pending_commands(&self.host_id, now_unix(), &self.written, want)
            .await?;
        self.state.metrics.commands_written(
            taken.commands.len() as i64 + taken.unreadable.len() as i64 - taken.pruned as i64,
        );
        for (id, why) in taken.unreadable {
            tracing::error!(command = %id, "{why}");
            let failed = Outcome::Done(CommandResult::Failed { message: why });
            self.state.dispatcher.settle(self.state, &id, failed).await;
        }
        let room = lock(&self.written).len() < WINDOW;
        Ok(Taken {
            commands: taken.commands,
            more: taken.more && room,
        })
    }
}

impl AnswersWritten {
    /// The answers to these commands are committed: they are no longer outstanding. Returns
    /// whether that made room in the session's full window (wake the session).
    pub fn answered<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> bool {
        let answered = lock(&self.written).answered(ids, WINDOW);
        self.metrics.commands_written(-(answered.removed as i64));
        answered.made_room
    }
}

impl Drop for Delivery<'_> {
    fn drop(&mut self) {
        // What this connection wrote and never heard answered is pending for the next one.
        let outstanding = lock(&self.written).clear();
        self.state.metrics.commands_written(-(outstanding as i64));
    }
}

/// How often finished commands past their retention are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Marks overdue commands expired and wakes their waiters, and deletes finished commands past
/// `--command-retention`. Runs until the server shuts down.
pub async fn expiry_loop(state: std::sync::Arc<AppState>) {
    let mut shutdown = state.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut pruned_at = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if pruned_at.elapsed() >= PRUNE_EVERY {
            pruned_at = std::time::Instant::now();
            prune_finished(&state).await;
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

/// Deletes finished commands whose deadline is older than the retention: a finished command
/// is kept only to say why a late or repeated reply is refused, and its payload may carry
/// (sealed) registry credentials and file contents, which should not stay for ever.
async fn prune_finished(state: &AppState) {
    let retention = i64::try_from(state.options.command_retention.as_secs()).unwrap_or(i64::MAX);
    let before = now_unix().saturating_sub(retention.max(1));
    match state.store.prune_commands(before).await {
        Ok(0) => {}
        Ok(n) => {
            state.metrics.commands_pruned(n);
            tracing::info!(
                commands = n,
                retention_secs = retention,
                "pruned finished commands"
            );
        }
        Err(e) => tracing::error!(error = %e, "cannot prune finished commands"),
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
