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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use corral_proto::{Command, CommandKind, CommandResult};
use tokio::sync::oneshot;

use crate::AppState;
use crate::registry::Control;
use crate::secrets::new_id;
use crate::store::{Completion, StoreError};
use crate::time_fmt::now_unix;

/// The end state of a command, as a waiter sees it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Done(CommandResult),
    Expired,
}

#[derive(Default)]
pub struct Dispatcher {
    waiters: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
}

impl Dispatcher {
    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Outcome>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands the outcome to whoever waits for it. Gives it back when nobody does (the waiter
    /// gave up, or the server restarted since the command was submitted).
    fn wake(&self, id: &str, outcome: Outcome) -> Option<Outcome> {
        match self.waiters().remove(id) {
            Some(tx) => tx.send(outcome).err(),
            None => Some(outcome),
        }
    }
}

/// Settles an outcome: to its waiter, or else to the datastore.
async fn finish(state: &AppState, id: &str, outcome: Outcome) {
    if let Some(unwatched) = state.dispatcher.wake(id, outcome) {
        crate::containers::settle_unwatched(state, id, unwatched).await;
    }
}

/// Queues a command for `host_id` and delivers it at once if the host is connected. Returns the
/// command id and a receiver for its outcome.
pub async fn submit(
    state: &AppState,
    host_id: &str,
    kind: CommandKind,
    payload: serde_json::Value,
    ttl: Duration,
) -> Result<(String, oneshot::Receiver<Outcome>), StoreError> {
    let now = now_unix();
    let command = Command {
        id: new_id("cmd"),
        kind,
        payload,
        deadline: now + ttl.as_secs().max(1) as i64,
    };
    let (tx, rx) = oneshot::channel();
    state.dispatcher.waiters().insert(command.id.clone(), tx);
    if let Err(e) = state.store.insert_command(host_id, &command, now).await {
        state.dispatcher.waiters().remove(&command.id);
        return Err(e);
    }
    let id = command.id.clone();
    state.registry.send(host_id, Control::Deliver(command));
    Ok((id, rx))
}

/// Handles a reply that arrived on `host_id`'s tunnel.
pub async fn on_reply(state: &AppState, host_id: &str, command_id: &str, result: CommandResult) {
    let now = now_unix();
    let completion = match state
        .store
        .complete_command(command_id, host_id, &result, now)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot record a command reply");
            return;
        }
    };
    let event = match completion {
        Completion::Accepted => {
            finish(state, command_id, Outcome::Done(result)).await;
            return;
        }
        Completion::WrongHost { owner } => (
            "forged_reply",
            format!(
                "host {host_id} replied to command {command_id}, which was addressed to host {owner}; the reply was dropped"
            ),
        ),
        Completion::AlreadyFinished { state } => (
            "replayed_reply",
            format!(
                "host {host_id} replied again to command {command_id}, already {state}; the reply was dropped"
            ),
        ),
        Completion::Unknown => (
            "unknown_reply",
            format!(
                "host {host_id} replied to command {command_id:?}, which does not exist; the reply was dropped"
            ),
        ),
    };
    tracing::warn!(host = %host_id, command = %command_id, kind = event.0, "{}", event.1);
    let _ = state
        .store
        .record_event(now, event.0, Some(host_id), &event.1)
        .await;
}

/// Commands a (re)connected host has not finished, marked sent as they go out.
pub async fn backlog(state: &AppState, host_id: &str) -> Vec<Command> {
    match state.store.open_commands(host_id, now_unix()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot load a host's pending commands");
            Vec::new()
        }
    }
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
                for id in ids {
                    finish(&state, &id, Outcome::Expired).await;
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
                finish(state, &id, failed).await;
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot fail a removed host's commands"),
    }
}
