//! The reconciler's memory between passes: each stack's last status (for `ps`), each
//! service's back-off and update timing, and which containers have a command under way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use corral_control::reconcile::ServiceMemory;
use corral_control::unplaced::Unplaced;
use tokio::sync::Notify;

use crate::time_fmt::now_unix;

const BACKOFF_START_MS: i64 = 1_000;
const BACKOFF_MAX_MS: i64 = 30_000;
/// Longest start failure kept per service (it comes from the host).
const MAX_LAST_ERROR: usize = 1024;

/// What the reconciler learnt in its last pass over a stack (for `corral ps`).
#[derive(Debug, Clone, Default)]
pub struct StackStatus {
    /// Per service, grouped by reason and bounded (`corral_control::unplaced`).
    pub unplaced: BTreeMap<String, Unplaced>,
    pub waiting: BTreeMap<String, String>,
    /// Why the stack is not reconciled: its stored definition cannot be read.
    pub unreadable: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct ServiceState {
    pub(crate) memory: ServiceMemory,
    backoff_ms: i64,
    last_error: Option<String>,
}

#[derive(Default)]
pub(crate) struct Inner {
    /// (stack id, service) → memory.
    pub(crate) services: HashMap<(String, String), ServiceState>,
    /// Containers with a command under way.
    pub(crate) in_flight: HashSet<String>,
    pub(crate) status: HashMap<String, StackStatus>,
    /// What each container's stored spec says that placement needs, read once per container
    /// (a container's spec never changes): `None` when it does not read. Replicas made by
    /// a pass are entered as they are made, so their specs are never read back.
    pub(crate) specs: HashMap<String, Option<Arc<SpecFacts>>>,
    /// Containers entered in `specs` since the last pass ended: kept by that pass's clean-up
    /// although the world it gathered does not hold them yet.
    pub(crate) fresh: HashSet<String>,
    /// Stacks whose removal is being finished (their hosts clean up, then the row goes).
    pub(crate) finishing: HashSet<String>,
}

/// What placement needs of a container's spec. Equal facts share one allocation (all the
/// replicas of a service have the same).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SpecFacts {
    /// Host ports it publishes.
    pub ports: Vec<corral_scheduler::HostPort>,
    /// It takes an address of its host's overlay subnet (when it is a stack's).
    pub overlay: bool,
}

#[derive(Default)]
pub struct Reconciler {
    pub(crate) wake: Notify,
    inner: Mutex<Inner>,
}

impl Reconciler {
    /// Asks for a pass now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new definition was stored: what made the stack unreadable is gone.
    pub fn definition_replaced(&self, stack_id: &str) {
        if let Some(s) = self.lock().status.get_mut(stack_id) {
            s.unreadable = None;
        }
        self.wake();
    }

    pub fn status(&self, stack_id: &str) -> Option<StackStatus> {
        self.lock().status.get(stack_id).cloned()
    }

    pub fn last_error(&self, stack_id: &str, service: &str) -> Option<String> {
        self.lock()
            .services
            .get(&(stack_id.to_owned(), service.to_owned()))
            .and_then(|s| s.last_error.clone())
    }

    pub(crate) fn finished(&self, container_id: &str) {
        self.lock().in_flight.remove(container_id);
        self.wake();
    }

    pub(crate) fn failed_start(&self, stack_id: &str, service: &str, message: String) {
        let now_ms = now_unix() * 1000;
        let mut inner = self.lock();
        let s = inner
            .services
            .entry((stack_id.to_owned(), service.to_owned()))
            .or_default();
        s.backoff_ms = (s.backoff_ms * 2).clamp(BACKOFF_START_MS, BACKOFF_MAX_MS);
        s.memory.not_before_ms = now_ms + s.backoff_ms;
        s.last_error = Some(crate::text::clip(&message, MAX_LAST_ERROR).into_owned());
    }

    pub(crate) fn started(&self, stack_id: &str, service: &str) {
        let mut inner = self.lock();
        if let Some(s) = inner
            .services
            .get_mut(&(stack_id.to_owned(), service.to_owned()))
        {
            s.backoff_ms = 0;
            s.memory.not_before_ms = 0;
            s.last_error = None;
        }
    }
}
