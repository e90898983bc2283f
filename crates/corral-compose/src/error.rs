//! Errors and warnings, each pointing at a file, a line and column, and a key path when known.

use std::fmt;

use crate::limits::{MAX_MESSAGE_BYTES, MAX_NAME_BYTES};

/// Where something was found: the file's name as given in [`crate::SourceFile::name`], and the
/// 1-based line and column of the YAML node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Location {
    pub file: String,
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One reason a load failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadError {
    /// The file the problem is in, when known (a problem of the whole input has none).
    pub file: Option<String>,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    /// Key path in the (merged) document, like `services.web.ports[0]`, when known.
    pub path: Option<String>,
    /// What is wrong, for people.
    pub message: String,
}

/// `s` cut to at most `max` bytes (on a character boundary), saying how long it was.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let suffix = format!("… ({} bytes)", s.len());
    let mut keep = max.saturating_sub(suffix.len());
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{suffix}", &s[..keep])
}

impl LoadError {
    /// An error with a message only.
    pub(crate) fn msg(message: impl Into<String>) -> Self {
        Self {
            file: None,
            line: None,
            column: None,
            path: None,
            message: clip(&message.into(), MAX_MESSAGE_BYTES),
        }
    }

    /// An error about a whole file.
    pub(crate) fn in_file(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: Some(clip(file, MAX_NAME_BYTES)),
            ..Self::msg(message)
        }
    }

    /// An error at a place (a location and/or a key path).
    pub(crate) fn at(
        loc: Option<Location>,
        path: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        let (file, line, column) = match loc {
            Some(l) => (Some(l.file), Some(l.line), Some(l.column)),
            None => (None, None, None),
        };
        Self {
            file: file.map(|f| clip(&f, MAX_NAME_BYTES)),
            line,
            column,
            path: path.map(|p| clip(&p, MAX_NAME_BYTES)),
            message: clip(&message.into(), MAX_MESSAGE_BYTES),
        }
    }
}

impl fmt::Display for LoadError {
    /// At most about 1.5 KiB, however long the fields are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", clip(file, MAX_NAME_BYTES))?;
            if let (Some(line), Some(column)) = (self.line, self.column) {
                write!(f, ":{line}:{column}")?;
            }
            write!(f, ": ")?;
        }
        if let Some(path) = &self.path {
            write!(f, "{}: ", clip(path, MAX_NAME_BYTES))?;
        }
        write!(f, "{}", clip(&self.message, MAX_MESSAGE_BYTES))
    }
}

impl std::error::Error for LoadError {}

/// Every reason a load failed (at least one). The loader keeps going after a problem where it
/// can, so a user sees as many problems as possible in one round trip (capped at
/// [`crate::limits::MAX_ERRORS`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{}", render(.errors))]
pub struct LoadErrors {
    pub errors: Vec<LoadError>,
}

fn render(errors: &[LoadError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl LoadErrors {
    pub(crate) fn one(e: LoadError) -> Self {
        Self { errors: vec![e] }
    }

    /// True when any error's text contains `needle` (handy in tests and callers).
    pub fn mentions(&self, needle: &str) -> bool {
        self.errors.iter().any(|e| e.to_string().contains(needle))
    }
}

impl From<LoadError> for LoadErrors {
    fn from(e: LoadError) -> Self {
        Self::one(e)
    }
}

/// Something the loader accepted but will not act on: every ignored key is reported as one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    /// Key path, like `services.web.logging`.
    pub path: String,
    /// Where the key was written, when known.
    pub location: Option<Location>,
    /// What corral does with it, for people.
    pub message: String,
}

impl fmt::Display for Warning {
    /// At most about 1.5 KiB, however long the fields are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(
                f,
                "{}:{}:{}: ",
                clip(&loc.file, MAX_NAME_BYTES),
                loc.line,
                loc.column
            )?;
        }
        write!(
            f,
            "{}: {}",
            clip(&self.path, MAX_NAME_BYTES),
            clip(&self.message, MAX_MESSAGE_BYTES)
        )
    }
}
