//! Network policy on this host: the environment's policy document and name table become the
//! nftables table `inet corral_policy` (see `corral_policy::nft`).
//!
//! - Inputs: the policy (`network_policy` messages), the name table (which overlay address is
//!   which service, with the services' labels) and the overlay range. Each change is saved to
//!   `STATE_DIR/policy.json` (0600) before it is applied, and one task applies the latest
//!   inputs (changes that arrive while it works are folded into its next pass).
//! - Fail closed: until the agent knows the policy (restored from `policy.json` at start, or
//!   received from the server) it starts no stack container; a replica the name table does
//!   not list yet is dropped; rules stay in the kernel while the agent is down (nothing
//!   removes them when it stops) and the saved inputs are applied again before it dials.
//! - Same-host traffic is bridged: the forward hook sees it only with the kernel's bridge
//!   netfilter on (`net.bridge.bridge-nf-call-iptables`, module `br_netfilter`, which Docker
//!   turns on too). Where it cannot be turned on, a `bridge` table drops bridged traffic
//!   between overlay addresses instead, and `corral doctor` says why.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use corral_policy::{Cidr, Class, Workload, compile, nft};
use corral_proto::{NameTable, NetworkPolicy};
use serde::{Deserialize, Serialize};

use crate::docker::Engine;

const STATE_FILE: &str = "policy.json";
const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// What the rules are made from (saved as `policy.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Inputs {
    policy: Option<NetworkPolicy>,
    names: Option<NameTable>,
    range: Option<String>,
}

/// What is in force, for `corral doctor`.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The generation of the policy in force (0: none applied).
    pub generation: u64,
    /// Whether a document is in force (false: no policy, nothing filtered).
    pub enforcing: bool,
    /// Services and replicas the rules know.
    pub services: usize,
    pub replicas: usize,
    /// Why the latest inputs are not in force, if they are not.
    pub error: Option<String>,
    /// Same-host traffic is cut rather than filtered (no bridge netfilter).
    pub bridge_cut: bool,
    /// Addresses two services claimed (a stale name table).
    pub conflicts: usize,
}

pub struct Enforcer {
    path: PathBuf,
    inputs: Mutex<Inputs>,
    wake: tokio::sync::Notify,
    status: Mutex<Status>,
    engine: Arc<Engine>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `nft -f -` with `script` on standard input.
async fn nft_load(script: &str) -> Result<(), String> {
    nft_load_if_installed(script)
        .await?
        .ok_or_else(|| "cannot run nft; install nftables (package nftables)".to_owned())
}

/// As [`nft_load`]; `Ok(None)` when `nft` is not installed at all.
async fn nft_load_if_installed(script: &str) -> Result<Option<()>, String> {
    let mut child = match tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot run nft ({e})")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(Some(()))
    } else {
        let mut err = String::from_utf8_lossy(&out.stderr).into_owned();
        err.truncate(2048);
        Err(format!("nft refused the policy rules: {}", err.trim()))
    }
}

/// Turns bridge netfilter on in this network namespace; false when the kernel lacks it.
async fn bridge_netfilter() -> bool {
    let on = || std::fs::read_to_string(BRIDGE_NF).map(|v| v.trim() == "1");
    if on().is_err() {
        let _ = tokio::process::Command::new("modprobe")
            .arg("br_netfilter")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    match on() {
        Ok(true) => true,
        Ok(false) => {
            let written = std::fs::OpenOptions::new()
                .write(true)
                .open(BRIDGE_NF)
                .and_then(|mut f| f.write_all(b"1"));
            written.is_ok() && matches!(on(), Ok(true))
        }
        Err(_) => false,
    }
}

/// The services of a name table as classes of the policy (their replicas' addresses).
fn classes(names: &NameTable) -> Vec<Class> {
    names
        .services
        .iter()
        .map(|s| Class {
            workload: Workload {
                stack: s.stack.clone(),
                service: s.service.clone(),
                labels: s.labels.clone(),
            },
            addresses: s.members.clone(),
        })
        .collect()
}

impl Enforcer {
    pub fn new(dir: &std::path::Path, engine: Arc<Engine>) -> Arc<Enforcer> {
        let enforcer = Arc::new(Enforcer {
            path: dir.join(STATE_FILE),
            inputs: Mutex::new(Inputs::default()),
            wake: tokio::sync::Notify::new(),
            status: Mutex::new(Status::default()),
            engine,
        });
        tokio::spawn(enforcer.clone().run());
        enforcer
    }

    /// Applies the inputs saved by the previous run, before the agent dials: a restarted
    /// agent enforces what it enforced before, whatever the server is doing. A file that does
    /// not read is an error for `doctor`, and stack containers wait for the server's policy.
    pub async fn restore(&self) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                lock(&self.status).error = Some(format!("{}: {e}", self.path.display()));
                return;
            }
        };
        match serde_json::from_str::<Inputs>(&text) {
            Ok(inputs) => {
                tracing::info!(path = %self.path.display(), "restoring the network policy from the last run");
                *lock(&self.inputs) = inputs;
                self.apply().await;
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "the saved network policy does not read; stack containers wait for the server's");
                lock(&self.status).error = Some(format!(
                    "{} does not read ({e}); waiting for the server's policy",
                    self.path.display()
                ));
            }
        }
    }

    pub fn set_policy(&self, policy: NetworkPolicy) {
        self.change(|i| i.policy = Some(policy));
    }

    pub fn set_names(&self, names: NameTable) {
        self.change(|i| i.names = Some(names));
    }

    pub fn set_range(&self, range: &str) {
        let same = lock(&self.inputs).range.as_deref() == Some(range);
        if !same {
            self.change(|i| i.range = Some(range.to_owned()));
        }
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    fn change(&self, f: impl FnOnce(&mut Inputs)) {
        let snapshot = {
            let mut inputs = lock(&self.inputs);
            f(&mut inputs);
            inputs.clone()
        };
        // Saved before it is applied: a restart enforces at least this.
        match serde_json::to_vec(&snapshot) {
            Ok(bytes) => {
                if let Err(e) = corral_tls::files::write_private(&self.path, &bytes) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot save the network policy");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the network policy"),
        }
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            self.apply().await;
        }
    }

    /// Makes the kernel's rules match the latest inputs.
    async fn apply(&self) {
        let inputs = lock(&self.inputs).clone();
        let outcome = self.enforce(&inputs).await;
        let mut status = lock(&self.status);
        match outcome {
            Ok(s) => {
                *status = s;
                drop(status);
                self.engine.set_policy_ready(true);
            }
            Err(e) => {
                tracing::error!(error = %e, "the network policy is not in force");
                status.error = Some(e);
            }
        }
    }

    async fn enforce(&self, inputs: &Inputs) -> Result<Status, String> {
        let Some(policy) = &inputs.policy else {
            // The server has not said yet (a new agent): nothing to enforce, and stack
            // containers wait (the engine's gate stays shut).
            return Err("the network policy has not arrived from the server yet".into());
        };
        // A document with no rule and every default `allow` filters nothing: no table at all,
        // so its traffic costs exactly what it costs without a policy.
        let document = policy
            .document
            .as_ref()
            .filter(|d| **d != corral_policy::Document::default());
        let Some(document) = document else {
            // Without nft there can be no table to remove: a host without nftables runs
            // stacks as long as no policy asks for rules.
            nft_load_if_installed(&nft::render_removal()).await?;
            nft_load_if_installed(&nft::render_bridge_cut_removal()).await?;
            // Said once per generation, not on every new name table.
            let said = {
                let st = lock(&self.status);
                !st.enforcing && st.error.is_none() && st.generation == policy.generation
            };
            if said {
                tracing::debug!(generation = policy.generation, "no network policy in force");
            } else {
                tracing::info!(generation = policy.generation, "no network policy in force");
            }
            return Ok(Status {
                generation: policy.generation,
                ..Status::default()
            });
        };
        let Some(range) = &inputs.range else {
            return Err("the overlay configuration has not arrived yet".into());
        };
        let range: Cidr = range
            .parse()
            .map_err(|e| format!("the overlay range {range:?}: {e}"))?;
        let classes = inputs.names.as_ref().map(classes).unwrap_or_default();
        let rules = compile(document, &classes, range, policy.generation);
        let bridged = bridge_netfilter().await;
        // The cut goes in before the rules and comes out after them, so there is no moment
        // without one or the other.
        if !bridged {
            nft_load(&nft::render_bridge_cut(range)).await?;
        }
        nft_load(&nft::render(&rules)).await?;
        if bridged {
            nft_load(&nft::render_bridge_cut_removal()).await?;
        }
        if !rules.conflicts.is_empty() {
            tracing::warn!(addresses = ?rules.conflicts, "overlay addresses claimed by two services; each kept in the first");
        }
        let replicas = rules.classes.iter().map(|c| c.addresses.len()).sum();
        tracing::info!(
            generation = policy.generation,
            services = rules.classes.len(),
            replicas,
            "network policy in force"
        );
        Ok(Status {
            generation: policy.generation,
            enforcing: true,
            services: rules.classes.len(),
            replicas,
            error: (!bridged).then(|| {
                "the kernel has no bridge netfilter (module br_netfilter): containers on this host cannot reach each other at all (cut, not filtered); load the module to filter them".to_owned()
            }),
            bridge_cut: !bridged,
            conflicts: rules.conflicts.len(),
        })
    }

    /// The policy table's counters (`deny_N`, `default_*`, `unknown`): packets dropped or
    /// let through by each, since the rules were last replaced.
    pub async fn counters(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let Ok(o) = tokio::process::Command::new("nft")
            .args(["-j", "list", "counters", "table", "inet", nft::TABLE])
            .output()
            .await
        else {
            return out;
        };
        #[derive(Deserialize)]
        struct Listing {
            nftables: Vec<Item>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Counter { counter: Counter },
            Other(serde::de::IgnoredAny),
        }
        #[derive(Deserialize)]
        struct Counter {
            name: String,
            packets: u64,
        }
        let Ok(listing) = serde_json::from_slice::<Listing>(&o.stdout) else {
            return out;
        };
        for item in listing.nftables {
            if let Item::Counter { counter } = item {
                out.insert(counter.name, counter.packets);
            }
        }
        out
    }
}
