//! Golden tests: every format for the fixtures in `tests/fixtures`, compared byte for byte
//! with `tests/golden/`. Regenerate with `CORRAL_UPDATE_GOLDEN=1 cargo test -p corral-firewall
//! --test golden` and review the diff.

mod common;

use corral_firewall::{Format, Scope, render};

fn scope_of(spec: &str) -> Scope {
    match spec {
        "all" => Scope::all(),
        "server" => Scope::server(),
        "hosts" => Scope::hosts(),
        name => Scope::host(name),
    }
}

/// (fixture, format, scope spec)
const CASES: &[(&str, Format, &str)] = &[
    ("seed000", Format::Markdown, "all"),
    ("seed000", Format::AwsJson, "all"),
    ("seed000", Format::Terraform, "all"),
    ("seed000", Format::Nftables, "server"),
    ("seed000", Format::Nftables, "host-1"),
    ("seed000", Format::Iptables, "host-1"),
    ("seed000", Format::Ip6tables, "host-1"),
    ("seed000", Format::Ufw, "host-1"),
    ("seed000", Format::Firewalld, "host-1"),
    ("seed000", Format::Dot, "all"),
    ("seed000", Format::Mermaid, "all"),
    ("seed000", Format::Svg, "all"),
    ("example", Format::Markdown, "all"),
    ("example", Format::Markdown, "db-1"),
    ("example", Format::AwsJson, "all"),
    ("example", Format::Terraform, "all"),
    ("example", Format::Nftables, "db-1"),
    ("example", Format::Iptables, "db-1"),
    ("example", Format::Ufw, "db-1"),
    ("example", Format::Firewalld, "db-1"),
    ("example", Format::Dot, "all"),
    ("example", Format::Mermaid, "all"),
    ("example", Format::Svg, "all"),
    ("full", Format::Markdown, "all"),
    ("full", Format::Markdown, "server"),
    ("full", Format::AwsJson, "all"),
    ("full", Format::AwsJson, "hosts"),
    ("full", Format::Terraform, "all"),
    ("full", Format::Nftables, "server"),
    ("full", Format::Nftables, "prod-1"),
    ("full", Format::Nftables, "lab-1"),
    ("full", Format::Iptables, "prod-1"),
    ("full", Format::Ip6tables, "prod-1"),
    ("full", Format::Iptables, "cp-2"),
    ("full", Format::Ufw, "prod-1"),
    ("full", Format::Firewalld, "prod-1"),
    ("full", Format::Dot, "all"),
    ("full", Format::Mermaid, "all"),
    ("full", Format::Svg, "all"),
    ("many", Format::Svg, "all"),
    ("many", Format::Mermaid, "all"),
];

fn golden_name(fixture: &str, format: Format, scope: &str) -> String {
    format!("{fixture}.{scope}.{}", format.extension())
}

#[test]
fn golden_outputs() {
    let update = std::env::var("CORRAL_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let dir = common::crate_dir().join("tests/golden");
    let mut failures = Vec::new();
    for (fixture, format, scope) in CASES {
        let plan = common::planned(fixture);
        let got = render(&plan, *format, &scope_of(scope))
            .unwrap_or_else(|e| panic!("{fixture} {format} {scope}: {e}"));
        let path = dir.join(golden_name(fixture, *format, scope));
        if update {
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(&path, &got).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with CORRAL_UPDATE_GOLDEN=1 to create it",
                path.display()
            )
        });
        if got != want {
            let line = got
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
            failures.push(format!(
                "{} differs at line {}:\n  got:  {:?}\n  want: {:?}",
                path.display(),
                line + 1,
                got.lines().nth(line),
                want.lines().nth(line)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches (CORRAL_UPDATE_GOLDEN=1 regenerates):\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_format_has_a_golden_case() {
    for f in Format::ALL {
        assert!(
            CASES.iter().any(|(_, g, _)| *g == f),
            "format {f} has no golden case"
        );
    }
}
