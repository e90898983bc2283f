//! What a long `corral up` is doing while the CLI waits for its answer — a build's output
//! as the host sends it, which context goes where — kept under an id the CLI chose and
//! polls (`GET /v1/progress/ID`). In memory, bounded: at most 256 logs of at most 2,000
//! lines, each forgotten 10 minutes after its last line.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_LOGS: usize = 256;
const MAX_LINES: usize = 2000;
const KEEP: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Log {
    /// Lines dropped from the front (so `after` offsets stay valid).
    dropped: usize,
    lines: Vec<String>,
    touched: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    logs: HashMap<String, Log>,
    /// Build id → (progress id, prefix for its lines).
    builds: HashMap<String, (String, String)>,
}

#[derive(Default)]
pub struct ProgressLog {
    inner: Mutex<Inner>,
}

/// A progress id: 16 to 64 letters, digits and dashes (the CLI makes a random one).
pub fn valid_id(id: &str) -> bool {
    (16..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl ProgressLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a line to log `id` (made if new).
    pub fn push(&self, id: &str, line: String) {
        let mut inner = self.lock();
        let now = Instant::now();
        inner
            .logs
            .retain(|_, l| l.touched.is_some_and(|t| now.duration_since(t) < KEEP));
        if inner.logs.len() >= MAX_LOGS
            && !inner.logs.contains_key(id)
            && let Some(oldest) = inner
                .logs
                .iter()
                .min_by_key(|(_, l)| l.touched)
                .map(|(k, _)| k.clone())
        {
            inner.logs.remove(&oldest);
        }
        let log = inner.logs.entry(id.to_owned()).or_default();
        log.lines.push(line);
        log.touched = Some(now);
        if log.lines.len() > MAX_LINES {
            let cut = log.lines.len() - MAX_LINES;
            log.lines.drain(..cut);
            log.dropped += cut;
        }
        let live: std::collections::HashSet<String> = inner.logs.keys().cloned().collect();
        inner.builds.retain(|_, (p, _)| live.contains(p));
    }

    /// The lines of build `build_id` go to log `id`, each prefixed.
    pub fn link_build(&self, build_id: &str, id: &str, prefix: &str) {
        self.lock()
            .builds
            .insert(build_id.to_owned(), (id.to_owned(), prefix.to_owned()));
    }

    /// Lines of a build's output, from its host.
    pub fn build_lines(&self, build_id: &str, lines: Vec<String>) {
        let target = self.lock().builds.get(build_id).cloned();
        if let Some((id, prefix)) = target {
            for l in lines {
                self.push(&id, format!("{prefix}{l}"));
            }
        }
    }

    /// The lines of log `id` from line `after` on, and the offset to ask from next.
    pub fn read(&self, id: &str, after: usize) -> (Vec<String>, usize) {
        let inner = self.lock();
        let Some(log) = inner.logs.get(id) else {
            return (Vec::new(), after);
        };
        let start = after.saturating_sub(log.dropped).min(log.lines.len());
        (log.lines[start..].to_vec(), log.dropped + log.lines.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_from_an_offset_and_the_log_stays_bounded() {
        let p = ProgressLog::default();
        let id = "0123456789abcdef";
        p.push(id, "a".into());
        p.link_build("bld-1", id, "api | ");
        p.build_lines("bld-1", vec!["Step 1/2".into()]);
        p.build_lines("bld-unknown", vec!["lost".into()]);
        assert_eq!(
            p.read(id, 0),
            (vec!["a".to_string(), "api | Step 1/2".into()], 2)
        );
        assert_eq!(p.read(id, 2), (vec![], 2));
        for i in 0..MAX_LINES + 10 {
            p.push(id, format!("{i}"));
        }
        let (lines, next) = p.read(id, 0);
        assert_eq!(lines.len(), MAX_LINES);
        assert_eq!(next, MAX_LINES + 12);
        assert!(valid_id(id));
        assert!(!valid_id("short"));
        assert!(!valid_id("0123456789abcdef/.."));
    }
}
