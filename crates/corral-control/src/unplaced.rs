//! Replicas that cannot be placed, summarised: grouped by reason, with counts and the first
//! few slots named, so that what the server keeps and says about them is bounded however
//! many replicas there are. A service keeps at most [`MAX_REASONS`] distinct reasons of at
//! most [`MAX_REASON_BYTES`] each (further reasons are only counted); a refusal lists at most
//! [`MAX_SERVICES_LISTED`] services and counts the rest.

use std::collections::BTreeMap;

/// Distinct reasons kept per service.
pub const MAX_REASONS: usize = 3;
/// Slots named per reason.
pub const MAX_SLOTS_NAMED: usize = 3;
/// Longest reason kept, in bytes.
pub const MAX_REASON_BYTES: usize = 512;
/// Services listed in [`refusal`]; the rest are counted.
pub const MAX_SERVICES_LISTED: usize = 10;

/// One reason and the replicas it keeps out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// Why no host takes these replicas ("no host fits — h1 lacks label zone=eu; …").
    pub text: String,
    /// How many replicas this reason keeps out.
    pub count: u64,
    /// The first [`MAX_SLOTS_NAMED`] of them.
    pub slots: Vec<u32>,
}

/// A service's replicas that cannot be placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unplaced {
    /// How many in all.
    pub count: u64,
    /// In order of first appearance.
    pub reasons: Vec<Reason>,
    /// Replicas kept out by reasons beyond the first [`MAX_REASONS`].
    pub other: u64,
}

impl Unplaced {
    /// Counts replica `slot`, kept out for `reason`.
    pub fn add(&mut self, slot: u32, reason: &str) {
        self.count += 1;
        let reason = clip(reason, MAX_REASON_BYTES);
        if let Some(r) = self.reasons.iter_mut().find(|r| r.text == reason) {
            r.count += 1;
            if r.slots.len() < MAX_SLOTS_NAMED {
                r.slots.push(slot);
            }
        } else if self.reasons.len() < MAX_REASONS {
            self.reasons.push(Reason {
                text: reason,
                count: 1,
                slots: vec![slot],
            });
        } else {
            self.other += 1;
        }
    }

    /// At most [`MAX_REASONS`] + 1 lines: `web.1, web.2, web.3 and 997 more: no host fits —
    /// …`, and how many more there are for other reasons.
    pub fn lines(&self, service: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .reasons
            .iter()
            .map(|r| {
                let named: Vec<String> = r.slots.iter().map(|s| format!("{service}.{s}")).collect();
                let more = r.count.saturating_sub(named.len() as u64);
                let mut slots = named.join(", ");
                if more > 0 {
                    slots.push_str(&format!(" and {} more", thousands(more)));
                }
                format!("{slots}: {}", r.text)
            })
            .collect();
        if self.other > 0 {
            out.push(format!(
                "{service}: {} more {} for other reasons",
                thousands(self.other),
                replicas(self.other)
            ));
        }
        out
    }
}

/// Why a stack cannot be placed, bounded: the total, then the lines of the first
/// [`MAX_SERVICES_LISTED`] services with replicas left out, then how many more services and
/// replicas there are.
pub fn refusal(unplaced: &BTreeMap<String, Unplaced>) -> String {
    let total: u64 = unplaced.values().map(|u| u.count).sum();
    let services = unplaced.values().filter(|u| u.count > 0).count();
    let mut out = format!(
        "{} {} of {} {} cannot be placed:",
        thousands(total),
        replicas(total),
        thousands(services as u64),
        if services == 1 { "service" } else { "services" }
    );
    let mut listed = 0;
    let mut rest = 0;
    for (service, u) in unplaced.iter().filter(|(_, u)| u.count > 0) {
        if listed < MAX_SERVICES_LISTED {
            listed += 1;
            for line in u.lines(service) {
                out.push_str("\n  ");
                out.push_str(&line);
            }
        } else {
            rest += u.count;
        }
    }
    if services > listed {
        let more = services - listed;
        out.push_str(&format!(
            "\n  … and {} more {} with {} {} that cannot be placed",
            thousands(more as u64),
            if more == 1 { "service" } else { "services" },
            thousands(rest),
            replicas(rest)
        ));
    }
    out
}

fn replicas(n: u64) -> &'static str {
    if n == 1 { "replica" } else { "replicas" }
}

pub use corral_scheduler::thousands;

/// `s` cut to at most `max` bytes on a character boundary, ending in an ellipsis when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut keep = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}…", &s[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_replica_reads_as_before() {
        let mut u = Unplaced::default();
        u.add(3, "no host fits — h1 lacks label zone=eu");
        assert_eq!(
            u.lines("web"),
            ["web.3: no host fits — h1 lacks label zone=eu"]
        );
    }

    #[test]
    fn identical_reasons_are_grouped_with_counts() {
        let mut u = Unplaced::default();
        for slot in 1..=1000 {
            u.add(slot, "no host fits — there are no hosts");
        }
        assert_eq!(
            u.lines("web"),
            ["web.1, web.2, web.3 and 997 more: no host fits — there are no hosts"]
        );
        assert_eq!(u.count, 1000);
    }

    #[test]
    fn reasons_beyond_the_first_few_are_counted() {
        let mut u = Unplaced::default();
        for slot in 1..=100 {
            u.add(slot, &format!("reason {slot}"));
        }
        let lines = u.lines("web");
        assert_eq!(lines.len(), MAX_REASONS + 1);
        assert_eq!(
            lines[MAX_REASONS],
            "web: 97 more replicas for other reasons"
        );
        assert_eq!(u.reasons.len(), MAX_REASONS);
    }

    #[test]
    fn a_long_reason_is_cut() {
        let mut u = Unplaced::default();
        u.add(1, &"é".repeat(10_000));
        assert!(u.reasons[0].text.len() <= MAX_REASON_BYTES);
        assert!(u.reasons[0].text.ends_with('…'));
    }

    #[test]
    fn a_refusal_lists_a_few_services_and_counts_the_rest() {
        let mut all = BTreeMap::new();
        for s in 0..5000 {
            let mut u = Unplaced::default();
            for slot in 1..=1000 {
                u.add(slot, "no host fits — there are no hosts");
            }
            all.insert(format!("s{s:04}"), u);
        }
        let text = refusal(&all);
        assert!(
            text.starts_with("5,000,000 replicas of 5,000 services cannot be placed:\n  s0000.1, s0000.2, s0000.3 and 997 more: no host fits — there are no hosts\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "\n  … and 4,990 more services with 4,990,000 replicas that cannot be placed"
            ),
            "{text}"
        );
        assert!(text.len() < 2048, "{}", text.len());
    }
}
