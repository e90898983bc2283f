//! Stages 3 and 4 — merge several files, then resolve `extends`.
//!
//! Merge rules (Compose spec, "Merge and override"), applied file after file:
//! - mappings are merged key by key, recursively;
//! - `environment`, `labels`, `deploy.labels`, `build.args`, `depends_on`, `networks`,
//!   `extends` and `build` are first brought to their mapping form, so the short and long
//!   spellings merge alike;
//! - `command`, `entrypoint` and `healthcheck.test` are replaced whole;
//! - a service's `volumes`, `configs` and `secrets` are merged by container path (the later
//!   entry for a path wins);
//! - other sequences (`ports`, `expose`, `env_file`, constraints, …) are appended, dropping
//!   entries equal to one already there;
//! - scalars (and values whose kind differs) are replaced.
//!
//! `extends: { service: other }` (or `extends: other`) copies `other`'s definition and merges
//! the extending service on top, with the same rules, recursively; a cycle is an error.
//! `extends.file` is refused: corral receives files, not a directory to read other files from.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::node::{Key, Node, Pos, Seg, Value};

/// Keys whose sequences are replaced, not appended.
const REPLACED_SEQUENCES: &[&str] = &["command", "entrypoint", "test"];

fn key(name: &str, pos: Pos) -> Key {
    Key {
        name: name.to_owned(),
        pos,
    }
}

/// `["A=1", "B"]` → `{A: "1", B: null}`; a mapping is left alone.
fn list_to_map(node: &mut Node) {
    let Value::Seq(items) = &node.value else {
        return;
    };
    if !items.iter().all(|i| matches!(i.value, Value::Str(_))) {
        return;
    }
    let mut entries: Vec<(Key, Node)> = Vec::new();
    for item in items {
        let Some(s) = item.as_str() else { continue };
        let (k, v) = match s.split_once('=') {
            Some((k, v)) => (k, Node::new(item.pos, Value::Str(v.to_owned()))),
            None => (s, Node::new(item.pos, Value::Null)),
        };
        entries.push((key(k, item.pos), v));
    }
    // A later entry for a name wins and takes its place (in linear time: the last index of
    // each name, then the entries at those indexes).
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, (k, _)) in entries.iter().enumerate() {
        last.insert(k.name.as_str(), i);
    }
    let keep: HashSet<usize> = last.into_values().collect();
    let entries = entries
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, e)| e)
        .collect();
    node.value = Value::Map(entries);
}

/// Brings one service's list-or-mapping keys to mapping form.
pub(crate) fn normalize_service(service: &mut Node) {
    for name in ["environment", "labels"] {
        if let Some(n) = service.get_mut(name) {
            list_to_map(n);
        }
    }
    if let Some(n) = service.get_mut("deploy").and_then(|d| d.get_mut("labels")) {
        list_to_map(n);
    }
    // `build: ./dir` is `{ context: ./dir }`: a later file's `build: { dockerfile: … }` keeps
    // the context.
    if let Some(n) = service.get_mut("build")
        && let Value::Str(s) = &n.value
    {
        let pos = n.pos;
        n.value = Value::Map(vec![(
            key("context", pos),
            Node::new(pos, Value::Str(s.clone())),
        )]);
    }
    if let Some(n) = service.get_mut("build").and_then(|b| b.get_mut("args")) {
        list_to_map(n);
    }
    for (name, make) in [("depends_on", true), ("networks", false)] {
        if let Some(n) = service.get_mut(name)
            && let Value::Seq(items) = &n.value
            && items.iter().all(|i| matches!(i.value, Value::Str(_)))
        {
            let entries = items
                .iter()
                .filter_map(|i| {
                    let s = i.as_str()?;
                    let value = if make {
                        Node::new(
                            i.pos,
                            Value::Map(vec![(
                                key("condition", i.pos),
                                Node::new(i.pos, Value::Str("service_started".to_owned())),
                            )]),
                        )
                    } else {
                        Node::new(i.pos, Value::Null)
                    };
                    Some((key(s, i.pos), value))
                })
                .collect();
            n.value = Value::Map(entries);
        }
    }
    if let Some(n) = service.get_mut("extends")
        && let Value::Str(s) = &n.value
    {
        let pos = n.pos;
        n.value = Value::Map(vec![(
            key("service", pos),
            Node::new(pos, Value::Str(s.clone())),
        )]);
    }
}

/// Normalizes every service of a file.
pub(crate) fn normalize(doc: &mut Node) {
    if let Some(services) = doc.get_mut("services").and_then(Node::as_map_mut) {
        for (_, service) in services.iter_mut() {
            normalize_service(service);
        }
    }
}

/// Two entries are equal when their JSON forms are.
fn fingerprint(n: &Node) -> String {
    n.to_json().to_string()
}

/// Container path of a service volume entry (short or long syntax).
fn volume_target(v: &Node) -> Option<String> {
    match &v.value {
        Value::Str(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            match parts.len() {
                1 => Some(parts[0].to_owned()),
                _ => Some(parts[1].to_owned()),
            }
        }
        Value::Map(_) => v.get("target").and_then(Node::as_str).map(str::to_owned),
        _ => None,
    }
}

/// Container path of a service `configs` or `secrets` entry (short or long syntax), as the
/// loader will work it out (`/NAME` for a config, `/run/secrets/NAME` for a secret); the
/// loader checks the paths themselves.
fn file_target(v: &Node, secret: bool) -> Option<String> {
    let (source, target) = match &v.value {
        Value::Str(s) => (s.as_str(), None),
        Value::Map(_) => (
            v.get("source").and_then(Node::as_str)?,
            v.get("target").and_then(Node::as_str),
        ),
        _ => return None,
    };
    Some(match (target, secret) {
        (Some(t), _) if t.starts_with('/') => t.to_owned(),
        (Some(t), true) => format!("/run/secrets/{}", t.trim_start_matches("./")),
        (Some(t), false) => t.to_owned(),
        (None, true) => format!("/run/secrets/{source}"),
        (None, false) => format!("/{source}"),
    })
}

/// Merges `over` into `base` following the rules above. `path` is where `base` sits.
pub(crate) fn merge(base: &mut Node, over: Node, path: &mut Vec<Seg>) {
    let last = match path.last() {
        Some(Seg::Key(k)) => Some(k.as_str()),
        _ => None,
    };
    // The sequences of a service merged by container path, and how to find an entry's path.
    let in_service =
        path.len() == 3 && matches!(path.first(), Some(Seg::Key(k)) if k == "services");
    let target_of: Option<fn(&Node) -> Option<String>> = match last {
        Some("volumes") if in_service => Some(volume_target),
        Some("configs") if in_service => Some(|v| file_target(v, false)),
        Some("secrets") if in_service => Some(|v| file_target(v, true)),
        _ => None,
    };
    // Every step below is linear in the sizes of `base` and `over` (indexes by name, by
    // value and by mount target), so files with long lists or many keys merge quickly.
    match (&mut base.value, over.value) {
        (Value::Map(base_entries), Value::Map(over_entries)) => {
            let mut index: HashMap<String, usize> = base_entries
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.name.clone(), i))
                .collect();
            for (k, v) in over_entries {
                if let Some(&i) = index.get(&k.name) {
                    path.push(Seg::Key(k.name.clone()));
                    merge(&mut base_entries[i].1, v, path);
                    path.pop();
                } else {
                    index.insert(k.name.clone(), base_entries.len());
                    base_entries.push((k, v));
                }
            }
        }
        (Value::Seq(base_items), Value::Seq(over_items))
            if !last.is_some_and(|l| REPLACED_SEQUENCES.contains(&l)) =>
        {
            // A mount for a container path replaces every earlier mount for that path (the
            // last one for a path wins); other entries are appended unless equal to one
            // already there. Mounts and other entries are never equal (an equal entry has the
            // same target), so the two rules do not interact.
            let targets: Vec<Option<String>> = over_items
                .iter()
                .map(|i| target_of.and_then(|f| f(i)))
                .collect();
            let mut last_for: HashMap<&str, usize> = HashMap::new();
            for (i, t) in targets.iter().enumerate() {
                if let Some(t) = t {
                    last_for.insert(t.as_str(), i);
                }
            }
            if !last_for.is_empty() {
                base_items.retain(|b| {
                    target_of
                        .and_then(|f| f(b))
                        .is_none_or(|t| !last_for.contains_key(t.as_str()))
                });
            }
            let mut present: HashSet<String> = base_items.iter().map(fingerprint).collect();
            for (i, (item, target)) in over_items.into_iter().zip(&targets).enumerate() {
                match target {
                    Some(t) => {
                        if last_for.get(t.as_str()) == Some(&i) {
                            base_items.push(item);
                        }
                    }
                    None => {
                        if present.insert(fingerprint(&item)) {
                            base_items.push(item);
                        }
                    }
                }
            }
        }
        (_, value) => {
            base.value = value;
            base.pos = over.pos;
            base.written = over.written;
        }
    }
}

/// Merges the files' documents, first to last.
pub(crate) fn merge_files(docs: Vec<Node>) -> Node {
    let mut iter = docs.into_iter();
    let Some(mut base) = iter.next() else {
        return Node::map(Pos::NONE);
    };
    for doc in iter {
        merge(&mut base, doc, &mut Vec::new());
    }
    base
}

/// Resolves every service's `extends` in place.
pub(crate) fn resolve_extends(doc: &mut Node, errors: &mut Vec<(Vec<Seg>, Pos, String)>) {
    let Some(services) = doc.get("services").and_then(Node::as_map) else {
        return;
    };
    let originals: BTreeMap<String, Node> = services
        .iter()
        .map(|(k, v)| (k.name.clone(), v.clone()))
        .collect();
    let mut resolved: BTreeMap<String, Option<Node>> = BTreeMap::new();
    for name in originals.keys() {
        let mut stack = Vec::new();
        resolve_one(name, &originals, &mut resolved, &mut stack, errors);
    }
    if let Some(services) = doc.get_mut("services").and_then(Node::as_map_mut) {
        for (k, v) in services.iter_mut() {
            if let Some(Some(r)) = resolved.remove(&k.name) {
                *v = r;
            }
        }
    }
}

fn resolve_one(
    name: &str,
    originals: &BTreeMap<String, Node>,
    resolved: &mut BTreeMap<String, Option<Node>>,
    stack: &mut Vec<String>,
    errors: &mut Vec<(Vec<Seg>, Pos, String)>,
) -> Option<Node> {
    if let Some(done) = resolved.get(name) {
        return done.clone();
    }
    let result = resolve_uncached(name, originals, resolved, stack, errors);
    resolved.insert(name.to_owned(), result.clone());
    result
}

fn resolve_uncached(
    name: &str,
    originals: &BTreeMap<String, Node>,
    resolved: &mut BTreeMap<String, Option<Node>>,
    stack: &mut Vec<String>,
    errors: &mut Vec<(Vec<Seg>, Pos, String)>,
) -> Option<Node> {
    let mut service = originals.get(name)?.clone();
    let path = vec![
        Seg::Key("services".into()),
        Seg::Key(name.to_owned()),
        Seg::Key("extends".into()),
    ];
    let Some((_, ext)) = service.remove("extends") else {
        return Some(service);
    };
    if stack.iter().any(|s| s == name) {
        let mut cycle: Vec<&str> = stack.iter().map(String::as_str).collect();
        cycle.push(name);
        errors.push((
            path,
            ext.pos,
            format!("extends cycle: {}", cycle.join(" → ")),
        ));
        return None;
    }
    if ext.get("file").is_some() {
        errors.push((
            path,
            ext.pos,
            "`extends.file` is not supported: corral extends services of the same files only"
                .to_owned(),
        ));
        return None;
    }
    let Some(base_name) = ext.get("service").and_then(Node::as_str) else {
        errors.push((
            path,
            ext.pos,
            "must be a service name or `{ service: NAME }`".to_owned(),
        ));
        return None;
    };
    if !originals.contains_key(base_name) {
        errors.push((
            path,
            ext.pos,
            format!("extends unknown service `{base_name}`"),
        ));
        return None;
    }
    stack.push(name.to_owned());
    let base = resolve_one(base_name, originals, resolved, stack, errors);
    stack.pop();
    let mut result = base?;
    let mut merge_path = vec![Seg::Key("services".into()), Seg::Key(name.to_owned())];
    merge(&mut result, service, &mut merge_path);
    Some(result)
}
