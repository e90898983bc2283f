//! Paths relative to the project directory (the directory of the first Compose file): bind
//! mount sources, build contexts and Dockerfiles, and configs' and secrets' `file:` sources.
//!
//! corral runs containers on other machines than the one `corral up` runs on, so what such a
//! path names has to be sent along with the stack. A path may therefore not leave the project
//! directory (the sender would be shipping arbitrary files of its machine), and `~` is refused:
//! it would name a home directory on whichever machine expanded it.

/// The normalised form of `source`, a path relative to the project directory: `.` and empty
/// components dropped, `..` applied, no leading `./` and no trailing `/` (`./a//b/.` → `a/b`);
/// the project directory itself is `"."`.
///
/// `None` for a path that cannot be sent with the project: an absolute path, one starting
/// with `~`, one that climbs out of the project directory (`../x`, `./a/../../b`), and the
/// empty string. Pure: no file system access (symbolic links are the sender's business).
///
/// ```
/// use corral_compose::project_path;
///
/// assert_eq!(project_path("./a//b/.").as_deref(), Some("a/b"));
/// assert_eq!(project_path("./").as_deref(), Some("."));
/// assert_eq!(project_path("../secrets/token"), None);
/// assert_eq!(project_path("/etc/passwd"), None);
/// ```
pub fn project_path(source: &str) -> Option<String> {
    if source.is_empty() || source.starts_with('/') || source.starts_with('~') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in source.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                // Climbing above the project directory: even `a/../../a` is refused, since
                // what it names depends on the directory's own name.
                parts.pop()?;
            }
            name => parts.push(name),
        }
    }
    Some(if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_table() {
        let table: &[(&str, Option<&str>)] = &[
            (".", Some(".")),
            ("./", Some(".")),
            ("./.", Some(".")),
            ("a/..", Some(".")),
            ("./a/..", Some(".")),
            ("a", Some("a")),
            ("./a", Some("a")),
            ("././a", Some("a")),
            ("a/", Some("a")),
            ("./a//b/.", Some("a/b")),
            ("a/./b/../c", Some("a/c")),
            ("a/b/../../c", Some("c")),
            (".env", Some(".env")),
            ("..a/b", Some("..a/b")),
            ("a/...", Some("a/...")),
            ("config/nginx.conf", Some("config/nginx.conf")),
            ("", None),
            ("..", None),
            ("../x", None),
            ("./../x", None),
            ("./a/../../b", None),
            ("a/../../a", None),
            ("/", None),
            ("/etc/passwd", None),
            ("//host/share", None),
            ("~", None),
            ("~/data", None),
            ("~user/data", None),
        ];
        for (input, want) in table {
            assert_eq!(project_path(input).as_deref(), *want, "{input:?}");
        }
    }
}
