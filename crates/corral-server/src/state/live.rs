//! The web UI's live feed: a stamp of everything a page shows, which browsers follow over
//! server-sent events (`GET /v1/live`) and answer by reading the page's data again. One loop
//! (`crate::live::run`) reads the stamp once a second while anyone follows it, so the cost of
//! N open browsers is one small read a second, not N; nobody following costs nothing.

use tokio::sync::watch;

/// What the live loop last saw. It changes whenever hosts connect or leave, containers or
/// stacks change, or an event is recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveStamp {
    /// Change counters of every environment (membership, names, policy), summed.
    pub counters: i64,
    /// The registry's generation (tunnels opened and closed).
    pub sessions: u64,
    /// The newest event's number.
    pub last_event: i64,
    /// Stacks: how many, and their last changes summed.
    pub stacks: (i64, i64),
}

/// The feed: the newest stamp with a version that browsers are told.
pub struct LiveFeed {
    sender: watch::Sender<u64>,
    last: std::sync::Mutex<Option<LiveStamp>>,
}

impl Default for LiveFeed {
    fn default() -> Self {
        LiveFeed {
            sender: watch::channel(0).0,
            last: std::sync::Mutex::new(None),
        }
    }
}

impl LiveFeed {
    /// A new follower: it sees every later version (intermediate ones may be skipped).
    pub fn follow(&self) -> watch::Receiver<u64> {
        self.sender.subscribe()
    }

    /// Whether anyone follows the feed (the loop reads nothing otherwise).
    pub fn followed(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// How many follow it.
    pub fn followers(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Records a stamp; followers are told only when it differs from the previous one.
    pub fn observe(&self, stamp: LiveStamp) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == Some(stamp) {
            return;
        }
        *last = Some(stamp);
        self.sender.send_modify(|v| *v += 1);
    }
}
