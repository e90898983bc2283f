//! Images: each environment's registries (accounts sealed at rest), its admission policy, the
//! resolution of tags to the digests every host then runs, and the operators' image commands
//! on one host.
//!
//! Tags are resolved through an agent, by the host's dockerd (`GET /distribution/NAME/json`):
//! the hosts are what must reach the registry and trust its CA anyway, dockerd already speaks
//! the registry protocol with every kind of auth, and the server may sit where no registry is
//! reachable. The server itself never opens a connection to a registry.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use corral_control::admission::{self, Policy, Refusal};
use corral_proto::api::{AdmissionView, RefusalView, RegistryRequest, RegistryView};
use corral_proto::{
    ContainerSpec, ImageRef, ImageSummary, ImageToResolve, ListImages, PullImage, PullPolicy,
    RegistryAuth, RemoveImage, RemovedImage, Resolution, ResolveImages,
};

use crate::dispatch::{self, CallError};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::{Environment, RegistryRow};
use crate::time_fmt::{now_unix, rfc3339};

/// How long a host may take to ask registries about a stack's images.
const RESOLVE_TTL: Duration = Duration::from_secs(60);
/// While no host has answered a resolution, one more is asked this often…
const RESOLVE_HEDGE: Duration = Duration::from_secs(2);
/// …up to this many in all before the deploy is refused.
const MAX_RESOLVE_HOSTS: usize = 10;
/// How long `corral image pull` waits for the pull to end.
const PULL_TTL: Duration = Duration::from_secs(30 * 60);
/// How long listing or removing images may take.
const IMAGE_TTL: Duration = Duration::from_secs(30);
/// Largest CA bundle accepted for a registry.
const MAX_CA_BYTES: usize = 64 * 1024;
/// Longest account name or password.
const MAX_SECRET_BYTES: usize = 4096;
/// Most refusals listed in one answer; the rest are counted.
const MAX_REFUSALS: usize = 50;

async fn environment(state: &AppState, name: Option<&str>) -> Result<Environment> {
    let name = name.unwrap_or("default");
    state
        .store
        .environment_by_name(name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no environment {name:?}; see `corral env ls`")))
}

// ---- registries ---------------------------------------------------------------------------

/// `HOST[:PORT]`: what image references put before the first `/`.
fn check_registry_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with(['.', '-'])
        && (name.contains('.') || name.contains(':') || name == "localhost")
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b':')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "registry {name:?} is not HOST[:PORT] as image references name it (lower case; with a dot or a port, or localhost), e.g. registry.example.com or 10.0.0.5:5000"
        )))
    }
}

/// `corral registry add`.
pub async fn put_registry(state: &AppState, req: RegistryRequest) -> Result<RegistryView> {
    let env = environment(state, req.environment.as_deref()).await?;
    check_registry_name(&req.registry)?;
    for (what, value) in [("username", &req.username), ("password", &req.password)] {
        if value
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > MAX_SECRET_BYTES)
        {
            return Err(Error::invalid(format!(
                "the {what} must be 1 to {MAX_SECRET_BYTES} bytes"
            )));
        }
    }
    if req.username.is_some() != req.password.is_some() {
        return Err(Error::invalid(
            "give both a username and a password (or token), or neither for anonymous pulls",
        ));
    }
    if let Some(pem) = &req.ca_pem {
        check_ca(pem)?;
    }
    let now = now_unix();
    let row = RegistryRow {
        registry: req.registry.clone(),
        username: req.username.clone(),
        password: req.password.clone(),
        ca_pem: req.ca_pem.clone(),
        builds: req.builds,
        created_at: now,
        updated_at: now,
    };
    state.store.put_registry(&env.id, &row, now).await?;
    state
        .record_event(
            "registry_added",
            None,
            &format!(
                "registry {} in environment {}{}",
                row.registry,
                env.name,
                row.username
                    .as_ref()
                    .map(|u| format!(" (account {u})"))
                    .unwrap_or_default()
            ),
        )
        .await;
    Ok(view_of(&env.name, &row))
}

/// A CA must be PEM certificates that parse: a typo must not surface later as a TLS error
/// on every host.
fn check_ca(pem: &str) -> Result<()> {
    if pem.len() > MAX_CA_BYTES {
        return Err(Error::invalid(format!(
            "the CA file is {} bytes; the limit is {MAX_CA_BYTES}",
            pem.len()
        )));
    }
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::invalid(format!("the CA file does not read as PEM: {e:?}")))?;
    if certs.is_empty() {
        return Err(Error::invalid(
            "the CA file holds no certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
            Error::invalid(format!("a certificate of the CA file does not parse: {e}"))
        })?;
    }
    Ok(())
}

fn view_of(env: &str, row: &RegistryRow) -> RegistryView {
    RegistryView {
        environment: env.to_owned(),
        registry: row.registry.clone(),
        username: row.username.clone(),
        has_password: row.password.is_some(),
        has_ca: row.ca_pem.is_some(),
        builds: row.builds,
        updated_at: rfc3339(row.updated_at),
    }
}

/// `corral registry ls`: every environment's, or one's.
pub async fn list_registries(state: &AppState, env: Option<&str>) -> Result<Vec<RegistryView>> {
    let envs = match env {
        Some(name) => vec![environment(state, Some(name)).await?],
        None => state.store.environments().await?,
    };
    let mut out = Vec::new();
    for env in envs {
        for row in state.store.registries(&env.id).await? {
            out.push(view_of(&env.name, &row));
        }
    }
    Ok(out)
}

/// `corral registry rm`.
pub async fn remove_registry(state: &AppState, env: Option<&str>, registry: &str) -> Result<()> {
    let env = environment(state, env).await?;
    if !state.store.remove_registry(&env.id, registry).await? {
        return Err(Error::NotFound(format!(
            "environment {} has no registry {registry:?}; see `corral registry ls`",
            env.name
        )));
    }
    state
        .record_event(
            "registry_removed",
            None,
            &format!("registry {registry} from environment {}", env.name),
        )
        .await;
    Ok(())
}

/// An environment's registries, by name, ready to go down a tunnel with a pull, and the one
/// built images are pushed to.
pub struct Auths(HashMap<String, RegistryAuth>, Option<String>);

impl Auths {
    /// What a pull of `image` needs, if corral knows its registry.
    pub fn for_image(&self, image: &str) -> Option<RegistryAuth> {
        let registry = ImageRef::parse(image).ok()?.registry;
        self.0.get(&registry).cloned()
    }

    /// The registry built images are pushed to, with what it needs.
    pub fn build_registry(&self) -> Option<&RegistryAuth> {
        self.1.as_ref().and_then(|r| self.0.get(r))
    }
}

/// The environment's registries. Fails when one does not open: a pull without the account it
/// needs would fail on every host with a misleading "denied".
pub async fn auths(state: &AppState, env_id: &str) -> Result<Auths> {
    let rows = state.store.registries(env_id).await?;
    let builds = rows.iter().find(|r| r.builds).map(|r| r.registry.clone());
    Ok(Auths(
        rows.into_iter()
            .map(|r| {
                (
                    r.registry.clone(),
                    RegistryAuth {
                        registry: r.registry,
                        username: r.username,
                        password: r.password,
                        ca_pem: r.ca_pem,
                    },
                )
            })
            .collect(),
        builds,
    ))
}

// ---- admission ----------------------------------------------------------------------------

/// The policy in force in an environment. One stored that no longer reads stops every `up`
/// and `run` there (fail closed) until a policy is applied again.
pub async fn policy(state: &AppState, env_id: &str) -> Result<Policy> {
    match state.store.admission_policy(env_id).await? {
        None => Ok(Policy::default()),
        Some(row) => serde_json::from_str(&row.policy).map_err(|e| {
            Error::Refused(format!(
                "the environment's admission policy (generation {}) cannot be read ({e}); nothing is admitted until one is applied again with `corral admission apply`",
                row.generation
            ))
        }),
    }
}

fn admission_view(
    env: &str,
    row: Option<crate::store::PolicyRow>,
    policy: &Policy,
) -> Result<AdmissionView> {
    Ok(AdmissionView {
        environment: env.to_owned(),
        generation: row.as_ref().map(|r| r.generation),
        document: row.as_ref().map(|r| r.document.clone()).unwrap_or_default(),
        effective: serde_json::to_string_pretty(policy).map_err(Error::internal)?,
        applied_at: row.map(|r| rfc3339(r.created_at)),
    })
}

/// `corral admission show`.
pub async fn show_policy(state: &AppState, env: &str) -> Result<AdmissionView> {
    let env = environment(state, Some(env)).await?;
    let policy = policy(state, &env.id).await?;
    let row = state.store.admission_policy(&env.id).await?;
    admission_view(&env.name, row, &policy)
}

/// `corral admission apply`: a new generation (the previous ones are kept).
pub async fn apply_policy(state: &AppState, env: &str, document: &str) -> Result<AdmissionView> {
    let env = environment(state, Some(env)).await?;
    let policy = admission::parse(document).map_err(Error::invalid)?;
    let json = serde_json::to_string(&policy).map_err(Error::internal)?;
    let generation = state
        .store
        .insert_admission_policy(&env.id, document, &json, now_unix())
        .await?;
    state
        .record_event(
            "admission_applied",
            None,
            &format!("environment {}: policy generation {generation}", env.name),
        )
        .await;
    let row = state.store.admission_policy(&env.id).await?;
    admission_view(&env.name, row, &policy)
}

/// The refusals as people read them, bounded.
pub fn refusal_text(refusals: &[Refusal]) -> String {
    let mut lines: Vec<String> = refusals
        .iter()
        .take(MAX_REFUSALS)
        .map(ToString::to_string)
        .collect();
    if refusals.len() > MAX_REFUSALS {
        lines.push(format!("… and {} more", refusals.len() - MAX_REFUSALS));
    }
    format!(
        "refused by the environment's admission policy (`corral admission show`); nothing was changed:\n  {}",
        lines.join("\n  ")
    )
}

pub fn refusal_views(refusals: &[Refusal]) -> Vec<RefusalView> {
    refusals
        .iter()
        .take(MAX_REFUSALS)
        .map(|r| RefusalView {
            rule: r.rule.as_str().to_owned(),
            service: r.service.clone(),
            key: r.key.to_owned(),
            reason: r.reason.clone(),
        })
        .collect()
}

// ---- resolution ---------------------------------------------------------------------------

/// What resolving a set of templates found.
#[derive(Debug, Default)]
pub struct Pinned {
    /// One line per image: `IMAGE → DIGEST`.
    pub resolved: Vec<String>,
    /// Images that stay as written because their registry could not resolve them (the
    /// caller checks that the hosts have them), with why.
    pub unpinned: BTreeMap<String, String>,
    /// Images that cannot run: unresolvable and (for `missing`) not worth trying.
    pub failed: BTreeMap<String, String>,
}

/// Resolves every template's tag to a digest (asking `hosts` in turn, one more every two
/// seconds while none has answered, the first good answer winning) and pins the template to it. A reference written with a digest stays as written; one
/// whose service says `pull_policy: never` is not resolved (the host's own copy runs).
/// A failure is `failed` for `pull_policy: always` (the pull could not succeed either) and
/// `unpinned` for `missing` (hosts that have the image may run it; the caller checks).
pub async fn pin<'a>(
    state: &AppState,
    auths: &Auths,
    hosts: &'a [String],
    templates: &mut [&mut ContainerSpec],
) -> Result<Pinned> {
    let mut wanted: Vec<String> = Vec::new();
    for t in templates.iter() {
        // Already pinned (a built image, pinned as it was pushed): nothing to ask.
        if ImageRef::parse(&t.image).is_ok_and(|r| r.digest.is_some()) {
            continue;
        }
        let written = t.image_source.clone().unwrap_or_else(|| t.image.clone());
        let parsed = ImageRef::parse(&written).map_err(Error::invalid)?;
        if parsed.digest.is_none() && t.pull != PullPolicy::Never && !wanted.contains(&written) {
            wanted.push(written);
        }
    }
    let mut out = Pinned::default();
    if wanted.is_empty() {
        return Ok(out);
    }
    let request = ResolveImages {
        images: wanted
            .iter()
            .map(|image| ImageToResolve {
                reference: image.clone(),
                auth: auths.for_image(image),
            })
            .collect(),
    };
    // Asked of one connected host, then of one more every RESOLVE_HEDGE while none has
    // answered (and at once when one fails), the first good answer winning: a slow or wedged
    // agent costs the deploy seconds, not its whole deadline (one after the other, a thousand
    // of them would have held it for hours).
    let mut answers: Option<Vec<Resolution>> = None;
    let mut tried = Vec::new();
    let mut waiting = hosts
        .iter()
        .filter(|h| state.registry.info(h).is_some())
        .take(MAX_RESOLVE_HOSTS);
    let mut asking = futures_util::stream::FuturesUnordered::new();
    let ask = |host_id: &'a String| dispatch::call(state, host_id, request.clone(), RESOLVE_TTL);
    if let Some(host_id) = waiting.next() {
        asking.push(ask(host_id));
    }
    let mut hedge =
        tokio::time::interval_at(tokio::time::Instant::now() + RESOLVE_HEDGE, RESOLVE_HEDGE);
    while !asking.is_empty() {
        let answer = tokio::select! {
            Some(answer) = futures_util::StreamExt::next(&mut asking) => answer,
            _ = hedge.tick() => {
                if let Some(host_id) = waiting.next() {
                    asking.push(ask(host_id));
                }
                continue;
            }
        };
        match answer {
            Ok(a) if a.len() == wanted.len() => {
                answers = Some(a);
                break;
            }
            Ok(a) => tried.push(format!(
                "a host answered {} resolutions for {} images",
                a.len(),
                wanted.len()
            )),
            Err(CallError::Store(e)) => return Err(e.into()),
            Err(e) => tried.push(e.to_string()),
        }
        if let Some(host_id) = waiting.next() {
            asking.push(ask(host_id));
        }
    }
    drop(asking);
    let Some(answers) = answers else {
        if tried.is_empty() {
            // No host is connected (a stack of no replicas yet, say): nothing will run now.
            // The tags stay as written, said as such; `require_digest` refuses them, and the
            // next `up` with hosts connected pins them.
            for image in wanted {
                out.unpinned
                    .insert(image, "no connected host could ask its registry".into());
            }
            return Ok(out);
        }
        return Err(Error::Conflict(format!(
            "no connected host could ask the registries about the images ({}); nothing was changed",
            tried.join("; ")
        )));
    };
    let found: HashMap<&str, &Resolution> = wanted
        .iter()
        .map(String::as_str)
        .zip(answers.iter())
        .collect();
    for t in templates.iter_mut() {
        let written = t.image_source.clone().unwrap_or_else(|| t.image.clone());
        match found.get(written.as_str()) {
            Some(Resolution::Digest { digest }) => {
                let parsed = ImageRef::parse(&written).map_err(Error::invalid)?;
                t.image = parsed.pinned(digest);
                t.image_source = Some(written.clone());
                let line = format!("{written} → {digest}");
                if !out.resolved.contains(&line) {
                    out.resolved.push(line);
                }
            }
            Some(Resolution::Failed { reason }) => {
                t.image = written.clone();
                t.image_source = None;
                if t.pull == PullPolicy::Always {
                    out.failed.insert(written.clone(), reason.clone());
                } else {
                    out.unpinned.insert(
                        written.clone(),
                        format!("its registry could not resolve it: {reason}"),
                    );
                }
            }
            None => {}
        }
    }
    Ok(out)
}

// ---- one host's images --------------------------------------------------------------------

async fn connected_host(state: &AppState, host: &str) -> Result<crate::store::HostRow> {
    let host = state.store.find_host(host).await?;
    if state.registry.info(&host.id).is_none() {
        return Err(Error::conflict(format!(
            "host {} is not connected",
            host.name
        )));
    }
    Ok(host)
}

/// `corral image ls --host H`.
pub async fn host_images(state: &AppState, host: &str) -> Result<Vec<ImageSummary>> {
    let host = connected_host(state, host).await?;
    Ok(dispatch::call(state, &host.id, ListImages {}, IMAGE_TTL).await?)
}

/// `corral image pull IMAGE --host H`, with the environment's account for its registry.
pub async fn pull_on_host(state: &AppState, host: &str, image: &str) -> Result<ImageSummary> {
    ImageRef::parse(image).map_err(Error::invalid)?;
    let host = connected_host(state, host).await?;
    let auths = auths(state, &host.environment_id).await?;
    let request = PullImage {
        reference: image.to_owned(),
        auth: auths.for_image(image),
    };
    match dispatch::call(state, &host.id, request, PULL_TTL).await {
        Ok(summary) => Ok(summary),
        Err(CallError::Failed(message)) => Err(Error::Agent(message)),
        Err(e) => Err(e.into()),
    }
}

/// `corral image rm IMAGE --host H`.
pub async fn remove_on_host(state: &AppState, host: &str, image: &str) -> Result<RemovedImage> {
    if image.is_empty() || image.len() > corral_proto::MAX_REFERENCE_BYTES {
        return Err(Error::invalid("name an image reference or id"));
    }
    let host = connected_host(state, host).await?;
    let request = RemoveImage {
        reference: image.to_owned(),
    };
    match dispatch::call(state, &host.id, request, IMAGE_TTL).await {
        Ok(removed) => Ok(removed),
        Err(CallError::Failed(message)) => Err(Error::Conflict(message)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_what_references_use() {
        for ok in [
            "registry.example.com",
            "10.0.0.5:5000",
            "localhost",
            "r:5000",
        ] {
            assert!(check_registry_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "nginx", "Registry.example.com", "a/b", "-x.y", "a b.c"] {
            assert!(check_registry_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ca_must_be_a_certificate() {
        assert!(check_ca("hello").is_err());
        assert!(
            check_ca("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
        );
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        assert!(check_ca(&ca.cert.pem()).is_ok());
    }
}
