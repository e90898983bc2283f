//! `corral server` and `corral agent` processes in network namespaces, and [`Lab`]: a server
//! and N hosts, each host with its own dockerd and agent, as `scripts/lab.sh` builds by hand.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::capture::Capture;
use crate::dockerd::{DockerFirewall, Dockerd};
use crate::netns::{Netns, Network};
use crate::proc::{Proc, wait_until};

/// The port the server listens on in a lab.
pub const SERVER_PORT: u16 = 8443;

/// What `admin.env` says.
#[derive(Clone, Debug, Default)]
pub struct AdminEnv {
    pub server: String,
    pub api_key: String,
    pub checksum: String,
}

pub fn read_admin_env(path: &Path) -> Option<AdminEnv> {
    let text = std::fs::read_to_string(path).ok()?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
    };
    Some(AdminEnv {
        server: get("CORRAL_SERVER")?,
        api_key: get("CORRAL_API_KEY")?,
        checksum: get("CORRAL_CA_CHECKSUM")?,
    })
}

/// A `corral` command (in the namespace called `ns`, if any) with none of the caller's CLI
/// variables (each test says which server it talks to) and `info` logs.
pub fn corral_command(bin: &Path, ns: Option<&str>) -> Command {
    let mut cmd = match ns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    cmd.env_remove("CORRAL_SERVER")
        .env_remove("CORRAL_API_KEY")
        .env_remove("CORRAL_CA_CHECKSUM")
        .env("CORRAL_LOG", "info");
    cmd
}

/// Waits until a server process has bootstrapped (it binds its port before writing admin.env,
/// so an open port alone is not enough); fails at once if it exits.
#[track_caller]
pub fn wait_for_server(proc: &mut Proc) {
    wait_until(Duration::from_secs(30), "the server to start", || {
        assert!(proc.running(), "the server exited:\n{}", proc.log_text());
        proc.log_text().contains("is running")
    });
}

/// A `corral server` in a namespace, listening on the namespace's address, port
/// [`SERVER_PORT`]; its CLI runs in the same namespace. Stopped by process id on drop.
pub struct NsServer {
    bin: PathBuf,
    ns_name: String,
    ip: String,
    dir: PathBuf,
    extra: Vec<String>,
    proc: Option<Proc>,
    starts: u32,
    pub env: AdminEnv,
}

impl NsServer {
    /// Starts the server with its data in `dir` and extra arguments `extra`; returns once it
    /// runs.
    #[track_caller]
    pub fn start(bin: &Path, ns: &Netns, dir: &Path, extra: &[&str]) -> NsServer {
        let mut s = NsServer {
            bin: bin.to_owned(),
            ns_name: ns.name().to_owned(),
            ip: ns.ip().to_owned(),
            dir: dir.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            proc: None,
            starts: 0,
            env: AdminEnv::default(),
        };
        s.start_again();
        s
    }

    /// `https://IP:8443`.
    pub fn url(&self) -> String {
        format!("https://{}:{SERVER_PORT}", self.ip)
    }

    fn command(&self) -> Command {
        corral_command(&self.bin, Some(&self.ns_name))
    }

    /// Starts the server (again, after [`NsServer::stop`]) and waits until it runs.
    #[track_caller]
    pub fn start_again(&mut self) {
        assert!(self.proc.is_none(), "the server already runs");
        std::fs::create_dir_all(&self.dir)
            .unwrap_or_else(|e| panic!("{}: {e}", self.dir.display()));
        self.starts += 1;
        let listen = format!("{}:{SERVER_PORT}", self.ip);
        let mut cmd = self.command();
        cmd.arg("server")
            .arg("--listen")
            .arg(&listen)
            .arg("--advertise-url")
            .arg(self.url())
            .arg("--data-dir")
            .arg(&self.dir)
            .args(&self.extra);
        let log = self.dir.join(format!("server-{}.log", self.starts));
        let mut proc = Proc::spawn(cmd, log);
        wait_for_server(&mut proc);
        self.env = read_admin_env(&self.dir.join("admin.env")).expect("admin.env");
        self.proc = Some(proc);
    }

    /// Stops the server (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// The log of its latest start.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    /// Runs the CLI in the server's namespace with admin.env's variables.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .env("CORRAL_SERVER", &self.env.server)
            .env("CORRAL_API_KEY", &self.env.api_key)
            .env("CORRAL_CA_CHECKSUM", &self.env.checksum)
            .output()
            .unwrap_or_else(|e| panic!("running corral: {e}"))
    }

    /// The server's `/metrics`, fetched with curl from its namespace (pinned to its CA).
    #[track_caller]
    pub fn metrics_text(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns_name,
                "curl",
                "-sS",
                "--fail",
                "--cacert",
            ])
            .arg(self.dir.join("pki/ca.pem"))
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", self.env.api_key))
            .arg(format!("{}/metrics", self.url()))
            .output()
            .unwrap_or_else(|e| panic!("running curl: {e}"));
        assert!(
            out.status.success(),
            "GET /metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A long-running CLI command (`corral bench connect …`) in the server's namespace, as
    /// the admin, logging to `log`.
    pub fn spawn_cli(&self, args: &[&str], log: &Path) -> Proc {
        let mut cmd = self.command();
        cmd.args(args)
            .env("CORRAL_SERVER", &self.env.server)
            .env("CORRAL_API_KEY", &self.env.api_key)
            .env("CORRAL_CA_CHECKSUM", &self.env.checksum);
        Proc::spawn(cmd, log)
    }

    /// [`NsServer::cli`] with `input` on standard input (secrets are never arguments).
    pub fn cli_with_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .env("CORRAL_SERVER", &self.env.server)
            .env("CORRAL_API_KEY", &self.env.api_key)
            .env("CORRAL_CA_CHECKSUM", &self.env.checksum)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running corral: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .unwrap_or_else(|e| panic!("writing corral's standard input: {e}"));
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("running corral: {e}"))
    }

    /// [`NsServer::cli`]; fails the test if the command fails. Returns stdout.
    #[track_caller]
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "corral {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`NsServer::cli_ok`] with `-o json` (before a `--` that starts a container command).
    #[track_caller]
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        let at = a.iter().position(|x| *x == "--").unwrap_or(a.len());
        a.splice(at..at, ["-o", "json"]);
        let text = self.cli_ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("corral {args:?}: {e}: {text}"))
    }

    /// A registration token's secret.
    #[track_caller]
    pub fn token(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "create"];
        args.extend(extra);
        let v = self.cli_json(&args);
        v["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {v}"))
            .to_owned()
    }

    /// `host ls`, as JSON objects (none if the server does not answer).
    pub fn hosts(&self) -> Vec<Value> {
        let out = self.cli(&["host", "ls", "-o", "json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// The state of host `name` (`active`, `disconnected`…).
    pub fn host_state(&self, name: &str) -> Option<String> {
        self.hosts()
            .into_iter()
            .find(|h| h["name"] == name)
            .and_then(|h| h["state"].as_str().map(str::to_owned))
    }

    /// Whether host `name` is connected and reports its Docker engine available.
    pub fn host_available(&self, name: &str) -> bool {
        self.hosts().into_iter().any(|h| {
            h["name"] == name && h["state"] == "active" && h["docker"]["state"] == "available"
        })
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }
}

/// How to start one `corral agent`.
#[derive(Clone, Copy, Debug)]
pub struct AgentSpec<'a> {
    pub name: &'a str,
    pub state_dir: &'a Path,
    /// Registers the agent; without one, it uses the credential in its state.
    pub token: Option<&'a str>,
    pub extra: &'a [&'a str],
    pub log: &'a Path,
}

/// Starts `corral agent` in `ns`, dialing `server`.
#[track_caller]
pub fn spawn_agent(bin: &Path, ns: &Netns, server: &NsServer, spec: AgentSpec<'_>) -> Proc {
    std::fs::create_dir_all(spec.state_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", spec.state_dir.display()));
    let mut cmd = corral_command(bin, Some(ns.name()));
    cmd.arg("agent")
        .args(["--server", &server.url()])
        .args(["--ca-checksum", &server.env.checksum])
        .arg("--state-dir")
        .arg(spec.state_dir)
        .args(["--name", spec.name])
        .args(spec.extra);
    if let Some(t) = spec.token {
        cmd.args(["--token", t]);
    }
    Proc::spawn(cmd, spec.log)
}

/// What [`Lab::up`] builds.
#[derive(Clone, Debug)]
pub struct LabConfig<'a> {
    /// The corral binary.
    pub bin: &'a Path,
    /// Hosts `h1`…`hN`.
    pub hosts: usize,
    /// Extra arguments for `corral server`.
    pub server_args: &'a [&'a str],
    /// How each host's dockerd treats its namespace's iptables.
    pub docker_firewall: DockerFirewall,
    /// Arguments to `corral env set-overlay default …`, run before any host joins (e.g.
    /// `["--host-subnet", "/28"]`); empty: the defaults.
    pub overlay: &'a [&'a str],
}

/// One lab host: its agent (dropped first) and its engine.
struct LabHost {
    name: String,
    agent: Option<Proc>,
    agent_starts: u32,
    dockerd: Dockerd,
}

/// A server (namespace `srv`) and hosts `h1`…`hN`, each in its own namespace on one
/// [`Network`], every host with its own [`Dockerd`] (holding the test image) and a `corral
/// agent` (label `lab=yes`) that dials the server across the bridge. Everything lives under a
/// temporary directory; on drop the agents, the engines and the server are stopped by process
/// id, then the network goes, then the directory.
pub struct Lab {
    // Fields drop in this order: processes before the namespaces they run in.
    hosts: Vec<LabHost>,
    pub server: NsServer,
    pub net: Network,
    bin: PathBuf,
    token: String,
    dir: tempfile::TempDir,
}

impl Lab {
    #[track_caller]
    pub fn up(config: LabConfig<'_>) -> Lab {
        assert!((1..=20).contains(&config.hosts), "a lab has 1 to 20 hosts");
        crate::require::tool("busybox", "busybox-static");
        let dir = crate::temp_dir("corral-lab-");
        let mut net = Network::new();
        net.add("srv");
        let names: Vec<String> = (1..=config.hosts).map(|i| format!("h{i}")).collect();
        let mut engines = Vec::new();
        for name in &names {
            let ns = net.add(name);
            engines.push(Dockerd::spawn(
                ns,
                &dir.path().join(name).join("docker"),
                config.docker_firewall,
            ));
        }
        let server = NsServer::start(
            config.bin,
            net.ns("srv"),
            &dir.path().join("server"),
            config.server_args,
        );
        if !config.overlay.is_empty() {
            let mut args = vec!["env", "set-overlay", "default"];
            args.extend_from_slice(config.overlay);
            server.cli_ok(&args);
        }
        let token = server.token(&["--ttl", "1h"]);
        let mut lab = Lab {
            hosts: Vec::new(),
            server,
            net,
            bin: config.bin.to_owned(),
            token,
            dir,
        };
        for (name, mut dockerd) in names.iter().zip(engines) {
            dockerd.wait_ready();
            dockerd.load_test_image();
            lab.hosts.push(LabHost {
                name: name.clone(),
                agent: None,
                agent_starts: 0,
                dockerd,
            });
        }
        for name in &names {
            let token = lab.token.clone();
            lab.start_agent_with(name, Some(&token));
        }
        for name in &names {
            wait_until(
                Duration::from_secs(30),
                &format!("host {name} to report Docker"),
                || lab.server.host_available(name),
            );
        }
        lab
    }

    /// The lab's directory (logs, data, state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The namespace of `srv` or a host.
    #[track_caller]
    pub fn ns(&self, name: &str) -> &Netns {
        self.net.ns(name)
    }

    #[track_caller]
    fn host(&self, name: &str) -> &LabHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no lab host {name}"))
    }

    #[track_caller]
    fn host_mut(&mut self, name: &str) -> &mut LabHost {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no lab host {name}"))
    }

    /// Host `name`'s engine.
    #[track_caller]
    pub fn dockerd(&self, name: &str) -> &Dockerd {
        &self.host(name).dockerd
    }

    /// Runs the CLI in the server's namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.server.cli(args)
    }

    /// Stops host `name`'s agent (its engine keeps running).
    #[track_caller]
    pub fn stop_agent(&mut self, name: &str) {
        if let Some(mut agent) = self.host_mut(name).agent.take() {
            agent.stop();
        }
    }

    /// Starts host `name`'s agent again, with the state it has.
    #[track_caller]
    pub fn start_agent(&mut self, name: &str) {
        self.start_agent_with(name, None);
    }

    #[track_caller]
    fn start_agent_with(&mut self, name: &str, token: Option<&str>) {
        let dir = self.dir.path().join(name);
        let host = self.hosts.iter().position(|h| h.name == name);
        let host = &self.hosts[host.unwrap_or_else(|| panic!("no lab host {name}"))];
        assert!(host.agent.is_none(), "{name}'s agent already runs");
        let docker_host = host.dockerd.host();
        let log = dir.join(format!("agent-{}.log", host.agent_starts + 1));
        let agent = spawn_agent(
            &self.bin,
            self.net.ns(name),
            &self.server,
            AgentSpec {
                name,
                state_dir: &dir.join("agent"),
                token,
                extra: &["--docker-host", &docker_host, "--label", "lab=yes"],
                log: &log,
            },
        );
        let host = self.host_mut(name);
        host.agent_starts += 1;
        host.agent = Some(agent);
    }

    /// The last lines of every log of the lab (server, agents, engines), for a failed test.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut logs = Vec::new();
        collect_logs(self.dir.path(), &mut logs);
        logs.sort();
        let mut out = String::new();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!("---- {}\n{}\n", log.display(), tail.join("\n")));
        }
        out
    }

    /// Starts a capture on the lab's bridge into `file` in the lab's directory.
    #[track_caller]
    pub fn capture(&self, file: &str, filter: &[&str]) -> Capture {
        Capture::start(None, self.net.bridge(), &self.dir.path().join(file), filter)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the lab's logs, as the test failed:\n{}",
                self.log_tails(30)
            );
        }
    }
}

/// `*.log` files under `dir` (not inside engines' data roots).
fn collect_logs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            if !matches!(e.file_name().to_str(), Some("data" | "exec")) {
                collect_logs(&path, out);
            }
        } else if path.extension().is_some_and(|x| x == "log") {
            out.push(path);
        }
    }
}
