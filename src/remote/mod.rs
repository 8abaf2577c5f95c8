//! Pure builders of POSIX `sh` scripts run on the hosts (no I/O here).
//!
//! Hosts run each script as `bash -c '<script>'` through sshd, so the script text is visible
//! to anyone running `ps` on the host. Therefore:
//! - a secret is never part of a script; it travels on the command's stdin only
//!   ([`atomic_write`] builds the script and the matching stdin payload);
//! - every value placed in a script goes through [`quote`], the one quoting function.
//!
//! Scripts use only POSIX sh and common utilities (GNU coreutils or busybox: `head -c`,
//! `mktemp`, `wc -c`, `sync FILE`, `sha256sum`, `mv`, `chmod`, `chown`, `mkdir`), and are
//! tested under both dash and bash.

#![warn(missing_docs)]

mod audit;
mod exit;
mod facts;
mod lock;
pub mod probe;
mod write;

pub use audit::{AuditEntry, AuditOutcome, audit_line};
pub use exit::RemoteExit;
pub use facts::{FileHash, parse_sha256_facts, sha256_facts};
pub use lock::{HOLDER_FILE, LOCK_HELD_EXIT, force_unlock, mkdir_lock, script_lock, unlock};
pub use write::{
    DEFAULT_DIR_MODE, TEMP_PREFIX, WRITE_CANCELLED_EXIT, WriteSpec, atomic_write,
    atomic_write_framed, framed_payload,
};

/// Quotes `s` as one shell word, single-quote style: `it's` becomes `'it'\''s'`, the empty
/// string becomes `''`. Safe for any text (newlines, `$()`, backticks, `"`, unicode) because
/// nothing is special inside single quotes.
///
/// A NUL byte cannot be passed through a shell at all; the builders refuse values containing
/// one ([`ScriptError::Nul`]) before quoting.
pub fn quote(s: &str) -> String {
    // Words made only of characters no shell treats specially stay bare, so recorded command
    // lines stay readable. `=` is not among them (a bare `a=b` first word is an assignment),
    // nor `~` (tilde expansion).
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:@%+,".contains(&b));
    if plain {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Why a script could not be built from the values given. These are checked before any
/// script text exists, so no half-built command is ever sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// A value contains a NUL byte, which a shell cannot carry.
    #[error("{what} contains a NUL byte, which cannot be passed to a remote shell")]
    Nul {
        /// Which value (never the value itself: it might be anything).
        what: String,
    },
    /// A path is unusable.
    #[error("path {path:?}: {reason}")]
    BadPath {
        /// The path.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A mode with bits outside 0o7777.
    #[error("path {path:?}: mode {mode:o} is not a permission mode (expected at most 0o7777)")]
    BadMode {
        /// The path.
        path: String,
        /// The mode given.
        mode: u32,
    },
    /// The same path twice in one atomic write.
    #[error("path {path:?} appears twice in one write; give each file once")]
    DuplicatePath {
        /// The path.
        path: String,
    },
    /// A field that must be a fingerprint is something else (perhaps a token).
    #[error("{what} must be a 12-digit lowercase hex fingerprint; refusing to write anything else")]
    NotAFingerprint {
        /// Which field.
        what: &'static str,
    },
    /// A line of remote output does not have the expected shape.
    #[error("unexpected remote output line {line}: expected PATH<TAB>HASH")]
    BadOutput {
        /// 1-based line number.
        line: usize,
    },
}

/// Refuses NUL in any value.
fn check_value(what: &str, value: &str) -> Result<(), ScriptError> {
    if value.contains('\0') {
        return Err(ScriptError::Nul {
            what: what.to_string(),
        });
    }
    Ok(())
}

/// Checks a remote path: not empty, no control characters (they would garble the
/// line-oriented output and error messages), not ending in `/`, `.` or `..`.
fn check_path(path: &str) -> Result<(), ScriptError> {
    check_value("path", path)?;
    let bad = |reason| {
        Err(ScriptError::BadPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("is empty");
    }
    if path.chars().any(char::is_control) {
        return bad("contains a control character (newline, tab, ...)");
    }
    if path.ends_with('/') {
        return bad("ends with '/'; give a file path");
    }
    let base = path.rsplit('/').next().unwrap_or(path);
    if base == "." || base == ".." {
        return bad("ends with '.' or '..'; give a file path");
    }
    Ok(())
}

/// The directory part of a checked path: `/a/b` -> `/a`, `/b` -> `/`, `b` -> `.`.
fn parent_of(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((dir, _)) => dir,
        None => ".",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_examples() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("abc"), "abc");
        assert_eq!(quote("/srv/mcp-tunnel"), "/srv/mcp-tunnel");
        assert_eq!(quote("a=b"), "'a=b'");
        assert_eq!(quote("~x"), "'~x'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("''"), "''\\'''\\'''");
        assert_eq!(quote("$(rm -rf /) `x` \"y\""), "'$(rm -rf /) `x` \"y\"'");
    }

    #[test]
    fn quote_round_trips_under_sh_and_bash() {
        let tricky = [
            "",
            " ",
            "'",
            "''",
            "a'b'c",
            "\"",
            "$(echo pwned)",
            "`echo pwned`",
            "${HOME}",
            "line1\nline2\n",
            "tab\there",
            "back\\slash\\",
            "ünïcødé ✓ 日本",
            "-n",
            "-e \\n",
            "*",
            "~",
            "a;b|c&d>e<f",
            "!!",
            "%s%d",
        ];
        for shell in ["sh", "bash"] {
            for s in tricky {
                let script = format!("printf '%s' {}", quote(s));
                let out = std::process::Command::new(shell)
                    .arg("-c")
                    .arg(&script)
                    .output()
                    .expect("run shell");
                assert!(out.status.success(), "{shell}: {script}");
                assert_eq!(String::from_utf8_lossy(&out.stdout), s, "{shell}: {script}");
            }
        }
    }

    #[test]
    fn paths() {
        assert!(check_path("/srv/x/.env").is_ok());
        assert!(check_path("rel/x").is_ok());
        for bad in ["", "/srv/x/", "/srv/.", "/srv/..", "a\nb", "a\0b", "a\tb"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parent_of("/a/b/c"), "/a/b");
        assert_eq!(parent_of("/c"), "/");
        assert_eq!(parent_of("c"), ".");
    }
}
