//! Stage 5 — validate the merged document against the vendored Compose Specification schema
//! (`schema/compose-spec.json`, Apache-2.0, see `schema/README.md`).
//!
//! The schema is compiled once, offline (`jsonschema` without its network resolver). Each
//! violation becomes an error with its key path (`services.web.ports[0]`) and the line and
//! column it was written at; at most [`crate::limits::MAX_ERRORS`] are reported.
//!
//! The vendored schema predates the top-level `name` key: it is taken out of the document
//! before validation (and used as the project name when no `-p` is given).

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
    let instance = doc.to_json();
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
