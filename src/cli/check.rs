//! `tunnelfleet check`: connect to every selected host at once and report what a deploy needs.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use serde::Serialize;

use super::common::{ConnArgs, SelectedHost};
use super::progress::Progress;
use super::render::Table;
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK, style};
use crate::remote::probe;
use crate::ssh::Connector;

/// Flags of `check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Print one JSON document on stdout instead of the recap table.
    #[arg(long)]
    json: bool,
}

/// Below this much free space in the deploy dir, a host is not ready for a deploy.
const MIN_FREE_BYTES: u64 = 200 * 1024 * 1024;
/// Beyond this clock skew, certificate validity and lock ages are unreliable.
const MAX_SKEW_MS: i64 = 60_000;

#[derive(Debug, Serialize, Default)]
struct Compose {
    kind: String,
    version: String,
}

#[derive(Debug, Serialize, Default)]
struct HostCheck {
    name: String,
    ok: bool,
    error: Option<String>,
    error_kind: Option<String>,
    hint: Option<String>,
    address: String,
    port: u16,
    user: String,
    via: Vec<String>,
    reachable: bool,
    auth: Option<String>,
    host_key: Option<String>,
    connect_ms: Option<u64>,
    os: Option<String>,
    kernel: Option<String>,
    compose: Option<Compose>,
    deploy_dir: String,
    deploy_dir_exists: Option<bool>,
    deploy_dir_writable: Option<bool>,
    free_disk_bytes: Option<u64>,
    clock_skew_ms: Option<i64>,
    problems: Vec<String>,
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

async fn check_host(connector: &Connector, host: &SelectedHost, progress: &Progress) -> HostCheck {
    let mut r = HostCheck {
        name: host.name.clone(),
        address: host.conn.address.clone(),
        port: host.conn.port,
        user: host.conn.user.clone(),
        deploy_dir: host.conn.deploy_dir.clone(),
        ..Default::default()
    };
    progress.step(&host.name, "connecting");
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
    progress.step(&host.name, "probing compose, disk and clock");
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

fn summary_line(r: &HostCheck) -> String {
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

/// Runs `check`.
pub async fn run(args: CheckArgs) -> Result<i32, CliError> {
    let (_inv, hosts) = args.conn.select().await?;
    let connector = args.conn.connector()?;
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let progress = Arc::new(Progress::new("check", &names));
    let mut set = tokio::task::JoinSet::new();
    for (i, host) in hosts.into_iter().enumerate() {
        let (c, p) = (connector.clone(), progress.clone());
        set.spawn(async move {
            let r = check_host(&c, &host, &p).await;
            p.done(&r.name, r.ok, &summary_line(&r));
            (i, r)
        });
    }
    let mut results: Vec<(usize, HostCheck)> = Vec::new();
    while let Some(j) = set.join_next().await {
        match j {
            Ok(x) => results.push(x),
            Err(e) => {
                return Err(CliError::input(format!(
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
    if args.json {
        let doc = serde_json::json!({
            "hosts": results,
            "summary": {"ok": ok, "failed": failed},
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        let mut t = Table::new(&[
            "HOST", "STATUS", "AUTH", "COMPOSE", "FREE", "SKEW", "HOST KEY", "DETAIL",
        ])
        .painted("STATUS")
        .shrinkable("HOST KEY", 16)
        .drop_order(&["HOST KEY", "SKEW"]);
        for r in &results {
            t.row(vec![
                r.name.clone(),
                if r.ok { "ok".into() } else { "FAILED".into() },
                r.auth.clone().unwrap_or_else(|| "-".into()),
                r.compose
                    .as_ref()
                    .map(|c| format!("{} {}", c.kind, c.version))
                    .unwrap_or_else(|| "-".into()),
                r.free_disk_bytes
                    .map(|b| format!("{} MiB", b / (1024 * 1024)))
                    .unwrap_or_else(|| "-".into()),
                r.clock_skew_ms
                    .map(|s| format!("{s} ms"))
                    .unwrap_or_else(|| "-".into()),
                r.host_key.clone().unwrap_or_else(|| "-".into()),
                match (&r.error, &r.hint) {
                    (Some(e), Some(h)) => format!("{e} (hint: {h})"),
                    (Some(e), None) => e.clone(),
                    _ => r.os.clone().unwrap_or_default(),
                },
            ]);
        }
        print!("{}", t.render(style::width()));
        println!("{ok} ok, {failed} failed");
    }
    Ok(if failed == 0 {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}
