//! Build contexts: a service's `build.context` directory as the tar archive the server keeps
//! and a host builds from, without what `.dockerignore` excludes. The archive is
//! deterministic — entries sorted, times, owners and modes' high bits fixed — so an unchanged
//! context has the same SHA-256 and its service is neither rebuilt nor rolled.

use std::path::Path;

use anyhow::{Context, bail};

/// One `.dockerignore` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// `/`-separated segments; `**` matches any number of them.
    segments: Vec<String>,
    /// A `!` rule: what it matches is sent after all.
    include: bool,
}

/// The rules of a `.dockerignore` text.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    rules: Vec<Rule>,
}

impl Ignore {
    pub fn parse(text: &str) -> Ignore {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (include, pattern) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let segments: Vec<String> = pattern
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(str::to_owned)
                .collect();
            if !segments.is_empty() {
                rules.push(Rule { segments, include });
            }
        }
        Ignore { rules }
    }

    /// Whether `path` (relative, `/`-separated) is left out: the last rule that matches it,
    /// or a directory above it, decides.
    pub fn excludes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for rule in &self.rules {
            let hit = (1..=parts.len()).any(|n| matches(&rule.segments, &parts[..n]));
            if hit {
                excluded = !rule.include;
            }
        }
        excluded
    }
}

fn matches(pattern: &[String], path: &[&str]) -> bool {
    match (pattern.first(), path.first()) {
        (None, None) => true,
        (Some(p), _) if p == "**" => {
            matches(&pattern[1..], path) || (!path.is_empty() && matches(pattern, &path[1..]))
        }
        (Some(p), Some(s)) => glob(p, s) && matches(&pattern[1..], &path[1..]),
        _ => false,
    }
}

/// `*` any run of characters but `/`, `?` one character; the rest literally.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The context at `dir` as a tar archive (at most `limit` bytes), and its SHA-256 (hex).
/// The Dockerfile and `.dockerignore` are always sent: the builder reads them.
pub fn archive(dir: &Path, dockerfile: &str, limit: u64) -> anyhow::Result<(Vec<u8>, String)> {
    let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => Ignore::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ignore::default(),
        Err(e) => return Err(e).context(format!("{}/.dockerignore", dir.display())),
    };
    if !dir.join(dockerfile).is_file() {
        bail!("the build context {} has no {dockerfile}", dir.display());
    }
    let mut paths = Vec::new();
    collect(dir, "", &ignore, dockerfile, &mut paths)?;
    paths.sort();
    let mut builder = tar::Builder::new(Vec::new());
    let mut size: u64 = 0;
    for rel in &paths {
        let full = dir.join(rel);
        let meta = std::fs::symlink_metadata(&full).with_context(|| rel.clone())?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full).with_context(|| rel.clone())?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder
                .append_link(&mut header, rel, &target)
                .with_context(|| rel.clone())?;
        } else if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, format!("{rel}/"), std::io::empty())
                .with_context(|| rel.clone())?;
        } else if meta.is_file() {
            size += meta.len();
            if size > limit {
                bail!(
                    "the build context {} is over {limit} bytes (at {rel}); leave out what the build does not need with .dockerignore",
                    dir.display()
                );
            }
            let data = std::fs::read(&full).with_context(|| rel.clone())?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(data.len() as u64);
            builder
                .append_data(&mut header, rel, data.as_slice())
                .with_context(|| rel.clone())?;
        }
    }
    let bytes = builder.into_inner().context("writing the build context")?;
    if bytes.len() as u64 > limit {
        bail!(
            "the build context {} is over {limit} bytes; leave out what the build does not need with .dockerignore",
            dir.display()
        );
    }
    let digest = corral_control::define::sha256_hex(&bytes);
    Ok((bytes, digest))
}

fn collect(
    dir: &Path,
    rel: &str,
    ignore: &Ignore,
    dockerfile: &str,
    out: &mut Vec<String>,
) -> anyhow::Result<()> {
    let here = if rel.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(rel)
    };
    for entry in std::fs::read_dir(&here).with_context(|| here.display().to_string())? {
        let entry = entry.with_context(|| here.display().to_string())?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            bail!("{}: a file name that is not UTF-8", here.display());
        };
        let child = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        let always = child == dockerfile || child == ".dockerignore";
        if ignore.excludes(&child) && !always {
            continue;
        }
        let kind = entry.file_type().with_context(|| child.clone())?;
        out.push(child.clone());
        if kind.is_dir() {
            collect(dir, &child, ignore, dockerfile, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_rules_as_docker_reads_them() {
        let i =
            Ignore::parse("# comment\n*.log\nnode_modules\n**/secret*\n!keep.log\n/build/tmp\n");
        assert!(i.excludes("a.log"));
        assert!(!i.excludes("keep.log"));
        assert!(!i.excludes("dir/a.log"), "*.log is for the top level only");
        assert!(i.excludes("node_modules/x/y.js"));
        assert!(i.excludes("deep/er/secret.txt"));
        assert!(i.excludes("build/tmp/x"));
        assert!(!i.excludes("build/out"));
        assert!(!i.excludes("src/main.rs"));
    }

    #[test]
    fn an_archive_is_the_same_bytes_for_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("debug.log"), "noise").unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "*.log\n").unwrap();
        let (bytes, sha) = archive(dir.path(), "Dockerfile", 1 << 20).unwrap();
        let names: Vec<String> = tar::Archive::new(bytes.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, [".dockerignore", "Dockerfile", "a.txt"]);
        // Touched, not changed: the same archive.
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("debug.log"), "more noise").unwrap();
        assert_eq!(archive(dir.path(), "Dockerfile", 1 << 20).unwrap().1, sha);
        std::fs::write(dir.path().join("a.txt"), "b").unwrap();
        assert_ne!(archive(dir.path(), "Dockerfile", 1 << 20).unwrap().1, sha);
        assert!(archive(dir.path(), "Dockerfile", 10).is_err());
        assert!(archive(dir.path(), "Nope", 1 << 20).is_err());
    }
}
