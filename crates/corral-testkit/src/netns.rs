//! Network namespaces, and networks of them joined by a bridge.
//!
//! Every name made here carries a tag unique to the test process and call (the process id in
//! hex and a counter), so parallel tests and leftovers of killed runs never collide; everything
//! is removed on drop by those names. The root namespace never gets an address: the machine's
//! own interface may sit on any documentation range, so each network takes a /24 of
//! 198.18.0.0/15 (reserved for benchmarks) that no interface of the root namespace uses and no
//! other network of the test process has, and keeps every address inside namespaces.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::proc::Proc;
use crate::require;

/// A tag unique to this process and call: the process id in hex, then a base-36 counter digit
/// (short: interface names have at most 15 bytes).
pub fn unique_tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) % 36;
    let digit = char::from_digit(n, 36).unwrap_or('z');
    format!("{:x}{digit}", std::process::id())
}

/// Runs a command; fails the test with its output if it fails. Returns stdout.
#[track_caller]
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command whose failure does not matter (cleanup).
fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

/// A network namespace of the test's own; deleted on drop (stop the processes in it first).
pub struct Netns {
    name: String,
    ip: Option<String>,
}

impl Netns {
    /// A fresh namespace with only its loopback interface, up.
    #[track_caller]
    pub fn new(label: &str) -> Netns {
        Netns::create(&format!("crl-{}-{label}", unique_tag()))
    }

    #[track_caller]
    fn create(name: &str) -> Netns {
        require::netns();
        run_ok("ip", &["netns", "add", name]);
        let ns = Netns {
            name: name.to_owned(),
            ip: None,
        };
        run_ok("ip", &["-n", name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/NAME`, for `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// The namespace's address on its [`Network`].
    #[track_caller]
    pub fn ip(&self) -> &str {
        self.ip
            .as_deref()
            .unwrap_or_else(|| panic!("namespace {} is on no network", self.name))
    }

    /// `ip netns exec NAME program`: the program runs in the namespace (with `/sys` of the
    /// namespace). `ip` execs the program, so the child's id is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// `nsenter --net=PATH program`: only the network namespace changes (dockerd needs the
    /// machine's mounts, which `ip netns exec` replaces).
    pub fn nsenter(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg(program);
        cmd
    }

    /// Runs `args` in the namespace and returns its output.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {args:?}: {e}", self.name))
    }

    /// Runs `args` in the namespace; fails the test if it fails. Returns stdout.
    #[track_caller]
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} in {} failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `args` in the namespace as a [`Proc`] logging to `log`.
    #[track_caller]
    pub fn spawn(&self, args: &[&str], log: impl Into<PathBuf>) -> Proc {
        let mut cmd = self.command(args[0]);
        cmd.args(&args[1..]);
        Proc::spawn(cmd, log)
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it opens live there (and
    /// stay there when handed back).
    #[track_caller]
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        enter_at(&self.path(), f)
    }

    /// A UDP socket bound in the namespace to an ephemeral port.
    #[track_caller]
    pub fn udp_socket(&self) -> UdpSocket {
        self.enter(|| UdpSocket::bind("0.0.0.0:0"))
            .unwrap_or_else(|e| panic!("a UDP socket in {}: {e}", self.name))
    }

    /// Whether a TCP connection from the namespace to `addr` opens within `timeout`.
    pub fn tcp_connects(&self, addr: SocketAddr, timeout: Duration) -> bool {
        self.enter(|| TcpStream::connect_timeout(&addr, timeout).is_ok())
    }

    /// A TCP service on `port` of every address of the namespace that accepts connections and
    /// closes them, until dropped.
    #[track_caller]
    pub fn tcp_sink(&self, port: u16) -> TcpSink {
        let listener = self
            .enter(|| TcpListener::bind(("0.0.0.0", port)))
            .unwrap_or_else(|e| panic!("listening on {port} in {}: {e}", self.name));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => drop(conn),
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        TcpSink {
            stop,
            thread: Some(thread),
        }
    }
}

/// Runs `f` on a thread that has entered the network namespace at `path` (a named
/// namespace, or a process's `/proc/PID/ns/net`, e.g. a container's): sockets it opens live
/// there.
#[track_caller]
pub fn enter_at<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(move || {
            join(path);
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Moves the calling thread into the network namespace at `path`.
#[track_caller]
fn join(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| panic!("entering {}: {e}", path.display()));
}

impl Drop for Netns {
    fn drop(&mut self) {
        run_quiet("ip", &["netns", "del", &self.name]);
    }
}

/// See [`Netns::tcp_sink`].
pub struct TcpSink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Network namespaces joined by a bridge (in the root namespace, with no address), each with
/// an `eth0` on a /24 of 198.18.0.0/16 of the network's own: the first namespace added gets
/// `.1`, the next `.2`…
/// On drop, the links, the bridge and the namespaces go (stop the processes in them first:
/// drop them before the network).
pub struct Network {
    bridge: String,
    prefix: String,
    tag: String,
    links: Vec<String>,
    docker_user: bool,
    namespaces: Vec<(String, Netns)>,
}

impl Network {
    #[track_caller]
    pub fn new() -> Network {
        require::netns();
        let tag = unique_tag();
        let prefix = free_prefix();
        let bridge = format!("crl{tag}b");
        run_ok("ip", &["link", "add", &bridge, "type", "bridge"]);
        let mut net = Network {
            bridge: bridge.clone(),
            prefix,
            tag,
            links: Vec::new(),
            docker_user: false,
            namespaces: Vec::new(),
        };
        quiet_link(&bridge);
        // A dockerd in the root namespace sets FORWARD's policy to DROP and turns
        // br_netfilter on, which would drop frames crossing the bridge: accept them in
        // DOCKER-USER while the network exists.
        if require::on_path("iptables")
            && Command::new("iptables")
                .args(["-w", "-n", "-L", "DOCKER-USER"])
                .output()
                .is_ok_and(|o| o.status.success())
        {
            run_ok("iptables", &docker_user_rule("-I", &bridge));
            net.docker_user = true;
        }
        run_ok("ip", &["link", "set", &bridge, "up"]);
        net
    }

    /// Adds a namespace called `label` (its name is `crl-TAG-label`) on the bridge.
    #[track_caller]
    pub fn add(&mut self, label: &str) -> &Netns {
        assert!(
            self.namespaces.iter().all(|(l, _)| l != label),
            "{label} is already on the network"
        );
        let index = self.namespaces.len() + 1;
        assert!(index < 255, "a /24 holds 254 namespaces");
        let mut ns = Netns::create(&format!("crl-{}-{label}", self.tag));
        let veth = format!("crl{}v{index}", self.tag);
        let peer = format!("crl{}p{index}", self.tag);
        run_ok(
            "ip",
            &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
        );
        self.links.push(veth.clone());
        quiet_link(&veth);
        run_ok("ip", &["link", "set", &veth, "master", &self.bridge]);
        run_ok("ip", &["link", "set", &veth, "up"]);
        run_ok("ip", &["link", "set", &peer, "netns", &ns.name]);
        let name = ns.name.clone();
        run_ok("ip", &["-n", &name, "link", "set", &peer, "name", "eth0"]);
        let ip = format!("{}.{index}", self.prefix);
        run_ok(
            "ip",
            &[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ],
        );
        run_ok("ip", &["-n", &name, "link", "set", "eth0", "up"]);
        ns.ip = Some(ip);
        self.namespaces.push((label.to_owned(), ns));
        &self.namespaces[self.namespaces.len() - 1].1
    }

    /// The namespace added as `label`.
    #[track_caller]
    pub fn ns(&self, label: &str) -> &Netns {
        self.namespaces
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, ns)| ns)
            .unwrap_or_else(|| panic!("no namespace {label} on the network"))
    }

    /// The bridge, in the root namespace (to capture on).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The network's first three octets, e.g. `198.18.0`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The broadcast address of the /24.
    pub fn broadcast(&self) -> String {
        format!("{}.255", self.prefix)
    }
}

impl Default for Network {
    fn default() -> Network {
        Network::new()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if self.docker_user {
            run_quiet("iptables", &docker_user_rule("-D", &self.bridge));
        }
        // Deleting one end of a veth pair deletes both.
        for link in self.links.iter().rev() {
            run_quiet("ip", &["link", "del", link]);
        }
        run_quiet("ip", &["link", "del", &self.bridge]);
        // The namespaces are deleted as the field is dropped, after this.
    }
}

fn docker_user_rule<'a>(op: &'a str, bridge: &'a str) -> [&'a str; 9] {
    [
        "-w",
        op,
        "DOCKER-USER",
        "-i",
        bridge,
        "-o",
        bridge,
        "-j",
        "ACCEPT",
    ]
}

/// No IPv6 on the root namespace's side of the network: it would send router solicitations
/// and the like into every capture.
fn quiet_link(name: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
}

/// A 198.18.N (N = 0…255) of this network's own: no interface of the root namespace has an
/// address in it, and no other network of this process uses it (N follows the process id and a
/// counter). Two networks on the same /24 at once made their overlays fail at random; the
/// likely cause is the root namespace's connection tracking, which sees bridged frames when
/// `br_netfilter` is on, so identical flows of two networks meet there.
#[track_caller]
fn free_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let addrs = run_ok("ip", &["-4", "-o", "addr", "show"]);
    let start = std::process::id().wrapping_mul(37);
    (0..256)
        .map(|_| {
            let n = start.wrapping_add(N.fetch_add(1, Ordering::Relaxed)) % 256;
            format!("198.18.{n}")
        })
        .find(|p| !addrs.contains(&format!(" {p}.")))
        .unwrap_or_else(|| panic!("every /24 of 198.18.0.0/16 is in use here:\n{addrs}"))
}
