//! `corral firewall apply` on the host: install corral's own nftables table, then keep it only
//! if the server can still be reached.
//!
//! 1. The ruleset is checked: it may touch `table inet corral` and nothing else (no
//!    `flush ruleset`, no other table, no `include`), then `nft -c -f`.
//! 2. The current `table inet corral` (or its absence) is saved as a rollback script, and a
//!    marker file records that a change awaits confirmation.
//! 3. `nft -f` applies the new table atomically.
//! 4. Dead-man timer: the agent opens *new* TLS connections to the server (`/healthz`, pinned CA)
//!    until one succeeds or the window closes. Success removes the marker; failure runs the
//!    rollback script. A bad rule cannot lock the host out of its control plane.
//! 5. An agent that starts and finds the marker (it died inside the window) rolls back first.
//!
//! Other tables are never read or written.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_proto::{FirewallApply, FirewallOutcome};

use crate::dial::Dialer;

pub const TABLE: &str = "inet corral";
const MAX_RULESET_BYTES: usize = 256 * 1024;

/// Refuses anything that could touch another table or the whole ruleset.
pub fn check_ruleset(text: &str) -> Result<(), String> {
    if text.len() > MAX_RULESET_BYTES {
        return Err(format!("the ruleset exceeds {MAX_RULESET_BYTES} bytes"));
    }
    let mut depth = 0i32;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        if depth == 0 {
            let ok = matches!(
                line,
                "table inet corral" | "delete table inet corral" | "table inet corral {"
            );
            if !ok {
                return Err(format!(
                    "line {}: {line:?}: only `table inet corral` may be defined or deleted",
                    n + 1
                ));
            }
        } else if line.starts_with("include") || line.starts_with("flush ruleset") {
            return Err(format!("line {}: {line:?} is not allowed", n + 1));
        }
        depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
        if depth < 0 {
            return Err(format!("line {}: unbalanced braces", n + 1));
        }
    }
    if depth != 0 {
        return Err("unbalanced braces".into());
    }
    Ok(())
}

fn nft(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("nft")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run nft ({e}); install nftables"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

struct Files {
    next: PathBuf,
    rollback: PathBuf,
    pending: PathBuf,
}

/// The `firewall/` state dir (0700, made private if an earlier release left it readable) and
/// its files.
fn files(state_dir: &Path) -> Result<Files, String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = state_dir.join("firewall");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(Files {
        next: dir.join("next.nft"),
        rollback: dir.join("rollback.nft"),
        pending: dir.join("pending"),
    })
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    corral_tls::files::write_private(path, text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Restores the rules saved before an unconfirmed change. Returns whether there was one.
pub fn rollback_pending(state_dir: &Path) -> Result<bool, String> {
    let f = files(state_dir)?;
    if !f.pending.exists() {
        return Ok(false);
    }
    let path = f.rollback.display().to_string();
    nft(&["-f", &path])?;
    let _ = std::fs::remove_file(&f.pending);
    Ok(true)
}

/// Carries out a [`FirewallApply`] command.
pub async fn apply(
    req: FirewallApply,
    state_dir: PathBuf,
    dialer: &Dialer,
) -> Result<FirewallOutcome, String> {
    check_ruleset(&req.ruleset).map_err(|e| format!("refusing the ruleset: {e}"))?;
    let f = files(&state_dir)?;
    write(&f.next, &req.ruleset)?;
    let next = f.next.display().to_string();
    nft(&["-c", "-f", &next]).map_err(|e| format!("the ruleset does not load: {e}"))?;
    if req.dry_run {
        return Ok(FirewallOutcome {
            dry_run: true,
            checked: true,
            ..FirewallOutcome::default()
        });
    }
    let previous = nft(&["list", "table", "inet", "corral"]).unwrap_or_default();
    let rollback = format!("table {TABLE}\ndelete table {TABLE}\n{previous}");
    write(&f.rollback, &rollback).and_then(|_| write(&f.pending, "1"))?;
    if let Err(e) = nft(&["-f", &next]) {
        let _ = std::fs::remove_file(&f.pending);
        return Err(format!("applying failed, nothing changed: {e}"));
    }
    tracing::info!(
        window_s = req.confirm_within_secs,
        "firewall rules applied; confirming the server is still reachable"
    );
    let started = Instant::now();
    let window = Duration::from_secs(req.confirm_within_secs.max(1));
    loop {
        match tokio::time::timeout(Duration::from_secs(5), dialer.probe_health()).await {
            Ok(Ok(())) => {
                let _ = std::fs::remove_file(&f.pending);
                let ms = started.elapsed().as_millis() as u64;
                tracing::info!(confirmed_after_ms = ms, "firewall rules confirmed");
                return Ok(FirewallOutcome {
                    applied: true,
                    confirmed_after_ms: Some(ms),
                    ..FirewallOutcome::default()
                });
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot reach the server through the new rules")
            }
            Err(_) => tracing::warn!("cannot reach the server through the new rules: timed out"),
        }
        if started.elapsed() >= window {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let outcome = rollback_pending(&state_dir);
    let message = format!(
        "could not open a new connection to the server within {} s after applying the rules; {}",
        window.as_secs(),
        match outcome {
            Ok(_) => "rolled back to the previous rules".to_string(),
            Err(e) => format!("ROLLBACK FAILED: {e}"),
        }
    );
    tracing::error!("{message}");
    Err(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_corral_table() {
        let good = "# c\ntable inet corral\ndelete table inet corral\ntable inet corral {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\n";
        assert!(check_ruleset(good).is_ok());
        for bad in [
            "flush ruleset\n",
            "table inet filter {\n}\n",
            "delete table ip nat\n",
            "table inet corral {\n include \"/etc/x\"\n}\n",
            "table inet corral {\n",
            "}\n",
        ] {
            assert!(check_ruleset(bad).is_err(), "{bad}");
        }
        assert!(check_ruleset(&"#".repeat(MAX_RULESET_BYTES + 1)).is_err());
    }
}
