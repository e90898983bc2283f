//! Planner behaviour: the seed scenarios, the invariants, and every kind of bad input.

mod common;

use corral_firewall::net::CidrError;
use corral_firewall::{
    Direction, Endpoint, Environment, FlowKind, GroupKind, Host, HostRole, Overlay, Plan,
    PlanError, PortRange, Protocol, PublishedPort, Server, Topology, Traffic, plan,
};

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn base() -> Topology {
    let mut t = Topology::new(Server::at(vec![ip("10.0.0.10")]));
    t.hosts.push(Host::new("h1", vec![ip("10.0.1.11")]));
    t.hosts.push(Host::new("h2", vec![ip("10.0.1.12")]));
    t
}

fn publish(service: &str, host: Option<&str>, port: &str, protocol: Protocol) -> PublishedPort {
    PublishedPort {
        service: service.to_string(),
        stack: None,
        host: host.map(str::to_string),
        port: port.parse().unwrap_or_else(|e| panic!("{port}: {e}")),
        protocol,
        sources: None,
    }
}

fn ok(t: &Topology) -> Plan {
    plan(t).unwrap_or_else(|e| panic!("unexpected plan error: {e}"))
}

fn err(t: &Topology) -> PlanError {
    match plan(t) {
        Ok(_) => panic!("expected a plan error"),
        Err(e) => e,
    }
}

// ---- Seed 000: one server, two hosts, admin SSH ------------------------------------------------

#[test]
fn seed000_hosts_need_no_inbound_port_from_the_server() {
    let p = common::planned("seed000");
    let from_server: Vec<_> = p
        .flows
        .iter()
        .filter(|f| {
            f.group == GroupKind::Hosts
                && f.direction == Direction::Inbound
                && f.source == Endpoint::Group(GroupKind::Server)
        })
        .collect();
    assert!(from_server.is_empty(), "{from_server:?}");
}

#[test]
fn seed000_only_server_related_host_flow_is_outbound_agent_tunnel() {
    let p = common::planned("seed000");
    let server_related: Vec<_> = p
        .flows
        .iter()
        .filter(|f| f.group == GroupKind::Hosts && f.peer() == &Endpoint::Group(GroupKind::Server))
        .collect();
    assert_eq!(server_related.len(), 1, "{server_related:?}");
    let f = server_related[0];
    assert_eq!(f.direction, Direction::Outbound);
    assert_eq!(f.kind, FlowKind::AgentTunnel);
    assert_eq!(f.protocol(), Protocol::Tcp);
    assert_eq!(f.ports().map(|p| (p.from(), p.to())), Some((8443, 8443)));
    // The matching server-side rule admits the host group on the same port.
    assert!(p.flows.iter().any(|g| g.group == GroupKind::Server
        && g.direction == Direction::Inbound
        && g.kind == FlowKind::AgentTunnel
        && g.source == Endpoint::Group(GroupKind::Hosts)
        && g.ports() == f.ports()));
}

#[test]
fn seed000_no_flow_from_the_server_to_any_host() {
    let p = common::planned("seed000");
    for f in &p.flows {
        assert!(
            !(f.source == Endpoint::Group(GroupKind::Server) && f.destination.is_hosts()),
            "server -> host flow: {f:?}"
        );
    }
}

#[test]
fn seed000_ipsec_ports_are_replaced_by_the_overlay_between_hosts_only() {
    let p = common::planned("seed000");
    for f in &p.flows {
        if let Some(ports) = f.ports() {
            assert!(
                !(f.protocol() == Protocol::Udp && (ports.contains(500) || ports.contains(4500))),
                "IPsec port still present: {f:?}"
            );
        }
    }
    let overlay: Vec<_> = p
        .flows
        .iter()
        .filter(|f| f.kind == FlowKind::Overlay)
        .collect();
    assert_eq!(overlay.len(), 2, "one inbound and one outbound rule");
    for f in overlay {
        assert_eq!(
            f.traffic,
            Traffic::Udp {
                ports: single(51820)
            }
        );
        assert_eq!(f.group, GroupKind::Hosts);
        assert!(f.source.is_hosts() && f.destination.is_hosts(), "{f:?}");
    }
    // Nothing else uses the overlay port.
    assert!(
        p.flows
            .iter()
            .all(|f| f.kind == FlowKind::Overlay || f.ports().is_none_or(|r| !r.contains(51820)))
    );
}

#[test]
fn seed000_ssh_only_from_the_admin_cidr() {
    let p = common::planned("seed000");
    let ssh: Vec<_> = p
        .flows
        .iter()
        .filter(|f| f.ports().is_some_and(|r| r.contains(22)))
        .collect();
    assert_eq!(ssh.len(), 2, "server and hosts");
    for f in ssh {
        assert_eq!(f.kind, FlowKind::Ssh);
        assert_eq!(
            f.source,
            Endpoint::Cidrs(vec![
                "198.51.100.7/32".parse().unwrap_or_else(|e| panic!("{e}"))
            ])
        );
    }
}

fn single(p: u16) -> PortRange {
    PortRange::single(p).unwrap_or_else(|e| panic!("{e}"))
}

// ---- Invariants ------------------------------------------------------------------------------

fn check_invariants(p: &Plan) {
    for f in &p.flows {
        // No server -> host flow, ever.
        assert!(
            !(f.source == Endpoint::Group(GroupKind::Server) && f.destination.is_hosts()),
            "server -> host flow: {f:?}"
        );
        // 0.0.0.0/0 or ::/0 as a source only for published ports and the API.
        if f.source.includes_anywhere() {
            assert!(
                matches!(f.kind, FlowKind::Published | FlowKind::Api),
                "anywhere as source: {f:?}"
            );
        }
        // Host-group inbound TCP only for published ports (SSH needs admin_cidrs).
        if f.group == GroupKind::Hosts
            && f.direction == Direction::Inbound
            && f.protocol() == Protocol::Tcp
        {
            assert_eq!(f.kind, FlowKind::Published, "{f:?}");
        }
        // The overlay stays between hosts.
        if f.kind == FlowKind::Overlay {
            assert!(f.source.is_hosts() && f.destination.is_hosts(), "{f:?}");
        }
    }
}

#[test]
fn invariants_hold_with_defaults() {
    check_invariants(&ok(&base()));
    check_invariants(&common::planned("example_defaults"));
}

proptest::proptest! {
    #[test]
    fn invariants_hold_for_generated_topologies(
        n_hosts in 0usize..8,
        v6 in proptest::prelude::any::<bool>(),
        vxlan in proptest::prelude::any::<bool>(),
        pubs in proptest::collection::vec(
            (1u16..=65000, 0u16..20, proptest::prelude::any::<bool>(), proptest::option::of(0usize..8)),
            0..6
        ),
    ) {
        let mut t = Topology::new(Server::at(vec![ip("10.0.0.10")]));
        if vxlan {
            t.environments.push(Environment {
                name: "e".to_string(),
                overlay: Overlay::Vxlan { port: 4789 },
            });
        }
        for i in 0..n_hosts {
            let mut addrs = vec![ip(&format!("10.0.1.{}", i + 1))];
            if v6 {
                addrs.push(ip(&format!("2001:db8::{}", i + 1)));
            }
            t.hosts.push(Host::new(&format!("h{i}"), addrs));
        }
        for (k, (from, width, udp, host)) in pubs.iter().enumerate() {
            let to = from.saturating_add(*width);
            let host = host.filter(|h| *h < n_hosts).map(|h| format!("h{h}"));
            t.published.push(PublishedPort {
                service: format!("s{k}"),
                stack: None,
                host,
                port: PortRange::new(*from, to).unwrap_or_else(|e| panic!("{e}")),
                protocol: if *udp { Protocol::Udp } else { Protocol::Tcp },
                sources: None,
            });
        }
        // Clashes and reserved ports are legitimate errors; everything else must plan.
        match plan(&t) {
            Ok(p) => check_invariants(&p),
            Err(e) => {
                for problem in e.problems() {
                    proptest::prop_assert!(
                        matches!(problem, PlanError::PortClash { .. } | PlanError::PortReservedByCorral { .. }),
                        "unexpected error {problem}"
                    );
                }
            }
        }
    }
}

#[test]
fn only_control_plane_flow_is_agent_to_server() {
    let p = common::planned("full");
    let control: Vec<_> = p
        .flows
        .iter()
        .filter(|f| {
            (f.source.group() == Some(GroupKind::Server) && f.destination.is_hosts())
                || (f.source.is_hosts() && f.destination.group() == Some(GroupKind::Server))
        })
        .collect();
    assert_eq!(control.len(), 2, "{control:#?}");
    assert!(control.iter().all(|f| f.kind == FlowKind::AgentTunnel));
    check_invariants_except_api_override(&p);
}

fn check_invariants_except_api_override(p: &Plan) {
    for f in &p.flows {
        assert!(!(f.source == Endpoint::Group(GroupKind::Server) && f.destination.is_hosts()));
    }
}

#[test]
fn api_is_limited_to_admin_cidrs_when_given() {
    let mut t = base();
    t.admin_cidrs = vec!["203.0.113.0/24".to_string()];
    let p = ok(&t);
    let api = p
        .flows
        .iter()
        .find(|f| f.kind == FlowKind::Api)
        .unwrap_or_else(|| panic!("no API flow"));
    assert_eq!(
        api.source,
        Endpoint::Cidrs(vec![
            "203.0.113.0/24".parse().unwrap_or_else(|e| panic!("{e}"))
        ])
    );
    let p = ok(&base());
    let api = p.flows.iter().find(|f| f.kind == FlowKind::Api);
    assert!(api.is_some_and(|f| f.source == Endpoint::anywhere()));
    assert!(
        !p.flows.iter().any(|f| f.kind == FlowKind::Ssh),
        "no SSH without admin_cidrs"
    );
}

#[test]
fn datastore_flows_only_between_server_and_datastore() {
    let p = common::planned("full");
    let ds: Vec<_> = p
        .flows
        .iter()
        .filter(|f| f.kind == FlowKind::Datastore)
        .collect();
    assert_eq!(ds.len(), 2);
    for f in ds {
        assert_eq!(f.source, Endpoint::Group(GroupKind::Server));
        assert_eq!(f.destination, Endpoint::Group(GroupKind::Datastore));
        assert_eq!(f.ports(), Some(single(5432)));
    }
    let p = ok(&base());
    assert!(!p.flows.iter().any(|f| f.kind == FlowKind::Datastore));
    assert!(p.group(GroupKind::Datastore).is_none());
}

#[test]
fn egress_hardening_flows() {
    let p = common::planned("full");
    for group in [GroupKind::Server, GroupKind::Hosts] {
        let out: Vec<_> = p
            .flows
            .iter()
            .filter(|f| f.group == group && f.direction == Direction::Outbound)
            .collect();
        let has = |kind: FlowKind, proto: Protocol, port: u16| {
            out.iter().any(|f| {
                f.kind == kind
                    && f.protocol() == proto
                    && f.ports().is_some_and(|r| r.contains(port))
            })
        };
        assert!(has(FlowKind::Dns, Protocol::Udp, 53), "{group:?}");
        assert!(has(FlowKind::Dns, Protocol::Tcp, 53), "{group:?}");
        assert!(has(FlowKind::Ntp, Protocol::Udp, 123), "{group:?}");
        let dns = out.iter().find(|f| f.kind == FlowKind::Dns);
        assert!(dns.is_some_and(|f| f.destination
            == Endpoint::Cidrs(vec![
                "10.0.0.2/32".parse().unwrap_or_else(|e| panic!("{e}"))
            ])));
    }
    let hosts_out: Vec<_> = p
        .flows
        .iter()
        .filter(|f| f.group == GroupKind::Hosts && f.direction == Direction::Outbound)
        .map(|f| f.kind)
        .collect();
    assert!(hosts_out.contains(&FlowKind::AgentTunnel));
    assert!(hosts_out.contains(&FlowKind::Overlay));
    assert!(hosts_out.contains(&FlowKind::ImagePull));
}

#[test]
fn environments_with_different_overlays_stay_separate() {
    let p = common::planned("full");
    let overlay: Vec<_> = p
        .flows
        .iter()
        .filter(|f| f.kind == FlowKind::Overlay && f.direction == Direction::Inbound)
        .collect();
    assert_eq!(overlay.len(), 2);
    assert!(
        overlay
            .iter()
            .any(|f| f.source == Endpoint::Environment("prod".to_string())
                && f.traffic
                    == Traffic::Udp {
                        ports: single(51820)
                    })
    );
    assert!(
        overlay
            .iter()
            .any(|f| f.source == Endpoint::Environment("lab".to_string())
                && f.traffic
                    == Traffic::Udp {
                        ports: single(4789)
                    })
    );
    assert!(
        p.warnings
            .iter()
            .any(|w| w.subject == "environment lab" && w.message.contains("cleartext"))
    );
}

#[test]
fn published_port_range_is_supported() {
    let mut t = base();
    t.published
        .push(publish("nodeports", None, "30000-30010", Protocol::Tcp));
    let p = ok(&t);
    let f = p
        .flows
        .iter()
        .find(|f| f.kind == FlowKind::Published)
        .unwrap_or_else(|| panic!("no published flow"));
    assert_eq!(f.ports().map(|r| (r.from(), r.to())), Some((30000, 30010)));
    assert_eq!(f.destination, Endpoint::Group(GroupKind::Hosts));
    assert_eq!(f.source, Endpoint::anywhere());
}

#[test]
fn published_on_one_host_targets_that_host_and_warns_for_groups() {
    let mut t = base();
    t.published
        .push(publish("web", Some("h2"), "80", Protocol::Tcp));
    let p = ok(&t);
    let f = p.flows.iter().find(|f| f.kind == FlowKind::Published);
    assert!(f.is_some_and(|f| f.destination == Endpoint::Host("h2".to_string())));
    assert!(p.warnings.iter().any(|w| w.message.contains("every host")));
}

#[test]
fn server_role_host_is_in_both_groups() {
    let mut t = base();
    t.hosts[0].role = Some(HostRole::Server);
    let p = ok(&t);
    let server = p
        .group(GroupKind::Server)
        .map(|g| g.members.clone())
        .unwrap_or_default();
    assert!(server.iter().any(|m| m.name == "h1"));
    let hosts = p
        .group(GroupKind::Hosts)
        .map(|g| g.members.clone())
        .unwrap_or_default();
    assert!(hosts.iter().any(|m| m.name == "h1"));
}

#[test]
fn advertised_url_port_is_what_hosts_dial() {
    let mut t = base();
    t.server.advertised_url = Some("https://corral.example.com".to_string());
    let p = ok(&t);
    assert_eq!(p.agent_port, 443);
    let out = p
        .flows
        .iter()
        .find(|f| f.group == GroupKind::Hosts && f.kind == FlowKind::AgentTunnel);
    assert!(out.is_some_and(|f| f.ports() == Some(single(443))));
    let inb = p
        .flows
        .iter()
        .find(|f| f.group == GroupKind::Server && f.kind == FlowKind::AgentTunnel);
    assert!(inb.is_some_and(|f| f.ports() == Some(single(8443))));
    assert!(
        p.warnings
            .iter()
            .any(|w| w.message.contains("load balancer"))
    );
    t.server.advertised_url = Some("https://[2001:db8::10]:9443/".to_string());
    let p = ok(&t);
    assert_eq!(p.agent_port, 9443);
    let members = &p
        .group(GroupKind::Server)
        .map(|g| g.members.clone())
        .unwrap_or_default();
    assert!(members[0].addresses.contains(&ip("2001:db8::10")));
}

#[test]
fn path_mtu_icmp_is_opt_in() {
    assert!(
        !ok(&base())
            .flows
            .iter()
            .any(|f| f.protocol() == Protocol::Icmp)
    );
    let p = common::planned("full");
    let icmp: Vec<_> = p
        .flows
        .iter()
        .filter(|f| f.protocol() == Protocol::Icmp)
        .collect();
    assert_eq!(icmp.len(), 2);
}

#[test]
fn topology_round_trips_through_json() {
    let t = common::fixture("full");
    let text = serde_json::to_string(&t).unwrap_or_else(|e| panic!("{e}"));
    let back: Topology = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t, back);
    let p = ok(&t);
    let json = serde_json::to_value(&p).unwrap_or_else(|e| panic!("{e}"));
    assert!(json["flows"][0]["protocol"].is_string());
    assert!(json["flows"][0]["impact_if_removed"].is_string());
}

// ---- Bad input ---------------------------------------------------------------------------------

#[test]
fn cidr_with_host_bits_is_refused_with_both_fixes() {
    let mut t = base();
    t.admin_cidrs = vec!["10.0.0.1/8".to_string()];
    let e = err(&t);
    let PlanError::BadCidr { context, error } = &e else {
        panic!("expected BadCidr, got {e:?}");
    };
    assert_eq!(context, "admin_cidrs");
    assert!(matches!(error, CidrError::HostBitsSet { .. }));
    let msg = e.to_string();
    assert!(msg.contains("admin_cidrs"), "{msg}");
    assert!(msg.contains("refused"), "{msg}");
    assert!(
        msg.contains("10.0.0.0/8") && msg.contains("10.0.0.1/32"),
        "{msg}"
    );
}

#[test]
fn bad_published_source_names_the_service() {
    let mut t = base();
    let mut p = publish("api", None, "8080", Protocol::Tcp);
    p.sources = Some(vec!["192.168.1.5/24".to_string()]);
    t.published.push(p);
    let msg = err(&t).to_string();
    assert!(msg.contains("api") && msg.contains("8080/tcp"), "{msg}");
    assert!(msg.contains("192.168.1.0/24"), "{msg}");
}

#[test]
fn garbage_cidrs_are_refused() {
    for bad in [
        "10.0.0.0/33",
        "fe80::/200",
        "example.com",
        "",
        "10.0.0.0/-1",
        "::ffff:10.0.0.1",
    ] {
        let mut t = base();
        t.dns_resolvers = vec![bad.to_string()];
        let e = err(&t);
        assert!(matches!(e, PlanError::BadCidr { .. }), "{bad}: {e:?}");
        assert!(e.to_string().starts_with("dns_resolvers:"), "{e}");
    }
}

#[test]
fn overlapping_cidrs_are_normalised_with_a_warning() {
    let mut t = base();
    t.admin_cidrs = vec![
        "10.0.0.0/8".to_string(),
        "10.1.0.0/16".to_string(),
        "10.0.0.0/8".to_string(),
    ];
    let p = ok(&t);
    let ssh = p.flows.iter().find(|f| f.kind == FlowKind::Ssh);
    assert!(ssh.is_some_and(|f| f.source
        == Endpoint::Cidrs(vec!["10.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}"))])));
    let w: Vec<_> = p
        .warnings
        .iter()
        .filter(|w| w.subject == "admin_cidrs")
        .collect();
    assert!(
        w.iter()
            .any(|w| w.message.contains("10.1.0.0/16 lies inside 10.0.0.0/8")),
        "{w:?}"
    );
    assert!(
        w.iter().any(|w| w.message.contains("listed twice")),
        "{w:?}"
    );
}

#[test]
fn admin_anywhere_is_warned_about() {
    let mut t = base();
    t.admin_cidrs = vec!["0.0.0.0/0".to_string()];
    let p = ok(&t);
    assert!(
        p.warnings
            .iter()
            .any(|w| w.subject == "admin_cidrs" && w.message.contains("whole internet"))
    );
}

#[test]
fn publishing_the_overlay_port_is_refused() {
    let mut t = base();
    t.published
        .push(publish("vpn", None, "51820", Protocol::Udp));
    let e = err(&t);
    let PlanError::PortReservedByCorral { service, port, .. } = &e else {
        panic!("expected PortReservedByCorral, got {e:?}");
    };
    assert_eq!(service, "vpn");
    assert_eq!(*port, 51820);
    let msg = e.to_string();
    assert!(
        msg.contains("vpn") && msg.contains("51820/udp") && msg.contains("overlay"),
        "{msg}"
    );

    // A range covering it too.
    let mut t = base();
    t.published
        .push(publish("range", Some("h1"), "51800-51830", Protocol::Udp));
    assert!(matches!(
        err(&t),
        PlanError::PortReservedByCorral { port: 51820, .. }
    ));

    // The same number over TCP is fine.
    let mut t = base();
    t.published
        .push(publish("tcp-ok", None, "51820", Protocol::Tcp));
    ok(&t);
}

#[test]
fn publishing_the_vxlan_port_is_refused() {
    let mut t = base();
    t.environments.push(Environment {
        name: "lab".to_string(),
        overlay: Overlay::Vxlan { port: 4789 },
    });
    t.published
        .push(publish("collector", None, "4789", Protocol::Udp));
    let msg = err(&t).to_string();
    assert!(
        msg.contains("collector") && msg.contains("4789") && msg.contains("vxlan"),
        "{msg}"
    );
}

#[test]
fn publishing_the_server_port_on_the_server_host_is_refused() {
    let mut t = base();
    t.hosts[0].role = Some(HostRole::Server);
    t.published
        .push(publish("proxy", None, "8443", Protocol::Tcp));
    let e = err(&t);
    let msg = e.to_string();
    assert!(
        matches!(e, PlanError::PortReservedByCorral { port: 8443, .. }),
        "{e:?}"
    );
    assert!(
        msg.contains("proxy") && msg.contains("8443/tcp") && msg.contains("h1"),
        "{msg}"
    );
    // On a worker that does not run the server it is fine.
    let mut t = base();
    t.hosts[0].role = Some(HostRole::Server);
    t.published
        .push(publish("proxy", Some("h2"), "8443", Protocol::Tcp));
    ok(&t);
}

#[test]
fn clashing_services_are_refused() {
    let mut t = base();
    t.published
        .push(publish("a", None, "8000-8010", Protocol::Tcp));
    t.published
        .push(publish("b", Some("h2"), "8005", Protocol::Tcp));
    let msg = err(&t).to_string();
    assert!(
        msg.contains("`a`") && msg.contains("`b`") && msg.contains("h2"),
        "{msg}"
    );
    // Different hosts or protocols do not clash.
    let mut t = base();
    t.published
        .push(publish("a", Some("h1"), "80", Protocol::Tcp));
    t.published
        .push(publish("b", Some("h2"), "80", Protocol::Tcp));
    t.published
        .push(publish("c", Some("h2"), "80", Protocol::Udp));
    ok(&t);
}

#[test]
fn host_without_address_is_a_warning_not_an_error() {
    let mut t = base();
    t.hosts.push(Host::new("h3", vec![]));
    let p = ok(&t);
    let w = p
        .warnings
        .iter()
        .find(|w| w.subject == "host h3")
        .unwrap_or_else(|| panic!("no warning for h3"));
    assert!(w.message.contains("CIDR-based formats"), "{}", w.message);
    assert!(w.message.contains("group-based formats"), "{}", w.message);
}

#[test]
fn unusable_addresses_are_refused() {
    for (addr, word) in [
        ("127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("fe80::1", "link-local"),
        ("::ffff:10.0.0.1", "IPv4-mapped"),
        ("::1", "loopback"),
    ] {
        let mut t = base();
        t.hosts[1].addresses = vec![ip(addr)];
        let e = err(&t);
        assert!(matches!(e, PlanError::BadAddress { .. }), "{addr}: {e:?}");
        let msg = e.to_string();
        assert!(msg.contains("host h2") && msg.contains(word), "{msg}");
    }
}

#[test]
fn duplicate_addresses_and_names_are_refused() {
    let mut t = base();
    t.hosts[1].addresses = vec![ip("10.0.1.11")];
    let msg = err(&t).to_string();
    assert!(
        msg.contains("10.0.1.11") && msg.contains("h1") && msg.contains("h2"),
        "{msg}"
    );

    let mut t = base();
    t.hosts[1].addresses = vec![ip("10.0.0.10")];
    let msg = err(&t).to_string();
    assert!(msg.contains("role: server"), "{msg}");

    let mut t = base();
    t.hosts[1].name = "h1".to_string();
    assert!(matches!(
        err(&t),
        PlanError::DuplicateName { what: "host", .. }
    ));
}

#[test]
fn names_that_renderers_cannot_carry_are_refused() {
    for bad in [
        "",
        "web 1",
        "web\"1",
        "a'b",
        "x;rm -rf /",
        "-lead",
        "x\ny",
        &"a".repeat(64),
    ] {
        let mut t = base();
        t.hosts[0].name = bad.to_string();
        let e = err(&t);
        assert!(
            e.problems()
                .iter()
                .any(|p| matches!(p, PlanError::BadName { what: "host", .. })),
            "{bad:?}: {e}"
        );
        assert!(!e.to_string().contains('\n') || matches!(e, PlanError::Many(_)));
    }
    let mut t = base();
    t.published
        .push(publish("bad service", None, "80", Protocol::Tcp));
    assert!(matches!(
        err(&t),
        PlanError::BadName {
            what: "service",
            ..
        }
    ));
    let mut t = base();
    t.bridge_interfaces = vec!["docker0\"; drop".to_string()];
    assert!(matches!(err(&t), PlanError::BadInterface { .. }));
    let mut t = base();
    t.security_groups.hosts = "sg bad".to_string();
    assert!(matches!(err(&t), PlanError::BadName { .. }));
}

#[test]
fn unknown_and_ambiguous_references_are_refused() {
    let mut t = base();
    t.published
        .push(publish("web", Some("nope"), "80", Protocol::Tcp));
    let msg = err(&t).to_string();
    assert!(msg.contains("web") && msg.contains("nope"), "{msg}");

    let mut t = base();
    t.hosts[0].environment = Some("prod".to_string());
    let msg = err(&t).to_string();
    assert!(msg.contains("prod") && msg.contains("default"), "{msg}");

    let mut t = base();
    for name in ["a", "b"] {
        t.environments.push(Environment {
            name: name.to_string(),
            overlay: Overlay::default(),
        });
    }
    let e = err(&t);
    assert_eq!(e.problems().len(), 2, "{e}");
    assert!(
        e.problems()
            .iter()
            .all(|p| matches!(p, PlanError::AmbiguousEnvironment { count: 2, .. }))
    );
}

#[test]
fn bad_server_settings_are_refused() {
    let mut t = base();
    t.server.advertised_url = Some("http://corral.example.com".to_string());
    assert!(err(&t).to_string().contains("https://"));
    for url in [
        "https://",
        "https://host:0",
        "https://host:99999",
        "https://[::1",
        "https://u@h",
    ] {
        let mut t = base();
        t.server.advertised_url = Some(url.to_string());
        assert!(
            matches!(err(&t), PlanError::BadAdvertisedUrl { .. }),
            "{url}"
        );
    }
    let mut t = base();
    t.server.listen_addresses = vec![ip("127.0.0.1")];
    assert!(matches!(err(&t), PlanError::ServerListensOnLoopback { .. }));
    let mut t = base();
    t.server.listen_port = 0;
    assert!(matches!(err(&t), PlanError::ZeroPort { .. }));
    let mut t = base();
    t.environments.push(Environment {
        name: "z".to_string(),
        overlay: Overlay::Encrypted { port: 0 },
    });
    assert!(err(&t).to_string().contains("port 0"));
}

#[test]
fn icmp_cannot_be_published() {
    let mut t = base();
    t.published.push(PublishedPort {
        service: "ping".to_string(),
        stack: None,
        host: None,
        port: single(1),
        protocol: Protocol::Icmp,
        sources: None,
    });
    assert!(matches!(err(&t), PlanError::PublishedIcmp { .. }));
}

#[test]
fn empty_source_list_opens_nothing() {
    let mut t = base();
    let mut p = publish("closed", None, "9000", Protocol::Tcp);
    p.sources = Some(vec![]);
    t.published.push(p);
    let plan = ok(&t);
    assert!(!plan.flows.iter().any(|f| f.kind == FlowKind::Published));
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.message.contains("open to nobody"))
    );
}

#[test]
fn size_limits_are_enforced() {
    let mut t = base();
    t.hosts = (0..corral_firewall::plan::MAX_HOSTS + 1)
        .map(|i| Host::new(&format!("h{i}"), vec![]))
        .collect();
    assert!(matches!(err(&t), PlanError::TooMany { .. }));
    let mut t = base();
    t.admin_cidrs = vec!["10.0.0.0/8".to_string(); corral_firewall::plan::MAX_LIST + 1];
    assert!(matches!(err(&t), PlanError::TooMany { .. }));
}

#[test]
fn several_problems_are_all_reported() {
    let mut t = base();
    t.admin_cidrs = vec!["10.0.0.1/8".to_string()];
    t.published
        .push(publish("vpn", None, "51820", Protocol::Udp));
    t.hosts[1].addresses = vec![ip("127.0.0.1")];
    let e = err(&t);
    assert_eq!(e.problems().len(), 3, "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with("3 problems"), "{msg}");
}

#[test]
fn json_input_errors_are_clear() {
    let r: Result<Topology, _> =
        serde_json::from_str(r#"{"server": {"addresses": ["10.0.0.1"]}, "admin_cidr": "x"}"#);
    let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("admin_cidr"), "{msg}");
    let r: Result<Topology, _> =
        serde_json::from_str(r#"{"server": {}, "published": [{"service": "x", "port": "10-5"}]}"#);
    let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("reversed"), "{msg}");
    let r: Result<Topology, _> = serde_json::from_str(
        r#"{"server": {}, "environments": [{"name": "x", "overlay": {"mode": "ipsec"}}]}"#,
    );
    assert!(r.is_err());
    let r: Result<Topology, _> = serde_json::from_str(
        r#"{"server": {}, "hosts": [{"name": "h", "addresses": ["10.0.0.300"]}]}"#,
    );
    assert!(r.is_err());
}

#[test]
fn plan_is_deterministic() {
    let t = common::fixture("full");
    assert_eq!(plan(&t), plan(&t));
}
