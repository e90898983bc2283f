//! Stage 5 — validate the merged document against the vendored Compose Specification schema
//! (`schema/compose-spec.json`, Apache-2.0, see `schema/README.md`).
//!
//! The schema is compiled once, offline (`jsonschema` without its network resolver). Each
//! violation becomes an error with its key path (`services.web.ports[0]`) and the line and
//! column it was written at; at most [`crate::limits::MAX_ERRORS`] are reported.
//!
//! The vendored schema predates the top-level `name` key: it is taken out of the document
//! before validation (and used as the project name when no `-p` is given). It also predates
//! a few keys the loader reads or refuses itself — configs' and secrets' `environment:` and
//! `content:`, string `mode:`s, and the newer `build:` keys: those are left out of what the
//! schema sees (see [`without_newer_keys`]), and checked by the loader.

use std::sync::LazyLock;

use jsonschema::Validator;

use crate::error::LoadError;
use crate::limits;
use crate::node::{Node, Seg, Value};

/// The vendored schema text.
pub const COMPOSE_SPEC_SCHEMA: &str = include_str!("../schema/compose-spec.json");

static VALIDATOR: LazyLock<Result<Validator, String>> = LazyLock::new(|| {
    let schema: serde_json::Value = serde_json::from_str(COMPOSE_SPEC_SCHEMA)
        .map_err(|e| format!("schema is not JSON: {e}"))?;
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft201909)
        .build(&schema)
        .map_err(|e| format!("schema does not compile: {e}"))
});

/// Turns a JSON pointer into path segments, using the document to tell indexes from keys.
pub(crate) fn pointer_to_path(doc: &Node, pointer: &str) -> Vec<Seg> {
    let mut path = Vec::new();
    let mut node = Some(doc);
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        let step = match node.map(|n| &n.value) {
            Some(Value::Seq(items)) => match seg.parse::<usize>() {
                Ok(i) => {
                    node = items.get(i);
                    Seg::Index(i)
                }
                Err(_) => {
                    node = None;
                    Seg::Key(seg)
                }
            },
            Some(Value::Map(_)) => {
                node = node.and_then(|n| n.get(&seg));
                Seg::Key(seg)
            }
            _ => {
                node = None;
                Seg::Key(seg)
            }
        };
        path.push(step);
    }
    path
}

/// Validates `doc`; returns one entry per violation: (key path, message).
pub(crate) fn validate(doc: &Node) -> Result<Vec<(Vec<Seg>, String)>, LoadError> {
    let validator = VALIDATOR
        .as_ref()
        .map_err(|e| LoadError::msg(format!("internal error: the vendored Compose {e}")))?;
    let mut instance = doc.to_json();
    without_newer_keys(&mut instance);
    let mut out = Vec::new();
    for err in validator.iter_errors(&instance) {
        if out.len() >= limits::MAX_ERRORS {
            break;
        }
        let path = pointer_to_path(doc, err.instance_path().as_str());
        out.push((path, bounded(&err.to_string())));
    }
    Ok(out)
}

/// `build:` keys added to the spec after the vendored schema: the loader refuses
/// `dockerfile_inline` and warns that the others are ignored.
const NEWER_BUILD_KEYS: &[&str] = &[
    "additional_contexts",
    "cache_to",
    "dockerfile_inline",
    "entitlements",
    "no_cache",
    "platforms",
    "privileged",
    "provenance",
    "pull",
    "sbom",
    "secrets",
    "ssh",
    "tags",
    "ulimits",
];

/// Takes out of the JSON form of the document the keys newer than the vendored schema that the
/// loader checks itself (the document itself keeps them). Taking them out also keeps secret
/// values (`content:`) out of schema messages, which can quote the values they are about.
fn without_newer_keys(instance: &mut serde_json::Value) {
    for kind in ["configs", "secrets"] {
        if let Some(defs) = instance.get_mut(kind).and_then(|d| d.as_object_mut()) {
            for def in defs.values_mut() {
                if let Some(def) = def.as_object_mut() {
                    def.remove("environment");
                    def.remove("content");
                }
            }
        }
    }
    let Some(services) = instance.get_mut("services").and_then(|s| s.as_object_mut()) else {
        return;
    };
    for service in services.values_mut() {
        if let Some(build) = service.get_mut("build").and_then(|b| b.as_object_mut()) {
            for key in NEWER_BUILD_KEYS {
                build.remove(*key);
            }
        }
        // The newer schema takes a mode as a number or a string (`"0440"`).
        for kind in ["configs", "secrets"] {
            if let Some(refs) = service.get_mut(kind).and_then(|r| r.as_array_mut()) {
                for r in refs {
                    if let Some(r) = r.as_object_mut()
                        && r.get("mode").is_some_and(serde_json::Value::is_string)
                    {
                        r.remove("mode");
                    }
                }
            }
        }
    }
}

/// Violation messages quote the offending value, which can be large: keep them readable.
fn bounded(message: &str) -> String {
    const MAX: usize = 300;
    if message.chars().count() <= MAX {
        return message.to_owned();
    }
    let mut out: String = message.chars().take(MAX).collect();
    out.push('…');
    out
}
