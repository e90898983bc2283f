//! Helpers shared by the integration tests (I/O is fine here, never in the library).
#![allow(dead_code)]

use std::path::PathBuf;

use corral_firewall::{Plan, Topology, plan};

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> Topology {
    let path = crate_dir()
        .join("tests/fixtures")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

pub fn planned(name: &str) -> Plan {
    plan(&fixture(name)).unwrap_or_else(|e| panic!("planning {name}: {e}"))
}

/// A unique scratch file under the system temp dir.
pub fn temp_file(stem: &str, ext: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!(
        "corral-firewall-{}-{stem}-{n}.{ext}",
        std::process::id()
    ))
}
