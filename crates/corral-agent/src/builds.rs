//! Builds: a context arrives in pieces (`image_build_chunk`, each written at its offset into
//! `STATE_DIR/builds/BUILD_ID.tar`, so a piece delivered twice does no harm), then
//! `image_build` checks its size and SHA-256, has dockerd build it (the classic builder,
//! which needs nothing but dockerd), tags it, pushes it with the registry's account, and
//! answers with the pushed digest. The context is removed afterwards, built or not.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{BuildImageOptionsBuilder, PushImageOptionsBuilder};
use corral_proto::{BuildChunk, BuildImage, BuiltImage, ImageRef};
use futures_util::StreamExt;

use crate::docker::Engine;

/// A build may take long; dockerd answers as it goes.
const BUILD_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Lines of build output kept for the answer.
const TAIL_LINES: usize = 20;

/// Where build contexts wait for their build.
#[derive(Debug, Clone)]
pub struct BuildStore {
    dir: PathBuf,
}

fn check_build_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!("build id {id:?} is not valid"));
    }
    Ok(())
}

impl BuildStore {
    pub fn new(state_dir: &Path) -> BuildStore {
        BuildStore {
            dir: state_dir.join("builds"),
        }
    }

    fn path(&self, id: &str) -> Result<PathBuf, String> {
        check_build_id(id)?;
        Ok(self.dir.join(format!("{id}.tar")))
    }

    /// Writes one piece of a context.
    pub fn chunk(&self, c: &BuildChunk) -> Result<(), String> {
        let path = self.path(&c.build_id)?;
        let end = c.offset.saturating_add(c.data.len() as u64);
        if end > corral_proto::MAX_BUILD_CONTEXT_BYTES {
            return Err(format!(
                "a build context may have {} bytes at most",
                corral_proto::MAX_BUILD_CONTEXT_BYTES
            ));
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(fail)?;
        f.seek(SeekFrom::Start(c.offset)).map_err(fail)?;
        f.write_all(&c.data).map_err(fail)
    }

    fn forget(&self, id: &str) {
        if let Ok(path) = self.path(id) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The step a build stopped at (`Step 3/5 : RUN make`), from its output.
fn last_step(lines: &[String]) -> Option<&str> {
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("Step "))
        .map(String::as_str)
}

impl Engine {
    /// `image_build`: build, tag, push; the digest pushed.
    pub async fn build(&self, store: &BuildStore, req: &BuildImage) -> Result<BuiltImage, String> {
        let result = self.build_and_push(store, req).await;
        store.forget(&req.build_id);
        result
    }

    async fn build_and_push(
        &self,
        store: &BuildStore,
        req: &BuildImage,
    ) -> Result<BuiltImage, String> {
        let host = self.host_name().to_owned();
        let path = store.path(&req.build_id)?;
        let data = std::fs::read(&path)
            .map_err(|e| format!("the build context did not arrive on host {host}: {e}"))?;
        if data.len() as u64 != req.size || crate::files::sha256_hex(&data) != req.sha256 {
            return Err(format!(
                "the build context on host {host} is not the one sent ({} of {} bytes, or another SHA-256)",
                data.len(),
                req.size
            ));
        }
        let parsed = ImageRef::parse(&req.tag)?;
        if let Some(auth) = &req.auth {
            crate::images::install_ca(self.certs_dir(), auth)?;
        }
        let docker = self.client().await?.with_timeout(BUILD_TIMEOUT);
        let args: std::collections::HashMap<String, String> = req
            .args
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut options = BuildImageOptionsBuilder::default()
            .dockerfile(&req.dockerfile)
            .t(&req.tag)
            .rm(true)
            .forcerm(true)
            .buildargs(&args);
        if let Some(target) = &req.target {
            options = options.target(target);
        }
        // Build steps run on Docker's default bridge; an engine without one (`--bridge=none`)
        // builds without a network rather than not at all.
        if docker
            .inspect_network(
                "bridge",
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .is_err()
        {
            options = options.networkmode("none");
        }
        let credentials = req.auth.as_ref().and_then(|a| {
            let creds = DockerCredentials {
                username: a.username.clone(),
                password: a.password.clone(),
                serveraddress: Some(a.registry.clone()),
                ..Default::default()
            };
            a.username.as_ref()?;
            Some(std::collections::HashMap::from([(
                a.registry.clone(),
                creds,
            )]))
        });
        let mut stream = docker.build_image(
            options.build(),
            credentials,
            Some(bollard::body_full(data.into())),
        );
        let mut lines: Vec<String> = Vec::new();
        // Lines not yet sent to the server.
        let mut pending: Vec<String> = Vec::new();
        let keep = |text: &str, lines: &mut Vec<String>, pending: &mut Vec<String>| {
            for l in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                lines.push(l.to_owned());
                pending.push(l.to_owned());
                if lines.len() > 200 {
                    lines.drain(..100);
                }
            }
        };
        tracing::info!(tag = %req.tag, "building");
        // The output goes to the server as it comes, a batch at most twice a second (and at
        // every step).
        let mut last_sent = std::time::Instant::now();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(s) = &info.stream {
                        keep(s, &mut lines, &mut pending);
                        if last_sent.elapsed() >= Duration::from_millis(500) || s.contains("Step ")
                        {
                            self.report_build_log(&req.build_id, &pending);
                            pending.clear();
                            last_sent = std::time::Instant::now();
                        }
                    }
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        return Err(failed(&host, &lines, &e));
                    }
                }
                Err(e) => {
                    let why = match &e {
                        bollard::errors::Error::DockerStreamError { error } => error.clone(),
                        bollard::errors::Error::DockerResponseServerError { message, .. } => {
                            message.clone()
                        }
                        other => other.to_string(),
                    };
                    return Err(failed(&host, &lines, &why));
                }
            }
        }
        self.report_build_log(&req.build_id, &pending);
        let tag = parsed.effective_tag().unwrap_or("latest").to_owned();
        let push_creds = req.auth.as_ref().and_then(|a| {
            a.username.as_ref()?;
            Some(DockerCredentials {
                username: a.username.clone(),
                password: a.password.clone(),
                serveraddress: Some(a.registry.clone()),
                ..Default::default()
            })
        });
        let mut push = docker.push_image(
            &parsed.familiar_name(),
            Some(PushImageOptionsBuilder::default().tag(&tag).build()),
            push_creds,
        );
        let mut digest = None;
        while let Some(item) = push.next().await {
            match item {
                Ok(info) => {
                    // "1: digest: sha256:… size: 527"
                    if let Some(status) = &info.status
                        && let Some(rest) = status.split("digest: ").nth(1)
                        && let Some(d) = rest.split_whitespace().next()
                    {
                        digest = Some(d.to_owned());
                    }
                }
                Err(e) => {
                    let why = match &e {
                        bollard::errors::Error::DockerStreamError { error } => error.clone(),
                        other => other.to_string(),
                    };
                    return Err(format!(
                        "built {}, but cannot push it from host {host}: {why}",
                        req.tag
                    ));
                }
            }
        }
        let digest = digest
            .filter(|d| corral_proto::check_digest(d).is_ok())
            .ok_or_else(|| format!("pushed {}, but the registry named no digest", req.tag))?;
        tracing::info!(tag = %req.tag, %digest, "built and pushed");
        let start = lines.len().saturating_sub(TAIL_LINES);
        Ok(BuiltImage {
            digest,
            log_tail: lines.split_off(start),
        })
    }
}

impl Engine {
    fn report_build_log(&self, build_id: &str, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        let lines: Vec<String> = lines
            .iter()
            .rev()
            .take(64)
            .rev()
            .map(|l| {
                let mut cut = l.len().min(1024);
                while !l.is_char_boundary(cut) {
                    cut -= 1;
                }
                l[..cut].to_owned()
            })
            .collect();
        // Advisory, like pull progress: a full queue drops a batch, never the outcome.
        let _ = self.try_report(corral_proto::Report::BuildLog {
            build_id: build_id.to_owned(),
            lines,
        });
    }
}

fn failed(host: &str, lines: &[String], why: &str) -> String {
    let at = last_step(lines)
        .map(|s| format!(" at {s}"))
        .unwrap_or_default();
    let tail: Vec<&str> = lines
        .iter()
        .rev()
        .take(5)
        .rev()
        .map(String::as_str)
        .collect();
    format!(
        "the build failed on host {host}{at}: {}{}",
        why.trim(),
        if tail.is_empty() {
            String::new()
        } else {
            format!("\n  {}", tail.join("\n  "))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_land_at_their_offsets_and_twice_is_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = BuildStore::new(dir.path());
        let chunk = |offset: u64, data: &[u8]| BuildChunk {
            build_id: "bld-1".into(),
            offset,
            data: data.to_vec(),
        };
        store.chunk(&chunk(3, b"def")).unwrap();
        store.chunk(&chunk(0, b"abc")).unwrap();
        store.chunk(&chunk(3, b"def")).unwrap();
        assert_eq!(
            std::fs::read(store.path("bld-1").unwrap()).unwrap(),
            b"abcdef"
        );
        assert!(
            store
                .chunk(&BuildChunk {
                    build_id: "../x".into(),
                    offset: 0,
                    data: vec![]
                })
                .is_err()
        );
        assert!(
            store
                .chunk(&chunk(corral_proto::MAX_BUILD_CONTEXT_BYTES, b"x"))
                .is_err()
        );
        store.forget("bld-1");
        assert!(!store.path("bld-1").unwrap().exists());
    }

    #[test]
    fn a_failure_names_the_step() {
        let lines = vec![
            "Step 1/2 : FROM x".to_string(),
            "Step 2/2 : RUN false".into(),
            " ---> Running in 1".into(),
        ];
        let e = failed(
            "h1",
            &lines,
            "The command '/bin/sh -c false' returned a non-zero code: 1",
        );
        assert!(
            e.starts_with("the build failed on host h1 at Step 2/2 : RUN false: The command"),
            "{e}"
        );
    }
}
