//! Heartbeats as a state machine: the caller feeds it arrivals and the current time and carries
//! out what it asks for. No timers or clocks inside, so every timeout is testable without
//! sleeping.

use std::time::{Duration, Instant};

/// What the connection should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send a ping with this sequence number.
    Ping(u64),
    /// Nothing arrived within the dead-after window: close the link.
    Dead,
}

/// One connection's heartbeat state: when to send a ping, and when the link is dead.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// `None` on the passive side (the server), which only watches for silence.
    ping_every: Option<Duration>,
    dead_after: Duration,
    last_rx: Instant,
    next_ping: Option<Instant>,
    seq: u64,
    in_flight: Option<(u64, Instant)>,
}

impl Liveness {
    /// The active side: pings every `ping_every`, dead after `dead_after` of silence.
    pub fn active(now: Instant, ping_every: Duration, dead_after: Duration) -> Self {
        Liveness {
            ping_every: Some(ping_every),
            dead_after,
            last_rx: now,
            next_ping: Some(now + ping_every),
            seq: 0,
            in_flight: None,
        }
    }

    /// The passive side: answers pings (the caller does that) and watches for silence.
    pub fn passive(now: Instant, dead_after: Duration) -> Self {
        Liveness {
            ping_every: None,
            dead_after,
            last_rx: now,
            next_ping: None,
            seq: 0,
            in_flight: None,
        }
    }

    /// Any frame arrived: the link is alive.
    pub fn on_receive(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// A pong arrived. Returns the round-trip time if it answers the ping in flight.
    pub fn on_pong(&mut self, now: Instant, seq: u64) -> Option<Duration> {
        self.on_receive(now);
        match self.in_flight {
            Some((s, sent)) if s == seq => {
                self.in_flight = None;
                Some(now.saturating_duration_since(sent))
            }
            _ => None,
        }
    }

    /// What is due at `now`, if anything. Call again until it returns `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Due> {
        if now.saturating_duration_since(self.last_rx) >= self.dead_after {
            return Some(Due::Dead);
        }
        match (self.next_ping, self.ping_every) {
            (Some(at), Some(every)) if now >= at => {
                self.seq += 1;
                self.in_flight = Some((self.seq, now));
                self.next_ping = Some(now + every);
                Some(Due::Ping(self.seq))
            }
            _ => None,
        }
    }

    /// The next instant at which [`Liveness::poll`] may have something to do.
    pub fn next_deadline(&self) -> Instant {
        let dead = self.last_rx + self.dead_after;
        match self.next_ping {
            Some(p) if p < dead => p,
            _ => dead,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn pings_on_schedule_and_measures_rtt() {
        let t0 = Instant::now();
        let mut l = Liveness::active(t0, 15 * S, 45 * S);
        assert_eq!(l.poll(t0), None);
        assert_eq!(l.next_deadline(), t0 + 15 * S);
        assert_eq!(l.poll(t0 + 15 * S), Some(Due::Ping(1)));
        assert_eq!(l.poll(t0 + 15 * S), None);
        assert_eq!(l.on_pong(t0 + 16 * S, 1), Some(S));
        assert_eq!(l.on_pong(t0 + 16 * S, 1), None, "a pong counts once");
        assert_eq!(l.poll(t0 + 30 * S), Some(Due::Ping(2)));
    }

    #[test]
    fn silence_is_noticed_within_dead_after() {
        let t0 = Instant::now();
        let mut l = Liveness::active(t0, 15 * S, 45 * S);
        assert_eq!(l.poll(t0 + 15 * S), Some(Due::Ping(1)));
        assert_eq!(l.poll(t0 + 30 * S), Some(Due::Ping(2)));
        assert_eq!(l.poll(t0 + 44 * S), None);
        assert_eq!(l.poll(t0 + 45 * S), Some(Due::Dead));
    }

    #[test]
    fn passive_side_only_watches() {
        let t0 = Instant::now();
        let mut l = Liveness::passive(t0, 45 * S);
        assert_eq!(l.poll(t0 + 44 * S), None);
        l.on_receive(t0 + 44 * S);
        assert_eq!(l.poll(t0 + 88 * S), None);
        assert_eq!(l.next_deadline(), t0 + 89 * S);
        assert_eq!(l.poll(t0 + 89 * S), Some(Due::Dead));
    }
}
