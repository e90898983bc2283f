//! Images on the host: pulls (with progress reports), digest resolution, listing and removal,
//! all through dockerd, which speaks the registry protocol (token and basic auth, TLS).
//!
//! Credentials arrive inside the command that needs them and go to dockerd in the request's
//! `X-Registry-Auth` header; nothing here writes them anywhere. A registry's private CA is
//! installed where dockerd reads it (`CERTS_DIR/REGISTRY/ca.crt`): it is public, and dockerd
//! has no other way to be told.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
};
use corral_proto::{
    ContainerSpec, ImageRef, ImageSummary, PullPolicy, PullProgress, RegistryAuth, RemovedImage,
    Report, Resolution, ResolveImages,
};
use futures_util::StreamExt;

use crate::docker::Engine;

/// Where dockerd looks for a registry's CA (`/etc/docker/certs.d/HOST:PORT/ca.crt`).
pub const DEFAULT_CERTS_DIR: &str = "/etc/docker/certs.d";

/// Largest CA bundle accepted for one registry.
const MAX_CA_BYTES: usize = 64 * 1024;

/// How often a pull in progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A pull may take long (large layers, slow links); dockerd answers as it goes.
const PULL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The registry's name as a directory name: `HOST[:PORT]`, nothing that could leave the
/// certificates directory.
fn registry_dir(certs_dir: &Path, registry: &str) -> Result<PathBuf, String> {
    let ok = !registry.is_empty()
        && registry.len() <= 253
        && !registry.starts_with('.')
        && registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !ok {
        return Err(format!(
            "registry name {registry:?} is not HOST[:PORT]; its CA is not installed"
        ));
    }
    Ok(certs_dir.join(registry))
}

/// Installs the registry's CA for dockerd unless the same one is there already.
pub fn install_ca(certs_dir: &Path, auth: &RegistryAuth) -> Result<(), String> {
    let Some(pem) = &auth.ca_pem else {
        return Ok(());
    };
    if pem.len() > MAX_CA_BYTES || !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "the CA given for registry {} is not a PEM certificate of at most {MAX_CA_BYTES} bytes",
            auth.registry
        ));
    }
    let dir = registry_dir(certs_dir, &auth.registry)?;
    let path = dir.join("ca.crt");
    if std::fs::read_to_string(&path).is_ok_and(|current| current == *pem) {
        return Ok(());
    }
    let fail = |e: std::io::Error| {
        format!(
            "cannot install the CA of registry {} at {}: {e}",
            auth.registry,
            path.display()
        )
    };
    std::fs::create_dir_all(&dir).map_err(fail)?;
    // Written aside and renamed: dockerd never reads half a certificate.
    let tmp = dir.join(".ca.crt.corral-tmp");
    std::fs::write(&tmp, pem).map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(fail)?;
    tracing::info!(registry = %auth.registry, path = %path.display(), "installed the registry's CA");
    Ok(())
}

fn credentials(auth: Option<&RegistryAuth>) -> Option<DockerCredentials> {
    let auth = auth?;
    auth.username.as_ref()?;
    Some(DockerCredentials {
        username: auth.username.clone(),
        password: auth.password.clone(),
        serveraddress: Some(auth.registry.clone()),
        ..Default::default()
    })
}

/// The registry's answer as dockerd relays it, without Docker's framing.
fn registry_reason(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

fn status_code(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The lock of one reference's pulls, and when one last succeeded.
type PullEntry = (std::sync::Arc<tokio::sync::Mutex<()>>, Option<Instant>);

/// One pull per reference at a time, and the time each last succeeded.
#[derive(Default)]
pub struct PullGate {
    inner: std::sync::Mutex<HashMap<String, PullEntry>>,
}

/// A pull of `always` that finished this recently serves replicas created meanwhile.
const FRESH_PULL: Duration = Duration::from_secs(10);

impl PullGate {
    fn lock_for(&self, reference: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Forget references nobody holds or waits on (bounded by what runs at once).
        inner.retain(|_, (lock, at)| {
            std::sync::Arc::strong_count(lock) > 1 || at.is_some_and(|t| t.elapsed() < FRESH_PULL)
        });
        inner
            .entry(reference.to_owned())
            .or_insert_with(|| (Default::default(), None))
            .0
            .clone()
    }

    fn pulled(&self, reference: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = inner.get_mut(reference) {
            entry.1 = Some(Instant::now());
        }
    }

    fn fresh(&self, reference: &str) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .get(reference)
            .and_then(|(_, at)| *at)
            .is_some_and(|t| t.elapsed() < FRESH_PULL)
    }
}

/// Per-layer progress of one pull, folded into one [`PullProgress`].
#[derive(Default)]
struct Layers {
    /// Layer id → (downloaded, total, done).
    layers: HashMap<String, (u64, u64, bool)>,
}

impl Layers {
    fn update(&mut self, id: &str, status: &str, current: Option<i64>, total: Option<i64>) {
        // Lines without a layer's short id ("Pulling from …" carries the tag as its id;
        // "Digest: …" and "Status: …" none) say nothing about bytes.
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return;
        }
        let entry = self.layers.entry(id.to_owned()).or_default();
        match status {
            "Downloading" => {
                entry.0 = current.map_or(entry.0, |c| c.max(0) as u64);
                entry.1 = total.map_or(entry.1, |t| t.max(0) as u64);
            }
            "Download complete" | "Verifying Checksum" => entry.0 = entry.1.max(entry.0),
            "Pull complete" | "Already exists" => {
                entry.0 = entry.1.max(entry.0);
                entry.2 = true;
            }
            _ => {}
        }
    }

    fn progress(&self, image: &str, corral_id: Option<&str>, done: bool) -> PullProgress {
        PullProgress {
            corral_id: corral_id.map(str::to_owned),
            image: image.to_owned(),
            downloaded_bytes: self.layers.values().map(|l| l.0).sum(),
            total_bytes: self.layers.values().map(|l| l.1).sum(),
            layers_done: self.layers.values().filter(|l| l.2).count() as u32,
            layers: self.layers.len() as u32,
            done,
        }
    }
}

impl Engine {
    /// Asks each image's registry, through dockerd, which digest its reference names now.
    pub async fn resolve(&self, req: &ResolveImages) -> Result<Vec<Resolution>, String> {
        let docker = self.client().await?;
        let mut out = Vec::with_capacity(req.images.len());
        for image in &req.images {
            out.push(self.resolve_one(&docker, image).await);
        }
        Ok(out)
    }

    async fn resolve_one(
        &self,
        docker: &Docker,
        image: &corral_proto::ImageToResolve,
    ) -> Resolution {
        if let Some(auth) = &image.auth
            && let Err(reason) = install_ca(self.certs_dir(), auth)
        {
            return Resolution::Failed { reason };
        }
        match docker
            .inspect_registry_image(&image.reference, credentials(image.auth.as_ref()))
            .await
        {
            Ok(found) => match found.descriptor.digest {
                Some(digest) if corral_proto::check_digest(&digest).is_ok() => {
                    Resolution::Digest { digest }
                }
                other => Resolution::Failed {
                    reason: format!("the registry answered without a usable digest ({other:?})"),
                },
            },
            Err(e) => Resolution::Failed {
                reason: registry_reason(&e),
            },
        }
    }

    /// Pulls `reference` with progress reports (tagged with the container it is for, if any).
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
        corral_id: Option<&str>,
    ) -> Result<(), String> {
        let host = self.host_name().to_owned();
        let fail = |why: String| format!("cannot pull image {reference} on host {host}: {why}");
        let parsed = ImageRef::parse(reference).map_err(&fail)?;
        if let Some(auth) = auth {
            install_ca(self.certs_dir(), auth).map_err(&fail)?;
        }
        let docker = self.client().await?.with_timeout(PULL_TIMEOUT);
        // fromImage NAME with tag TAG or DIGEST: Docker's own split.
        let tag = parsed
            .digest
            .clone()
            .or_else(|| parsed.effective_tag().map(str::to_owned))
            .unwrap_or_else(|| "latest".into());
        let options = CreateImageOptionsBuilder::default()
            .from_image(&parsed.familiar_name())
            .tag(&tag)
            .build();
        let mut stream = docker.create_image(Some(options), None, credentials(auth));
        let mut layers = Layers::default();
        // The first report goes at once (a pull shows as soon as it starts), then one a second.
        let mut last_report: Option<Instant> = None;
        tracing::info!(image = reference, "pulling");
        let mut outcome = Ok(());
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let detail = info.progress_detail.unwrap_or_default();
                    layers.update(
                        info.id.as_deref().unwrap_or_default(),
                        info.status.as_deref().unwrap_or_default(),
                        detail.current,
                        detail.total,
                    );
                    if last_report.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                        last_report = Some(Instant::now());
                        self.report_progress(layers.progress(reference, corral_id, false));
                    }
                }
                Err(e) => {
                    outcome = Err(fail(registry_reason(&e)));
                    break;
                }
            }
        }
        self.report_progress(layers.progress(reference, corral_id, true));
        match &outcome {
            Ok(()) => tracing::info!(image = reference, "pulled"),
            Err(e) => tracing::warn!(image = reference, error = %e, "pull failed"),
        }
        outcome
    }

    fn report_progress(&self, progress: PullProgress) {
        // Progress is advisory: a full queue drops this one; the next (or the outcome) follows.
        let _ = self.try_report(Report::Pull(progress));
    }

    /// Makes sure the image `spec` names is on the host as its pull policy says, and that it
    /// is the digest the server admitted.
    pub async fn ensure_image(&self, docker: &Docker, spec: &ContainerSpec) -> Result<(), String> {
        let host = self.host_name();
        // Replicas created together wait for one pull of their image, then find it there.
        let gate = self.pulls.lock_for(&spec.image);
        let _one_pull = gate.lock().await;
        let present = match docker.inspect_image(&spec.image).await {
            Ok(_) => true,
            Err(e) if matches!(status_code(&e), Some(404 | 400)) => false,
            Err(e) => {
                return Err(format!(
                    "cannot inspect image {} on host {host}: {e}",
                    spec.image
                ));
            }
        };
        match (spec.pull, present) {
            (PullPolicy::Never, false) => {
                return Err(format!(
                    "image {} is not present on host {host} and the service's pull_policy is never: load it there first",
                    shown(spec)
                ));
            }
            (PullPolicy::Never, true) | (PullPolicy::Missing, true) => {}
            (PullPolicy::Always, true) if self.pulls.fresh(&spec.image) => {}
            (PullPolicy::Always, _) | (PullPolicy::Missing, false) => {
                self.pull(
                    &spec.image,
                    spec.registry_auth.as_ref(),
                    Some(&spec.corral_id),
                )
                .await?;
                self.pulls.pulled(&spec.image);
            }
        }
        self.check_digest(docker, spec).await
    }

    /// A pinned image must carry its digest on this host: the bytes the server admitted.
    async fn check_digest(&self, docker: &Docker, spec: &ContainerSpec) -> Result<(), String> {
        let Ok(parsed) = ImageRef::parse(&spec.image) else {
            return Ok(());
        };
        let Some(digest) = parsed.digest else {
            return Ok(());
        };
        let found = docker.inspect_image(&spec.image).await.map_err(|e| {
            format!(
                "cannot inspect image {} on host {}: {e}",
                spec.image,
                self.host_name()
            )
        })?;
        let suffix = format!("@{digest}");
        let carries = found
            .repo_digests
            .unwrap_or_default()
            .iter()
            .any(|d| d.ends_with(&suffix));
        if carries {
            Ok(())
        } else {
            Err(format!(
                "image {} on host {} does not carry the admitted digest {digest}; it is not run",
                shown(spec),
                self.host_name()
            ))
        }
    }

    /// `corral image pull`.
    pub async fn pull_now(&self, req: &corral_proto::PullImage) -> Result<ImageSummary, String> {
        self.pull(&req.reference, req.auth.as_ref(), None).await?;
        let docker = self.client().await?;
        let found = docker
            .inspect_image(&req.reference)
            .await
            .map_err(|e| format!("pulled {}, but cannot inspect it: {e}", req.reference))?;
        Ok(ImageSummary {
            id: found.id.unwrap_or_default(),
            tags: found.repo_tags.unwrap_or_default(),
            digests: found.repo_digests.unwrap_or_default(),
            size_bytes: found.size.unwrap_or(0).max(0) as u64,
            created: found
                .created
                .as_deref()
                .and_then(parse_rfc3339_secs)
                .unwrap_or(0),
            containers: 0,
        })
    }

    /// `corral image ls`.
    pub async fn images(&self) -> Result<Vec<ImageSummary>, String> {
        let docker = self.client().await?;
        let found = docker
            .list_images(Some(ListImagesOptionsBuilder::default().all(false).build()))
            .await
            .map_err(|e| format!("cannot list images on host {}: {e}", self.host_name()))?;
        Ok(found
            .into_iter()
            .map(|i| ImageSummary {
                id: i.id,
                tags: i
                    .repo_tags
                    .into_iter()
                    .filter(|t| t != "<none>:<none>")
                    .collect(),
                digests: i
                    .repo_digests
                    .into_iter()
                    .filter(|d| d != "<none>@<none>")
                    .collect(),
                size_bytes: i.size.max(0) as u64,
                created: i.created,
                containers: u32::try_from(i.containers.max(0)).unwrap_or(u32::MAX),
            })
            .collect())
    }

    /// `corral image rm`: refused by Docker while a container uses the image.
    pub async fn remove_image(&self, reference: &str) -> Result<RemovedImage, String> {
        let docker = self.client().await?;
        let removed = docker
            .remove_image(
                reference,
                Some(RemoveImageOptionsBuilder::default().force(false).build()),
                None,
            )
            .await
            .map_err(|e| {
                format!(
                    "cannot remove image {reference} on host {}: {}",
                    self.host_name(),
                    registry_reason(&e)
                )
            })?;
        let mut out = RemovedImage::default();
        for item in removed {
            if let Some(u) = item.untagged {
                out.untagged.push(u);
            }
            if let Some(d) = item.deleted {
                out.deleted.push(d);
            }
        }
        Ok(out)
    }
}

/// The image as people wrote it (the tag), with the digest it runs.
fn shown(spec: &ContainerSpec) -> String {
    match &spec.image_source {
        Some(source) => format!("{source} ({})", spec.image),
        None => spec.image.clone(),
    }
}

/// Seconds of an RFC 3339 time as Docker writes it (`2026-11-30T12:00:00.123456789Z`).
fn parse_rfc3339_secs(text: &str) -> Option<i64> {
    let date = text.get(..10)?;
    let time = text.get(11..19)?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_is_installed_once_and_only_under_the_certificates_directory() {
        let dir = tempfile::tempdir().unwrap();
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let auth = |registry: &str| RegistryAuth {
            registry: registry.into(),
            username: None,
            password: None,
            ca_pem: Some(pem.into()),
        };
        install_ca(dir.path(), &auth("198.18.0.9:5000")).unwrap();
        let path = dir.path().join("198.18.0.9:5000/ca.crt");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), pem);
        install_ca(dir.path(), &auth("198.18.0.9:5000")).unwrap();
        for evil in ["../etc", "a/b", "", ".hidden", "x y"] {
            assert!(install_ca(dir.path(), &auth(evil)).is_err(), "{evil:?}");
        }
        let mut not_pem = auth("r:1");
        not_pem.ca_pem = Some("hello".into());
        assert!(install_ca(dir.path(), &not_pem).is_err());
    }

    #[test]
    fn layer_progress_adds_up() {
        let mut l = Layers::default();
        let (abc, def) = ("0123456789ab", "ba9876543210");
        l.update(abc, "Pulling fs layer", None, None);
        l.update(def, "Pulling fs layer", None, None);
        l.update(abc, "Downloading", Some(50), Some(100));
        l.update(def, "Already exists", None, None);
        let p = l.progress("x", Some("ctr-1"), false);
        assert_eq!((p.downloaded_bytes, p.total_bytes), (50, 100));
        assert_eq!((p.layers_done, p.layers), (1, 2));
        l.update(abc, "Pull complete", None, None);
        let p = l.progress("x", None, true);
        assert_eq!((p.downloaded_bytes, p.layers_done), (100, 2));
        // Lines about the image, not a layer.
        l.update("1.0", "Pulling from team/app", None, None);
        l.update("", "Digest: sha256:…", None, None);
        assert_eq!(l.progress("x", None, true).layers, 2);
    }

    #[test]
    fn replicas_share_one_pull_per_reference() {
        let gate = PullGate::default();
        let a = gate.lock_for("r/app@sha256:1");
        let b = gate.lock_for("r/app@sha256:1");
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert!(!std::sync::Arc::ptr_eq(&a, &gate.lock_for("r/other:1")));
        assert!(!gate.fresh("r/app@sha256:1"));
        gate.pulled("r/app@sha256:1");
        assert!(gate.fresh("r/app@sha256:1"));
        drop((a, b));
        // Entries nobody holds and no fresh pull keeps are forgotten.
        let _ = gate.lock_for("x:1");
        assert!(gate.inner.lock().unwrap().len() <= 3);
    }

    #[test]
    fn docker_times_read_as_unix_seconds() {
        assert_eq!(parse_rfc3339_secs("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_secs("2026-12-02T00:00:00.123Z"),
            Some(1_796_169_600)
        );
        assert_eq!(parse_rfc3339_secs("garbage"), None);
    }
}
