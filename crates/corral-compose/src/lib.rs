//! A pure Compose loader: text in, typed [`Project`] out. No I/O, no clock, no environment
//! reads — the caller (the server, with what `corral up` sent) passes everything in [`Input`].
//!
//! # Pipeline
//!
//! [`load`] runs these stages, stopping after the first stage that finds errors (and reporting
//! every error that stage found, up to [`limits::MAX_ERRORS`]):
//!
//! 1. **limits** — at most [`limits::MAX_FILES`] Compose files, each at most
//!    [`limits::MAX_FILE_BYTES`] (1 MiB), refused before parsing.
//! 2. **parse** (`yaml`) — serde-saphyr turns each file into a `node` tree whose every value
//!    remembers file, line and column. Anchors, aliases and `<<` merge keys are expanded under a
//!    budget that refuses alias bombs; malformed YAML is an error with line and column.
//! 3. **interpolate** (`interpolate`) — `${VAR}`, `${VAR:-default}`, … in every string value,
//!    from the env files and the caller's environment ([`Input::env`] wins over
//!    [`Input::env_files`], like the shell over `.env` in Compose). An unset variable without a
//!    default is an **error** (the spec says warning + empty string; see `interpolate`).
//! 4. **merge** (`merge`) — the files, in order, by the spec's merge rules; then at most
//!    [`limits::MAX_SERVICES`] services.
//! 5. **extends** (`merge`) — `extends: { service: NAME }` within the merged files.
//! 6. **schema** (`schema`) — the official compose-spec JSON schema, vendored in `schema/`
//!    (Apache-2.0); violations carry their key path (`services.web.ports[0]`) and position.
//! 7. **typed project and warnings** (`project`, `parse`, [`model`]) — the supported keys
//!    become a [`Service`]; every other key becomes a [`Warning`] naming it; cross-service
//!    checks (unknown `depends_on` target, dependency cycle, undeclared named volume,
//!    `build:` without `image:`) and the start order (`depends_on`, topological) happen here.
//!
//! # Invariants
//!
//! - No I/O: same [`Input`], same result. `env_file:` contents come in
//!   [`Input::referenced_files`].
//! - Every ignored key is reported as a [`Warning`]; nothing is dropped silently.
//! - No panics on any input (a proptest feeds arbitrary text); every resource is bounded by
//!   [`limits`].
//!
//! # Decisions
//!
//! - **Undefined variables** without a default are errors (the spec: warning + empty string).
//! - **Variable precedence**: [`Input::env`] (the shell) over [`Input::env_files`] (later file
//!   over earlier), as Compose ranks the shell over `.env`. `env_file:` values are taken
//!   literally (not interpolated); a service's `environment:` wins over its `env_file:`.
//! - **Ignored vs invalid keys**: a key the Compose spec defines but corral does not act on
//!   (`logging`, `security_opt`, `deploy.resources.limits`, `x-*` extensions, top-level
//!   `secrets`, …) is a [`Warning`]; a key the spec does not define at all is a schema error,
//!   as the official schema says. The vendored schema dates from 2021, so keys added to the
//!   spec since (other than the top-level `name`, handled here) are schema errors too.
//! - **Host-level keys** (`pull_policy`, `privileged`, `cap_add`, `cap_drop`, `network_mode`,
//!   `pid`, `devices`) are typed fields of [`Service`]. The forms of them corral cannot honour
//!   (`pull_policy: build`, `network_mode: service:…`, `pid: container:…`, …) are errors, not
//!   warnings: running the service without them would not be what the file asks for.
//! - **Project name**: [`Input::project_name`], else the top-level `name:`, else an error; it
//!   must match `[a-z0-9][a-z0-9_-]*`.
//! - **Nesting** is limited to [`limits::MAX_YAML_DEPTH`] levels: the YAML deserializer
//!   recurses per level, and this keeps a load within a 1 MiB thread stack even in debug
//!   builds (real Compose files nest about 10 deep).
//! - **Bind mounts** keep their source as written; resolving `./dir` is the sender's business.
//!
//! # Example
//!
//! ```
//! use corral_compose::{load, Input, SourceFile};
//!
//! let input = Input {
//!     files: vec![SourceFile::new("compose.yaml", "services:\n  web:\n    image: nginx:${TAG:-1.27}\n")],
//!     project_name: Some("shop".into()),
//!     ..Input::default()
//! };
//! let loaded = load(&input).unwrap();
//! assert_eq!(loaded.project.services["web"].image, "nginx:1.27");
//! ```

mod env;
mod error;
mod interpolate;
pub mod limits;
mod merge;
pub mod model;
mod node;
mod parse;
mod project;
mod schema;
mod yaml;

use std::collections::BTreeMap;

pub use env::parse_env_file;
pub use error::{LoadError, LoadErrors, Location, Warning};
pub use model::*;
pub use project::SUPPORTED_SERVICE_KEYS;
pub use schema::COMPOSE_SPEC_SCHEMA;

use node::{Node, Pos, Value, render_path};

/// A file as the CLI sent it: its name (used in messages and to match `env_file:` entries) and
/// its text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }
}

/// Everything a load needs.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Compose files in `-f` order; later files override earlier ones.
    pub files: Vec<SourceFile>,
    /// Env files for interpolation (`--env-file`, or the project's `.env`), in order; a later
    /// file overrides an earlier one.
    pub env_files: Vec<SourceFile>,
    /// Files named by services' `env_file:`, matched by name (`./a.env` = `a.env`).
    pub referenced_files: Vec<SourceFile>,
    /// The caller's environment (the shell that ran `corral up`): wins over `env_files` for
    /// interpolation, and fills `environment:` entries written without a value.
    pub env: BTreeMap<String, String>,
    /// `-p NAME`; else the top-level `name:`; else the load fails.
    pub project_name: Option<String>,
}

/// A successful load.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub project: Project,
    /// Keys accepted but ignored, and other things the user should know.
    pub warnings: Vec<Warning>,
}

fn location(files: &[String], pos: Pos) -> Option<Location> {
    files.get(pos.file).map(|f| Location {
        file: f.clone(),
        line: pos.line,
        column: pos.column,
    })
}

fn fail(errors: Vec<LoadError>) -> LoadErrors {
    fail_counted(errors, 0)
}

/// The first [`limits::MAX_ERRORS`] errors, and a last one saying how many more there were
/// (those past the limit, and `more` that were only counted).
fn fail_counted(mut errors: Vec<LoadError>, more: usize) -> LoadErrors {
    let more = more + errors.len().saturating_sub(limits::MAX_ERRORS);
    errors.truncate(limits::MAX_ERRORS);
    if more > 0 {
        errors.push(LoadError::msg(format!(
            "… and {more} more error{} not shown",
            if more == 1 { "" } else { "s" }
        )));
    }
    LoadErrors { errors }
}

fn valid_project_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= 63
}

/// Loads a project. See the crate documentation for the stages.
pub fn load(input: &Input) -> Result<Loaded, LoadErrors> {
    // 1. Limits.
    if input.files.is_empty() {
        return Err(LoadError::msg("no Compose file given").into());
    }
    if input.files.len() > limits::MAX_FILES {
        return Err(LoadError::msg(format!(
            "{} Compose files given; the limit is {}",
            input.files.len(),
            limits::MAX_FILES
        ))
        .into());
    }
    let env_count = input.env_files.len() + input.referenced_files.len();
    if env_count > limits::MAX_ENV_FILES {
        return Err(LoadError::msg(format!(
            "{env_count} env files given; the limit is {}",
            limits::MAX_ENV_FILES
        ))
        .into());
    }
    let names: Vec<String> = input.files.iter().map(|f| f.name.clone()).collect();
    let mut errors = Vec::new();

    // Variables: env files in order, then the caller's environment on top.
    let mut vars = BTreeMap::new();
    for f in &input.env_files {
        match parse_env_file(&f.name, &f.text) {
            Ok(v) => vars.extend(v),
            Err(e) => errors.push(e),
        }
    }
    vars.extend(input.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut referenced = BTreeMap::new();
    for f in &input.referenced_files {
        match parse_env_file(&f.name, &f.text) {
            Ok(v) => {
                referenced.insert(project::normalize_file_name(&f.name), v);
            }
            Err(e) => errors.push(e),
        }
    }

    // 2. Parse.
    let mut docs = Vec::new();
    for (i, f) in input.files.iter().enumerate() {
        match yaml::parse(&f.name, &f.text, i) {
            Ok(doc) if doc.as_map().is_some() => docs.push(doc),
            Ok(doc) => errors.push(LoadError::at(
                location(&names, doc.pos),
                None,
                "a Compose file must be a mapping (with `services:` at the top)",
            )),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(fail(errors));
    }

    // 3. Interpolate (each file on its own, so errors point into it).
    let mut more = 0;
    for doc in &mut docs {
        let mut found = interpolate::Failures::default();
        interpolate::interpolate_tree(doc, &vars, &mut Vec::new(), &mut found);
        for (path, pos, e) in found.kept {
            errors.push(LoadError::at(
                location(&names, pos),
                Some(render_path(&path)),
                e.to_string(),
            ));
        }
        more += found.more;
    }
    if !errors.is_empty() {
        return Err(fail_counted(errors, more));
    }

    // 4. Merge.
    for doc in &mut docs {
        merge::normalize(doc);
    }
    let mut doc = merge::merge_files(docs);
    // Before the schema and the typed project, whose cost grows with the services.
    if let Some(services) = doc.get("services").and_then(Node::as_map)
        && services.len() > limits::MAX_SERVICES
    {
        return Err(LoadError::msg(format!(
            "{} services; the limit is {} per project",
            services.len(),
            limits::MAX_SERVICES
        ))
        .into());
    }

    // The top-level `name` (newer than the vendored schema).
    let declared_name = match doc.remove("name") {
        Some((key, node)) => match node.value {
            Value::Str(s) => Some(s),
            _ => {
                return Err(LoadError::at(
                    location(&names, key.pos),
                    Some("name".into()),
                    "must be a string",
                )
                .into());
            }
        },
        None => None,
    };
    let name = match input.project_name.clone().or(declared_name) {
        Some(n) if valid_project_name(&n) => n,
        Some(n) => {
            return Err(LoadError::msg(format!(
                "project name `{n}` must be lowercase letters, digits, `-` and `_`, starting with a letter or digit (at most 63)"
            ))
            .into());
        }
        None => {
            return Err(LoadError::msg(
                "no project name: pass `-p NAME` or set a top-level `name:`",
            )
            .into());
        }
    };

    // 5. Extends.
    let mut ext_errors = Vec::new();
    merge::resolve_extends(&mut doc, &mut ext_errors);
    if !ext_errors.is_empty() {
        let errors = ext_errors
            .into_iter()
            .map(|(path, pos, msg)| {
                LoadError::at(location(&names, pos), Some(render_path(&path)), msg)
            })
            .collect();
        return Err(fail(errors));
    }

    // 6. Schema.
    let violations = schema::validate(&doc).map_err(LoadErrors::one)?;
    if !violations.is_empty() {
        let errors = violations
            .into_iter()
            .map(|(path, msg)| {
                let pos = doc.lookup(&path);
                let shown = if path.is_empty() {
                    None
                } else {
                    Some(render_path(&path))
                };
                LoadError::at(
                    location(&names, pos),
                    shown,
                    format!("{msg} (Compose schema)"),
                )
            })
            .collect();
        return Err(fail(errors));
    }

    // 7. Typed project and warnings.
    let mut cx = project::Cx {
        files: &names,
        env: &input.env,
        env_files: &referenced,
        warnings: Vec::new(),
        more_warnings: 0,
        errors: Vec::new(),
    };
    let project = project::build(&mut cx, &doc, name);
    match project {
        Some(project) if cx.errors.is_empty() => Ok(Loaded {
            project,
            warnings: cx.finish_warnings(),
        }),
        _ => {
            if cx.errors.is_empty() {
                cx.errors
                    .push(LoadError::msg("the project could not be built"));
            }
            Err(fail(cx.errors))
        }
    }
}

/// The `env_file:` entries the services of these Compose files name (after interpolation with
/// `env_files` and `env`), in first-seen order, so a client can send them along with the
/// files. Files that do not parse yield nothing here: [`load`] reports their errors.
pub fn env_file_references(input: &Input) -> Vec<String> {
    let mut vars = BTreeMap::new();
    for f in &input.env_files {
        if let Ok(v) = parse_env_file(&f.name, &f.text) {
            vars.extend(v);
        }
    }
    vars.extend(input.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut found: Vec<String> = Vec::new();
    for (i, f) in input.files.iter().enumerate().take(limits::MAX_FILES) {
        let Ok(mut doc) = yaml::parse(&f.name, &f.text, i) else {
            continue;
        };
        interpolate::interpolate_tree(&mut doc, &vars, &mut Vec::new(), &mut Default::default());
        let Some(services) = doc.get("services").and_then(|s| s.as_map()) else {
            continue;
        };
        for (_, service) in services {
            let Some(entry) = service.get("env_file") else {
                continue;
            };
            let names: Vec<&str> = match &entry.value {
                Value::Seq(items) => items.iter().filter_map(|n| n.as_str()).collect(),
                _ => entry.as_str().into_iter().collect(),
            };
            for name in names {
                if !found.iter().any(|f| f == name) {
                    found.push(name.to_owned());
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod reference_tests {
    use super::*;

    #[test]
    fn env_file_references_are_listed_once_after_interpolation() {
        let input = Input {
            files: vec![SourceFile::new(
                "compose.yaml",
                "services:\n  a:\n    image: x\n    env_file: ${STAGE:-dev}.env\n  b:\n    image: x\n    env_file: [dev.env, common.env]\n",
            )],
            ..Input::default()
        };
        assert_eq!(env_file_references(&input), vec!["dev.env", "common.env"]);
    }
}
