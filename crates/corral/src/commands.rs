//! One function per verb.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use corral_proto::api::{
    CreateToken, CreatedToken, DoctorReport, EventView, FirewallApplyReport, FirewallApplyRequest,
    HostView, TokenView,
};
use corral_server::{ServerOptions, TlsMode};
use corral_tls::CaChecksum;

use crate::cli::*;
use crate::client::{Client, seg};
use crate::output::{print, table};

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(cmd) => match *cmd {
            ServerCommand {
                action: Some(action),
                ..
            } => crate::backup::run(action).await,
            ServerCommand { run, .. } => server(run).await,
        },
        Command::Agent(args) => agent(args).await,
        Command::Token(cmd) => token(cmd).await,
        Command::Host(cmd) => host(cmd).await,
        Command::Env(cmd) => env(cmd).await,
        Command::Events { conn, limit, out } => events(conn, limit, out).await,
        Command::Audit(cmd) => crate::audit::audit(cmd).await,
        Command::Login {
            conn,
            user,
            password_stdin,
            ttl,
            environment,
        } => crate::users::login(conn, user, password_stdin, ttl, environment).await,
        Command::Whoami { conn, out } => crate::users::whoami(conn, out).await,
        Command::User(cmd) => crate::users::user(cmd).await,
        Command::Key(cmd) => crate::users::key(cmd).await,
        Command::Run(args) => run(args).await,
        Command::Registry(cmd) => crate::images::registry(cmd).await,
        Command::Admission(cmd) => crate::images::admission(cmd).await,
        Command::Policy(cmd) => crate::netpolicy::policy(cmd).await,
        Command::Image(cmd) => crate::images::image(cmd).await,
        Command::Secret(SecretCommand::Ls { conn, out }) => {
            let list: Vec<corral_proto::api::SecretView> =
                Client::new(&conn)?.get("/v1/secrets").await?;
            print(out.format, &list, |l| {
                table(
                    &["ENVIRONMENT", "STACK", "SECRET", "VERSION", "MOUNTED"],
                    l.iter()
                        .map(|s| {
                            vec![
                                s.environment.clone(),
                                s.stack.clone(),
                                s.name.clone(),
                                s.version.clone(),
                                s.mounts.join(", "),
                            ]
                        })
                        .collect(),
                )
            })
        }
        Command::Container(cmd) => container(cmd).await,
        Command::Logs {
            conn,
            name,
            follow,
            tail,
        } => logs(conn, &name, follow, tail).await,
        Command::Up(args) => crate::stacks::up(args).await,
        Command::Config(args) => crate::stacks::config(args),
        Command::Ps { conn, project, out } => crate::stacks::ps(conn, project, out).await,
        Command::Stack(StackCommand::Ls { conn, out }) => crate::stacks::ls(conn, out).await,
        Command::Scale {
            conn,
            targets,
            wait,
        } => crate::stacks::scale(conn, targets, wait).await,
        Command::Down {
            conn,
            project,
            volumes,
            detach,
            timeout,
        } => crate::stacks::down(conn, &project, volumes, detach, timeout).await,
        Command::Doctor { conn, host, out } => doctor(conn, host, out).await,
        Command::Firewall(args) => firewall(*args).await,
        Command::Diagram {
            conn,
            format,
            view,
            environment,
            admin_cidrs,
            out_file,
        } => {
            if view == "services" {
                crate::netpolicy::services_diagram(conn, &format, &environment, out_file).await
            } else {
                diagram(conn, &format, admin_cidrs, out_file).await
            }
        }
        Command::Bench(BenchCommand::Connect {
            conn,
            agents,
            concurrency,
            hold,
            ping_interval,
            keep,
            overlay,
            docker,
            reconnect,
            server_pid,
            out,
        }) => {
            crate::bench::connect(crate::bench::ConnectBench {
                overlay,
                docker,
                reconnect,
                server_pid,
                client: Client::new(&conn)?,
                agents,
                concurrency,
                hold,
                ping_interval,
                keep,
                format: out.format,
            })
            .await
        }
        Command::Bench(BenchCommand::Api {
            conn,
            path,
            key_b,
            requests,
            out,
        }) => {
            let mut conn_b = conn.clone();
            conn_b.api_key = Some(key_b);
            crate::bench::api(
                Client::new(&conn)?,
                Client::new(&conn_b)?,
                &path,
                requests,
                out.format,
            )
            .await
        }
        Command::Bench(BenchCommand::Deploy {
            conn,
            agents,
            replicas,
            stack_replicas,
            run_delay,
            concurrency,
            timeout,
            keep,
            server_pid,
            out,
        }) => {
            crate::bench_deploy::deploy(crate::bench_deploy::DeployBench {
                client: Client::new(&conn)?,
                agents,
                replicas,
                stack_replicas,
                run_delay,
                concurrency,
                timeout,
                keep,
                server_pid,
                format: out.format,
            })
            .await
        }
        Command::Bench(BenchCommand::Idle {
            conn,
            connections,
            concurrency,
            duration,
            no_measure,
            out,
        }) => {
            crate::bench::idle(crate::bench::IdleBench {
                client: Client::new(&conn)?,
                connections,
                concurrency,
                duration,
                measure: !no_measure,
                format: out.format,
            })
            .await
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    if args.with_agent && args.insecure_http {
        bail!("--with-agent needs TLS: agents always pin the server's CA");
    }
    match corral_server::raise_nofile_limit() {
        Ok((soft, hard)) if soft < 4096 => tracing::warn!(
            open_files = soft,
            hard_limit = hard,
            "the open-file limit allows only about {} agent tunnels; raise the hard limit (ulimit -Hn, LimitNOFILE=) for more",
            soft.saturating_sub(64)
        ),
        Ok((soft, _)) => tracing::info!(
            open_files = soft,
            "open-file limit raised to the hard limit: room for about {} agent tunnels",
            soft.saturating_sub(64)
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let mut options = ServerOptions::new(args.listen, args.data_dir.clone());
    options.advertise_url = args.advertise_url;
    options.tls = match (args.tls_cert, args.tls_key, args.insecure_http) {
        (Some(cert), Some(key), _) => TlsMode::Custom { cert, key },
        (_, _, true) => TlsMode::InsecureHttp,
        _ => TlsMode::Generated,
    };
    options.heartbeat_interval = args.heartbeat_interval;
    options.dead_after = args.dead_after;
    options.max_message_bytes = args.max_message_bytes;
    options.command_ttl = args.command_ttl;
    options.reschedule_after = args.reschedule_after;
    options.max_unauthenticated = args.max_unauthenticated_connections;
    options.init = args.init;
    options.event_retention = args.event_retention;
    options.command_retention = args.command_retention;
    options.event_max_rows = args.event_max_rows;
    options.max_stack_replicas = args.max_stack_replicas;
    options.datastore = args.datastore.clone();
    options.peer_url = args.peer_url;
    options.event_rate_limit = args.event_rate_limit;
    options.event_rate_window = args.event_rate_window;
    if let (Some(url), Some(ca), Some(user_dn), Some(group_base)) = (
        &args.ldap_url,
        &args.ldap_ca,
        &args.ldap_user_dn,
        &args.ldap_group_base,
    ) {
        let pem = crate::images::read_at_most(ca, "LDAP CA file", 256 * 1024)?;
        let cfg = corral_server::ldap::LdapConfig::new(
            url,
            args.ldap_starttls,
            pem.as_bytes(),
            user_dn,
            group_base,
            &args.ldap_roles,
            args.ldap_admin_group.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("cannot use the directory: {e}"))?;
        options.ldap = Some(cfg);
    }
    let running = corral_server::start(options).await?;
    let admin_env = running.admin_env.display().to_string();
    println!("corral server {} is running", env!("CARGO_PKG_VERSION"));
    println!(
        "  API:           {}/v1/  (health: {}/healthz)",
        running.local_url, running.local_url
    );
    println!(
        "  web UI:        {}/  (log in as admin with the key in admin.env, or a user's password)",
        running.local_url
    );
    println!("  agents dial:   {}", running.advertise_url);
    println!("  CA checksum:   {}", running.checksum);
    println!("  admin.env:     {admin_env}");
    println!("  use the CLI:   set -a; . {admin_env}; set +a; corral host ls");
    println!("  add a host:    corral token create   (prints the agent command to run on it)");

    let agent_task = if args.with_agent {
        let state_dir = args.data_dir.join("agent");
        let token = if state_dir.join("agent.json").exists() {
            None
        } else {
            let created = corral_server::tokens::mint_token(
                &running.state,
                CreateToken {
                    environment: None,
                    ttl_seconds: Some(600),
                    max_uses: Some(1),
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot create a token for the local agent: {e}"))?;
            Some(created.token)
        };
        let mut opts = corral_agent::AgentOptions::new(state_dir.clone());
        opts.server = Some(running.local_url.clone());
        opts.ca_checksum = Some(running.checksum);
        opts.token = token;
        opts.embedded = true;
        opts.overlay = !args.agent_no_overlay;
        println!("  local agent:   state in {}", state_dir.display());
        let stop = running.state.shutdown.clone();
        Some(tokio::spawn(async move {
            let mut stop = stop;
            let res = corral_agent::run(opts, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "the local agent stopped");
            }
        }))
    } else {
        None
    };

    let trigger = running.shutdown_trigger();
    tokio::spawn(async move {
        terminated().await;
        tracing::info!("shutting down");
        trigger();
    });
    running.wait().await?;
    if let Some(t) = agent_task {
        let _ = t.await;
    }
    Ok(())
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let mut opts = corral_agent::AgentOptions::new(args.state_dir);
    let mut servers = args.server.into_iter();
    opts.server = servers.next();
    opts.more_servers = servers.collect();
    opts.token = args.token;
    opts.ca_checksum = args
        .ca_checksum
        .as_deref()
        .map(CaChecksum::parse)
        .transpose()?;
    opts.name = args.name;
    opts.labels = args.labels.into_iter().collect::<BTreeMap<_, _>>();
    opts.overlay_port = args.overlay_port;
    opts.overlay_mtu = args.overlay_mtu;
    opts.overlay = !args.no_overlay;
    opts.docker_host = args.docker_host;
    opts.docker_certs_dir = args.docker_certs_dir;
    corral_agent::run(opts, terminated()).await?;
    Ok(())
}

async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            conn,
            env,
            ttl,
            max_uses,
            out,
        } => {
            let ttl = crate::duration::parse_ttl(&ttl).map_err(anyhow::Error::msg)?;
            let client = Client::new(&conn)?;
            let created: CreatedToken = client
                .post(
                    "/v1/tokens",
                    &CreateToken {
                        environment: Some(env),
                        ttl_seconds: Some(ttl),
                        max_uses,
                    },
                )
                .await?;
            match out.format {
                Format::Json => {
                    let v = serde_json::json!({
                        "id": created.id,
                        "token": created.token,
                        "command": created.command,
                        "expires_at": created.expires_at,
                        "environment": created.environment,
                        "max_uses": created.max_uses,
                    });
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Format::Table => {
                    eprintln!(
                        "Token {} for environment {} ({}; {}). Run this on the host to add:",
                        created.id,
                        created.environment,
                        created
                            .expires_at
                            .as_deref()
                            .map(|e| format!("expires {e}"))
                            .unwrap_or_else(|| "never expires".into()),
                        created
                            .max_uses
                            .map(|m| format!("{m} use(s)"))
                            .unwrap_or_else(|| "unlimited uses".into()),
                    );
                    println!("{}", created.command);
                }
            }
            Ok(())
        }
        TokenCommand::Ls { conn, out } => {
            let tokens: Vec<TokenView> = Client::new(&conn)?.get("/v1/tokens").await?;
            print(out.format, &tokens, |ts| {
                table(
                    &["ID", "ENVIRONMENT", "STATE", "USES", "EXPIRES", "CREATED"],
                    ts.iter()
                        .map(|t| {
                            vec![
                                t.id.clone(),
                                t.environment.clone(),
                                t.state.clone(),
                                match t.max_uses {
                                    Some(m) => format!("{}/{m}", t.uses),
                                    None => format!("{}/∞", t.uses),
                                },
                                t.expires_at.clone().unwrap_or_else(|| "never".into()),
                                t.created_at.clone(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        TokenCommand::Rm { conn, id } => {
            Client::new(&conn)?
                .delete(&format!("/v1/tokens/{}", seg(&id)))
                .await?;
            eprintln!("revoked token {id}");
            Ok(())
        }
    }
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Docker's state in one word for the host table.
fn docker_text(h: &HostView) -> String {
    match &h.docker {
        Some(d) if d.state == "available" => d
            .info
            .as_ref()
            .map(|i| i.version.clone())
            .unwrap_or_else(|| "available".into()),
        Some(_) => "unavailable".into(),
        None => "-".into(),
    }
}

fn docker_detail(h: &HostView) -> String {
    match &h.docker {
        Some(d) => match (&d.info, &d.error) {
            (Some(i), _) => format!(
                "{} (API {}), storage {}, {} CPUs, {:.1} GiB",
                i.version,
                i.api_version,
                i.storage_driver,
                i.cpus,
                i.memory_bytes as f64 / (1u64 << 30) as f64
            ),
            (None, Some(e)) => e.clone(),
            (None, None) => d.state.clone(),
        },
        None => "-".into(),
    }
}

async fn host(cmd: HostCommand) -> anyhow::Result<()> {
    match cmd {
        HostCommand::Ls {
            conn,
            environment,
            out,
        } => {
            let mut client = Client::new(&conn)?;
            if let Some(env) = &environment {
                client = client.in_env(env);
            }
            let hosts: Vec<HostView> = client.get("/v1/hosts").await?;
            print(out.format, &hosts, |hs| {
                table(
                    &[
                        "NAME",
                        "ENVIRONMENT",
                        "STATE",
                        "DOCKER",
                        "LAST SEEN",
                        "ADDRESS",
                        "OVERLAY ADDRESSES",
                        "LABELS",
                        "AGENT",
                        "ID",
                    ],
                    hs.iter()
                        .map(|h| {
                            vec![
                                h.name.clone(),
                                h.environment.clone(),
                                h.state.clone(),
                                docker_text(h),
                                h.last_seen_at.clone(),
                                h.remote_addr.clone(),
                                overlay_addresses_text(h, false),
                                labels_text(&h.labels),
                                h.agent_version.clone(),
                                h.id.clone(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        HostCommand::Inspect { conn, host, out } => {
            let h: HostView = Client::new(&conn)?
                .get(&format!("/v1/hosts/{}", seg(&host)))
                .await
                .with_context(|| format!("cannot inspect host {host:?}"))?;
            print(out.format, &h, |h| {
                let rows = [
                    ("Name", h.name.clone()),
                    ("ID", h.id.clone()),
                    ("Environment", h.environment.clone()),
                    ("State", h.state.clone()),
                    ("Last seen", h.last_seen_at.clone()),
                    (
                        "Connected since",
                        h.connected_since.clone().unwrap_or_else(|| "-".into()),
                    ),
                    ("Remote address", h.remote_addr.clone()),
                    ("Labels", labels_text(&h.labels)),
                    ("Hostname", h.hostname.clone()),
                    ("OS", h.os.clone()),
                    ("Kernel", h.kernel.clone()),
                    ("Arch", h.arch.clone()),
                    ("Agent version", h.agent_version.clone()),
                    ("Docker", docker_detail(h)),
                    (
                        "Overlay subnet",
                        h.overlay_subnet.clone().unwrap_or_else(|| "-".into()),
                    ),
                    ("Overlay addresses", overlay_addresses_text(h, true)),
                    ("Registered", h.registered_at.clone()),
                ];
                rows.iter()
                    .map(|(k, v)| format!("{:<16} {v}", format!("{k}:")))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        HostCommand::Rm { conn, host } => {
            Client::new(&conn)?
                .delete(&format!("/v1/hosts/{}", seg(&host)))
                .await?;
            eprintln!(
                "removed host {host}: its credential is revoked and its agent was told to stop"
            );
            Ok(())
        }
    }
}

/// `12/253` (or, in detail, `12 used, 241 free of 253`); `-` for a host on no overlay.
fn overlay_addresses_text(h: &corral_proto::api::HostView, detail: bool) -> String {
    match (h.overlay_addresses_used, h.overlay_addresses_total) {
        (_, None) => "-".into(),
        (_, Some(0)) => "no subnet (range full)".into(),
        (used, Some(total)) => {
            let used = used.unwrap_or(0);
            if detail {
                format!(
                    "{used} used, {} free of {total}",
                    total.saturating_sub(used)
                )
            } else {
                format!("{used}/{total}")
            }
        }
    }
}

async fn env(cmd: EnvCommand) -> anyhow::Result<()> {
    use corral_proto::api::{EnvironmentView, RotatedKey};
    match cmd {
        EnvCommand::Ls { conn, out } => {
            let client = Client::new(&conn)?;
            let current = client.scope().map(str::to_owned);
            let envs: Vec<EnvironmentView> = client.unscoped().get("/v1/environments").await?;
            if let Some(name) = &current
                && out.format == Format::Table
            {
                eprintln!("working in environment {name} (`corral env use --all` to work in all)");
            }
            print(out.format, &envs, |es| {
                table(
                    &[
                        "NAME",
                        "OVERLAY",
                        "RANGE",
                        "HOST SUBNET",
                        "HOSTS",
                        "KEY GENERATION",
                        "ID",
                    ],
                    es.iter()
                        .map(|e| {
                            vec![
                                e.name.clone(),
                                e.overlay_mode.clone(),
                                e.overlay_cidr.clone(),
                                format!(
                                    "/{} ({} containers)",
                                    e.host_subnet_prefix,
                                    corral_control::overlay::thousands(u64::from(
                                        e.addresses_per_host
                                    ))
                                ),
                                format!(
                                    "{} of {}",
                                    corral_control::overlay::thousands(u64::from(e.hosts_leased)),
                                    corral_control::overlay::thousands(u64::from(e.hosts_capacity))
                                ),
                                e.overlay_key_generation.to_string(),
                                e.id.clone(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        EnvCommand::Create {
            conn,
            name,
            range,
            host_subnet,
            mode,
            out,
        } => {
            let e: EnvironmentView = Client::new(&conn)?
                .post(
                    "/v1/environments",
                    &serde_json::json!({ "name": name, "range": range, "host_subnet": host_subnet, "mode": mode }),
                )
                .await?;
            print(out.format, &e, |e| {
                format!(
                    "environment {}: overlay {} {}, a /{} subnet of {} container addresses per host, room for {} hosts\nadd hosts with a token of it: corral token create --env {}",
                    e.name,
                    e.overlay_mode,
                    e.overlay_cidr,
                    e.host_subnet_prefix,
                    corral_control::overlay::thousands(u64::from(e.addresses_per_host)),
                    corral_control::overlay::thousands(u64::from(e.hosts_capacity)),
                    e.name
                )
            })
        }
        EnvCommand::Use { conn, name, all: _ } => {
            let client = Client::new(&conn)?;
            if let Some(name) = &name
                && !client.has_role_in(name).await?
            {
                bail!(
                    "no environment {name:?} that you have a role in; list them with `corral env ls`"
                );
            }
            let mut saved = crate::config::load()?.filter(|s| {
                s.server.trim_end_matches('/') == client.base().trim_end_matches('/')
            }).ok_or_else(|| {
                anyhow::anyhow!(
                    "nothing is saved for {} to add the environment to: log in with `corral login` (or set CORRAL_ENV)",
                    client.base()
                )
            })?;
            saved.env = name.clone();
            let path = crate::config::save(&saved)?;
            match &name {
                Some(n) => eprintln!("working in environment {n} (saved in {})", path.display()),
                None => eprintln!(
                    "working in every environment you have a role in (saved in {})",
                    path.display()
                ),
            }
            if let Ok(over) = std::env::var("CORRAL_ENV")
                && !over.is_empty()
            {
                eprintln!("note: CORRAL_ENV={over} is set and wins over what is saved");
            }
            Ok(())
        }
        EnvCommand::Rm { conn, name } => {
            Client::new(&conn)?
                .delete(&format!("/v1/environments/{}", seg(&name)))
                .await?;
            eprintln!("removed environment {name}; its registration tokens are revoked");
            Ok(())
        }
        EnvCommand::SetOverlay {
            conn,
            name,
            mode,
            range,
            host_subnet,
        } => {
            let client = Client::new(&conn)?;
            client
                .post_no_content(
                    &format!("/v1/environments/{}/overlay", seg(&name)),
                    &serde_json::json!({ "mode": mode, "range": range, "host_subnet": host_subnet }),
                )
                .await?;
            if range.is_some() || host_subnet.is_some() {
                let envs: Vec<EnvironmentView> = client.get("/v1/environments").await?;
                if let Some(e) = envs.iter().find(|e| e.name == name) {
                    eprintln!(
                        "environment {name}: overlay range {}, a /{} subnet of {} container addresses per host, room for {} hosts",
                        e.overlay_cidr,
                        e.host_subnet_prefix,
                        corral_control::overlay::thousands(u64::from(e.addresses_per_host)),
                        corral_control::overlay::thousands(u64::from(e.hosts_capacity))
                    );
                }
            }
            if let Some(mode) = mode {
                eprintln!("environment {name}: overlay mode {mode} sent to every connected agent");
            }
            Ok(())
        }
        EnvCommand::RotateKey { conn, name } => {
            let r: RotatedKey = Client::new(&conn)?
                .post(
                    &format!("/v1/environments/{}/rotate-key", seg(&name)),
                    &serde_json::json!({}),
                )
                .await?;
            eprintln!(
                "environment {}: overlay key generation {} sent to every connected agent",
                r.environment, r.generation
            );
            Ok(())
        }
    }
}

async fn events(conn: Conn, limit: u32, out: Out) -> anyhow::Result<()> {
    let events: Vec<EventView> = Client::new(&conn)?
        .get(&format!("/v1/events?limit={limit}"))
        .await?;
    print(out.format, &events, |es| {
        table(
            &["TIME", "KIND", "HOST", "MESSAGE"],
            es.iter()
                .map(|e| {
                    vec![
                        e.at.clone(),
                        e.kind.clone(),
                        e.host_id.clone().unwrap_or_default(),
                        e.message.clone(),
                    ]
                })
                .collect(),
        )
    })
}

async fn doctor(conn: Conn, host: Option<String>, out: Out) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let client = Client::new(&conn)?;
    let targets: Vec<String> = match host {
        Some(h) => vec![h],
        None => client
            .get::<Vec<HostView>>("/v1/hosts")
            .await?
            .into_iter()
            .map(|h| h.id)
            .collect(),
    };
    if targets.is_empty() {
        bail!("no hosts are registered yet: add one with `corral token create`");
    }
    let client = &client;
    let reports: Vec<DoctorReport> = futures_util::stream::iter(targets)
        .map(|id| async move {
            client
                .post::<_, DoctorReport>(
                    &format!("/v1/hosts/{}/doctor", seg(&id)),
                    &serde_json::json!({}),
                )
                .await
                .with_context(|| format!("cannot check host {id:?}"))
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let failures: usize = reports
        .iter()
        .map(|r| r.checks.iter().filter(|c| !c.ok).count())
        .sum();
    print(out.format, &reports, |rs| {
        let mut text = String::new();
        for r in rs {
            text.push_str(&format!("{} ({})\n", r.host, r.state));
            let width = r.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
            for c in &r.checks {
                let mark = if c.ok { "ok  " } else { "FAIL" };
                text.push_str(&format!("  {mark} {:<width$}  {}\n", c.name, c.detail));
                if let Some(fix) = &c.fix {
                    text.push_str(&format!("       {:<width$}  fix: {fix}\n", ""));
                }
            }
        }
        text.trim_end().to_owned()
    })?;
    if failures > 0 {
        bail!("{failures} check(s) failed");
    }
    Ok(())
}

async fn firewall_apply(action: FirewallAction) -> anyhow::Result<()> {
    let FirewallAction::Apply {
        conn,
        host,
        dry_run,
        admin_cidrs,
        api_cidrs,
        confirm_within,
    } = action;
    let client = Client::new(&conn)?;
    if !dry_run {
        eprintln!(
            "applying the rules on {host}; the agent keeps them only if it reaches the server within {} s",
            confirm_within.as_secs()
        );
    }
    let report: FirewallApplyReport = client
        .post(
            &format!("/v1/hosts/{}/firewall", seg(&host)),
            &FirewallApplyRequest {
                admin_cidrs,
                api_cidrs,
                dry_run,
                confirm_within_secs: Some(confirm_within.as_secs()),
            },
        )
        .await?;
    if dry_run {
        print!("{}", report.ruleset);
    }
    eprintln!("{}: {}", report.host, report.message);
    if !dry_run && !report.applied {
        bail!("the rules are not in force on {}", report.host);
    }
    Ok(())
}

async fn firewall(args: FirewallArgs) -> anyhow::Result<()> {
    use corral_firewall::{Format as Fw, Role, Scope};
    if let Some(action) = args.action {
        return firewall_apply(action).await;
    }
    let format: Fw = args
        .format
        .parse()
        .map_err(|e| anyhow::anyhow!("--format: {e}"))?;
    if matches!(format, Fw::Dot | Fw::Mermaid | Fw::Svg) {
        bail!(
            "diagrams are drawn by `corral diagram --format {}`",
            args.format
        );
    }
    let mut topo: corral_firewall::Topology = Client::new(&args.conn)?.get("/v1/topology").await?;
    topo.admin_cidrs = args.admin_cidrs;
    if !args.api_cidrs.is_empty() {
        topo.api_cidrs = Some(args.api_cidrs);
    }
    if let Some(g) = args.server_group {
        topo.security_groups.server = g;
    }
    if let Some(g) = args.host_group {
        topo.security_groups.hosts = g;
    }
    let plan = corral_firewall::plan(&topo).map_err(|e| {
        let problems: Vec<String> = e.problems().iter().map(|p| format!("  - {p}")).collect();
        anyhow::anyhow!("cannot derive the rules:\n{}", problems.join("\n"))
    })?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let scope = Scope {
        role: match args.role.as_str() {
            "server" => Role::Server,
            "host" => Role::Host,
            _ => Role::All,
        },
        host: args.host,
    };
    let mut text = corral_firewall::render(&plan, format, &scope)?;
    if matches!(format, Fw::Markdown) {
        // The application layer: what each environment's network policy lets flow.
        let names: Vec<String> = if topo.environments.is_empty() {
            vec!["default".to_owned()]
        } else {
            topo.environments.iter().map(|e| e.name.clone()).collect()
        };
        for env in names {
            match crate::netpolicy::services_text(&args.conn, &env, "markdown").await {
                Ok(section) => text.push_str(&section),
                Err(e) => eprintln!("warning: no service-to-service section for {env}: {e:#}"),
            }
        }
    }
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

async fn diagram(
    conn: Conn,
    format: &str,
    admin_cidrs: Vec<String>,
    out_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let mut topo: corral_firewall::Topology = Client::new(&conn)?.get("/v1/topology").await?;
    topo.admin_cidrs = admin_cidrs;
    let text = corral_firewall::diagram(&topo, diagram_format(format));
    write_diagram(&text, out_file)
}

/// `--format` of `corral diagram`.
pub fn diagram_format(format: &str) -> corral_firewall::DiagramFormat {
    use corral_firewall::DiagramFormat;
    match format {
        "dot" => DiagramFormat::Dot,
        "mermaid" => DiagramFormat::Mermaid,
        _ => DiagramFormat::Svg,
    }
}

/// A diagram to `--out FILE`, or to standard output.
pub fn write_diagram(text: &str, out_file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    match out_file {
        Some(path) => {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn container_table(cs: &[corral_proto::api::ContainerView]) -> String {
    table(
        &["NAME", "HOST", "IMAGE", "DESIRED", "ACTUAL", "PORTS", "ID"],
        cs.iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    c.host.clone(),
                    c.image.clone(),
                    c.desired.clone(),
                    match c.exit_code {
                        Some(code) if c.actual == "exited" => format!("exited ({code})"),
                        _ => c.actual.clone(),
                    },
                    c.ports.join(","),
                    c.id.clone(),
                ]
            })
            .collect(),
    )
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Port specs are checked here too, so a typo fails before anything is sent.
    for p in &args.ports {
        corral_proto::PortSpec::parse(p).map_err(anyhow::Error::msg)?;
    }
    let client = Client::new(&args.conn)?;
    let view: corral_proto::api::ContainerView = client
        .post(
            "/v1/containers",
            &corral_proto::api::RunContainer {
                name: args.name,
                image: args.image,
                host: args.host,
                env: args.env,
                ports: args.ports,
                labels: args.labels.into_iter().collect(),
                cmd: args.cmd,
            },
        )
        .await?;
    print(args.out.format, &view, |c| {
        if c.actual == "pending" {
            format!(
                "{} accepted for host {}: it starts when the host carries out the command (see `corral container ls`)",
                c.name, c.host
            )
        } else {
            format!("{} is {} on host {} ({})", c.name, c.actual, c.host, c.id)
        }
    })
}

async fn container(cmd: ContainerCommand) -> anyhow::Result<()> {
    use corral_proto::api::ContainerView;
    match cmd {
        ContainerCommand::Ls { conn, out } => {
            let cs: Vec<ContainerView> = Client::new(&conn)?.get("/v1/containers").await?;
            print(out.format, &cs, |cs| container_table(cs))
        }
        ContainerCommand::Inspect { conn, name, out } => {
            let c: ContainerView = Client::new(&conn)?
                .get(&format!("/v1/containers/{}", seg(&name)))
                .await?;
            print(out.format, &c, |c| {
                serde_json::to_string_pretty(c).unwrap_or_default()
            })
        }
        ContainerCommand::Start { conn, name } => {
            Client::new(&conn)?
                .post_empty(&format!("/v1/containers/{}/start", seg(&name)))
                .await?;
            eprintln!("started {name}");
            Ok(())
        }
        ContainerCommand::Stop { conn, name } => {
            Client::new(&conn)?
                .post_empty(&format!("/v1/containers/{}/stop", seg(&name)))
                .await?;
            eprintln!("stopped {name}");
            Ok(())
        }
        ContainerCommand::Rm { conn, name } => {
            Client::new(&conn)?
                .delete(&format!("/v1/containers/{}", seg(&name)))
                .await?;
            eprintln!("removed {name}");
            Ok(())
        }
    }
}

async fn logs(conn: Conn, name: &str, follow: bool, tail: Option<u64>) -> anyhow::Result<()> {
    use std::io::Write;
    let client = Client::new(&conn)?;
    let mut path = match name.split_once('/') {
        Some((stack, service)) => format!(
            "/v1/stacks/{}/services/{}/logs?follow={follow}",
            seg(stack),
            seg(service)
        ),
        None => format!("/v1/containers/{}/logs?follow={follow}", seg(name)),
    };
    if let Some(t) = tail {
        path.push_str(&format!("&tail={t}"));
    }
    let mut resp = client.get_stream(&path).await?;
    let mut stdout = std::io::stdout();
    while let Some(chunk) = resp.chunk().await? {
        // A closed pipe (`| head`) ends the command quietly.
        if stdout
            .write_all(&chunk)
            .and_then(|_| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    Ok(())
}
