//! Reconnect delays: exponential growth with "full jitter" (a uniformly random delay between
//! zero and the exponential ceiling), so a fleet of agents that lost the server at the same
//! moment does not come back in lockstep. The randomness is an argument, so tests are exact.

use std::time::Duration;

/// One agent's reconnect delays: the ceiling doubles with every attempt, up to a cap, and
/// falls back to the base after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`; no ceiling exceeds `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling for the next attempt: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next attempt, given a uniformly random `u64`.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let ceiling = self.ceiling().as_millis() as u64;
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(if ceiling == 0 {
            0
        } else {
            random % (ceiling + 1)
        })
    }

    /// A connection succeeded: start again from the base.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ceiling_grows_then_caps() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let ceilings: Vec<u64> = (0..10)
            .map(|_| {
                let c = b.ceiling().as_millis() as u64;
                b.next_delay(0);
                c
            })
            .collect();
        assert_eq!(
            ceilings,
            [
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    proptest! {
        #[test]
        fn delay_within_ceiling(randoms in proptest::collection::vec(any::<u64>(), 1..100)) {
            let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
            for r in randoms {
                let ceiling = b.ceiling();
                let d = b.next_delay(r);
                prop_assert!(d <= ceiling);
                prop_assert!(d <= Duration::from_secs(30));
            }
        }
    }
}
