//! Unlock, the operation: remove the fleet lock on hosts whose holder is dead (a controller
//! killed mid-operation). A holder that may still be running is left alone unless `force`:
//! one on this controller whose pid is alive, or one elsewhere younger than the command
//! deadline. Says what it removed, and what it left and why; the verb (`cli/unlock.rs`)
//! renders that. [`Holder`] is also how `status` describes a held lock.

use std::sync::Arc;
use std::time::Duration;

use super::fleet::FleetHost;
use crate::remote::{HOLDER_FILE, RemoteExit, quote, unlock};
use crate::ssh::Connector;
use crate::stack::Layout;

/// A lock holder record, as far as it could be read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holder {
    /// The operation (deploy, rotate-token, ...).
    pub operation: Option<String>,
    /// Who ran it.
    pub operator: Option<String>,
    /// The controller's hostname.
    pub controller: Option<String>,
    /// The controller process.
    pub pid: Option<u32>,
    /// When the lock was taken (RFC 3339).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

impl Holder {
    /// Parses the holder file's text; anything unreadable is left `None`.
    pub fn parse(text: &str) -> Holder {
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
        let s = |k: &str| v[k].as_str().map(str::to_string);
        Holder {
            operation: s("operation"),
            operator: s("operator"),
            controller: s("controller"),
            pid: v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
            since: v["since"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
        }
    }

    /// One line: operation, operator@controller, pid, age.
    pub fn describe(&self, now: chrono::DateTime<chrono::Utc>) -> String {
        let q = |o: &Option<String>| o.clone().unwrap_or_else(|| "?".into());
        let age = match self.since {
            Some(t) => format!("{} ago", human_age(now.signed_duration_since(t))),
            None => "age unknown".into(),
        };
        let pid = self
            .pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "?".into());
        format!(
            "{} by {}@{} (pid {pid}, {age})",
            q(&self.operation),
            q(&self.operator),
            q(&self.controller)
        )
    }
}

fn human_age(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds();
    match s {
        s if s < 0 => "in the future (clock skew)".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Whether a lock's holder may still be running, and why: `Some(reason)` when it may.
///
/// On this controller (same hostname) the holder's pid decides; elsewhere, only its age can:
/// a holder younger than `deadline` may still be working. A holder that cannot be read is
/// treated as alive (nothing says it is dead).
pub fn holder_alive(
    h: &Holder,
    this_controller: &str,
    now: chrono::DateTime<chrono::Utc>,
    deadline: Duration,
    pid_alive: impl Fn(u32) -> bool,
) -> Option<String> {
    match (&h.controller, h.pid, h.since) {
        (Some(c), Some(pid), _) if c == this_controller => {
            pid_alive(pid).then(|| format!("its process {pid} is alive on this controller"))
        }
        (Some(_), _, Some(since)) => {
            let age = now.signed_duration_since(since);
            let limit = chrono::TimeDelta::from_std(deadline).unwrap_or(chrono::TimeDelta::MAX);
            (age < limit).then(|| {
                format!(
                    "it was taken {} ago on another controller, within the command deadline ({})",
                    human_age(age),
                    human_age(limit)
                )
            })
        }
        _ => Some("its holder record cannot be read".into()),
    }
}

/// True when process `pid` exists on this machine (signal 0: existence check only).
fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if p <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(p, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// What happened on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockOutcome {
    /// The host had no fleet lock.
    NotLocked,
    /// The lock was removed; its holder, described.
    Removed(String),
    /// The lock was left: its holder, described, and why.
    Kept {
        /// The holder.
        holder: String,
        /// Why it was left.
        why: String,
    },
    /// The host could not be read or the lock not removed.
    Failed(String),
}

/// How to unlock.
#[derive(Debug, Clone, Copy)]
pub struct UnlockOptions {
    /// Remove the lock even when its holder may still be running.
    pub force: bool,
    /// The command deadline: a holder on another controller younger than this may still run.
    pub deadline: Duration,
}

/// Runs unlock on every host at once; per host, in the order given, what happened.
pub async fn run(
    hosts: &[FleetHost],
    connector: Arc<Connector>,
    opts: UnlockOptions,
) -> Vec<(String, UnlockOutcome)> {
    let UnlockOptions { force, deadline } = opts;
    let me = crate::ops::deploy::controller_name();
    let futs = hosts.iter().map(|h| {
        let c = connector.clone();
        let me = me.clone();
        async move {
            let lock = Layout::of_dir(&h.conn.deploy_dir).lock_dir();
            let holder_file = quote(&format!("{lock}/{HOLDER_FILE}"));
            let outcome = async {
                let s = c.connect(&h.target).await.map_err(|e| e.to_string())?;
                let read = format!(
                    "if [ -d {} ]; then echo locked; cat {holder_file} 2>/dev/null; else echo free; fi",
                    quote(&lock)
                );
                let out = s.exec(&read, b"").await.map_err(|e| e.to_string())?;
                if !out.success() {
                    return Err(out.stderr_text());
                }
                let text = out.stdout_text();
                let Some(rest) = text.strip_prefix("locked\n").or(text.strip_prefix("locked"))
                else {
                    return Ok(UnlockOutcome::NotLocked);
                };
                let now = chrono::Utc::now();
                let holder = Holder::parse(rest);
                let shown = holder.describe(now);
                if !force
                    && let Some(why) = holder_alive(&holder, &me, now, deadline, pid_alive)
                {
                    return Ok(UnlockOutcome::Kept {
                        holder: shown,
                        why,
                    });
                }
                // Remove only the lock we looked at: if another run took it meanwhile, the
                // holder differs and the script leaves it.
                let script = unlock(&lock, rest.trim_end_matches('\n')).map_err(|e| e.to_string())?;
                let out = s.exec(&script, b"").await.map_err(|e| e.to_string())?;
                match out.status {
                    Some(0) => Ok(UnlockOutcome::Removed(shown)),
                    s if RemoteExit::from_status(s) == Some(RemoteExit::LockHeld) => Ok(UnlockOutcome::Kept {
                        holder: Holder::parse(&out.stdout_text()).describe(now),
                        why: "another run took the lock while unlock looked".into(),
                    }),
                    _ => Err(out.stderr_text()),
                }
            }
            .await;
            (h.name.clone(), outcome.unwrap_or_else(UnlockOutcome::Failed))
        }
    });
    futures::future::join_all(futs).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&chrono::Utc)
    }

    #[test]
    fn a_holder_is_alive_by_pid_here_and_by_age_elsewhere() {
        let now = at("2026-01-01T12:00:00Z");
        let dl = Duration::from_secs(120);
        let h = Holder::parse(
            r#"{"operation":"rotate-token","operator":"ann","controller":"ctl","pid":42,"since":"2026-01-01T11:00:00Z"}"#,
        );
        assert_eq!(h.pid, Some(42));
        // This controller: the pid decides, whatever the age.
        assert!(holder_alive(&h, "ctl", now, dl, |p| p == 42).is_some());
        assert!(holder_alive(&h, "ctl", now, dl, |_| false).is_none());
        // Elsewhere: an hour old is past the deadline; a minute old is not.
        assert!(holder_alive(&h, "other", now, dl, |_| true).is_none());
        let young = Holder {
            since: Some(at("2026-01-01T11:59:00Z")),
            ..h.clone()
        };
        let why = holder_alive(&young, "other", now, dl, |_| false).expect("alive");
        assert!(why.contains("60s ago"), "{why}");
        // Unreadable: not known dead.
        assert!(holder_alive(&Holder::parse("garbage"), "ctl", now, dl, |_| false).is_some());
        assert_eq!(h.describe(now), "rotate-token by ann@ctl (pid 42, 60m ago)");
    }

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(pid_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        assert!(!pid_alive(pid));
        assert!(!pid_alive(0));
    }
}
