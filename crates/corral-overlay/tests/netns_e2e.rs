//! The overlay end to end, with real kernels on both sides: two network namespaces joined by a
//! veth pair (198.51.100.1/24 ↔ 198.51.100.2/24), each running `examples/overlay_node.rs` (the
//! driver with a TUN device, 10.42.1.1/24 and 10.42.2.1/24, a route to the other side's
//! subnet). Checks that
//! - `ping 10.42.2.1` from the first namespace answers through the overlay;
//! - a marker sent over TCP through the overlay arrives, while a capture on the veth shows only
//!   UDP between the two overlay ports (and ARP) and never the marker;
//! - a `CRLPROBE` datagram on the overlay port reaches the probe callback;
//! - 64 MiB of random bytes cross the overlay over TCP each way unchanged (the batched,
//!   offloaded paths of the driver), and again once the second node is restarted without TUN
//!   offloads (the one-packet-at-a-time path, against the first node's batches).
//!
//! Needs root (namespaces, TUN) and iproute2. Skips, saying why, where `ip netns add` fails.
//! Installs tcpdump, iputils-ping and busybox-static (for `nc`) with apt-get where missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_overlay::{keypair, to_hex};

const PORT: u16 = 51820;

struct Lab {
    ns: [String; 2],
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            // By pid: these are processes this test started.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for child in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", cmd.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}{}",
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn ns_run(ns: &str, cmd: &[&str]) -> Result<String, String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(cmd);
    run(&full)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs `package` with apt-get if `tool` is missing (a fresh machine has neither tcpdump,
/// ping nor busybox).
fn ensure_tool(tool: &str, package: &str) -> Result<(), String> {
    if have(tool) {
        return Ok(());
    }
    eprintln!("{tool} missing: apt-get install -y {package}");
    let install = || run(&["apt-get", "install", "-y", "-qq", package]);
    if install().is_err() {
        let _ = run(&["apt-get", "update", "-qq"]);
        install()?;
    }
    if have(tool) {
        Ok(())
    } else {
        Err(format!(
            "{tool} is not installed and apt-get could not install {package}"
        ))
    }
}

/// The example binary, built now so it is never stale.
fn overlay_node() -> PathBuf {
    let mut cargo = Command::new(env!("CARGO"));
    // Without the variables cargo sets for this test, so build scripts (ring's) do not see a
    // changed environment and rebuild.
    for (key, _) in std::env::vars() {
        let keep = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&key.as_str())
            || key.starts_with("CARGO_BUILD_")
            || key.starts_with("CARGO_REGISTRIES_");
        if key.starts_with("CARGO_") && !keep {
            cargo.env_remove(&key);
        }
    }
    let status = cargo
        .args([
            "build",
            "--quiet",
            "-p",
            "corral-overlay",
            "--example",
            "overlay_node",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build --example overlay_node");
    assert!(status.success(), "building examples/overlay_node failed");
    // target/debug/deps/netns_e2e-HASH → target/debug/examples/overlay_node
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = profile_dir.join("examples").join("overlay_node");
    assert!(path.exists(), "{} missing", path.display());
    path
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("timed out after {limit:?} waiting for {what}"))
}

/// `assert!` that returns an error instead, so the lab's logs get printed.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn two_namespaces_ping_and_capture() {
    let tag = std::process::id() % 100_000;
    let ns = [format!("crl-ov-{tag}-a"), format!("crl-ov-{tag}-b")];
    if let Err(e) = run(&["ip", "netns", "add", &ns[0]]) {
        eprintln!(
            "SKIPPED two_namespaces_ping_and_capture: cannot create a network namespace ({e}); this test needs root and iproute2"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("corral-overlay-e2e-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        ns: ns.clone(),
        dir: dir.clone(),
        children: Vec::new(),
    };
    if let Err(e) = lab_body(&mut lab) {
        for name in ["node-a.log", "node-b.log", "tcpdump.log", "nc.out"] {
            eprintln!("---- {name}\n{}", read(&dir.join(name)));
        }
        panic!("{e}");
    }
}

fn lab_body(lab: &mut Lab) -> Result<(), String> {
    let [a, b] = lab.ns.clone();
    let dir = lab.dir.clone();
    let tag = std::process::id() % 100_000;
    let (veth_a, veth_b) = (format!("crlv{tag}a"), format!("crlv{tag}b"));
    run(&["ip", "netns", "add", &b])?;
    run(&[
        "ip", "link", "add", &veth_a, "netns", &a, "type", "veth", "peer", "name", &veth_b,
        "netns", &b,
    ])?;
    for (ns, veth, addr) in [
        (&a, &veth_a, "198.51.100.1/24"),
        (&b, &veth_b, "198.51.100.2/24"),
    ] {
        // No IPv6 on the lab link: the capture should hold nothing but the overlay (and ARP).
        ns_run(
            ns,
            &[
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
            ],
        )?;
        run(&["ip", "-n", ns, "addr", "add", addr, "dev", veth])?;
        run(&["ip", "-n", ns, "link", "set", veth, "up"])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    }

    for (tool, package) in [
        ("tcpdump", "tcpdump"),
        ("ping", "iputils-ping"),
        ("busybox", "busybox-static"),
    ] {
        ensure_tool(tool, package)?;
    }

    let node = overlay_node();
    let (priv_a, pub_a) = keypair().unwrap();
    let (priv_b, pub_b) = keypair().unwrap();
    let (psk, _) = keypair().unwrap();
    for (name, key) in [("a.key", &priv_a), ("b.key", &priv_b)] {
        std::fs::write(dir.join(name), to_hex(key)).unwrap();
    }
    let sides = [
        (
            &a,
            "a",
            "198.51.100.1",
            "10.42.1.1/24",
            "10.42.2.0/24",
            format!("{}@198.51.100.2:{PORT}=10.42.2.0/24", to_hex(&pub_b)),
        ),
        (
            &b,
            "b",
            "198.51.100.2",
            "10.42.2.1/24",
            "10.42.1.0/24",
            format!("{}@198.51.100.1:{PORT}=10.42.1.0/24", to_hex(&pub_a)),
        ),
    ];
    // Starts one side's node (with `extra` flags), waits until it is ready, and returns it.
    let start_node = |index: usize, extra: &[&str]| -> Result<Child, String> {
        let (ns, side, ip, address, route, peer) = &sides[index];
        let ready = dir.join(format!("{side}.ready"));
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join(format!("node-{side}.log")))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&node)
            .args(["--tun", "crl0", "--listen", &format!("{ip}:{PORT}")])
            .arg("--private-key-file")
            .arg(dir.join(format!("{side}.key")))
            .args(["--address", address, "--route", route, "--peer", peer])
            .args(["--psk", &to_hex(&psk)])
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting overlay_node: {e}"))?;
        Ok(child)
    };
    for index in 0..2 {
        let child = start_node(index, &[])?;
        lab.children.push(child);
    }
    for side in ["a", "b"] {
        let ready = dir.join(format!("{side}.ready"));
        wait_for(
            &format!("node {side} ready"),
            Duration::from_secs(20),
            || ready.exists(),
        )?;
    }

    // 1. ping through the overlay.
    let ping: &[&str] = if have("ping") {
        &["ping", "-c", "3", "-W", "2", "10.42.2.1"]
    } else {
        &["busybox", "ping", "-c", "3", "-W", "2", "10.42.2.1"]
    };
    let out = ns_run(&a, ping)?;
    eprintln!("{out}");
    ensure!(
        out.contains("3 packets received") || out.contains("3 received"),
        "{out}"
    );

    // 2. Capture on the veth while a marker crosses the overlay over TCP.
    let pcap = dir.join("veth.pcap");
    let tcpdump_log = std::fs::File::create(dir.join("tcpdump.log")).unwrap();
    let tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &a,
            "tcpdump",
            "-Z",
            "root",
            "--immediate-mode",
            "-i",
            &veth_a,
            "-n",
            "-U",
            "-w",
        ])
        .arg(&pcap)
        .stdin(Stdio::null())
        .stdout(tcpdump_log.try_clone().unwrap())
        .stderr(tcpdump_log)
        .spawn()
        .map_err(|e| format!("starting tcpdump: {e}"))?;
    let tcpdump_at = lab.children.len();
    lab.children.push(tcpdump);
    let tcpdump_log = dir.join("tcpdump.log");
    wait_for("tcpdump to listen", Duration::from_secs(10), || {
        read(&tcpdump_log).contains("listening on")
    })?;

    let marker = format!("corral-overlay-marker-{}", to_hex(&keypair().unwrap().1));
    let nc_out = dir.join("nc.out");
    nc_listen(lab, &b, "7777", &nc_out)?;
    ns_run(
        &a,
        &[
            "sh",
            "-c",
            &format!("printf '%s\\n' '{marker}' | busybox nc -w 2 10.42.2.1 7777"),
        ],
    )?;
    wait_for("the marker to arrive", Duration::from_secs(10), || {
        read(&nc_out).contains(&marker)
    })?;
    // Let the capture see the connection's end, then stop it (packet-buffered: all written).
    std::thread::sleep(Duration::from_millis(500));
    let mut tcpdump = lab.children.remove(tcpdump_at);
    let _ = Command::new("kill")
        .args(["-INT", &tcpdump.id().to_string()])
        .status();
    let _ = tcpdump.wait();

    let raw = std::fs::read(&pcap).map_err(|e| format!("reading the capture: {e}"))?;
    ensure!(
        !raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the marker crossed the veth in clear"
    );
    let text = run(&["tcpdump", "-r", pcap.to_str().unwrap(), "-n", "-nn"])?;
    let overlay = format!(".{PORT}: UDP");
    let mut udp = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if line.contains(" ARP, ") {
            continue;
        }
        let between_overlay_ports = line
            .contains(&format!("198.51.100.1.{PORT} > 198.51.100.2.{PORT}"))
            || line.contains(&format!("198.51.100.2.{PORT} > 198.51.100.1.{PORT}"));
        let ok =
            line.contains(" IP 198.51.100.") && line.contains(&overlay) && between_overlay_ports;
        ensure!(ok, "unexpected packet on the veth: {line}\n{text}");
        udp += 1;
    }
    eprintln!("capture: {udp} overlay datagrams, none with the marker");
    ensure!(udp >= 6, "too few overlay datagrams captured:\n{text}");

    // 3. A probe on the overlay port goes to the callback, not to WireGuard.
    ns_run(
        &b,
        &[
            "bash",
            "-c",
            &format!("printf 'CRLPROBE0123456789abcdef' > /dev/udp/198.51.100.1/{PORT}"),
        ],
    )?;
    let node_a_log = dir.join("node-a.log");
    wait_for("the probe callback", Duration::from_secs(5), || {
        read(&node_a_log).contains("probe from 198.51.100.2:")
    })?;
    eprintln!("node a: {}", read(&node_a_log));

    ensure!(
        read(&dir.join("node-a.log")).contains("offloads on"),
        "node a: {}",
        read(&dir.join("node-a.log"))
    );
    // 4. Bulk TCP both ways, byte for byte: the batched paths (TSO bursts split and sealed as
    //    GSO runs; GRO trains opened and coalesced before the TUN write) lose and reorder nothing.
    bulk_both_ways(lab, &a, &b, &dir, 7778)?;

    // 5. The same with node b restarted without TUN offloads (one packet per TUN read and
    //    write on that side) talking to a's batches. b pings first: its new session must start
    //    with a handshake of its own, since a still holds the old one.
    let mut old_b = lab.children.remove(1);
    let _ = Command::new("kill").arg(old_b.id().to_string()).status();
    let _ = old_b.wait();
    let new_b = start_node(1, &["--no-offload"])?;
    lab.children.insert(1, new_b);
    let ready = dir.join("b.ready");
    wait_for("node b ready again", Duration::from_secs(20), || {
        ready.exists()
    })?;
    let log_b = read(&dir.join("node-b.log"));
    ensure!(log_b.contains("offloads off"), "node b: {log_b}");
    let ping: &[&str] = if have("ping") {
        &["ping", "-c", "3", "-W", "2", "10.42.1.1"]
    } else {
        &["busybox", "ping", "-c", "3", "-W", "2", "10.42.1.1"]
    };
    let out = ns_run(&b, ping)?;
    ensure!(
        out.contains("3 packets received") || out.contains("3 received"),
        "{out}"
    );
    bulk_both_ways(lab, &a, &b, &dir, 7780)?;
    Ok(())
}

/// Starts `busybox nc -l -p PORT` in `ns`, writing what it receives to `out`, and gives it a
/// moment to listen.
fn nc_listen(lab: &mut Lab, ns: &str, port: &str, out: &Path) -> Result<(), String> {
    let listener = Command::new("ip")
        .args(["netns", "exec", ns, "busybox", "nc", "-l", "-p", port])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting busybox nc: {e}"))?;
    lab.children.push(listener);
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// Sends [`BULK`] random bytes over TCP through the overlay from `a` to `b` (on `port`) and
/// back (on `port + 1`), and checks they arrive unchanged.
fn bulk_both_ways(lab: &mut Lab, a: &str, b: &str, dir: &Path, port: u16) -> Result<(), String> {
    let data = dir.join("bulk.bin");
    run(&[
        "sh",
        "-c",
        &format!("head -c {BULK} /dev/urandom > {}", data.display()),
    ])?;
    let digest = |path: &Path| -> Result<String, String> {
        let out = run(&["sha256sum", path.to_str().unwrap()])?;
        Ok(out
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string())
    };
    let sent = digest(&data)?;
    for (from, to, to_addr, port) in [(a, b, "10.42.2.1", port), (b, a, "10.42.1.1", port + 1)] {
        let port = port.to_string();
        let received = dir.join(format!("bulk-{port}.out"));
        nc_listen(lab, to, &port, &received)?;
        let started = Instant::now();
        // bash's /dev/tcp: busybox nc quits at the end of its input before sending it all.
        ns_run(
            from,
            &[
                "bash",
                "-c",
                &format!("cat {} > /dev/tcp/{to_addr}/{port}", data.display()),
            ],
        )?;
        let size = || std::fs::metadata(&received).map_or(0, |m| m.len());
        wait_for("the bulk transfer", Duration::from_secs(30), || {
            size() >= BULK
        })
        .map_err(|e| format!("{e}: {from} -> {to}: {} of {BULK} bytes arrived", size()))?;
        let got = digest(&received)?;
        ensure!(
            got == sent,
            "{from} -> {to}: {BULK} bytes arrived changed ({got} != {sent})"
        );
        eprintln!(
            "bulk {from} -> {to}: {BULK} bytes intact in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Bytes of the bulk transfer each way (64 MiB: many TSO bursts and GRO trains).
const BULK: u64 = 64 << 20;
