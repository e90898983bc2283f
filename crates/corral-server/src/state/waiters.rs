//! Who waits for which command's outcome. A command's outcome goes to its waiter; one nobody
//! waits for any more (the waiter gave up, or the server restarted since it was submitted)
//! goes to the hook the server installs at start, so the datastore learns it all the same.
//! The hook is how `dispatch` hands outcomes up without importing the modules that own them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use corral_proto::CommandResult;
use tokio::sync::oneshot;

use super::AppState;

/// The end state of a command, as a waiter sees it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The host answered.
    Done(CommandResult),
    /// The deadline passed without an answer.
    Expired,
}

/// Settles an outcome nobody waits for: `(state, command id, outcome)`.
pub type UnwatchedHook =
    for<'a> fn(&'a AppState, &'a str, Outcome) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

#[derive(Default)]
pub struct Waiters {
    waiting: Mutex<HashMap<String, Waiting>>,
    unwatched: OnceLock<UnwatchedHook>,
}

/// A command this server submitted, until it is settled.
pub struct Waiting {
    pub tx: oneshot::Sender<Outcome>,
    /// Its kind and when it was submitted: the metrics' command latency.
    pub kind: &'static str,
    pub since: Instant,
}

impl Waiters {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<String, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs the hook for outcomes nobody waits for (once, at start).
    pub fn on_unwatched(&self, hook: UnwatchedHook) {
        let _ = self.unwatched.set(hook);
    }

    /// Hands the outcome to whoever waits for it, or else to the hook.
    pub async fn settle(&self, state: &AppState, id: &str, outcome: Outcome) {
        let unwatched = match self.lock().remove(id) {
            Some(w) => {
                let result = match outcome {
                    Outcome::Done(_) => "done",
                    Outcome::Expired => "expired",
                };
                state
                    .metrics
                    .command_settled(w.kind, result, w.since.elapsed());
                w.tx.send(outcome).err()
            }
            None => Some(outcome),
        };
        if let (Some(outcome), Some(hook)) = (unwatched, self.unwatched.get()) {
            hook(state, id, outcome).await;
        }
    }
}
