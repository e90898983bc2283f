//! A real private image registry for tests: Debian's `docker-registry` (distribution 2.8) in a
//! lab namespace, serving the registry API v2 on `IP:5000` over TLS (a throwaway CA made with
//! `openssl`, the server certificate naming the IP in its subject alternative names) with
//! htpasswd basic auth. No public registry is reachable from the test machines, so pull tests
//! push the local test image here first ([`Registry::push`]).
//!
//! Nothing on the machine trusts the CA: [`Registry::push`] installs it in
//! `/etc/docker/certs.d/HOST/` only for the push and removes it right after, so the product
//! under test meets an untrusted registry unless it installs the CA itself. On drop the
//! registry is stopped by process id, `/etc/docker/certs.d/HOST` goes (wherever it came from)
//! and so do the keys, the password file and the storage; the logs stay for the test's temporary
//! directory to take.
//!
//! In a [`crate::Lab`]: `lab.net.add("reg");` then
//! `Registry::start(lab.ns("reg"), &lab.dir().join("registry"))` (its logs then appear in
//! [`crate::Lab::log_tails`]); keep the registry in a variable declared after the lab, so it is
//! dropped before the lab's namespaces.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::dockerd::Dockerd;
use crate::netns::{Netns, run_ok};
use crate::proc::Proc;
use crate::require;

/// The registry's port on its namespace's address.
pub const REGISTRY_PORT: u16 = 5000;

/// The htpasswd user the registry knows.
const USERNAME: &str = "corral-test";

/// Where dockerd looks for the CA of a registry `HOST:PORT` (read on every connection, so a
/// file put there takes effect without restarting any engine).
const CERTS_D: &str = "/etc/docker/certs.d";

pub struct Registry {
    proc: Option<Proc>,
    starts: u32,
    ns_name: String,
    ip: String,
    dir: PathBuf,
    password: String,
}

impl Registry {
    /// Starts a registry in `ns` (which must be on a [`crate::Network`]: the registry listens on
    /// its address) with its certificates, password file, configuration, storage and logs under
    /// `dir`; returns once `https://IP:5000/v2/` answers 401.
    #[track_caller]
    pub fn start(ns: &Netns, dir: &Path) -> Registry {
        require::root("to run a registry in a network namespace");
        require::tool("docker-registry", "docker-registry");
        require::tool("openssl", "openssl");
        require::tool("htpasswd", "apache2-utils");
        require::tool("curl", "curl");
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut reg = Registry {
            proc: None,
            starts: 0,
            ns_name: ns.name().to_owned(),
            ip: ns.ip().to_owned(),
            dir: dir.to_owned(),
            password: fresh_password(),
        };
        reg.make_tls();
        reg.make_htpasswd();
        reg.write_config();
        reg.start_again();
        reg
    }

    /// `IP:5000`: the registry part of image references (`HOST/repo:tag`).
    pub fn host(&self) -> String {
        format!("{}:{REGISTRY_PORT}", self.ip)
    }

    /// `https://HOST` followed by `path` (e.g. `/v2/`).
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.host())
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// The CA certificate (PEM) the registry's certificate chains to.
    pub fn ca_path(&self) -> PathBuf {
        self.tls_dir().join("ca.crt")
    }

    /// The CA certificate, PEM.
    #[track_caller]
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_path())
            .unwrap_or_else(|e| panic!("{}: {e}", self.ca_path().display()))
    }

    pub fn username(&self) -> &str {
        USERNAME
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.yml")
    }

    fn htpasswd_path(&self) -> PathBuf {
        self.dir.join("htpasswd")
    }

    fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// `/etc/docker/certs.d/HOST`.
    fn certs_d(&self) -> PathBuf {
        Path::new(CERTS_D).join(self.host())
    }

    /// A throwaway CA and a server certificate for the registry's IP. The IP must be a
    /// subject alternative name: Go (dockerd, the registry) ignores the common name.
    #[track_caller]
    fn make_tls(&self) {
        crate::certs::ca_and_server(&self.tls_dir(), &self.ip, "corral-test registry CA");
    }

    /// The password file: one bcrypt entry (the only hash distribution accepts).
    #[track_caller]
    fn make_htpasswd(&self) {
        let line = run_ok("htpasswd", &["-Bbn", USERNAME, &self.password]);
        let path = self.htpasswd_path();
        std::fs::write(&path, line.trim_end().to_owned() + "\n")
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    #[track_caller]
    fn write_config(&self) {
        let tls = self.tls_dir();
        // `http.secret` is fixed so the registry does not warn about a random one, and upload
        // state would survive a restart. It is not the account's password: tests look for that
        // on disk and must find it nowhere.
        let secret = format!("http-{:x}", now_nanos());
        let config = format!(
            "version: 0.1
log:
  level: info
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: {host}
  secret: {secret}
  tls:
    certificate: {crt}
    key: {key}
auth:
  htpasswd:
    realm: corral-test-registry
    path: {htpasswd}
",
            storage = self.storage().display(),
            host = self.host(),
            secret = secret,
            crt = tls.join("server.crt").display(),
            key = tls.join("server.key").display(),
            htpasswd = self.htpasswd_path().display(),
        );
        let path = self.config_path();
        std::fs::write(&path, config).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Starts the registry (again, after [`Registry::stop`]: same address, storage and
    /// credentials) and waits until it answers 401 on `/v2/`.
    #[track_caller]
    pub fn start_again(&mut self) {
        assert!(self.proc.is_none(), "the registry already runs");
        self.starts += 1;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.ns_name))
            .arg("docker-registry")
            .arg("serve")
            .arg(self.config_path());
        let log = self.dir.join(format!("registry-{}.log", self.starts));
        let mut proc = Proc::spawn(cmd, log);
        // Bounded on the registry answering, not on a sleep: the first answer must be the 401
        // of basic auth (anything else means the configuration is not what it should be).
        let start = Instant::now();
        let code = loop {
            let code = self.v2_status();
            if code != "000" {
                break code;
            }
            if let Some(status) = proc.try_wait() {
                panic!(
                    "the registry exited ({status}); log:\n{}",
                    tail(&proc.log_text(), 40)
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the registry did not answer on {} within 30 s; log:\n{}",
                self.url("/v2/"),
                tail(&proc.log_text(), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(
            code,
            "401",
            "the registry answered {} with {code}, not 401; log:\n{}",
            self.url("/v2/"),
            tail(&proc.log_text(), 40)
        );
        self.proc = Some(proc);
    }

    /// The HTTP status of an anonymous `GET /v2/`, from the registry's namespace, trusting the
    /// CA; `000` if nothing answers.
    fn v2_status(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns_name,
                "curl",
                "-s",
                "-o",
                "/dev/null",
            ])
            .args(["--max-time", "5", "-w", "%{http_code}", "--cacert"])
            .arg(self.ca_path())
            .arg(self.url("/v2/"))
            .output()
            .unwrap_or_else(|e| panic!("running curl: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `curl -sS --max-time 10 --cacert CA ARGS…` run in `ns`: a client that trusts the registry.
    #[track_caller]
    pub fn curl(&self, ns: &Netns, args: &[&str]) -> Output {
        ns.command("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(self.ca_path())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running curl in {}: {e}", ns.name()))
    }

    /// Stops the registry (SIGTERM, then SIGKILL): clients get "connection refused" until
    /// [`Registry::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// The log of its latest start.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    /// Pushes `local_image` (an image `dockerd` holds, e.g. [`require::TEST_IMAGE`]) to
    /// `HOST/repo_tag` and returns the manifest digest (`sha256:…`) the push reported. The
    /// engine keeps no `HOST/…` tag afterwards, so a later pull by the product really asks the
    /// registry.
    #[track_caller]
    pub fn push(&self, dockerd: &Dockerd, local_image: &str, repo_tag: &str) -> String {
        let target = format!("{}/{repo_tag}", self.host());
        dockerd.docker_ok(&["tag", local_image, &target]);
        self.push_tagged(dockerd, &target)
    }

    /// Builds an image that differs from [`require::TEST_IMAGE`] (and from every earlier build)
    /// by a file `/build-id`, pushes it to `HOST/repo_tag` and returns its manifest digest: the
    /// tag then names a new image, as after a release.
    #[track_caller]
    pub fn push_new_build(&self, dockerd: &Dockerd, repo_tag: &str) -> String {
        static BUILDS: AtomicU32 = AtomicU32::new(0);
        let target = format!("{}/{repo_tag}", self.host());
        let ctx = crate::temp_dir("corral-registry-build-");
        let id = format!(
            "{}-{}-{}\n",
            std::process::id(),
            BUILDS.fetch_add(1, Ordering::Relaxed),
            now_nanos()
        );
        std::fs::write(ctx.path().join("build-id"), id).expect("write build-id");
        std::fs::write(
            ctx.path().join("Dockerfile"),
            format!("FROM {}\nCOPY build-id /build-id\n", require::TEST_IMAGE),
        )
        .expect("write Dockerfile");
        // The classic builder: FROM a local image and COPY need no network and no running
        // container, and it is there on every engine (BuildKit needs buildx on newer CLIs).
        let out = Command::new("docker")
            .arg("-H")
            .arg(dockerd.host())
            .args(["build", "-q", "--network", "none", "-t", &target])
            .arg(ctx.path())
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .unwrap_or_else(|e| panic!("running docker build: {e}"));
        assert!(
            out.status.success(),
            "docker build of {target} on {}: {}{}",
            dockerd.host(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.push_tagged(dockerd, &target)
    }

    /// Pushes the tagged `target` with a login of its own, the CA trusted only meanwhile, then
    /// removes the tag.
    #[track_caller]
    fn push_tagged(&self, dockerd: &Dockerd, target: &str) -> String {
        let trust = TrustForPush::install(self.certs_d(), &self.ca_pem());
        // The CLI's configuration (where login stores the credentials) in a directory of its
        // own, removed after: no test leaves a login behind.
        let config = crate::temp_dir("corral-docker-config-");
        let docker = |args: &[&str]| {
            let mut cmd = Command::new("docker");
            cmd.arg("--config")
                .arg(config.path())
                .arg("-H")
                .arg(dockerd.host())
                .args(args);
            cmd
        };
        let mut login = docker(&["login", "-u", USERNAME, "--password-stdin", &self.host()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running docker login: {e}"));
        login
            .stdin
            .take()
            .expect("docker login's stdin")
            .write_all(self.password.as_bytes())
            .expect("writing the password to docker login");
        let out = login.wait_with_output().expect("docker login");
        assert!(
            out.status.success(),
            "docker login {} via {}: {}{}\nregistry log:\n{}",
            self.host(),
            dockerd.host(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 20)
        );
        let out = docker(&["push", target])
            .output()
            .unwrap_or_else(|e| panic!("running docker push: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "docker push {target} via {}: {stdout}{}\nregistry log:\n{}",
            dockerd.host(),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 20)
        );
        drop(trust);
        drop(config);
        dockerd.docker_ok(&["rmi", target]);
        // The last line reads `TAG: digest: sha256:… size: N`.
        stdout
            .lines()
            .find_map(|l| l.split_once("digest: ").map(|(_, rest)| rest))
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|d| d.starts_with("sha256:"))
            .unwrap_or_else(|| panic!("no digest in the output of docker push {target}:\n{stdout}"))
            .to_owned()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        // The product may have installed the CA for this address during the test.
        let _ = std::fs::remove_dir_all(self.certs_d());
        // Keys, credentials and images go; the logs stay with the caller's directory.
        let _ = std::fs::remove_dir_all(self.tls_dir());
        let _ = std::fs::remove_dir_all(self.storage());
        let _ = std::fs::remove_file(self.htpasswd_path());
        let _ = std::fs::remove_file(self.config_path());
    }
}

/// The registry's CA in `/etc/docker/certs.d/HOST/ca.crt` for the length of a push; on drop
/// (also when the push fails) the directory is as it was before: removed if it did not exist,
/// a `ca.crt` that was there (the product's) put back.
struct TrustForPush {
    dir: PathBuf,
    dir_existed: bool,
    previous: Option<Vec<u8>>,
}

impl TrustForPush {
    #[track_caller]
    fn install(dir: PathBuf, ca_pem: &str) -> TrustForPush {
        let dir_existed = dir.exists();
        let file = dir.join("ca.crt");
        let previous = std::fs::read(&file).ok();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let trust = TrustForPush {
            dir,
            dir_existed,
            previous,
        };
        std::fs::write(&file, ca_pem).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        trust
    }
}

impl Drop for TrustForPush {
    fn drop(&mut self) {
        let file = self.dir.join("ca.crt");
        match (&self.previous, self.dir_existed) {
            (Some(previous), _) => {
                let _ = std::fs::write(&file, previous);
            }
            (None, true) => {
                let _ = std::fs::remove_file(&file);
            }
            (None, false) => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}

/// A password no other run shares (the process id and the time, in hex): good enough for a
/// registry that lives for one test on a machine of the test's own.
fn fresh_password() -> String {
    format!("{:x}{:x}", std::process::id(), now_nanos())
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
