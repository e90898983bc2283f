//! Stage 1 — parse: YAML text to a [`Node`] tree, within limits.
//!
//! serde-saphyr does the parsing: YAML 1.2 core schema with strict booleans (so `restart: no`
//! stays the string `no`), anchors, aliases and `<<` merge keys expanded, duplicate keys
//! refused, one document per file. Its [`serde_saphyr::Budget`] and alias limits refuse alias
//! bombs and deep nesting while parsing; the file size is checked before.

use serde_saphyr::{Budget, Options, Spanned};

use crate::error::LoadError;
use crate::limits;
use crate::node::{Node, Raw};

fn options() -> Options {
    let mut budget = Budget::default();
    budget.max_events = limits::MAX_YAML_EVENTS;
    budget.max_aliases = limits::MAX_YAML_ALIASES;
    budget.max_anchors = limits::MAX_YAML_ALIASES;
    budget.max_depth = limits::MAX_YAML_DEPTH;
    budget.max_documents = 1;
    budget.max_nodes = limits::MAX_YAML_EVENTS;
    budget.max_total_scalar_bytes = limits::MAX_FILE_BYTES * 4;
    budget.max_recorded_anchor_events = limits::MAX_ALIAS_REPLAYED_EVENTS;
    budget.max_recorded_anchor_bytes = limits::MAX_FILE_BYTES * 4;
    budget.max_merge_keys = limits::MAX_YAML_ALIASES;

    let mut opts = Options::default();
    opts.budget = Some(budget);
    opts.alias_limits.max_total_replayed_events = limits::MAX_ALIAS_REPLAYED_EVENTS;
    opts.alias_limits.max_replay_stack_depth = limits::MAX_YAML_DEPTH;
    opts.strict_booleans = true;
    opts.with_snippet = false;
    opts
}

/// Parses one file. `index` is the file's position in the input (stamped on every node).
pub(crate) fn parse(name: &str, text: &str, index: usize) -> Result<Node, LoadError> {
    if text.len() > limits::MAX_FILE_BYTES {
        return Err(LoadError::in_file(
            name,
            format!(
                "file is {} bytes; the limit is {} bytes (1 MiB)",
                text.len(),
                limits::MAX_FILE_BYTES
            ),
        ));
    }
    if text.trim().is_empty() {
        return Err(LoadError::in_file(name, "file is empty"));
    }
    match serde_saphyr::from_str_with_options::<Option<Spanned<Raw>>>(text, options()) {
        Ok(Some(raw)) => Ok(Node::from_raw(raw, index)),
        Ok(None) => Err(LoadError::in_file(name, "file has no YAML document")),
        Err(e) => {
            let loc = e.location();
            let message = format!("invalid YAML: {}", explain(&first_line(&e.to_string())));
            let mut err = LoadError::in_file(name, message);
            if let Some(loc) = loc
                && loc.line() > 0
            {
                err.line = Some(loc.line());
                err.column = Some(loc.column());
            }
            Err(err)
        }
    }
}

/// Rewrites the parser's words for people: positions are already in the error's fields, and
/// budget breaches say which limit stopped the parse.
fn explain(message: &str) -> String {
    let mut text = message;
    if let Some(idx) = text.find(" at line ") {
        text = &text[..idx];
    }
    if text.contains("budget breached") {
        if text.contains("Documents") {
            return "a Compose file holds one YAML document (remove the `---` separator)"
                .to_owned();
        }
        if text.contains("Depth") {
            return format!("nesting is deeper than {} levels", limits::MAX_YAML_DEPTH);
        }
        return format!(
            "the document is too large once its anchors and aliases are expanded (is it an alias bomb?): {text}"
        );
    }
    if text.contains("replay") || (text.contains("alias") && text.contains("limit")) {
        return format!(
            "the document is too large once its anchors and aliases are expanded (is it an alias bomb?): {text}"
        );
    }
    if let Some(idx) = text.find(", set DuplicateKeyPolicy") {
        text = &text[..idx];
    }
    text.to_owned()
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s).trim();
    // Keep messages bounded: a parser error can quote the input.
    let mut out: String = line.chars().take(300).collect();
    if line.chars().count() > 300 {
        out.push('…');
    }
    out
}
