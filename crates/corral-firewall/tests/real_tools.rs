//! The rendered rulesets checked by the real tools: `nft -c -f`, `iptables-restore --test`,
//! `ip6tables-restore --test`, botocore's EC2 service model (tests/validate_aws.py), graphviz
//! and an XML parser. A test whose tool is missing fails, naming it (`bash scripts/test.sh`
//! installs them all).

mod common;

use std::process::Command;

use corral_firewall::{Format, Scope, render};
use corral_testkit::require;

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

fn check_all(tool: &str, package: &str, args: &[&str], format: Format, ext: &str) {
    // The checks run against the kernel's netfilter, which takes root.
    require::root(&format!("for `{tool} {}`", args.join(" ")));
    require::tool(tool, package);
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
    check_all("nft", "nftables", &["-c", "-f"], Format::Nftables, "nft");
}

#[test]
fn iptables_restore_accepts_every_ruleset() {
    check_all(
        "iptables-restore",
        "iptables",
        &["--test", "--noflush"],
        Format::Iptables,
        "rules",
    );
}

#[test]
fn ip6tables_restore_accepts_every_ruleset() {
    check_all(
        "ip6tables-restore",
        "iptables",
        &["--test", "--noflush"],
        Format::Ip6tables,
        "rules",
    );
}

#[test]
fn aws_json_matches_botocore_ec2_model() {
    require::python_module("botocore", "python3 -m pip install botocore");
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
    require::tool("dot", "graphviz");
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
    require::python_module("xml.dom.minidom", "apt-get install -y python3");
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

/// The services diagram (hostile names included) is valid DOT and well-formed SVG.
#[test]
fn the_services_diagram_is_valid_dot_and_svg() {
    require::tool("dot", "graphviz");
    require::python_module("xml.dom.minidom", "apt-get install -y python3");
    use corral_firewall::{DiagramFormat, ServiceBox, ServiceFlow, ServiceMap, services_diagram};
    let b = |stack: &str, service: &str| ServiceBox {
        stack: stack.into(),
        service: service.into(),
        labels: vec![("zone".into(), "<dmz \"&\" ]]>".into())],
    };
    let f = |from: &str, to: &str, access: &str| ServiceFlow {
        from: from.into(),
        to: to.into(),
        access: access.into(),
        reason: "allow[0] \"x\"".into(),
    };
    let map = ServiceMap {
        environment: "prod\"</svg>".into(),
        policy: "network policy generation 1 (default: deny)".into(),
        services: vec![
            b("front", "web"),
            b("app", "api"),
            b("app", "worker"),
            b("d\"b", "db"),
        ],
        flows: vec![
            f("front/web", "app/api", "8080/tcp"),
            f("app/api", "d\"b/db", "5432/tcp"),
            f("app/worker", "app/api", "all traffic except 22/tcp"),
            f("app/api", "front/web", "53/udp"),
            f("app/api", "app/api", "5353/udp"),
        ],
    };
    let dot = services_diagram(&map, DiagramFormat::Dot);
    let (ok, msg) = run("dot", &["-Tsvg", "-o", "/dev/null"], &dot, "dot");
    assert!(ok && !msg.contains("Warning"), "{msg}\n{dot}");
    let parse = "import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1]); print('OK')";
    let svg = services_diagram(&map, DiagramFormat::Svg);
    let (ok, msg) = run("python3", &["-c", parse], &svg, "svg");
    assert!(ok, "{msg}\n{svg}");
}
