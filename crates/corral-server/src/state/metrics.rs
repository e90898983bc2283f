//! What `GET /metrics` reports: counters and histograms kept as things happen (tunnels,
//! commands, the reconciler, API requests), and figures read at the scrape (a [`Snapshot`]:
//! hosts, connections, the command queue, the process). Encoded by `prometheus-client` in the
//! OpenMetrics text format, which Prometheus reads; every label's values come from a closed
//! set (close reasons, command kinds, action kinds, route templates, status codes), so the
//! number of series is bounded whatever clients and agents send.

use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label set: a few fixed keys, each with a value from a closed set.
type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Latency buckets from 1 ms to about 33 s, each twice the one before.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Everything counted as it happens. Cloning shares the counts.
#[derive(Clone)]
pub struct Metrics {
    tunnel_connects: Counter,
    tunnel_refusals: Family<Labels, Counter>,
    tunnel_disconnects: Family<Labels, Counter>,
    commands_submitted: Family<Labels, Counter>,
    commands_expired: Counter,
    commands_pruned: Counter,
    /// Commands the sessions have written to their tunnels and not seen settled yet (each
    /// session adds what it writes and takes away what it prunes and, at its end, the rest).
    commands_written: Gauge,
    command_seconds: Histograms,
    reconciler_pass_seconds: Histogram,
    reconciler_actions: Family<Labels, Counter>,
    api_requests: Family<Labels, Counter>,
    api_seconds: Histograms,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            tunnel_connects: Counter::default(),
            tunnel_refusals: Family::default(),
            tunnel_disconnects: Family::default(),
            commands_submitted: Family::default(),
            commands_expired: Counter::default(),
            commands_pruned: Counter::default(),
            commands_written: Gauge::default(),
            command_seconds: Family::new_with_constructor(latency),
            reconciler_pass_seconds: latency(),
            reconciler_actions: Family::default(),
            api_requests: Family::default(),
            api_seconds: Family::new_with_constructor(latency),
        }
    }
}

/// Figures read when scraped.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub agents_connected: u64,
    pub hosts: u64,
    /// Commands stored and not yet written to their host's tunnel.
    pub commands_pending: u64,
    /// Commands written to their host's tunnel and not yet answered.
    pub commands_sent: u64,
    /// Stack replicas the last reconciler pass could not place.
    pub unplaced_replicas: u64,
    pub unauthenticated_connections: u64,
    pub unauthenticated_connections_max: u64,
    pub connections_evicted: u64,
    pub connections_shed: u64,
    /// Newcomers waiting for a place under the cap on unauthenticated connections.
    pub connections_waiting: u64,
    /// Each connected host's overlay as its agent last reported it: (host name, figures).
    pub overlay: Vec<(String, corral_proto::OverlayStats)>,
    pub resident_memory_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub uptime_seconds: u64,
}

impl Metrics {
    /// An agent was admitted and its session begins.
    pub fn tunnel_connected(&self) {
        self.tunnel_connects.inc();
    }

    /// A connection was refused before a session began (`reason`: a close reason).
    pub fn tunnel_refused(&self, reason: &str) {
        self.tunnel_refusals
            .get_or_create(&vec![("reason", reason.replace(' ', "_"))])
            .inc();
    }

    /// A session ended: with the close reason the server gave, or `agent_gone` when the
    /// agent closed or the connection dropped.
    pub fn tunnel_disconnected(&self, reason: &str) {
        self.tunnel_disconnects
            .get_or_create(&vec![("reason", reason.replace(' ', "_"))])
            .inc();
    }

    pub fn command_submitted(&self, kind: &'static str) {
        self.commands_submitted
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }

    /// A session's count of commands written and not seen settled moved by `delta`.
    pub fn commands_written(&self, delta: i64) {
        self.commands_written.inc_by(delta);
    }

    /// Commands written to their hosts' tunnels and not seen settled yet, all sessions.
    pub fn commands_in_flight(&self) -> u64 {
        u64::try_from(self.commands_written.get()).unwrap_or(0)
    }

    /// The expiry sweep found `n` commands past their deadline, unanswered.
    pub fn commands_expired(&self, n: u64) {
        self.commands_expired.inc_by(n);
    }

    /// `n` finished commands past their retention were deleted.
    pub fn commands_pruned(&self, n: u64) {
        self.commands_pruned.inc_by(n);
    }

    /// A command this server submitted was settled (`outcome`: `done` or `expired`) after
    /// `took`.
    pub fn command_settled(&self, kind: &'static str, outcome: &'static str, took: Duration) {
        self.command_seconds
            .get_or_create(&vec![
                ("kind", kind.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .observe(took.as_secs_f64());
    }

    pub fn reconciler_pass(&self, took: Duration) {
        self.reconciler_pass_seconds.observe(took.as_secs_f64());
    }

    pub fn reconciler_action(&self, kind: &'static str) {
        self.reconciler_actions
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }

    /// One API request answered: `route` is the matched route's template (`/v1/hosts/{id}`),
    /// never the path itself.
    pub fn api_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.api_requests
            .get_or_create(&vec![
                ("route", route.to_owned()),
                ("method", method.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
        self.api_seconds
            .get_or_create(&vec![("route", route.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// The OpenMetrics text of everything counted, with `snapshot`'s figures.
    pub fn encode(&self, snapshot: Snapshot) -> Result<String, fmt::Error> {
        let mut registry = Registry::default();
        registry.register(
            "corral_tunnel_connects",
            "Agent sessions begun (an agent admitted)",
            self.tunnel_connects.clone(),
        );
        registry.register(
            "corral_tunnel_refusals",
            "Agent connections refused before a session, by close reason",
            self.tunnel_refusals.clone(),
        );
        registry.register(
            "corral_tunnel_disconnects",
            "Agent sessions ended, by close reason (agent_gone: the agent closed or the connection dropped)",
            self.tunnel_disconnects.clone(),
        );
        registry.register(
            "corral_commands_submitted",
            "Commands this server queued for a host, by kind",
            self.commands_submitted.clone(),
        );
        registry.register(
            "corral_commands_expired",
            "Commands whose deadline passed unanswered",
            self.commands_expired.clone(),
        );
        registry.register(
            "corral_commands_pruned",
            "Finished commands deleted once their retention had passed (`--command-retention`)",
            self.commands_pruned.clone(),
        );
        registry.register(
            "corral_command_duration_seconds",
            "From a command's submission to its settlement (answered or expired), by kind and outcome",
            self.command_seconds.clone(),
        );
        registry.register(
            "corral_reconciler_pass_duration_seconds",
            "How long each reconciler pass took",
            self.reconciler_pass_seconds.clone(),
        );
        registry.register(
            "corral_reconciler_actions",
            "What reconciler passes did, by kind (start, remove, ...)",
            self.reconciler_actions.clone(),
        );
        registry.register(
            "corral_api_requests",
            "API requests answered, by route template, method and status",
            self.api_requests.clone(),
        );
        registry.register(
            "corral_api_request_duration_seconds",
            "Time to answer an API request (to its response's head), by route template",
            self.api_seconds.clone(),
        );
        registry.register_collector(Box::new(snapshot));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let gauges: [(&str, &str, i64); 11] = [
            (
                "corral_reconciler_unplaced_replicas",
                "Stack replicas the last reconciler pass could not place",
                signed(self.unplaced_replicas),
            ),
            (
                "corral_agents_connected",
                "Agents with a live tunnel",
                signed(self.agents_connected),
            ),
            (
                "corral_hosts",
                "Registered hosts (not removed)",
                signed(self.hosts),
            ),
            (
                "corral_commands_pending",
                "Commands stored and not yet written to their host's tunnel",
                signed(self.commands_pending),
            ),
            (
                "corral_commands_in_flight",
                "Commands written to their host's tunnel and not yet answered",
                signed(self.commands_sent),
            ),
            (
                "corral_unauthenticated_connections",
                "Connections held that have not authenticated",
                signed(self.unauthenticated_connections),
            ),
            (
                "corral_unauthenticated_connections_max",
                "The cap on them (--max-unauthenticated-connections)",
                signed(self.unauthenticated_connections_max),
            ),
            (
                "corral_connections_waiting",
                "Connections waiting, before their TLS handshake, for a place under that cap",
                signed(self.connections_waiting),
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                signed(self.resident_memory_bytes),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                signed(self.open_fds),
            ),
            (
                "process_uptime_seconds",
                "Seconds since the server started",
                signed(self.uptime_seconds),
            ),
        ];
        for (name, help, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        let counters: [(&str, &str, u64); 2] = [
            (
                "corral_connections_evicted",
                "Unauthenticated connections closed because the cap was reached",
                self.connections_evicted,
            ),
            (
                "corral_connections_shed",
                "Connections refused before their TLS handshake: the cap was full of connections at work and the line of those waiting full, or their wait over",
                self.connections_shed,
            ),
        ];
        for (name, help, value) in counters {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        self.encode_overlay(&mut encoder)?;
        let metric = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.cpu_seconds).encode(metric)?;
        Ok(())
    }
}

impl Snapshot {
    /// Per host, from the agents' reports: one series per host name (a set the operator
    /// controls, as large as the fleet).
    fn encode_overlay(&self, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        if self.overlay.is_empty() {
            return Ok(());
        }
        let mut bytes = encoder.encode_descriptor(
            "corral_overlay_bytes",
            "Inner bytes a host's encrypted overlay carried, by direction (tx, rx), as its agent reports",
            None,
            MetricType::Counter,
        )?;
        for (host, o) in &self.overlay {
            for (direction, value) in [("tx", o.tx_bytes), ("rx", o.rx_bytes)] {
                let labels = [("host", host.as_str()), ("direction", direction)];
                ConstCounter::new(value).encode(bytes.encode_family(&labels)?)?;
            }
        }
        let mut handshakes = encoder.encode_descriptor(
            "corral_overlay_handshakes",
            "Handshakes a host's encrypted overlay completed, as its agent reports",
            None,
            MetricType::Counter,
        )?;
        for (host, o) in &self.overlay {
            let labels = [("host", host.as_str())];
            ConstCounter::new(o.handshakes).encode(handshakes.encode_family(&labels)?)?;
        }
        let mut refused = encoder.encode_descriptor(
            "corral_overlay_refused_datagrams",
            "Datagrams a host's encrypted overlay refused, by reason (rejected: failed authentication or replay checks; unknown_peer; garbage; spoofed: inner source not the peer's)",
            None,
            MetricType::Counter,
        )?;
        for (host, o) in &self.overlay {
            for (reason, value) in [
                ("rejected", o.rejected),
                ("unknown_peer", o.unknown_peer),
                ("garbage", o.garbage),
                ("spoofed", o.spoofed),
            ] {
                let labels = [("host", host.as_str()), ("reason", reason)];
                ConstCounter::new(value).encode(refused.encode_family(&labels)?)?;
            }
        }
        let mut peers = encoder.encode_descriptor(
            "corral_overlay_peers",
            "A host's overlay peers, by state (configured, session: with an established session)",
            None,
            MetricType::Gauge,
        )?;
        for (host, o) in &self.overlay {
            for (state, value) in [("configured", o.peers), ("session", o.sessions)] {
                let labels = [("host", host.as_str()), ("state", state)];
                ConstGauge::new(i64::from(value)).encode(peers.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
