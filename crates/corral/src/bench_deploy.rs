//! `corral bench deploy`: the control plane end to end at scale. N simulated agents (real
//! registrations, TLS WebSockets and heartbeats, as in `bench connect`) answer the commands a
//! deploy sends the way a Docker host would — `container_run` answered with the container
//! running after `--run-delay`, removals, image resolutions and checks — without Docker. Then
//! stacks of R replicas in all are deployed with `corral up`'s own request, and the run is timed
//! from the first `up` until the server has recorded every replica running.
//!
//! What is simulated is the host's work only: the server stores, schedules, queues, sends,
//! settles and records exactly as it does for real hosts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use corral_agent::{Dialer, dial};
use corral_proto::api::{CreateToken, CreatedToken, FileBody, StackView, UpRequest, UpResponse};
use corral_proto::secret::{SecretKind, format_secret};
use corral_proto::{
    AgentMessage, Auth, CommandBody, CommandResult, ContainerState, ContainerStatus, Resolution,
    ServerMessage,
};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::bench::{
    Progress, raise_open_files, random_u64, remove_simulated_hosts, server_cpu, server_rss,
    simulated_facts, simulated_inventory,
};
use crate::cli::Format;
use crate::client::{Client, seg};

/// Replicas of one service in the generated stacks (the Compose limit per service is 1,000).
const SERVICE_REPLICAS: u64 = 1000;

pub struct DeployBench {
    pub client: Client,
    pub agents: usize,
    pub replicas: u64,
    /// Replicas per stack (the server's `--max-stack-replicas` bounds it).
    pub stack_replicas: u64,
    /// How long a simulated host takes to report a container running.
    pub run_delay: Duration,
    pub concurrency: usize,
    pub timeout: Duration,
    pub keep: bool,
    pub server_pid: Option<u32>,
    pub format: Format,
}

#[derive(Serialize)]
struct DeployReport {
    agents: usize,
    replicas: u64,
    stacks: usize,
    run_delay_ms: u64,
    /// From the first `up` sent until the stacks' views showed every replica running.
    seconds: f64,
    containers_per_second: f64,
    /// How long the `up` requests took to answer (all sent at once).
    up_seconds_max: f64,
    /// Server CPU over the deploy, in cores (of the machine's).
    server_cpu_cores: f64,
    server_rss_before_bytes: u64,
    server_rss_peak_bytes: u64,
    /// `container_run` from submission to settlement, from the server's own histogram
    /// (interpolated within its buckets, which double from 1 ms).
    command_p50_ms: f64,
    command_p99_ms: f64,
    /// Replicas the stacks' views showed ready at the end.
    ready: u64,
    /// `container_run` commands the simulated hosts received more than once (redelivered).
    duplicate_runs: usize,
    /// From `down` until every stack was gone (the removals answered).
    down_seconds: Option<f64>,
}

/// What the simulated hosts did.
#[derive(Default)]
struct Work {
    runs: AtomicUsize,
    removes: AtomicUsize,
    duplicate_runs: AtomicUsize,
}

/// The reply a Docker host would give (a kind the simulation does not carry out fails).
fn answer(body: &CommandBody) -> CommandResult {
    let ok = |value: serde_json::Value| CommandResult::Ok { value };
    match body {
        CommandBody::ContainerRun(spec) => ok(serde_json::to_value(ContainerStatus {
            corral_id: spec.corral_id.clone(),
            docker_id: format!("{:016x}{:016x}", random_u64(), random_u64()),
            name: spec.name.clone(),
            state: ContainerState::Running,
            exit_code: None,
            health: None,
            restart_count: 0,
            ip: None,
        })
        .unwrap_or_default()),
        CommandBody::ContainerRemove(_)
        | CommandBody::ContainerStop(_)
        | CommandBody::ContainerStart(_) => ok(serde_json::Value::Null),
        CommandBody::ImageCheck(_) => ok(serde_json::json!([])),
        CommandBody::ImageResolve(r) => ok(serde_json::to_value(
            r.images
                .iter()
                .map(|_| Resolution::Digest {
                    digest: format!("sha256:{}", "b".repeat(64)),
                })
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default()),
        CommandBody::StackCleanup(_) => ok(serde_json::json!({ "network_removed": true })),
        other => CommandResult::Failed {
            message: format!("{} is not simulated", other.kind_name()),
        },
    }
}

/// The Compose file of stack `k`: services of at most 1,000 replicas, `count` in all.
fn compose_file(count: u64) -> String {
    let mut text = String::from("services:\n");
    let mut left = count;
    let mut i = 0;
    while left > 0 {
        let n = left.min(SERVICE_REPLICAS);
        text.push_str(&format!(
            "  s{i}:\n    image: bench/app:1\n    deploy:\n      replicas: {n}\n"
        ));
        left -= n;
        i += 1;
    }
    text
}

/// `container_run` quantiles from the server's histogram
/// `corral_command_duration_seconds{kind="container_run",outcome="done"}`, in ms.
fn run_quantiles(metrics: &str, qs: &[f64]) -> Vec<f64> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("corral_command_duration_seconds_bucket{")
                && l.contains("kind=\"container_run\"")
                && l.contains("outcome=\"done\"")
        })
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.trim().parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    qs.iter()
        .map(|q| {
            let want = total * q;
            let mut below = (0.0, 0.0);
            for &(le, count) in &buckets {
                if count >= want {
                    if le.is_infinite() {
                        return below.0 * 1e3;
                    }
                    let span = count - below.1;
                    let frac = if span > 0.0 {
                        (want - below.1) / span
                    } else {
                        1.0
                    };
                    return (below.0 + (le - below.0) * frac) * 1e3;
                }
                below = (le, count);
            }
            0.0
        })
        .collect()
}

/// `container_run` commands the server has settled as done.
fn runs_done(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("corral_command_duration_seconds_count{")
                && l.contains("kind=\"container_run\"")
                && l.contains("outcome=\"done\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.trim().parse().ok())
        .unwrap_or(0)
}

pub async fn deploy(b: DeployBench) -> anyhow::Result<()> {
    if b.agents == 0 || b.replicas == 0 {
        bail!("--agents and --replicas must be at least 1");
    }
    if b.stack_replicas == 0 {
        bail!("--stack-replicas must be at least 1");
    }
    raise_open_files(b.agents, "agents")?;
    let pin = b
        .client
        .checksum
        .context("the benchmark needs an https:// server and CORRAL_CA_CHECKSUM")?;
    let before = b.client.get_text("/metrics").await?;
    let runs_before = runs_done(&before);
    if runs_before > 0 {
        bail!(
            "the server has settled {runs_before} container_run commands already; start a fresh one, so that its latency histogram holds this run only"
        );
    }
    let rss_before = server_rss(&b.client).await?;
    let token: CreatedToken = b
        .client
        .post(
            "/v1/tokens",
            &CreateToken {
                environment: None,
                ttl_seconds: Some(4 * 3600),
                max_uses: Some(b.agents as u32),
            },
        )
        .await?;
    let run_id = format!("{:06x}", random_u64() & 0xff_ffff);
    let dialer = Arc::new(Dialer::new(b.client.base(), pin)?);
    let limit = Arc::new(Semaphore::new(b.concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<String, String>>();
    let work = Arc::new(Work::default());
    let mut tasks = Vec::with_capacity(b.agents);
    for i in 0..b.agents {
        let dialer = dialer.clone();
        let limit = limit.clone();
        let token = token.token.clone();
        let done_tx = done_tx.clone();
        let stop_rx = stop_rx.clone();
        let work = work.clone();
        let name = format!("bench-{run_id}-{i}");
        let source = crate::bench::simulated_source(dialer.host(), i);
        let delay = b.run_delay;
        tasks.push(tokio::spawn(async move {
            let permit = limit.acquire_owned().await;
            let credential = format_secret(
                SecretKind::HostCredential,
                &corral_agent::state::random_bytes::<32>(),
            );
            let hello = dial::hello(
                Auth::Register { token, credential },
                simulated_facts(name, false),
            );
            let (mut tunnel, welcome) = match dialer.connect_from(hello, source).await {
                Ok(x) => x,
                Err(e) => {
                    let _ = done_tx.send(Err(e.to_string()));
                    return;
                }
            };
            drop(permit);
            // Room for any number of replicas (the bench's services reserve nothing).
            if let Err(e) = tunnel.send(&simulated_inventory(64, 256 << 30)).await {
                let _ = done_tx.send(Err(e.to_string()));
                return;
            }
            let _ = done_tx.send(Ok(welcome.host_id));
            host_loop(tunnel, delay, stop_rx, &work).await;
        }));
    }
    drop(done_tx);
    let progress = Progress::new(b.agents, "agents connected");
    let mut host_ids = Vec::with_capacity(b.agents);
    let mut first_error = None;
    let mut finished = 0;
    while let Some(r) = done_rx.recv().await {
        finished += 1;
        match r {
            Ok(id) => host_ids.push(id),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        progress.set(finished);
        if finished == b.agents {
            break;
        }
    }
    progress.bar.finish_and_clear();
    if let Some(e) = first_error {
        let _ = stop_tx.send(true);
        bail!(
            "{} of {} agents could not connect: {e}",
            b.agents - host_ids.len(),
            b.agents
        );
    }
    // Every host's inventory is in before the first placement.
    wait_hosts_ready(&b.client, b.agents).await?;

    let stacks: Vec<(String, u64)> = {
        let mut left = b.replicas;
        let mut v = Vec::new();
        while left > 0 {
            let n = left.min(b.stack_replicas);
            v.push((format!("bench-{run_id}-{}", v.len()), n));
            left -= n;
        }
        v
    };
    eprintln!(
        "{} agents connected; deploying {} replicas as {} stack(s)",
        host_ids.len(),
        b.replicas,
        stacks.len()
    );
    let cpu0 = server_cpu(&b.client, b.server_pid).await?;
    let started = Instant::now();
    let ups = futures_util::stream::iter(stacks.iter().cloned())
        .map(|(name, count)| {
            let client = b.client.clone();
            async move {
                let t = Instant::now();
                let request = UpRequest {
                    name: Some(name.clone()),
                    files: vec![FileBody {
                        name: "compose.yaml".into(),
                        text: compose_file(count),
                    }],
                    ..UpRequest::default()
                };
                let answer: anyhow::Result<UpResponse> =
                    client.post_long("/v1/stacks", &request).await;
                answer
                    .with_context(|| format!("corral up of {name}"))
                    .map(|_| t.elapsed().as_secs_f64())
            }
        })
        .buffer_unordered(stacks.len().max(1))
        .collect::<Vec<_>>()
        .await;
    let mut up_seconds_max = 0f64;
    for u in ups {
        up_seconds_max = up_seconds_max.max(u?);
    }
    eprintln!(
        "{} up answered in {up_seconds_max:.2} s; waiting for every replica to run",
        stacks.len()
    );
    let bar = Progress::new(b.replicas as usize, "replicas running");
    let mut rss_peak = rss_before;
    let deadline = Instant::now() + b.timeout;
    let too_late = |done: u64| -> anyhow::Error {
        let _ = stop_tx.send(true);
        anyhow::anyhow!(
            "after {} s the server had {done} of {} replicas running",
            b.timeout.as_secs(),
            b.replicas
        )
    };
    // Cheap progress from the server's metrics (commands settled) until all are answered …
    loop {
        let text = b.client.get_text("/metrics").await?;
        let done = runs_done(&text);
        if let Some(rss) = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            rss_peak = rss_peak.max(rss);
        }
        bar.set(done as usize);
        if done >= b.replicas {
            break;
        }
        if Instant::now() > deadline {
            return Err(too_late(done));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // … then the stacks' own views, until they show every replica running.
    let ready = loop {
        let mut ready = 0u64;
        for (name, _) in &stacks {
            let view: StackView = b.client.get(&format!("/v1/stacks/{}", seg(name))).await?;
            ready += view
                .services
                .iter()
                .map(|s| u64::from(s.ready))
                .sum::<u64>();
        }
        if ready >= b.replicas {
            break ready;
        }
        if Instant::now() > deadline {
            return Err(too_late(ready));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    bar.bar.finish_and_clear();
    let cpu1 = server_cpu(&b.client, b.server_pid).await?;
    let text = b.client.get_text("/metrics").await?;
    let q = run_quantiles(&text, &[0.5, 0.99]);

    let mut down_seconds = None;
    if !b.keep {
        eprintln!("removing the stacks");
        let t = Instant::now();
        for (name, _) in &stacks {
            b.client
                .delete(&format!("/v1/stacks/{}?volumes=false", seg(name)))
                .await?;
        }
        let gone_by = Instant::now() + b.timeout;
        loop {
            let all: Vec<corral_proto::api::StackSummary> = b.client.get("/v1/stacks").await?;
            if !all.iter().any(|s| stacks.iter().any(|(n, _)| *n == s.name)) {
                down_seconds = Some(t.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() > gone_by {
                eprintln!("the stacks were not gone after {} s", b.timeout.as_secs());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    if !b.keep {
        remove_simulated_hosts(&b.client, &host_ids, &token.id).await;
    }

    let report = DeployReport {
        agents: host_ids.len(),
        replicas: b.replicas,
        stacks: stacks.len(),
        run_delay_ms: b.run_delay.as_millis() as u64,
        seconds,
        containers_per_second: b.replicas as f64 / seconds,
        up_seconds_max,
        server_cpu_cores: (cpu1 - cpu0) / seconds,
        server_rss_before_bytes: rss_before,
        server_rss_peak_bytes: rss_peak,
        command_p50_ms: q.first().copied().unwrap_or(0.0),
        command_p99_ms: q.get(1).copied().unwrap_or(0.0),
        ready,
        duplicate_runs: work.duplicate_runs.load(Relaxed),
        down_seconds,
    };
    match b.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => {
            println!(
                "deployed              {} replicas on {} agents ({} stacks), {} ready",
                report.replicas, report.agents, report.stacks, report.ready
            );
            println!(
                "time                  {:.2} s from up to all running: {:.0} containers/s (up answered in {:.2} s)",
                report.seconds, report.containers_per_second, report.up_seconds_max
            );
            println!(
                "server                {:.2} cores, RSS {:.1} MiB before, {:.1} MiB peak",
                report.server_cpu_cores,
                report.server_rss_before_bytes as f64 / 1048576.0,
                report.server_rss_peak_bytes as f64 / 1048576.0
            );
            println!(
                "container_run         p50 {:.1} ms, p99 {:.1} ms from submission to settlement ({} redelivered)",
                report.command_p50_ms, report.command_p99_ms, report.duplicate_runs
            );
            if let Some(d) = report.down_seconds {
                println!("down                  {d:.2} s until every stack was gone");
            }
        }
    }
    if report.ready < report.replicas {
        bail!(
            "{} of {} replicas ready at the end",
            report.ready,
            report.replicas
        );
    }
    Ok(())
}

/// Waits until the server sees `n` hosts of this run with Docker available.
async fn wait_hosts_ready(client: &Client, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hosts: Vec<corral_proto::api::HostView> = client.get("/v1/hosts").await?;
        let ready = hosts
            .iter()
            .filter(|h| h.docker.as_ref().is_some_and(|d| d.state == "available"))
            .count();
        if ready >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("after 60 s only {ready} of {n} hosts report Docker available");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One simulated host: heartbeats, and every command answered as Docker would (a
/// `container_run` after the run delay, in the order received).
async fn host_loop(
    mut tunnel: dial::Tunnel,
    delay: Duration,
    mut stop_rx: watch::Receiver<bool>,
    work: &Work,
) {
    let ping_every = Duration::from_secs(5);
    let mut next_ping = tokio::time::Instant::now() + Duration::from_millis(random_u64() % 5000);
    let mut seq = 0u64;
    let mut due: VecDeque<(tokio::time::Instant, AgentMessage)> = VecDeque::new();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        let next_due = due.front().map(|(at, _)| *at);
        tokio::select! {
            _ = tokio::time::sleep_until(next_ping) => {
                next_ping += ping_every;
                seq += 1;
                if tunnel.send(&AgentMessage::Ping { seq }).await.is_err() {
                    return;
                }
            }
            _ = async { tokio::time::sleep_until(next_due.unwrap_or(next_ping)).await }, if next_due.is_some() => {
                // Everything due leaves in one write, as the server's batches of commands do.
                let now = tokio::time::Instant::now();
                while let Some((at, _)) = due.front() {
                    if *at > now {
                        break;
                    }
                    let Some((_, reply)) = due.pop_front() else { break };
                    if tunnel.feed(&reply).await.is_err() {
                        return;
                    }
                }
                if tunnel.flush().await.is_err() {
                    return;
                }
            }
            message = tunnel.recv() => match message {
                Ok(ServerMessage::Command(command)) => {
                    let delay = match &command.body {
                        CommandBody::ContainerRun(spec) => {
                            work.runs.fetch_add(1, Relaxed);
                            if !seen.insert(spec.corral_id.clone()) {
                                work.duplicate_runs.fetch_add(1, Relaxed);
                            }
                            delay
                        }
                        CommandBody::ContainerRemove(_) => {
                            work.removes.fetch_add(1, Relaxed);
                            Duration::ZERO
                        }
                        _ => Duration::ZERO,
                    };
                    let reply = AgentMessage::Reply {
                        result: answer(&command.body),
                        command_id: command.id,
                    };
                    if delay.is_zero() {
                        if tunnel.send(&reply).await.is_err() {
                            return;
                        }
                    } else {
                        // Every delayed reply waits the same delay: the queue stays in order.
                        due.push_back((tokio::time::Instant::now() + delay, reply));
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            },
            _ = stop_rx.changed() => break,
        }
    }
    tunnel.close().await;
}
