//! Releases, the operation: per host, the releases present, the current one, the previous
//! one (where `rollback` goes), and for each when and by whom it was deployed (from the
//! host's audit log), its images and its config hash. Read-only, every host at once. The
//! verb (`cli/releases.rs`) renders the hosts, alike ones once.

use std::sync::Arc;

use serde::Serialize;

use super::OpUi;
use super::deploy::{ConnectStep, HostInput, StackHost};
use super::upgrade::{ReleasesStep, previous_release};
use crate::rollout::{Engine, HostCtx, HostStatus, Phase, Strategy};
use crate::ssh::Connector;

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

/// Reads every host's releases (one connection and one round trip per host).
pub async fn run(
    inputs: Vec<HostInput>,
    connector: Arc<Connector>,
    ui: &dyn OpUi,
) -> Vec<HostReleases> {
    let (tunnels, names) = super::tunnels_and_hosts(&inputs);
    let progress = ui.progress("releases", &tunnels, &names);
    let ctxs: Vec<StackHost> = inputs
        .into_iter()
        .map(|i| StackHost::new(i, connector.clone(), "releases", true))
        .collect();
    let phase = Phase::new("releases")
        .strategy(Strategy::Parallel)
        .max_unavailable(usize::MAX)
        .step(Arc::new(ConnectStep))
        .step(Arc::new(ReleasesStep));
    let report = Engine::new(progress.as_ref()).run(vec![phase], ctxs).await;
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
    out
}
