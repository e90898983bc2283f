//! The overlay sync's memory: what each live connection last received, so a configuration
//! or a name table is sent only when it changed for that connection.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

/// What the sync loop remembers: the configuration each live connection last received.
#[derive(Default)]
pub struct OverlaySync {
    pub(crate) wake: Notify,
    sent: Mutex<HashMap<String, (u64, u64)>>,
    /// The name table each live connection last received.
    names_sent: Mutex<HashMap<String, (u64, u64)>>,
}

impl OverlaySync {
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn sent(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64)>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn names_sent(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64)>> {
        self.names_sent.lock().unwrap_or_else(|p| p.into_inner())
    }
}
