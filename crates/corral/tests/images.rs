//! Images from a real private registry (Debian's `docker-registry` with TLS under a
//! throwaway CA and htpasswd basic auth) pulled by real lab hosts (each a namespace with its own
//! dockerd and agent): the refusals before a registry is known, with a wrong password and for a
//! missing image; one digest on every host; a push under the same tag rolling the service; a
//! stopped registry failing only the replica that must pull; and the account never written
//! anywhere in clear.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use corral_testkit::{DockerFirewall, Lab, LabConfig, Registry, wait_until};
use serde_json::Value;

fn lab(hosts: usize) -> Lab {
    Lab::up(LabConfig {
        bin: Path::new(corral_bin()),
        hosts,
        server_args: &[],
        docker_firewall: DockerFirewall::Off,
        overlay: &[],
    })
}

/// `corral registry add` of `reg` (its CA, its user) with `password`; must succeed.
fn add_registry(lab: &Lab, reg: &Registry, password: &str) {
    let ca = reg.ca_path();
    let out = lab.server.cli_with_stdin(
        &[
            "registry",
            "add",
            &reg.host(),
            "--username",
            reg.username(),
            "--password-stdin",
            "--ca-file",
            ca.to_str().unwrap(),
        ],
        &format!("{password}\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// `corral up --wait` of `compose` as stack `app`.
fn up(lab: &Lab, compose: &str) -> Output {
    let file = lab.dir().join("compose.yaml");
    std::fs::write(&file, compose).unwrap();
    lab.cli(&[
        "up",
        "-f",
        file.to_str().unwrap(),
        "-p",
        "app",
        "--wait",
        "--timeout",
        "120s",
    ])
}

fn ps(lab: &Lab) -> Value {
    lab.server.cli_json(&["ps", "-p", "app"])[0].clone()
}

fn web(view: &Value) -> Value {
    view["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .cloned()
        .unwrap_or(Value::Null)
}

fn stacks(lab: &Lab) -> usize {
    lab.server
        .cli_json(&["stack", "ls"])
        .as_array()
        .unwrap()
        .len()
}

/// The stack's containers on one host: (name, image as created, image id).
fn containers(lab: &Lab, host: &str) -> Vec<(String, String, String)> {
    let d = lab.dockerd(host);
    d.docker_ok(&[
        "ps",
        "--filter",
        "label=io.corral.stack=app",
        "--format",
        "{{.Names}}",
    ])
    .lines()
    .map(|name| {
        let inspect = d.docker_ok(&["inspect", "--format", "{{.Config.Image}} {{.Image}}", name]);
        let (image, id) = inspect.trim().split_once(' ').unwrap();
        (name.to_owned(), image.to_owned(), id.to_owned())
    })
    .collect()
}

fn compose(image: &str, replicas: u32) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    deploy: {{ replicas: {replicas} }}\n    x-corral: {{ anti_affinity: [web] }}\n"
    )
}

/// Every file under `dir` that holds `needle` (file names, for the message).
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let out = std::process::Command::new("grep")
        .args(["-r", "-F", "-l", "-s", "--", needle])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn tags_resolve_to_one_digest_pulled_with_a_sealed_account_and_a_push_rolls_the_service() {
    let mut lab = lab(3);
    lab.net.add("reg");
    let mut reg = Registry::start(lab.ns("reg"), &lab.dir().join("registry"));
    let host = reg.host();
    let image = format!("{host}/team/app:1");
    let first = reg.push(
        lab.dockerd("h1"),
        corral_testkit::require::TEST_IMAGE,
        "team/app:1",
    );

    // Unknown to corral, the registry's CA is trusted nowhere: refused, nothing stored.
    let out = up(&lab, &compose(&image, 2));
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("certificate"), "{said}");
    assert!(said.contains("nothing was changed"), "{said}");
    assert_eq!(stacks(&lab), 0);

    // A wrong password: the registry's own reason.
    let add = |password: &str| add_registry(&lab, &reg, password);
    add("not-the-password");
    let out = up(&lab, &compose(&image, 2));
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("unauthorized") || said.contains("authentication required"),
        "{said}"
    );
    assert_eq!(stacks(&lab), 0);

    add(reg.password());
    let listed = lab.server.cli_json(&["registry", "ls"]);
    assert_eq!(listed[0]["registry"], host.as_str(), "{listed}");
    assert_eq!(listed[0]["has_password"], true);
    assert!(!listed.to_string().contains(reg.password()));

    // An image the registry does not have.
    let out = up(&lab, &compose(&format!("{host}/team/nothere:1"), 1));
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("team/nothere:1"), "{said}");
    assert!(
        said.contains("unknown") || said.contains("not found"),
        "{said}"
    );
    assert_eq!(stacks(&lab), 0);

    // Deployed: the tag resolved once; both replicas run that digest.
    let out = up(&lab, &compose(&image, 2));
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("{image} → {first}")), "{said}");
    let view = ps(&lab);
    assert_eq!(web(&view)["image"], image.as_str(), "{view}");
    assert_eq!(web(&view)["digest"], first.as_str(), "{view}");
    let pinned = format!("{host}/team/app@{first}");
    let mut running = Vec::new();
    for h in ["h1", "h2", "h3"] {
        running.extend(containers(&lab, h));
    }
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(running.iter().all(|(_, i, _)| *i == pinned), "{running:?}");
    assert_eq!(running[0].2, running[1].2, "the same image on both hosts");

    // A new build under the same tag: `up` with the same file says so and rolls.
    let second = reg.push_new_build(lab.dockerd("h1"), "team/app:1");
    assert_ne!(first, second);
    let out = up(&lab, &compose(&image, 2));
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("now resolves to {second}")),
        "{said}"
    );
    assert!(said.contains("rolling update of web"), "{said}");
    let pinned = format!("{host}/team/app@{second}");
    wait_until(
        Duration::from_secs(60),
        "both replicas on the new digest",
        || {
            let mut running = Vec::new();
            for h in ["h1", "h2", "h3"] {
                running.extend(containers(&lab, h));
            }
            running.len() == 2 && running.iter().all(|(_, i, _)| *i == pinned)
        },
    );
    assert_eq!(web(&ps(&lab))["digest"], second.as_str());

    // The registry goes down: `up` keeps the digest the service runs and changes nothing…
    let before: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .flat_map(|h| containers(&lab, h))
        .map(|c| c.0)
        .collect();
    reg.stop();
    let out = up(&lab, &compose(&image, 2));
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("keeps the digest it runs, {second}")),
        "{said}"
    );
    assert!(!said.contains("rolling update"), "{said}");
    // …a new service whose image its hosts do not have is refused with the reason…
    let out = up(
        &lab,
        &format!(
            "{}  other:\n    image: {host}/team/other:1\n",
            compose(&image, 2)
        ),
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("connection refused"), "{said}");
    assert!(said.contains("nothing was changed"), "{said}");
    // …and a replica that must pull fails alone, with the registry's reason, and retries.
    lab.server.cli_ok(&["scale", "app/web=3"]);
    wait_until(Duration::from_secs(60), "the pull failure to show", || {
        web(&ps(&lab))["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot pull image") && e.contains("h3"))
    });
    let now: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .flat_map(|h| containers(&lab, h))
        .map(|c| c.0)
        .collect();
    assert_eq!(now, before, "the running replicas were left alone");
    assert_eq!(web(&ps(&lab))["ready"], 2);
    let events = lab.server.cli_json(&["events", "--limit", "200"]);
    assert!(events.to_string().contains("cannot pull image"), "{events}");

    // Back up, behind a slow link: the backed-off replica's pull shows as it goes (host,
    // bytes, layers), then the replica starts, on the same digest.
    let slow = |on: bool| {
        let mut args = vec!["netns", "exec", lab.ns("reg").name(), "tc", "qdisc"];
        if on {
            args.extend([
                "add", "dev", "eth0", "root", "tbf", "rate", "800kbit", "burst", "16kb", "latency",
                "1s",
            ]);
        } else {
            args.extend(["del", "dev", "eth0", "root"]);
        }
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "tc: {}", text(&out));
    };
    slow(true);
    reg.start_again();
    wait_until(Duration::from_secs(90), "the pull's progress in ps", || {
        web(&ps(&lab))["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| {
                r["host"] == "h3"
                    && r["pulling"]
                        .as_str()
                        .is_some_and(|p| p.contains(&pinned) && p.contains(" MB, "))
            })
    });
    slow(false);
    wait_until(Duration::from_secs(90), "the third replica", || {
        web(&ps(&lab))["ready"] == 3
    });
    let running = containers(&lab, "h3");
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].1, pinned);

    // The password: sealed in the datastore, in no log, no container, no host's disk.
    let password = reg.password().to_owned();
    let holding = files_holding(lab.dir(), &password);
    assert!(holding.is_empty(), "the password is in {holding:?}");
    for h in ["h1", "h2", "h3"] {
        for (name, _, _) in containers(&lab, h) {
            let inspect = lab.dockerd(h).docker_ok(&["inspect", &name]);
            assert!(!inspect.contains(&password), "{name} on {h}");
        }
    }
    assert!(!lab.server.log().contains(&password));
    // The CA was installed for each host's dockerd by its agent.
    assert!(Path::new(&format!("/etc/docker/certs.d/{host}/ca.crt")).exists());

    // Operators' image commands on one host.
    let images = lab.server.cli_json(&["image", "ls", "--host", "h3"]);
    assert!(images.to_string().contains(&second), "{images}");
    let out = lab.cli(&["image", "rm", &pinned, "--host", "h3"]);
    assert!(!out.status.success(), "in use: refused");
    let pulled = lab
        .server
        .cli_json(&["image", "pull", &image, "--host", "h2"]);
    assert!(pulled.to_string().contains(&second), "{pulled}");
    lab.server.cli_ok(&["registry", "rm", &host]);
    assert_eq!(
        lab.server.cli_json(&["registry", "ls"]),
        Value::Array(vec![])
    );
}

/// `corral admission test` of one service's Compose text: the refusals' (rule, key).
fn refused(
    server: &Server,
    dir: &Path,
    service: &str,
    policy: Option<&Path>,
) -> Vec<(String, String)> {
    let file = dir.join("probe.yaml");
    std::fs::write(&file, format!("services:\n  probe:\n{service}")).unwrap();
    let mut args = vec![
        "admission",
        "test",
        "-f",
        file.to_str().unwrap(),
        "-o",
        "json",
    ];
    if let Some(p) = policy {
        args.extend(["--policy", p.to_str().unwrap()]);
    }
    let out = server.cli(&args);
    let verdict: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(
        out.status.success(),
        verdict["admitted"] == true,
        "the exit status follows the verdict: {verdict}"
    );
    verdict["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["service"], "probe", "{r}");
            (
                r["rule"].as_str().unwrap().to_owned(),
                r["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(rule: &str, key: &str) -> Vec<(String, String)> {
    vec![(rule.to_owned(), key.to_owned())]
}

#[test]
fn the_admission_policy_refuses_each_rule_by_name_admits_what_it_allows_and_refusals_change_nothing()
 {
    require_docker();
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let (_, token) = server.token(&[]);
    let _agent = start_agent(&server, &t.path().join("adm-1"), "adm-1", Some(&token), &[]);
    wait_until(Duration::from_secs(30), "the agent's Docker report", || {
        server
            .hosts()
            .into_iter()
            .any(|h| h["name"] == "adm-1" && h["docker"]["state"] == "available")
    });
    let stack = format!("adm{}", std::process::id());
    let _cleanup = StackCleanup(stack.clone());
    assert!(
        docker(&["tag", IMAGE, "corral-test/busybox:adm-1"])
            .status
            .success()
    );

    // No policy: the default refuses what breaks isolation, and says so.
    let shown = server.cli_json(&["admission", "show"]);
    assert_eq!(shown["generation"], Value::Null, "{shown}");
    assert!(
        shown["effective"]
            .as_str()
            .unwrap()
            .contains("\"allow_privileged\": false")
    );
    let img = "    image: corral-test/busybox:adm-1\n";
    assert_eq!(
        refused(
            &server,
            t.path(),
            &format!("{img}    privileged: true\n"),
            None
        ),
        pair("allow_privileged", "privileged")
    );

    // A policy: bad documents are refused with the reason and change nothing.
    let policy = t.path().join("policy.yaml");
    std::fs::write(&policy, "allowed_images: [busybox]\n").unwrap();
    let out = server.cli(&["admission", "apply", "-f", policy.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("REGISTRY/PATH"), "{}", text(&out));
    std::fs::write(&policy, "allow_everything: true\n").unwrap();
    let out = server.cli(&["admission", "apply", "-f", policy.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("allow_everything"), "{}", text(&out));
    assert_eq!(
        server.cli_json(&["admission", "show"])["generation"],
        Value::Null
    );

    std::fs::write(
        &policy,
        "allowed_images: ['docker.io/corral-test/*']\nrefused_tags: [latest]\nallowed_capabilities: [NET_ADMIN]\nallowed_bind_paths: [/srv/corral-test]\n",
    )
    .unwrap();
    server.cli_ok(&["admission", "apply", "-f", policy.to_str().unwrap()]);
    assert_eq!(server.cli_json(&["admission", "show"])["generation"], 1);

    // Every rule refuses what it should…
    let cases: Vec<(String, Vec<(String, String)>)> = vec![
        (
            "    image: 198.18.0.9:5000/corral-test/busybox:1\n".into(),
            pair("allowed_images", "image"),
        ),
        (
            "    image: corral-test/busybox:latest\n".into(),
            pair("refused_tags", "image"),
        ),
        (
            "    image: corral-test/busybox\n".into(),
            pair("refused_tags", "image"),
        ),
        (
            format!("{img}    privileged: true\n"),
            pair("allow_privileged", "privileged"),
        ),
        (
            format!("{img}    cap_add: [SYS_ADMIN]\n"),
            pair("allowed_capabilities", "cap_add"),
        ),
        (
            format!("{img}    network_mode: host\n"),
            pair("allow_host_network", "network_mode"),
        ),
        (
            format!("{img}    pid: host\n"),
            pair("allow_host_pid", "pid"),
        ),
        (
            format!("{img}    devices: [/dev/fuse]\n"),
            pair("allow_devices", "devices"),
        ),
        (
            format!("{img}    volumes: ['/etc:/x:ro']\n"),
            pair("allowed_bind_paths", "volumes"),
        ),
        (
            format!("{img}    volumes: ['/var/run/docker.sock:/var/run/docker.sock']\n"),
            pair("allow_docker_socket", "volumes"),
        ),
        (
            format!("{img}    volumes: ['/run:/host-run']\n"),
            pair("allow_docker_socket", "volumes"),
        ),
    ];
    for (service, want) in &cases {
        assert_eq!(
            &refused(&server, t.path(), service, None),
            want,
            "{service}"
        );
    }
    // …and admits what it allows.
    for service in [
        format!("{img}    cap_add: [net_admin]\n"),
        format!("{img}    volumes: ['/srv/corral-test/data:/data']\n"),
        img.to_owned(),
    ] {
        assert!(
            refused(&server, t.path(), &service, None).is_empty(),
            "{service}"
        );
    }
    // The digest rule, from a policy file given to the test only: a tag never resolved
    // (pull_policy never) is refused; a written digest is admitted.
    let strict = t.path().join("strict.yaml");
    std::fs::write(&strict, "require_digest: true\n").unwrap();
    assert_eq!(
        refused(
            &server,
            t.path(),
            &format!("{img}    pull_policy: never\n"),
            Some(&strict)
        ),
        pair("require_digest", "image")
    );
    let digest = format!("sha256:{}", "a".repeat(64));
    assert!(
        refused(
            &server,
            t.path(),
            &format!("    image: corral-test/busybox@{digest}\n    pull_policy: never\n"),
            Some(&strict)
        )
        .is_empty()
    );

    // A refused `up` names the rule, the service and the key, and creates nothing.
    let file = t.path().join("compose.yaml");
    std::fs::write(
        &file,
        format!("services:\n  ok:\n{img}    command: [sleep, '600']\n  bad:\n{img}    privileged: true\n    cap_add: [SYS_ADMIN]\n"),
    )
    .unwrap();
    let out = server.cli(&["up", "-f", file.to_str().unwrap(), "-p", &stack]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("service bad: privileged: refused by admission rule allow_privileged"),
        "{said}"
    );
    assert!(
        said.contains("service bad: cap_add: refused by admission rule allowed_capabilities"),
        "{said}"
    );
    assert!(said.contains("nothing was changed"), "{said}");
    assert!(
        server
            .cli_json(&["stack", "ls"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let created = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=io.corral.stack={stack}"),
    ]);
    assert!(created.stdout.is_empty(), "nothing created");
    // So does a refused `run`.
    let out = server.cli(&["run", &format!("{stack}-run"), "--image", IMAGE]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("refused by admission rule refused_tags"),
        "{}",
        text(&out)
    );

    // A second generation allows the host's network and process namespace; what it admits
    // runs with exactly those options.
    std::fs::write(
        &policy,
        "allowed_images: ['docker.io/corral-test/*']\nrefused_tags: [latest]\nallowed_capabilities: [NET_ADMIN]\nallow_host_network: true\nallow_host_pid: true\n",
    )
    .unwrap();
    server.cli_ok(&["admission", "apply", "-f", policy.to_str().unwrap()]);
    assert_eq!(server.cli_json(&["admission", "show"])["generation"], 2);
    std::fs::write(
        &file,
        format!("services:\n  net:\n{img}    command: [sleep, '600']\n    cap_add: [NET_ADMIN]\n  hostns:\n{img}    command: [sleep, '600']\n    network_mode: host\n    pid: host\n"),
    )
    .unwrap();
    let out = server.cli(&[
        "up",
        "-f",
        file.to_str().unwrap(),
        "-p",
        &stack,
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let ids = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.corral.stack={stack}"),
    ]);
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 2);
    let mut seen = Vec::new();
    for id in &ids {
        let c = inspect(id);
        let service = c["Config"]["Labels"]["io.corral.service"]
            .as_str()
            .unwrap()
            .to_owned();
        let hc = &c["HostConfig"];
        match service.as_str() {
            "net" => assert_eq!(hc["CapAdd"], serde_json::json!(["NET_ADMIN"]), "{hc}"),
            "hostns" => {
                assert_eq!(hc["NetworkMode"], "host", "{hc}");
                assert_eq!(hc["PidMode"], "host", "{hc}");
            }
            other => panic!("unexpected service {other}"),
        }
        seen.push(service);
    }
    seen.sort();
    assert_eq!(seen, ["hostns", "net"]);
    server.cli_ok(&["down", "-p", &stack]);
}

/// `build:` on two lab hosts with a real registry: each context is built once, on a host that
/// runs it, pushed, and every host runs that digest; an unchanged context builds nothing and
/// rolls nothing; a changed one rolls only its service; a failing step is named and changes
/// nothing.
#[test]
fn built_services_are_built_once_pushed_and_only_a_changed_context_rolls() {
    let lab = lab(2);
    let mut lab = lab;
    lab.net.add("reg");
    let reg = Registry::start(lab.ns("reg"), &lab.dir().join("registry"));
    let host = reg.host();
    let project = lab.dir().join("project");
    for (svc, msg) in [("api", "api v1"), ("worker", "worker v1")] {
        std::fs::create_dir_all(project.join(svc)).unwrap();
        std::fs::write(
            project.join(svc).join("Dockerfile"),
            "FROM corral-test/busybox:latest\nARG GREETING=none\nCOPY msg.txt /msg.txt\nRUN echo \"$GREETING\" > /greeting\nCMD [\"sleep\", \"3600\"]\n",
        )
        .unwrap();
        std::fs::write(project.join(svc).join("msg.txt"), msg).unwrap();
        std::fs::write(project.join(svc).join("debug.log"), "left out").unwrap();
        std::fs::write(project.join(svc).join(".dockerignore"), "*.log\n").unwrap();
    }
    let compose = "name: app\nservices:\n  api:\n    build: ./api\n    deploy: { replicas: 2 }\n    x-corral: { anti_affinity: [api] }\n  worker:\n    build: { context: ./worker, args: { GREETING: hello } }\n    deploy: { placement: { constraints: [node.hostname == h2] } }\n";
    std::fs::write(project.join("compose.yaml"), compose).unwrap();
    let up = || {
        lab.cli(&[
            "up",
            "-f",
            project.join("compose.yaml").to_str().unwrap(),
            "--wait",
            "--timeout",
            "120s",
        ])
    };

    // No registry to push to: said plainly.
    let out = up();
    assert!(!out.status.success());
    assert!(text(&out).contains("--builds"), "{}", text(&out));

    let out = lab.server.cli_with_stdin(
        &[
            "registry",
            "add",
            &host,
            "--username",
            reg.username(),
            "--password-stdin",
            "--ca-file",
            reg.ca_path().to_str().unwrap(),
            "--builds",
        ],
        reg.password(),
    );
    assert!(out.status.success(), "{}", text(&out));

    let out = up();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("service api: built on host"), "{said}");
    // Each service is built on a host that runs it (worker runs on h2 only).
    assert!(said.contains("service worker: built on host h2"), "{said}");
    // The build's own output reached `up` as it went.
    assert!(said.contains("api: sending the build context"), "{said}");
    assert!(
        said.contains("api | Step 1/5 : FROM corral-test/busybox:latest"),
        "{said}"
    );
    let running = |svc: &str| -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for h in ["h1", "h2"] {
            let d = lab.dockerd(h);
            for name in d
                .docker_ok(&[
                    "ps",
                    "--filter",
                    &format!("label=io.corral.service={svc}"),
                    "--format",
                    "{{.Names}}",
                ])
                .lines()
            {
                let image = d.docker_ok(&["inspect", "--format", "{{.Config.Image}}", name]);
                out.push((h.to_owned(), name.to_owned(), image.trim().to_owned()));
            }
        }
        out.sort();
        out
    };
    let api = running("api");
    assert_eq!(api.len(), 2, "{api:?}");
    assert!(
        api.iter()
            .all(|(_, _, i)| i.starts_with(&format!("{host}/corral-builds/app-api@sha256:"))),
        "{api:?}"
    );
    assert_eq!(api[0].2, api[1].2, "one digest on both hosts");
    for (h, c, _) in &api {
        assert_eq!(
            lab.dockerd(h).docker_ok(&["exec", c, "cat", "/msg.txt"]),
            "api v1"
        );
        let listing = lab.dockerd(h).docker_ok(&["exec", c, "ls", "/"]);
        assert!(!listing.contains("debug.log"));
    }
    let worker = running("worker");
    assert_eq!(
        lab.dockerd(&worker[0].0)
            .docker_ok(&["exec", &worker[0].1, "cat", "/greeting"]),
        "hello\n",
        "build args reach the build"
    );

    // Unchanged: nothing built, nothing rolled.
    let out = up();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("service api: build context unchanged"),
        "{said}"
    );
    assert!(!said.contains("rolling update"), "{said}");
    assert_eq!(running("api"), api);

    // One context changed: only that service is built and rolls.
    std::fs::write(project.join("api/msg.txt"), "api v2").unwrap();
    let out = up();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("service api: built on host"), "{said}");
    assert!(
        said.contains("service worker: build context unchanged"),
        "{said}"
    );
    assert!(said.contains("(rolling update of api)"), "{said}");
    wait_until(Duration::from_secs(60), "api v2 on both hosts", || {
        let now = running("api");
        now.len() == 2
            && now.iter().all(|(h, c, _)| {
                lab.dockerd(h).docker_ok(&["exec", c, "cat", "/msg.txt"]) == "api v2"
            })
    });
    assert_eq!(running("worker"), worker, "worker untouched");

    // A failing step is named; the running replicas stay.
    let before = (running("api"), running("worker"));
    std::fs::write(
        project.join("worker/Dockerfile"),
        "FROM corral-test/busybox:latest\nCOPY msg.txt /msg.txt\nRUN false\n",
    )
    .unwrap();
    let out = up();
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("Step 3/3 : RUN false"), "{said}");
    assert!(said.contains("nothing was changed"), "{said}");
    assert_eq!((running("api"), running("worker")), before);
}

#[test]
fn hosts_that_never_answer_do_not_hold_a_tag_resolution() {
    let mut lab = lab(1);
    lab.net.add("reg");
    let reg = Registry::start(lab.ns("reg"), &lab.dir().join("registry"));
    let host = reg.host();
    reg.push(
        lab.dockerd("h1"),
        corral_testkit::require::TEST_IMAGE,
        "team/app:1",
    );
    add_registry(&lab, &reg, reg.password());
    // Three hosts that report a Docker engine and then answer no command (simulated agents,
    // named "bench-…", before "h1"): replicas are placed on them, and a resolution that asked
    // them one after the other would wait a minute on each.
    let mut silent = lab.server.spawn_cli(
        &[
            "bench",
            "connect",
            "--agents",
            "3",
            "--hold",
            "600s",
            "--ping-interval",
            "2s",
            "--docker",
            "--keep",
        ],
        &lab.dir().join("silent.log"),
    );
    wait_until(Duration::from_secs(30), "three silent hosts", || {
        let hosts = lab.server.cli_json(&["host", "ls"]);
        hosts
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["docker"]["state"] == "available")
            .count()
            == 4
    });
    let file = lab.dir().join("compose.yaml");
    std::fs::write(&file, compose(&format!("{host}/team/app:1"), 4)).unwrap();
    // One host is asked, then one more every two seconds while none has answered: h1 answers
    // within seconds.
    let started = std::time::Instant::now();
    let out = lab.cli(&[
        "up",
        "-f",
        file.to_str().unwrap(),
        "-p",
        "app",
        "-o",
        "json",
    ]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        took < Duration::from_secs(30),
        "the deploy waited {took:?} on hosts that never answer"
    );
    let view = ps(&lab);
    assert!(
        web(&view)["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "the tag was resolved: {view}"
    );
    silent.stop();
}
