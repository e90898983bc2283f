//! Images on the wire: references as Docker reads them, pull policies, the credentials a pull
//! needs, and the requests and replies of the `image_*` commands.
//!
//! Registry credentials travel only inside the command that needs them (a pull, a resolution,
//! a `container_run` that may pull) and are never part of anything stored on a host: the
//! agent hands them to dockerd in the request header and forgets them. Their `Debug` form
//! hides the password, so a logged command never shows it.

use serde::{Deserialize, Serialize};

/// Compose's `pull_policy`: when a host fetches a service's image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull every time a replica is created (a pinned digest makes it a cheap check).
    Always,
    /// Pull when the host does not have the image (Compose's default).
    #[default]
    Missing,
    /// Never pull: the image must already be on the host.
    Never,
}

impl PullPolicy {
    /// The policy's name as Compose writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::Missing => "missing",
            PullPolicy::Never => "never",
        }
    }

    /// Whether this is the default (`missing`): left out of specs on the wire.
    pub fn is_default(&self) -> bool {
        *self == PullPolicy::Missing
    }
}

/// How a container uses the host's network namespace (Compose `network_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own namespace on the stack's (or the overlay's) network.
    #[default]
    Default,
    /// The host's own network stack: no isolation from the host.
    Host,
    /// No network at all but loopback.
    None,
}

impl NetworkMode {
    /// Whether this is the default: left out of specs on the wire.
    pub fn is_default(&self) -> bool {
        *self == NetworkMode::Default
    }
}

/// A host device given to a container (Compose `devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// The device on the host, e.g. `/dev/fuse`.
    pub host: String,
    /// Its path in the container.
    pub container: String,
    /// cgroup permissions: some of `r`, `w`, `m`.
    pub permissions: String,
}

/// What is needed to talk to one registry: its CA (when it is not publicly trusted) and the
/// account to pull with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    /// The registry's host (and port), as image references name it: `registry.example.com`,
    /// `10.0.0.5:5000`.
    pub registry: String,
    /// The account, when the registry needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Its password or token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// PEM certificate(s) of the CA that signed the registry's certificate, when it is a
    /// private one. The agent installs it where dockerd looks for it
    /// (`/etc/docker/certs.d/REGISTRY/ca.crt`); a CA is public knowledge, not a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

/// An image reference, split as Docker splits it: `[REGISTRY/]PATH[:TAG][@DIGEST]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host (and port); `docker.io` when the reference names none.
    pub registry: String,
    /// The repository path within the registry (`library/nginx` for `nginx` on Docker Hub).
    pub path: String,
    /// The tag, when one is written.
    pub tag: Option<String>,
    /// The digest (`sha256:…`), when one is written.
    pub digest: Option<String>,
}

/// Docker Hub, the registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// Longest image reference accepted (Docker's own limit on a repository name is 255).
pub const MAX_REFERENCE_BYTES: usize = 512;

impl ImageRef {
    /// Reads a reference as Docker does. Errors say what is wrong with it.
    pub fn parse(text: &str) -> Result<ImageRef, String> {
        if text.is_empty() {
            return Err("an image reference is empty".into());
        }
        if text.len() > MAX_REFERENCE_BYTES {
            return Err(format!(
                "an image reference is {} bytes; the limit is {MAX_REFERENCE_BYTES}",
                text.len()
            ));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("image reference {text:?} contains white space"));
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                check_digest(digest).map_err(|why| format!("image reference {text:?}: {why}"))?;
                (name, Some(digest.to_owned()))
            }
            None => (text, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name[..at], Some(name[at + 1..].to_owned()))
            }
            None => (name, None),
        };
        if let Some(tag) = &tag
            && !valid_tag(tag)
        {
            return Err(format!(
                "image reference {text:?}: tag {tag:?} is not valid (letters, digits, _ . - ; at most 128; not starting with . or -)"
            ));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        if path.is_empty() || !path.split('/').all(valid_path_component) {
            return Err(format!(
                "image reference {text:?}: repository {path:?} is not valid (lower-case letters, digits and separators . _ - between them, components split by /)"
            ));
        }
        let path = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        Ok(ImageRef {
            registry,
            path,
            tag,
            digest,
        })
    }

    /// `REGISTRY/PATH`, as admission patterns match it (`docker.io/library/nginx`).
    pub fn repository(&self) -> String {
        format!("{}/{}", self.registry, self.path)
    }

    /// The name Docker shows for this repository: Docker Hub's without `docker.io/` and
    /// `library/` (`nginx`), others in full.
    pub fn familiar_name(&self) -> String {
        if self.registry == DEFAULT_REGISTRY {
            self.path
                .strip_prefix("library/")
                .unwrap_or(&self.path)
                .to_owned()
        } else {
            self.repository()
        }
    }

    /// The tag the reference means: the one written, else `latest` (unless it names a digest
    /// alone, which has no tag).
    pub fn effective_tag(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t),
            (None, Some(_)) => None,
            (None, None) => Some("latest"),
        }
    }

    /// `NAME@DIGEST`: the reference every host runs once the tag is resolved.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}@{digest}", self.familiar_name())
    }

    /// `NAME:TAG` (tag `latest` when none is written), for a pull by tag.
    pub fn tagged(&self) -> String {
        format!(
            "{}:{}",
            self.familiar_name(),
            self.effective_tag().unwrap_or("latest")
        )
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.familiar_name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Checks `sha256:` and 64 lower-case hex digits (the only algorithm registries use).
pub fn check_digest(digest: &str) -> Result<(), String> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "digest {digest:?} is not sha256: followed by 64 lower-case hex digits"
        )),
    }
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    !c.is_empty()
        && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
        && bytes[bytes.len() - 1].is_ascii_lowercase() | bytes[bytes.len() - 1].is_ascii_digit()
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Payload of `image_resolve`: which manifest digest each reference names now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveImages {
    /// The references to resolve, each with what its registry needs.
    pub images: Vec<ImageToResolve>,
}

/// One reference to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageToResolve {
    /// As the service names it.
    pub reference: String,
    /// Its registry's CA and account, when corral has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryAuth>,
}

/// What a registry said about one reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Resolution {
    /// The manifest (list) digest the reference names.
    Digest {
        /// `sha256:…`.
        digest: String,
    },
    /// The registry could not be asked, or refused, or has no such image.
    Failed {
        /// The reason, as dockerd reports the registry's answer.
        reason: String,
    },
}

/// Payload of `image_pull`: fetch one image now (`corral image pull`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullImage {
    /// The reference to pull.
    pub reference: String,
    /// Its registry's CA and account, when corral has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryAuth>,
}

/// Payload of `image_list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListImages {}

/// Payload of `image_remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveImage {
    /// The reference (or image id) to remove.
    pub reference: String,
}

/// An image on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageSummary {
    /// Docker's id (`sha256:…` of the configuration).
    pub id: String,
    /// `NAME:TAG` references that point at it.
    #[serde(default)]
    pub tags: Vec<String>,
    /// `NAME@DIGEST` references it was pulled by.
    #[serde(default)]
    pub digests: Vec<String>,
    /// Its size on disk, in bytes.
    pub size_bytes: u64,
    /// When it was built (Unix seconds).
    pub created: i64,
    /// How many containers (corral's or not) use it.
    #[serde(default)]
    pub containers: u32,
}

/// Reply to `image_remove`: what Docker untagged and deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RemovedImage {
    /// References removed from the image.
    #[serde(default)]
    pub untagged: Vec<String>,
    /// Image layers deleted.
    #[serde(default)]
    pub deleted: Vec<String>,
}

/// How a pull is going on a host (sent as a report at most about once a second per pull).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    /// The container the pull is for, when it is for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corral_id: Option<String>,
    /// The reference being pulled.
    pub image: String,
    /// Bytes downloaded so far, over every layer that said its size.
    pub downloaded_bytes: u64,
    /// Bytes to download, over every layer that said its size (0 until one has).
    pub total_bytes: u64,
    /// Layers done (downloaded and extracted, or already present).
    pub layers_done: u32,
    /// Layers seen so far.
    pub layers: u32,
    /// The pull has ended (well or not).
    #[serde(default)]
    pub done: bool,
}

/// Largest build context (an uncompressed tar of the context directory).
pub const MAX_BUILD_CONTEXT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes of a build context per `image_build_chunk` command (base64 makes it 4/3 of that
/// on the wire, well under a message's limit).
pub const BUILD_CHUNK_BYTES: usize = 512 * 1024;

/// Payload of `image_build_chunk`: a piece of a build context, written at its offset (so a
/// piece delivered twice is written twice, to the same place).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildChunk {
    /// The build this context is for (`bld-…`).
    pub build_id: String,
    /// Where this piece goes in the context's tar.
    pub offset: u64,
    /// The bytes (base64 on the wire).
    #[serde(with = "crate::files::base64_bytes")]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for BuildChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildChunk")
            .field("build_id", &self.build_id)
            .field("offset", &self.offset)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// Payload of `image_build`: build the context the chunks carried, tag it, push it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildImage {
    /// The build whose chunks hold the context.
    pub build_id: String,
    /// The context's size, in bytes.
    pub size: u64,
    /// Its SHA-256 (hex).
    pub sha256: String,
    /// The tag to build and push (`REGISTRY/corral-builds/STACK-SERVICE:KEY`).
    pub tag: String,
    /// The Dockerfile, relative to the context.
    pub dockerfile: String,
    /// `--build-arg`s.
    #[serde(default)]
    pub args: std::collections::BTreeMap<String, String>,
    /// The stage to build (`--target`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// What the push (and the build's own pulls from that registry) need.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryAuth>,
}

/// Reply to `image_build`: what was pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltImage {
    /// The pushed manifest's digest (`sha256:…`).
    pub digest: String,
    /// The build's last lines of output (at most 20).
    #[serde(default)]
    pub log_tail: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn references_split_as_docker_splits_them() {
        let r = parse("nginx");
        assert_eq!(
            (r.registry.as_str(), r.path.as_str(), r.tag.as_deref()),
            ("docker.io", "library/nginx", None)
        );
        assert_eq!(r.effective_tag(), Some("latest"));
        assert_eq!(r.repository(), "docker.io/library/nginx");
        assert_eq!(r.familiar_name(), "nginx");
        let r = parse("198.18.0.5:5000/team/api:2.3");
        assert_eq!(r.registry, "198.18.0.5:5000");
        assert_eq!(r.path, "team/api");
        assert_eq!(r.tag.as_deref(), Some("2.3"));
        assert_eq!(r.to_string(), "198.18.0.5:5000/team/api:2.3");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("localhost/x:1@{d}"));
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.pinned(&d), format!("localhost/x@{d}"));
        let r = parse("corral-test/busybox:latest");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.path, "corral-test/busybox");
        assert_eq!(r.familiar_name(), "corral-test/busybox");
        assert_eq!(parse("registry:5000/x").registry, "registry:5000");
    }

    #[test]
    fn bad_references_are_refused_with_a_reason() {
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "nginx@sha256:abc",
            "a b",
            "x//y",
            "-x",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(ImageRef::parse(&"a".repeat(600)).is_err());
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let auth = RegistryAuth {
            registry: "r:5000".into(),
            username: Some("u".into()),
            password: Some("s3cret-pw".into()),
            ca_pem: None,
        };
        assert!(!format!("{auth:?}").contains("s3cret-pw"));
    }
}
