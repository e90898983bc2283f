//! Admission: an environment's policy on what may run there — which registries and
//! repositories images come from, whether they must be pinned to a digest, which tags are
//! refused, and which container options that break isolation are allowed. Pure: a policy
//! document in, a checked [`Policy`] out; a container template in, the [`Refusal`]s out.
//!
//! With no policy applied an environment has [`Policy::default`]: images from anywhere, by tag
//! or digest, and none of the options that break isolation (`privileged`, `cap_add`, the
//! host's network or process namespace, devices, the Docker socket). Every key of a document
//! defaults to that same value, so a policy names only what it changes.

use std::fmt;

use corral_proto::{ContainerSpec, ImageRef, MountSpec, NetworkMode};
use serde::{Deserialize, Serialize};

/// Largest policy document accepted.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Most entries in one list of a policy.
pub const MAX_LIST_ENTRIES: usize = 256;

/// An environment's admission policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Repositories images may come from, as `REGISTRY/PATH` patterns where `*` stands for
    /// any run of characters (`registry.example.com/team/*`, `docker.io/library/nginx`).
    /// Empty: any.
    #[serde(default)]
    pub allowed_images: Vec<String>,
    /// Every image must run by digest: written as `NAME@sha256:…`, or a tag the server
    /// resolved to one at `up`.
    #[serde(default)]
    pub require_digest: bool,
    /// Tags refused as written (e.g. `latest`; an image with no tag means `latest`).
    #[serde(default)]
    pub refused_tags: Vec<String>,
    /// `privileged: true` is allowed.
    #[serde(default)]
    pub allow_privileged: bool,
    /// Capabilities `cap_add` may name (`NET_BIND_SERVICE`, …; `ALL` only if listed).
    #[serde(default)]
    pub allowed_capabilities: Vec<String>,
    /// `network_mode: host` is allowed.
    #[serde(default)]
    pub allow_host_network: bool,
    /// `pid: host` is allowed.
    #[serde(default)]
    pub allow_host_pid: bool,
    /// `devices:` is allowed.
    #[serde(default)]
    pub allow_devices: bool,
    /// Host paths bind mounts may use (each allows itself and what is below it). Default:
    /// `["/"]`, any path.
    #[serde(default = "any_path")]
    pub allowed_bind_paths: Vec<String>,
    /// A bind mount of the Docker socket (or a directory holding it) is allowed. It gives
    /// the container root on the host.
    #[serde(default)]
    pub allow_docker_socket: bool,
}

fn any_path() -> Vec<String> {
    vec!["/".into()]
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_images: Vec::new(),
            require_digest: false,
            refused_tags: Vec::new(),
            allow_privileged: false,
            allowed_capabilities: Vec::new(),
            allow_host_network: false,
            allow_host_pid: false,
            allow_devices: false,
            allowed_bind_paths: any_path(),
            allow_docker_socket: false,
        }
    }
}

/// A rule of the policy, named as its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    AllowedImages,
    RequireDigest,
    RefusedTags,
    AllowPrivileged,
    AllowedCapabilities,
    AllowHostNetwork,
    AllowHostPid,
    AllowDevices,
    AllowedBindPaths,
    AllowDockerSocket,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::AllowedImages => "allowed_images",
            Rule::RequireDigest => "require_digest",
            Rule::RefusedTags => "refused_tags",
            Rule::AllowPrivileged => "allow_privileged",
            Rule::AllowedCapabilities => "allowed_capabilities",
            Rule::AllowHostNetwork => "allow_host_network",
            Rule::AllowHostPid => "allow_host_pid",
            Rule::AllowDevices => "allow_devices",
            Rule::AllowedBindPaths => "allowed_bind_paths",
            Rule::AllowDockerSocket => "allow_docker_socket",
        }
    }
}

/// One thing the policy refuses: which rule, for which service and Compose key, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub rule: Rule,
    pub service: String,
    /// The Compose key that asks for it (`image`, `cap_add`, `volumes`, …).
    pub key: &'static str,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {}: {}: refused by admission rule {}: {}",
            self.service,
            self.key,
            self.rule.as_str(),
            self.reason
        )
    }
}

/// Reads and checks a policy document (YAML or JSON). Errors say what to fix.
pub fn parse(document: &str) -> Result<Policy, String> {
    if document.len() > MAX_POLICY_BYTES {
        return Err(format!(
            "the policy document is {} bytes; the limit is {MAX_POLICY_BYTES}",
            document.len()
        ));
    }
    let policy: Policy = if document.trim().is_empty() {
        Policy::default()
    } else {
        serde_saphyr::from_str(document).map_err(|e| format!("the policy does not read: {e}"))?
    };
    policy.check()?;
    Ok(policy)
}

impl Policy {
    /// The document's values make sense (patterns, capability names, paths).
    pub fn check(&self) -> Result<(), String> {
        for (key, list) in [
            ("allowed_images", &self.allowed_images),
            ("refused_tags", &self.refused_tags),
            ("allowed_capabilities", &self.allowed_capabilities),
            ("allowed_bind_paths", &self.allowed_bind_paths),
        ] {
            if list.len() > MAX_LIST_ENTRIES {
                return Err(format!(
                    "{key}: {} entries; the limit is {MAX_LIST_ENTRIES}",
                    list.len()
                ));
            }
            if let Some(long) = list.iter().find(|e| e.len() > 512) {
                return Err(format!(
                    "{key}: an entry of {} bytes; the limit is 512",
                    long.len()
                ));
            }
        }
        for p in &self.allowed_images {
            if !p.contains('/') || p.starts_with('/') {
                return Err(format!(
                    "allowed_images: {p:?} must name the registry and the repository, REGISTRY/PATH (Docker Hub's nginx is docker.io/library/nginx; a whole registry is registry.example.com/*)"
                ));
            }
            if p.chars()
                .any(|c| c.is_whitespace() || c.is_ascii_uppercase())
            {
                return Err(format!(
                    "allowed_images: {p:?}: repositories are lower case, without spaces"
                ));
            }
        }
        for c in &self.allowed_capabilities {
            if normalize_capability(c) != *c {
                return Err(format!(
                    "allowed_capabilities: write {c:?} as {:?} (upper case, without CAP_)",
                    normalize_capability(c)
                ));
            }
            if c.is_empty()
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(format!(
                    "allowed_capabilities: {c:?} is not a capability name"
                ));
            }
        }
        for p in &self.allowed_bind_paths {
            if clean_path(p).as_deref() != Some(p.as_str()) {
                return Err(format!(
                    "allowed_bind_paths: {p:?} must be an absolute path without . or .. parts or a trailing /"
                ));
            }
        }
        Ok(())
    }

    /// What the policy refuses of one service's container, except the digest rule (checked
    /// once tags are resolved: [`Policy::check_pinned`]).
    pub fn refusals(&self, service: &str, spec: &ContainerSpec) -> Vec<Refusal> {
        let mut out = Vec::new();
        let mut refuse = |rule, key, reason: String| {
            out.push(Refusal {
                rule,
                service: service.to_owned(),
                key,
                reason,
            })
        };
        let written = spec.image_source.as_deref().unwrap_or(&spec.image);
        match ImageRef::parse(written) {
            Err(why) => refuse(Rule::AllowedImages, "image", why),
            Ok(image) => {
                let repository = image.repository();
                if !self.allowed_images.is_empty()
                    && !self.allowed_images.iter().any(|p| glob(p, &repository))
                {
                    refuse(
                        Rule::AllowedImages,
                        "image",
                        format!(
                            "{written} is repository {repository}, which matches none of {}",
                            self.allowed_images.join(", ")
                        ),
                    );
                }
                if let Some(tag) = image.effective_tag()
                    && self.refused_tags.iter().any(|t| t == tag)
                {
                    refuse(
                        Rule::RefusedTags,
                        "image",
                        format!(
                            "{written} uses tag {tag:?}, which the policy refuses; name a release tag or a digest"
                        ),
                    );
                }
            }
        }
        if spec.privileged && !self.allow_privileged {
            refuse(
                Rule::AllowPrivileged,
                "privileged",
                "a privileged container has every capability and every device of the host".into(),
            );
        }
        for cap in &spec.cap_add {
            let cap = normalize_capability(cap);
            if !self.allowed_capabilities.contains(&cap) {
                refuse(
                    Rule::AllowedCapabilities,
                    "cap_add",
                    if self.allowed_capabilities.is_empty() {
                        format!("{cap} is not allowed (the policy allows adding none)")
                    } else {
                        format!(
                            "{cap} is not among {}",
                            self.allowed_capabilities.join(", ")
                        )
                    },
                );
            }
        }
        if spec.network_mode == NetworkMode::Host && !self.allow_host_network {
            refuse(
                Rule::AllowHostNetwork,
                "network_mode",
                "host: the container would share the host's network stack, outside the overlay and its policy".into(),
            );
        }
        if spec.pid_host && !self.allow_host_pid {
            refuse(
                Rule::AllowHostPid,
                "pid",
                "host: the container would see and signal every process of the host".into(),
            );
        }
        if !spec.devices.is_empty() && !self.allow_devices {
            let names: Vec<&str> = spec.devices.iter().map(|d| d.host.as_str()).collect();
            refuse(
                Rule::AllowDevices,
                "devices",
                format!("host devices {} are not allowed", names.join(", ")),
            );
        }
        for m in &spec.mounts {
            let MountSpec::Bind { source, .. } = m else {
                continue;
            };
            let Some(path) = clean_path(source) else {
                refuse(
                    Rule::AllowedBindPaths,
                    "volumes",
                    format!(
                        "bind source {source:?} must be an absolute path without . or .. parts"
                    ),
                );
                continue;
            };
            if exposes_docker_socket(&path) && !self.allow_docker_socket {
                refuse(
                    Rule::AllowDockerSocket,
                    "volumes",
                    format!(
                        "bind source {path} is or holds the Docker socket, which gives the container root on the host"
                    ),
                );
                continue;
            }
            if !self.allowed_bind_paths.iter().any(|a| under(&path, a)) {
                refuse(
                    Rule::AllowedBindPaths,
                    "volumes",
                    format!(
                        "bind source {path} is not under {}",
                        self.allowed_bind_paths.join(", ")
                    ),
                );
            }
        }
        out
    }

    /// The digest rule, once tags are resolved: `spec.image` must name a digest.
    pub fn check_pinned(&self, service: &str, spec: &ContainerSpec) -> Option<Refusal> {
        if !self.require_digest {
            return None;
        }
        let pinned = ImageRef::parse(&spec.image).is_ok_and(|r| r.digest.is_some());
        (!pinned).then(|| Refusal {
            rule: Rule::RequireDigest,
            service: service.to_owned(),
            key: "image",
            reason: format!(
                "{} is not pinned to a digest and its registry did not resolve it to one (pull_policy never, or the registry could not be asked); write NAME@sha256:… or let the server resolve the tag",
                spec.image_source.as_deref().unwrap_or(&spec.image)
            ),
        })
    }
}

/// `cap_net_admin` → `NET_ADMIN`.
pub fn normalize_capability(cap: &str) -> String {
    let upper = cap.to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_owned()
}

/// `*` matches any run of characters (`/` included); everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// An absolute path with `//` and `/.` folded and no trailing `/`; `None` when it is
/// relative or climbs with `..`.
pub fn clean_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// Whether `path` is `dir` or below it.
fn under(path: &str, dir: &str) -> bool {
    dir == "/" || path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

/// The Docker socket's usual places; a bind of one of them, or of a directory above one,
/// hands the container the engine.
const DOCKER_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];

fn exposes_docker_socket(path: &str) -> bool {
    path.ends_with("docker.sock") || DOCKER_SOCKETS.iter().any(|s| under(s, path))
}

#[cfg(test)]
mod tests {
    use corral_proto::DeviceSpec;

    use super::*;

    fn spec(image: &str) -> ContainerSpec {
        ContainerSpec {
            image: image.into(),
            ..ContainerSpec::default()
        }
    }

    fn rules(p: &Policy, s: &ContainerSpec) -> Vec<&'static str> {
        p.refusals("web", s)
            .iter()
            .map(|r| r.rule.as_str())
            .collect()
    }

    #[test]
    fn the_default_policy_admits_images_and_refuses_what_breaks_isolation() {
        let p = Policy::default();
        assert!(rules(&p, &spec("nginx")).is_empty());
        let mut s = spec("nginx:1.27");
        s.privileged = true;
        s.cap_add = vec!["SYS_ADMIN".into()];
        s.network_mode = NetworkMode::Host;
        s.pid_host = true;
        s.devices = vec![DeviceSpec {
            host: "/dev/fuse".into(),
            container: "/dev/fuse".into(),
            permissions: "rwm".into(),
        }];
        s.mounts = vec![
            MountSpec::Bind {
                source: "/var/run/docker.sock".into(),
                target: "/s".into(),
                read_only: true,
            },
            MountSpec::Bind {
                source: "/var".into(),
                target: "/v".into(),
                read_only: true,
            },
            MountSpec::Bind {
                source: "/srv/data".into(),
                target: "/d".into(),
                read_only: false,
            },
        ];
        assert_eq!(
            rules(&p, &s),
            [
                "allow_privileged",
                "allowed_capabilities",
                "allow_host_network",
                "allow_host_pid",
                "allow_devices",
                "allow_docker_socket",
                "allow_docker_socket"
            ]
        );
        let text = p.refusals("web", &s)[0].to_string();
        assert!(
            text.contains("service web: privileged: refused by admission rule allow_privileged"),
            "{text}"
        );
    }

    #[test]
    fn each_rule_admits_what_it_allows() {
        let p = parse(
            "allowed_images: ['198.18.0.9:5000/team/*', docker.io/library/nginx]\nrefused_tags: [latest]\nrequire_digest: true\nallow_privileged: true\nallowed_capabilities: [NET_BIND_SERVICE]\nallow_host_network: true\nallow_host_pid: true\nallow_devices: true\nallowed_bind_paths: [/srv/data]\nallow_docker_socket: true\n",
        )
        .unwrap();
        assert!(rules(&p, &spec("198.18.0.9:5000/team/api:2")).is_empty());
        assert!(rules(&p, &spec("nginx:1.27")).is_empty());
        assert_eq!(rules(&p, &spec("nginx")), ["refused_tags"]);
        assert_eq!(
            rules(&p, &spec("198.18.0.9:5000/other/api:2")),
            ["allowed_images"]
        );
        assert_eq!(rules(&p, &spec("redis:7")), ["allowed_images"]);
        let mut s = spec("nginx:1");
        s.cap_add = vec!["NET_BIND_SERVICE".into(), "NET_ADMIN".into()];
        s.mounts = vec![
            MountSpec::Bind {
                source: "/srv/data/x".into(),
                target: "/x".into(),
                read_only: false,
            },
            MountSpec::Bind {
                source: "/srv/database".into(),
                target: "/y".into(),
                read_only: false,
            },
            MountSpec::Bind {
                source: "/srv/data/../../etc".into(),
                target: "/z".into(),
                read_only: false,
            },
        ];
        assert_eq!(
            rules(&p, &s),
            [
                "allowed_capabilities",
                "allowed_bind_paths",
                "allowed_bind_paths"
            ]
        );
        // Digests: by tag refused once resolution failed; pinned admitted.
        let d = format!("sha256:{}", "b".repeat(64));
        assert!(p.check_pinned("web", &spec("nginx:1")).is_some());
        assert!(
            p.check_pinned("web", &spec(&format!("nginx@{d}")))
                .is_none()
        );
        assert!(
            Policy::default()
                .check_pinned("web", &spec("nginx:1"))
                .is_none()
        );
    }

    #[test]
    fn bad_documents_are_refused_with_a_reason() {
        for (doc, says) in [
            ("allowed_images: [nginx]", "REGISTRY/PATH"),
            ("allowed_capabilities: [cap_net_admin]", "NET_ADMIN"),
            ("allowed_bind_paths: [srv]", "absolute"),
            ("allowed_bind_paths: [/srv/../etc]", "absolute"),
            ("allow_everything: true", "allow_everything"),
            ("require_digest: maybe", "require_digest"),
        ] {
            let e = parse(doc).unwrap_err();
            assert!(e.contains(says), "{doc}: {e}");
        }
        assert!(parse(&"#".repeat(MAX_POLICY_BYTES + 1)).is_err());
        assert_eq!(parse("").unwrap(), Policy::default());
    }

    #[test]
    fn globs_and_paths() {
        assert!(glob("r/*", "r/a/b"));
        assert!(glob("*/x", "a/b/x"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abde"));
        assert!(!glob("r/a", "r/ab"));
        assert_eq!(clean_path("//srv/./data/").as_deref(), Some("/srv/data"));
        assert_eq!(clean_path("/a/../b"), None);
        assert!(exposes_docker_socket("/"));
        assert!(exposes_docker_socket("/run"));
        assert!(!exposes_docker_socket("/srv"));
    }
}
