//! The rendered rulesets checked by the real tools: `nft -c -f`, `iptables-restore --test`,
//! `ip6tables-restore --test`, and botocore's EC2 service model (tests/validate_aws.py).
//! A test is skipped, with a printed SKIP line, only when its tool is not installed
//! (apt-get install nftables iptables; pip install botocore).

mod common;

use std::process::Command;

use corral_firewall::{Format, Scope, render};

/// (fixture, machine) pairs every per-machine format is checked for.
const MACHINES: &[(&str, &str)] = &[
    ("seed000", "host-1"),
    ("seed000", "rancher-master"),
    ("example", "db-1"),
    ("example", "web-2"),
    ("example_defaults", "corral"),
    ("full", "prod-1"),
    ("full", "prod-2"),
    ("full", "lab-1"),
    ("full", "cp-1"),
    ("many", "node-16"),
];

fn run(cmd: &str, args: &[&str], text: &str, ext: &str) -> (bool, String) {
    let path = common::temp_file(cmd, ext);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let path_s = path.to_string_lossy().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.push(&path_s);
    let output = Command::new(cmd)
        .args(&all)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    let _ = std::fs::remove_file(&path);
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), msg)
}

fn check_all(tool: &str, args: &[&str], format: Format, ext: &str) {
    if !common::have(tool) {
        println!("SKIP: {tool} is not installed; {format} output not checked by the real tool");
        return;
    }
    // The check must be able to fail: a broken file is refused.
    let broken = match format {
        Format::Nftables => "table inet corral {\n chain input { tcp dport 99999 accept\n }\n}\n",
        _ => "*filter\n:CORRAL-INPUT - [0:0]\n-A CORRAL-INPUT -s 10.0.0.1/999 -j ACCEPT\nCOMMIT\n",
    };
    let (ok, _) = run(tool, args, broken, ext);
    assert!(
        !ok,
        "{tool} accepted a broken file: the check proves nothing"
    );
    let mut checked = 0;
    for (fixture, machine) in MACHINES {
        let plan = common::planned(fixture);
        let text = render(&plan, format, &Scope::host(machine))
            .unwrap_or_else(|e| panic!("{fixture}/{machine} {format}: {e}"));
        let (ok, msg) = run(tool, args, &text, ext);
        assert!(
            ok,
            "{tool} refused {fixture}/{machine}:\n{msg}\n--- file ---\n{text}"
        );
        checked += 1;
    }
    let plan = common::planned("full");
    let text = render(&plan, format, &Scope::server()).unwrap_or_else(|e| panic!("{e}"));
    let (ok, msg) = run(tool, args, &text, ext);
    assert!(ok, "{tool} refused the server ruleset:\n{msg}\n{text}");
    println!("{tool}: {} rulesets accepted", checked + 1);
}

#[test]
fn nft_accepts_every_ruleset() {
    check_all("nft", &["-c", "-f"], Format::Nftables, "nft");
}

#[test]
fn iptables_restore_accepts_every_ruleset() {
    check_all(
        "iptables-restore",
        &["--test", "--noflush"],
        Format::Iptables,
        "rules",
    );
}

#[test]
fn ip6tables_restore_accepts_every_ruleset() {
    check_all(
        "ip6tables-restore",
        &["--test", "--noflush"],
        Format::Ip6tables,
        "rules",
    );
}

#[test]
fn aws_json_matches_botocore_ec2_model() {
    let have_botocore = Command::new("python3")
        .args(["-c", "import botocore"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have_botocore {
        println!(
            "SKIP: python3 with botocore is not available (pip install botocore); aws-json not checked against the EC2 model"
        );
        return;
    }
    let script = common::crate_dir().join("tests/validate_aws.py");
    let script = script.to_string_lossy().to_string();
    // A wrong document must be refused.
    let bad = r#"{"AuthorizeSecurityGroupIngress":[{"GroupId":"sg-x","IpPermissions":[{"IpProtocol":"tcp","FromPort":"80","Bogus":1}]}],"AuthorizeSecurityGroupEgress":[{"IpPermissions":[]}]}"#;
    let (ok, msg) = run("python3", &[&script], bad, "json");
    assert!(!ok, "validator accepted a bad document: {msg}");
    assert!(
        msg.contains("Bogus") && msg.contains("FromPort") && msg.contains("GroupId"),
        "{msg}"
    );
    for fixture in ["seed000", "example", "example_defaults", "full", "many"] {
        let plan = common::planned(fixture);
        for scope in [Scope::all(), Scope::server(), Scope::hosts()] {
            let text = render(&plan, Format::AwsJson, &scope).unwrap_or_else(|e| panic!("{e}"));
            let (ok, msg) = run("python3", &[&script], &text, "json");
            assert!(ok, "{fixture}: {msg}\n{text}");
            assert!(msg.starts_with("OK:"), "{msg}");
        }
    }
}

#[test]
fn graphviz_accepts_every_dot_diagram() {
    if !common::have("dot") {
        println!(
            "SKIP: graphviz (dot) is not installed; DOT diagrams not checked by the real tool"
        );
        return;
    }
    let (ok, _) = run(
        "dot",
        &["-Tsvg", "-o", "/dev/null"],
        "digraph { a -> }\n",
        "dot",
    );
    assert!(!ok, "dot accepted a broken file");
    for fixture in ["seed000", "example", "full", "many"] {
        let plan = common::planned(fixture);
        let text = render(&plan, Format::Dot, &Scope::all()).unwrap_or_else(|e| panic!("{e}"));
        let (ok, msg) = run("dot", &["-Tsvg", "-o", "/dev/null"], &text, "dot");
        assert!(ok && !msg.contains("Warning"), "{fixture}: {msg}\n{text}");
    }
}

#[test]
fn svg_diagrams_are_well_formed_xml() {
    let have_python = Command::new("python3")
        .args(["-c", "import xml.dom.minidom"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have_python {
        println!("SKIP: python3 is not available; SVG not checked by an XML parser");
        return;
    }
    let parse = "import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1]); print('OK')";
    let (ok, _) = run("python3", &["-c", parse], "<svg><text></svg>", "svg");
    assert!(!ok, "the XML parser accepted a broken document");
    for fixture in ["seed000", "example", "full", "many"] {
        let plan = common::planned(fixture);
        let text = render(&plan, Format::Svg, &Scope::all()).unwrap_or_else(|e| panic!("{e}"));
        let (ok, msg) = run("python3", &["-c", parse], &text, "svg");
        assert!(ok, "{fixture}: {msg}");
    }
    // Hostile names stay well-formed too.
    let mut t = corral_firewall::Topology::new(corral_firewall::Server::at(vec![]));
    t.server.name = "<&\"'>\u{1}]]>".to_string();
    t.hosts.push(corral_firewall::Host::new("</svg>", vec![]));
    let text = corral_firewall::diagram(&t, corral_firewall::DiagramFormat::Svg);
    let (ok, msg) = run("python3", &["-c", parse], &text, "svg");
    assert!(ok, "{msg}\n{text}");
}
