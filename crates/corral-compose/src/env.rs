//! `.env`-style files: `KEY=VALUE` lines, for interpolation (`--env-file`) and for services'
//! `env_file:`.
//!
//! Accepted: blank lines, `# comments`, an optional `export ` prefix, unquoted values (trimmed;
//! ` #` starts a comment), `'single quoted'` values taken literally, `"double quoted"` values
//! with `\n`, `\t`, `\r`, `\"`, `\\` and `\$` escapes. Values are not interpolated.
//! A quoted value must close on its own line.

use std::collections::BTreeMap;

use crate::error::LoadError;
use crate::limits;

/// Parses an env file into its variables, in order (a later line overrides an earlier one).
pub fn parse_env_file(name: &str, text: &str) -> Result<BTreeMap<String, String>, LoadError> {
    if text.len() > limits::MAX_FILE_BYTES {
        return Err(LoadError::in_file(
            name,
            format!(
                "env file is {} bytes; the limit is {} bytes (1 MiB)",
                text.len(),
                limits::MAX_FILE_BYTES
            ),
        ));
    }
    let mut vars = BTreeMap::new();
    for (i, raw_line) in text.lines().enumerate() {
        let lineno = (i + 1) as u64;
        let err = |message: String| LoadError {
            line: Some(lineno),
            column: Some(1),
            ..LoadError::in_file(name, message)
        };
        let line = raw_line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let Some((key, rest)) = line.split_once('=') else {
            return Err(err(format!(
                "expected KEY=VALUE, found `{}`",
                truncate(line)
            )));
        };
        let key = key.trim();
        if !valid_key(key) {
            return Err(err(format!(
                "`{}` is not a valid variable name",
                truncate(key)
            )));
        }
        let value = parse_value(rest.trim_start()).map_err(err)?;
        vars.insert(key.to_owned(), value);
    }
    Ok(vars)
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn parse_value(rest: &str) -> Result<String, String> {
    if let Some(body) = rest.strip_prefix('\'') {
        let Some(end) = body.find('\'') else {
            return Err("unterminated single quote".to_owned());
        };
        check_trailing(&body[end + 1..])?;
        return Ok(body[..end].to_owned());
    }
    if let Some(body) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    check_trailing(&body[i + 1..])?;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, other @ ('"' | '\\' | '$' | '\''))) => out.push(other),
                    Some((_, other)) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => break,
                },
                other => out.push(other),
            }
        }
        return Err("unterminated double quote".to_owned());
    }
    // Unquoted: an inline comment starts at whitespace followed by `#`.
    let mut value = rest;
    if let Some(idx) = rest
        .char_indices()
        .find(|&(i, c)| c == '#' && i > 0 && rest[..i].ends_with(char::is_whitespace))
        .map(|(i, _)| i)
    {
        value = &rest[..idx];
    }
    Ok(value.trim().to_owned())
}

fn check_trailing(after: &str) -> Result<(), String> {
    let after = after.trim();
    if after.is_empty() || after.starts_with('#') {
        Ok(())
    } else {
        Err(format!(
            "unexpected text after the closing quote: `{}`",
            truncate(after)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let text = "# comment\n\nA=1\nexport B = two \nC='single # not a comment'\nD=\"x\\ny\"\nE=plain # comment\nF=\nG=a=b\n";
        let vars = parse_env_file(".env", text).unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two");
        assert_eq!(vars["C"], "single # not a comment");
        assert_eq!(vars["D"], "x\ny");
        assert_eq!(vars["E"], "plain");
        assert_eq!(vars["F"], "");
        assert_eq!(vars["G"], "a=b");
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse_env_file("x.env", "A=1\nnot a pair\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("KEY=VALUE"));
        let err = parse_env_file("x.env", "A=\"open\n").unwrap_err();
        assert!(err.message.contains("unterminated"));
        let err = parse_env_file("x.env", "1A=x\n").unwrap_err();
        assert!(err.message.contains("not a valid variable name"));
    }
}
