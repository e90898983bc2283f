//! End-to-end tests of `load` over the fixtures in `tests/fixtures/`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use corral_compose::*;

fn fixture(name: &str) -> SourceFile {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    SourceFile::new(name, text)
}

fn input(files: &[&str]) -> Input {
    Input {
        files: files.iter().map(|f| fixture(f)).collect(),
        project_name: Some("test".into()),
        ..Input::default()
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load_ok(input: &Input) -> Loaded {
    match load(input) {
        Ok(l) => l,
        Err(e) => panic!("load failed:\n{e}"),
    }
}

fn load_err(input: &Input) -> LoadErrors {
    match load(input) {
        Ok(l) => panic!("load succeeded: {:#?}", l.project),
        Err(e) => e,
    }
}

#[test]
fn every_supported_key() {
    let mut inp = input(&["full.yaml"]);
    inp.project_name = None;
    inp.referenced_files = vec![fixture("web.env")];
    inp.env = env(&[("FROM_SHELL", "shell-value")]);
    let loaded = load_ok(&inp);
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let p = &loaded.project;
    assert_eq!(p.name, "shop");
    assert_eq!(
        p.volumes.iter().cloned().collect::<Vec<_>>(),
        vec!["pgdata", "static"]
    );
    assert_eq!(p.start_order, vec!["db", "cache", "web"]);

    let web = &p.services["web"];
    assert_eq!(web.image, "registry.example.com/shop/web:1.4.2");
    assert_eq!(
        web.command.as_deref(),
        Some(&["serve".to_owned(), "--port".into(), "8080".into()][..])
    );
    assert_eq!(
        web.entrypoint.as_deref(),
        Some(
            &[
                "/bin/entry.sh".to_owned(),
                "--verbose".into(),
                "two words".into()
            ][..]
        )
    );
    // env_file first, `environment:` on top; a bare key comes from the caller's environment.
    assert_eq!(web.environment["MODE"], "production");
    assert_eq!(web.environment["SECRET_KEY"], "s3cr3t # not a comment");
    assert_eq!(web.environment["WORKERS"], "4");
    assert_eq!(web.environment["DEBUG"], "false");
    assert_eq!(web.environment["FROM_SHELL"], "shell-value");
    assert_eq!(web.labels["com.example.team"], "storefront");
    assert_eq!(web.labels["com.example.tier"], "front");

    assert_eq!(
        web.ports,
        vec![
            Port {
                published: Some(PortRange { start: 80, end: 80 }),
                target: 8080,
                protocol: Protocol::Tcp,
                host_ip: None
            },
            Port {
                published: Some(PortRange {
                    start: 9090,
                    end: 9090
                }),
                target: 9090,
                protocol: Protocol::Udp,
                host_ip: Some("127.0.0.1".parse().unwrap())
            },
            Port {
                published: Some(PortRange {
                    start: 443,
                    end: 443
                }),
                target: 8443,
                protocol: Protocol::Tcp,
                host_ip: None
            },
        ]
    );
    assert_eq!(
        web.expose,
        vec![
            Expose {
                ports: PortRange {
                    start: 3000,
                    end: 3000
                },
                protocol: Protocol::Tcp
            },
            Expose {
                ports: PortRange {
                    start: 4000,
                    end: 4002
                },
                protocol: Protocol::Udp
            },
        ]
    );
    assert_eq!(
        web.volumes,
        vec![
            Mount::Named {
                source: "static".into(),
                target: "/srv/static".into(),
                read_only: true
            },
            Mount::Bind {
                source: "./config".into(),
                target: "/etc/web".into(),
                read_only: false
            },
            Mount::Anonymous {
                target: "/var/cache".into()
            },
            Mount::Bind {
                source: "/var/log/web".into(),
                target: "/logs".into(),
                read_only: true
            },
        ]
    );
    assert_eq!(web.restart, RestartPolicy::UnlessStopped);
    assert_eq!(
        web.healthcheck,
        Healthcheck::Custom(HealthcheckConfig {
            test: Some(vec![
                "CMD".into(),
                "curl".into(),
                "-f".into(),
                "http://localhost:8080/healthz".into()
            ]),
            interval: Some(Duration::from_secs(30)),
            timeout: Some(Duration::from_secs(5)),
            start_period: Some(Duration::from_secs(60)),
            retries: Some(3),
        })
    );
    assert_eq!(web.depends_on["db"], Condition::ServiceHealthy);
    assert_eq!(web.depends_on["cache"], Condition::ServiceStarted);
    assert_eq!(web.replicas, 3);
    assert_eq!(
        web.constraints,
        vec![
            Constraint {
                attribute: ConstraintAttribute::Hostname,
                op: ConstraintOp::Eq,
                value: "web1".into()
            },
            Constraint {
                attribute: ConstraintAttribute::Label("zone".into()),
                op: ConstraintOp::Ne,
                value: "eu-west".into()
            },
        ]
    );
    assert_eq!(
        web.reservations,
        Reservations {
            cpu_millis: 500,
            memory_bytes: 256 * 1024 * 1024
        }
    );
    assert_eq!(
        web.update,
        UpdateConfig {
            parallelism: 2,
            delay: Duration::from_secs(10),
            order: UpdateOrder::StartFirst
        }
    );
    assert_eq!(web.stop_grace_period, Duration::from_secs(90));
    assert_eq!(web.user.as_deref(), Some("1000:1000"));
    assert_eq!(web.working_dir.as_deref(), Some("/srv"));
    assert_eq!(web.hostname.as_deref(), Some("web"));
    assert_eq!(web.networks, vec!["front"]);
    assert_eq!(web.affinity, vec!["cache"]);
    assert_eq!(web.anti_affinity, vec!["web"]);
    // The host-level keys' defaults.
    assert_eq!(web.pull_policy, PullPolicy::Missing);
    assert!(!web.privileged);
    assert!(web.cap_add.is_empty() && web.cap_drop.is_empty());
    assert_eq!(web.network_mode, NetworkMode::Default);
    assert!(!web.pid_host);
    assert!(web.devices.is_empty());

    let db = &p.services["db"];
    assert_eq!(
        db.restart,
        RestartPolicy::OnFailure {
            max_retries: Some(5)
        }
    );
    assert_eq!(db.replicas, 1);
    assert_eq!(db.stop_grace_period, Duration::from_secs(10));
    assert_eq!(db.pull_policy, PullPolicy::Always);
    assert!(db.privileged);
    assert_eq!(db.cap_add, vec!["NET_ADMIN", "SYS_TIME"]);
    assert_eq!(db.cap_drop, vec!["ALL"]);
    assert!(db.pid_host);
    assert_eq!(db.network_mode, NetworkMode::Default);
    assert_eq!(
        db.devices,
        vec![
            Device {
                host: "/dev/fuse".into(),
                container: "/dev/fuse".into(),
                permissions: "rwm".into()
            },
            Device {
                host: "/dev/ttyUSB0".into(),
                container: "/dev/ttyS0".into(),
                permissions: "rwm".into()
            },
            Device {
                host: "/dev/sda".into(),
                container: "/dev/xvda".into(),
                permissions: "r".into()
            },
        ]
    );
    assert_eq!(
        db.healthcheck,
        Healthcheck::Custom(HealthcheckConfig {
            test: Some(vec!["CMD-SHELL".into(), "pg_isready -U postgres".into()]),
            interval: None,
            timeout: None,
            start_period: None,
            retries: None,
        })
    );
    assert_eq!(
        db.volumes,
        vec![Mount::Named {
            source: "pgdata".into(),
            target: "/var/lib/postgresql/data".into(),
            read_only: false
        }]
    );

    let cache = &p.services["cache"];
    // `restart: no` stays the string "no" (YAML 1.2 booleans).
    assert_eq!(cache.restart, RestartPolicy::No);
    assert_eq!(cache.healthcheck, Healthcheck::Disabled);
    assert_eq!(cache.depends_on["db"], Condition::ServiceStarted);
    assert_eq!(cache.update, UpdateConfig::default());
    assert_eq!(cache.network_mode, NetworkMode::None);
    assert_eq!(cache.pull_policy, PullPolicy::Never);
}

#[test]
fn several_files_merge() {
    let loaded = load_ok(&input(&["base.yaml", "override.yaml"]));
    let p = &loaded.project;
    assert_eq!(
        p.services.keys().cloned().collect::<Vec<_>>(),
        vec!["cache", "web", "worker"]
    );
    let web = &p.services["web"];
    assert_eq!(web.image, "shop/web:2.0", "scalars are overridden");
    assert_eq!(
        web.command.as_deref(),
        Some(&["serve".to_owned(), "--new".into()][..]),
        "command is replaced"
    );
    assert_eq!(
        web.environment,
        env(&[("A", "1"), ("B", "20"), ("C", "3")]),
        "mappings merge, list form included"
    );
    let published: Vec<u16> = web.ports.iter().map(|p| p.target).collect();
    assert_eq!(
        published,
        vec![8080, 8443],
        "ports appended, duplicates dropped"
    );
    assert_eq!(web.expose.len(), 2);
    assert_eq!(
        web.volumes,
        vec![
            Mount::Named {
                source: "data".into(),
                target: "/data".into(),
                read_only: false
            },
            Mount::Bind {
                source: "./override-conf".into(),
                target: "/etc/conf".into(),
                read_only: false
            },
        ],
        "volumes merged by container path"
    );
    assert_eq!(web.labels["tier"], "front");
    assert_eq!(web.replicas, 2);
}

#[test]
fn interpolation_with_env_file_and_shell() {
    let mut inp = input(&["interp.yaml"]);
    inp.project_name = None;
    inp.env_files = vec![fixture("interp.env")];
    // The shell wins over the env file.
    inp.env = env(&[("WHO", "shell")]);
    let p = load_ok(&inp).project;
    assert_eq!(p.name, "interp");
    let web = &p.services["web"];
    assert_eq!(web.image, "shop/web:from-env-file");
    assert_eq!(web.environment["GREETING"], "hello shell");
    assert_eq!(web.environment["LITERAL"], "costs $5");
    assert_eq!(web.environment["EMPTY_OK"], "");
    assert_eq!(web.environment["NESTED"], "from-env-file-fallback");
    assert_eq!(web.environment["SHORT"], "from-env-file");
    assert_eq!(web.environment["PLUS"], "tagged");
    assert_eq!(web.replicas, 4, "an interpolated integer is an integer");
    assert_eq!(
        web.ports[0].published,
        Some(PortRange {
            start: 8080,
            end: 8080
        })
    );

    // Defaults when nothing is set (but TAG, which has none).
    let mut inp = input(&["interp.yaml"]);
    inp.project_name = None;
    inp.env = env(&[("TAG", "t"), ("PROJECT", "other")]);
    let p = load_ok(&inp).project;
    assert_eq!(p.name, "other");
    assert_eq!(p.services["web"].replicas, 2);
    assert_eq!(p.services["web"].environment["GREETING"], "hello world");
}

#[test]
fn undefined_variables_are_errors() {
    let err = load_err(&input(&["undefined.yaml"]));
    assert_eq!(err.errors.len(), 2, "{err}");
    let first = &err.errors[0];
    assert_eq!(first.file.as_deref(), Some("undefined.yaml"));
    assert_eq!(first.line, Some(3));
    assert_eq!(first.path.as_deref(), Some("services.web.image"));
    assert!(first.message.contains("`NGINX_TAG` is not set"), "{first}");
    let second = &err.errors[1];
    assert_eq!(
        second.path.as_deref(),
        Some("services.web.environment.PASSWORD")
    );
    assert!(second.message.contains("set DB_PASSWORD first"), "{second}");

    let mut inp = input(&["undefined.yaml"]);
    inp.env = env(&[("NGINX_TAG", "1.27"), ("DB_PASSWORD", "pw")]);
    let p = load_ok(&inp).project;
    assert_eq!(p.services["web"].image, "nginx:1.27");
}

#[test]
fn anchors_and_merge_keys() {
    let loaded = load_ok(&input(&["anchors.yaml"]));
    let api = &loaded.project.services["api"];
    assert_eq!(api.restart, RestartPolicy::Always);
    assert_eq!(api.labels["managed-by"], "corral");
    assert_eq!(
        api.environment,
        env(&[("LOG_LEVEL", "debug"), ("REGION", "eu")])
    );
    let worker = &loaded.project.services["worker"];
    assert_eq!(
        worker.restart,
        RestartPolicy::OnFailure { max_retries: None }
    );
    assert_eq!(
        worker.environment,
        env(&[("LOG_LEVEL", "info"), ("REGION", "eu")])
    );
    // The top-level extension field is reported, not silently dropped.
    assert!(loaded.warnings.iter().any(|w| w.path == "x-defaults"));
}

#[test]
fn extends_within_a_file() {
    let p = load_ok(&input(&["extends.yaml"])).project;
    let web = &p.services["web"];
    assert_eq!(web.image, "shop/web:1");
    assert_eq!(web.environment, env(&[("A", "1"), ("B", "20")]));
    assert_eq!(web.labels["role"], "base");
    assert_eq!(web.restart, RestartPolicy::Always);
    let admin = &p.services["admin"];
    assert_eq!(admin.image, "shop/web:1");
    assert_eq!(admin.command.as_deref(), Some(&["admin".to_owned()][..]));
    assert_eq!(admin.environment["B"], "20");
}

#[test]
fn extends_errors() {
    let cyc = "services:\n  a:\n    image: x\n    extends: b\n  b:\n    image: x\n    extends: a\n";
    let err = load_err(&Input {
        files: vec![SourceFile::new("c.yaml", cyc)],
        project_name: Some("p".into()),
        ..Input::default()
    });
    assert_eq!(err.errors.len(), 1, "{err}");
    assert!(err.mentions("extends cycle: a → b → a"), "{err}");

    let unknown = "services:\n  a:\n    image: x\n    extends: { service: nope }\n";
    let err = load_err(&Input {
        files: vec![SourceFile::new("u.yaml", unknown)],
        project_name: Some("p".into()),
        ..Input::default()
    });
    assert!(err.mentions("extends unknown service `nope`"), "{err}");

    let file = "services:\n  a:\n    image: x\n    extends: { service: b, file: other.yaml }\n  b:\n    image: y\n";
    let err = load_err(&Input {
        files: vec![SourceFile::new("f.yaml", file)],
        project_name: Some("p".into()),
        ..Input::default()
    });
    assert!(err.mentions("extends.file"), "{err}");
}

#[test]
fn malformed_yaml_has_line_and_column() {
    let err = load_err(&input(&["bad_yaml.yaml"]));
    let e = &err.errors[0];
    assert_eq!(e.file.as_deref(), Some("bad_yaml.yaml"));
    assert!(e.message.starts_with("invalid YAML"), "{e}");
    // The flow sequence left open on line 4 swallows line 5, where `db:` cannot stand.
    assert_eq!((e.line, e.column), (Some(5), Some(5)), "{e}");
    assert!(
        e.to_string().starts_with("bad_yaml.yaml:5:5: invalid YAML"),
        "{e}"
    );
}

#[test]
fn schema_violations_have_key_paths() {
    let err = load_err(&input(&["bad_schema.yaml"]));
    let paths: Vec<&str> = err
        .errors
        .iter()
        .filter_map(|e| e.path.as_deref())
        .collect();
    assert!(paths.contains(&"services.web.restart"), "{err}");
    assert!(paths.contains(&"services.web.ports[0]"), "{err}");
    let restart = err
        .errors
        .iter()
        .find(|e| e.path.as_deref() == Some("services.web.restart"))
        .unwrap();
    assert_eq!(restart.line, Some(4));
    assert!(
        restart.message.contains("is not of type \"string\""),
        "{restart}"
    );
    let port = err
        .errors
        .iter()
        .find(|e| e.path.as_deref() == Some("services.web.ports[0]"))
        .unwrap();
    assert_eq!(port.line, Some(6));
    assert!(
        port.message
            .contains("is not valid under any of the schemas listed in the 'oneOf' keyword"),
        "{port}"
    );
}

#[test]
fn dependency_cycle_is_named() {
    let err = load_err(&input(&["cycle.yaml"]));
    assert_eq!(err.errors.len(), 1, "{err}");
    assert!(err.mentions("dependency cycle: a → b → c → a"), "{err}");
}

#[test]
fn unknown_dependency_is_an_error() {
    let text = "services:\n  web:\n    image: x\n    depends_on: [db]\n";
    let err = load_err(&Input {
        files: vec![SourceFile::new("d.yaml", text)],
        project_name: Some("p".into()),
        ..Input::default()
    });
    assert!(err.mentions("depends on unknown service `db`"), "{err}");
    assert_eq!(err.errors[0].line, Some(4));
}

#[test]
fn alias_bomb_is_refused_quickly() {
    let started = Instant::now();
    let err = load_err(&input(&["alias_bomb.yaml"]));
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    let e = &err.errors[0];
    assert_eq!(e.file.as_deref(), Some("alias_bomb.yaml"));
    assert!(e.message.starts_with("invalid YAML"), "{e}");
}

#[test]
fn oversized_file_is_refused_before_parsing() {
    let mut text = String::from("services:\n  web:\n    image: nginx\n");
    while text.len() <= limits::MAX_FILE_BYTES {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let err = load_err(&Input {
        files: vec![SourceFile::new("big.yaml", text)],
        project_name: Some("p".into()),
        ..Input::default()
    });
    assert!(err.mentions("the limit is 1048576 bytes"), "{err}");

    let too_many = Input {
        files: (0..=limits::MAX_FILES)
            .map(|i| SourceFile::new(format!("f{i}.yaml"), "services: {}\n"))
            .collect(),
        project_name: Some("p".into()),
        ..Input::default()
    };
    assert!(load_err(&too_many).mentions("Compose files given; the limit is 16"));
}

#[test]
fn deep_nesting_is_refused_within_the_stack() {
    // Run on a small stack: the depth limit must fire long before recursion hurts.
    let handle = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(|| {
            for n in [25, 1000, 100_000] {
                let text = format!("services: {}{}\n", "[".repeat(n), "]".repeat(n));
                let err = load_err(&Input {
                    files: vec![SourceFile::new("deep.yaml", text)],
                    project_name: Some("p".into()),
                    ..Input::default()
                });
                assert!(err.mentions("invalid YAML"), "{err}");
            }
            let mut block = String::from("services:\n");
            for i in 0..200 {
                block.push_str(&" ".repeat(i + 2));
                block.push_str("k:\n");
            }
            let err = load_err(&Input {
                files: vec![SourceFile::new("deep.yaml", block)],
                project_name: Some("p".into()),
                ..Input::default()
            });
            assert!(err.mentions("nesting is deeper than 20 levels"), "{err}");
        })
        .unwrap();
    handle.join().unwrap();
}

#[test]
fn build_without_image_is_refused() {
    let err = load_err(&input(&["build_only.yaml"]));
    assert!(
        err.mentions(
            "service web: corral deploys images; `build:` without `image:` is not supported"
        ),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_warned() {
    let loaded = load_ok(&input(&["unknown_keys.yaml"]));
    let paths: Vec<&str> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
    for expected in [
        "version",
        "services.web.security_opt",
        "services.web.logging",
        "services.web.deploy.mode",
        "services.web.deploy.resources.limits",
        "services.web.deploy.update_config.failure_action",
        "services.web.ports[0].mode",
        "services.web.x-notes",
        "secrets",
        "x-extra",
    ] {
        assert!(
            paths.contains(&expected),
            "no warning for {expected}: {paths:?}"
        );
    }
    // Supported since: acted on, not warned about.
    for supported in ["services.web.privileged", "services.web.cap_add"] {
        assert!(!paths.contains(&supported), "{supported} warned: {paths:?}");
    }
    let web = &loaded.project.services["web"];
    assert!(web.privileged);
    assert_eq!(web.cap_add, vec!["NET_ADMIN"]);
    let security_opt = loaded
        .warnings
        .iter()
        .find(|w| w.path == "services.web.security_opt")
        .unwrap();
    assert!(security_opt.message.contains("`security_opt`"));
    assert!(security_opt.message.contains("ignored"));
    let loc = security_opt.location.as_ref().unwrap();
    assert_eq!((loc.file.as_str(), loc.line), ("unknown_keys.yaml", 5));
}

/// A one-service file `web` (image `x`) with `extra` added to the service, indented by four.
fn web_with(extra: &str) -> Input {
    let mut text = String::from("services:\n  web:\n    image: x\n");
    for line in extra.lines() {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    Input {
        files: vec![SourceFile::new("h.yaml", text)],
        project_name: Some("p".into()),
        ..Input::default()
    }
}

fn web_of(extra: &str) -> (Service, Vec<Warning>) {
    let loaded = load_ok(&web_with(extra));
    let web = loaded.project.services["web"].clone();
    (web, loaded.warnings)
}

#[test]
fn host_level_keys_accepted_forms() {
    for (text, want) in [
        ("pull_policy: always", PullPolicy::Always),
        ("pull_policy: missing", PullPolicy::Missing),
        ("pull_policy: if_not_present", PullPolicy::Missing),
        ("pull_policy: never", PullPolicy::Never),
    ] {
        let (web, warnings) = web_of(text);
        assert_eq!(web.pull_policy, want, "{text}");
        assert!(warnings.is_empty(), "{text}: {warnings:?}");
    }
    assert!(web_of("privileged: true").0.privileged);
    assert!(!web_of("privileged: false").0.privileged);

    let (web, warnings) = web_of(
        "cap_add: [net_admin, CAP_NET_ADMIN, cap_sys_time, Sys_Nice, ALL]\ncap_drop: [CAP_MKNOD, mknod, all]",
    );
    assert_eq!(
        web.cap_add,
        vec!["NET_ADMIN", "SYS_TIME", "SYS_NICE", "ALL"]
    );
    assert_eq!(web.cap_drop, vec!["MKNOD", "ALL"]);
    assert!(warnings.is_empty(), "{warnings:?}");

    for (text, want) in [
        ("network_mode: bridge", NetworkMode::Default),
        ("network_mode: default", NetworkMode::Default),
        ("network_mode: ''", NetworkMode::Default),
        ("network_mode: host", NetworkMode::Host),
        ("network_mode: none", NetworkMode::None),
    ] {
        let (web, warnings) = web_of(text);
        assert_eq!(web.network_mode, want, "{text}");
        assert!(warnings.is_empty(), "{text}: {warnings:?}");
    }
    // An empty network mode is no mode: `networks:` may go with it.
    let (web, _) = web_of("network_mode: ''\nnetworks: [front]");
    assert_eq!(web.networks, vec!["front"]);

    assert!(web_of("pid: host").0.pid_host);
    assert!(!web_of("pid:").0.pid_host);
    assert!(!web_of("pid: ''").0.pid_host);

    let (web, warnings) = web_of(
        "devices:\n  - /dev/fuse\n  - /dev/snd:wr\n  - /dev/ttyUSB0:/dev/ttyS0\n  - /dev/sda:/dev/xvda:mr\n  - /dev/fuse:/dev/fuse:rwm",
    );
    let dev = |host: &str, container: &str, permissions: &str| Device {
        host: host.into(),
        container: container.into(),
        permissions: permissions.into(),
    };
    assert_eq!(
        web.devices,
        vec![
            dev("/dev/fuse", "/dev/fuse", "rwm"),
            dev("/dev/snd", "/dev/snd", "rw"),
            dev("/dev/ttyUSB0", "/dev/ttyS0", "rwm"),
            dev("/dev/sda", "/dev/xvda", "rm"),
        ],
        "permissions in rwm order; the same device twice is one entry"
    );
    assert!(warnings.is_empty(), "{warnings:?}");

    // `privileged` is a boolean when interpolated too, but an environment variable of that
    // name stays a string.
    let mut inp = web_with("privileged: ${PRIV}\nenvironment:\n  privileged: ${PRIV}");
    inp.env = env(&[("PRIV", "True")]);
    let web = &load_ok(&inp).project.services["web"];
    assert!(web.privileged);
    assert_eq!(web.environment["privileged"], "True");
}

#[test]
fn host_network_mode_keeps_ports_with_a_warning() {
    let (web, warnings) = web_of("network_mode: host\nports: ['8080:80']");
    assert_eq!(web.network_mode, NetworkMode::Host);
    assert_eq!(web.ports.len(), 1, "ports are kept");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert_eq!(w.path, "services.web.ports");
    assert!(w.message.contains("`network_mode: host`"), "{w}");
    assert_eq!(w.location.as_ref().map(|l| l.line), Some(5));
    // Other modes: no warning.
    for mode in ["bridge", "none"] {
        let (_, warnings) = web_of(&format!("network_mode: {mode}\nports: ['8080:80']"));
        assert!(warnings.is_empty(), "{mode}: {warnings:?}");
    }
}

#[test]
fn host_level_keys_refused_forms() {
    // (extra service text, key path of the error, part of its message)
    let cases: &[(&str, &str, &str)] = &[
        (
            "pull_policy: build",
            "services.web.pull_policy",
            "`build` is not supported: corral does not build images yet",
        ),
        // The schema's enum refuses it first.
        (
            "pull_policy: daily",
            "services.web.pull_policy",
            "(Compose schema)",
        ),
        (
            "privileged: 'yes'",
            "services.web.privileged",
            "(Compose schema)",
        ),
        (
            "cap_add: [NET_ADMIN, 'NET ADMIN']",
            "services.web.cap_add[1]",
            "`NET ADMIN` is not a capability name",
        ),
        (
            "cap_add: [CAP_]",
            "services.web.cap_add[0]",
            "`CAP_` is not a capability name",
        ),
        (
            "cap_drop: [sys-admin]",
            "services.web.cap_drop[0]",
            "`sys-admin` is not a capability name",
        ),
        (
            "cap_drop: ['']",
            "services.web.cap_drop[0]",
            "`` is not a capability name",
        ),
        (
            "network_mode: service:db",
            "services.web.network_mode",
            "`service:db` is not supported",
        ),
        (
            "network_mode: container:abc",
            "services.web.network_mode",
            "`container:abc` is not supported",
        ),
        (
            "network_mode: mynet",
            "services.web.network_mode",
            "`mynet` is not a network mode corral supports (bridge, host or none)",
        ),
        (
            "network_mode: Host",
            "services.web.network_mode",
            "`Host` is not a network mode",
        ),
        (
            "network_mode: host\nnetworks: [front]",
            "services.web.network_mode",
            "`network_mode` and `networks` cannot be combined",
        ),
        (
            "networks: { front: {} }\nnetwork_mode: bridge",
            "services.web.network_mode",
            "`network_mode` and `networks` cannot be combined",
        ),
        (
            "pid: container:abc",
            "services.web.pid",
            "`container:abc` is not supported: corral supports only `pid: host`",
        ),
        (
            "pid: service:db",
            "services.web.pid",
            "corral supports only `pid: host`",
        ),
        (
            "devices: [dev/sda]",
            "services.web.devices[0]",
            "`dev/sda` in `dev/sda` is not an absolute path",
        ),
        (
            "devices: [/dev/fuse, '/dev/a:dev/b']",
            "services.web.devices[1]",
            "`dev/b` in `/dev/a:dev/b` is not an absolute path",
        ),
        (
            "devices: ['/dev/a:/dev/b:rx']",
            "services.web.devices[0]",
            "`rx` in `/dev/a:/dev/b:rx` is not a set of device permissions",
        ),
        (
            "devices: ['/dev/a:/dev/b:rr']",
            "services.web.devices[0]",
            "is not a set of device permissions",
        ),
        (
            "devices: ['/dev/a:/dev/b:']",
            "services.web.devices[0]",
            "is not a set of device permissions",
        ),
        (
            "devices: ['/dev/a:rx']",
            "services.web.devices[0]",
            "neither an absolute container path nor device permissions",
        ),
        (
            "devices: ['/dev/a:']",
            "services.web.devices[0]",
            "is not a device (HOST[:CONTAINER[:PERMISSIONS]]",
        ),
        (
            "devices: ['/dev/a:/dev/b:r:w']",
            "services.web.devices[0]",
            "is not a device (HOST[:CONTAINER[:PERMISSIONS]]",
        ),
        (
            "devices: ['']",
            "services.web.devices[0]",
            "is not a device",
        ),
        // The long syntax: the vendored schema wants strings (see the unit test in
        // `project.rs` for the loader's own message).
        (
            "devices: [{ source: /dev/fuse, target: /dev/fuse }]",
            "services.web.devices[0]",
            "(Compose schema)",
        ),
    ];
    for (text, path, needle) in cases {
        let err = load_err(&web_with(text));
        assert!(
            err.errors
                .iter()
                .any(|e| e.path.as_deref() == Some(*path) && e.message.contains(needle)),
            "{text:?}: expected {path}: …{needle}…, got:\n{err}"
        );
        // The rendered error names the key path too.
        assert!(err.mentions(&format!("{path}: ")), "{text:?}: {err}");
    }
}

#[test]
fn host_level_enums_serialize_in_lowercase() {
    for (value, want) in [
        (serde_json::to_value(PullPolicy::Always), "always"),
        (serde_json::to_value(PullPolicy::Missing), "missing"),
        (serde_json::to_value(PullPolicy::Never), "never"),
        (serde_json::to_value(NetworkMode::Default), "default"),
        (serde_json::to_value(NetworkMode::Host), "host"),
        (serde_json::to_value(NetworkMode::None), "none"),
    ] {
        assert_eq!(value.unwrap(), want);
    }
    assert_eq!(PullPolicy::default(), PullPolicy::Missing);
    assert_eq!(NetworkMode::default(), NetworkMode::Default);
}
