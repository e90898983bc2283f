//! Stack verbs: `up`, `ps`, `stack ls`, `scale`, `down`, and the `--wait` progress display.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use corral_proto::api::{
    FileBody, ScaleRequest, ServiceView, StackSummary, StackView, UpRequest, UpResponse,
};

use crate::cli::{ConfigArgs, Conn, Format, Out, UpArgs, WaitArgs};
use crate::client::{Client, seg};
use crate::output::{print, table};

const DEFAULT_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// Largest file `up` reads (the server refuses bigger Compose files anyway).
const MAX_FILE_BYTES: u64 = corral_compose::limits::MAX_FILE_BYTES as u64;

fn read_file(path: &Path) -> anyhow::Result<FileBody> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        bail!(
            "{} is {} bytes; the limit is {MAX_FILE_BYTES}",
            path.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
    Ok(FileBody {
        name: path.display().to_string(),
        text,
    })
}

/// Variables of the caller's environment whose names appear in the files (as `${NAME}`,
/// `$NAME` or a bare `environment:` entry): only those are sent, not the whole environment.
fn referenced_env(texts: &[&str]) -> BTreeMap<String, String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut words = std::collections::HashSet::new();
    for text in texts {
        for w in text.split(|c: char| !is_ident(c)) {
            if !w.is_empty() {
                words.insert(w);
            }
        }
    }
    std::env::vars()
        .filter(|(k, _)| words.contains(k.as_str()))
        .collect()
}

/// The request `up` sends (and `admission test`): the Compose files, their `.env` and the
/// files their services name in `env_file:`, read here.
pub fn project_request(
    files: &[PathBuf],
    project: Option<String>,
    env_files: &[PathBuf],
    environment: &str,
) -> anyhow::Result<UpRequest> {
    Ok(project_with_contexts(files, project, env_files, environment, false)?.0)
}

/// A build context to upload: its SHA-256 (hex) and its tar.
pub type BuildContext = (String, Vec<u8>);

/// [`project_request`], and with `contexts`, each built service's context archived
/// (`request.build_contexts` names them by SHA-256).
pub fn project_with_contexts(
    files: &[PathBuf],
    project: Option<String>,
    env_files: &[PathBuf],
    environment: &str,
    contexts: bool,
) -> anyhow::Result<(UpRequest, Vec<BuildContext>)> {
    let paths: Vec<PathBuf> = if files.is_empty() {
        match DEFAULT_FILES.iter().map(PathBuf::from).find(|p| p.exists()) {
            Some(p) => vec![p],
            None => bail!(
                "no Compose file here ({}); name one with -f",
                DEFAULT_FILES.join(", ")
            ),
        }
    } else {
        files.to_vec()
    };
    let file_bodies = paths
        .iter()
        .map(|p| read_file(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let base = paths[0].parent().map(Path::to_path_buf).unwrap_or_default();
    let env_paths: Vec<PathBuf> = if env_files.is_empty() {
        let dot_env = base.join(".env");
        if dot_env.exists() {
            vec![dot_env]
        } else {
            vec![]
        }
    } else {
        env_files.to_vec()
    };
    let env_bodies = env_paths
        .iter()
        .map(|p| read_file(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let texts: Vec<&str> = file_bodies.iter().map(|f| f.text.as_str()).collect();
    let env = referenced_env(&texts);
    // Files the services name in `env_file:`, relative to the first file's directory.
    let input = corral_compose::Input {
        files: file_bodies
            .iter()
            .map(|f| corral_compose::SourceFile::new(f.name.clone(), f.text.clone()))
            .collect(),
        env_files: env_bodies
            .iter()
            .map(|f| corral_compose::SourceFile::new(f.name.clone(), f.text.clone()))
            .collect(),
        env: env.clone(),
        ..Default::default()
    };
    let mut referenced_files = Vec::new();
    for name in corral_compose::env_file_references(&input) {
        let path = base.join(&name);
        let mut f = read_file(&path)?;
        f.name = name;
        referenced_files.push(f);
    }
    // The project's own files the stack ships: relative bind mounts (a directory as its
    // files), and configs' and secrets' `file:` sources. A project that does not load sends
    // none; the server says why it does not load.
    let mut project_files = ProjectFileReader::default();
    let mut build_contexts = BTreeMap::new();
    let mut archives: Vec<BuildContext> = Vec::new();
    if let Ok(refs) = corral_compose::project_references(&corral_compose::Input {
        referenced_files: referenced_files
            .iter()
            .map(|f| corral_compose::SourceFile::new(f.name.clone(), f.text.clone()))
            .collect(),
        project_name: project.clone(),
        ..input
    }) {
        for path in &refs.files {
            project_files.file(&base, path)?;
        }
        for path in &refs.mounts {
            project_files.mount(&base, path)?;
        }
        if contexts {
            for b in &refs.builds {
                let dir = if b.context == "." {
                    base.clone()
                } else {
                    base.join(&b.context)
                };
                let (tar, sha) = crate::context::archive(
                    &dir,
                    &b.dockerfile,
                    corral_proto::MAX_BUILD_CONTEXT_BYTES,
                )
                .with_context(|| format!("services.{}.build", b.service))?;
                build_contexts.insert(b.service.clone(), sha.clone());
                if !archives.iter().any(|(s, _)| *s == sha) {
                    archives.push((sha, tar));
                }
            }
        }
    }
    Ok((
        UpRequest {
            name: project,
            environment: Some(environment.to_owned()),
            files: file_bodies,
            env_files: env_bodies,
            referenced_files,
            env,
            project_files: project_files.files,
            build_contexts,
            progress_id: None,
        },
        archives,
    ))
}

/// Reads the project files a stack ships, within the limits the server applies.
#[derive(Default)]
struct ProjectFileReader {
    files: Vec<corral_proto::files::ProjectFile>,
    /// The paths in `files` (a mount and a config may name the same file).
    read: std::collections::BTreeSet<String>,
    total: usize,
}

impl ProjectFileReader {
    /// A file the Compose file names (`file:` of a config or secret): a regular file.
    fn file(&mut self, base: &Path, path: &str) -> anyhow::Result<()> {
        let on_disk = base.join(path);
        let meta = std::fs::symlink_metadata(&on_disk)
            .with_context(|| format!("./{path} (named in the Compose file)"))?;
        let meta = if meta.file_type().is_symlink() {
            std::fs::metadata(&on_disk).with_context(|| format!("./{path}"))?
        } else {
            meta
        };
        if !meta.is_file() {
            bail!("./{path} (named in the Compose file) is not a file");
        }
        self.add(&on_disk, path, &meta)
    }

    /// A relative bind mount's source: a file, or a directory shipped as its files.
    fn mount(&mut self, base: &Path, path: &str) -> anyhow::Result<()> {
        let on_disk = if path == "." {
            base.to_path_buf()
        } else {
            base.join(path)
        };
        let meta = std::fs::metadata(&on_disk).with_context(|| {
            format!("./{path} (a bind mount of the Compose file, shipped with the stack)")
        })?;
        if meta.is_file() {
            return self.add(&on_disk, path, &meta);
        }
        if !meta.is_dir() {
            bail!("./{path} is neither a file nor a directory");
        }
        let mut stack = vec![(on_disk, path.to_owned())];
        while let Some((dir, rel)) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .with_context(|| format!("./{rel}"))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("./{rel}"))?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    bail!("./{rel}: a file name that is not UTF-8 cannot be shipped");
                };
                let child = if rel == "." {
                    name.to_owned()
                } else {
                    format!("{rel}/{name}")
                };
                let meta = std::fs::symlink_metadata(entry.path())
                    .with_context(|| format!("./{child}"))?;
                if meta.file_type().is_symlink() {
                    bail!(
                        "./{child} is a symbolic link: corral ships files and directories only (a link could point outside the project)"
                    );
                } else if meta.is_dir() {
                    stack.push((entry.path(), child));
                } else if meta.is_file() {
                    self.add(&entry.path(), &child, &meta)?;
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, on_disk: &Path, path: &str, meta: &std::fs::Metadata) -> anyhow::Result<()> {
        use corral_proto::files::{MAX_FILE_BYTES, MAX_PROJECT_FILES, MAX_PROJECT_FILES_BYTES};
        use std::os::unix::fs::PermissionsExt;
        if !self.read.insert(path.to_owned()) {
            return Ok(());
        }
        if meta.len() > MAX_FILE_BYTES as u64 {
            bail!(
                "./{path} is {} bytes; a shipped file may have {MAX_FILE_BYTES} (put larger data in the image or a volume)",
                meta.len()
            );
        }
        if self.files.len() >= MAX_PROJECT_FILES {
            bail!(
                "the project ships more than {MAX_PROJECT_FILES} files (bind mounts of directories count each file)"
            );
        }
        let data = std::fs::read(on_disk).with_context(|| format!("cannot read ./{path}"))?;
        self.total += data.len();
        if self.total > MAX_PROJECT_FILES_BYTES {
            bail!(
                "the project's shipped files add up to more than {MAX_PROJECT_FILES_BYTES} bytes (at ./{path})"
            );
        }
        self.files.push(corral_proto::files::ProjectFile {
            path: path.to_owned(),
            mode: meta.permissions().mode() & 0o777,
            data,
        });
        Ok(())
    }
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    // `--wait` reports the time to convergence from here, the command's start.
    let started = Instant::now();
    let (request, contexts) = project_with_contexts(
        &args.files,
        args.project.clone(),
        &args.env_files,
        &args.environment,
        true,
    )?;
    let client = Client::new(&args.conn)?;
    // Contexts go first, each once: the server keeps them by SHA-256.
    for (sha, tar) in contexts {
        let path = format!("/v1/build-contexts/{sha}");
        if !client.exists(&path).await? {
            eprintln!(
                "sending build context {} ({:.1} MB)",
                &sha[..12],
                tar.len() as f64 / 1e6
            );
            client.put_bytes(&path, tar).await?;
        }
    }
    // What the server does meanwhile (a build's output) is shown as it happens.
    let mut request = request;
    let progress_id = random_id();
    request.progress_id = Some(progress_id.clone());
    let follow = tokio::spawn(follow_progress(client.clone(), progress_id.clone()));
    let answer = client.post_long("/v1/stacks", &request).await;
    follow.abort();
    // The last lines, written between the last poll and the answer.
    if let Ok(view) = client
        .get::<corral_proto::api::ProgressView>(&format!("/v1/progress/{progress_id}"))
        .await
    {
        let shown = LAST_SHOWN.load(std::sync::atomic::Ordering::Relaxed);
        for line in view.lines.iter().skip(shown) {
            eprintln!("  {line}");
        }
    }
    let resp: UpResponse = answer?;
    for w in &resp.warnings {
        eprintln!("warning: {w}");
    }
    for line in &resp.images {
        eprintln!("image {line}");
    }
    if args.out.format == Format::Table {
        eprintln!(
            "stack {} {}{}",
            resp.stack,
            if resp.created { "created" } else { "updated" },
            if resp.changed.is_empty() {
                String::new()
            } else {
                format!(" (rolling update of {})", resp.changed.join(", "))
            }
        );
    }
    if args.wait.wait {
        let view = wait_converged(&client, &resp.stack, args.wait.timeout, started).await?;
        return print(args.out.format, &view, |v| {
            ps_table(std::slice::from_ref(v))
        });
    }
    print(args.out.format, &resp, |r| {
        format!(
            "follow it with `corral ps -p {}` (or `corral up --wait`)",
            r.stack
        )
    })
}

/// How long a stack must stay converged before `--wait` believes it: a replica that dies
/// right after it started (a crash loop, a job that exits) looks running for an instant.
/// (`docker service create` watches for 5 s for the same reason.)
const STABLE_FOR: Duration = Duration::from_secs(1);

/// Polls the stack until it converges (and stays so for [`STABLE_FOR`]), showing each service's progress: bars on a terminal,
/// a plain line per change otherwise. Fails with the stack's state after `timeout`.
async fn wait_converged(
    client: &Client,
    stack: &str,
    timeout: Duration,
    started: Instant,
) -> anyhow::Result<StackView> {
    let mut converged_since: Option<Instant> = None;
    let tty = std::io::stderr().is_terminal();
    let multi = indicatif::MultiProgress::new();
    let mut bars: BTreeMap<String, indicatif::ProgressBar> = BTreeMap::new();
    let mut last_line: BTreeMap<String, String> = BTreeMap::new();
    let style =
        indicatif::ProgressStyle::with_template("{prefix:>16} {bar:30} {pos}/{len} {msg}").ok();
    loop {
        let view: StackView = client.get(&format!("/v1/stacks/{}", seg(stack))).await?;
        if let Some(e) = &view.error {
            for b in bars.values() {
                b.abandon();
            }
            anyhow::bail!("stack {} failed: {e}", view.name);
        }
        for s in &view.services {
            let line = service_progress(s);
            if tty {
                let bar = bars.entry(s.name.clone()).or_insert_with(|| {
                    let b = multi.add(indicatif::ProgressBar::new(u64::from(s.desired)));
                    if let Some(st) = &style {
                        b.set_style(st.clone());
                    }
                    b.set_prefix(s.name.clone());
                    b
                });
                bar.set_length(u64::from(s.desired));
                bar.set_position(u64::from(s.ready.min(s.desired)));
                bar.set_message(line);
            } else if last_line.get(&s.name) != Some(&format!("{}/{} {line}", s.ready, s.desired)) {
                eprintln!(
                    "{}: {}/{} ready{}",
                    s.name,
                    s.ready,
                    s.desired,
                    suffix(&line)
                );
                last_line.insert(s.name.clone(), format!("{}/{} {line}", s.ready, s.desired));
            }
        }
        if view.converged {
            let since = *converged_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= STABLE_FOR || started.elapsed() >= timeout {
                for b in bars.values() {
                    b.finish();
                }
                eprintln!(
                    "stack {} converged in {:.1}s (and held for {:.0}s)",
                    view.name,
                    (since - started).as_secs_f64(),
                    STABLE_FOR.as_secs_f64()
                );
                return Ok(view);
            }
        } else {
            converged_since = None;
        }
        if started.elapsed() >= timeout {
            for b in bars.values() {
                b.abandon();
            }
            let mut why = Vec::new();
            for s in &view.services {
                if s.ready != s.desired
                    || s.unplaced_count > 0
                    || !s.unplaced.is_empty()
                    || s.outdated > 0
                {
                    why.push(format!(
                        "  {}: {}/{} ready{}",
                        s.name,
                        s.ready,
                        s.desired,
                        suffix(&service_progress(s))
                    ));
                    for u in &s.unplaced {
                        why.push(format!("    {u}"));
                    }
                }
            }
            bail!(
                "stack {} did not converge within {}s:\n{}",
                view.name,
                timeout.as_secs(),
                why.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn suffix(line: &str) -> String {
    if line.is_empty() {
        String::new()
    } else {
        format!(" — {line}")
    }
}

/// What a service is doing, in a few words.
fn service_progress(s: &ServiceView) -> String {
    let mut parts = Vec::new();
    if s.outdated > 0 {
        parts.push(format!("{} outdated", s.outdated));
    }
    if let Some(w) = &s.waiting {
        parts.push(w.clone());
    }
    if s.unplaced_count > 0 {
        parts.push(format!("{} unplaced", s.unplaced_count));
    } else if !s.unplaced.is_empty() {
        // A server that does not count them.
        parts.push(format!("{} unplaced", s.unplaced.len()));
    }
    for r in &s.replicas {
        if let Some(p) = &r.pulling {
            parts.push(format!("{}.{} on {}: {p}", s.name, r.slot, r.host));
        }
    }
    if let Some(e) = &s.last_error {
        parts.push(format!("retrying: {e}"));
    }
    parts.join("; ")
}

/// `IMAGE` or `IMAGE@sha256:0123456789ab` (the digest every replica runs, shortened).
fn image_column(s: &ServiceView) -> String {
    match &s.digest {
        Some(d) => format!("{}@{}", s.image, d.get(..19).unwrap_or(d.as_str())),
        None => s.image.clone(),
    }
}

fn ps_table(stacks: &[StackView]) -> String {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for v in stacks {
        if let Some(e) = &v.error {
            notes.push(format!("{}: failed: {e}", v.name));
        }
        for s in &v.services {
            for r in &s.replicas {
                let mut state = r.actual.clone();
                if let Some(h) = &r.health {
                    state.push_str(&format!(" ({h})"));
                }
                if let Some(code) = r.exit_code.filter(|_| r.actual == "exited") {
                    state.push_str(&format!(" [{code}]"));
                }
                if r.desired == "removed" {
                    state.push_str(", removing");
                } else if !r.current {
                    state.push_str(", outdated");
                }
                if let Some(p) = &r.pulling {
                    state = format!("{state} ({p})");
                }
                rows.push(vec![
                    v.name.clone(),
                    format!("{}.{}", s.name, r.slot),
                    r.host.clone(),
                    r.ip.clone().unwrap_or_else(|| "-".into()),
                    image_column(s),
                    state,
                    s.ports.join(","),
                    r.name.clone(),
                ]);
            }
            if s.replicas.is_empty() {
                rows.push(vec![
                    v.name.clone(),
                    s.name.clone(),
                    "-".into(),
                    "-".into(),
                    image_column(s),
                    format!("0/{} ready", s.desired),
                    s.ports.join(","),
                    "-".into(),
                ]);
            }
            let p = service_progress(s);
            if !p.is_empty() {
                notes.push(format!("{}/{}: {p}", v.name, s.name));
            }
            for u in &s.unplaced {
                notes.push(format!("  {u}"));
            }
        }
    }
    let mut out = table(
        &[
            "STACK",
            "REPLICA",
            "HOST",
            "ADDRESS",
            "IMAGE",
            "STATE",
            "PORTS",
            "CONTAINER",
        ],
        rows,
    );
    for n in notes {
        out.push('\n');
        out.push_str(&n);
    }
    out
}

pub async fn ps(conn: Conn, project: Option<String>, out: Out) -> anyhow::Result<()> {
    let client = Client::new(&conn)?;
    let views: Vec<StackView> = match project {
        Some(p) => vec![client.get(&format!("/v1/stacks/{}", seg(&p))).await?],
        None => {
            let all: Vec<StackSummary> = client.get("/v1/stacks").await?;
            let mut views = Vec::new();
            for s in all {
                views.push(client.get(&format!("/v1/stacks/{}", seg(&s.name))).await?);
            }
            views
        }
    };
    print(out.format, &views, |v| ps_table(v))
}

pub async fn ls(conn: Conn, out: Out) -> anyhow::Result<()> {
    let stacks: Vec<StackSummary> = Client::new(&conn)?.get("/v1/stacks").await?;
    print(out.format, &stacks, |ss| {
        table(
            &[
                "NAME",
                "ENVIRONMENT",
                "SERVICES",
                "REPLICAS",
                "STATE",
                "UPDATED",
            ],
            ss.iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.environment.clone(),
                        s.services.to_string(),
                        format!("{}/{}", s.running, s.desired),
                        if s.state != "active" {
                            s.state.clone()
                        } else if s.converged {
                            "converged".into()
                        } else {
                            "converging".into()
                        },
                        s.updated_at.clone(),
                    ]
                })
                .collect(),
        )
    })
}

/// Parses `STACK/SERVICE=N`.
fn parse_target(t: &str) -> anyhow::Result<(String, String, u32)> {
    let bad = || anyhow::anyhow!("{t:?}: expected STACK/SERVICE=N, e.g. shop/web=3");
    let (name, n) = t.split_once('=').ok_or_else(bad)?;
    let (stack, service) = name.split_once('/').ok_or_else(bad)?;
    if stack.is_empty() || service.is_empty() {
        return Err(bad());
    }
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    Ok((stack.to_owned(), service.to_owned(), n))
}

pub async fn scale(conn: Conn, targets: Vec<String>, wait: WaitArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let parsed = targets
        .iter()
        .map(|t| parse_target(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = Client::new(&conn)?;
    for (stack, service, replicas) in &parsed {
        let _: StackView = client
            .post(
                &format!("/v1/stacks/{}/scale", seg(stack)),
                &ScaleRequest {
                    service: service.clone(),
                    replicas: *replicas,
                },
            )
            .await?;
        eprintln!("{stack}/{service} scaled to {replicas}");
    }
    if wait.wait {
        let mut seen = Vec::new();
        for (stack, _, _) in &parsed {
            if !seen.contains(stack) {
                wait_converged(&client, stack, wait.timeout, started).await?;
                seen.push(stack.clone());
            }
        }
    }
    Ok(())
}

pub async fn down(
    conn: Conn,
    project: &str,
    volumes: bool,
    detach: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let client = Client::new(&conn)?;
    client
        .delete(&format!("/v1/stacks/{}?volumes={volumes}", seg(project)))
        .await?;
    if detach {
        eprintln!("stack {project} is being removed");
        return Ok(());
    }
    let started = Instant::now();
    let mut last = None;
    loop {
        let stacks: Vec<StackSummary> = client.get("/v1/stacks").await?;
        let Some(s) = stacks.iter().find(|s| s.name == project) else {
            eprintln!(
                "stack {project} removed in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        };
        let view: Option<StackView> = client
            .get(&format!("/v1/stacks/{}", seg(&s.name)))
            .await
            .ok();
        let left: usize = view
            .map(|v| v.services.iter().map(|s| s.replicas.len()).sum())
            .unwrap_or(0);
        if last != Some(left) {
            eprintln!("removing {project}: {left} containers left");
            last = Some(left);
        }
        if started.elapsed() >= timeout {
            bail!(
                "stack {project} is still being removed after {}s ({left} containers left; hosts that are disconnected remove theirs when they return)",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_targets_parse_or_say_the_form() {
        assert_eq!(
            parse_target("shop/web=3").unwrap(),
            ("shop".into(), "web".into(), 3)
        );
        for bad in [
            "shop/web",
            "web=3",
            "/web=3",
            "shop/=1",
            "shop/web=-1",
            "shop/web=x",
        ] {
            let e = parse_target(bad).unwrap_err().to_string();
            assert!(e.contains("STACK/SERVICE=N"), "{bad}: {e}");
        }
    }

    #[test]
    fn only_variables_named_in_the_files_are_sent() {
        // SAFETY-free: the test only reads variables that every process has.
        let path = std::env::var("PATH").unwrap();
        let sent = referenced_env(&["image: x:${PATH}\n"]);
        assert_eq!(sent.get("PATH"), Some(&path));
        assert!(!sent.contains_key("HOME") || std::env::var("HOME").is_err());
    }
}

/// What `corral config -o json` prints.
#[derive(serde::Serialize)]
struct ConfigView<'a> {
    /// The resolved project (secrets' values hidden).
    project: &'a corral_compose::Project,
    /// Each service as corral will run it, in start order.
    services: Vec<ServicePlan<'a>>,
    /// Ignored keys and what corral does with shipped files.
    warnings: Vec<String>,
}

#[derive(serde::Serialize)]
struct ServicePlan<'a> {
    name: &'a str,
    replicas: u32,
    container: &'a corral_proto::ContainerSpec,
}

/// `corral config`: load and define the project here, as the server would, and print it.
pub fn config(args: ConfigArgs) -> anyhow::Result<()> {
    let req = project_request(
        &args.files,
        args.project.clone(),
        &args.env_files,
        "default",
    )?;
    let source = |f: &corral_proto::api::FileBody| {
        corral_compose::SourceFile::new(f.name.clone(), f.text.clone())
    };
    let input = corral_compose::Input {
        files: req.files.iter().map(source).collect(),
        env_files: req.env_files.iter().map(source).collect(),
        referenced_files: req.referenced_files.iter().map(source).collect(),
        env: req.env.clone(),
        project_name: req.name.clone(),
    };
    let loaded = corral_compose::load(&input).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sent: corral_control::define::ProjectFiles = req
        .project_files
        .iter()
        .map(|f| (f.path.clone(), (f.mode, f.data.clone())))
        .collect();
    let def = corral_control::define::define_with_files(&loaded.project, &sent)
        .map_err(|errors| anyhow::anyhow!("{}", errors.join("\n")))?;
    let mut warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    warnings.extend(def.notes.iter().cloned());
    let view = ConfigView {
        project: &loaded.project,
        services: def
            .services
            .iter()
            .map(|(name, replicas, d)| ServicePlan {
                name,
                replicas: *replicas,
                container: &d.template,
            })
            .collect(),
        warnings,
    };
    print(args.out.format, &view, |v| {
        let mut lines = vec![format!(
            "project {} ({} services, in start order)",
            v.project.name,
            v.services.len()
        )];
        for s in &v.services {
            let c = s.container;
            lines.push(format!(
                "service {}: {} replica(s) of {} (pull {})",
                s.name,
                s.replicas,
                c.image,
                c.pull.as_str()
            ));
            for p in &c.ports {
                lines.push(format!("  publishes {p}"));
            }
            for f in &c.files {
                let how = match f.kind {
                    corral_proto::FileKind::Config => "read-only copy on each host",
                    corral_proto::FileKind::Secret => "in memory on each host",
                };
                lines.push(format!("  mounts {} at {} ({how})", f.name, f.target));
            }
            for m in &c.mounts {
                lines.push(format!("  mounts {m:?}"));
            }
            if c.privileged || !c.cap_add.is_empty() || c.pid_host || !c.devices.is_empty() {
                lines.push("  asks for host access (privileged, cap_add, pid or devices): subject to the admission policy".into());
            }
        }
        for w in &v.warnings {
            lines.push(format!("warning: {w}"));
        }
        lines.join("\n")
    })
}

/// How many progress lines of the current `up` have been shown.
static LAST_SHOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A random id to follow an `up` by.
fn random_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // Without randomness the id is still unique enough to follow one's own `up`.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes.copy_from_slice(&t.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prints what the server says about an `up` in progress, every half second, until aborted.
async fn follow_progress(client: Client, id: String) {
    let mut after = 0usize;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(view) = client
            .get::<corral_proto::api::ProgressView>(&format!("/v1/progress/{id}?after={after}"))
            .await
        else {
            continue;
        };
        for line in &view.lines {
            eprintln!("  {line}");
        }
        after = view.next;
        LAST_SHOWN.store(after, std::sync::atomic::Ordering::Relaxed);
    }
}
