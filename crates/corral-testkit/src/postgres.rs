//! A real PostgreSQL for tests: Debian's PostgreSQL 15 run as the `postgres` user on loopback,
//! its cluster (`initdb`), a throwaway CA and server certificate and its socket under a
//! directory of its own, TLS only from the network (`hostssl`, SCRAM passwords; a plain
//! connection is rejected). A role `corral` owns the databases tests ask for. On drop it is
//! stopped by process id (a fast shutdown) and its directory removed.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::proc::{Proc, wait_until};
use crate::require;

/// Where Debian's PostgreSQL 15 has its programs.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Postgres {
    proc: Option<Proc>,
    /// The cluster, certificates and socket; the `postgres` user must be able to enter it,
    /// so it is not under a test's own (root's, 0700) directory.
    dir: tempfile::TempDir,
    pub port: u16,
    password: String,
    /// Extra `-c name=value` settings, kept for a restart.
    settings: Vec<String>,
    uid: u32,
    gid: u32,
    /// How many times it was started (names its log files).
    starts: u32,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

/// The uid and gid of the `postgres` user (made by Debian's `postgresql` package).
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .unwrap_or_else(|| {
            require::missing(
                "the `postgres` user",
                "run `bash scripts/test.sh`, which installs it, or `apt-get install -y postgresql`",
            )
        })
}

impl Postgres {
    /// Starts a new cluster with the settings a test suite wants (no fsync: nothing here has to
    /// survive a crash of the machine); returns once it accepts connections.
    #[track_caller]
    pub fn start() -> Postgres {
        Postgres::start_with(&[
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ])
    }

    /// Starts a new cluster with these `-c` settings (`name=value`), e.g. none at all for a
    /// benchmark that should see PostgreSQL's defaults.
    #[track_caller]
    pub fn start_with(settings: &[&str]) -> Postgres {
        if !Path::new(BIN).join("postgres").exists() {
            require::missing(
                &format!("PostgreSQL 15 ({BIN}/postgres)"),
                "run `bash scripts/test.sh`, which installs it, or `apt-get install -y postgresql`",
            );
        }
        require::tool("openssl", "openssl");
        let (uid, gid) = postgres_user();
        let dir = tempfile::Builder::new()
            .prefix("corral-pg-")
            .tempdir_in("/tmp")
            .expect("a directory for PostgreSQL");
        let root = dir.path();
        crate::certs::ca_and_server(&root.join("tls"), "127.0.0.1", "corral-test PostgreSQL CA");
        let password = format!("pw-{}-{}", std::process::id(), free_port());
        std::fs::write(root.join("pwfile"), format!("{password}\n")).unwrap();
        std::fs::create_dir(root.join("socket")).unwrap();
        // The postgres user owns all of it (the server refuses a key others can read).
        let chown = Command::new("chown")
            .args(["-R", &format!("{uid}:{gid}")])
            .arg(root)
            .status()
            .unwrap();
        assert!(chown.success(), "chown {}", root.display());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            root.join("tls/server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let initdb = Command::new(Path::new(BIN).join("initdb"))
            .args(["-D"])
            .arg(root.join("data"))
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-instructions",
            ])
            .arg(format!("--pwfile={}", root.join("pwfile").display()))
            .uid(uid)
            .gid(gid)
            .current_dir(root)
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        // TLS only over the network: a plain connection is turned away.
        std::fs::write(
            root.join("data/pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        let mut pg = Postgres {
            proc: None,
            port: free_port(),
            password,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            uid,
            gid,
            dir,
            starts: 0,
        };
        pg.launch();
        pg.psql(&format!(
            "CREATE ROLE corral LOGIN PASSWORD '{}'",
            pg.password
        ));
        pg
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self) {
        self.starts += 1;
        let p = |f: &str| self.root().join(f).display().to_string();
        let mut cmd = Command::new(Path::new(BIN).join("postgres"));
        cmd.args([
            "-D",
            &p("data"),
            "-p",
            &self.port.to_string(),
            "-k",
            &p("socket"),
        ])
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
        .args(["-c", &format!("ssl_cert_file={}", p("tls/server.crt"))])
        .args(["-c", &format!("ssl_key_file={}", p("tls/server.key"))])
        .args(["-c", &format!("ssl_ca_file={}", p("tls/ca.crt"))]);
        for s in &self.settings {
            cmd.args(["-c", s]);
        }
        cmd.uid(self.uid).gid(self.gid).current_dir(self.root());
        // In the cluster's directory, so it goes with it (a new file per start).
        let log = self.root().join(format!("postgres-{}.log", self.starts));
        let mut proc = Proc::spawn(cmd, log);
        let socket = p("socket");
        let port = self.port.to_string();
        wait_until(
            Duration::from_secs(60),
            "PostgreSQL accepting connections",
            || {
                assert!(proc.running(), "PostgreSQL exited:\n{}", proc.log_text());
                Command::new(Path::new(BIN).join("pg_isready"))
                    .args(["-q", "-h", &socket, "-p", &port])
                    .status()
                    .is_ok_and(|s| s.success())
            },
        );
        self.proc = Some(proc);
    }

    /// Runs SQL as the superuser over the local socket, in the `postgres` database; panics if
    /// it fails.
    #[track_caller]
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs SQL as the superuser in database `db`; returns the rows (unaligned, `|` between
    /// columns); panics if it fails.
    #[track_caller]
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.root().join("socket").display().to_string()])
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pg_dump` of database `db` (plain SQL), as the superuser.
    #[track_caller]
    pub fn dump(&self, db: &str) -> String {
        let out = Command::new(Path::new(BIN).join("pg_dump"))
            .args(["-h", &self.root().join("socket").display().to_string()])
            .args(["-p", &self.port.to_string(), "-U", "postgres", db])
            .output()
            .unwrap_or_else(|e| panic!("pg_dump: {e}"));
        assert!(
            out.status.success(),
            "pg_dump {db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new database owned by `corral`; returns its URL (TLS, verify-full against this
    /// cluster's CA, the password in it).
    #[track_caller]
    pub fn database(&self, name: &str) -> String {
        self.psql(&format!("CREATE DATABASE {name} OWNER corral"));
        self.url(name)
    }

    /// The URL of database `name` as `corral`, with TLS verified against this cluster's CA.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://corral:{}@127.0.0.1:{}/{name}?sslmode=verify-full&sslrootcert={}",
            self.password,
            self.port,
            self.ca().display()
        )
    }

    /// The CA the cluster's certificate is signed by.
    pub fn ca(&self) -> PathBuf {
        self.root().join("tls/ca.crt")
    }

    /// Stops the cluster (a fast shutdown: sessions are cut, as when a database fails over or
    /// its machine goes away); `start_again` brings it back on the same port.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal("INT");
            let start = std::time::Instant::now();
            while p.running() && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(50));
            }
            p.kill9();
        }
    }

    pub fn start_again(&mut self) {
        assert!(self.proc.is_none(), "PostgreSQL is running");
        self.launch();
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
