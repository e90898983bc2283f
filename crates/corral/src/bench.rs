//! `corral bench connect`: N simulated agents in one process against a running server.
//!
//! The agents are simulated only in that they share a process and run no host work: each one
//! opens its own TCP connection, TLS session (verified against the pinned CA) and WebSocket,
//! registers with a real token and its own credential, and sends real heartbeats. The server
//! cannot tell them from real agents.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use corral_agent::{Dialer, dial};
use corral_proto::api::{CreateToken, CreatedToken};
use corral_proto::secret::{SecretKind, format_secret};
use corral_proto::{AgentMessage, Auth, HostFacts, ServerMessage};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::cli::Format;
use crate::client::{Client, seg};

pub struct ConnectBench {
    pub client: Client,
    pub agents: usize,
    pub concurrency: usize,
    pub hold: Duration,
    pub ping_interval: Duration,
    pub keep: bool,
    pub overlay: bool,
    /// Simulated agents report a Docker engine.
    pub docker: bool,
    /// Simulated agents that lose their tunnel reconnect (with their credential, after the
    /// agents' own backoff) instead of ending: for a server restart under load.
    pub reconnect: bool,
    pub server_pid: Option<u32>,
    pub format: Format,
}

#[derive(Serialize)]
struct Report {
    agents: usize,
    connected: usize,
    failed: usize,
    first_error: Option<String>,
    connect_seconds: f64,
    connect_p50_ms: f64,
    connect_p99_ms: f64,
    server_rss_before_bytes: u64,
    server_rss_connected_bytes: u64,
    server_rss_per_agent_bytes: u64,
    heartbeat_samples: usize,
    heartbeat_rtt_p50_ms: f64,
    heartbeat_rtt_p99_ms: f64,
    heartbeat_rtt_max_ms: f64,
    heartbeat_timeouts: usize,
    /// Server CPU (user + system) over the first half of the hold (all connected, nothing
    /// changing), in cores.
    server_cpu_idle_cores: f64,
    /// The server CPU one more agent's joining cost beyond the idle rate (over the second
    /// half of the hold), and the messages (and their JSON bytes) the others received during
    /// it, heartbeat answers aside.
    join_server_cpu_ms: f64,
    join_messages: usize,
    join_bytes: usize,
    /// With `--reconnect`: how the agents came back after losing their tunnels.
    #[serde(skip_serializing_if = "Option::is_none")]
    reconnect: Option<ReconnectReport>,
}

/// Tunnels lost and won back during the hold (`--reconnect`).
#[derive(Serialize)]
struct ReconnectReport {
    /// Tunnels lost (an agent may lose its tunnel more than once).
    lost: usize,
    /// Tunnels won back.
    reconnected: usize,
    /// Agents refused for good (a permanent close reason): they stopped trying.
    gave_up: usize,
    /// Dial attempts that failed (server not there yet, refused for now, timed out).
    failed_attempts: usize,
    /// From the first tunnel lost to the last one won back.
    all_back_seconds: Option<f64>,
    /// Tunnels won back in each second after the first loss.
    per_second: Vec<usize>,
}

/// What the agents saw of their tunnels being lost and won back.
#[derive(Default)]
struct Reconnects {
    /// Seconds since the start of the run: when each tunnel was lost, and won back.
    lost_at: Mutex<Vec<f64>>,
    back_at: Mutex<Vec<f64>>,
    gave_up: std::sync::atomic::AtomicUsize,
    failed_attempts: std::sync::atomic::AtomicUsize,
}

impl Reconnects {
    fn note(list: &Mutex<Vec<f64>>, at: f64) {
        if let Ok(mut v) = list.lock() {
            v.push(at);
        }
    }

    fn report(&self) -> ReconnectReport {
        use std::sync::atomic::Ordering::Relaxed;
        let lost = self.lost_at.lock().map(|v| v.clone()).unwrap_or_default();
        let back = self.back_at.lock().map(|v| v.clone()).unwrap_or_default();
        let first = lost.iter().copied().reduce(f64::min);
        let last = back.iter().copied().reduce(f64::max);
        let mut per_second = Vec::new();
        if let Some(first) = first {
            for at in &back {
                let second = ((at - first).max(0.0)) as usize;
                if per_second.len() <= second {
                    per_second.resize(second + 1, 0);
                }
                per_second[second] += 1;
            }
        }
        ReconnectReport {
            lost: lost.len(),
            reconnected: back.len(),
            gave_up: self.gave_up.load(Relaxed),
            failed_attempts: self.failed_attempts.load(Relaxed),
            all_back_seconds: first.zip(last).map(|(f, l)| l - f),
            per_second,
        }
    }
}

pub(crate) async fn server_cpu(client: &Client, pid: Option<u32>) -> anyhow::Result<f64> {
    if let Some(pid) = pid {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the command name's closing parenthesis; utime and stime are the 12th
        // and 13th of them, in clock ticks (100 per second on Linux).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let mut fields = rest.split_whitespace().skip(11);
        let mut next = || -> anyhow::Result<f64> {
            Ok(fields
                .next()
                .context("a short /proc stat line")?
                .parse::<f64>()?)
        };
        return Ok((next()? + next()?) / 100.0);
    }
    let text = client.get_text("/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
        .and_then(|v| v.trim().parse().ok())
        .context("the server's /metrics has no process_cpu_seconds_total")
}

/// Messages (all but heartbeat answers) the simulated agents received while counting: what
/// one more host joining makes the server send the others.
#[derive(Default)]
struct JoinCount {
    counting: std::sync::atomic::AtomicBool,
    messages: std::sync::atomic::AtomicUsize,
    bytes: std::sync::atomic::AtomicUsize,
}

impl JoinCount {
    fn saw(&self, message: &ServerMessage) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.counting.load(Relaxed) {
            return;
        }
        if !matches!(message, ServerMessage::Pong { .. }) {
            self.messages.fetch_add(1, Relaxed);
            let len = serde_json::to_vec(message).map_or(0, |v| v.len());
            self.bytes.fetch_add(len, Relaxed);
        }
    }
}

/// What a simulated agent says of its host; with `overlay`, a key and a port, so it is every
/// other overlay host's peer.
pub(crate) fn simulated_facts(name: String, overlay: bool) -> HostFacts {
    HostFacts {
        name,
        hostname: "bench".into(),
        labels: [("corral.bench".to_string(), "1".to_string())].into(),
        os: "simulated".into(),
        kernel: String::new(),
        arch: std::env::consts::ARCH.into(),
        overlay_port: overlay.then_some(51820),
        overlay_public_key: overlay.then(random_key),
    }
}

/// Raises this process's open-file limit to its hard limit and checks it leaves room for
/// `count` connections (`what`: "agents", "connections"); returns the new limit.
pub(crate) fn raise_open_files(count: usize, what: &str) -> anyhow::Result<u64> {
    let (soft, hard) = corral_server::raise_nofile_limit()?;
    let need = count as u64 + 256;
    if soft < need {
        bail!(
            "the open-file limit is {soft} (hard limit {hard}), too low for {count} {what} (about {need} needed): raise the hard limit, e.g. `ulimit -Hn {need}` as root, and make sure the server's limit is high enough too"
        );
    }
    Ok(soft)
}

/// Removes the simulated hosts a benchmark registered, and its registration token.
pub(crate) async fn remove_simulated_hosts(client: &Client, host_ids: &[String], token_id: &str) {
    futures_util::stream::iter(host_ids.iter())
        .map(|id| async move { client.delete(&format!("/v1/hosts/{}", seg(id))).await })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let _ = client
        .delete(&format!("/v1/tokens/{}", seg(token_id)))
        .await;
}

/// What a simulated agent reports of its Docker engine: available, with no container.
pub(crate) fn simulated_inventory(cpus: u32, memory_bytes: u64) -> AgentMessage {
    AgentMessage::Report(corral_proto::Report::Inventory {
        docker: Some(corral_proto::DockerInfo {
            version: "simulated".into(),
            api_version: "1.41".into(),
            storage_driver: "none".into(),
            cpus,
            memory_bytes,
        }),
        docker_error: None,
        containers: Vec::new(),
    })
}

/// A random overlay public key (64 hex digits): the server only stores and forwards it.
fn random_key() -> String {
    corral_agent::state::random_bytes::<32>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) async fn server_rss(client: &Client) -> anyhow::Result<u64> {
    let text = client.get_text("/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .context("the server's /metrics has no process_resident_memory_bytes")
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(crate) fn random_u64() -> u64 {
    u64::from_le_bytes(corral_agent::state::random_bytes::<8>())
}

/// A progress bar on a terminal, else a line at every tenth of the way.
pub(crate) struct Progress {
    pub(crate) bar: indicatif::ProgressBar,
    plain: bool,
    total: usize,
    /// What is counted, e.g. "agents connected".
    what: &'static str,
    /// The last tenth printed (plain output).
    printed: std::sync::atomic::AtomicUsize,
}

impl Progress {
    pub(crate) fn new(total: usize, what: &'static str) -> Self {
        let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = if plain {
            indicatif::ProgressBar::hidden()
        } else {
            let b = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
                "{{bar:40}} {{pos}}/{{len}} {what} ({{per_sec}}, {{elapsed}})"
            )) {
                b.set_style(style);
            }
            b
        };
        Progress {
            bar,
            plain,
            total,
            what,
            printed: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub(crate) fn set(&self, done: usize) {
        self.bar.set_position(done as u64);
        let tenth = done * 10 / self.total.max(1);
        let before = self
            .printed
            .fetch_max(tenth, std::sync::atomic::Ordering::Relaxed);
        if self.plain && tenth > before {
            eprintln!("{done}/{} {}", self.total, self.what);
        }
    }
}

/// The source address of simulated agent `i` when the server is on this machine's loopback
/// (127.0.0.0/8): one of its own, as an agent on a host of its own would have. From one address,
/// ten thousand tunnels and their reconnects use up the ephemeral ports towards the server's
/// one port, and the kernel's search for a free port (in `connect`) took most of the CPU of a
/// reconnect storm, more than every TLS handshake together.
pub(crate) fn simulated_source(server_host: &str, i: usize) -> Option<std::net::IpAddr> {
    let server: std::net::Ipv4Addr = server_host.parse().ok()?;
    if !server.is_loopback() {
        return None;
    }
    // 127.1.0.1 onwards, a last octet of 1 to 250: never a network or broadcast look-alike.
    let (hi, lo) = (i / 250, i % 250);
    let octets = [
        127,
        1 + (hi / 250 % 250) as u8,
        (hi % 250) as u8,
        1 + lo as u8,
    ];
    Some(std::net::IpAddr::from(octets))
}

pub async fn connect(b: ConnectBench) -> anyhow::Result<()> {
    if b.agents == 0 {
        bail!("--agents must be at least 1");
    }
    let soft = raise_open_files(b.agents, "agents")?;
    eprintln!("open-file limit raised to {soft}");
    let pin = b
        .client
        .checksum
        .context("the benchmark needs an https:// server and CORRAL_CA_CHECKSUM")?;
    let rss_before = server_rss(&b.client).await?;
    let token: CreatedToken = b
        .client
        .post(
            "/v1/tokens",
            &CreateToken {
                environment: None,
                ttl_seconds: Some(4 * 3600),
                max_uses: Some(b.agents as u32 + 1),
            },
        )
        .await?;
    let run_id = format!("{:06x}", random_u64() & 0xff_ffff);
    let dialer = Arc::new(Dialer::new(b.client.base(), pin)?);
    let limit = Arc::new(Semaphore::new(b.concurrency.max(1)));
    let (measure_tx, measure_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(String, f64), String>>();
    let rtts: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let timeouts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let join_count = Arc::new(JoinCount::default());
    let reconnects = Arc::new(Reconnects::default());

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(b.agents);
    for i in 0..b.agents {
        let dialer = dialer.clone();
        let limit = limit.clone();
        let token = token.token.clone();
        let done_tx = done_tx.clone();
        let mut measure_rx = measure_rx.clone();
        let mut stop_rx = stop_rx.clone();
        let rtts = rtts.clone();
        let timeouts = timeouts.clone();
        let join_count = join_count.clone();
        let reconnects = reconnects.clone();
        let reconnect = b.reconnect;
        let name = format!("bench-{run_id}-{i}");
        let source = simulated_source(dialer.host(), i);
        let ping_every = b.ping_interval;
        let overlay = b.overlay;
        let docker = b.docker;
        tasks.push(tokio::spawn(async move {
            let permit = limit.acquire_owned().await;
            let t0 = Instant::now();
            let credential = format_secret(
                SecretKind::HostCredential,
                &corral_agent::state::random_bytes::<32>(),
            );
            let facts = simulated_facts(name, overlay);
            let hello = dial::hello(
                Auth::Register {
                    token,
                    credential: credential.clone(),
                },
                facts.clone(),
            );
            let (mut tunnel, welcome) = match dialer.connect_from(hello, source).await {
                Ok(x) => x,
                Err(e) => {
                    let _ = done_tx.send(Err(e.to_string()));
                    return;
                }
            };
            drop(permit);
            if docker {
                let inventory = simulated_inventory(2, 4 << 30);
                if let Err(e) = tunnel.send(&inventory).await {
                    let _ = done_tx.send(Err(e.to_string()));
                    return;
                }
            }
            let _ = done_tx.send(Ok((
                welcome.host_id.clone(),
                t0.elapsed().as_secs_f64() * 1e3,
            )));
            // Heartbeats start at once (the server drops silent tunnels), first after a random
            // offset so the pings of all agents spread over the interval.
            let offset =
                Duration::from_millis(random_u64() % (ping_every.as_millis() as u64).max(1));
            let mut next = tokio::time::Instant::now() + offset;
            // Like a real agent, it reads everything the server sends as it comes (overlay
            // configurations included); a ping not answered by the time of the next one counts
            // as a timeout.
            let mut seq = 0u64;
            let mut in_flight: Option<(u64, Instant)> = None;
            // The agents' own reconnect delays (exponential, full jitter).
            let mut backoff = corral_proto::backoff::Backoff::new(
                Duration::from_millis(500),
                Duration::from_secs(30),
            );
            'session: loop {
                let lost = tokio::select! {
                    _ = tokio::time::sleep_until(next) => {
                        if in_flight.take().is_some() {
                            timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        next += ping_every;
                        seq += 1;
                        let sent = tunnel.send(&AgentMessage::Ping { seq }).await.is_ok();
                        if sent {
                            in_flight = Some((seq, Instant::now()));
                        }
                        !sent
                    }
                    message = tunnel.recv() => match message {
                        Ok(ServerMessage::Pong { seq: s }) => {
                            if let Some((expected, sent)) = in_flight
                                && expected == s
                            {
                                in_flight = None;
                                if *measure_rx.borrow_and_update() {
                                    let ms = sent.elapsed().as_secs_f64() * 1e3;
                                    if let Ok(mut v) = rtts.lock() {
                                        v.push(ms);
                                    }
                                }
                            }
                            false
                        }
                        Ok(other) => {
                            join_count.saw(&other);
                            false
                        }
                        Err(_) => true,
                    },
                    _ = stop_rx.changed() => break,
                };
                if !lost {
                    continue;
                }
                // The tunnel is gone.
                if !reconnect {
                    return;
                }
                Reconnects::note(&reconnects.lost_at, started.elapsed().as_secs_f64());
                in_flight = None;
                loop {
                    let delay = backoff.next_delay(random_u64());
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop_rx.changed() => return,
                    }
                    let hello = dial::hello(
                        Auth::Credential {
                            credential: credential.clone(),
                        },
                        facts.clone(),
                    );
                    match dialer.connect_from(hello, source).await {
                        Ok((again, _)) => {
                            tunnel = again;
                            backoff.reset();
                            Reconnects::note(&reconnects.back_at, started.elapsed().as_secs_f64());
                            continue 'session;
                        }
                        Err(dial::DialError::Refused { reason, .. }) if reason.is_permanent() => {
                            reconnects
                                .gave_up
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                        Err(_) => {
                            reconnects
                                .failed_attempts
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            }
            tunnel.close().await;
        }));
    }
    drop(done_tx);

    let progress = Progress::new(b.agents, "agents connected");
    let mut host_ids = Vec::with_capacity(b.agents);
    let mut connect_ms = Vec::with_capacity(b.agents);
    let mut failed = 0usize;
    let mut first_error = None;
    let mut finished = 0usize;
    while let Some(r) = done_rx.recv().await {
        finished += 1;
        match r {
            Ok((id, ms)) => {
                host_ids.push(id);
                connect_ms.push(ms);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        progress.set(finished);
        if finished == b.agents {
            break;
        }
    }
    progress.bar.finish_and_clear();
    let connect_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} agents connected in {connect_seconds:.1} s ({failed} failed); holding for {} s",
        host_ids.len(),
        b.hold.as_secs()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = server_rss(&b.client).await?;
    let _ = measure_tx.send(true);
    // The first half of the hold measures the server idle; the second half measures one more
    // agent joining (with an overlay key under --overlay).
    let half = b.hold / 2;
    let (cpu0, t0) = (server_cpu(&b.client, b.server_pid).await?, Instant::now());
    tokio::time::sleep(half).await;
    let (cpu1, t1) = (server_cpu(&b.client, b.server_pid).await?, Instant::now());
    let idle_cores = (cpu1 - cpu0) / t1.duration_since(t0).as_secs_f64();
    let connected = host_ids.len();
    join_count
        .counting
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let credential = format_secret(
        SecretKind::HostCredential,
        &corral_agent::state::random_bytes::<32>(),
    );
    let hello = dial::hello(
        Auth::Register {
            token: token.token.clone(),
            credential,
        },
        simulated_facts(format!("bench-{run_id}-joiner"), b.overlay),
    );
    let joiner = match dialer.connect(hello).await {
        Ok((tunnel, welcome)) => {
            host_ids.push(welcome.host_id.clone());
            Some(tunnel)
        }
        Err(e) => {
            eprintln!("the joining agent could not connect: {e}");
            None
        }
    };
    tokio::time::sleep(b.hold - half).await;
    let (cpu2, t2) = (server_cpu(&b.client, b.server_pid).await?, Instant::now());
    let join = ((cpu2 - cpu1) - idle_cores * t2.duration_since(t1).as_secs_f64()) * 1e3;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    if let Some(t) = joiner {
        t.close().await;
    }

    connect_ms.sort_by(f64::total_cmp);
    let mut samples = rtts.lock().map(|v| v.clone()).unwrap_or_default();
    samples.sort_by(f64::total_cmp);
    let report = Report {
        agents: b.agents,
        connected,
        failed,
        first_error,
        connect_seconds,
        connect_p50_ms: percentile(&connect_ms, 0.5),
        connect_p99_ms: percentile(&connect_ms, 0.99),
        server_rss_before_bytes: rss_before,
        server_rss_connected_bytes: rss_connected,
        server_rss_per_agent_bytes: rss_connected.saturating_sub(rss_before)
            / (connected.max(1) as u64),
        heartbeat_samples: samples.len(),
        heartbeat_rtt_p50_ms: percentile(&samples, 0.5),
        heartbeat_rtt_p99_ms: percentile(&samples, 0.99),
        heartbeat_rtt_max_ms: samples.last().copied().unwrap_or(0.0),
        heartbeat_timeouts: timeouts.load(std::sync::atomic::Ordering::Relaxed),
        server_cpu_idle_cores: idle_cores,
        join_server_cpu_ms: join,
        join_messages: join_count
            .messages
            .load(std::sync::atomic::Ordering::Relaxed),
        join_bytes: join_count.bytes.load(std::sync::atomic::Ordering::Relaxed),
        reconnect: b.reconnect.then(|| reconnects.report()),
    };

    if !b.keep {
        eprintln!("removing the {} simulated hosts", host_ids.len());
        remove_simulated_hosts(&b.client, &host_ids, &token.id).await;
    }

    match b.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => {
            println!(
                "agents connected      {} of {} ({} failed)",
                report.connected, report.agents, report.failed
            );
            if let Some(e) = &report.first_error {
                println!("first error           {e}");
            }
            println!(
                "connect time          {:.1} s total, p50 {:.1} ms, p99 {:.1} ms per agent",
                report.connect_seconds, report.connect_p50_ms, report.connect_p99_ms
            );
            println!(
                "server RSS            {:.1} MiB before, {:.1} MiB connected, {:.1} KiB per agent",
                report.server_rss_before_bytes as f64 / 1048576.0,
                report.server_rss_connected_bytes as f64 / 1048576.0,
                report.server_rss_per_agent_bytes as f64 / 1024.0
            );
            println!(
                "heartbeat RTT         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples, {} timeouts)",
                report.heartbeat_rtt_p50_ms,
                report.heartbeat_rtt_p99_ms,
                report.heartbeat_rtt_max_ms,
                report.heartbeat_samples,
                report.heartbeat_timeouts
            );
            println!(
                "server CPU idle       {:.3} cores",
                report.server_cpu_idle_cores
            );
            println!(
                "one more host joins   {:.0} ms of server CPU, {} messages ({} bytes) to the others",
                report.join_server_cpu_ms, report.join_messages, report.join_bytes
            );
            if let Some(r) = &report.reconnect {
                println!(
                    "reconnects            {} tunnels lost, {} won back, {} gave up, {} failed attempts; all back {}",
                    r.lost,
                    r.reconnected,
                    r.gave_up,
                    r.failed_attempts,
                    r.all_back_seconds.map_or("never".to_owned(), |s| format!(
                        "{s:.1} s after the first loss"
                    ))
                );
            }
        }
    }
    if report.failed > 0 {
        bail!(
            "{} of {} agents failed to connect",
            report.failed,
            report.agents
        );
    }
    Ok(())
}

pub struct IdleBench {
    pub client: Client,
    pub connections: usize,
    pub concurrency: usize,
    pub duration: Duration,
    /// Time `host ls` and watch the server (else only flood).
    pub measure: bool,
    pub format: Format,
}

#[derive(Serialize)]
struct IdleReport {
    connections: usize,
    duration_seconds: f64,
    handshakes: u64,
    handshake_failures: u64,
    closed_by_server: u64,
    held_min: u64,
    held_max: u64,
    host_ls_before_p50_ms: f64,
    host_ls_samples: usize,
    host_ls_failures: usize,
    host_ls_p50_ms: f64,
    host_ls_p99_ms: f64,
    host_ls_max_ms: f64,
    agents_connected_before: u64,
    agents_connected_min: u64,
    agents_connected_max: u64,
    server_evictions: u64,
    server_unauthenticated_max: u64,
    server_rss_max_bytes: u64,
}

/// Reads one gauge or counter from the server's `/metrics`.
async fn server_metric(client: &Client, name: &str) -> anyhow::Result<u64> {
    let text = client.get_text("/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("the server's /metrics has no {name}"))
}

/// `corral bench idle`.
pub async fn idle(b: IdleBench) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::AsyncReadExt;
    raise_open_files(b.connections, "connections")?;
    let pin = b
        .client
        .checksum
        .context("the benchmark needs an https:// server and CORRAL_CA_CHECKSUM")?;
    let dialer = Arc::new(Dialer::new(b.client.base(), pin)?);
    let agents_before = server_metric(&b.client, "corral_agents_connected").await?;
    let exe = std::env::current_exe()?;
    let host_ls = || async {
        let t = Instant::now();
        let out = tokio::process::Command::new(&exe)
            .args(["host", "ls", "-o", "json"])
            .output()
            .await?;
        anyhow::Ok(
            out.status
                .success()
                .then(|| t.elapsed().as_secs_f64() * 1000.0),
        )
    };
    // The same command without the flood, for comparison.
    let mut before = Vec::new();
    for _ in 0..if b.measure { 10 } else { 0 } {
        if let Some(ms) = host_ls().await? {
            before.push(ms);
        }
    }
    before.sort_by(f64::total_cmp);
    let handshakes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let held = Arc::new(AtomicU64::new(0));
    let limit = Arc::new(Semaphore::new(b.concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(b.connections);
    for _ in 0..b.connections {
        let (dialer, limit, mut stop) = (dialer.clone(), limit.clone(), stop_rx.clone());
        let (handshakes, failures, closed, held) = (
            handshakes.clone(),
            failures.clone(),
            closed.clone(),
            held.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !*stop.borrow() {
                let tls = {
                    let Ok(_permit) = limit.acquire().await else {
                        return;
                    };
                    dialer.tls().await
                };
                let mut tls = match tls {
                    Ok(t) => t,
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                handshakes.fetch_add(1, Ordering::Relaxed);
                held.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 512];
                tokio::select! {
                    _ = async { while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {} } => {
                        closed.fetch_add(1, Ordering::Relaxed);
                    }
                    _ = stop.changed() => {}
                }
                held.fetch_sub(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let (mut ls, mut ls_failures) = (Vec::new(), 0usize);
    let (mut held_min, mut held_max) = (u64::MAX, 0u64);
    let (mut agents_min, mut agents_max) = (u64::MAX, 0u64);
    let (mut unauth_max, mut rss_max) = (0u64, 0u64);
    // Let the flood build up before measuring.
    tokio::time::sleep(b.duration.min(Duration::from_secs(10)) / 2).await;
    if !b.measure {
        tokio::time::sleep(b.duration.saturating_sub(started.elapsed())).await;
    }
    while b.measure && started.elapsed() < b.duration {
        match host_ls().await? {
            Some(ms) => ls.push(ms),
            None => ls_failures += 1,
        }
        let now_held = held.load(Ordering::Relaxed);
        held_min = held_min.min(now_held);
        held_max = held_max.max(now_held);
        if let Ok(a) = server_metric(&b.client, "corral_agents_connected").await {
            agents_min = agents_min.min(a);
            agents_max = agents_max.max(a);
        }
        if let Ok(u) = server_metric(&b.client, "corral_unauthenticated_connections").await {
            unauth_max = unauth_max.max(u);
        }
        if let Ok(r) = server_rss(&b.client).await {
            rss_max = rss_max.max(r);
        }
        eprintln!(
            "held {now_held} idle connections; host ls {:.1} ms; agents connected {agents_min}..{agents_max}",
            ls.last().copied().unwrap_or(f64::NAN)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    ls.sort_by(f64::total_cmp);
    let report = IdleReport {
        connections: b.connections,
        duration_seconds: started.elapsed().as_secs_f64(),
        handshakes: handshakes.load(Ordering::Relaxed),
        handshake_failures: failures.load(Ordering::Relaxed),
        closed_by_server: closed.load(Ordering::Relaxed),
        held_min: if held_min == u64::MAX { 0 } else { held_min },
        held_max,
        host_ls_before_p50_ms: percentile(&before, 0.5),
        host_ls_samples: ls.len(),
        host_ls_failures: ls_failures,
        host_ls_p50_ms: percentile(&ls, 0.5),
        host_ls_p99_ms: percentile(&ls, 0.99),
        host_ls_max_ms: ls.last().copied().unwrap_or(0.0),
        agents_connected_before: agents_before,
        agents_connected_min: if agents_min == u64::MAX {
            0
        } else {
            agents_min
        },
        agents_connected_max: agents_max,
        server_evictions: server_metric(&b.client, "corral_connections_evicted_total").await?,
        server_unauthenticated_max: unauth_max,
        server_rss_max_bytes: rss_max,
    };
    match b.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => {
            println!(
                "{} idle connections for {:.0}s: {} handshakes, {} closed by the server ({} evicted at the cap)",
                report.connections,
                report.duration_seconds,
                report.handshakes,
                report.closed_by_server,
                report.server_evictions
            );
            println!(
                "host ls: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples, {} failed)",
                report.host_ls_p50_ms,
                report.host_ls_p99_ms,
                report.host_ls_max_ms,
                report.host_ls_samples,
                report.host_ls_failures
            );
            println!(
                "agents connected: {} before, {}..{} during",
                report.agents_connected_before,
                report.agents_connected_min,
                report.agents_connected_max
            );
        }
    }
    Ok(())
}

/// `corral bench api`: the same GET with two keys, alternating, after a warm-up of 10 each.
pub async fn api(
    a: Client,
    b: Client,
    path: &str,
    requests: usize,
    format: crate::cli::Format,
) -> anyhow::Result<()> {
    let mut times: [Vec<f64>; 2] = [Vec::with_capacity(requests), Vec::with_capacity(requests)];
    let mut bytes = [0usize; 2];
    for i in 0..requests + 10 {
        for (k, client) in [&a, &b].into_iter().enumerate() {
            let start = std::time::Instant::now();
            let body: serde_json::Value = client.get(path).await?;
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            if i >= 10 {
                times[k].push(ms);
                bytes[k] = serde_json::to_vec(&body)?.len();
            }
        }
    }
    for t in &mut times {
        t.sort_by(f64::total_cmp);
    }
    let [ta, tb] = &times;
    let report = serde_json::json!({
        "path": path,
        "requests_per_key": requests,
        "a_p50_ms": percentile(ta, 0.5),
        "a_p99_ms": percentile(ta, 0.99),
        "a_answer_bytes": bytes[0],
        "b_p50_ms": percentile(tb, 0.5),
        "b_p99_ms": percentile(tb, 0.99),
        "b_answer_bytes": bytes[1],
        "p50_ratio_b_over_a": percentile(tb, 0.5) / percentile(ta, 0.5),
    });
    match format {
        crate::cli::Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        crate::cli::Format::Table => println!(
            "{path}: key A p50 {:.2} ms p99 {:.2} ms ({} bytes); key B p50 {:.2} ms p99 {:.2} ms ({} bytes); B/A p50 {:.3}",
            percentile(ta, 0.5),
            percentile(ta, 0.99),
            bytes[0],
            percentile(tb, 0.5),
            percentile(tb, 0.99),
            bytes[1],
            percentile(tb, 0.5) / percentile(ta, 0.5)
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::simulated_source;

    #[test]
    fn simulated_agents_on_loopback_dial_from_addresses_of_their_own() {
        let all: std::collections::HashSet<_> = (0..200_000)
            .map(|i| simulated_source("127.0.0.1", i).unwrap())
            .collect();
        assert_eq!(all.len(), 200_000);
        assert!(all.iter().all(|a| match a {
            std::net::IpAddr::V4(v4) => {
                let [a, b, _, d] = v4.octets();
                a == 127 && b >= 1 && (1..=250).contains(&d)
            }
            std::net::IpAddr::V6(_) => false,
        }));
        assert_eq!(simulated_source("192.0.2.10", 3), None);
        assert_eq!(simulated_source("corral.example", 3), None);
    }
}
