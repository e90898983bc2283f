//! The web UI's benchmark (BENCHMARKS.md, "Web UI"): page weight; first render of the hosts
//! page with N simulated hosts and of a stack page with S services, in headless Chromium; the
//! server's CPU and memory with B pages following a container's log, and while they are all
//! paused (flow control: a page that stops reading must not grow the server).
//!
//! ```sh
//! cargo build --release && cargo run --release -p corral --example bench_ui -- 1000 500 20
//! ```
//!
//! Needs chromium, a dockerd that answers and the test image (`bash scripts/test-image.sh`).
//! Everything it starts is stopped by process id; the temporary directory is removed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use corral_testkit::{AdminEnv, Browser, Proc, read_admin_env, wait_until};
use serde_json::Value;

const IMAGE: &str = corral_testkit::require::TEST_IMAGE;

fn corral_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CORRAL_BIN") {
        return PathBuf::from(p);
    }
    // target/release/examples/bench_ui → target/release/corral
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("corral")
}

fn cli(env: &AdminEnv, args: &[&str]) -> String {
    let out = Command::new(corral_bin())
        .args(args)
        .env("CORRAL_SERVER", &env.server)
        .env("CORRAL_API_KEY", &env.api_key)
        .env("CORRAL_CA_CHECKSUM", &env.checksum)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "corral {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (user + system CPU seconds, resident KiB) of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, rss)
}

/// Server CPU (cores) and resident memory at the end, over `secs`.
fn measure(pid: u32, secs: u64) -> (f64, u64) {
    let (c0, _) = usage(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, rss) = usage(pid);
    ((c1 - c0) / t0.elapsed().as_secs_f64(), rss)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// First render of `hash` (ms from navigation start to the page's `corral:PAGE` mark), after
/// `ready` holds; five loads.
fn first_render(b: &mut Browser, base: &str, hash: &str, page: &str, ready: &str) -> Vec<f64> {
    (0..5)
        .map(|i| {
            b.goto(&format!("{base}/ui/?load={i}{hash}"));
            b.wait_for_within(Duration::from_secs(120), "the page", ready);
            b.wait_for(
                "the render mark",
                &format!("performance.getEntriesByName('corral:{page}').length"),
            );
            b.eval(&format!(
                "performance.getEntriesByName('corral:{page}')[0].startTime"
            ))
            .as_f64()
            .unwrap()
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let hosts: usize = args.get(1).map_or(1000, |a| a.parse().unwrap());
    let services: usize = args.get(2).map_or(500, |a| a.parse().unwrap());
    let pages: usize = args.get(3).map_or(20, |a| a.parse().unwrap());
    let bin = corral_bin();
    assert!(bin.exists(), "no corral binary at {}", bin.display());
    let dir = corral_testkit::temp_dir("corral-bench-ui-");
    let d = dir.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let data = d.join("data");
    let mut server = Proc::spawn_program(
        &bin,
        &[
            "server",
            "--listen",
            &listen,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        d.join("server.log"),
        &[],
    );
    corral_testkit::wait_for_server(&mut server);
    let env = read_admin_env(&data.join("admin.env")).unwrap();
    let base = env.server.clone();
    let spid = server.pid();

    // N simulated agents, held for the whole run.
    let mut sim = Proc::spawn(
        {
            let mut c = Command::new(&bin);
            c.args([
                "bench",
                "connect",
                "--agents",
                &hosts.to_string(),
                "--hold",
                "3600s",
                "--ping-interval",
                "15s",
                "--concurrency",
                "64",
                "--keep",
                "--docker",
            ])
            .env("CORRAL_SERVER", &env.server)
            .env("CORRAL_API_KEY", &env.api_key)
            .env("CORRAL_CA_CHECKSUM", &env.checksum);
            c
        },
        d.join("bench.log"),
    );
    wait_until(
        Duration::from_secs(300),
        "the simulated hosts to connect",
        || {
            let v: Value = serde_json::from_str(&cli(&env, &["host", "ls", "-o", "json"])).unwrap();
            v.as_array().unwrap().len() >= hosts
        },
    );

    // A real agent with a container that logs 100 lines a second.
    let token: Value =
        serde_json::from_str(&cli(&env, &["token", "create", "-o", "json"])).unwrap();
    let agent_dir = d.join("agent");
    let mut agent = Proc::spawn_program(
        &bin,
        &[
            "agent",
            "--server",
            &base,
            "--token",
            token["token"].as_str().unwrap(),
            "--ca-checksum",
            &env.checksum,
            "--state-dir",
            agent_dir.to_str().unwrap(),
            "--name",
            "real",
            "--no-overlay",
            "--overlay-port",
            "0",
        ],
        d.join("agent.log"),
        &[],
    );
    wait_until(Duration::from_secs(60), "the real agent's Docker", || {
        let v: Value = serde_json::from_str(&cli(&env, &["host", "ls", "-o", "json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "real" && h["docker"]["state"] == "available")
    });
    let logger = format!("logger{}", std::process::id());
    cli(
        &env,
        &[
            "run",
            &logger,
            "--image",
            IMAGE,
            "--host",
            "real",
            "--",
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo \"line $i of the log, some text to make it the length of a real log line\"; usleep 10000; done",
        ],
    );

    let mut b = Browser::launch(1280, 900);
    b.goto(&format!("{base}/"));
    b.click("#tab-key");
    b.type_into("#login-key", &env.api_key);
    b.click("#login-submit");
    b.wait_for("the hosts page", "document.querySelector('#top:not([hidden]) #nav-hosts.on') && !document.querySelector('#login')");

    // Page weight.
    let weight = b.eval(
        "Promise.all(['/ui/', '/ui/app.js', '/ui/app.css'].map(u => fetch(u).then(r => r.arrayBuffer()).then(a => a.byteLength)))",
    );

    let hosts_ms = first_render(
        &mut b,
        &base,
        "#/hosts",
        "hosts",
        &format!(
            "document.querySelectorAll('#hosts tbody tr').length >= {}",
            hosts + 1
        ),
    );

    // One stack of S services (one replica each).
    let mut compose = String::from("services:\n");
    for i in 0..services {
        // On the simulated hosts only: containers made on the real one would change the
        // machine's network under the browser.
        // (An image named by digest: nothing to ask the simulated hosts, which answer no
        // command.)
        compose.push_str(&format!(
            "  s{i}:\n    image: registry.invalid/bench@sha256:{}\n    deploy: {{ placement: {{ constraints: [\"node.labels.corral.bench == 1\"] }} }}\n",
            "ab".repeat(32)
        ));
    }
    let file = d.join("big.yaml");
    std::fs::write(&file, compose).unwrap();
    cli(&env, &["up", "-f", file.to_str().unwrap(), "-p", "big"]);
    let stack_ms = first_render(
        &mut b,
        &base,
        "#/stack/big",
        "stack",
        &format!("document.querySelectorAll('#services tbody tr').length === {services}"),
    );
    let stacks_ms = first_render(
        &mut b,
        &base,
        "#/stacks",
        "stacks",
        "document.querySelector('#stacks tr[data-stack=big]')",
    );

    // The server with nobody looking, then with P pages following the log, then paused.
    b.goto("about:blank");
    let (idle_cpu, idle_rss) = measure(spid, 20);
    let mut opened = vec![0];
    for _ in 1..pages {
        opened.push(b.new_page(1280, 900));
    }
    for &p in &opened {
        b.use_page(p);
        b.goto(&format!("{base}/ui/#/container/{logger}"));
    }
    for &p in &opened {
        b.use_page(p);
        b.wait_for(
            "log lines",
            "document.querySelectorAll('#logs div').length > 10",
        );
    }
    let (follow_cpu, follow_rss) = measure(spid, 20);
    for &p in &opened {
        b.use_page(p);
        b.click("#log-pause");
    }
    let (_, paused_rss_start) = measure(spid, 2);
    let (paused_cpu, paused_rss) = measure(spid, 30);

    let report = serde_json::json!({
        "hosts": hosts,
        "services": services,
        "pages": pages,
        "page_weight_bytes": weight,
        "hosts_first_render_ms": hosts_ms,
        "stack_first_render_ms": stack_ms,
        "stacks_first_render_ms": stacks_ms,
        "server_idle_cores": idle_cpu,
        "server_idle_rss_kib": idle_rss,
        "server_following_cores": follow_cpu,
        "server_following_rss_kib": follow_rss,
        "server_paused_cores": paused_cpu,
        "server_paused_rss_start_kib": paused_rss_start,
        "server_paused_rss_end_kib": paused_rss,
        "page_problems": b.problems,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let w: Vec<u64> = weight
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    println!(
        "\n| measure | value |\n|---|---:|\n| page weight (HTML + JS + CSS) | {} + {} + {} = {} bytes |",
        w[0],
        w[1],
        w[2],
        w.iter().sum::<u64>()
    );
    println!(
        "| hosts page, {hosts} hosts: first render (median / max of 5) | {:.0} / {:.0} ms |",
        median(hosts_ms.clone()),
        hosts_ms.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "| stack page, {services} services: first render (median / max of 5) | {:.0} / {:.0} ms |",
        median(stack_ms.clone()),
        stack_ms.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "| stacks page: first render (median / max of 5) | {:.0} / {:.0} ms |",
        median(stacks_ms.clone()),
        stacks_ms.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "| server, no page open ({hosts} hosts) | {idle_cpu:.3} cores, {} MiB |",
        idle_rss / 1024
    );
    println!(
        "| server, {pages} pages following a log of 100 lines/s | {follow_cpu:.3} cores, {} MiB |",
        follow_rss / 1024
    );
    println!(
        "| server, the {pages} pages paused 30 s (log still written) | {paused_cpu:.3} cores, {} → {} MiB |",
        paused_rss_start / 1024,
        paused_rss / 1024
    );
    drop(b);
    let _ = Command::new(&bin)
        .args(["container", "rm", &logger])
        .env("CORRAL_SERVER", &env.server)
        .env("CORRAL_API_KEY", &env.api_key)
        .env("CORRAL_CA_CHECKSUM", &env.checksum)
        .output();
    agent.stop();
    sim.stop();
    server.stop();
}
