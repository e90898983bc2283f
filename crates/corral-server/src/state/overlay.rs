//! The overlay sync's memory: each environment's overlay as its hosts were last told
//! (`corral_control::overlay::EnvView`) and its name table, what each live connection holds,
//! and the change counters and registry generation of the last pass, so that a pass with
//! nothing new does no work per host.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use corral_control::overlay::EnvView;
use corral_proto::NameTable;
use tokio::sync::Notify;

use crate::store::ChangeCounters;

/// What the sync loop remembers between passes.
#[derive(Default)]
pub struct OverlaySync {
    pub(crate) wake: Notify,
    memory: Mutex<SyncMemory>,
    /// Held while a lease is chosen and written: connects allocating at the same time would
    /// all pick the same first free subnet, and all but one would read the leases again.
    pub(crate) leasing: tokio::sync::Mutex<()>,
}

/// An environment's name table, with the counter it was read at and its digest.
#[derive(Debug, Default)]
pub struct EnvNames {
    pub counter: i64,
    pub digest: u64,
    pub table: NameTable,
}

/// An environment's network policy message, with the counter it was read at and its digest.
#[derive(Debug)]
pub struct EnvPolicy {
    pub counter: i64,
    pub digest: u64,
    pub message: corral_proto::NetworkPolicy,
}

/// See [`OverlaySync`].
#[derive(Default)]
pub struct SyncMemory {
    /// Per environment: the overlay as last computed, and the counter it was computed at.
    pub views: HashMap<String, (i64, EnvView)>,
    pub names: HashMap<String, EnvNames>,
    /// Per host: (connection, overlay version it holds).
    pub sent: HashMap<String, (u64, u64)>,
    /// Per host: (connection, digest of the name table it holds).
    pub names_sent: HashMap<String, (u64, u64)>,
    pub policies: HashMap<String, EnvPolicy>,
    /// Per host: (connection, digest of the network policy it holds).
    pub policies_sent: HashMap<String, (u64, u64)>,
    /// The counters and the registry generation the last complete pass saw.
    pub seen: Option<(HashMap<String, ChangeCounters>, u64)>,
}

impl OverlaySync {
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn memory(&self) -> MutexGuard<'_, SyncMemory> {
        // Only plain inserts and removes happen under this lock: a poisoned one is usable.
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }
}
