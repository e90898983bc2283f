//! Bounded text: what the server writes down of strings it did not choose (ids, names and
//! messages sent by agents or API callers) is cut to a known size, saying how long the
//! original was, so that no input can grow a log line, an event or an answer without bound.

use std::borrow::Cow;

/// Longest id (command, stream, container, …) quoted in a message.
pub const MAX_ID: usize = 64;

/// `s` when it is at most `max` bytes; else its start, an ellipsis and its original length
/// (`"cmd-AAAA… (1,048,576 bytes)"`), at most `max` bytes in all (cut on a character
/// boundary). `max` below 32 is taken as 32, room for the suffix.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let suffix = format!("… ({} bytes)", thousands(s.len() as u64));
    let keep = floor_boundary(s, max.max(32).saturating_sub(suffix.len()));
    Cow::Owned(format!("{}{suffix}", &s[..keep]))
}

/// `s` quoted and escaped (as `{:?}` writes it) when it is at most `max` bytes; else its start
/// quoted, then an ellipsis and the original length: `"cmd-AAAA"… (1,048,576 bytes)`.
pub fn quoted(s: &str, max: usize) -> String {
    if s.len() <= max {
        return format!("{s:?}");
    }
    let keep = floor_boundary(s, max);
    format!("{:?}… ({} bytes)", &s[..keep], thousands(s.len() as u64))
}

pub use corral_scheduler::thousands;

/// The largest character boundary of `s` at or below `at`.
fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_as_it_is() {
        assert_eq!(clip("cmd-1", 64), "cmd-1");
        assert_eq!(quoted("cmd-1\n", 64), "\"cmd-1\\n\"");
    }

    #[test]
    fn long_text_is_cut_to_the_bound_and_says_how_long_it_was() {
        let long = "A".repeat(1_048_576);
        let c = clip(&long, 64);
        assert!(c.len() <= 64, "{c}");
        assert!(c.ends_with("… (1,048,576 bytes)"), "{c}");
        assert!(c.starts_with("AAAA"));
        let c = clip(&long, 1024);
        assert!(c.len() <= 1024 && c.len() > 1000, "{}", c.len());
        let q = quoted(&long, 64);
        assert_eq!(q, format!("\"{}\"… (1,048,576 bytes)", "A".repeat(64)));
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        let s = "é".repeat(100);
        for max in 0..80 {
            let c = clip(&s, max);
            assert!(c.len() <= max.max(32), "{max}: {c}");
            let _ = quoted(&s, max);
        }
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(5123), "5,123");
        assert_eq!(thousands(4_999_000), "4,999,000");
    }
}
