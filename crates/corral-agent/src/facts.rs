//! What the agent reports about its host: names, OS, kernel, architecture, labels.

use std::collections::BTreeMap;

use corral_proto::HostFacts;

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

pub fn hostname() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
}

/// `PRETTY_NAME` from `/etc/os-release`, e.g. "Debian GNU/Linux 12 (bookworm)".
pub fn os_name() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| std::env::consts::OS.to_owned())
}

/// Turns a hostname into a valid corral host name (lowercase DNS label).
pub fn default_name(hostname: &str) -> String {
    let mut name: String = hostname
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(corral_proto::limits::NAME_MAX)
        .collect();
    name = name.trim_matches('-').to_owned();
    if name.is_empty() {
        "host".to_owned()
    } else {
        name
    }
}

pub fn collect(
    name: String,
    labels: BTreeMap<String, String>,
    overlay_port: Option<u16>,
    overlay_public_key: Option<String>,
) -> HostFacts {
    HostFacts {
        name,
        hostname: hostname(),
        labels,
        os: os_name(),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        arch: std::env::consts::ARCH.to_owned(),
        overlay_port,
        overlay_public_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_hostnames() {
        assert_eq!(default_name("Web_01.example.com"), "web-01");
        assert_eq!(default_name("---"), "host");
        assert!(corral_proto::validate_host_name(&default_name(&"x".repeat(200))).is_ok());
    }
}
