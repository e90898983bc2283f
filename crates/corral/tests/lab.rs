//! Stacks over several real hosts: `scripts/lab.sh` builds a server and three hosts, each in its
//! own network namespace with its own dockerd and agent, joined by a lab bridge.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lab.sh")
}

fn lab_sh(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .env("CORRAL_BIN", corral_bin())
        .output()
        .expect("lab.sh")
}

/// A lab that is torn down (by the script, from its recorded state) when dropped.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn up(hosts: usize, server_args: &[&str]) -> Option<Lab> {
        let dir = tmp();
        let n = hosts.to_string();
        let mut args = vec!["up", dir.path().to_str().unwrap(), &n, "--"];
        args.extend(server_args);
        let out = lab_sh(&args);
        let lab = Lab { dir };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("no dockerd") || err.contains("Operation not permitted") {
                println!("SKIP: {err}");
                return None;
            }
            panic!("lab up failed: {err}");
        }
        Some(lab)
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut all = vec!["cli", self.path()];
        all.extend(args);
        lab_sh(&all)
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "corral {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Names of the running containers on one host's own engine.
    fn containers(&self, host: &str) -> Vec<String> {
        let out = lab_sh(&["docker", self.path(), host, "ps", "--format", "{{.Names}}"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab_sh(&["down", self.path()]);
    }
}

const COMPOSE: &str = r#"
name: spread
services:
  web:
    image: corral-test/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
    deploy: { replicas: 3 }
"#;

#[test]
fn a_stack_spreads_over_three_engines_and_survives_losing_one() {
    let Some(lab) = Lab::up(
        3,
        &[
            "--heartbeat-interval",
            "1s",
            "--dead-after",
            "3s",
            "--reschedule-after",
            "3s",
        ],
    ) else {
        return;
    };
    let file = lab.dir.path().join("compose.yaml");
    std::fs::write(&file, COMPOSE).unwrap();
    let out = lab.cli(&[
        "up",
        "-f",
        file.to_str().unwrap(),
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One replica on each host's own engine.
    for h in ["h1", "h2", "h3"] {
        assert_eq!(lab.containers(h).len(), 1, "{h}: {:?}", lab.containers(h));
    }
    let stale = lab.containers("h3")[0].clone();

    // h3's agent stops (its engine keeps running): after the dead-link timeout and the grace
    // period, its replica is started on h1 or h2.
    assert!(lab_sh(&["agent-stop", lab.path(), "h3"]).status.success());
    wait_until(Duration::from_secs(40), "the replica to leave h3", || {
        let view = &lab.cli_json(&["ps", "-p", "spread"])[0];
        view["converged"] == true
            && view["services"][0]["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["host"] != "h3")
    });
    assert_eq!(
        lab.containers("h1").len() + lab.containers("h2").len(),
        3,
        "the replica was placed again on the remaining hosts"
    );
    assert_eq!(lab.containers("h3"), [stale], "h3 still runs its copy");

    // h3 returns: its stale copy is removed, so three replicas remain, not four.
    assert!(lab_sh(&["agent-start", lab.path(), "h3"]).status.success());
    wait_until(Duration::from_secs(40), "the stale replica to go", || {
        lab.containers("h3").is_empty()
    });
    let total: usize = ["h1", "h2", "h3"]
        .iter()
        .map(|h| lab.containers(h).len())
        .sum();
    assert_eq!(total, 3);

    // Down removes everything from every engine.
    let out = lab.cli(&["down", "-p", "spread", "--timeout", "60s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for h in ["h1", "h2", "h3"] {
        assert!(lab.containers(h).is_empty(), "{h}");
        let nets = lab_sh(&[
            "docker",
            lab.path(),
            h,
            "network",
            "ls",
            "--format",
            "{{.Name}}",
        ]);
        assert!(
            !String::from_utf8_lossy(&nets.stdout).contains("corral_spread"),
            "{h} kept the stack network"
        );
    }
}

#[test]
fn the_lab_tears_down_everything_it_made() {
    let Some(lab) = Lab::up(1, &[]) else {
        return;
    };
    let srv_ns = String::from_utf8_lossy(&lab_sh(&["ns", lab.path(), "srv"]).stdout)
        .trim()
        .to_owned();
    let h1_ns = String::from_utf8_lossy(&lab_sh(&["ns", lab.path(), "h1"]).stdout)
        .trim()
        .to_owned();
    let netns = || {
        String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    assert!(netns().contains(&srv_ns) && netns().contains(&h1_ns));
    let out = lab_sh(&["down", lab.path()]);
    assert!(out.status.success());
    assert!(!netns().contains(&srv_ns) && !netns().contains(&h1_ns));
    // The processes it started are gone: no agent or dockerd uses the lab's state dir.
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(lab.path()),
        "a lab process survived"
    );
}
