//! Check, the operation: connect to every selected host at once and report what a deploy
//! needs (reachability, auth, host key, OS, Docker Compose, deploy dir, free disk, clock
//! skew). The verb (`cli/check.rs`) renders the [`CheckReport`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::fleet::FleetHost;
use super::{LiveProgress, OpError, OpUi};
use crate::remote::probe;
use crate::ssh::Connector;

/// Below this much free space in the deploy dir, a host is not ready for a deploy.
const MIN_FREE_BYTES: u64 = 200 * 1024 * 1024;
/// Beyond this clock skew, certificate validity and lock ages are unreliable.
const MAX_SKEW_MS: i64 = 60_000;

#[derive(Debug, Serialize, Default)]
/// The Docker Compose a host has.
pub struct Compose {
    /// `v2` (docker compose) or `v1` (docker-compose).
    pub kind: String,
    /// Its version.
    pub version: String,
}

#[derive(Debug, Serialize, Default)]
/// What `check` found on one host (serialised as is in `--json`).
pub struct HostCheck {
    /// The host.
    pub name: String,
    /// Ready for a deploy.
    pub ok: bool,
    /// What is wrong.
    pub error: Option<String>,
    /// The kind of error (an SSH error kind, `remote`, `not_ready`).
    pub error_kind: Option<String>,
    /// What to do.
    pub hint: Option<String>,
    /// The address connected to.
    pub address: String,
    /// The SSH port.
    pub port: u16,
    /// The SSH user.
    pub user: String,
    /// Jump hosts.
    pub via: Vec<String>,
    /// SSH connected.
    pub reachable: bool,
    /// How it authenticated.
    pub auth: Option<String>,
    /// The host key's fingerprint.
    pub host_key: Option<String>,
    /// How long connecting took.
    pub connect_ms: Option<u64>,
    /// The OS.
    pub os: Option<String>,
    /// The kernel.
    pub kernel: Option<String>,
    /// Docker Compose found.
    pub compose: Option<Compose>,
    /// The deploy dir.
    pub deploy_dir: String,
    /// It exists.
    pub deploy_dir_exists: Option<bool>,
    /// It is writable.
    pub deploy_dir_writable: Option<bool>,
    /// Free space under it.
    pub free_disk_bytes: Option<u64>,
    /// The host's clock minus the controller's.
    pub clock_skew_ms: Option<i64>,
    /// Every problem found.
    pub problems: Vec<String>,
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

async fn check_host(
    connector: &Connector,
    host: &FleetHost,
    progress: &dyn LiveProgress,
) -> HostCheck {
    let mut r = HostCheck {
        name: host.name.clone(),
        address: host.conn.address.clone(),
        port: host.conn.port,
        user: host.conn.user.clone(),
        deploy_dir: host.conn.deploy_dir.clone(),
        ..Default::default()
    };
    progress.working(&host.name, "connecting");
    let session = match connector.connect(&host.target).await {
        Ok(s) => s,
        Err(e) => {
            r.error = Some(e.message.clone());
            r.error_kind = Some(e.kind.as_str().to_string());
            r.hint = e.hint.clone();
            return r;
        }
    };
    r.reachable = true;
    r.auth = Some(session.auth.to_string());
    r.host_key = Some(session.host_key_fingerprint.clone());
    r.via = session.via.clone();
    r.connect_ms = Some(session.connected_in.as_millis() as u64);
    progress.working(&host.name, "probing compose, disk and clock");
    let sent = now_ns();
    let out = session
        .exec(&probe::check_script(&host.conn.deploy_dir), b"")
        .await;
    let received = now_ns();
    session.close().await;
    let out = match out {
        Ok(o) if o.success() => o,
        Ok(o) => {
            r.error = Some(format!(
                "probe failed (exit {:?}): {}",
                o.status,
                o.stderr_text()
            ));
            r.error_kind = Some("remote".into());
            if host.conn.become_ {
                r.hint =
                    Some("become is set: does the user have passwordless sudo (sudo -n)?".into());
            }
            return r;
        }
        Err(e) => {
            r.error = Some(e.message.clone());
            r.error_kind = Some(e.kind.as_str().to_string());
            r.hint = e.hint.clone();
            return r;
        }
    };
    let f = probe::parse_facts(&out.stdout_text());
    r.os = f.get("os").cloned();
    r.kernel = f.get("kernel").cloned();
    match f.get("compose").map(String::as_str) {
        Some("none") | None => r.problems.push(
            "no Docker Compose: neither `docker compose` (v2) nor `docker-compose` (v1)".into(),
        ),
        Some(c) => {
            let (kind, version) = c.split_once(' ').unwrap_or((c, ""));
            r.compose = Some(Compose {
                kind: kind.to_string(),
                version: version.to_string(),
            });
        }
    }
    r.deploy_dir_exists = f.get("dir_exists").map(|v| v == "yes");
    let writable = f.get("writable").map(|v| v == "yes");
    r.deploy_dir_writable = writable;
    if writable != Some(true) {
        r.problems.push(format!(
            "deploy dir {} is not writable (probed {})",
            host.conn.deploy_dir,
            f.get("dir_probe").map(String::as_str).unwrap_or("?")
        ));
    }
    r.free_disk_bytes = f
        .get("free_kb")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024);
    if let Some(free) = r.free_disk_bytes
        && free < MIN_FREE_BYTES
    {
        r.problems.push(format!(
            "only {} MiB free under {}",
            free / (1024 * 1024),
            host.conn.deploy_dir
        ));
    }
    // NTP's offset estimate: the mean of (host clock at start - send time) and (host clock at
    // end - receive time), so the probe's own run time cancels out.
    let t = |k: &str| f.get(k).and_then(|v| v.parse::<i128>().ok());
    if let (Some(start), Some(end)) = (t("time_ns"), t("time_end_ns")) {
        let skew = (((start - sent) + (end - received)) / 2 / 1_000_000) as i64;
        r.clock_skew_ms = Some(skew);
        if skew.abs() > MAX_SKEW_MS {
            r.problems.push(format!(
                "clock is {:.1}s off the controller's (certificates and locks depend on time; \
                 check NTP)",
                skew as f64 / 1000.0
            ));
        }
    }
    if !r.problems.is_empty() {
        r.error = Some(r.problems.join("; "));
        r.error_kind = Some("not_ready".into());
    }
    r.ok = r.problems.is_empty();
    r
}

/// One line for the progress display: the error, or connect time, OS and Compose.
pub fn summary_line(r: &HostCheck) -> String {
    if let Some(e) = &r.error {
        return e.clone();
    }
    let compose = r
        .compose
        .as_ref()
        .map(|c| format!("compose {} {}", c.kind, c.version))
        .unwrap_or_default();
    format!(
        "{} ms, {}, {}",
        r.connect_ms.unwrap_or(0),
        r.os.as_deref().unwrap_or("?"),
        compose
    )
}

/// What `check` found.
#[derive(Debug)]
pub struct CheckReport {
    /// Every host, in inventory order.
    pub hosts: Vec<HostCheck>,
    /// Hosts ready for a deploy.
    pub ok: usize,
    /// Hosts that are not.
    pub failed: usize,
}

/// Runs `check` on every host at once (one task per host).
pub async fn run(
    hosts: Vec<FleetHost>,
    connector: Arc<Connector>,
    ui: &dyn OpUi,
) -> Result<CheckReport, OpError> {
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let progress: Arc<dyn LiveProgress> = Arc::from(ui.progress("check", &[], &names));
    let mut set = tokio::task::JoinSet::new();
    for (i, host) in hosts.into_iter().enumerate() {
        let (c, p) = (connector.clone(), progress.clone());
        set.spawn(async move {
            let r = check_host(&c, &host, p.as_ref()).await;
            p.done(&r.name, r.ok, &summary_line(&r));
            (i, r)
        });
    }
    let mut results: Vec<(usize, HostCheck)> = Vec::new();
    while let Some(j) = set.join_next().await {
        match j {
            Ok(x) => results.push(x),
            Err(e) => {
                return Err(OpError::input(format!(
                    "internal error: a host task failed: {e}"
                )));
            }
        }
    }
    progress.finish();
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<HostCheck> = results.into_iter().map(|(_, r)| r).collect();
    let ok = results.iter().filter(|r| r.ok).count();
    let failed = results.len() - ok;
    Ok(CheckReport {
        hosts: results,
        ok,
        failed,
    })
}
