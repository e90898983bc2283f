//! The overlay end to end, with real kernels on both sides: two network namespaces on a lab
//! bridge of the test kit (`corral-testkit`), each running `examples/overlay_node.rs` (the
//! driver with a TUN device, 10.42.1.1/24 and 10.42.2.1/24, a route to the other side's
//! subnet). Checks that
//! - `ping 10.42.2.1` from the first namespace answers through the overlay;
//! - a marker sent over TCP through the overlay arrives, while a capture on the first
//!   namespace's link shows only UDP between the two overlay ports (and ARP) and never the
//!   marker;
//! - a `CRLPROBE` datagram on the overlay port reaches the probe callback;
//! - 64 MiB of random bytes cross the overlay over TCP each way unchanged (the batched,
//!   offloaded paths of the driver), and again once the second node is restarted without TUN
//!   offloads (the one-packet-at-a-time path, against the first node's batches).
//!
//! Needs root (namespaces, TUN), iproute2, tcpdump, iputils-ping, bash and busybox-static (for
//! `nc`); fails naming whichever is missing (`bash scripts/test.sh` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_overlay::{keypair, to_hex};
use corral_testkit::{Capture, Netns, Network, Proc, require};

const PORT: u16 = 51820;

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

fn ns_run(ns: &Netns, cmd: &[&str]) -> Result<String, String> {
    let mut full = vec!["ip", "netns", "exec", ns.name()];
    full.extend_from_slice(cmd);
    run(&full)
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
    require::netns();
    for (tool, package) in [
        ("tcpdump", "tcpdump"),
        ("ping", "iputils-ping"),
        ("busybox", "busybox-static"),
        ("bash", "bash"),
    ] {
        require::tool(tool, package);
    }
    let dir = corral_testkit::temp_dir("corral-overlay-e2e-");
    let mut net = Network::new();
    net.add("a");
    net.add("b");
    if let Err(e) = lab_body(&net, dir.path()) {
        for name in ["node-a.log", "node-b.log", "veth.pcap.log", "nc.out"] {
            eprintln!("---- {name}\n{}", read(&dir.path().join(name)));
        }
        panic!("{e}");
    }
}

fn lab_body(net: &Network, dir: &Path) -> Result<(), String> {
    let (a, b) = (net.ns("a"), net.ns("b"));
    let (ip_a, ip_b) = (a.ip(), b.ip());
    for ns in [a, b] {
        // No IPv6 on the lab link: the capture should hold nothing but the overlay (and ARP).
        ns_run(
            ns,
            &[
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
            ],
        )?;
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
            a,
            "a",
            ip_a,
            "10.42.1.1/24",
            "10.42.2.0/24",
            format!("{}@{ip_b}:{PORT}=10.42.2.0/24", to_hex(&pub_b)),
        ),
        (
            b,
            "b",
            ip_b,
            "10.42.2.1/24",
            "10.42.1.0/24",
            format!("{}@{ip_a}:{PORT}=10.42.1.0/24", to_hex(&pub_a)),
        ),
    ];
    // Starts one side's node (with `extra` flags), waits until it is ready, and returns it.
    let start_node = |index: usize, extra: &[&str]| -> Result<Proc, String> {
        let (ns, side, ip, address, route, peer) = &sides[index];
        let ready = dir.join(format!("{side}.ready"));
        let _ = std::fs::remove_file(&ready);
        let log_path = dir.join(format!("node-{side}.log"));
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = ns
            .command(&node)
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
        Ok(Proc::adopt(child, log_path))
    };
    let node_a = start_node(0, &[])?;
    let mut node_b = start_node(1, &[])?;
    for side in ["a", "b"] {
        let ready = dir.join(format!("{side}.ready"));
        wait_for(
            &format!("node {side} ready"),
            Duration::from_secs(20),
            || ready.exists(),
        )?;
    }

    // 1. ping through the overlay.
    let out = ns_run(a, &["ping", "-c", "3", "-W", "2", "10.42.2.1"])?;
    eprintln!("{out}");
    ensure!(
        out.contains("3 packets received") || out.contains("3 received"),
        "{out}"
    );

    // 2. Capture on a's link to the bridge while a marker crosses the overlay over TCP.
    let capture = Capture::start(Some(a), "eth0", &dir.join("veth.pcap"), &[]);
    let marker = format!("corral-overlay-marker-{}", to_hex(&keypair().unwrap().1));
    let nc_out = dir.join("nc.out");
    let listener = nc_listen(b, 7777, &nc_out)?;
    ns_run(
        a,
        &[
            "sh",
            "-c",
            &format!("printf '%s\\n' '{marker}' | busybox nc -w 2 10.42.2.1 7777"),
        ],
    )?;
    wait_for("the marker to arrive", Duration::from_secs(10), || {
        read(&nc_out).contains(&marker)
    })?;
    drop(listener);
    // Every frame of that connection is in the file before the capture is read.
    capture.sync(net, b);
    let pcap = capture.stop();

    ensure!(
        !pcap.contains(marker.as_bytes()),
        "the marker crossed the link in clear"
    );
    let packets = pcap.packets();
    let text = packets.join("\n");
    let overlay = format!(".{PORT}: UDP");
    let mut udp = 0;
    for line in &packets {
        if line.contains(" ARP, ") {
            continue;
        }
        let between_overlay_ports = line.contains(&format!("{ip_a}.{PORT} > {ip_b}.{PORT}"))
            || line.contains(&format!("{ip_b}.{PORT} > {ip_a}.{PORT}"));
        let ok = line.contains(&format!(" IP {}.", net.prefix()))
            && line.contains(&overlay)
            && between_overlay_ports;
        ensure!(ok, "unexpected packet on the link: {line}\n{text}");
        udp += 1;
    }
    eprintln!("capture: {udp} overlay datagrams, none with the marker");
    ensure!(udp >= 6, "too few overlay datagrams captured:\n{text}");

    // 3. A probe on the overlay port goes to the callback, not to WireGuard.
    ns_run(
        b,
        &[
            "bash",
            "-c",
            &format!("printf 'CRLPROBE0123456789abcdef' > /dev/udp/{ip_a}/{PORT}"),
        ],
    )?;
    let node_a_log = dir.join("node-a.log");
    wait_for("the probe callback", Duration::from_secs(5), || {
        read(&node_a_log).contains(&format!("probe from {ip_b}:"))
    })?;
    eprintln!("node a: {}", read(&node_a_log));

    ensure!(
        read(&dir.join("node-a.log")).contains("offloads on"),
        "node a: {}",
        read(&dir.join("node-a.log"))
    );
    // 4. Bulk TCP both ways, byte for byte: the batched paths (TSO bursts split and sealed as
    //    GSO runs; GRO trains opened and coalesced before the TUN write) lose and reorder nothing.
    bulk_both_ways(a, b, dir, 7778)?;

    // 5. The same with node b restarted without TUN offloads (one packet per TUN read and
    //    write on that side) talking to a's batches. b pings first: its new session must start
    //    with a handshake of its own, since a still holds the old one.
    node_b.stop();
    node_b = start_node(1, &["--no-offload"])?;
    let ready = dir.join("b.ready");
    wait_for("node b ready again", Duration::from_secs(20), || {
        ready.exists()
    })?;
    let log_b = read(&dir.join("node-b.log"));
    ensure!(log_b.contains("offloads off"), "node b: {log_b}");
    let out = ns_run(b, &["ping", "-c", "3", "-W", "2", "10.42.1.1"])?;
    ensure!(
        out.contains("3 packets received") || out.contains("3 received"),
        "{out}"
    );
    bulk_both_ways(a, b, dir, 7780)?;
    drop((node_a, node_b));
    Ok(())
}

/// Starts `busybox nc -l -p PORT` in `ns`, writing what it receives to `out`, and waits until
/// it listens.
fn nc_listen(ns: &Netns, port: u16, out: &Path) -> Result<Proc, String> {
    let child = ns
        .command("busybox")
        .args(["nc", "-l", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting busybox nc: {e}"))?;
    let listener = Proc::adopt(child, out);
    wait_for("nc to listen", Duration::from_secs(10), || {
        listener.listens_on_tcp(port)
    })?;
    Ok(listener)
}

/// Sends [`BULK`] random bytes over TCP through the overlay from `a` to `b` (on `port`) and
/// back (on `port + 1`), and checks they arrive unchanged.
fn bulk_both_ways(a: &Netns, b: &Netns, dir: &Path, port: u16) -> Result<(), String> {
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
        let received = dir.join(format!("bulk-{port}.out"));
        let _listener = nc_listen(to, port, &received)?;
        let (from_ns, from, to) = (from, from.name(), to.name());
        let started = Instant::now();
        // bash's /dev/tcp: busybox nc quits at the end of its input before sending it all.
        ns_run(
            from_ns,
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
