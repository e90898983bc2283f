//! Builds: a service's `build:` context, sent by the CLI as a tar and kept by content
//! (`DATA_DIR/build-contexts/SHA256.tar`, 0600), is built on one host that will run the service
//! and pushed to the environment's build registry; every host then pulls that one digest like
//! any image. The tag names the recipe — the context's SHA-256, the Dockerfile, the args, the
//! target — so an unchanged context is found in the registry, not built again, and its service
//! does not roll.

use std::path::PathBuf;
use std::time::Duration;

use corral_compose as compose;
use corral_proto::{
    BUILD_CHUNK_BYTES, BuildChunk, BuildImage, ImageRef, ImageToResolve, Resolution, ResolveImages,
};

use crate::dispatch::{self, CallError};
use crate::error::{Error, Result};
use crate::images::Auths;
use crate::secrets::new_id;
use crate::state::AppState;

/// Where contexts are kept, under the data dir.
const CONTEXTS_DIR: &str = "build-contexts";
/// How long a host may take to receive a context's pieces.
const CHUNK_TTL: Duration = Duration::from_secs(10 * 60);
/// How long a build and its push may take.
const BUILD_TTL: Duration = Duration::from_secs(60 * 60);
/// How long asking the registry about a tag may take.
const RESOLVE_TTL: Duration = Duration::from_secs(60);

fn check_sha(sha: &str) -> Result<()> {
    corral_proto::files::check_digest_hex(sha)
        .map_err(|why| Error::invalid(format!("build context {why}")))
}

fn context_path(state: &AppState, sha: &str) -> Result<PathBuf> {
    check_sha(sha)?;
    Ok(state
        .options
        .data_dir
        .join(CONTEXTS_DIR)
        .join(format!("{sha}.tar")))
}

/// Whether the server holds the context with this SHA-256.
pub fn has_context(state: &AppState, sha: &str) -> Result<bool> {
    Ok(context_path(state, sha)?.exists())
}

/// Keeps an uploaded context, if its bytes are the SHA-256 it is named by.
pub fn put_context(state: &AppState, sha: &str, data: &[u8]) -> Result<()> {
    let path = context_path(state, sha)?;
    if data.len() as u64 > corral_proto::MAX_BUILD_CONTEXT_BYTES {
        return Err(Error::invalid(format!(
            "a build context may have {} bytes; this one has {}",
            corral_proto::MAX_BUILD_CONTEXT_BYTES,
            data.len()
        )));
    }
    let actual = corral_control::define::sha256_hex(data);
    if actual != sha {
        return Err(Error::invalid(format!(
            "the build context's SHA-256 is {actual}, not {sha}: it was damaged on the way"
        )));
    }
    if path.exists() {
        return Ok(());
    }
    let dir = state.options.data_dir.join(CONTEXTS_DIR);
    std::fs::create_dir_all(&dir).map_err(Error::internal)?;
    let tmp = dir.join(format!(".{sha}.{}", new_id("tmp")));
    corral_tls::files::write_private(&tmp, data).map_err(Error::internal)?;
    std::fs::rename(&tmp, &path).map_err(Error::internal)?;
    Ok(())
}

/// A service to build: its recipe and the tag it gets.
#[derive(Debug, Clone)]
pub struct Planned {
    pub service: String,
    pub context_sha: String,
    pub build: compose::Build,
    /// `REGISTRY/corral-builds/STACK-SERVICE:KEY`.
    pub tag: String,
}

/// The tag a build of this recipe gets in `registry`.
pub fn tag_for(
    registry: &str,
    stack: &str,
    service: &str,
    context_sha: &str,
    build: &compose::Build,
) -> Result<String> {
    let mut recipe = format!(
        "{context_sha}\0{}\0{}\0",
        build.dockerfile.as_deref().unwrap_or("Dockerfile"),
        build.target.as_deref().unwrap_or("")
    );
    for (k, v) in &build.args {
        recipe.push_str(&format!("{k}={v}\0"));
    }
    let key = corral_control::define::sha256_hex(recipe.as_bytes());
    let tag = format!(
        "{registry}/corral-builds/{}-{}:{}",
        stack.to_ascii_lowercase(),
        service.to_ascii_lowercase(),
        &key[..20]
    );
    ImageRef::parse(&tag).map_err(|why| {
        Error::invalid(format!(
            "services.{service}.build: the image corral would build, {tag}, is not a valid name ({why})"
        ))
    })?;
    Ok(tag)
}

/// What `ensure` did, and the digest the tag names (the service is pinned to it, so the
/// tag is not asked about again).
pub enum Outcome {
    /// The registry already had the tag: an unchanged recipe.
    Found { digest: String },
    /// Built on this host and pushed.
    Built { host: String, digest: String },
}

/// Makes sure the registry has `p.tag`: asks it (through the first connected host of
/// `hosts`), and builds on that host when it does not. A failed build (or push) is an error
/// naming the step; nothing is stored by the caller then.
pub async fn ensure(
    state: &AppState,
    auths: &Auths,
    hosts: &[(String, String)],
    p: &Planned,
    progress: Option<&str>,
) -> Result<Outcome> {
    let say = |line: String| {
        if let Some(id) = progress {
            state.progress.push(id, line);
        }
    };
    let auth = auths.build_registry().cloned();
    let Some((host_id, host_name)) = hosts
        .iter()
        .find(|(id, _)| state.registry.info(id).is_some())
        .cloned()
    else {
        return Err(Error::conflict(format!(
            "services.{}: no connected host to build on; nothing was changed",
            p.service
        )));
    };
    let ask = ResolveImages {
        images: vec![ImageToResolve {
            reference: p.tag.clone(),
            auth: auth.clone(),
        }],
    };
    match dispatch::call(state, &host_id, ask, RESOLVE_TTL).await {
        Ok(answers) => match answers.first() {
            Some(Resolution::Digest { digest }) => {
                return Ok(Outcome::Found {
                    digest: digest.clone(),
                });
            }
            Some(Resolution::Failed { reason })
                if reason.contains("manifest unknown")
                    || reason.contains("not found")
                    || reason.contains("does not exist") => {}
            Some(Resolution::Failed { reason }) => {
                return Err(Error::Refused(format!(
                    "services.{}: the build registry cannot be asked about {} ({reason}); nothing was changed",
                    p.service, p.tag
                )));
            }
            None => return Err(Error::Agent("the host answered no resolution".into())),
        },
        Err(CallError::Store(e)) => return Err(e.into()),
        Err(e) => {
            return Err(Error::Agent(format!(
                "services.{}: host {host_name} cannot ask the build registry: {e}",
                p.service
            )));
        }
    }
    let path = context_path(state, &p.context_sha)?;
    let data = std::fs::read(&path).map_err(|e| {
        Error::invalid(format!(
            "services.{}: the build context {} is not on the server ({e}); `corral up` sends it",
            p.service, p.context_sha
        ))
    })?;
    let build_id = new_id("bld");
    say(format!(
        "{}: sending the build context ({:.1} MB) to host {host_name}",
        p.service,
        data.len() as f64 / 1e6
    ));
    if let Some(id) = progress {
        state
            .progress
            .link_build(&build_id, id, &format!("{} | ", p.service));
    }
    let mut pending = Vec::new();
    for (i, piece) in data.chunks(BUILD_CHUNK_BYTES).enumerate() {
        let chunk = BuildChunk {
            build_id: build_id.clone(),
            offset: (i * BUILD_CHUNK_BYTES) as u64,
            data: piece.to_vec(),
        };
        pending.push(dispatch::send(state, &host_id, chunk, CHUNK_TTL).await?);
    }
    for p2 in pending {
        p2.wait().await.map_err(|e| {
            Error::Agent(format!(
                "services.{}: the build context did not reach host {host_name}: {e}",
                p.service
            ))
        })?;
    }
    say(format!("{}: building on host {host_name}", p.service));
    let request = BuildImage {
        build_id,
        size: data.len() as u64,
        sha256: p.context_sha.clone(),
        tag: p.tag.clone(),
        dockerfile: p
            .build
            .dockerfile
            .clone()
            .unwrap_or_else(|| "Dockerfile".into()),
        args: p.build.args.clone(),
        target: p.build.target.clone(),
        auth,
    };
    match dispatch::call(state, &host_id, request, BUILD_TTL).await {
        Ok(built) => Ok(Outcome::Built {
            host: host_name,
            digest: built.digest,
        }),
        Err(CallError::Failed(message)) => Err(Error::Refused(format!(
            "services.{}: {message}\nnothing was changed",
            p.service
        ))),
        Err(CallError::Store(e)) => Err(e.into()),
        Err(e) => Err(Error::Agent(format!(
            "services.{}: building on host {host_name}: {e}; nothing was changed",
            p.service
        ))),
    }
}
