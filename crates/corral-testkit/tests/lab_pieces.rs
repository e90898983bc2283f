//! The kit's lab pieces work, and leave nothing behind: namespaces that reach each other across
//! the bridge, a dockerd of the test's own, a process in a namespace, a capture that catches up
//! before it is read, a private registry an engine in another namespace pushes to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use corral_testkit::{
    Capture, DockerFirewall, Dockerd, Netns, Network, Registry, leftovers, require, wait_until,
};

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

#[test]
fn a_registry_serves_pushed_images_behind_tls_and_basic_auth() {
    require::tool("curl", "curl");
    let dir = corral_testkit::temp_dir("corral-testkit-registry-");
    let mut net = Network::new();
    net.add("h1");
    net.add("reg");
    let (h1, reg_ns) = (net.ns("h1"), net.ns("reg"));
    let dockerd = Dockerd::start(h1, &dir.path().join("docker"), DockerFirewall::Off);
    dockerd.load_test_image();
    let mut reg = Registry::start(reg_ns, &dir.path().join("registry"));
    let host = reg.host();
    assert_eq!(host, format!("{}:5000", reg_ns.ip()));
    assert!(reg.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    let certs_d = std::path::Path::new("/etc/docker/certs.d").join(&host);

    // The engine in h1 pushes across the bridge; the CA was trusted only for the push.
    let digest = reg.push(&dockerd, require::TEST_IMAGE, "kit/busybox:v1");
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert!(!certs_d.exists(), "{} outlived the push", certs_d.display());
    // So the engine no longer trusts the registry.
    let pull = dockerd.docker(&["pull", &format!("{host}/kit/busybox:v1")]);
    let pull_err = String::from_utf8_lossy(&pull.stderr);
    assert!(
        !pull.status.success() && pull_err.contains("x509"),
        "{pull:?}"
    );
    // The engine keeps no tag of the registry's: a pull would have to ask it.
    assert!(
        !dockerd
            .docker_ok(&["image", "ls", "--format", "{{.Repository}}"])
            .contains(&host)
    );

    // Clients in h1 that trust the CA: without credentials 401, with them the tag and the
    // pushed manifest.
    let user = format!("{}:{}", reg.username(), reg.password());
    assert_eq!(status(&reg, h1, &[&reg.url("/v2/")]), "401");
    assert_eq!(status(&reg, h1, &["-u", &user, &reg.url("/v2/")]), "200");
    let wrong = format!("{}:wrong", reg.username());
    assert_eq!(status(&reg, h1, &["-u", &wrong, &reg.url("/v2/")]), "401");
    let tags = reg.curl(
        h1,
        &["-f", "-u", &user, &reg.url("/v2/kit/busybox/tags/list")],
    );
    let tags: serde_json::Value =
        serde_json::from_slice(&tags.stdout).unwrap_or_else(|e| panic!("tags/list: {e}: {tags:?}"));
    assert_eq!(tags["name"], "kit/busybox");
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    assert_eq!(
        manifest_digest(&reg, h1, &user, "kit/busybox", "v1"),
        digest
    );
    // Without the CA, a client refuses the registry's certificate.
    let untrusted = h1.run(&["curl", "-sS", "--max-time", "10", &reg.url("/v2/")]);
    assert_eq!(untrusted.status.code(), Some(60), "{untrusted:?}");

    // A new build under the same tag.
    let digest2 = reg.push_new_build(&dockerd, "kit/busybox:v1");
    assert!(
        digest2.starts_with("sha256:") && digest2 != digest,
        "{digest2}"
    );
    assert_eq!(
        manifest_digest(&reg, h1, &user, "kit/busybox", "v1"),
        digest2
    );
    assert!(!certs_d.exists());
    eprintln!("pushed {host}/kit/busybox:v1 as {digest}, then as {digest2}");

    // Down, the registry refuses connections; up again, it serves the same storage.
    let addr: SocketAddr = host.parse().unwrap();
    reg.stop();
    assert!(!h1.tcp_connects(addr, Duration::from_secs(2)));
    let refused = reg.curl(h1, &[&reg.url("/v2/")]);
    assert_eq!(refused.status.code(), Some(7), "{refused:?}");
    reg.start_again();
    assert_eq!(status(&reg, h1, &[&reg.url("/v2/")]), "401");
    assert_eq!(
        manifest_digest(&reg, h1, &user, "kit/busybox", "v1"),
        digest2
    );

    // What the product may leave in certs.d for the registry goes with it.
    std::fs::create_dir_all(&certs_d).unwrap();
    std::fs::write(certs_d.join("ca.crt"), reg.ca_pem()).unwrap();
    let dir_s = dir.path().display().to_string();
    drop(reg);
    assert!(
        !certs_d.exists(),
        "{} survived the registry",
        certs_d.display()
    );
    assert!(!dir.path().join("registry/tls").exists());
    drop(dockerd);
    assert_eq!(
        leftovers::processes_mentioning(&dir_s),
        Vec::<String>::new(),
        "processes survived their drop"
    );
    drop(net);
}

/// The HTTP status `curl ARGS…` gets from `ns` (trusting the registry's CA).
fn status(reg: &Registry, ns: &Netns, args: &[&str]) -> String {
    let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    a.extend(args);
    String::from_utf8_lossy(&reg.curl(ns, &a).stdout).into_owned()
}

/// The digest the registry names for `repo:tag`'s manifest (Docker's v2 schema 2 format, the
/// one `docker push` sends), from `HEAD /v2/REPO/manifests/TAG` in `ns`.
fn manifest_digest(reg: &Registry, ns: &Netns, user: &str, repo: &str, tag: &str) -> String {
    let url = reg.url(&format!("/v2/{repo}/manifests/{tag}"));
    let out = reg.curl(
        ns,
        &[
            "-f",
            "-I",
            "-u",
            user,
            "-H",
            "Accept: application/vnd.docker.distribution.manifest.v2+json",
            &url,
        ],
    );
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("docker-content-digest")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| {
            panic!(
                "no digest for {url}: {head}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}
