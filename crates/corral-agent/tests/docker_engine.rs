//! The agent's Docker engine against a real dockerd at /var/run/docker.sock, with the local
//! image `corral-test/busybox:latest` (`scripts/test-image.sh`); without them the test fails,
//! saying so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerConfig;
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, ListNetworksOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptions, RemoveVolumeOptions,
};
use corral_agent::docker::{DEFAULT_DOCKER_HOST, Engine};
use corral_proto::{
    ContainerSpec, ContainerState, Health, HealthSpec, MountSpec, NetworkSpec, PortSpec, Report,
    RestartPolicyName, RestartSpec, StackCleanup, labels,
};
use corral_testkit::require;

const IMAGE: &str = require::TEST_IMAGE;

fn spec(stack: &str, name: &str) -> ContainerSpec {
    ContainerSpec {
        corral_id: format!("{stack}-{name}-id"),
        name: format!("{stack}-{name}"),
        environment: "test".into(),
        image: IMAGE.into(),
        env: Vec::new(),
        ports: Vec::new(),
        labels: BTreeMap::from([(labels::STACK.to_owned(), stack.to_owned())]),
        cmd: vec!["sleep".into(), "600".into()],
        entrypoint: None,
        mounts: Vec::new(),
        restart: None,
        healthcheck: None,
        user: None,
        working_dir: None,
        hostname: None,
        network: Some(NetworkSpec {
            name: format!("{stack}_default"),
            aliases: vec![name.to_owned()],
        }),
        expose: Vec::new(),
        stop_grace_secs: None,
        dns: Vec::new(),
        ..ContainerSpec::default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// An image whose entrypoint (`false`) makes every container exit at once unless cleared.
async fn image_with_entrypoint(docker: &Docker, repo: &str) {
    let base = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name(&format!("{repo}-base"))
                    .build(),
            ),
            bollard::models::ContainerCreateBody {
                image: Some(IMAGE.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    docker
        .commit_container(
            CommitContainerOptionsBuilder::default()
                .container(&base.id)
                .repo(repo)
                .tag("latest")
                .changes("ENTRYPOINT [\"false\"]")
                .build(),
            ContainerConfig::default(),
        )
        .await
        .unwrap();
    docker.remove_container(&base.id, None).await.unwrap();
}

/// Every container of the stack on the engine, running or not.
async fn stack_containers(docker: &Docker, stack: &str) -> Vec<bollard::models::ContainerSummary> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{}={stack}", labels::STACK)],
    )]);
    docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap_or_default()
}

async fn cleanup(docker: &Docker, stack: &str) {
    for c in stack_containers(docker, stack).await {
        let _ = docker
            .remove_container(
                c.id.as_deref().unwrap_or_default(),
                Some(
                    RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await;
    }
    let _ = docker.remove_network(&format!("{stack}_default")).await;
    let _ = docker
        .remove_volume(&format!("{stack}_data"), None::<RemoveVolumeOptions>)
        .await;
    let _ = docker
        .remove_image(
            &format!("{stack}-entrypoint:latest"),
            None::<RemoveImageOptions>,
            None,
        )
        .await;
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stack_containers_on_a_real_docker() {
    let (reports_tx, mut reports_rx) = tokio::sync::mpsc::channel(1024);
    let engine = Engine::watch(DEFAULT_DOCKER_HOST.into(), "local".into(), reports_tx);
    let docker = match engine.client().await {
        Ok(d) => d,
        Err(e) => require::missing(
            &format!("a running dockerd at {DEFAULT_DOCKER_HOST} ({e})"),
            "run `bash scripts/test.sh`, which installs and starts it",
        ),
    };
    if let Err(e) = docker.inspect_image(IMAGE).await {
        require::missing(
            &format!("the image {IMAGE} in the dockerd at {DEFAULT_DOCKER_HOST} ({e})"),
            "run `bash scripts/test.sh` or `bash scripts/test-image.sh`, which build it",
        );
    }
    let stack = format!("agt{}", std::process::id());
    let network = format!("{stack}_default");
    let volume = format!("{stack}_data");
    cleanup(&docker, &stack).await;
    let entrypoint_image = format!("{stack}-entrypoint:latest");
    image_with_entrypoint(&docker, &format!("{stack}-entrypoint")).await;

    // Images: present, absent, invalid, each reported once.
    let missing = engine
        .missing_images(&[
            IMAGE.into(),
            "corral-test/absent:1".into(),
            "corral-test/absent:1".into(),
            "Not A Reference".into(),
        ])
        .await
        .unwrap();
    assert_eq!(missing, ["corral-test/absent:1", "Not A Reference"]);

    // A web container with everything, and a second one racing it for the network.
    let bind_dir = std::env::temp_dir().join(format!("{stack}-conf"));
    std::fs::create_dir_all(&bind_dir).unwrap();
    let port = free_port();
    let mut web = spec(&stack, "web");
    web.image = entrypoint_image.clone();
    web.entrypoint = Some(Vec::new());
    web.ports = vec![PortSpec {
        host: port,
        container: 80,
        udp: false,
        host_ip: Some("127.0.0.1".parse().unwrap()),
    }];
    web.expose = vec!["9000/tcp".into()];
    web.mounts = vec![
        MountSpec::Volume {
            source: volume.clone(),
            target: "/data".into(),
            read_only: false,
        },
        MountSpec::Bind {
            source: bind_dir.display().to_string(),
            target: "/conf".into(),
            read_only: true,
        },
        MountSpec::Anonymous {
            target: "/cache".into(),
        },
    ];
    web.restart = Some(RestartSpec {
        name: RestartPolicyName::UnlessStopped,
        max_retries: None,
    });
    web.healthcheck = Some(HealthSpec {
        test: Some(vec!["CMD-SHELL".into(), "test -d /data".into()]),
        interval_ms: Some(200),
        timeout_ms: Some(2_000),
        start_period_ms: None,
        retries: Some(3),
    });
    web.user = Some("0".into());
    web.working_dir = Some("/data".into());
    web.hostname = Some("webhost".into());
    web.stop_grace_secs = Some(7);
    let mut db = spec(&stack, "db");
    db.mounts = vec![MountSpec::Volume {
        source: volume.clone(),
        target: "/data".into(),
        read_only: true,
    }];
    let (w, d) = tokio::join!(engine.run(&web), engine.run(&db));
    let w = w.unwrap();
    let d = d.unwrap();
    assert_eq!(w.state, ContainerState::Running, "{w:?}");
    assert_eq!(d.state, ContainerState::Running, "{d:?}");
    // Idempotent by corral id.
    assert_eq!(engine.run(&web).await.unwrap().docker_id, w.docker_id);

    let filters = HashMap::from([("name".to_string(), vec![network.clone()])]);
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    assert_eq!(networks.len(), 1, "exactly one network {network}");
    let net_labels = networks[0].labels.clone().unwrap_or_default();
    assert_eq!(net_labels[labels::MANAGED], "true");
    assert_eq!(net_labels[labels::STACK], stack);
    assert_eq!(networks[0].driver.as_deref(), Some("bridge"));
    let vol = docker.inspect_volume(&volume).await.unwrap();
    assert_eq!(vol.labels[labels::MANAGED], "true");
    assert_eq!(vol.labels[labels::STACK], stack);

    let c = docker.inspect_container(&w.docker_id, None).await.unwrap();
    let config = c.config.clone().unwrap();
    let host = c.host_config.clone().unwrap();
    assert!(config.entrypoint.unwrap_or_default().is_empty());
    assert_eq!(config.stop_timeout, Some(7));
    assert_eq!(config.user.as_deref(), Some("0"));
    assert_eq!(config.working_dir.as_deref(), Some("/data"));
    assert_eq!(config.hostname.as_deref(), Some("webhost"));
    assert!(
        config
            .exposed_ports
            .unwrap_or_default()
            .contains(&"9000/tcp".to_owned())
    );
    assert_eq!(config.healthcheck.unwrap().interval, Some(200_000_000));
    assert_eq!(host.network_mode.as_deref(), Some(network.as_str()));
    assert_eq!(
        host.restart_policy.unwrap().name.map(|n| n.to_string()),
        Some("unless-stopped".to_owned())
    );
    let binding = host.port_bindings.unwrap()["80/tcp"].clone().unwrap();
    assert_eq!(binding[0].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(binding[0].host_port, Some(port.to_string()));
    let endpoints = c.network_settings.unwrap().networks.unwrap_or_default();
    let aliases = endpoints[&network].aliases.clone().unwrap_or_default();
    assert!(aliases.contains(&"web".to_owned()), "{aliases:?}");
    let mounts = c.mounts.unwrap_or_default();
    let anonymous = mounts
        .iter()
        .find(|m| m.destination.as_deref() == Some("/cache"))
        .and_then(|m| m.name.clone())
        .unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.destination.as_deref() == Some("/conf") && m.rw == Some(false))
    );

    // Health, from the inventory and from an event.
    let healthy = wait_for("web to become healthy in the inventory", async || {
        let Report::Inventory { containers, .. } = engine.inventory().await else {
            return None;
        };
        containers
            .into_iter()
            .find(|c| c.corral_id == web.corral_id && c.health == Some(Health::Healthy))
    })
    .await;
    assert_eq!(healthy.restart_count, 0);
    wait_for("a health change report", async || {
        while let Ok(r) = reports_rx.try_recv() {
            if let Report::Change { container } = r
                && container.corral_id == web.corral_id
                && container.health == Some(Health::Healthy)
            {
                return Some(());
            }
        }
        None
    })
    .await;
    let db_status = engine.start(&db.corral_id).await.unwrap().unwrap();
    assert_eq!(db_status.health, None);

    // Docker restarts a failing container under on-failure, and the count is reported.
    let mut flaky = spec(&stack, "flaky");
    flaky.cmd = vec!["sh".into(), "-c".into(), "exit 3".into()];
    flaky.restart = Some(RestartSpec {
        name: RestartPolicyName::OnFailure,
        max_retries: Some(2),
    });
    let _ = engine.run(&flaky).await;
    let flaky_status = wait_for("flaky to be restarted twice", async || {
        let Report::Inventory { containers, .. } = engine.inventory().await else {
            return None;
        };
        containers.into_iter().find(|c| {
            c.corral_id == flaky.corral_id
                && c.restart_count == 2
                && c.state == ContainerState::Exited
        })
    })
    .await;
    assert_eq!(flaky_status.exit_code, Some(3));

    // The network is in use: cleanup refuses, with the container named.
    let request = StackCleanup {
        stack: stack.clone(),
        network: network.clone(),
        volumes: vec![volume.clone(), format!("{stack}_never_created")],
    };
    let err = engine.stack_cleanup(&request).await.unwrap_err();
    assert!(err.contains("still used"), "{err}");
    assert!(err.contains(&web.name), "{err}");

    // Removal honours the grace period (sleep as PID 1 ignores SIGTERM) and takes the
    // anonymous volume along.
    let started = Instant::now();
    engine.remove(&web.corral_id, Some(1)).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert!(docker.inspect_container(&w.docker_id, None).await.is_err());
    assert!(docker.inspect_volume(&anonymous).await.is_err());
    // Without a grace period: at once. Twice: still fine.
    let started = Instant::now();
    engine.remove(&db.corral_id, None).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    engine.remove(&db.corral_id, None).await.unwrap();
    engine.remove(&flaky.corral_id, Some(5)).await.unwrap();

    let outcome = engine.stack_cleanup(&request).await.unwrap();
    assert!(outcome.network_removed);
    assert_eq!(outcome.volumes_removed, std::slice::from_ref(&volume));
    let again = engine.stack_cleanup(&request).await.unwrap();
    assert!(!again.network_removed);
    assert!(again.volumes_removed.is_empty());

    // A network corral did not create for this stack is left alone.
    let foreign = StackCleanup {
        stack: "someone-else".into(),
        network: network.clone(),
        volumes: Vec::new(),
    };
    let _ = engine.run(&spec(&stack, "solo")).await.unwrap();
    engine
        .remove(&format!("{stack}-solo-id"), None)
        .await
        .unwrap();
    let skipped = engine.stack_cleanup(&foreign).await.unwrap();
    assert!(!skipped.network_removed);
    assert_eq!(skipped.skipped, std::slice::from_ref(&network));

    cleanup(&docker, &stack).await;
    let _ = std::fs::remove_dir_all(&bind_dir);
}

/// An engine that runs the overlay but has no overlay network yet (no configuration from the
/// server, or one that could not be applied) refuses to start a stack container outside it,
/// creating nothing: the container would have no overlay address and no service names for
/// good. A container of no stack still runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_stack_container_waits_for_the_overlay_instead_of_starting_without_it() {
    let (reports_tx, _reports_rx) = tokio::sync::mpsc::channel(1024);
    let engine = Engine::watch(DEFAULT_DOCKER_HOST.into(), "local".into(), reports_tx);
    let docker = match engine.client().await {
        Ok(d) => d,
        Err(e) => require::missing(
            &format!("a running dockerd at {DEFAULT_DOCKER_HOST} ({e})"),
            "run `bash scripts/test.sh`, which installs and starts it",
        ),
    };
    let stack = format!("ovw{}", std::process::id());
    cleanup(&docker, &stack).await;
    engine.expect_overlay();
    let err = engine.run(&spec(&stack, "web")).await.unwrap_err();
    assert!(
        err.contains("the overlay network is not ready on host local")
            && err.contains("--no-overlay"),
        "{err}"
    );
    let made = stack_containers(&docker, &stack).await;
    assert!(
        made.is_empty(),
        "nothing is created outside the overlay: {made:?}"
    );
    // Not a stack's: it runs.
    let mut single = spec(&stack, "single");
    single.labels.clear();
    single.network = None;
    let status = engine.run(&single).await.unwrap();
    assert_eq!(status.state, ContainerState::Running);
    engine.remove(&single.corral_id, None).await.unwrap();
    cleanup(&docker, &stack).await;
}
