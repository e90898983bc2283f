//! A real LDAP directory for tests: Debian's `slapd` on loopback, with its own configuration,
//! database, throwaway CA and server certificate under a directory of the test's, serving
//! LDAPS on one port and LDAP (for StartTLS, and for seeding with `ldapadd`) on another. The
//! tree is `dc=corral,dc=test` with `ou=people` (`inetOrgPerson` users, `uid=NAME`) and
//! `ou=groups` (`groupOfNames`). On drop it is stopped by process id.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::proc::Proc;
use crate::require;

pub const SUFFIX: &str = "dc=corral,dc=test";
const ROOT_DN: &str = "cn=admin,dc=corral,dc=test";

pub struct Slapd {
    proc: Option<Proc>,
    dir: PathBuf,
    pub ldaps_port: u16,
    pub ldap_port: u16,
    root_password: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

impl Slapd {
    /// Starts slapd with everything under `dir`; returns once it answers and the base entries
    /// (`ou=people`, `ou=groups`) exist.
    #[track_caller]
    pub fn start(dir: &Path) -> Slapd {
        require::tool("slapd", "slapd");
        require::tool("ldapadd", "ldap-utils");
        require::tool("openssl", "openssl");
        let dir = dir.to_owned();
        std::fs::create_dir_all(dir.join("db"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        crate::certs::ca_and_server(&dir.join("tls"), "127.0.0.1", "corral-test directory CA");
        let root_password = format!("root-{}", std::process::id());
        let p = |f: &str| dir.join(f).display().to_string();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             pidfile {pid}\n\
             TLSCACertificateFile {ca}\n\
             TLSCertificateFile {crt}\n\
             TLSCertificateKeyFile {key}\n\
             database mdb\n\
             maxsize 104857600\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"{ROOT_DN}\"\n\
             rootpw {root_password}\n\
             directory {db}\n",
            pid = p("slapd.pid"),
            ca = p("tls/ca.crt"),
            crt = p("tls/server.crt"),
            key = p("tls/server.key"),
            db = p("db"),
        );
        std::fs::write(dir.join("slapd.conf"), conf).expect("slapd.conf");
        let conf = p("slapd.conf");
        let mut s = Slapd {
            proc: None,
            dir: dir.clone(),
            ldaps_port: free_port(),
            ldap_port: free_port(),
            root_password,
        };
        let urls = format!(
            "ldaps://127.0.0.1:{}/ ldap://127.0.0.1:{}/",
            s.ldaps_port, s.ldap_port
        );
        // -d: stay in the foreground (and so be stopped by this process id).
        s.proc = Some(Proc::spawn_program(
            "slapd",
            &["-f", &conf, "-h", &urls, "-d", "0"],
            s.dir.join("slapd.log"),
            &[],
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let base = format!(
                "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: corral test\ndc: corral\n\n\
                 dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
                 dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n"
            );
            if s.try_ldif("ldapadd", &base).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "slapd did not come up: {}",
                s.proc.as_ref().map(Proc::log_text).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// The CA the directory's certificate chains to (PEM file).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("tls/ca.crt")
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    pub fn ldap_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap_port)
    }

    /// `uid={user},ou=people,dc=corral,dc=test`.
    pub fn user_dn_template() -> String {
        format!("uid={{user}},ou=people,{SUFFIX}")
    }

    pub fn group_base() -> String {
        format!("ou=groups,{SUFFIX}")
    }

    fn try_ldif(&self, tool: &str, ldif: &str) -> Result<(), String> {
        let mut child = Command::new(tool)
            .args([
                "-x",
                "-H",
                &self.ldap_url(),
                "-D",
                ROOT_DN,
                "-w",
                &self.root_password,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(ldif.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    #[track_caller]
    fn ldif(&self, tool: &str, ldif: &str) {
        if let Err(e) = self.try_ldif(tool, ldif) {
            panic!("{tool}: {e}\n{ldif}");
        }
    }

    /// A user `uid=NAME` with this password.
    #[track_caller]
    pub fn add_user(&self, name: &str, password: &str) {
        self.ldif(
            "ldapadd",
            &format!(
                "dn: uid={name},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {name}\ncn: {name}\nsn: {name}\nuserPassword: {password}\n"
            ),
        );
    }

    /// A group `cn=NAME` whose members are these users.
    #[track_caller]
    pub fn add_group(&self, name: &str, members: &[&str]) {
        let mut ldif =
            format!("dn: cn={name},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {name}\n");
        for m in members {
            ldif.push_str(&format!("member: uid={m},ou=people,{SUFFIX}\n"));
        }
        self.ldif("ldapadd", &ldif);
    }

    /// Takes a user out of a group.
    #[track_caller]
    pub fn remove_member(&self, group: &str, user: &str) {
        self.ldif(
            "ldapmodify",
            &format!(
                "dn: cn={group},ou=groups,{SUFFIX}\nchangetype: modify\ndelete: member\nmember: uid={user},ou=people,{SUFFIX}\n"
            ),
        );
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }
}
