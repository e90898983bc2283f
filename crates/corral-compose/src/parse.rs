//! Small parsers for Compose value syntaxes: durations, byte sizes, CPU counts, shell words,
//! ports, exposed ports, volumes, restart policies, placement constraints, pull policies,
//! capabilities, network and PID modes, and devices.
//! Each returns a message for people on failure; the caller adds file, line and key path.

use std::net::IpAddr;
use std::time::Duration;

use crate::model::{
    Constraint, ConstraintAttribute, ConstraintOp, Device, Expose, NetworkMode, Port, PortRange,
    Protocol, PullPolicy, RestartPolicy,
};

/// Go-style durations as Compose writes them: `1h30m`, `10s`, `1.5s`, `500ms`, `0`.
pub fn duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let bad = || format!("`{s}` is not a duration (like `10s`, `1m30s`, `500ms`)");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_digit() || c == '.'))
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .char_indices()
            .find(|&(_, c)| c.is_ascii_digit() || c == '.')
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += number * factor;
    }
    if !total.is_finite() || total > 100.0 * 365.0 * 86400.0 {
        return Err(format!("`{s}` is too long a duration"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Byte sizes: `512m`, `1g`, `1.5GB`, `100k`, `2048` (bytes); units are powers of 1024.
pub fn bytes(s: &str) -> Result<u64, String> {
    let text = s.trim().to_ascii_lowercase();
    let bad = || format!("`{s}` is not a size (like `512m`, `1g`, `1048576`)");
    let num_len = text
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_digit() || c == '.'))
        .map(|(i, _)| i)
        .unwrap_or(text.len());
    let number: f64 = text[..num_len].parse().map_err(|_| bad())?;
    let factor: f64 = match text[num_len..].trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let value = number * factor;
    if !value.is_finite() || value < 0.0 || value > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok(value.round() as u64)
}

/// CPU counts (`0.5`, `2`) to thousandths of a CPU.
pub fn cpu_millis(x: f64) -> Result<u64, String> {
    if !x.is_finite() || !(0.0..=1_000_000.0).contains(&x) {
        return Err(format!("`{x}` is not a CPU count (like `0.5` or `2`)"));
    }
    Ok((x * 1000.0).round() as u64)
}

/// Splits a command string into words like a POSIX shell would, without any expansion:
/// whitespace separates words, quotes group, backslash escapes.
pub fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => current.push(c),
                        None => return Err(format!("unterminated single quote in `{s}`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => current.push(c),
                            Some(c) => {
                                current.push('\\');
                                current.push(c);
                            }
                            None => return Err(format!("unterminated double quote in `{s}`")),
                        },
                        Some(c) => current.push(c),
                        None => return Err(format!("unterminated double quote in `{s}`")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => current.push(c),
                    None => return Err(format!("trailing backslash in `{s}`")),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

fn port_number(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("`{s}` is not a port number (1-65535)")),
    }
}

/// `80` or `8000-8010`.
pub fn port_range(s: &str) -> Result<PortRange, String> {
    let (start, end) = match s.split_once('-') {
        Some((a, b)) => (port_number(a)?, port_number(b)?),
        None => {
            let p = port_number(s)?;
            (p, p)
        }
    };
    if start > end {
        return Err(format!("port range `{s}` ends before it starts"));
    }
    Ok(PortRange { start, end })
}

pub fn protocol(s: &str) -> Result<Protocol, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => Err(format!("protocol `{other}` is not supported (tcp or udp)")),
    }
}

fn split_protocol(s: &str) -> Result<(&str, Protocol), String> {
    match s.rsplit_once('/') {
        Some((rest, proto)) => Ok((rest, protocol(proto)?)),
        None => Ok((s, Protocol::Tcp)),
    }
}

/// Short port syntax: `[HOST_IP:][HOST[-HOST]:]CONTAINER[-CONTAINER][/PROTOCOL]`.
/// A container range gives one [`Port`] per container port.
pub fn ports_short(s: &str) -> Result<Vec<Port>, String> {
    let (rest, protocol) = split_protocol(s.trim())?;
    let (host_ip, rest) = if let Some(after) = rest.strip_prefix('[') {
        let (ip, after) = after.split_once("]:").ok_or_else(|| {
            format!("`{s}`: an IPv6 host address must be written `[ADDR]:PORT:PORT`")
        })?;
        (Some(ip), after)
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            1 | 2 => (None, rest),
            3 => (
                Some(parts[0]),
                rest.split_once(':').map(|(_, r)| r).unwrap_or(rest),
            ),
            _ => {
                return Err(format!(
                    "`{s}` is not a port mapping (like `8080:80` or `127.0.0.1:8080:80/udp`)"
                ));
            }
        }
    };
    let host_ip = match host_ip {
        Some(ip) if !ip.is_empty() => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| format!("`{ip}` in `{s}` is not an IP address"))?,
        ),
        _ => None,
    };
    let (published, target) = match rest.split_once(':') {
        Some(("", container)) => (None, port_range(container)?),
        Some((host, container)) => (Some(port_range(host)?), port_range(container)?),
        None => (None, port_range(rest)?),
    };
    let target_len = target.end - target.start;
    let mut out = Vec::new();
    for offset in 0..=target_len {
        let published = match published {
            Some(p) if target_len > 0 => {
                if p.end - p.start != target_len {
                    return Err(format!(
                        "`{s}`: the host range and the container range must have the same length"
                    ));
                }
                Some(PortRange {
                    start: p.start + offset,
                    end: p.start + offset,
                })
            }
            other => other,
        };
        out.push(Port {
            published,
            target: target.start + offset,
            protocol,
            host_ip,
        });
    }
    Ok(out)
}

/// `expose:` entries: `3000`, `3000-3005`, `3000/udp`.
pub fn expose(s: &str) -> Result<Expose, String> {
    let (rest, protocol) = split_protocol(s.trim())?;
    Ok(Expose {
        ports: port_range(rest)?,
        protocol,
    })
}

pub fn restart(s: &str) -> Result<RestartPolicy, String> {
    match s.trim() {
        "no" | "" => Ok(RestartPolicy::No),
        "always" => Ok(RestartPolicy::Always),
        "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
        "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: None }),
        other => match other.strip_prefix("on-failure:") {
            Some(n) => n
                .trim()
                .parse::<u32>()
                .map(|n| RestartPolicy::OnFailure {
                    max_retries: Some(n),
                })
                .map_err(|_| format!("`{other}`: the retry count must be a number")),
            None => Err(format!(
                "`{other}` is not a restart policy (no, always, on-failure[:N], unless-stopped)"
            )),
        },
    }
}

/// `node.hostname == web1`, `node.labels.zone != eu`.
pub fn constraint(s: &str) -> Result<Constraint, String> {
    let (left, op, right) = if let Some((l, r)) = s.split_once("==") {
        (l, ConstraintOp::Eq, r)
    } else if let Some((l, r)) = s.split_once("!=") {
        (l, ConstraintOp::Ne, r)
    } else {
        return Err(format!(
            "`{s}` is not a constraint (like `node.hostname == web1` or `node.labels.zone != eu`)"
        ));
    };
    let left = left.trim();
    let value = right.trim();
    if value.is_empty() {
        return Err(format!("`{s}`: the constraint has no value"));
    }
    let attribute = if left == "node.hostname" {
        ConstraintAttribute::Hostname
    } else if let Some(label) = left.strip_prefix("node.labels.")
        && !label.is_empty()
    {
        ConstraintAttribute::Label(label.to_owned())
    } else {
        return Err(format!(
            "`{left}` cannot be constrained: corral supports `node.hostname` and `node.labels.NAME`"
        ));
    };
    Ok(Constraint {
        attribute,
        op,
        value: value.to_owned(),
    })
}

/// `pull_policy`: `always`, `missing` (or its older name `if_not_present`), `never`.
pub fn pull_policy(s: &str) -> Result<PullPolicy, String> {
    match s {
        "always" => Ok(PullPolicy::Always),
        "missing" | "if_not_present" => Ok(PullPolicy::Missing),
        "never" => Ok(PullPolicy::Never),
        // Valid Compose, but it means "build the image here", which corral cannot do: refuse
        // rather than deploy something other than what the file asks for.
        "build" => Err(
            "`build` is not supported: corral does not build images yet; use `always`, `missing` or `never` with an image from a registry"
                .to_owned(),
        ),
        other => Err(format!(
            "`{other}` is not a pull policy (always, missing or never)"
        )),
    }
}

/// A capability name as Docker takes it: any case, with or without `CAP_`. Returned in upper
/// case without the prefix (`cap_net_admin` → `NET_ADMIN`) so the same capability written two
/// ways is one entry. Whether the kernel knows it is for the host to say.
pub fn capability(s: &str) -> Result<String, String> {
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "`{s}` is not a capability name (like `NET_ADMIN`, `CAP_SYS_TIME` or `ALL`)"
        ));
    }
    Ok(name.to_owned())
}

/// `network_mode`. An empty value (`${NET_MODE:-}`) is no mode, as in Compose.
pub fn network_mode(s: &str) -> Result<NetworkMode, String> {
    match s {
        // `bridge` is Docker's default network; in corral the default is the stack's network.
        "" | "bridge" | "default" => Ok(NetworkMode::Default),
        "host" => Ok(NetworkMode::Host),
        "none" => Ok(NetworkMode::None),
        other if other.starts_with("service:") || other.starts_with("container:") => Err(format!(
            "`{other}` is not supported: corral does not share a container's network with another (use `host`, `none`, or leave `network_mode` out)"
        )),
        other => Err(format!(
            "`{other}` is not a network mode corral supports (bridge, host or none)"
        )),
    }
}

/// `pid`: true for `host`, false for an empty value; anything else (`service:x`,
/// `container:x`) is refused.
pub fn pid_host(s: &str) -> Result<bool, String> {
    match s {
        "" => Ok(false),
        "host" => Ok(true),
        other => Err(format!(
            "`{other}` is not supported: corral supports only `pid: host`"
        )),
    }
}

/// Whether `s` can be an image name as Docker's reference grammar has it (one path
/// component, no registry or tag): lower-case letters and digits, in runs separated by `.`,
/// `_`, `__` or dashes, at most 255 characters.
pub fn image_path_component(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    let mut separator = String::new();
    let mut after_alnum = false;
    for c in s.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            let sep_ok = separator.is_empty()
                || separator == "."
                || separator == "_"
                || separator == "__"
                || separator.chars().all(|c| c == '-');
            if !sep_ok {
                return false;
            }
            separator.clear();
            after_alnum = true;
        } else if matches!(c, '.' | '_' | '-') && after_alnum {
            separator.push(c);
        } else {
            return false;
        }
    }
    separator.is_empty()
}

/// Device permissions: a non-empty set of `r`, `w`, `m`, each at most once (as Docker checks
/// them), returned in the order `rwm`.
fn device_permissions(s: &str) -> Option<String> {
    let mut seen = [false; 3];
    for c in s.chars() {
        let i = "rwm".find(c)?;
        if std::mem::replace(&mut seen[i], true) {
            return None;
        }
    }
    let out: String = "rwm"
        .chars()
        .zip(seen)
        .filter(|&(_, on)| on)
        .map(|(c, _)| c)
        .collect();
    (!out.is_empty()).then_some(out)
}

/// Short device syntax: `HOST[:CONTAINER[:PERMISSIONS]]`, and `HOST:PERMISSIONS` as Docker
/// also reads it (a container path is absolute, so it cannot be mistaken for permissions).
pub fn device(s: &str) -> Result<Device, String> {
    let bad_perms = |p: &str| {
        format!("`{p}` in `{s}` is not a set of device permissions (some of r, w and m, each once)")
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (host, container, permissions) = match parts.as_slice() {
        [host] => (*host, *host, None),
        [host, second] => match device_permissions(second) {
            Some(p) => (*host, *host, Some(p)),
            None if !second.is_empty() && !second.contains('/') => {
                return Err(format!(
                    "`{second}` in `{s}` is neither an absolute container path nor device permissions (some of r, w and m, each once)"
                ));
            }
            None => (*host, *second, None),
        },
        [host, container, perms] => (
            *host,
            *container,
            Some(device_permissions(perms).ok_or_else(|| bad_perms(perms))?),
        ),
        _ => {
            return Err(format!(
                "`{s}` is not a device (HOST[:CONTAINER[:PERMISSIONS]], like `/dev/ttyUSB0:/dev/ttyUSB0:rw`)"
            ));
        }
    };
    for path in [host, container] {
        if !path.starts_with('/') {
            return Err(if path.is_empty() {
                format!(
                    "`{s}` is not a device (HOST[:CONTAINER[:PERMISSIONS]], like `/dev/ttyUSB0:/dev/ttyUSB0:rw`)"
                )
            } else {
                format!("`{path}` in `{s}` is not an absolute path")
            });
        }
    }
    Ok(Device {
        host: host.to_owned(),
        container: container.to_owned(),
        permissions: permissions.unwrap_or_else(|| "rwm".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "10", "s", "10x", "1..5s", "-1s"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes("512m").unwrap(), 512 * 1024 * 1024);
        assert_eq!(bytes("1G").unwrap(), 1024 * 1024 * 1024);
        assert_eq!(bytes("1.5gb").unwrap(), 1536 * 1024 * 1024);
        assert_eq!(bytes("2048").unwrap(), 2048);
        assert!(bytes("lots").is_err());
        assert!(bytes("1x").is_err());
    }

    #[test]
    fn words() {
        assert_eq!(
            shell_words(r#"sh -c 'echo "hi there"' a\ b "x\"y""#).unwrap(),
            vec!["sh", "-c", "echo \"hi there\"", "a b", "x\"y"]
        );
        assert_eq!(shell_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(shell_words("''").unwrap(), vec![""]);
        assert!(shell_words("'open").is_err());
    }

    #[test]
    fn ports() {
        let p = ports_short("8080:80").unwrap();
        assert_eq!(
            p[0].published,
            Some(PortRange {
                start: 8080,
                end: 8080
            })
        );
        assert_eq!(p[0].target, 80);
        let p = ports_short("127.0.0.1:53:53/udp").unwrap();
        assert_eq!(p[0].protocol, Protocol::Udp);
        assert_eq!(p[0].host_ip, Some("127.0.0.1".parse().unwrap()));
        let p = ports_short("[::1]:8443:443").unwrap();
        assert_eq!(p[0].host_ip, Some("::1".parse().unwrap()));
        let p = ports_short("9000-9002:8000-8002").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[2].published,
            Some(PortRange {
                start: 9002,
                end: 9002
            })
        );
        assert_eq!(p[2].target, 8002);
        let p = ports_short("3000").unwrap();
        assert_eq!(p[0].published, None);
        let p = ports_short("8000-8010:80").unwrap();
        assert_eq!(
            p[0].published,
            Some(PortRange {
                start: 8000,
                end: 8010
            })
        );
        for bad in [
            "x",
            "0:80",
            "70000:80",
            "1:2:3:4",
            "80/sctp",
            "9000-9001:8000-8002",
            "a.b:1:2",
        ] {
            assert!(ports_short(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn constraints_and_restart() {
        let c = constraint("node.labels.zone != eu").unwrap();
        assert_eq!(c.attribute, ConstraintAttribute::Label("zone".into()));
        assert_eq!(c.op, ConstraintOp::Ne);
        assert!(constraint("node.role == manager").is_err());
        assert!(constraint("node.hostname").is_err());
        assert_eq!(
            restart("on-failure:3").unwrap(),
            RestartPolicy::OnFailure {
                max_retries: Some(3)
            }
        );
        assert!(restart("sometimes").is_err());
    }

    #[test]
    fn pull_policies() {
        assert_eq!(pull_policy("always").unwrap(), PullPolicy::Always);
        assert_eq!(pull_policy("missing").unwrap(), PullPolicy::Missing);
        assert_eq!(pull_policy("if_not_present").unwrap(), PullPolicy::Missing);
        assert_eq!(pull_policy("never").unwrap(), PullPolicy::Never);
        assert!(
            pull_policy("build")
                .unwrap_err()
                .contains("does not build images yet")
        );
        for bad in ["", "Always", "daily", "every_12h"] {
            assert!(pull_policy(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_path_components() {
        for good in [
            "shop-web",
            "a",
            "0",
            "shop_web",
            "shop__web",
            "shop---web",
            "a.b",
            "shop-web.v2",
        ] {
            assert!(image_path_component(good), "{good:?}");
        }
        for bad in [
            "",
            "Shop",
            "shop-",
            "-shop",
            "shop-_web",
            "shop_-web",
            "a..b",
            "a___b",
            "a/b",
            "a:b",
            "é",
            &"a".repeat(256),
        ] {
            assert!(!image_path_component(bad), "{bad:?}");
        }
    }

    #[test]
    fn capabilities() {
        assert_eq!(capability("cap_net_admin").unwrap(), "NET_ADMIN");
        assert_eq!(capability("CAP_SYS_TIME").unwrap(), "SYS_TIME");
        assert_eq!(capability("Sys_Nice").unwrap(), "SYS_NICE");
        assert_eq!(capability("ALL").unwrap(), "ALL");
        assert_eq!(capability("all").unwrap(), "ALL");
        assert_eq!(capability("BPF").unwrap(), "BPF");
        assert_eq!(
            capability("CAP_CAP_X").unwrap(),
            "CAP_X",
            "one prefix comes off"
        );
        for bad in [
            "",
            "CAP_",
            "cap_",
            "NET ADMIN",
            "net-admin",
            " NET_ADMIN",
            "NÉT",
        ] {
            assert!(capability(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn network_and_pid_modes() {
        assert_eq!(network_mode("").unwrap(), NetworkMode::Default);
        assert_eq!(network_mode("bridge").unwrap(), NetworkMode::Default);
        assert_eq!(network_mode("default").unwrap(), NetworkMode::Default);
        assert_eq!(network_mode("host").unwrap(), NetworkMode::Host);
        assert_eq!(network_mode("none").unwrap(), NetworkMode::None);
        assert!(
            network_mode("service:db")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(
            network_mode("container:x")
                .unwrap_err()
                .contains("not supported")
        );
        for bad in ["HOST", "mynet", "host "] {
            assert!(network_mode(bad).is_err(), "{bad:?}");
        }
        assert!(pid_host("host").unwrap());
        assert!(!pid_host("").unwrap());
        for bad in ["container:x", "service:db", "HOST", "private"] {
            assert!(pid_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn devices() {
        let d = |host: &str, container: &str, permissions: &str| Device {
            host: host.into(),
            container: container.into(),
            permissions: permissions.into(),
        };
        assert_eq!(
            device("/dev/fuse").unwrap(),
            d("/dev/fuse", "/dev/fuse", "rwm")
        );
        assert_eq!(
            device("/dev/snd:r").unwrap(),
            d("/dev/snd", "/dev/snd", "r")
        );
        assert_eq!(
            device("/dev/ttyUSB0:/dev/ttyS0").unwrap(),
            d("/dev/ttyUSB0", "/dev/ttyS0", "rwm")
        );
        assert_eq!(
            device("/dev/sda:/dev/xvda:mwr").unwrap(),
            d("/dev/sda", "/dev/xvda", "rwm")
        );
        assert_eq!(
            device("/dev/a:/dev/b:wm").unwrap(),
            d("/dev/a", "/dev/b", "wm")
        );
        for bad in [
            "",
            "dev/fuse",
            "/dev/a:",
            "/dev/a:dev/b",
            "/dev/a:rx",
            "/dev/a:/dev/b:",
            "/dev/a:/dev/b:x",
            "/dev/a:/dev/b:rr",
            "/dev/a:/dev/b:RW",
            "/dev/a:/dev/b:r:w",
            ":/dev/b",
            "vendor.com/gpu=all",
        ] {
            assert!(device(bad).is_err(), "{bad:?}");
        }
    }
}
