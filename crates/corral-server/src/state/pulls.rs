//! Pulls in progress, as agents report them: what `corral ps` and `corral up --wait` show
//! beside a replica whose image is still coming. In memory only (a restarted server learns of
//! a pull again from its next report) and bounded: the oldest entry goes when the table is
//! full, and a finished pull is forgotten a minute later.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use corral_proto::PullProgress;

/// Most pulls remembered at once.
pub const MAX_PULLS: usize = 10_000;

/// How long a finished (or silent) pull stays visible.
const KEEP: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Pulls {
    inner: Mutex<HashMap<(String, String), (PullProgress, Instant)>>,
}

impl Pulls {
    /// Records a report from `host_id`.
    pub fn record(&self, host_id: &str, progress: PullProgress) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        inner.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
        let key = (
            host_id.to_owned(),
            progress
                .corral_id
                .clone()
                .unwrap_or_else(|| progress.image.clone()),
        );
        if inner.len() >= MAX_PULLS
            && !inner.contains_key(&key)
            && let Some(oldest) = inner
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            inner.remove(&oldest);
        }
        inner.insert(key, (progress, now));
    }

    /// The latest report of the pull for container `corral_id` on `host_id`, while it runs.
    pub fn of_container(&self, host_id: &str, corral_id: &str) -> Option<PullProgress> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .get(&(host_id.to_owned(), corral_id.to_owned()))
            .filter(|(p, at)| !p.done && at.elapsed() < KEEP)
            .map(|(p, _)| p.clone())
    }
}

/// `pulling 198.18.0.9:5000/app@sha256:… 12.3 of 40.0 MB, 2 of 5 layers`.
pub fn describe(p: &PullProgress) -> String {
    let mb = |b: u64| b as f64 / 1_000_000.0;
    if p.total_bytes == 0 {
        format!("pulling {} ({} layers so far)", p.image, p.layers)
    } else {
        format!(
            "pulling {}: {:.1} of {:.1} MB, {} of {} layers",
            p.image,
            mb(p.downloaded_bytes),
            mb(p.total_bytes),
            p.layers_done,
            p.layers
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(id: &str, done: bool) -> PullProgress {
        PullProgress {
            corral_id: Some(id.into()),
            image: "r/app@sha256:x".into(),
            downloaded_bytes: 1_500_000,
            total_bytes: 3_000_000,
            layers_done: 1,
            layers: 2,
            done,
        }
    }

    #[test]
    fn a_pull_shows_while_it_runs_and_the_table_stays_bounded() {
        let pulls = Pulls::default();
        pulls.record("h1", progress("ctr-1", false));
        let p = pulls.of_container("h1", "ctr-1").unwrap();
        assert_eq!(
            describe(&p),
            "pulling r/app@sha256:x: 1.5 of 3.0 MB, 1 of 2 layers"
        );
        assert!(pulls.of_container("h2", "ctr-1").is_none());
        pulls.record("h1", progress("ctr-1", true));
        assert!(pulls.of_container("h1", "ctr-1").is_none());
        for i in 0..MAX_PULLS + 10 {
            pulls.record("h1", progress(&format!("ctr-{i}"), false));
        }
        assert_eq!(pulls.inner.lock().unwrap().len(), MAX_PULLS);
    }
}
