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
    // The top-level extension field holding the anchor is for YAML's use: no warning.
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
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
fn build_without_image_names_the_image_after_project_and_service() {
    let loaded = load_ok(&input(&["build_only.yaml"]));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let web = &loaded.project.services["web"];
    assert_eq!(web.image, "test-web");
    assert_eq!(
        web.build,
        Some(Build {
            context: ".".into(),
            dockerfile: None,
            args: BTreeMap::new(),
            target: None,
        })
    );
    let db = &loaded.project.services["db"];
    assert_eq!((db.image.as_str(), &db.build), ("postgres:16", &None));
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
    ] {
        assert!(
            paths.contains(&expected),
            "no warning for {expected}: {paths:?}"
        );
    }
    // Supported since: acted on, not warned about; `x-` extension fields are for other tools.
    for supported in [
        "services.web.privileged",
        "services.web.cap_add",
        "services.web.x-notes",
        "secrets",
        "secrets.token",
        "secrets.token.file",
        "x-extra",
    ] {
        assert!(!paths.contains(&supported), "{supported} warned: {paths:?}");
    }
    assert_eq!(
        loaded.project.secrets["token"],
        FileSource::File {
            path: "token.txt".into()
        }
    );
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

/// `files.yaml` with its env file and a shell environment.
fn files_input() -> Input {
    let mut inp = input(&["files.yaml"]);
    inp.project_name = None;
    inp.env_files = vec![fixture("files.env")];
    inp.env = env(&[("FROM_SHELL", "shell-value"), ("DB_PASSWORD", "hunter2")]);
    inp
}

#[test]
fn builds_configs_secrets_and_bind_mounts() {
    let loaded = load_ok(&files_input());
    // Only `uid` and `gid` are warned about: the `x-` fields at every level are silent.
    let paths: Vec<&str> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["services.api.secrets[2].uid", "services.api.secrets[2].gid"],
        "{:#?}",
        loaded.warnings
    );
    let p = &loaded.project;

    let api = &p.services["api"];
    assert_eq!(
        api.image, "shop-api",
        "built images are named PROJECT-SERVICE"
    );
    assert_eq!(api.restart, RestartPolicy::Always, "from the x- anchor");
    assert_eq!(
        api.build,
        Some(Build {
            context: "./api".into(),
            dockerfile: Some("docker/Dockerfile.prod".into()),
            args: env(&[
                ("VERSION", "1.2"),
                ("FROM_ENV_FILE", "env-file-value"),
                ("FROM_SHELL", "shell-value"),
            ]),
            target: Some("runtime".into()),
        }),
        "an argument without a value comes from the interpolation environment, or is left out"
    );
    let file_ref = |source: &str, target: &str, mode: u32| FileRef {
        source: source.into(),
        target: target.into(),
        mode,
    };
    assert_eq!(
        api.configs,
        vec![
            file_ref("nginx", "/nginx", 0o444),
            file_ref("app", "/etc/app/app.toml", 0o440),
        ]
    );
    assert_eq!(
        api.secrets,
        vec![
            file_ref("token", "/run/secrets/token", 0o444),
            file_ref("db_password", "/run/secrets/db/password", 0o400),
            file_ref("api_key", "/etc/api.key", 0o440),
        ]
    );
    assert_eq!(
        api.volumes,
        vec![
            Mount::Bind {
                source: "./data".into(),
                target: "/data".into(),
                read_only: false
            },
            Mount::Bind {
                source: "./conf/../static/".into(),
                target: "/static".into(),
                read_only: true
            },
            Mount::Bind {
                source: "logs".into(),
                target: "/logs".into(),
                read_only: false
            },
            Mount::Bind {
                source: "/var/run/docker.sock".into(),
                target: "/var/run/docker.sock".into(),
                read_only: false
            },
        ],
        "bind sources are kept as written"
    );

    let web = &p.services["web"];
    assert_eq!(web.image, "shop/web:1", "`image:` names what is built");
    assert_eq!(web.build.as_ref().map(|b| b.context.as_str()), Some("."));

    let worker = &p.services["worker"];
    assert_eq!(worker.image, "shop-worker");
    assert_eq!(
        worker.build.as_ref().map(|b| b.args.clone()),
        Some(env(&[("MODE", "batch"), ("FROM_SHELL", "shell-value")]))
    );

    assert_eq!(
        p.configs,
        [
            (
                "nginx".to_owned(),
                FileSource::File {
                    path: "conf/nginx.conf".into()
                }
            ),
            (
                "app".to_owned(),
                FileSource::Content {
                    value: "greeting = \"hello\"\n".into()
                }
            ),
        ]
        .into_iter()
        .collect::<BTreeMap<_, _>>()
    );
    assert_eq!(
        p.secrets,
        [
            (
                "token".to_owned(),
                FileSource::File {
                    path: "secrets/token.txt".into()
                }
            ),
            (
                "db_password".to_owned(),
                FileSource::Environment {
                    variable: "DB_PASSWORD".into(),
                    value: "hunter2".into()
                }
            ),
            (
                "api_key".to_owned(),
                FileSource::Environment {
                    variable: "API_KEY".into(),
                    value: "key-from-env-file".into()
                }
            ),
        ]
        .into_iter()
        .collect::<BTreeMap<_, _>>()
    );
}

#[test]
fn project_references_list_what_to_send() {
    // No project name and no `env_file:` contents needed.
    let mut inp = files_input();
    inp.files[0].text = inp.files[0].text.replace("name: shop\n", "").replace(
        "  web:\n",
        "  web:\n    env_file: [./web.env, common.env]\n",
    );
    let refs = match project_references(&inp) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        refs,
        ProjectRefs {
            env_files: vec!["./web.env".into(), "common.env".into()],
            files: vec!["conf/nginx.conf".into(), "secrets/token.txt".into()],
            mounts: vec!["data".into(), "logs".into(), "static".into()],
            builds: vec![
                BuildRef {
                    service: "api".into(),
                    context: "api".into(),
                    dockerfile: "docker/Dockerfile.prod".into()
                },
                BuildRef {
                    service: "web".into(),
                    context: ".".into(),
                    dockerfile: "Dockerfile".into()
                },
                BuildRef {
                    service: "worker".into(),
                    context: ".".into(),
                    dockerfile: "Dockerfile".into()
                },
            ],
        }
    );
    // `load` still wants the env files, and a name.
    assert!(load_err(&inp).mentions("no project name"));
    inp.project_name = Some("shop".into());
    let err = load_err(&inp);
    assert!(
        err.mentions("env file `./web.env` was not provided")
            && err.mentions("env file `common.env` was not provided"),
        "{err}"
    );

    // Its errors are `load`'s.
    let mut bad = files_input();
    bad.files[0].text = bad.files[0]
        .text
        .replace("- ./data:/data", "- ../data:/data");
    let err = project_references(&bad).unwrap_err();
    assert!(
        err.errors
            .iter()
            .any(|e| e.path.as_deref() == Some("services.api.volumes[0]")
                && e.message.contains("is outside the project directory")),
        "{err}"
    );
}

#[test]
fn referenced_files_not_named_by_env_file_are_not_read() {
    // The client may send configs' and secrets' files along: they are not env files, and
    // their text must never show up in an error.
    let mut inp = files_input();
    inp.referenced_files = vec![SourceFile::new(
        "secrets/token.txt",
        "TOPSECRET is not KEY=VALUE\n",
    )];
    load_ok(&inp);
}

#[test]
fn extension_fields_are_silent_everywhere() {
    let text = "\
x-top: 1
x-anchors: &env { A: '1' }
services:
  web:
    image: x
    x-service: { anything: [1, 2] }
    x-corral: { affinity: [web], x-inner: 1 }
    environment: *env
    build: { context: ., x-b: 1 }
    ports: [{ target: 80, x-p: 1 }]
    volumes: [{ type: volume, source: data, target: /data, x-v: 1 }]
    deploy: { x-d: 1, resources: { x-r: 1 } }
    healthcheck: { test: [CMD, 'true'], x-h: 1 }
    configs: [{ source: c, x-c: 1 }]
    secrets: [{ source: s, x-s: 1 }]
volumes:
  data: { x-vol: 1 }
configs:
  c: { content: hi, x-cfg: 1 }
secrets:
  s: { content: hi, x-sec: 1 }
";
    let loaded = load_ok(&Input {
        files: vec![SourceFile::new("x.yaml", text)],
        project_name: Some("p".into()),
        ..Input::default()
    });
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    assert_eq!(loaded.project.services["web"].affinity, vec!["web"]);
    // A network definition is still reported (corral ignores it), but not for its `x-` key.
    let text = format!("{text}networks:\n  front: {{ x-net: 1 }}\n");
    let loaded = load_ok(&Input {
        files: vec![SourceFile::new("x.yaml", text)],
        project_name: Some("p".into()),
        ..Input::default()
    });
    let paths: Vec<&str> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, vec!["networks.front"]);
}

#[test]
fn ignored_build_keys_are_warned() {
    let (web, warnings) = web_of(
        "build:\n  context: ./web\n  cache_from: [x]\n  network: host\n  labels: [a=b]\n  ssh: [default]\n  secrets: [npmrc]\n  platforms: [linux/arm64]\n  no_cache: true",
    );
    assert_eq!(web.image, "x");
    assert_eq!(web.build.as_ref().unwrap().context, "./web");
    let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "services.web.build.cache_from",
            "services.web.build.network",
            "services.web.build.labels",
            "services.web.build.ssh",
            "services.web.build.secrets",
            "services.web.build.platforms",
            "services.web.build.no_cache",
        ]
    );
    assert!(warnings.iter().all(|w| w.message.contains("ignored")));
}

#[test]
fn a_later_file_refines_a_short_build_and_replaces_file_refs_by_target() {
    let base = "services:\n  web:\n    build: ./web\n    secrets: [s, { source: t, mode: 0400 }]\nsecrets:\n  s: { content: a }\n  t: { content: b }\n";
    let over = "services:\n  web:\n    build: { dockerfile: Dockerfile.dev, args: [A=1] }\n    secrets: [{ source: t, target: /run/secrets/t, mode: 0440 }]\n";
    let loaded = load_ok(&Input {
        files: vec![
            SourceFile::new("base.yaml", base),
            SourceFile::new("over.yaml", over),
        ],
        project_name: Some("p".into()),
        ..Input::default()
    });
    let web = &loaded.project.services["web"];
    assert_eq!(
        web.build,
        Some(Build {
            context: "./web".into(),
            dockerfile: Some("Dockerfile.dev".into()),
            args: env(&[("A", "1")]),
            target: None,
        })
    );
    let secrets: Vec<(&str, &str, u32)> = web
        .secrets
        .iter()
        .map(|r| (r.source.as_str(), r.target.as_str(), r.mode))
        .collect();
    assert_eq!(
        secrets,
        vec![
            ("s", "/run/secrets/s", 0o444),
            ("t", "/run/secrets/t", 0o440)
        ]
    );
}

#[test]
fn service_names_make_lower_case_image_names() {
    let text = "services:\n  Web.API:\n    build: .\n";
    let loaded = load_ok(&Input {
        files: vec![SourceFile::new("b.yaml", text)],
        project_name: Some("shop".into()),
        ..Input::default()
    });
    assert_eq!(loaded.project.services["Web.API"].image, "shop-web.api");
}

#[test]
fn file_modes() {
    for (written, want) in [
        ("0440", 0o440),
        ("0o440", 0o440),
        ("'0440'", 0o440),
        ("'440'", 0o440),
        ("'0o600'", 0o600),
        ("288", 0o440),
        ("0", 0),
        ("0777", 0o777),
    ] {
        let (web, warnings) = web_of(&format!(
            "secrets:\n  - source: s\n    mode: {written}\nconfigs: [{{ source: s, mode: {written} }}]"
        ));
        assert!(warnings.is_empty(), "{written}: {warnings:?}");
        assert_eq!(web.secrets[0].mode, want, "{written} (block)");
        assert_eq!(web.configs[0].mode, want, "{written} (flow)");
    }
    // Through aliases and merge keys, the digits are read where they are written.
    let text = "\
x-mode: &m 0440
x-ref: &r { source: s, mode: 0640 }
x-ref2: &r2 { source: s, target: /b, mode: 0600 }
services:
  web:
    image: x
    secrets:
      - source: s
        mode: *m
      - <<: *r
        target: /a
      - *r2
secrets:
  s: { content: c }
";
    let loaded = load_ok(&Input {
        files: vec![SourceFile::new("m.yaml", text)],
        project_name: Some("p".into()),
        ..Input::default()
    });
    let modes: Vec<u32> = loaded.project.services["web"]
        .secrets
        .iter()
        .map(|r| r.mode)
        .collect();
    assert_eq!(modes, vec![0o440, 0o640, 0o600]);
}

/// `web_with`, plus a top-level config and secret `s`.
fn web_with_files(extra: &str) -> Input {
    let mut inp = web_with(extra);
    inp.files[0]
        .text
        .push_str("configs:\n  s: { content: c }\nsecrets:\n  s: { content: c }\n");
    inp
}

fn web_of(extra: &str) -> (Service, Vec<Warning>) {
    let loaded = load_ok(&web_with_files(extra));
    let web = loaded.project.services["web"].clone();
    (web, loaded.warnings)
}

/// Each case: (text added to service `web`, or a whole file when it starts with `services:`;
/// the key path of the error; part of its message).
fn assert_errors(cases: &[(&str, &str, &str)]) {
    for (text, path, needle) in cases {
        let inp = if text.starts_with("services:") {
            Input {
                files: vec![SourceFile::new("f.yaml", *text)],
                project_name: Some("p".into()),
                ..Input::default()
            }
        } else {
            web_with_files(text)
        };
        let err = load_err(&inp);
        assert!(
            err.errors
                .iter()
                .any(|e| e.path.as_deref() == Some(*path) && e.message.contains(needle)),
            "{text:?}: expected {path}: …{needle}…, got:\n{err}"
        );
        assert!(err.mentions(&format!("{path}: ")), "{text:?}: {err}");
    }
}

#[test]
fn build_errors() {
    let remote = "remote build contexts are not supported: build from a directory of the project";
    let inside = "must be a path inside the project directory";
    assert_errors(&[
        (
            "build: https://github.com/x/y.git",
            "services.web.build.context",
            remote,
        ),
        (
            "build: http://example.com/ctx.tar.gz",
            "services.web.build.context",
            remote,
        ),
        (
            "build: git@github.com:x/y.git",
            "services.web.build.context",
            remote,
        ),
        (
            "build: git://example.com/y",
            "services.web.build.context",
            remote,
        ),
        (
            "build: { context: 's3://bucket/ctx' }",
            "services.web.build.context",
            remote,
        ),
        (
            "build: /srv/app",
            "services.web.build.context",
            "`/srv/app` must be a path inside the project directory",
        ),
        ("build: ../app", "services.web.build.context", inside),
        ("build: ./a/../../app", "services.web.build.context", inside),
        ("build: ~/app", "services.web.build.context", inside),
        (
            "build: { context: ., dockerfile: /tmp/Dockerfile }",
            "services.web.build.dockerfile",
            "`/tmp/Dockerfile` must be a path inside the build context",
        ),
        (
            "build: { context: ./api, dockerfile: ../Dockerfile }",
            "services.web.build.dockerfile",
            "must be a path inside the build context",
        ),
        (
            "build: { dockerfile_inline: 'FROM alpine' }",
            "services.web.build.dockerfile_inline",
            "`dockerfile_inline` is not supported",
        ),
        (
            "build: { args: { A: [1] } }",
            "services.web.build",
            "(Compose schema)",
        ),
        (
            "build: { contxt: . }",
            "services.web.build",
            "(Compose schema)",
        ),
        // Without `image:`, the name made must be an image name.
        (
            "services:\n  _web:\n    build: .\n",
            "services._web.build",
            "`p-_web`, the image name made of the project and service names, is not a valid image name: name the image with `image:`",
        ),
        (
            "services:\n  web:\n    environment: { A: b }\n",
            "services.web",
            "service web has no `image`",
        ),
    ]);
}

#[test]
fn bind_mount_errors() {
    let tilde = "`~` is not supported: corral runs containers on other machines; use a path relative to the project directory (shipped with the stack) or an absolute path on the host";
    assert_errors(&[
        (
            "volumes: ['~/data:/data']",
            "services.web.volumes[0]",
            tilde,
        ),
        ("volumes: ['~:/data']", "services.web.volumes[0]", tilde),
        (
            "volumes: [{ type: bind, source: ~/data, target: /data }]",
            "services.web.volumes[0]",
            tilde,
        ),
        (
            "volumes: ['./ok:/ok', '../data:/data']",
            "services.web.volumes[1]",
            "bind mount source `../data` is outside the project directory",
        ),
        (
            "volumes: ['./a/../../b:/data']",
            "services.web.volumes[0]",
            "is outside the project directory",
        ),
        (
            "volumes: [{ type: bind, source: ../data, target: /data }]",
            "services.web.volumes[0]",
            "is outside the project directory",
        ),
    ]);
    // Paths that stay inside are fine, whatever their spelling.
    let (web, _) = web_of("volumes: ['./a/../b:/b', '.:/all', './:/also']");
    assert_eq!(web.volumes.len(), 3);
}

#[test]
fn config_and_secret_errors() {
    let file = |defs: &str, svc: &str| format!("services:\n  web:\n    image: x\n{svc}{defs}");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            file("secrets:\n  s: { file: ../s.txt }\n", ""),
            "secrets.s.file",
            "`../s.txt` must be a path inside the project directory",
        ),
        (
            file("secrets:\n  s: { file: /etc/s.txt }\n", ""),
            "secrets.s.file",
            "must be a path inside the project directory",
        ),
        (
            file("configs:\n  c: { file: ~/c.txt }\n", ""),
            "configs.c.file",
            "must be a path inside the project directory",
        ),
        (
            file("secrets:\n  s: { name: x }\n", ""),
            "secrets.s",
            "a secret needs one of `file:`, `environment:` or `content:`",
        ),
        (
            file("configs:\n  c: { file: c.txt, content: x }\n", ""),
            "configs.c",
            "a config takes one of `file:`, `environment:` or `content:`, not `file:` and `content:`",
        ),
        (
            file("secrets:\n  s: { external: true }\n", ""),
            "secrets.s.external",
            "external secrets are not supported: define it with `file:`, `environment:` or `content:`",
        ),
        (
            file("configs:\n  c: { external: { name: x } }\n", ""),
            "configs.c.external",
            "external configs are not supported",
        ),
        (
            file("secrets:\n  s: { environment: NOT_SET_ANYWHERE }\n", ""),
            "secrets.s.environment",
            "variable `NOT_SET_ANYWHERE` is not set",
        ),
        (
            file("secrets:\n  s: { environment: [A] }\n", ""),
            "secrets.s.environment",
            "must be the name of a variable",
        ),
        (
            file("", "    secrets: [nope]\n"),
            "services.web.secrets[0]",
            "no top-level secret `nope`: define it under `secrets:`",
        ),
        (
            file(
                "configs:\n  c: { content: x }\n",
                "    configs: [c, { source: d }]\n",
            ),
            "services.web.configs[1]",
            "no top-level config `d`",
        ),
        (
            file(
                "configs:\n  c: { content: x }\n",
                "    configs: [{ target: /x }]\n",
            ),
            "services.web.configs[0]",
            "a config needs a `source`",
        ),
        (
            file(
                "configs:\n  c: { content: x }\n",
                "    configs: [{ source: c, target: etc/c }]\n",
            ),
            "services.web.configs[0].target",
            "`etc/c` must be an absolute path in the container",
        ),
        (
            file(
                "secrets:\n  s: { content: x }\n",
                "    secrets: [{ source: s, target: ../etc/s }]\n",
            ),
            "services.web.secrets[0].target",
            "a file name under /run/secrets/",
        ),
        (
            file(
                "secrets:\n  s: { content: x }\n",
                "    secrets: [{ source: s, mode: 01000 }]\n",
            ),
            "services.web.secrets[0].mode",
            "`01000` is not a file mode: at most 0777",
        ),
        (
            file(
                "secrets:\n  s: { content: x }\n",
                "    secrets: [{ source: s, mode: 4095 }]\n",
            ),
            "services.web.secrets[0].mode",
            "at most 0777",
        ),
        (
            file(
                "secrets:\n  s: { content: x }\n",
                "    secrets: [{ source: s, mode: 0999 }]\n",
            ),
            "services.web.secrets[0].mode",
            "`0999` is not a file mode (octal, like 0440)",
        ),
        (
            file(
                "secrets:\n  s: { content: x }\n",
                "    secrets: [{ source: s, mode: 'rw' }]\n",
            ),
            "services.web.secrets[0].mode",
            "`rw` is not a file mode",
        ),
        (
            file(
                "secrets:\n  s: { content: x }\n",
                "    secrets: [{ source: s, mode: -1 }]\n",
            ),
            "services.web.secrets[0].mode",
            "is not a file mode",
        ),
        (
            file(
                "secrets:\n  s: { content: x }\n  t: { content: y }\n",
                "    secrets: [s, { source: t, target: s }]\n",
            ),
            "services.web.secrets[1]",
            "`/run/secrets/s` is also the target of services.web.secrets[0]",
        ),
        (
            file(
                "secrets:\n  s: { content: x }\nconfigs:\n  c: { content: y }\n",
                "    configs: [{ source: c, target: /run/secrets/s }]\n    secrets: [s]\n",
            ),
            "services.web.secrets[0]",
            "is also the target of services.web.configs[0]",
        ),
        (
            file("secrets:\n  s: { contents: x }\n", ""),
            "secrets.s",
            "(Compose schema)",
        ),
    ];
    let cases: Vec<(&str, &str, &str)> =
        cases.iter().map(|(t, p, m)| (t.as_str(), *p, *m)).collect();
    assert_errors(&cases);
    // A service naming a config with an error of its own gets no second error.
    let err = load_err(&Input {
        files: vec![SourceFile::new(
            "f.yaml",
            file(
                "configs:\n  c: { file: ../c }\nsecrets:\n  s: { external: true }\n",
                "    configs: [c]\n    secrets: [s]\n",
            ),
        )],
        project_name: Some("p".into()),
        ..Input::default()
    });
    let paths: Vec<&str> = err
        .errors
        .iter()
        .filter_map(|e| e.path.as_deref())
        .collect();
    assert_eq!(paths, vec!["configs.c.file", "secrets.s.external"], "{err}");
}

#[test]
fn secret_values_never_show_in_errors_or_warnings() {
    let text = "\
services:
  web:
    image: x
    logging: { driver: syslog }
    secrets: [from_env, inline]
    ports: ['not a port']
secrets:
  from_env: { environment: TOKEN }
  inline: { content: '${TOKEN}' }
  both: { environment: TOKEN, content: '${TOKEN}' }
  bad: { content: '${TOKEN}', driver_opts: { x: [1] } }
";
    let inp = |text: &str| Input {
        files: vec![SourceFile::new("s.yaml", text)],
        project_name: Some("p".into()),
        env: env(&[("TOKEN", "TOPSECRET")]),
        ..Input::default()
    };
    // Schema errors first (`bad`), whose messages quote values.
    let err = load_err(&inp(text));
    assert!(err.mentions("secrets.bad.driver_opts"), "{err}");
    let shown = format!("{err}\n{err:?}\n{}", serde_json::to_string(&err).unwrap());
    assert!(!shown.contains("TOPSECRET"), "{shown}");
    // Then the loader's own errors.
    let text = text.replace(
        "  bad: { content: '${TOKEN}', driver_opts: { x: [1] } }\n",
        "",
    );
    let err = load_err(&inp(&text));
    assert!(err.mentions("services.web.ports[0]"), "{err}");
    assert!(err.mentions("secrets.both: a secret takes one of"), "{err}");
    let shown = format!("{err}\n{err:?}\n{}", serde_json::to_string(&err).unwrap());
    assert!(!shown.contains("TOPSECRET"), "{shown}");
    // And the warnings of a load that succeeds.
    let text = text
        .replace("    ports: ['not a port']\n", "")
        .replace("  both: { environment: TOKEN, content: '${TOKEN}' }\n", "");
    let loaded = load_ok(&inp(&text));
    assert!(!loaded.warnings.is_empty());
    let shown = format!("{:?}", loaded.warnings);
    assert!(!shown.contains("TOPSECRET"), "{shown}");
    assert_eq!(
        loaded.project.secrets["from_env"],
        FileSource::Environment {
            variable: "TOKEN".into(),
            value: "TOPSECRET".into()
        }
    );
}

#[test]
fn project_path_is_public() {
    for (input, want) in [
        ("./a//b/.", Some("a/b")),
        (".", Some(".")),
        ("./", Some(".")),
        ("../x", None),
        ("./a/../../b", None),
        ("/abs", None),
        ("~/x", None),
    ] {
        assert_eq!(project_path(input).as_deref(), want, "{input:?}");
    }
}
