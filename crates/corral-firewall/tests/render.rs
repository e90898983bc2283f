//! Renderer behaviour: scopes, per-format content, IPv6, hosts without addresses, escaping.

mod common;

use corral_firewall::{
    AwsOperation, Format, Host, Protocol, PublishedPort, RenderError, Role, Scope, Server,
    Topology, aws_requests, plan, render,
};

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn out(fixture: &str, format: Format, scope: &Scope) -> String {
    let p = common::planned(fixture);
    render(&p, format, scope).unwrap_or_else(|e| panic!("{fixture} {format}: {e}"))
}

#[test]
fn markdown_has_the_seed_004_columns_one_table_per_group() {
    let md = out("full", Format::Markdown, &Scope::all());
    let header =
        "| Direction | Protocol | Port | Source | Destination | Purpose | Impact if removed |";
    assert_eq!(md.matches(header).count(), 3, "server, hosts, datastore");
    assert!(md.contains("## Server group `sg-0123456789abcdef0`"));
    assert!(md.contains("## Host group `sg-0fedcba9876543210`"));
    assert!(md.contains("## Datastore group"));
    assert!(md.contains("| Inbound | UDP | 30000-30010 |"));
    assert!(md.contains("| Inbound | ICMP | ICMP type 3 code 4; ICMPv6 type 2 code 0 |"));
    let server_only = out("full", Format::Markdown, &Scope::server());
    assert!(!server_only.contains("## Host group"));
    assert!(server_only.contains("## Datastore group"));
    let hosts_only = out("full", Format::Markdown, &Scope::hosts());
    assert!(hosts_only.contains("## Host group") && !hosts_only.contains("## Server group"));
}

#[test]
fn markdown_for_one_host_lists_only_its_published_ports() {
    let md = out("example", Format::Markdown, &Scope::host("web-1"));
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
    assert!(rows.iter().any(|l| l.contains("| 443 |")));
    assert!(
        !rows.iter().any(|l| l.contains("9100")),
        "metrics is published on db-1 only"
    );
    let md = out("example", Format::Markdown, &Scope::host("db-1"));
    assert!(md.contains("9100"));
}

#[test]
fn markdown_escapes_table_cells() {
    let mut t = Topology::new(Server::at(vec![ip("10.0.0.1")]));
    t.hosts.push(Host::new("h", vec![ip("10.0.0.2")]));
    let p = plan(&t).unwrap_or_else(|e| panic!("{e}"));
    let mut p2 = p.clone();
    p2.flows[0].purpose = "a | b".to_string();
    let md = render(&p2, Format::Markdown, &Scope::all()).unwrap_or_else(|e| panic!("{e}"));
    assert!(md.contains("a \\| b"));
}

#[test]
fn aws_requests_use_group_references_and_both_families() {
    let p = common::planned("full");
    let reqs = aws_requests(&p, &Scope::all()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        reqs.iter()
            .filter(|r| r.operation == AwsOperation::AuthorizeSecurityGroupIngress)
            .count(),
        3
    );
    let hosts_in = reqs
        .iter()
        .find(|r| {
            r.operation == AwsOperation::AuthorizeSecurityGroupIngress
                && r.input["GroupId"] == "sg-0fedcba9876543210"
        })
        .unwrap_or_else(|| panic!("no host ingress request"));
    let perms = hosts_in.input["IpPermissions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // Overlay: security-group reference to itself.
    assert!(perms.iter().any(|p| p["IpProtocol"] == "udp"
        && p["FromPort"] == 51820
        && p["UserIdGroupPairs"][0]["GroupId"] == "sg-0fedcba9876543210"));
    // Range.
    assert!(perms.iter().any(|p| p["FromPort"] == 30000
        && p["ToPort"] == 30010
        && p["Ipv6Ranges"][0]["CidrIpv6"] == "2001:db8:ffff::/48"
        && p["IpRanges"][0]["CidrIp"] == "198.51.100.0/24"));
    // ICMP per family.
    assert!(
        perms
            .iter()
            .any(|p| p["IpProtocol"] == "icmp" && p["FromPort"] == 3 && p["ToPort"] == 4)
    );
    assert!(
        perms
            .iter()
            .any(|p| p["IpProtocol"] == "icmpv6" && p["FromPort"] == 2 && p["ToPort"] == 0)
    );
    // Hosts admit nothing from the server group.
    for p in &perms {
        for pair in p["UserIdGroupPairs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            assert_ne!(
                pair["GroupId"], "sg-0123456789abcdef0",
                "server -> host rule: {p}"
            );
        }
    }
    // Descriptions stay in the AWS alphabet and length.
    let text = serde_json::to_string(&reqs.iter().map(|r| &r.input).collect::<Vec<_>>())
        .unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    check_descriptions(&doc);
}

fn check_descriptions(v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "Description" {
                    let s = v.as_str().unwrap_or_default();
                    assert!(s.len() <= 255 && !s.is_empty());
                    assert!(
                        s.chars()
                            .all(|c| c.is_ascii_alphanumeric()
                                || " ._-:/()#,@[]+=&;{}!$*".contains(c)),
                        "bad description {s:?}"
                    );
                } else {
                    check_descriptions(v);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(check_descriptions),
        _ => {}
    }
}

#[test]
fn aws_json_document_is_keyed_by_operation() {
    let text = out("seed000", Format::AwsJson, &Scope::all());
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(doc["AuthorizeSecurityGroupIngress"].is_array());
    assert!(doc["AuthorizeSecurityGroupEgress"].is_array());
    assert_eq!(doc.as_object().map(|o| o.len()), Some(2));
}

#[test]
fn terraform_references_groups_and_splits_families() {
    let tf = out("full", Format::Terraform, &Scope::all());
    assert!(tf.contains("resource \"aws_security_group\" \"corral_server\""));
    assert!(tf.contains("resource \"aws_security_group\" \"corral_hosts\""));
    assert!(tf.contains("resource \"aws_security_group\" \"corral_datastore\""));
    assert!(tf.contains("referenced_security_group_id = aws_security_group.corral_hosts.id"));
    assert!(tf.contains("cidr_ipv6                    = \"2001:db8:ffff::/48\""));
    assert!(tf.contains("ip_protocol                  = \"icmpv6\""));
    assert_eq!(tf.matches('{').count(), tf.matches('}').count());
    // Resource names are unique.
    let names: Vec<&str> = tf.lines().filter(|l| l.starts_with("resource ")).collect();
    let unique: std::collections::BTreeSet<_> = names.iter().collect();
    assert_eq!(names.len(), unique.len());
    // No host-group ingress rule references the server group.
    for block in tf.split("\n\n") {
        if block.contains("aws_vpc_security_group_ingress_rule")
            && block.contains("security_group_id            = aws_security_group.corral_hosts.id")
        {
            assert!(
                !block.contains("aws_security_group.corral_server.id"),
                "{block}"
            );
        }
    }
}

#[test]
fn per_machine_formats_need_one_machine() {
    let p = common::planned("seed000");
    for f in [
        Format::Nftables,
        Format::Iptables,
        Format::Ip6tables,
        Format::Ufw,
        Format::Firewalld,
    ] {
        for scope in [Scope::all(), Scope::hosts()] {
            let e = render(&p, f, &scope).err();
            assert!(
                matches!(e, Some(RenderError::NeedsOneMachine { .. })),
                "{f}: {e:?}"
            );
        }
        let e = render(&p, f, &Scope::host("nope")).err();
        assert!(
            matches!(e, Some(RenderError::UnknownMachine { .. })),
            "{f}: {e:?}"
        );
        assert!(render(&p, f, &Scope::server()).is_ok());
        assert!(render(&p, f, &Scope::host("host-1")).is_ok());
        // The server's name selects the server machine.
        let by_name = render(&p, f, &Scope::host("rancher-master"));
        assert_eq!(
            by_name.ok().map(|s| s.contains("server machine")),
            Some(true)
        );
    }
    assert!(render(&p, Format::Markdown, &Scope::host("nope")).is_err());
    let s = Scope {
        role: Role::Server,
        host: None,
    };
    assert_eq!(s, Scope::server());
}

#[test]
fn nftables_host_ruleset_opens_only_its_flows() {
    let nft = out("seed000", Format::Nftables, &Scope::host("host-1"));
    assert!(nft.contains("table inet corral {"));
    assert!(nft.contains("policy drop;"));
    let accepts: Vec<&str> = nft
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.contains(" accept")
                && (l.contains("dport") && !l.contains("th dport 53") && !l.contains("sport 547"))
        })
        .collect();
    assert_eq!(accepts.len(), 2, "{accepts:#?}");
    assert!(
        accepts
            .iter()
            .any(|l| l.starts_with("ip saddr { 10.0.1.11, 10.0.1.12 } udp dport 51820 accept"))
    );
    assert!(
        accepts
            .iter()
            .any(|l| l.starts_with("ip saddr 198.51.100.7 tcp dport 22 accept"))
    );
    // No table other than corral's is ever named.
    for l in nft.lines().filter(|l| l.contains("table ")) {
        assert!(l.contains("table inet corral"), "{l}");
    }
    // The server's ruleset has the API and agent port, nothing from the overlay.
    let nft = out("seed000", Format::Nftables, &Scope::server());
    assert!(nft.contains("ip saddr { 10.0.1.11, 10.0.1.12 } tcp dport 8443 accept"));
    assert!(!nft.contains("51820 accept"));
    assert!(!nft.contains("iifname \"docker0\""));
}

#[test]
fn nftables_and_iptables_enforce_published_source_restrictions_on_the_forward_path() {
    let nft = out("example", Format::Nftables, &Scope::host("db-1"));
    assert!(nft.contains("chain forward"));
    assert!(nft.contains("ct original proto-dst 9100 ct status dnat ip saddr != 10.0.0.0/16 drop"));
    assert!(nft.contains(
        "meta nfproto ipv6 meta l4proto tcp ct original proto-dst 9100 ct status dnat drop"
    ));
    let ipt = out("example", Format::Iptables, &Scope::host("db-1"));
    assert!(ipt.contains("--ctorigdstport 9100 -s 10.0.0.0/16"));
    assert!(ipt.contains("-I FORWARD 1 -j CORRAL-FORWARD"));
    // web-1 publishes only an unrestricted port: no forward chain.
    let nft = out("example", Format::Nftables, &Scope::host("web-1"));
    assert!(!nft.contains("chain forward"));
}

#[test]
fn ipv6_gets_separate_rules() {
    let nft = out("full", Format::Nftables, &Scope::host("prod-1"));
    assert!(nft.contains("ip6 saddr { 2001:db8:1::11, 2001:db8:1::12 } udp dport 51820 accept"));
    assert!(nft.contains("ip6 saddr 2001:db8:aaaa::/48 tcp dport 22 accept"));
    let v4 = out("full", Format::Iptables, &Scope::host("prod-1"));
    let v6 = out("full", Format::Ip6tables, &Scope::host("prod-1"));
    assert!(
        !v4.lines()
            .filter(|l| l.starts_with('-'))
            .any(|l| l.contains("2001:"))
    );
    assert!(
        !v6.lines()
            .filter(|l| l.starts_with('-'))
            .any(|l| l.contains("10.0."))
    );
    assert!(v6.contains("-s 2001:db8:1::12/128 -p udp -m udp --dport 51820"));
    assert!(v6.contains("--icmpv6-type 135"), "neighbour discovery");
}

#[test]
fn environments_limit_overlay_peers_in_host_rulesets() {
    let nft = out("full", Format::Nftables, &Scope::host("prod-1"));
    let rules: Vec<&str> = nft.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(
        !rules.iter().any(|l| l.contains("10.0.2.11")),
        "lab host is not a prod peer:\n{nft}"
    );
    let nft = out("full", Format::Nftables, &Scope::host("lab-1"));
    assert!(nft.contains("ip saddr 10.0.2.11 udp dport 4789 accept"));
    // lab-1 also runs the server: it gets the server's inbound rules too.
    assert!(nft.contains("tcp dport 8443"));
}

#[test]
fn host_without_address_fails_cidr_formats_but_not_group_formats() {
    let mut t = Topology::new(Server::at(vec![ip("10.0.0.10")]));
    t.hosts.push(Host::new("a", vec![ip("10.0.1.1")]));
    t.hosts.push(Host::new("ghost", vec![]));
    let p = plan(&t).unwrap_or_else(|e| panic!("{e}"));
    for f in [
        Format::Markdown,
        Format::AwsJson,
        Format::Terraform,
        Format::Svg,
    ] {
        assert!(render(&p, f, &Scope::all()).is_ok(), "{f}");
    }
    for f in [
        Format::Nftables,
        Format::Iptables,
        Format::Ip6tables,
        Format::Ufw,
        Format::Firewalld,
    ] {
        let e = render(&p, f, &Scope::host("a"));
        let Err(RenderError::Unaddressed { members, .. }) = &e else {
            panic!("{f}: expected Unaddressed, got {e:?}");
        };
        assert_eq!(members, "ghost");
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("ghost has no known address"), "{msg}");
        assert!(msg.contains("group-based format"), "{msg}");
        // The server machine needs the host group as agent source: same error.
        assert!(matches!(
            render(&p, f, &Scope::server()),
            Err(RenderError::Unaddressed { .. })
        ));
    }
    // The host itself does not need its own address.
    let mut t = Topology::new(Server::at(vec![ip("10.0.0.10")]));
    t.hosts.push(Host::new("solo", vec![]));
    let p = plan(&t).unwrap_or_else(|e| panic!("{e}"));
    assert!(render(&p, Format::Nftables, &Scope::host("solo")).is_ok());
}

#[test]
fn ufw_and_firewalld_commands() {
    let ufw = out("full", Format::Ufw, &Scope::host("prod-1"));
    assert!(ufw.contains("ufw allow proto udp from 10.0.1.11 to any port 51820 comment 'corral overlay between hosts'"));
    assert!(ufw.contains("ufw allow proto udp from 2001:db8:ffff::/48 to any port 30000:30010"));
    assert!(ufw.contains("ufw allow proto tcp from any to any port 80"));
    assert!(ufw.contains("# corral published media: Docker-published ports bypass ufw"));
    let fw = out("full", Format::Firewalld, &Scope::host("prod-1"));
    assert!(fw.contains("firewall-cmd --permanent --new-zone=corral"));
    assert!(fw.contains("--set-target=DROP"));
    assert!(fw.contains("--add-port=80/tcp"));
    assert!(fw.contains(
        "--add-rich-rule='rule family=\"ipv6\" source address=\"2001:db8:ffff::/48\" port port=\"30000-30010\" protocol=\"udp\" accept'"
    ));
    assert!(fw.contains("icmp-type name=\"packet-too-big\""));
    assert!(fw.trim_end().ends_with("firewall-cmd --reload"));
}

#[test]
fn outputs_are_deterministic_and_free_of_control_characters() {
    let p = common::planned("full");
    for f in Format::ALL {
        let scope = if f.is_per_machine() {
            Scope::host("prod-1")
        } else {
            Scope::all()
        };
        let a = render(&p, f, &scope).unwrap_or_else(|e| panic!("{f}: {e}"));
        let b = render(&p, f, &scope).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(a, b, "{f}");
        assert!(
            a.chars().all(|c| !c.is_control() || c == '\n' || c == '\t'),
            "{f} has control characters"
        );
    }
}

#[test]
fn published_udp_and_tcp_render_with_their_protocol() {
    let mut t = Topology::new(Server::at(vec![ip("10.0.0.10")]));
    t.hosts.push(Host::new("h", vec![ip("10.0.1.1")]));
    t.published.push(PublishedPort {
        service: "dns".to_string(),
        stack: None,
        host: None,
        port: "5353".parse().unwrap_or_else(|e| panic!("{e}")),
        protocol: Protocol::Udp,
        sources: None,
    });
    let p = plan(&t).unwrap_or_else(|e| panic!("{e}"));
    let nft = render(&p, Format::Nftables, &Scope::host("h")).unwrap_or_default();
    assert!(nft.contains("udp dport 5353 accept"));
    let ipt = render(&p, Format::Iptables, &Scope::host("h")).unwrap_or_default();
    assert!(ipt.contains("-p udp -m udp --dport 5353"));
}
