//! Compose files as people write them, on two real lab hosts: a relative bind mount of a
//! project directory, a `configs:` file and a `secrets:` value shipped with the stack from the
//! unchanged Compose file; a change to one rolls only the services that mount it; the secret is
//! readable inside its containers and nowhere on disk; bad input is refused and changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use corral_testkit::{DockerFirewall, Lab, LabConfig, wait_until};
use serde_json::Value;

const COMPOSE: &str = r#"name: site
services:
  web:
    image: corral-test/busybox:latest
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    volumes: ["./www:/www"]
    configs: [app]
    secrets: [token]
    deploy: { replicas: 2 }
    x-corral: { anti_affinity: [web] }
  worker:
    image: corral-test/busybox:latest
    command: ["sleep", "3600"]
configs:
  app: { file: ./app.conf }
secrets:
  token: { environment: TOKEN }
x-notes: "extension fields are accepted silently"
"#;

fn up(lab: &Lab, project: &Path) -> Output {
    let file = project.join("compose.yaml");
    lab.cli(&[
        "up",
        "-f",
        file.to_str().unwrap(),
        "--wait",
        "--timeout",
        "90s",
    ])
}

/// (host, container name) of each running replica of `service`.
fn replicas(lab: &Lab, service: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for h in ["h1", "h2"] {
        let names = lab.dockerd(h).docker_ok(&[
            "ps",
            "--filter",
            &format!("label=io.corral.service={service}"),
            "--format",
            "{{.Names}}",
        ]);
        out.extend(names.lines().map(|n| (h.to_owned(), n.to_owned())));
    }
    out
}

fn cat(lab: &Lab, host: &str, container: &str, path: &str) -> String {
    lab.dockerd(host)
        .docker_ok(&["exec", container, "cat", path])
}

#[test]
fn project_files_configs_and_secrets_ship_with_the_stack_and_roll_only_what_mounts_them() {
    let lab = Lab::up(LabConfig {
        bin: Path::new(corral_bin()),
        hosts: 2,
        server_args: &[],
        docker_firewall: DockerFirewall::Off,
        overlay: &[],
    });
    let project = lab.dir().join("project");
    std::fs::create_dir_all(project.join("www/sub")).unwrap();
    std::fs::write(project.join("compose.yaml"), COMPOSE).unwrap();
    std::fs::write(project.join("www/index.html"), "hello v1\n").unwrap();
    std::fs::write(project.join("www/sub/page.html"), "sub\n").unwrap();
    std::fs::write(project.join("app.conf"), "mode=blue\n").unwrap();
    let secret = format!("s3cr3t-{}", std::process::id());
    std::fs::write(project.join(".env"), format!("TOKEN={secret}\n")).unwrap();

    let out = up(&lab, &project);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("./www is shipped with the stack"), "{said}");
    assert!(
        !said.contains("x-notes"),
        "extension fields are silent: {said}"
    );
    let web = replicas(&lab, "web");
    assert_eq!(web.len(), 2, "{web:?}");
    for (h, c) in &web {
        assert_eq!(cat(&lab, h, c, "/www/index.html"), "hello v1\n");
        assert_eq!(cat(&lab, h, c, "/www/sub/page.html"), "sub\n");
        assert_eq!(cat(&lab, h, c, "/app"), "mode=blue\n");
        assert_eq!(cat(&lab, h, c, "/run/secrets/token"), secret);
        // Read-only in the container.
        let (ok, _) = {
            let o = lab
                .dockerd(h)
                .docker(&["exec", c, "sh", "-c", "echo x > /www/index.html"]);
            (o.status.success(), ())
        };
        assert!(!ok, "the project file is mounted read-only");
        let inspect = lab.dockerd(h).docker_ok(&["inspect", c]);
        assert!(
            !inspect.contains(&secret),
            "the secret is in docker inspect"
        );
    }
    let worker = replicas(&lab, "worker");
    assert_eq!(worker.len(), 1);

    // The secret: listed by name and version, never by value; on no disk.
    let listed = lab.server.cli_json(&["secret", "ls"]);
    assert_eq!(listed[0]["name"], "token", "{listed}");
    assert_eq!(listed[0]["environment"], "default", "{listed}");
    assert_eq!(listed[0]["version"].as_str().unwrap().len(), 12);
    assert!(!listed.to_string().contains(&secret));
    // The project's own .env holds it, as the user wrote it; nothing else does.
    let holding: Vec<String> = {
        let out = std::process::Command::new("grep")
            .args(["-r", "-F", "-l", "-s", "--exclude=.env", "--", &secret])
            .arg(lab.dir())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    assert!(holding.is_empty(), "the secret is on disk in {holding:?}");
    assert!(!lab.server.log().contains(&secret));

    // A changed project file rolls the service that mounts it, and only that one.
    std::fs::write(project.join("www/index.html"), "hello v2\n").unwrap();
    let out = up(&lab, &project);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("(rolling update of web)"),
        "only web rolls: {said}"
    );
    wait_until(Duration::from_secs(60), "web on the new page", || {
        let web = replicas(&lab, "web");
        web.len() == 2
            && web
                .iter()
                .all(|(h, c)| cat(&lab, h, c, "/www/index.html") == "hello v2\n")
    });
    assert_eq!(replicas(&lab, "worker"), worker, "worker untouched");

    // A rotated secret rolls its service with the new value.
    let rotated = format!("{secret}-2");
    std::fs::write(project.join(".env"), format!("TOKEN={rotated}\n")).unwrap();
    let out = up(&lab, &project);
    assert!(out.status.success(), "{}", text(&out));
    wait_until(
        Duration::from_secs(60),
        "web with the rotated secret",
        || {
            let web = replicas(&lab, "web");
            web.len() == 2
                && web
                    .iter()
                    .all(|(h, c)| cat(&lab, h, c, "/run/secrets/token") == rotated)
        },
    );
    let version = lab.server.cli_json(&["secret", "ls"])[0]["version"].clone();
    assert_ne!(version, listed[0]["version"]);

    // Bad input: each refused with its reason; nothing changes.
    let before = replicas(&lab, "web");
    let bad = |compose: &str, says: &str| {
        std::fs::write(project.join("compose.yaml"), compose).unwrap();
        let out = up(&lab, &project);
        assert!(!out.status.success(), "{compose}");
        let said = text(&out);
        assert!(said.contains(says), "{says}: {said}");
    };
    bad(
        &COMPOSE.replace("./app.conf", "./missing.conf"),
        "./missing.conf",
    );
    bad(
        &COMPOSE.replace("./www:/www", "~/www:/www"),
        "`~` is not supported",
    );
    bad(
        &COMPOSE.replace("./www:/www", "../www:/www"),
        "outside the project directory",
    );
    std::fs::write(project.join("big.bin"), vec![7u8; 300 * 1024]).unwrap();
    bad(
        &COMPOSE.replace("./app.conf", "./big.bin"),
        "./big.bin is 307200 bytes",
    );
    std::fs::write(project.join(".env"), "").unwrap();
    bad(COMPOSE, "TOKEN");
    assert_eq!(replicas(&lab, "web"), before, "refusals changed nothing");

    // Down: the containers' secrets leave memory with them.
    std::fs::write(project.join("compose.yaml"), COMPOSE).unwrap();
    lab.server.cli_ok(&["down", "-p", "site"]);
    wait_until(
        Duration::from_secs(30),
        "no secret left in /dev/shm",
        || {
            let out = std::process::Command::new("grep")
                .args(["-r", "-F", "-l", "-s", "--", &rotated, "/dev/shm"])
                .output()
                .unwrap();
            out.stdout.is_empty()
        },
    );
}

/// `corral config`: the project as corral reads it, without a server; secrets' values never
/// printed; errors exit 1.
#[test]
fn config_prints_the_resolved_project_and_hides_secret_values() {
    let t = tmp();
    let dir = t.path();
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/index.html"), "hi\n").unwrap();
    std::fs::write(dir.join(".env"), "TOKEN=TOPSECRET-VALUE\n").unwrap();
    std::fs::write(
        dir.join("compose.yaml"),
        COMPOSE.replace("./app.conf", "./www/index.html"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(corral_bin())
            .args(args)
            .current_dir(dir)
            .env_remove("CORRAL_SERVER")
            .output()
            .unwrap()
    };
    let out = run(&["config"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("service web: 2 replica(s) of corral-test/busybox:latest"),
        "{said}"
    );
    assert!(
        said.contains("mounts ./www at /www (read-only copy on each host)"),
        "{said}"
    );
    assert!(
        said.contains("mounts secret token at /run/secrets/token (in memory on each host)"),
        "{said}"
    );
    let out = run(&["config", "-o", "json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["services"][0]["container"]["files"][0]["name"],
        "./www"
    );
    assert!(!json.to_string().contains("TOPSECRET"), "{json}");
    assert!(!said.contains("TOPSECRET"));
    std::fs::write(
        dir.join("compose.yaml"),
        "services:\n  a:\n    image: x\n    volumes: ['./nope:/x']\n",
    )
    .unwrap();
    let out = run(&["config", "-p", "t"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("./nope"), "{}", text(&out));
}
