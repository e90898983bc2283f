//! The agent's local checks for `corral doctor`: what this host needs for corral to work, each
//! with the fix that would make it pass.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use corral_proto::Check;

/// Largest clock difference from the server that still passes.
pub const MAX_SKEW_MS: i64 = 2000;

pub struct DoctorInput<'a> {
    pub server: &'a str,
    pub pin: String,
    /// The server's clock when it sent the command, if it said.
    pub server_time_ms: Option<i64>,
    pub now_ms: i64,
    /// The Docker socket (`--docker-host`), or why that is not a socket path.
    pub docker_socket: Result<&'a Path, &'a str>,
    /// The overlay socket's port, if it is bound, and the port it was asked to bind.
    pub overlay_port: Option<u16>,
    pub wanted_overlay_port: u16,
    /// Started without `--no-overlay` (with it, the agent binds no socket at all).
    pub overlay_enabled: bool,
    /// The agent runs inside the server's process (`--with-agent`).
    pub embedded: bool,
    /// The overlay on this host, as the agent's mesh sees it.
    pub overlay: OverlayView,
    /// The network policy on this host (`None`: the agent runs without the overlay).
    pub policy: Option<PolicyView>,
}

/// The network policy on this host, for `corral doctor`.
#[derive(Clone, Debug)]
pub struct PolicyView {
    pub status: crate::netpolicy::Status,
    /// The policy table's counters: packets each rule dropped (`deny_N`), the defaults
    /// counted (`default_*`), and packets of overlay addresses no replica has (`unknown`).
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// The `network policy` check: the generation in force, what it knows, and what each rule
/// dropped. Fails when a policy should be in force and is not, or is only half in force.
pub fn policy(view: Option<&PolicyView>) -> Check {
    const NAME: &str = "network policy";
    let Some(view) = view else {
        return check(
            NAME,
            true,
            "not enforced here: the agent runs with --no-overlay (no stack container is on the overlay)".into(),
            None,
        );
    };
    let s = &view.status;
    if !s.enforcing {
        return match &s.error {
            Some(e) => check(
                NAME,
                false,
                format!("not in force: {e}; stack containers on the overlay wait until it is"),
                Some(
                    "see the agent's log; the host needs nftables (`nft`) and the server's policy (`corral policy show`)",
                ),
            ),
            None => check(
                NAME,
                true,
                format!(
                    "no policy in this environment (generation {}): nothing is filtered between containers",
                    s.generation
                ),
                None,
            ),
        };
    }
    let mut counted: Vec<String> = view
        .counters
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| {
            let label = match name.strip_prefix("deny_") {
                Some(i) => format!("deny[{i}]"),
                None => match name.as_str() {
                    "default_east_west" => "default".to_owned(),
                    "default_ingress" => "ingress default".to_owned(),
                    "default_egress" => "egress default".to_owned(),
                    "unknown" => "unknown overlay address (dropped)".to_owned(),
                    other => other.to_owned(),
                },
            };
            format!("{label} {n}")
        })
        .collect();
    if counted.is_empty() {
        counted.push("none yet".into());
    }
    let mut detail = format!(
        "generation {} in force: {} service(s), {} replica(s); packets per rule since the rules were last replaced: {}",
        s.generation,
        s.services,
        s.replicas,
        counted.join(", ")
    );
    if s.conflicts > 0 {
        detail.push_str(&format!(
            "; {} overlay address(es) claimed by two services",
            s.conflicts
        ));
    }
    match &s.error {
        Some(e) => check(
            NAME,
            false,
            format!("{detail}; {e}"),
            Some(if s.bridge_cut {
                "load the kernel's bridge netfilter (`modprobe br_netfilter`) and restart the agent"
            } else {
                "see the agent's log: the newest rules could not be applied, the previous ones stay in force"
            }),
        ),
        None => check(NAME, true, detail, None),
    }
}

/// The overlay on this host, for `corral doctor`.
#[derive(Clone, Debug)]
pub enum OverlayView {
    /// The agent runs with `--no-overlay`.
    Disabled,
    /// No configuration from the server yet.
    Waiting,
    /// The last configuration could not be applied; why.
    Failed(String),
    /// The unencrypted mode, with this many peers.
    Vxlan { peers: usize },
    /// The encrypted mode's data plane ended (see the agent's log).
    Stopped,
    /// The encrypted mode, running.
    Encrypted {
        tunnels: Vec<TunnelView>,
        counters: corral_overlay::Counters,
    },
}

/// One peer host's tunnel.
#[derive(Clone, Debug)]
pub struct TunnelView {
    pub name: String,
    pub subnet: String,
    /// `None`: the peer is configured but the data plane does not know it (yet).
    pub stats: Option<corral_overlay::PeerStats>,
}

/// `1.2 GB`, `40.1 MB`, `512 B`: decimal units, as network tools count.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The `overlay` check: the mode, each peer's tunnel (endpoint, last handshake, traffic) and
/// what the data plane refused. Fails only when the overlay should run and does not.
pub fn overlay(view: &OverlayView) -> Check {
    const NAME: &str = "overlay";
    match view {
        OverlayView::Disabled => check(
            NAME,
            true,
            "this host is not in the overlay (started with --no-overlay, or its key pair could not be loaded: see the agent's log); its containers are reachable only on published ports".into(),
            None,
        ),
        OverlayView::Waiting => check(
            NAME,
            true,
            "waiting for the server's overlay configuration".into(),
            None,
        ),
        OverlayView::Failed(error) => check(
            NAME,
            false,
            format!("cannot set up the overlay (retrying every 5 s): {error}"),
            Some("fix what the message names (Docker running, /dev/net/tun, CAP_NET_ADMIN), or start the agent with --no-overlay"),
        ),
        OverlayView::Vxlan { peers } => check(
            NAME,
            true,
            format!("unencrypted vxlan mode (4789/udp), {peers} peer(s)"),
            None,
        ),
        OverlayView::Stopped => check(
            NAME,
            false,
            "the encrypted overlay's data plane stopped".into(),
            Some("see the agent's log for \"the overlay data plane stopped\", then restart the agent"),
        ),
        OverlayView::Encrypted { tunnels, counters } => {
            let mut lines = Vec::with_capacity(tunnels.len());
            for t in tunnels {
                let state = match &t.stats {
                    None => "not in the data plane yet".to_owned(),
                    Some(s) => {
                        let endpoint = s
                            .endpoint
                            .map_or_else(|| "endpoint unknown".to_owned(), |e| format!("at {e}"));
                        let session = match s.last_handshake {
                            Some(age) => format!(
                                "handshake {} s ago, {} sent, {} received",
                                age.as_secs(),
                                bytes(s.tx_bytes),
                                bytes(s.rx_bytes)
                            ),
                            None => "no session (idle)".to_owned(),
                        };
                        format!("{endpoint}, {session}")
                    }
                };
                lines.push(format!("{} {}: {state}", t.name, t.subnet));
            }
            let peers = if lines.is_empty() {
                "no peers".to_owned()
            } else {
                lines.join("; ")
            };
            check(
                NAME,
                true,
                format!(
                    "encrypted (WireGuard), {} peer(s): {peers}; refused: {} unauthenticated or replayed, {} for unknown peers, {} not WireGuard, {} from outside a peer's range",
                    tunnels.len(),
                    counters.rejected,
                    counters.unknown_peer,
                    counters.garbage,
                    counters.spoofed
                ),
                None,
            )
        }
    }
}

fn check(name: &str, ok: bool, detail: String, fix: Option<&str>) -> Check {
    Check {
        name: name.to_owned(),
        ok,
        detail,
        fix: if ok { None } else { fix.map(str::to_owned) },
    }
}

pub fn run(input: &DoctorInput<'_>) -> Vec<Check> {
    let mut checks = vec![check(
        "server tunnel",
        true,
        format!(
            "connected to {} over TLS; the server's chain contains the pinned CA {}",
            input.server, input.pin
        ),
        None,
    )];
    checks.push(match input.server_time_ms {
        Some(server_ms) => {
            let skew = input.now_ms - server_ms;
            check(
                "clock",
                skew.abs() <= MAX_SKEW_MS,
                format!("{skew:+} ms from the server's clock (at most ±{MAX_SKEW_MS} ms, including transit time)"),
                Some("synchronise the clock with NTP (chrony or systemd-timesyncd); allow outbound 123/udp to your NTP servers"),
            )
        }
        None => check("clock", false, "the server did not send its time".into(), Some("upgrade the server")),
    });
    checks.push(match input.overlay_port {
        None if !input.overlay_enabled => check(
            "overlay socket",
            true,
            "none: the agent runs with --no-overlay, so it binds no UDP port (and no TCP port); overlay probes with other hosts are skipped".into(),
            None,
        ),
        Some(port) => check(
            "overlay socket",
            true,
            format!("listening on {port}/udp (the agent's only listening port)"),
            None,
        ),
        None => check(
            "overlay socket",
            false,
            format!("UDP port {} could not be bound", input.wanted_overlay_port),
            Some("free the port (another agent or WireGuard may hold it) or start the agent with --overlay-port, then restart it"),
        ),
    });
    checks.push(overlay(&input.overlay));
    checks.push(policy(input.policy.as_ref()));
    checks.push(match input.docker_socket {
        Ok(path) => docker_socket(path),
        Err(e) => check(
            "docker socket",
            false,
            e.to_owned(),
            Some("start the agent with --docker-host unix:///var/run/docker.sock (or the engine's socket)"),
        ),
    });
    checks.push(nft());
    checks.push(tun());
    let listening = own_listening_tcp();
    if input.embedded {
        checks.push(check(
            "no listening TCP port",
            true,
            "this agent runs inside `corral server --with-agent`: the process's TCP listener is the server's API port; a standalone agent listens on none".into(),
            None,
        ));
        return checks;
    }
    checks.push(check(
        "no listening TCP port",
        listening.is_empty(),
        if listening.is_empty() {
            "the agent listens on no TCP port".into()
        } else {
            format!("the agent process listens on {}", listening.join(", "))
        },
        Some("report this: the agent must never listen"),
    ));
    checks
}

fn docker_socket(path: &Path) -> Check {
    let fix = "install Docker (apt-get install docker.io) and start dockerd; the agent talks to it only over this local socket";
    match std::fs::metadata(path) {
        Err(e) => check(
            "docker socket",
            false,
            format!("{}: {e}", path.display()),
            Some(fix),
        ),
        Ok(m) if !m.file_type().is_socket() => check(
            "docker socket",
            false,
            format!("{} is not a socket", path.display()),
            Some(fix),
        ),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => check(
                "docker socket",
                true,
                format!("{} accepts connections", path.display()),
                None,
            ),
            Err(e) => check(
                "docker socket",
                false,
                format!("{} does not accept connections: {e}", path.display()),
                Some("start dockerd, and run the agent as a user allowed to use the Docker socket"),
            ),
        },
    }
}

fn nft() -> Check {
    match std::process::Command::new("nft").arg("--version").output() {
        Ok(out) if out.status.success() => check(
            "nft",
            true,
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            None,
        ),
        Ok(out) => check(
            "nft",
            false,
            format!(
                "`nft --version` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Some("apt-get install nftables"),
        ),
        Err(e) => check(
            "nft",
            false,
            format!("nft not found: {e}"),
            Some("apt-get install nftables"),
        ),
    }
}

fn tun() -> Check {
    let path = Path::new("/dev/net/tun");
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_char_device() => {
            check("tun device", true, "/dev/net/tun is present".into(), None)
        }
        Ok(_) => check(
            "tun device",
            false,
            "/dev/net/tun is not a character device".into(),
            Some("modprobe tun"),
        ),
        Err(e) => check(
            "tun device",
            false,
            format!("/dev/net/tun: {e}"),
            Some(
                "modprobe tun (in a container: pass --device /dev/net/tun and --cap-add NET_ADMIN)",
            ),
        ),
    }
}

/// This process's listening TCP sockets, from `/proc/self`.
pub fn own_listening_tcp() -> Vec<String> {
    let mut inodes = Vec::new();
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.display().to_string();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.push(inode.to_owned());
                }
            }
        }
    }
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/self/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" && inodes.iter().any(|i| i == cols[9]) {
                found.push(format!("{table} {}", cols[1]));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_check_says_what_is_in_force_and_what_it_dropped() {
        assert!(policy(None).ok);
        let mut status = crate::netpolicy::Status {
            error: Some("the network policy has not arrived from the server yet".into()),
            ..Default::default()
        };
        let view = |status: &crate::netpolicy::Status, counters: &[(&str, u64)]| PolicyView {
            status: status.clone(),
            counters: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        let c = policy(Some(&view(&status, &[])));
        assert!(
            !c.ok && c.detail.contains("not arrived") && c.fix.is_some(),
            "{c:?}"
        );
        status = crate::netpolicy::Status {
            generation: 4,
            ..Default::default()
        };
        let c = policy(Some(&view(&status, &[])));
        assert!(c.ok && c.detail.contains("no policy"), "{c:?}");
        status = crate::netpolicy::Status {
            generation: 5,
            enforcing: true,
            services: 3,
            replicas: 7,
            ..Default::default()
        };
        let c = policy(Some(&view(
            &status,
            &[
                ("deny_0", 12),
                ("deny_1", 0),
                ("default_east_west", 40),
                ("unknown", 2),
            ],
        )));
        assert!(c.ok, "{c:?}");
        assert!(
            c.detail
                .starts_with("generation 5 in force: 3 service(s), 7 replica(s)"),
            "{c:?}"
        );
        assert!(
            c.detail.contains("deny[0] 12") && !c.detail.contains("deny[1]"),
            "{c:?}"
        );
        assert!(
            c.detail.contains("default 40") && c.detail.contains("unknown"),
            "{c:?}"
        );
        status.bridge_cut = true;
        status.error = Some("cut".into());
        let c = policy(Some(&view(&status, &[])));
        assert!(!c.ok && c.fix.unwrap().contains("br_netfilter"));
    }

    #[test]
    fn checks_report_and_fix() {
        let input = DoctorInput {
            server: "https://s:8443",
            pin: "sha256:00".into(),
            server_time_ms: Some(1_000_000),
            now_ms: 1_005_000,
            docker_socket: Ok(Path::new("/nonexistent/docker.sock")),
            overlay_port: None,
            wanted_overlay_port: 51820,
            overlay_enabled: true,
            overlay: OverlayView::Disabled,
            policy: None,
            embedded: false,
        };
        let checks = run(&input);
        let socket = checks.iter().find(|c| c.name == "overlay socket").unwrap();
        assert!(!socket.ok && socket.detail.contains("51820"), "bind failed");
        let clock = checks.iter().find(|c| c.name == "clock").unwrap();
        assert!(!clock.ok && clock.fix.is_some() && clock.detail.contains("+5000 ms"));
        let docker = checks.iter().find(|c| c.name == "docker socket").unwrap();
        assert!(!docker.ok && docker.fix.as_deref().unwrap().contains("docker"));
        assert!(
            checks
                .iter()
                .find(|c| c.name == "server tunnel")
                .unwrap()
                .ok
        );
        assert!(checks.iter().all(|c| c.ok == c.fix.is_none()));

        // A --docker-host that is no socket path is named, with the fix.
        let bad = DoctorInput {
            docker_socket: Err(
                "--docker-host \"tcp://x:2375\" must be unix:///path/to/docker.sock",
            ),
            ..input
        };
        let checks = run(&bad);
        let docker = checks.iter().find(|c| c.name == "docker socket").unwrap();
        assert!(
            !docker.ok && docker.detail.contains("tcp://x:2375"),
            "{}",
            docker.detail
        );
        assert!(docker.fix.as_deref().unwrap().contains("--docker-host"));

        // Without the overlay, no socket is the expected state, not a failure.
        let apart = DoctorInput {
            overlay_enabled: false,
            docker_socket: Ok(Path::new("/nonexistent/docker.sock")),
            ..bad
        };
        let checks = run(&apart);
        let socket = checks.iter().find(|c| c.name == "overlay socket").unwrap();
        assert!(
            socket.ok && socket.detail.contains("--no-overlay"),
            "{}",
            socket.detail
        );
    }

    #[test]
    fn the_overlay_check_names_each_tunnel_and_fails_only_when_it_should_run_and_does_not() {
        let stats = corral_overlay::PeerStats {
            public_key: [1; 32],
            endpoint: Some("192.0.2.12:51820".parse().unwrap()),
            allowed: Vec::new(),
            last_handshake: Some(std::time::Duration::from_secs(12)),
            tx_bytes: 1_234_000_000,
            rx_bytes: 40_100_000,
            handshakes: 3,
            rtt_ms: Some(1),
        };
        let view = OverlayView::Encrypted {
            tunnels: vec![
                TunnelView {
                    name: "h2".into(),
                    subnet: "10.42.2.0/24".into(),
                    stats: Some(stats.clone()),
                },
                TunnelView {
                    name: "h3".into(),
                    subnet: "10.42.3.0/24".into(),
                    stats: Some(corral_overlay::PeerStats {
                        endpoint: None,
                        last_handshake: None,
                        ..stats
                    }),
                },
            ],
            counters: corral_overlay::Counters {
                rejected: 7,
                ..Default::default()
            },
        };
        let c = overlay(&view);
        assert!(c.ok);
        assert!(
            c.detail.contains(
                "h2 10.42.2.0/24: at 192.0.2.12:51820, handshake 12 s ago, 1.2 GB sent, 40.1 MB received"
            ),
            "{}",
            c.detail
        );
        assert!(
            c.detail
                .contains("h3 10.42.3.0/24: endpoint unknown, no session (idle)"),
            "{}",
            c.detail
        );
        assert!(
            c.detail.contains("7 unauthenticated or replayed"),
            "{}",
            c.detail
        );

        for (view, ok) in [
            (OverlayView::Disabled, true),
            (OverlayView::Waiting, true),
            (OverlayView::Vxlan { peers: 2 }, true),
            (OverlayView::Stopped, false),
            (OverlayView::Failed("Docker is not running".into()), false),
        ] {
            let c = overlay(&view);
            assert_eq!(c.ok, ok, "{view:?}: {}", c.detail);
            assert_eq!(c.fix.is_some(), !ok, "{view:?}");
        }
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500), "1.5 kB");
    }
}
