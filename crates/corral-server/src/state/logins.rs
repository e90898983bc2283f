//! What slows a password guesser down, besides the per-account lock the datastore keeps
//! (`Store::login_failed`): failed logins per source address are counted in a window, and a
//! source past the limit is refused (429) until the window ends; password hashes are checked at
//! most [`HASHES_AT_ONCE`] at a time, so a flood of logins costs the server two cores' worth of
//! argon2 at most, not all of its memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Failed logins before an account is locked…
pub const FREE_FAILURES: i64 = 5;
/// …for this long, doubled with each further failure…
pub const BASE_LOCK_SECS: i64 = 30;
/// …up to this long.
pub const MAX_LOCK_SECS: i64 = 900;
/// Failed logins one source address may make per window.
pub const SOURCE_FAILURES: u32 = 20;
/// The window of [`SOURCE_FAILURES`], in seconds.
pub const SOURCE_WINDOW_SECS: i64 = 60;
/// Sources tracked at once; beyond, the oldest window is forgotten.
const MAX_SOURCES: usize = 10_000;
/// argon2 verifications at once.
pub const HASHES_AT_ONCE: usize = 2;

pub struct LoginLimiter {
    sources: Mutex<HashMap<IpAddr, (i64, u32)>>,
    pub hashing: tokio::sync::Semaphore,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            sources: Mutex::new(HashMap::new()),
            hashing: tokio::sync::Semaphore::new(HASHES_AT_ONCE),
        }
    }
}

impl LoginLimiter {
    /// When the source may try again, if it is over its limit now.
    pub fn blocked_until(&self, source: IpAddr, now: i64) -> Option<i64> {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let (start, failures) = *sources.get(&source)?;
        (now < start + SOURCE_WINDOW_SECS && failures >= SOURCE_FAILURES)
            .then_some(start + SOURCE_WINDOW_SECS)
    }

    pub fn failed(&self, source: IpAddr, now: i64) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if !sources.contains_key(&source) && sources.len() >= MAX_SOURCES {
            sources.retain(|_, (start, _)| now < *start + SOURCE_WINDOW_SECS);
            if sources.len() >= MAX_SOURCES
                && let Some(oldest) = sources
                    .iter()
                    .min_by_key(|(_, (s, _))| *s)
                    .map(|(ip, _)| *ip)
            {
                sources.remove(&oldest);
            }
        }
        let entry = sources.entry(source).or_insert((now, 0));
        if now >= entry.0 + SOURCE_WINDOW_SECS {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_blocked_for_the_rest_of_its_window() {
        let l = LoginLimiter::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..SOURCE_FAILURES {
            assert_eq!(l.blocked_until(ip, 100), None);
            l.failed(ip, 100);
        }
        assert_eq!(l.blocked_until(ip, 130), Some(160));
        assert_eq!(l.blocked_until(ip, 160), None);
        l.failed(ip, 161);
        assert_eq!(l.blocked_until(ip, 161), None);
    }
}
