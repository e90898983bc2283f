//! The kit's lab pieces work, and leave nothing behind: namespaces that reach each other across
//! the bridge, a dockerd of the test's own, a process in a namespace, a capture that catches up
//! before it is read.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use corral_testkit::{Capture, DockerFirewall, Dockerd, Network, leftovers, require, wait_until};

#[test]
fn a_network_with_an_engine_and_a_capture_works_and_leaves_nothing_behind() {
    require::tool("busybox", "busybox-static");
    let dir = corral_testkit::temp_dir("corral-testkit-");
    let dir_s = dir.path().display().to_string();
    let mut net = Network::new();
    let (a, b) = (
        net.add("a").name().to_owned(),
        net.add("b").name().to_owned(),
    );
    let bridge = net.bridge().to_owned();
    let (ns_a, ns_b) = (net.ns("a"), net.ns("b"));
    assert!(ns_a.ip().starts_with("198.18.") && ns_b.ip().starts_with("198.18."));
    // The root namespace has no address on the lab network.
    let root = corral_testkit::netns::run_ok("ip", &["-4", "-o", "addr", "show"]);
    assert!(!root.contains(&format!(" {}.", net.prefix())), "{root}");

    {
        // A TCP service in b, reached from a across the bridge, and seen by a capture on it.
        let _sink = ns_b.tcp_sink(7070);
        let capture = Capture::start(None, &bridge, &dir.path().join("bridge.pcap"), &[]);
        let to_b: SocketAddr = format!("{}:7070", ns_b.ip()).parse().unwrap();
        assert!(ns_a.tcp_connects(to_b, Duration::from_secs(2)));
        capture.sync(&net, ns_a);
        let pcap = capture.stop();
        let syn = format!("{}.7070: Flags [S]", ns_b.ip());
        assert!(
            pcap.packets().iter().any(|l| l.contains(&syn)),
            "{:?}",
            pcap.packets()
        );

        // A process in a namespace, and an engine in the other, which runs a container.
        let mut sleeper = ns_a.spawn(&["busybox", "sleep", "600"], dir.path().join("sleep.log"));
        let mut dockerd = Dockerd::start(ns_b, &dir.path().join("docker"), DockerFirewall::Off);
        dockerd.load_test_image();
        dockerd.docker_ok(&[
            "run",
            "-d",
            "--name",
            "kit-probe",
            require::TEST_IMAGE,
            "sleep",
            "600",
        ]);
        wait_until(Duration::from_secs(10), "the container to run", || {
            dockerd
                .docker_ok(&["ps", "--format", "{{.Names}}"])
                .contains("kit-probe")
        });
        assert!(sleeper.running());
        // Stopped and started again, the engine answers with its state.
        dockerd.stop();
        dockerd.launch();
        assert!(
            dockerd
                .docker_ok(&["ps", "-a", "--format", "{{.Names}}"])
                .contains("kit-probe")
        );
        assert!(!leftovers::processes_mentioning(&dir_s).is_empty());
        drop(dockerd);
        drop(sleeper);
    }
    assert_eq!(
        leftovers::processes_mentioning(&dir_s),
        Vec::<String>::new(),
        "processes survived their drop"
    );
    assert_eq!(leftovers::mounts_under(dir.path()), Vec::<String>::new());

    drop(net);
    for ns in [&a, &b] {
        assert!(!leftovers::netns_exists(ns), "namespace {ns} survived");
    }
    assert!(!leftovers::link_exists(&bridge), "bridge {bridge} survived");
}
