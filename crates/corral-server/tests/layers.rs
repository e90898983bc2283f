//! The server's modules form layers, and a module imports only modules of lower layers (its
//! own submodules aside; the crate root, which composes everything, is exempt). This test reads
//! every source file and fails on any `crate::…` path that goes sideways or up, naming it.
//! ARCHITECTURE.md shows the same table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module and its layer. Lower numbers are lower layers.
const LAYERS: &[(&str, u32)] = &[
    // Foundation: utilities, then the datastore, the vault and the PKI, then the domain error
    // and the boot of a data dir.
    ("time_fmt", 0),
    ("secrets", 0),
    ("process", 0),
    ("vault", 0),
    ("text", 0),
    ("store", 1),
    ("pki", 1),
    ("error", 2),
    ("bootstrap", 2),
    // What a running server holds.
    ("state", 3),
    ("relay", 3),
    // Typed calls to agents over the durable command queue.
    ("dispatch", 4),
    // Domain operations: images (registries, admission, resolution) first, since running a
    // container admits and authorizes its image.
    ("images", 5),
    ("overlay", 5),
    ("live", 5),
    ("tokens", 5),
    ("containers", 6),
    ("builds", 6),
    ("environments", 7),
    ("stacks", 7),
    ("hosts", 7),
    ("topology", 7),
    ("doctor", 7),
    ("netpolicy", 7),
    ("ldap", 1),
    ("users", 7),
    // Agent sessions, then HTTP.
    ("tunnel", 8),
    ("api", 9),
];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a line of code names through `crate::`.
fn referenced(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // `use crate::{a, b::c};`: each item's first segment.
            let inner = group.split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
        rest = after;
    }
    found
}

#[test]
fn every_import_goes_down_a_layer() {
    let layers: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut seen_modules = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" {
            continue;
        }
        let Some(&mine) = layers.get(module.as_str()) else {
            violations.push(format!(
                "{}: module {module} has no layer in LAYERS",
                rel.display()
            ));
            continue;
        };
        seen_modules.push(module.clone());
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for target in referenced(code) {
                if target == module {
                    continue;
                }
                match layers.get(target.as_str()) {
                    Some(&theirs) if theirs < mine => {}
                    Some(&theirs) => violations.push(format!(
                        "{}:{}: {module} (layer {mine}) imports {target} (layer {theirs})",
                        rel.display(),
                        n + 1
                    )),
                    // The root composes every module; a module that used the root's own items
                    // would import everything above it.
                    None => violations.push(format!(
                        "{}:{}: {module} uses the crate root's {target}",
                        rel.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports that break the layering:\n{}",
        violations.join("\n")
    );
    for (module, _) in LAYERS {
        assert!(
            seen_modules.iter().any(|m| m == module),
            "LAYERS names {module}, which no longer exists"
        );
    }
}

#[test]
fn the_reader_of_imports_sees_groups_and_paths() {
    assert_eq!(referenced("use crate::store::Store;"), ["store"]);
    assert_eq!(
        referenced("use crate::{pki, store::StoreError};"),
        ["pki", "store"]
    );
    assert_eq!(
        referenced("let x = crate::dispatch::call(crate::state::X);"),
        ["dispatch", "state"]
    );
}
