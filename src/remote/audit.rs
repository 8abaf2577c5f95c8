//! The audit log on each host: one JSON line per operation, no secrets by construction.

use super::{ScriptError, check_path, parent_of, quote};

/// How an audited operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// The operation started on this host.
    Started,
    /// It completed.
    Succeeded,
    /// It failed.
    Failed,
    /// It failed and the host was rolled back.
    RolledBack,
}

/// One audit record. Fields are identifiers, never secrets: a token appears only as its
/// fingerprint (checked to be 12 hex digits), a certificate only as its serial.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// When, RFC 3339 UTC.
    pub time: String,
    /// Who ran it (operator user name on the controller).
    pub operator: String,
    /// The verb (`deploy`, `rotate`, `renew`, ...).
    pub operation: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Release id deployed or switched to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The release the host ran before (a release change), so `rollback` knows where to go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_release: Option<String>,
    /// Fingerprint of the tunnel token now in use, if the operation touched it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_fingerprint: Option<String>,
    /// Serial of the server certificate now in use, if the operation touched it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_serial: Option<String>,
}

/// Builds a script appending `entry` as one JSON line to the audit log at `path` (created
/// 0640 with its directory if missing). Exit 1 with `audit PATH: CAUSE` on stderr on failure.
pub fn audit_line(path: &str, entry: &AuditEntry) -> Result<String, ScriptError> {
    check_path(path)?;
    if let Some(fp) = &entry.token_fingerprint
        && !(fp.len() == crate::secrets::FINGERPRINT_HEX_LEN
            && fp
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        return Err(ScriptError::NotAFingerprint {
            what: "audit token_fingerprint",
        });
    }
    // serde_json escapes control characters, so the record is exactly one line; it cannot
    // contain NUL. Serialising this struct cannot fail (strings and an enum only).
    let line = serde_json::to_string(entry).unwrap_or_else(|_| String::from("{}"));
    let p = quote(path);
    let d = quote(parent_of(path));
    let l = quote(&line);
    Ok(format!(
        r#"# tunnelfleet: audit line
umask 027
tf_e=$(mkdir -p -- {d} 2>&1) || {{ printf 'audit %s: cannot create directory: %s\n' {p} "${{tf_e##*: }}" >&2; exit 1; }}
tf_e=$( {{ printf '%s\n' {l} >> {p}; }} 2>&1 ) || {{ printf 'audit %s: %s\n' {p} "${{tf_e##*: }}" >&2; exit 1; }}
exit 0
"#
    ))
}
