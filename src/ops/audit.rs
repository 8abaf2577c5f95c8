//! The controller's own audit log: one JSON line per operation in the state directory
//! (who, what, when, on which hosts, token fingerprints and certificate serials; never a
//! secret: callers pass identifiers only).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::Serialize;

/// One operation as the controller records it.
#[derive(Debug, Serialize)]
pub struct ControllerAudit<'a> {
    /// When it ended (RFC 3339 UTC).
    pub time: String,
    /// Who ran it.
    pub operator: String,
    /// The verb.
    pub operation: &'a str,
    /// The tunnels it concerned.
    pub tunnels: Vec<String>,
    /// Hosts that succeeded.
    pub ok: Vec<String>,
    /// Hosts that failed or were skipped.
    pub failed: Vec<String>,
    /// Fingerprint of the token involved, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_fingerprint: Option<String>,
    /// Serial of the certificate involved, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_serial: Option<String>,
}

/// Appends `entry` to `<state_dir>/audit.log` (created 0600). Failure to write is reported
/// on stderr, never fatal: the operation itself already happened.
pub fn append(state_dir: &Path, entry: &ControllerAudit<'_>) {
    let path = state_dir.join("audit.log");
    let line = match serde_json::to_string(entry) {
        Ok(l) => l,
        Err(_) => return,
    };
    let r = std::fs::create_dir_all(state_dir).and_then(|_| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = r {
        eprintln!("tunnelfleet: audit log {}: {e}", path.display());
    }
}
