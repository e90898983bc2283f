//! The wire format is pinned: `golden/frames.jsonl` holds frames as the protocol has always
//! written them (payload keys sorted), one command of every kind and one reply of every reply
//! type. The typed messages must encode to exactly these bytes and decode back to themselves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use corral_proto::*;

fn spec() -> ContainerSpec {
    let mut labels = BTreeMap::new();
    labels.insert("io.corral.stack".to_string(), "shop".to_string());
    labels.insert("io.corral.managed".to_string(), "true".to_string());
    ContainerSpec {
        corral_id: "ctr_1".into(),
        name: "shop_web.1".into(),
        environment: "default".into(),
        image: "corral-test/busybox:latest".into(),
        env: vec!["A=1".into()],
        ports: vec![PortSpec {
            host: 8080,
            container: 80,
            udp: false,
            host_ip: None,
        }],
        labels,
        cmd: vec!["httpd".into(), "-f".into()],
        entrypoint: Some(vec![]),
        mounts: vec![
            MountSpec::Volume {
                source: "shop_data".into(),
                target: "/data".into(),
                read_only: false,
            },
            MountSpec::Anonymous {
                target: "/tmp".into(),
            },
        ],
        restart: Some(RestartSpec {
            name: RestartPolicyName::OnFailure,
            max_retries: Some(3),
        }),
        healthcheck: Some(HealthSpec {
            test: Some(vec!["CMD".into(), "true".into()]),
            interval_ms: Some(2000),
            ..Default::default()
        }),
        user: None,
        working_dir: Some("/www".into()),
        hostname: None,
        network: Some(NetworkSpec {
            name: "corral_shop".into(),
            aliases: vec!["web".into()],
        }),
        expose: vec!["9000/tcp".into()],
        stop_grace_secs: Some(10),
        dns: vec!["10.42.1.1".into()],
        ..Default::default()
    }
}

fn status() -> ContainerStatus {
    ContainerStatus {
        corral_id: "ctr_1".into(),
        docker_id: "abc".into(),
        name: "shop_web.1".into(),
        state: ContainerState::Running,
        exit_code: None,
        health: Some(Health::Healthy),
        restart_count: 0,
        ip: Some("10.42.1.2".into()),
    }
}

fn command(body: impl Into<CommandBody>) -> ServerMessage {
    let body = body.into();
    ServerMessage::Command(Command {
        id: format!("cmd_{}", body.kind().as_str()),
        body,
        deadline: 1_800_000_000,
    })
}

fn reply<R: Request>(reply: R::Reply) -> AgentMessage {
    AgentMessage::Reply {
        command_id: "cmd_x".into(),
        result: CommandResult::of::<R>(Ok(reply)),
    }
}

fn lifecycle(grace: Option<u64>) -> ContainerRef {
    ContainerRef::lifecycle("ctr_1", grace)
}

fn probe(peer: &str, window_ms: u64) -> OverlayProbe {
    OverlayProbe {
        nonce: "00112233445566778899aabbccddeeff".into(),
        peer: peer.into(),
        window_ms,
    }
}

fn golden() -> Vec<String> {
    include_str!("golden/frames.jsonl")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn commands_encode_to_the_golden_bytes_and_back() {
    let commands = vec![
        command(DoctorRequest {
            server_time_ms: Some(1_700_000_000_123),
        }),
        command(FirewallApply {
            ruleset: "table inet corral {}\n".into(),
            dry_run: false,
            confirm_within_secs: 60,
        }),
        command(ExpectProbe(probe("", 3000))),
        command(SendProbe(probe("192.0.2.3:51820", 1000))),
        command(spec()),
        command(StartContainer(lifecycle(Some(10)))),
        command(StopContainer(lifecycle(Some(10)))),
        command(RemoveContainer(lifecycle(None))),
        command(OpenLogs(ContainerRef {
            corral_id: "ctr_1".into(),
            grace_secs: None,
            stream_id: Some("str_1".into()),
            follow: true,
            tail: Some(100),
            credit: 65536,
        })),
        command(ImageCheck {
            images: vec!["a:1".into(), "b:2".into()],
        }),
        command(StackCleanup {
            stack: "shop".into(),
            network: "corral_shop".into(),
            volumes: vec!["shop_data".into()],
        }),
    ];
    let golden = golden();
    for (i, message) in commands.iter().enumerate() {
        let text = serde_json::to_string(message).unwrap();
        assert_eq!(text, golden[i], "command frame {i}");
        let back: ServerMessage = serde_json::from_str(&golden[i]).unwrap();
        assert_eq!(
            &back, message,
            "command frame {i} decodes to the same message"
        );
    }
}

#[test]
fn replies_encode_to_the_golden_bytes_and_decode_typed() {
    let replies = vec![
        reply::<DoctorRequest>(vec![Check {
            name: "docker".into(),
            ok: true,
            detail: "ok".into(),
            fix: None,
        }]),
        reply::<FirewallApply>(FirewallOutcome {
            dry_run: true,
            checked: true,
            ..FirewallOutcome::default()
        }),
        reply::<FirewallApply>(FirewallOutcome {
            applied: true,
            confirmed_after_ms: Some(42),
            ..FirewallOutcome::default()
        }),
        reply::<ExpectProbe>(ProbeReceived { received: true }),
        reply::<SendProbe>(ProbeSent { sent: 5 }),
        reply::<ContainerSpec>(status()),
        reply::<StartContainer>(Some(status())),
        reply::<StopContainer>(None),
        reply::<RemoveContainer>(()),
        reply::<OpenLogs>(StreamOpened {
            stream_id: "str_1".into(),
        }),
        reply::<ImageCheck>(vec!["b:2".into()]),
        reply::<StackCleanup>(CleanupOutcome {
            network_removed: true,
            volumes_removed: vec!["shop_data".into()],
            skipped: vec![],
        }),
        AgentMessage::Reply {
            command_id: "cmd_x".into(),
            result: CommandResult::Failed {
                message: "no such image".into(),
            },
        },
    ];
    let golden = &golden()[11..];
    assert_eq!(golden.len(), replies.len());
    for (i, message) in replies.iter().enumerate() {
        let text = serde_json::to_string(message).unwrap();
        assert_eq!(text, golden[i], "reply frame {i}");
        let back: AgentMessage = serde_json::from_str(&golden[i]).unwrap();
        assert_eq!(
            &back, message,
            "reply frame {i} decodes to the same message"
        );
    }
    // A typed reply reads back from its frame.
    let AgentMessage::Reply {
        result: CommandResult::Ok { value },
        ..
    } = serde_json::from_str(&golden[5]).unwrap()
    else {
        panic!("frame 5 is an ok reply");
    };
    assert_eq!(ContainerSpec::decode_reply(value).unwrap(), status());
}

#[test]
fn an_unknown_kind_or_a_bad_payload_is_readable_as_unreadable() {
    let newer = r#"{"type":"command","id":"cmd_9","kind":"volume_snapshot","payload":{"x":1},"deadline":5}"#;
    let ServerMessage::Command(c) = serde_json::from_str(newer).unwrap() else {
        panic!("a command");
    };
    assert_eq!(c.id, "cmd_9");
    assert_eq!(c.body.kind(), CommandKind::Unknown);
    assert_eq!(c.body.kind_name(), "volume_snapshot");
    let bad = r#"{"type":"command","id":"cmd_8","kind":"container_run","payload":{"image":7},"deadline":5}"#;
    let ServerMessage::Command(c) = serde_json::from_str(bad).unwrap() else {
        panic!("a command");
    };
    match c.body {
        CommandBody::Unreadable { kind, error } => {
            assert_eq!(kind, "container_run");
            assert!(!error.is_empty());
        }
        other => panic!("expected unreadable, got {other:?}"),
    }
}

/// The image commands, a `container_run` that pulls with an account and runs with the
/// options admission governs, their replies and a pull progress report (`golden/images.jsonl`).
#[test]
fn image_frames_encode_to_the_golden_bytes_and_back() {
    let auth = RegistryAuth {
        registry: "198.18.0.9:5000".into(),
        username: Some("team".into()),
        password: Some("s3cret".into()),
        ca_pem: Some("-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----\n".into()),
    };
    let digest = format!("sha256:{}", "a".repeat(64));
    let mut pulling = spec();
    pulling.image = format!("198.18.0.9:5000/team/app@{digest}");
    pulling.image_source = Some("198.18.0.9:5000/team/app:1".into());
    pulling.pull = PullPolicy::Always;
    pulling.registry_auth = Some(auth.clone());
    pulling.cap_add = vec!["NET_ADMIN".into()];
    pulling.cap_drop = vec!["MKNOD".into()];
    pulling.privileged = true;
    pulling.pid_host = true;
    pulling.network_mode = NetworkMode::Host;
    pulling.devices = vec![DeviceSpec {
        host: "/dev/fuse".into(),
        container: "/dev/fuse".into(),
        permissions: "rwm".into(),
    }];
    let summary = ImageSummary {
        id: format!("sha256:{}", "b".repeat(64)),
        tags: vec!["198.18.0.9:5000/team/app:1".into()],
        digests: vec![format!("198.18.0.9:5000/team/app@{digest}")],
        size_bytes: 1_234_567,
        created: 1_700_000_000,
        containers: 2,
    };
    let commands: Vec<String> = [
        command(ResolveImages {
            images: vec![
                ImageToResolve {
                    reference: "198.18.0.9:5000/team/app:1".into(),
                    auth: Some(auth.clone()),
                },
                ImageToResolve {
                    reference: "nginx:1.27".into(),
                    auth: None,
                },
            ],
        }),
        command(PullImage {
            reference: "198.18.0.9:5000/team/app:1".into(),
            auth: Some(auth),
        }),
        command(ListImages {}),
        command(RemoveImage {
            reference: "nginx:1.27".into(),
        }),
        command(pulling),
    ]
    .iter()
    .map(|m| serde_json::to_string(m).unwrap())
    .collect();
    let agent: Vec<AgentMessage> = vec![
        reply::<ResolveImages>(vec![
            Resolution::Digest {
                digest: digest.clone(),
            },
            Resolution::Failed {
                reason: "manifest unknown".into(),
            },
        ]),
        reply::<PullImage>(summary.clone()),
        reply::<ListImages>(vec![summary]),
        reply::<RemoveImage>(RemovedImage {
            untagged: vec!["nginx:1.27".into()],
            deleted: vec![format!("sha256:{}", "c".repeat(64))],
        }),
        AgentMessage::Report(Report::Pull(PullProgress {
            corral_id: Some("ctr_1".into()),
            image: "198.18.0.9:5000/team/app:1".into(),
            downloaded_bytes: 1000,
            total_bytes: 4000,
            layers_done: 1,
            layers: 3,
            done: false,
        })),
    ];
    let mut encoded = commands.clone();
    encoded.extend(agent.iter().map(|m| serde_json::to_string(m).unwrap()));
    let golden: Vec<&str> = include_str!("golden/images.jsonl").lines().collect();
    assert_eq!(
        golden,
        encoded.iter().map(String::as_str).collect::<Vec<_>>(),
        "image frames changed; the new encoding is:\n{}",
        encoded.join("\n")
    );
    for line in &golden[..commands.len()] {
        let back: ServerMessage = serde_json::from_str(line).unwrap();
        assert_eq!(&serde_json::to_string(&back).unwrap(), line);
    }
    for (line, message) in golden[commands.len()..].iter().zip(&agent) {
        let back: AgentMessage = serde_json::from_str(line).unwrap();
        assert_eq!(&back, message);
    }
}

/// The network policy travels typed: a `network_policy` message with a document of every kind
/// of rule, and a name table carrying a service's labels (`golden/policy.jsonl`).
#[test]
fn policy_frames_encode_to_the_golden_bytes_and_back() {
    let document = corral_policy::parse(
        "default: deny
ingress: deny
egress: allow
allow:
  - name: web-to-api
    from: { labels: { zone: dmz } }
    to: { stack: shop, service: api }
    ports: [8080/tcp, 9000-9010/udp]
  - within: stack
  - between: { groupBy: zone }
    in_stack: shop
  - from: { cidr: 203.0.113.0/24 }
    to: { labels: { zone: dmz } }
deny:
  - to: { cidr: 10.0.0.0/8 }
    ports: [22/tcp]
",
    )
    .unwrap();
    let messages = vec![
        ServerMessage::NetworkPolicy(corral_proto::NetworkPolicy {
            environment: "default".into(),
            generation: 3,
            document: Some(document),
        }),
        ServerMessage::NetworkPolicy(corral_proto::NetworkPolicy {
            environment: "default".into(),
            generation: 0,
            document: None,
        }),
        ServerMessage::Names(corral_proto::NameTable {
            services: vec![corral_proto::ServiceAddresses {
                stack: "shop".into(),
                service: "web".into(),
                ready: vec!["10.42.1.2".parse().unwrap()],
                members: vec!["10.42.1.2".parse().unwrap(), "10.42.2.7".parse().unwrap()],
                labels: [("zone".to_string(), "dmz".to_string())]
                    .into_iter()
                    .collect(),
            }],
        }),
    ];
    let encoded: Vec<String> = messages
        .iter()
        .map(|m| serde_json::to_string(m).unwrap())
        .collect();
    let golden: Vec<&str> = include_str!("golden/policy.jsonl").lines().collect();
    assert_eq!(
        golden,
        encoded.iter().map(String::as_str).collect::<Vec<_>>(),
        "policy frames changed; the new encoding is:\n{}",
        encoded.join("\n")
    );
    for (line, message) in golden.iter().zip(&messages) {
        let back: ServerMessage = serde_json::from_str(line).unwrap();
        assert_eq!(&back, message);
    }
}
