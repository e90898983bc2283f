//! Connections that never authenticate cannot exhaust the server: a peer that completes the
//! TLS handshake and sends nothing, or stops halfway through its headers, is closed after the
//! header timeout; beyond `--max-unauthenticated-connections` the oldest such connection is
//! closed; agents and API clients that authenticated are neither counted nor closed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until the server closes the connection; returns how long that took.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(mut stream: S, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
        }
    }
}

fn metric(server: &Server, name: &str) -> u64 {
    let text = server.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_peers_are_closed_after_the_header_timeout() {
    let t = tmp();
    let server = Server::start(&t.path().join("data"), &[]);
    let dialer = pinned_dialer(&server);
    let silent = dialer.tls().await.unwrap();
    let mut slow = dialer.tls().await.unwrap();
    slow.write_all(b"GET /v1/hosts HTTP/1.1\r\nHost: corral\r\n")
        .await
        .unwrap();
    let (silent, slow) = tokio::join!(
        closed_after(silent, Duration::from_secs(25)),
        closed_after(slow, Duration::from_secs(25))
    );
    // Closed by the timeout (10 s), not refused at once.
    for (what, took) in [("silent", silent), ("slow", slow)] {
        assert!(
            took >= Duration::from_secs(8) && took < Duration::from_secs(20),
            "{what} peer closed after {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_cap_the_oldest_unauthenticated_go_and_agents_stay() {
    let t = tmp();
    let server = Server::start(
        &t.path().join("data"),
        &["--max-unauthenticated-connections", "8"],
    );
    let (_, token) = server.token(&[]);
    let _agent = start_agent(&server, &t.path().join("a1"), "a1", Some(&token), &[]);
    wait_until(Duration::from_secs(20), "a1 connected", || {
        server.host_state("a1").as_deref() == Some("active")
    });
    let connected_since = |server: &Server| {
        server
            .hosts()
            .into_iter()
            .find(|h| h["name"] == "a1")
            .map(|h| h["connected_since"].clone())
    };
    let since = connected_since(&server);
    let dialer = pinned_dialer(&server);
    let mut idle = Vec::new();
    for _ in 0..24 {
        idle.push(dialer.tls().await.unwrap());
    }
    // The first 16 were closed as newer ones came; the last 8 are held.
    let oldest = idle.remove(0);
    closed_after(oldest, Duration::from_secs(5)).await;
    let evicted = metric(&server, "corral_connections_evicted_total");
    assert!(evicted >= 16, "evicted {evicted}");
    assert!(metric(&server, "corral_unauthenticated_connections") <= 8);
    assert!(
        server
            .log()
            .contains("too many connections that have not authenticated"),
        "a log line says so"
    );
    // Authenticated clients get through and are not counted; the agent stayed connected.
    let hosts = server.hosts();
    assert_eq!(hosts.len(), 1);
    assert_eq!(server.host_state("a1").as_deref(), Some("active"));
    assert_eq!(
        connected_since(&server),
        since,
        "the agent's tunnel was never closed"
    );
    drop(idle);
}
