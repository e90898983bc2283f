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
//!    become a [`Service`] (and the top-level `configs:` and `secrets:` [`FileSource`]s);
//!    every other key becomes a [`Warning`] naming it; cross-service checks (unknown
//!    `depends_on` target, dependency cycle, undeclared named volume, config or secret) and
//!    the start order (`depends_on`, topological) happen here.
//!
//! [`project_references`] runs the same stages without needing the `env_file:` contents or a
//! project name, and lists the files and directories a client must send along.
//!
//! # Invariants
//!
//! - No I/O: same [`Input`], same result. `env_file:` contents come in
//!   [`Input::referenced_files`]; other files (build contexts, bind mount sources, configs'
//!   and secrets' `file:`s) are only named, as paths inside the project directory.
//! - Every ignored key is reported as a [`Warning`]; nothing is dropped silently — but `x-`
//!   extension fields, which the spec reserves for other tools (and YAML anchors).
//! - No error or warning holds the value of a config or secret (`environment:` or
//!   `content:`), nor the text of a referenced file that is not an `env_file:`.
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
//!   (`logging`, `security_opt`, `deploy.resources.limits`, `build.cache_from`, a secret's
//!   `uid`, …) is a [`Warning`]; `x-*` extension fields are accepted silently wherever the
//!   spec allows them; a key the spec does not define at all is a schema error, as the
//!   official schema says. The vendored schema dates from 2021, so keys added to the spec
//!   since are schema errors too, but for those handled here: the top-level `name`,
//!   configs' and secrets' `environment:` and `content:`, string `mode:`s, and the newer
//!   `build:` keys (see `schema`).
//! - **Host-level keys** (`pull_policy`, `privileged`, `cap_add`, `cap_drop`, `network_mode`,
//!   `pid`, `devices`) are typed fields of [`Service`]. The forms of them corral cannot honour
//!   (`pull_policy: build`, `network_mode: service:…`, `pid: container:…`, …) are errors, not
//!   warnings: running the service without them would not be what the file asks for.
//! - **Project name**: [`Input::project_name`], else the top-level `name:`, else an error; it
//!   must match `[a-z0-9][a-z0-9_-]*`.
//! - **Nesting** is limited to [`limits::MAX_YAML_DEPTH`] levels: the YAML deserializer
//!   recurses per level, and this keeps a load within a 1 MiB thread stack even in debug
//!   builds (real Compose files nest about 10 deep).
//! - **Project paths**: a relative bind mount source, a build context and a config's or
//!   secret's `file:` are relative to the project directory and must stay inside it
//!   ([`project_path`]): corral runs containers on other machines, so the client sends what
//!   they name (see [`project_references`]). `~` is refused; bind mounts may also name
//!   absolute paths on the host. Bind mounts keep their source as written.
//! - **Builds**: `build:` without `image:` names the image `PROJECT-SERVICE` in lower case,
//!   as Compose does. Remote contexts (URLs, git) and `dockerfile_inline` are refused.
//! - **File modes** (`mode:` of configs and secrets) are octal as in Compose: `0440` is 0o440
//!   although YAML 1.2 reads it as decimal 440 (the loader looks at the digits as written),
//!   as are `0o440` and strings (`"0440"`); a number without a leading zero is taken as is.
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
mod paths;
mod project;
mod schema;
mod yaml;

use std::collections::BTreeMap;

use serde::Serialize;

pub use env::parse_env_file;
pub use error::{LoadError, LoadErrors, Location, Warning};
pub use model::*;
pub use paths::project_path;
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
    /// Files named by services' `env_file:`, matched by name (`./a.env` = `a.env`) and read
    /// as env files. Other files here (a caller may send configs' and secrets' `file:`s
    /// along) are not read by the loader, and count towards [`limits::MAX_ENV_FILES`].
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

/// The interpolation variables: the env files in order, then the caller's environment on top.
/// Errors of the env files go to `errors`.
fn variables(input: &Input, errors: &mut Vec<LoadError>) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for f in &input.env_files {
        match parse_env_file(&f.name, &f.text) {
            Ok(v) => vars.extend(v),
            Err(e) => errors.push(e),
        }
    }
    vars.extend(input.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    vars
}

/// The document after stages 1 to 6, ready for the typed project.
struct Prepared {
    names: Vec<String>,
    vars: BTreeMap<String, String>,
    doc: Node,
    /// `-p NAME`, else the top-level `name:` (checked); `None` when neither is given and the
    /// caller did not require one.
    name: Option<String>,
}

/// Stages 1 to 6: limits, parse, interpolate, merge, the project name, extends and schema.
fn prepare(input: &Input, require_name: bool) -> Result<Prepared, LoadErrors> {
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
    let vars = variables(input, &mut errors);

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
        Some(n) if valid_project_name(&n) => Some(n),
        Some(n) => {
            return Err(LoadError::msg(format!(
                "project name `{n}` must be lowercase letters, digits, `-` and `_`, starting with a letter or digit (at most 63)"
            ))
            .into());
        }
        None if require_name => {
            return Err(LoadError::msg(
                "no project name: pass `-p NAME` or set a top-level `name:`",
            )
            .into());
        }
        None => None,
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
    Ok(Prepared {
        names,
        vars,
        doc,
        name,
    })
}

/// Stage 7, the typed project and the warnings. `env_files`: `None` when the `env_file:`
/// contents are not known (and not looked up).
fn typed(
    input: &Input,
    prepared: &Prepared,
    name: String,
    env_files: Option<&BTreeMap<String, BTreeMap<String, String>>>,
) -> Result<Loaded, LoadErrors> {
    let texts: Vec<&str> = input.files.iter().map(|f| f.text.as_str()).collect();
    let mut cx = project::Cx {
        files: &prepared.names,
        texts: &texts,
        env: &input.env,
        vars: &prepared.vars,
        env_files,
        warnings: Vec::new(),
        more_warnings: 0,
        errors: Vec::new(),
    };
    let project = project::build(&mut cx, &prepared.doc, name);
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

/// Loads a project. See the crate documentation for the stages.
pub fn load(input: &Input) -> Result<Loaded, LoadErrors> {
    let prepared = prepare(input, true)?;
    let Some(name) = prepared.name.clone() else {
        return Err(
            LoadError::msg("no project name: pass `-p NAME` or set a top-level `name:`").into(),
        );
    };
    // The `env_file:` files the services name. Only those are read as env files: the caller
    // may send other files along (configs' and secrets' `file:`s), whose text must not be
    // parsed, nor quoted in an error.
    let mut wanted = Vec::new();
    env_file_names(&prepared.doc, &mut wanted);
    let wanted: std::collections::BTreeSet<String> = wanted
        .iter()
        .map(|n| project::normalize_file_name(n))
        .collect();
    let mut errors = Vec::new();
    let mut referenced = BTreeMap::new();
    for f in &input.referenced_files {
        let normalized = project::normalize_file_name(&f.name);
        if !wanted.contains(&normalized) {
            continue;
        }
        match parse_env_file(&f.name, &f.text) {
            Ok(v) => {
                referenced.insert(normalized, v);
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(fail(errors));
    }
    typed(input, &prepared, name, Some(&referenced))
}

/// The `env_file:` entries of a document's services, as written, in first-seen order.
fn env_file_names(doc: &Node, found: &mut Vec<String>) {
    let Some(services) = doc.get("services").and_then(|s| s.as_map()) else {
        return;
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

/// The `env_file:` entries the services of these Compose files name (after interpolation with
/// `env_files` and `env`), in first-seen order, so a client can send them along with the
/// files. Files that do not parse yield nothing here: [`load`] reports their errors.
pub fn env_file_references(input: &Input) -> Vec<String> {
    let vars = variables(input, &mut Vec::new());
    let mut found: Vec<String> = Vec::new();
    for (i, f) in input.files.iter().enumerate().take(limits::MAX_FILES) {
        let Ok(mut doc) = yaml::parse(&f.name, &f.text, i) else {
            continue;
        };
        interpolate::interpolate_tree(&mut doc, &vars, &mut Vec::new(), &mut Default::default());
        env_file_names(&doc, &mut found);
    }
    found
}

/// What a client has to send, or build from, along with the Compose files: every path is
/// relative to the project directory (the first Compose file's directory), normalised by
/// [`project_path`] (no `./`, no `..`; the directory itself is `.`), each once, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProjectRefs {
    /// The `env_file:` entries, as written (what [`env_file_references`] returns; their
    /// contents go in [`Input::referenced_files`] under these names).
    pub env_files: Vec<String>,
    /// The `file:` sources of the top-level configs and secrets: files.
    pub files: Vec<String>,
    /// The sources of relative bind mounts: a file or a directory (the client looks).
    pub mounts: Vec<String>,
    /// The services' builds, by service name.
    pub builds: Vec<BuildRef>,
}

/// A service's build, as [`ProjectRefs::builds`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildRef {
    pub service: String,
    /// The context directory, relative to the project directory (`.` for the directory
    /// itself).
    pub context: String,
    /// The Dockerfile, relative to the context (`Dockerfile` when not given).
    pub dockerfile: String,
}

/// The files and directories a client must send with these Compose files (see
/// [`ProjectRefs`]). It loads the project as [`load`] does, with two differences: the
/// `env_file:` contents are not needed (they are not looked up), nor is a project name. So
/// its errors are [`load`]'s, but for those two: a client can report them before reading and
/// sending anything more.
pub fn project_references(input: &Input) -> Result<ProjectRefs, LoadErrors> {
    let prepared = prepare(input, false)?;
    // The name only goes into the names of built images, which are not listed here; a valid
    // name that ends in a letter keeps those names valid when the services' names are.
    let name = prepared
        .name
        .clone()
        .unwrap_or_else(|| "project".to_owned());
    let loaded = typed(input, &prepared, name, None)?;
    let mut refs = ProjectRefs::default();
    env_file_names(&prepared.doc, &mut refs.env_files);
    let project = &loaded.project;
    let mut files = std::collections::BTreeSet::new();
    for source in project.configs.values().chain(project.secrets.values()) {
        if let FileSource::File { path } = source {
            files.insert(path.clone());
        }
    }
    let mut mounts = std::collections::BTreeSet::new();
    for (service_name, service) in &project.services {
        for mount in &service.volumes {
            if let Mount::Bind { source, .. } = mount
                && let Some(path) = project_path(source)
            {
                mounts.insert(path);
            }
        }
        if let Some(build) = &service.build
            && let Some(context) = project_path(&build.context)
        {
            let dockerfile = build.dockerfile.as_deref().unwrap_or("Dockerfile");
            refs.builds.push(BuildRef {
                service: service_name.clone(),
                context,
                dockerfile: project_path(dockerfile).unwrap_or_else(|| dockerfile.to_owned()),
            });
        }
    }
    refs.files = files.into_iter().collect();
    refs.mounts = mounts.into_iter().collect();
    Ok(refs)
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
