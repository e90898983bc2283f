//! Why a host cannot take a replica, in words, grouped when many hosts share a reason.

use std::collections::HashMap;

use crate::{Constraint, ConstraintField, ConstraintOp, HostPort};

/// Hosts of one group named one by one before "N more hosts …" (a group of up to
/// `LIST_LIMIT + 1` hosts is listed in full).
pub(crate) const LIST_LIMIT: usize = 3;

/// The first reason a host refuses a replica, in the order the scheduler checks them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Why<'a> {
    NotReady,
    Constraint(&'a Constraint),
    AntiAffinity {
        stack: &'a str,
        service: &'a str,
    },
    Affinity {
        stack: &'a str,
        service: &'a str,
    },
    /// Already runs `cap` replicas of the service; `anti_self` when the cap comes from
    /// anti-affinity with itself.
    Cap {
        cap: u32,
        anti_self: bool,
    },
    /// Every address of its overlay subnet is held (`total` 0: it has no subnet yet).
    NoAddress {
        used: u32,
        total: u32,
    },
    PortTaken(HostPort),
    Cpu {
        free: u64,
        need: u64,
    },
    Memory {
        free: u64,
        need: u64,
    },
    /// Should not happen: the host fits but the heap lost it. Kept so an explanation never
    /// lies by omission.
    Fits,
}

impl<'a> Why<'a> {
    /// The same reason without what differs from host to host (free amounts).
    fn group_key(&self) -> Why<'a> {
        match self {
            Why::Cpu { need, .. } => Why::Cpu {
                free: 0,
                need: *need,
            },
            Why::Memory { need, .. } => Why::Memory {
                free: 0,
                need: *need,
            },
            Why::NoAddress { total, .. } => Why::NoAddress {
                used: 0,
                total: u32::from(*total > 0),
            },
            other => other.clone(),
        }
    }

    fn one(&self, host: &str, service: &str) -> String {
        match self {
            Why::NotReady => format!("{host} is not ready"),
            Why::Constraint(c) => match (&c.field, c.op) {
                (ConstraintField::Label(k), ConstraintOp::Eq) => {
                    format!("{host} lacks label {k}={}", c.value)
                }
                (ConstraintField::Label(k), ConstraintOp::Ne) => {
                    format!("{host} has label {k}={}", c.value)
                }
                _ => format!("{host} fails {c}"),
            },
            Why::AntiAffinity { stack, service } => {
                format!("{host} runs {stack}/{service} (anti-affinity)")
            }
            Why::Affinity { stack, service } => {
                format!("{host} does not run {stack}/{service} (affinity)")
            }
            Why::Cap {
                anti_self: true, ..
            } => format!("{host} already runs {service} (anti-affinity)"),
            Why::Cap { cap, .. } => {
                format!("{host} already runs {cap} of {service} (max {cap} per host)")
            }
            Why::NoAddress { total: 0, .. } => {
                format!("{host}: no overlay subnet (its environment's range is full)")
            }
            Why::NoAddress { used, total } => format!(
                "{host}: no free overlay address ({} of {} in use)",
                thousands(u64::from(*used)),
                thousands(u64::from(*total))
            ),
            Why::PortTaken(p) => format!("{host} port {p} taken"),
            Why::Cpu { free, need } => format!("{host} has {free}m CPU free, needs {need}m"),
            Why::Memory { free, need } => format!(
                "{host} has {} memory free, needs {}",
                bytes(*free),
                bytes(*need)
            ),
            Why::Fits => format!("{host} fits but was not considered (scheduler bug)"),
        }
    }

    fn many(&self, n: usize, service: &str) -> String {
        let n = thousands(n as u64);
        match self {
            Why::NotReady => format!("{n} more hosts are not ready"),
            Why::Constraint(c) => match (&c.field, c.op) {
                (ConstraintField::Label(k), ConstraintOp::Eq) => {
                    format!("{n} more hosts lack label {k}={}", c.value)
                }
                (ConstraintField::Label(k), ConstraintOp::Ne) => {
                    format!("{n} more hosts have label {k}={}", c.value)
                }
                _ => format!("{n} more hosts fail {c}"),
            },
            Why::AntiAffinity { stack, service } => {
                format!("{n} more hosts run {stack}/{service} (anti-affinity)")
            }
            Why::Affinity { stack, service } => {
                format!("{n} more hosts do not run {stack}/{service} (affinity)")
            }
            Why::Cap {
                anti_self: true, ..
            } => format!("{n} more hosts already run {service} (anti-affinity)"),
            Why::Cap { cap, .. } => {
                format!("{n} more hosts already run {cap} of {service} (max {cap} per host)")
            }
            Why::NoAddress { total: 0, .. } => format!("{n} more hosts have no overlay subnet"),
            Why::NoAddress { .. } => format!("{n} more hosts have no free overlay address"),
            Why::PortTaken(p) => format!("{n} more hosts have port {p} taken"),
            Why::Cpu { need, .. } => format!("{n} more hosts have less than {need}m CPU free"),
            Why::Memory { need, .. } => {
                format!("{n} more hosts have less than {} memory free", bytes(*need))
            }
            Why::Fits => format!("{n} more hosts fit but were not considered (scheduler bug)"),
        }
    }
}

/// Turns (host name, reason) pairs, in host order, into the reason list of an
/// [`Unplaced`](crate::Unplaced): groups in order of first appearance, each naming up to
/// [`LIST_LIMIT`] hosts and summing up the rest.
pub(crate) fn render<'a>(
    per_host: impl IntoIterator<Item = (&'a str, Why<'a>)>,
    service: &str,
) -> Vec<String> {
    let mut groups: Vec<Vec<(&str, Why<'a>)>> = Vec::new();
    let mut index: HashMap<Why<'a>, usize> = HashMap::new();
    for (host, why) in per_host {
        let key = why.group_key();
        let at = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push((host, why));
    }
    if groups.is_empty() {
        return vec!["there are no hosts".to_owned()];
    }
    let mut out = Vec::new();
    for group in groups {
        let named = if group.len() <= LIST_LIMIT + 1 {
            group.len()
        } else {
            LIST_LIMIT
        };
        for (host, why) in &group[..named] {
            out.push(why.one(host, service));
        }
        if let Some((_, why)) = group.get(named) {
            out.push(why.many(group.len() - named, service));
        }
    }
    out
}

/// `4997` → `4,997` (counts in messages, here and in the crates above).
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Exact, in the largest binary unit that divides it: `2GiB`, `1536MiB`, `1000 bytes`.
pub(crate) fn bytes(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = KIB * 1024;
    const GIB: u64 = MIB * 1024;
    const TIB: u64 = GIB * 1024;
    if n == 0 {
        return "0 bytes".to_owned();
    }
    for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if n.is_multiple_of(unit) {
            return format!("{}{name}", n / unit);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(4997), "4,997");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn byte_units_are_exact() {
        assert_eq!(bytes(2 << 30), "2GiB");
        assert_eq!(bytes(1536 << 20), "1536MiB");
        assert_eq!(bytes(1000), "1000 bytes");
        assert_eq!(bytes(0), "0 bytes");
        assert_eq!(bytes(4 << 10), "4KiB");
    }

    #[test]
    fn groups_and_summarises() {
        let zone = Constraint::label_eq("zone", "eu");
        let names: Vec<String> = (1..=5000).map(|i| format!("h{i}")).collect();
        let per_host = names.iter().enumerate().map(|(i, n)| {
            let why = match i {
                1 => Why::PortTaken(HostPort::tcp(80)),
                2 => Why::Cpu {
                    free: 200,
                    need: 500,
                },
                _ => Why::Constraint(&zone),
            };
            (n.as_str(), why)
        });
        let out = render(per_host, "web");
        assert_eq!(
            out,
            vec![
                "h1 lacks label zone=eu",
                "h4 lacks label zone=eu",
                "h5 lacks label zone=eu",
                "4,995 more hosts lack label zone=eu",
                "h2 port 80/tcp taken",
                "h3 has 200m CPU free, needs 500m",
            ]
        );
    }

    #[test]
    fn small_groups_are_listed_in_full() {
        let ne = Constraint::label_ne("disk", "hdd");
        let host = Constraint::hostname_eq("db1");
        let per_host = vec![
            ("a", Why::Constraint(&ne)),
            ("b", Why::Constraint(&ne)),
            ("c", Why::Constraint(&ne)),
            ("d", Why::Constraint(&ne)),
            ("e", Why::Constraint(&host)),
        ];
        assert_eq!(
            render(per_host, "web"),
            vec![
                "a has label disk=hdd",
                "b has label disk=hdd",
                "c has label disk=hdd",
                "d has label disk=hdd",
                "e fails node.hostname == db1",
            ]
        );
        assert_eq!(render(Vec::new(), "web"), vec!["there are no hosts"]);
    }

    #[test]
    fn cpu_and_memory_group_by_need_not_by_free() {
        let per_host = (0..6).map(|i| {
            (
                ["a", "b", "c", "d", "e", "f"][i],
                Why::Memory {
                    free: (i as u64) << 20,
                    need: 2 << 30,
                },
            )
        });
        assert_eq!(
            render(per_host, "web"),
            vec![
                "a has 0 bytes memory free, needs 2GiB",
                "b has 1MiB memory free, needs 2GiB",
                "c has 2MiB memory free, needs 2GiB",
                "3 more hosts have less than 2GiB memory free",
            ]
        );
    }
}
