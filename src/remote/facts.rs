//! Hash facts: the SHA-256 of managed files, in one round trip.

use super::{ScriptError, check_path, quote};
use std::fmt::Write as _;

/// What [`sha256_facts`] found for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileHash {
    /// No regular file there (missing, or a directory / device).
    Missing,
    /// A regular file that could not be read (permissions).
    Unreadable,
    /// SHA-256 of the content, lowercase hex.
    Sha256(String),
}

/// Builds a script printing one line per path, in the order given:
/// `PATH<TAB>SHA256` for a readable regular file, `PATH<TAB>-` when there is no regular file,
/// `PATH<TAB>?` when the file exists but cannot be read. Always exits 0. Uses `sha256sum`.
///
/// Paths with control characters (newline, tab) are refused so the output stays parseable.
pub fn sha256_facts(paths: &[&str]) -> Result<String, ScriptError> {
    let mut s = String::from("# tunnelfleet: sha256 facts\n");
    for path in paths {
        check_path(path)?;
        let p = quote(path);
        let _ = writeln!(
            s,
            "if [ -f {p} ]; then if tf_h=$( {{ sha256sum < {p}; }} 2>/dev/null ); then printf '%s\\t%s\\n' {p} \"${{tf_h%% *}}\"; else printf '%s\\t?\\n' {p}; fi; else printf '%s\\t-\\n' {p}; fi"
        );
    }
    s.push_str("exit 0\n");
    Ok(s)
}

/// Parses the output of a [`sha256_facts`] script into `(path, hash)` pairs.
pub fn parse_sha256_facts(stdout: &str) -> Result<Vec<(String, FileHash)>, ScriptError> {
    let mut out = Vec::new();
    for (n, line) in stdout.lines().enumerate() {
        let Some((path, hash)) = line.rsplit_once('\t') else {
            return Err(ScriptError::BadOutput { line: n + 1 });
        };
        let hash = match hash {
            "-" => FileHash::Missing,
            "?" => FileHash::Unreadable,
            h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                FileHash::Sha256(h.to_ascii_lowercase())
            }
            _ => return Err(ScriptError::BadOutput { line: n + 1 }),
        };
        out.push((path.to_string(), hash));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_text_and_parse() {
        let s = sha256_facts(&["/srv/a b/.env", "/srv/it's"]).expect("build");
        assert!(s.contains("sha256sum < '/srv/a b/.env'"), "{s}");
        assert!(s.contains("'/srv/it'\\''s'"), "{s}");
        assert!(sha256_facts(&["a\tb"]).is_err());

        let out = format!("/a\t{}\n/b b\t-\n/c\t?\n", "ab".repeat(32));
        let parsed = parse_sha256_facts(&out).expect("parse");
        assert_eq!(
            parsed,
            vec![
                ("/a".into(), FileHash::Sha256("ab".repeat(32))),
                ("/b b".into(), FileHash::Missing),
                ("/c".into(), FileHash::Unreadable),
            ]
        );
        assert!(parse_sha256_facts("/a\tnothex\n").is_err());
        assert!(parse_sha256_facts("no tab\n").is_err());
    }
}
