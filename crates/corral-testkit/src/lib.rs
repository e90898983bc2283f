//! What corral's integration tests share.
//!
//! - [`Browser`]: a headless Chromium driven over the DevTools protocol (the web UI's tests).
//! - [`require`]: a test's prerequisites. A missing one fails the test with a message naming
//!   it and how to get it; no test skips.
//! - [`Proc`] and [`wait_until`]: processes stopped by process id, and waits on observable
//!   conditions.
//! - Labs: [`Netns`] and [`Network`] (namespaces joined by a bridge), [`Dockerd`] (an engine of
//!   the test's own in a namespace), [`Capture`] (tcpdump), [`NsServer`] and [`spawn_agent`]
//!   (corral processes in namespaces) and [`Lab`], which puts them together; [`Registry`] (a
//!   private image registry with TLS and basic auth, for pull tests); [`Postgres`] (a
//!   PostgreSQL cluster with TLS only, for the datastore); [`leftovers`] checks that a teardown
//!   left nothing behind.
//!
//! Everything made here is undone on drop, by process id and by the names it made.

// A test kit: failing the test, loudly, is what it does when something is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod capture;
pub mod certs;
pub mod corral;
pub mod dockerd;
pub mod leftovers;
pub mod netns;
pub mod postgres;
mod proc;
pub mod registry;
pub mod require;
pub mod slapd;

pub use browser::Browser;
pub use capture::{Capture, Pcap};
pub use corral::{
    AdminEnv, AgentSpec, Lab, LabConfig, NsServer, corral_command, read_admin_env, spawn_agent,
    wait_for_server,
};
pub use dockerd::{DockerFirewall, Dockerd};
pub use netns::{Netns, Network, TcpSink};
pub use postgres::Postgres;
pub use proc::{Proc, wait_until};
pub use registry::Registry;
pub use slapd::Slapd;

/// A temporary directory whose name starts with `prefix`, removed when dropped.
#[track_caller]
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("a temporary directory")
}
