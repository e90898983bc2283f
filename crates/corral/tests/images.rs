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
    })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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
    let ca = reg.ca_path();
    let add = |password: &str| {
        let out = lab.server.cli_with_stdin(
            &[
                "registry",
                "add",
                &host,
                "--username",
                reg.username(),
                "--password-stdin",
                "--ca-file",
                ca.to_str().unwrap(),
            ],
            &format!("{password}\n"),
        );
        assert!(out.status.success(), "{}", text(&out));
    };
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

    // Back up: the backed-off replica starts, on the same digest.
    reg.start_again();
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
