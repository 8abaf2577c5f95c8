//! The controller's own audit log: one JSON line per operation in the state directory
//! (who, what, when, on which hosts, token fingerprints and certificate serials; never a
//! secret: callers pass identifiers only); and the reading side of `audit`: the controller's
//! log and every host's, as text ([`read_logs`]; the verb parses, merges and renders them).

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

impl<'a> ControllerAudit<'a> {
    /// The record of OPERATION on TUNNELS ending now, by this operator: each host of OUTCOMES
    /// (name, succeeded) in `ok` or `failed`; no token or certificate named.
    pub fn ended<'r>(
        operation: &'a str,
        tunnels: Vec<String>,
        outcomes: impl IntoIterator<Item = (&'r str, bool)>,
    ) -> Self {
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for (name, succeeded) in outcomes {
            if succeeded {
                ok.push(name.to_string());
            } else {
                failed.push(name.to_string());
            }
        }
        ControllerAudit {
            time: crate::ops::deploy::now_rfc3339(),
            operator: crate::ops::deploy::operator(),
            operation,
            tunnels,
            ok,
            failed,
            token_fingerprint: None,
            cert_serial: None,
        }
    }
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

/// The operator's name on the controller: `$SUDO_USER` (the person behind `sudo`), else
/// `$USER`, else `$LOGNAME`, else the name of the process's uid in the user database, else
/// `uid N`. Never "unknown".
pub fn operator() -> String {
    operator_from(
        |k| std::env::var(k).ok(),
        // SAFETY: getuid has no preconditions and cannot fail.
        unsafe { libc::getuid() },
        user_name,
    )
}

/// [`operator`] from an environment lookup, a uid and a uid-to-name lookup (for tests).
pub fn operator_from(
    env: impl Fn(&str) -> Option<String>,
    uid: u32,
    name_of: impl FnOnce(u32) -> Option<String>,
) -> String {
    for var in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Some(v) = env(var).map(|v| v.trim().to_string())
            && !v.is_empty()
            && !(var == "SUDO_USER" && v == "root" && uid != 0)
        {
            return v;
        }
    }
    name_of(uid).unwrap_or_else(|| format!("uid {uid}"))
}

/// The user name of `uid` from the user database (getpwuid_r), if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill in.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf outlives every use of pwd's
        // fields, which point into it.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name is a NUL-terminated string inside buf.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        let name = name.to_string_lossy().into_owned();
        return (!name.is_empty()).then_some(name);
    }
}

/// The raw audit logs of a run of `audit`: the controller's and each selected host's.
#[derive(Debug)]
pub struct AuditLogs {
    /// The controller's log file.
    pub controller_path: std::path::PathBuf,
    /// Its text (`Ok(None)`: no log yet), or why it could not be read.
    pub controller: Result<Option<String>, String>,
    /// Per host, in the order given: its log's text (empty when it has none), or why it
    /// could not be read.
    pub hosts: Vec<(String, Result<String, String>)>,
}

/// Reads the controller's audit log and every host's (`<deploy_dir>/.tunnelfleet/audit.log`,
/// one `cat` per host, every host at once). Read-only.
pub async fn read_logs(
    state_dir: &Path,
    hosts: &[super::fleet::FleetHost],
    connector: std::sync::Arc<crate::ssh::Connector>,
    ui: &dyn super::OpUi,
) -> AuditLogs {
    let controller_path = state_dir.join("audit.log");
    let controller = match std::fs::read_to_string(&controller_path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", controller_path.display())),
    };
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let progress = ui.progress("audit", &[], &names);
    let p = progress.as_ref();
    let futs = hosts.iter().map(|h| {
        let c = connector.clone();
        async move {
            p.working(&h.name, "reading the audit log");
            // The audit log depends on the deploy dir only, not on the tunnel.
            let log = crate::stack::Layout::of_dir(&h.conn.deploy_dir).audit_log();
            let script = format!("cat -- {} 2>/dev/null || true", crate::remote::quote(&log));
            let r = match c.connect(&h.target).await {
                Ok(s) => {
                    let r = match s.exec(&script, b"").await {
                        Ok(o) if o.success() => Ok(o.stdout_text()),
                        Ok(o) => Err(format!("read {log}: {}", o.stderr_text().trim())),
                        Err(e) => Err(e.to_string()),
                    };
                    s.close().await;
                    r
                }
                Err(e) => Err(e.to_string()),
            };
            p.done(&h.name, r.is_ok(), "");
            (h.name.clone(), r)
        }
    });
    let results = futures::future::join_all(futs).await;
    progress.finish();
    AuditLogs {
        controller_path,
        controller,
        hosts: results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn sudo_user_then_user_then_logname_then_the_uid() {
        let none = |_| None;
        assert_eq!(
            operator_from(env(&[("SUDO_USER", "ada"), ("USER", "root")]), 0, none),
            "ada"
        );
        assert_eq!(operator_from(env(&[("USER", "bob")]), 1000, none), "bob");
        assert_eq!(
            operator_from(env(&[("USER", ""), ("LOGNAME", "cy")]), 1000, none),
            "cy"
        );
        assert_eq!(
            operator_from(env(&[]), 1000, |u| Some(format!("user{u}"))),
            "user1000"
        );
        assert_eq!(operator_from(env(&[]), 4242, |_| None), "uid 4242");
    }

    #[test]
    fn the_user_database_names_this_process() {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let name = user_name(uid);
        let want = std::process::Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        assert_eq!(name, want);
        assert_eq!(
            operator_from(|_| None, uid, user_name),
            name.unwrap_or_default()
        );
    }
}
