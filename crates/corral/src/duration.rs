//! Human durations on the command line: `90s`, `30m`, `24h`, `7d`, `500ms`.

use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} needs a unit: ms, s, m, h or d (e.g. 30m)"))?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {text:?} must start with a whole number"))?;
    let secs_per = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "duration {text:?}: unknown unit {unit:?}; use ms, s, m, h or d"
            ));
        }
    };
    n.checked_mul(secs_per)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

/// A token lifetime: a duration, or `never` (0).
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    if matches!(text.trim(), "never" | "0") {
        return Ok(0);
    }
    let d = parse_duration(text)?;
    if d.as_secs() == 0 {
        return Err("a token lifetime must be at least 1s (or \"never\")".into());
    }
    Ok(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "10", "h", "1y", "-1s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_ttl("never").unwrap(), 0);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert!(parse_ttl("0s").is_err());
    }
}
