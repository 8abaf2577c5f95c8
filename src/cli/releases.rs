//! `tunnelfleet releases`: per host, the releases present, the current one, and for each when
//! and by whom it was deployed (from the host's audit log), its images and its config hash.
//! Hosts with the same history are shown once.

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use super::common::{ConnArgs, StateArgs};
use super::deploy::{contexts, load_inputs};
use super::progress::table;
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK};
use crate::ops::deploy::ConnectStep;
use crate::ops::upgrade::{ReleasesStep, previous_release};
use crate::rollout::{Engine, HostCtx, HostStatus, Phase, Strategy};

/// Flags of `releases`.
#[derive(Args, Debug)]
pub struct ReleasesArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    state: StateArgs,
    /// Print one JSON document on stdout instead of the tables.
    #[arg(long)]
    json: bool,
}

/// One release on one host.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct ReleaseRow {
    /// Release id.
    pub id: String,
    /// `current`, `previous` (where `rollback` goes), or empty.
    pub role: String,
    /// All files and links present (a rollback target must be).
    pub complete: bool,
    /// When it was first deployed (audit log), else the directory's time.
    pub deployed: Option<String>,
    /// By whom (audit log).
    pub by: Option<String>,
    /// The operation that deployed it.
    pub operation: Option<String>,
    /// Images its compose file names.
    pub images: Vec<String>,
    /// First 12 hex of the proxy config's sha256.
    pub config_sha: Option<String>,
}

/// One host's releases.
#[derive(Debug, Serialize)]
pub struct HostReleases {
    /// The host.
    pub name: String,
    /// Whether it could be read.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The current release.
    pub current: Option<String>,
    /// Newest first.
    pub releases: Vec<ReleaseRow>,
}

fn short_image(i: &str) -> String {
    let name = i.rsplit('/').next().unwrap_or(i);
    match name.split_once("@sha256:") {
        Some((n, d)) => format!("{n}@{}", &d[..d.len().min(12)]),
        None => name.to_string(),
    }
}

/// Runs `releases`.
pub async fn run(args: ReleasesArgs) -> Result<i32, CliError> {
    let (_inv, hosts) = args.conn.select().await?;
    let (_tunnels, inputs) = load_inputs(hosts, None, &args.state.state_dir, false).await?;
    let (progress, ctxs) = contexts(&args.conn, inputs, "releases", true)?;
    let phase = Phase::new("releases")
        .strategy(Strategy::Parallel)
        .max_unavailable(usize::MAX)
        .step(Arc::new(ConnectStep))
        .step(Arc::new(ReleasesStep));
    let report = Engine::new(&progress).run(vec![phase], ctxs).await;
    progress.finish();
    let mut out = Vec::new();
    for h in &report.contexts {
        let rec = report.host(h.name());
        let ok = rec.is_some_and(|r| r.status == HostStatus::Ok);
        let Some(rf) = h.upgrade.releases.as_ref().filter(|_| ok) else {
            out.push(HostReleases {
                name: h.name().to_string(),
                ok: false,
                error: rec.and_then(|r| r.message.clone()),
                current: None,
                releases: vec![],
            });
            continue;
        };
        let previous = previous_release(h.name(), rf, None);
        let audit: Vec<serde_json::Value> = rf
            .audit
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let releases = rf
            .releases
            .iter()
            .map(|r| {
                let first = audit.iter().find(|a| {
                    a["release"].as_str() == Some(r.id.as_str())
                        && a["outcome"].as_str() == Some("succeeded")
                });
                ReleaseRow {
                    id: r.id.clone(),
                    role: if Some(&r.id) == rf.current.as_ref() {
                        "current".into()
                    } else if Some(&r.id) == previous.as_ref() {
                        "previous".into()
                    } else {
                        String::new()
                    },
                    complete: r.complete,
                    deployed: first
                        .and_then(|a| a["time"].as_str().map(str::to_string))
                        .or_else(|| {
                            chrono::DateTime::from_timestamp(r.mtime, 0)
                                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        }),
                    by: first.and_then(|a| a["operator"].as_str().map(str::to_string)),
                    operation: first.and_then(|a| a["operation"].as_str().map(str::to_string)),
                    images: r.images.clone(),
                    config_sha: r.config_sha.clone(),
                }
            })
            .collect();
        out.push(HostReleases {
            name: h.name().to_string(),
            ok: true,
            error: None,
            current: rf.current.clone(),
            releases,
        });
    }
    let all_ok = out.iter().all(|h| h.ok);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "hosts": out })).unwrap_or_default()
        );
    } else {
        // Hosts with the same releases (same ids, roles, times) are shown once.
        let mut groups: BTreeMap<String, (Vec<&str>, &HostReleases)> = BTreeMap::new();
        let mut order = Vec::new();
        for h in out.iter().filter(|h| h.ok) {
            let key = serde_json::to_string(&h.releases).unwrap_or_default();
            if !groups.contains_key(&key) {
                order.push(key.clone());
            }
            groups.entry(key).or_insert((Vec::new(), h)).0.push(&h.name);
        }
        for key in order {
            let (names, h) = &groups[&key];
            println!("{}:", names.join(", "));
            let rows: Vec<Vec<String>> = h
                .releases
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        if r.complete {
                            r.role.clone()
                        } else {
                            format!("{} (incomplete)", r.role).trim().to_string()
                        },
                        r.deployed.clone().unwrap_or_else(|| "-".into()),
                        r.by.clone().unwrap_or_else(|| "-".into()),
                        r.images
                            .iter()
                            .map(|i| short_image(i))
                            .collect::<Vec<_>>()
                            .join(", "),
                        r.config_sha.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            let text = table(
                &["RELEASE", "ROLE", "DEPLOYED", "BY", "IMAGES", "CONFIG"],
                &rows,
            );
            for l in text.lines() {
                println!("  {l}");
            }
        }
        for h in out.iter().filter(|h| !h.ok) {
            println!(
                "{}: FAILED: {}",
                h.name,
                h.error.as_deref().unwrap_or("unreachable")
            );
        }
    }
    Ok(if all_ok { EXIT_OK } else { EXIT_HOST_FAILED })
}
