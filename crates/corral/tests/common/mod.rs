//! Test harness: real `corral server` and `corral agent` processes on loopback, each in its own
//! temporary directory, stopped by process id when the test ends. Processes, waits and
//! prerequisites come from `corral-testkit`; tests in network namespaces use its labs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

// Each test file uses some of these.
#[allow(unused_imports)]
pub use corral_testkit::require::TEST_IMAGE as IMAGE;
#[allow(unused_imports)]
pub use corral_testkit::{AdminEnv, Proc, read_admin_env, require, wait_for_server, wait_until};

/// A temporary directory for one test, removed when dropped.
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("corral-test-")
        .tempdir()
        .expect("temp dir")
}

/// A fresh, well-formed host credential (what an agent generates).
pub fn credential() -> String {
    corral_proto::secret::format_secret(
        corral_proto::secret::SecretKind::HostCredential,
        &corral_agent::state::random_bytes::<32>(),
    )
}

/// A dialer pinned to `server`'s CA, as an agent has it.
pub fn pinned_dialer(server: &Server) -> corral_agent::Dialer {
    corral_tls::install_default_provider();
    corral_agent::Dialer::new(
        &server.url(),
        corral_tls::CaChecksum::parse(&server.env.checksum).unwrap(),
    )
    .unwrap()
}

/// An agent speaking the protocol from the test itself: says hello with `auth` and `facts`
/// and returns the tunnel once the server has welcomed it.
pub async fn dial_agent(
    server: &Server,
    auth: corral_proto::Auth,
    facts: corral_proto::HostFacts,
) -> corral_agent::Tunnel {
    let hello = corral_agent::dial::hello(auth, facts);
    pinned_dialer(server).connect(hello).await.unwrap().0
}

pub fn corral_bin() -> &'static str {
    env!("CARGO_BIN_EXE_corral")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

/// Starts `corral ARGS…` (none of the caller's CLI variables, `info` logs) as a [`Proc`].
pub fn spawn_corral(args: &[&str], log: PathBuf, envs: &[(&str, &str)]) -> Proc {
    let mut cmd = corral_testkit::corral_command(Path::new(corral_bin()), None);
    cmd.args(args).envs(envs.iter().copied());
    Proc::spawn(cmd, log)
}

pub struct Server {
    pub dir: PathBuf,
    pub port: u16,
    pub extra: Vec<String>,
    pub proc: Option<Proc>,
    pub env: AdminEnv,
    starts: u32,
    /// The server's PostgreSQL, when the suite runs on that datastore (see [`on_postgres`]);
    /// declared after `proc`, so it stops after the server.
    pub postgres: Option<corral_testkit::Postgres>,
    /// The datastore URL the server is started with (`CORRAL_DATASTORE`), if any.
    pub datastore: Option<String>,
}

/// Whether this run keeps the servers' datastores in PostgreSQL: `CORRAL_TEST_DATASTORE=postgres`
/// (`scripts/test.sh` runs the control-plane, container and stack tests a second time so).
/// Each [`Server`] then gets a PostgreSQL cluster of its own (TLS, verify-full) and is started
/// with `CORRAL_DATASTORE`; any other value fails the test.
pub fn on_postgres() -> bool {
    match std::env::var("CORRAL_TEST_DATASTORE").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("CORRAL_TEST_DATASTORE={other:?}: it is sqlite or postgres"),
    }
}

pub const FAST_HEARTBEATS: &[&str] = &["--heartbeat-interval", "1s", "--dead-after", "3s"];

impl Server {
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::start_on(dir, free_port(), extra)
    }

    /// A server whose datastore is the PostgreSQL database at `url`.
    pub fn start_on_datastore(dir: &Path, url: &str, extra: &[&str]) -> Server {
        Server::new(dir, free_port(), extra, Some(url.to_owned()))
    }

    pub fn start_on(dir: &Path, port: u16, extra: &[&str]) -> Server {
        Server::new(dir, port, extra, None)
    }

    fn new(dir: &Path, port: u16, extra: &[&str], datastore: Option<String>) -> Server {
        let mut s = Server {
            dir: dir.to_owned(),
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            proc: None,
            env: AdminEnv {
                server: String::new(),
                api_key: String::new(),
                checksum: String::new(),
            },
            starts: 0,
            postgres: None,
            datastore,
        };
        s.launch();
        s
    }

    /// `GET /metrics` with the admin key, as a scraper would (curl, the server's CA).
    pub fn metrics_text(&self) -> String {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--cacert",
                self.dir.join("pki/ca.pem").to_str().unwrap(),
                "-H",
                &format!("Authorization: Bearer {}", self.env.api_key),
                &format!("{}/metrics", self.url()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Everything the datastore holds, to search for what must not be there: the SQLite file
    /// and its write-ahead log, or a dump of the server's PostgreSQL database.
    pub fn datastore_bytes(&self) -> Vec<u8> {
        match &self.postgres {
            Some(pg) => pg.dump("corral").into_bytes(),
            None => {
                let mut bytes = std::fs::read(self.dir.join("corral.db")).expect("corral.db");
                bytes.extend(std::fs::read(self.dir.join("corral.db-wal")).unwrap_or_default());
                bytes
            }
        }
    }

    /// Runs one SQL statement on the datastore behind the server's back (with the server
    /// stopped, for a SQLite file), as damage or an earlier version would have written it.
    pub fn datastore_exec(&self, sql: &str) {
        match &self.postgres {
            Some(pg) => {
                pg.psql_in("corral", sql);
            }
            None => self::sql(&self.dir.join("corral.db"), sql),
        }
    }

    fn launch(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("data dir");
        self.starts += 1;
        let listen = format!("127.0.0.1:{}", self.port);
        let data = self.dir.display().to_string();
        let mut args: Vec<&str> = vec!["server", "--data-dir", &data];
        if !self.extra.iter().any(|a| a == "--listen") {
            args.extend(["--listen", &listen]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        let log = self.dir.join(format!("server-{}.log", self.starts));
        if on_postgres() && self.datastore.is_none() {
            let pg = corral_testkit::Postgres::start();
            self.datastore = Some(pg.database("corral"));
            self.postgres = Some(pg);
        }
        let envs: Vec<(&str, &str)> = self
            .datastore
            .as_deref()
            .map(|u| ("CORRAL_DATASTORE", u))
            .into_iter()
            .collect();
        let mut proc = spawn_corral(&args, log, &envs);
        wait_for_server(&mut proc);
        self.env = read_admin_env(&self.dir.join("admin.env")).expect("admin.env");
        self.proc = Some(proc);
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn start_again(&mut self) {
        assert!(self.proc.is_none());
        self.launch();
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    /// Runs a CLI verb against this server with admin.env's variables.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(args, &self.env.api_key)
    }

    pub fn cli_with(&self, args: &[&str], api_key: &str) -> Output {
        Command::new(corral_bin())
            .args(args)
            .env("CORRAL_SERVER", &self.env.server)
            .env("CORRAL_API_KEY", api_key)
            .env("CORRAL_CA_CHECKSUM", &self.env.checksum)
            .output()
            .expect("run corral")
    }

    /// The CLI as the admin, with `stdin` on standard input.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut cmd = Command::new(corral_bin());
        cmd.args(args)
            .env("CORRAL_SERVER", &self.env.server)
            .env("CORRAL_API_KEY", &self.env.api_key)
            .env("CORRAL_CA_CHECKSUM", &self.env.checksum);
        with_stdin(cmd, stdin)
    }

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

    pub fn cli_json(&self, args: &[&str]) -> Value {
        // `-o json` goes before a `--` that starts a container command.
        let mut a = args.to_vec();
        let at = a.iter().position(|x| *x == "--").unwrap_or(a.len());
        a.splice(at..at, ["-o", "json"]);
        serde_json::from_str(&self.cli_ok(&a)).expect("JSON output")
    }

    pub fn hosts(&self) -> Vec<Value> {
        self.cli_json(&["host", "ls"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn host_state(&self, name: &str) -> Option<String> {
        self.hosts()
            .into_iter()
            .find(|h| h["name"] == name)
            .and_then(|h| h["state"].as_str().map(str::to_owned))
    }

    /// Creates a token; returns (id, secret).
    pub fn token(&self, extra: &[&str]) -> (String, String) {
        let mut args = vec!["token", "create"];
        args.extend(extra);
        let v = self.cli_json(&args);
        (
            v["id"].as_str().expect("id").to_owned(),
            v["token"].as_str().expect("token").to_owned(),
        )
    }

    pub fn events(&self) -> Vec<Value> {
        self.cli_json(&["events", "--limit", "1000"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        // On PostgreSQL, a statement the database refused is a query written for SQLite only
        // (a function, a type, two statements in one): whatever the test checked, it fails.
        if self.postgres.is_some() && !std::thread::panicking() {
            for n in 1..=self.starts {
                let log = std::fs::read_to_string(self.dir.join(format!("server-{n}.log")))
                    .unwrap_or_default();
                if let Some(line) = log
                    .lines()
                    .find(|l| l.contains("error returned from database"))
                {
                    panic!("the server's PostgreSQL refused a statement:\n{line}");
                }
            }
        }
    }
}

/// Starts `corral agent` with a fresh or existing state dir.
pub fn start_agent(
    server: &Server,
    state_dir: &Path,
    name: &str,
    token: Option<&str>,
    extra: &[&str],
) -> Proc {
    std::fs::create_dir_all(state_dir).expect("state dir");
    let url = server.url();
    let sd = state_dir.display().to_string();
    let mut args: Vec<&str> = vec![
        "agent",
        "--server",
        &url,
        "--ca-checksum",
        &server.env.checksum,
        "--state-dir",
        &sd,
        "--name",
        name,
        // Several agents share this machine in tests: none joins the overlay (a TUN device
        // and routes are per machine; tests/lab.rs gives each host a namespace of its own for
        // that), and so none binds an overlay socket either (the port would be a free one).
        "--overlay-port",
        "0",
        "--no-overlay",
    ];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    args.extend(extra);
    let log = state_dir.parent().unwrap_or(state_dir).join(format!(
        "agent-{name}-{}.log",
        std::process::id() ^ rand_suffix()
    ));
    spawn_corral(&args, log, &[])
}

/// Starts `corral agent` in the overlay (no `--no-overlay`; a free overlay port) with a fresh
/// state dir `dir`, its log beside it. `extra` says which Docker engine and labels.
pub fn start_overlay_agent(
    server: &Server,
    dir: &Path,
    name: &str,
    token: &str,
    extra: &[&str],
) -> Proc {
    std::fs::create_dir_all(dir).expect("state dir");
    let url = server.url();
    let sd = dir.display().to_string();
    let mut args: Vec<&str> = vec![
        "agent",
        "--server",
        &url,
        "--ca-checksum",
        &server.env.checksum,
        "--state-dir",
        &sd,
        "--name",
        name,
        "--token",
        token,
        "--overlay-port",
        "0",
    ];
    args.extend(extra);
    spawn_corral(&args, dir.with_extension("log"), &[])
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Inodes of this process's sockets that are listening TCP sockets (IPv4 or IPv6).
pub fn listening_tcp_sockets(pid: u32) -> Vec<String> {
    let mut inodes = Vec::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.display().to_string();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.push(inode.to_owned());
                }
            }
        }
    }
    let mut listening = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // Columns: sl local rem st ... uid timeout inode
            if cols.len() > 9 && cols[3] == "0A" && inodes.iter().any(|i| i == cols[9]) {
                listening.push(format!("{table} {}", cols[1]));
            }
        }
    }
    listening
}

/// Number of sockets (of any kind) the process holds.
pub fn socket_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .map(|t| t.display().to_string().starts_with("socket:"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

/// A finished command's standard output and error, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the docker CLI against the machine's dockerd.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker")
}

/// The machine's dockerd answers and holds the test image; otherwise the test fails saying so.
#[track_caller]
pub fn require_docker() {
    require::docker_with_test_image();
}

/// `docker inspect` of one container.
pub fn inspect(id: &str) -> Value {
    let out = docker(&["inspect", id]);
    assert!(out.status.success(), "docker inspect {id}");
    serde_json::from_slice::<Value>(&out.stdout).expect("inspect JSON")[0].clone()
}

/// An HTTP GET to 127.0.0.1:PORT with busybox nc (the reliable probe on these machines).
pub fn http_get(port: u16) -> String {
    let out = Command::new("busybox")
        .args([
            "sh",
            "-c",
            &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 127.0.0.1 {port}"),
        ])
        .output()
        .expect("busybox");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs SQL on a stopped server's datastore (python3's sqlite3).
pub fn sql(db: &Path, statement: &str) {
    let script = format!(
        "import sqlite3; c = sqlite3.connect({:?}); c.execute({statement:?}); c.commit()",
        db.display().to_string()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 (with sqlite3) is needed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `corral ARGS…` without the admin's variables: only what `corral login` saved in `config`
/// (plus `envs`), with `stdin` on standard input.
pub fn as_user(config: &Path, args: &[&str], stdin: &str, envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(corral_bin());
    cmd.args(args)
        .env_remove("CORRAL_SERVER")
        .env_remove("CORRAL_API_KEY")
        .env_remove("CORRAL_CA_CHECKSUM")
        .env("CORRAL_CONFIG", config)
        .envs(envs.iter().copied());
    with_stdin(cmd, stdin)
}

/// Runs `cmd` with `stdin` on its standard input, collecting its output.
pub fn with_stdin(mut cmd: Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run corral");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("run corral")
}

/// `corral login` as `user`, saving into `config`.
pub fn login(server: &Server, config: &Path, user: &str, password: &str) -> Output {
    login_with(server, config, user, password, &[])
}

/// `corral login` as `user` with more flags (`--env prod`), saving into `config`.
pub fn login_with(
    server: &Server,
    config: &Path,
    user: &str,
    password: &str,
    extra: &[&str],
) -> Output {
    let url = server.url();
    let mut args = vec![
        "login",
        "--server",
        &url,
        "--ca-checksum",
        &server.env.checksum,
        "--user",
        user,
        "--password-stdin",
    ];
    args.extend(extra);
    as_user(config, &args, &format!("{password}\n"), &[])
}

/// Removes whatever a test's stack left in the machine's Docker (containers, network,
/// volumes), by label, when dropped: declared before the server and agents, it runs after
/// they are gone, so nothing recreates what it removes.
pub struct StackCleanup(pub String);

impl Drop for StackCleanup {
    fn drop(&mut self) {
        let label = format!("label=io.corral.stack={}", self.0);
        let out = docker(&["ps", "-aq", "--no-trunc", "--filter", &label]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = docker(&["rm", "-f", "-v", id]);
        }
        let _ = docker(&["network", "rm", &format!("corral_{}", self.0)]);
        let out = docker(&["volume", "ls", "-q", "--filter", &label]);
        for v in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = docker(&["volume", "rm", v]);
        }
    }
}

/// Copies a deployment's identity — `master.key` and its CA — from one data dir to a new one:
/// how a second server joins a deployment on one PostgreSQL datastore.
pub fn copy_identity(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("pki")).expect("pki dir");
    for f in ["master.key", "pki/ca.pem", "pki/ca-key.pem"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy the deployment's identity");
    }
}

/// The CLI against the server at `url` with `env`'s key and pin.
pub fn cli_to(url: &str, env: &AdminEnv, args: &[&str]) -> Output {
    Command::new(corral_bin())
        .args(args)
        .env("CORRAL_SERVER", url)
        .env("CORRAL_API_KEY", &env.api_key)
        .env("CORRAL_CA_CHECKSUM", &env.checksum)
        .output()
        .expect("run corral")
}

/// Waits for a server that lost the datastore's write lock to another to exit, and checks it
/// said why (it exits rather than act beside the new active server).
#[track_caller]
pub fn assert_fenced_exit(proc: &mut Proc) {
    let status = proc.wait_exit(std::time::Duration::from_secs(30));
    assert!(!status.success());
    let log = proc.log_text();
    assert!(
        log.contains("another corral server took over the datastore"),
        "{log}"
    );
}
