//! Stage 2 — interpolate: `${VAR}` and friends in every string value, per the Compose spec.
//!
//! Supported: `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset),
//! `${VAR:?message}` / `${VAR?message}` (error), `${VAR:+replacement}` / `${VAR+replacement}`,
//! `$$` for a literal `$`. Defaults and replacements may nest (`${A:-${B}}`).
//!
//! **Deviation from the spec, on purpose:** the spec says an unset variable without a default
//! becomes an empty string with a warning; corral refuses it with an error naming the variable
//! and where it is used, because a stack deployed with a silently empty image tag or password is
//! worse than one not deployed. Write `${VAR:-}` to ask for an empty default.
//!
//! Mapping keys are not interpolated (as in Compose). A value that held a `$` and becomes a
//! plain integer or boolean where the schema wants one (`replicas: ${N}`) is converted to it.

use std::collections::BTreeMap;

use crate::limits;
use crate::node::{Node, Seg, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InterpError {
    Undefined(String),
    Required(String, String),
    Invalid(String),
}

impl std::fmt::Display for InterpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterpError::Undefined(v) => write!(
                f,
                "variable `{v}` is not set and has no default (set it, or write `${{{v}:-default}}`)"
            ),
            InterpError::Required(v, msg) if msg.is_empty() => {
                write!(f, "required variable `{v}` is not set")
            }
            InterpError::Required(v, msg) => write!(f, "required variable `{v}` is not set: {msg}"),
            InterpError::Invalid(why) => write!(f, "invalid interpolation: {why}"),
        }
    }
}

/// Interpolates one string.
pub(crate) fn interpolate(s: &str, vars: &BTreeMap<String, String>) -> Result<String, InterpError> {
    interp(s, vars, 0)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn interp(s: &str, vars: &BTreeMap<String, String>, depth: usize) -> Result<String, InterpError> {
    if depth > limits::MAX_INTERPOLATION_DEPTH {
        return Err(InterpError::Invalid("nested too deeply".to_owned()));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(idx) = rest.find('$') {
        out.push_str(&rest[..idx]);
        let after = &rest[idx + 1..];
        let mut chars = after.chars();
        match chars.next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('{') => {
                let body_and_more = &after[1..];
                let end = matching_brace(body_and_more).ok_or_else(|| {
                    InterpError::Invalid(format!("`${{` without a closing `}}` in `{}`", short(s)))
                })?;
                let body = &body_and_more[..end];
                out.push_str(&braced(body, vars, depth)?);
                rest = &body_and_more[end + 1..];
            }
            Some(c) if is_name_start(c) => {
                let len = after
                    .char_indices()
                    .find(|&(_, c)| !is_name_char(c))
                    .map(|(i, _)| i)
                    .unwrap_or(after.len());
                let name = &after[..len];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => return Err(InterpError::Undefined(name.to_owned())),
                }
                rest = &after[len..];
            }
            _ => {
                return Err(InterpError::Invalid(format!(
                    "a `$` must start `$NAME`, `${{NAME}}` or be doubled (`$$`) in `{}`",
                    short(s)
                )));
            }
        }
        if out.len() > limits::MAX_INTERPOLATED_BYTES {
            return Err(InterpError::Invalid("the result is too long".to_owned()));
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn short(s: &str) -> String {
    let mut t: String = s.chars().take(60).collect();
    if s.chars().count() > 60 {
        t.push('…');
    }
    t
}

/// Index of the `}` closing a `${` whose body starts at `s[0]`, honouring nested `${…}`.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn braced(
    body: &str,
    vars: &BTreeMap<String, String>,
    depth: usize,
) -> Result<String, InterpError> {
    let name_len = body
        .char_indices()
        .find(|&(_, c)| !is_name_char(c))
        .map(|(i, _)| i)
        .unwrap_or(body.len());
    let name = &body[..name_len];
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(InterpError::Invalid(format!(
            "`${{{}}}` has no valid variable name",
            short(body)
        )));
    }
    let op = &body[name_len..];
    let value = vars.get(name);
    let set = value.is_some();
    let non_empty = value.is_some_and(|v| !v.is_empty());
    let current = || value.cloned().unwrap_or_default();
    if op.is_empty() {
        return value
            .cloned()
            .ok_or_else(|| InterpError::Undefined(name.to_owned()));
    }
    let (cond, arg) = if let Some(a) = op.strip_prefix(":-") {
        (non_empty, ("-", a))
    } else if let Some(a) = op.strip_prefix(":?") {
        (non_empty, ("?", a))
    } else if let Some(a) = op.strip_prefix(":+") {
        (non_empty, ("+", a))
    } else if let Some(a) = op.strip_prefix('-') {
        (set, ("-", a))
    } else if let Some(a) = op.strip_prefix('?') {
        (set, ("?", a))
    } else if let Some(a) = op.strip_prefix('+') {
        (set, ("+", a))
    } else {
        return Err(InterpError::Invalid(format!(
            "`${{{}}}`: expected `}}`, `:-`, `-`, `:?`, `?`, `:+` or `+` after the name",
            short(body)
        )));
    };
    match arg {
        ("-", default) => {
            if cond {
                Ok(current())
            } else {
                interp(default, vars, depth + 1)
            }
        }
        ("?", message) => {
            if cond {
                Ok(current())
            } else {
                let msg = interp(message, vars, depth + 1).unwrap_or_else(|_| message.to_owned());
                Err(InterpError::Required(name.to_owned(), msg))
            }
        }
        (_, replacement) => {
            if cond {
                interp(replacement, vars, depth + 1)
            } else {
                Ok(String::new())
            }
        }
    }
}

/// Keys whose values the schema wants as integers or booleans: a `${…}` there that yields one
/// is converted, as Compose does.
fn cast(path: &[Seg], text: &str) -> Option<Value> {
    let key = match path.last() {
        Some(Seg::Key(k)) => k.as_str(),
        _ => return None,
    };
    let in_ports = path
        .iter()
        .any(|s| matches!(s, Seg::Key(k) if k == "ports"));
    let int_key = matches!(key, "replicas" | "scale" | "parallelism" | "retries")
        || (in_ports && matches!(key, "published" | "target"));
    // `privileged` only as a service's own key, not, say, as an environment variable's name.
    let service_bool = matches!(
        path,
        [Seg::Key(s), Seg::Key(_), Seg::Key(k)] if s == "services" && k == "privileged"
    );
    let bool_key = service_bool || matches!(key, "read_only" | "disable" | "external");
    if int_key {
        return text.trim().parse::<i64>().ok().map(Value::Int);
    }
    if bool_key {
        return match text.trim() {
            "true" | "True" | "TRUE" => Some(Value::Bool(true)),
            "false" | "False" | "FALSE" => Some(Value::Bool(false)),
            _ => None,
        };
    }
    None
}

/// Failures of [`interpolate_tree`]: the first [`crate::limits::MAX_ERRORS`] with the path and
/// node they happened at, and how many more there were (a file of a million `${UNSET}` keeps
/// 20 errors, not a million).
#[derive(Debug, Default)]
pub(crate) struct Failures {
    pub kept: Vec<(Vec<Seg>, crate::node::Pos, InterpError)>,
    pub more: usize,
}

impl Failures {
    fn push(&mut self, path: &[Seg], pos: crate::node::Pos, e: InterpError) {
        if self.kept.len() < crate::limits::MAX_ERRORS {
            self.kept.push((path.to_vec(), pos, e));
        } else {
            self.more += 1;
        }
    }
}

/// Interpolates every string value of a tree in place; failures are counted in `errors`.
pub(crate) fn interpolate_tree(
    node: &mut Node,
    vars: &BTreeMap<String, String>,
    path: &mut Vec<Seg>,
    errors: &mut Failures,
) {
    match &mut node.value {
        Value::Str(s) => {
            if !s.contains('$') {
                return;
            }
            match interpolate(s, vars) {
                Ok(new) => {
                    node.value = cast(path, &new).unwrap_or(Value::Str(new));
                }
                Err(e) => errors.push(path, node.pos, e),
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Seg::Index(i));
                interpolate_tree(item, vars, path, errors);
                path.pop();
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                path.push(Seg::Key(k.name.clone()));
                interpolate_tree(v, vars, path, errors);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [("A", "alpha"), ("EMPTY", ""), ("N", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn all_forms() {
        let v = vars();
        let i = |s: &str| interpolate(s, &v);
        assert_eq!(i("$A").unwrap(), "alpha");
        assert_eq!(i("x${A}y").unwrap(), "xalphay");
        assert_eq!(i("$A-b").unwrap(), "alpha-b");
        assert_eq!(i("${MISSING:-d}").unwrap(), "d");
        assert_eq!(i("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(i("${EMPTY-d}").unwrap(), "");
        assert_eq!(i("${MISSING-d}").unwrap(), "d");
        assert_eq!(i("${A:+r}").unwrap(), "r");
        assert_eq!(i("${EMPTY:+r}").unwrap(), "");
        assert_eq!(i("${EMPTY+r}").unwrap(), "r");
        assert_eq!(i("${MISSING:-${A}}").unwrap(), "alpha");
        assert_eq!(i("${MISSING:-${ALSO:-deep}}").unwrap(), "deep");
        assert_eq!(i("$$A costs $$5").unwrap(), "$A costs $5");
        assert_eq!(i("${MISSING:-}").unwrap(), "");
        assert_eq!(i("${MISSING:-a:b-c}").unwrap(), "a:b-c");
    }

    #[test]
    fn errors() {
        let v = vars();
        let i = |s: &str| interpolate(s, &v);
        assert_eq!(i("${NOPE}"), Err(InterpError::Undefined("NOPE".into())));
        assert_eq!(i("$NOPE"), Err(InterpError::Undefined("NOPE".into())));
        assert_eq!(
            i("${NOPE:?set NOPE please}"),
            Err(InterpError::Required(
                "NOPE".into(),
                "set NOPE please".into()
            ))
        );
        assert!(matches!(i("${EMPTY:?x}"), Err(InterpError::Required(..))));
        assert_eq!(i("${EMPTY?x}").unwrap(), "");
        assert!(matches!(i("${A"), Err(InterpError::Invalid(_))));
        assert!(matches!(i("${}"), Err(InterpError::Invalid(_))));
        assert!(matches!(i("${A!}"), Err(InterpError::Invalid(_))));
        assert!(matches!(i("cost $5"), Err(InterpError::Invalid(_))));
        assert!(matches!(i("trailing $"), Err(InterpError::Invalid(_))));
        let deep = format!("{}x{}", "${M:-".repeat(40), "}".repeat(40));
        assert!(matches!(i(&deep), Err(InterpError::Invalid(_))));
    }
}
