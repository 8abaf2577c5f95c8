//! `tunnelfleet status`: what each host runs, and how it differs from what deploy would write.
//! Read-only: one facts round trip and the readiness probes per host.

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use super::common::{ConnArgs, StateArgs};
use super::deploy::{TokenArgs, load_inputs};
use super::progress::Progress;
use super::render::{Table, relative_unix};
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK, style};
use crate::ops::deploy::{HostInput, desired_state, read_facts};
use crate::ops::health;
use crate::pki::cert_info;
use crate::ssh::Connector;
use crate::stack::{self, ContainerState};

/// Flags of `status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    token: TokenArgs,
    #[command(flatten)]
    state: StateArgs,
    /// Print one JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize, Default)]
struct HostStatus {
    name: String,
    ok: bool,
    error: Option<String>,
    tunnel: String,
    release: Option<String>,
    desired_release: String,
    drift: Vec<String>,
    token_fingerprint: Option<String>,
    token_matches_fleet: Option<bool>,
    connector_token_fingerprint: Option<String>,
    cert_serial: Option<String>,
    cert_not_after: Option<String>,
    containers: BTreeMap<String, String>,
    /// Containers not running: state, restart count, last log line (redacted).
    down: Vec<String>,
    /// A deploy not done yet: the host runs the last deployed release, the inventory or
    /// templates now render another.
    pending: Option<String>,
    /// The fleet lock on the host, when held: holder and age.
    lock: Option<String>,
    /// Operations of this controller that did not finish, with the command that finishes them.
    unfinished: Vec<String>,
    connectors: Vec<health::ConnectorReady>,
    connector_ready: bool,
}

async fn status_host(c: &Connector, input: &HostInput) -> HostStatus {
    let mut s = HostStatus {
        name: input.host.name.clone(),
        tunnel: input.settings.tunnel_name.clone(),
        desired_release: input.release.id.clone(),
        ..Default::default()
    };
    let session = match c.connect(&input.host.target).await {
        Ok(x) => x,
        Err(e) => {
            s.error = Some(e.to_string());
            return s;
        }
    };
    // The facts command and the readiness probes (direct-tcpip) in the same round trip.
    let (facts, connectors) = tokio::join!(
        read_facts(&session, input),
        health::connectors(&session, input.settings.metrics_ports())
    );
    s.connectors = connectors;
    s.connector_ready = s.connectors.iter().any(|c| c.is_ready());
    let facts = match facts {
        Ok(f) => f,
        Err(e) => {
            s.error = Some(e);
            return s;
        }
    };
    s.release = facts.facts.current_release.clone();
    s.token_fingerprint = facts.env_token_fp.clone();
    s.connector_token_fingerprint = facts.facts.connector_token_fingerprint.clone();
    if let Some(info) = facts.tls_crt.as_deref().and_then(|p| cert_info(p).ok()) {
        s.cert_serial = Some(info.serial);
        s.cert_not_after = Some(info.not_after);
    }
    for (svc, (name, st)) in &facts.containers {
        let diag = facts.diagnostics.get(name);
        let st = match (st, diag) {
            (ContainerState::Running, _) => "running".to_string(),
            // Docker's own word: restarting, exited, created, dead.
            (_, Some(d)) => d.state.clone(),
            (ContainerState::Exited, None) => "exited".to_string(),
            (ContainerState::Missing, None) => "missing".to_string(),
        };
        s.containers.insert(svc.clone(), format!("{st} ({name})"));
        if let Some(d) = diag {
            let restarts = d
                .restarts
                .map(|r| format!("{r} restarts"))
                .unwrap_or_else(|| "restarts unknown".into());
            let secrets: Vec<&crate::secrets::Secret> = input.token.iter().collect();
            let log =
                crate::secrets::redact_token_shaped(&crate::secrets::redact(&d.last_log, &secrets));
            s.down
                .push(format!("{svc} {}, {restarts}, last log: {log}", d.state));
        }
    }
    if let Some(h) = &facts.lock_holder {
        s.lock = Some(super::unlock::Holder::parse(h).describe(chrono::Utc::now()));
    }
    match desired_state(input, &facts) {
        Ok(d) => {
            let plan = stack::compute_plan(&d, &facts.facts);
            let current = facts.facts.current_release.as_deref();
            if plan.switch_current && current.is_some() && current == facts.last_deployed.as_deref()
            {
                // The host runs what the last deploy installed; the inventory or templates
                // changed since. That is a deploy to do, not drift: drift is what differs
                // beyond it (files as if the new release were installed).
                s.pending = Some(format!(
                    "release {} -> {} not deployed yet (the inventory or templates changed since \
                     the last deploy): run `tunnelfleet deploy`",
                    current.unwrap_or("-"),
                    d.release_id
                ));
                let mut as_if = facts.facts.clone();
                as_if.current_release = Some(d.release_id.clone());
                as_if.files = d
                    .files
                    .iter()
                    .map(|(p, h)| (p.clone(), Some(h.clone())))
                    .collect();
                let rest = stack::compute_plan(&d, &as_if);
                if !rest.is_empty() {
                    s.drift = rest.describe();
                }
            } else if !plan.is_empty() {
                s.drift = plan.describe();
            }
        }
        Err(e) => s.drift.push(e),
    }
    session.close().await;
    s
}

/// Runs `status`.
pub async fn run(args: StatusArgs) -> Result<i32, CliError> {
    let (_inv, hosts) = args.conn.select().await?;
    let (tunnels, inputs) = load_inputs(
        hosts,
        args.token.flag_or_env(),
        &args.state.state_dir,
        false,
    )
    .await?;
    let connector = args.conn.connector()?;
    let names: Vec<String> = inputs.iter().map(|i| i.host.name.clone()).collect();
    let tunnel_names: Vec<String> = tunnels.keys().cloned().collect();
    let progress = Arc::new(Progress::for_tunnels("status", &tunnel_names, &names));
    let futs = inputs.iter().map(|input| {
        let (c, p) = (connector.clone(), progress.clone());
        async move {
            p.step(&input.host.name, "reading facts and probing the connector");
            let r = status_host(&c, input).await;
            p.done(&r.name, r.error.is_none(), "");
            r
        }
    });
    let mut results = futures::future::join_all(futs).await;
    progress.finish();

    // The fleet's token per tunnel: the one given, else the one most hosts have.
    for t in tunnels.values() {
        let fleet_fp = t.token.as_ref().map(|s| s.fingerprint()).or_else(|| {
            let mut count: BTreeMap<&str, usize> = BTreeMap::new();
            for r in results.iter().filter(|r| r.tunnel == t.name) {
                if let Some(fp) = &r.token_fingerprint {
                    *count.entry(fp.as_str()).or_default() += 1;
                }
            }
            count
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(fp, _)| fp.to_string())
        });
        for r in results.iter_mut().filter(|r| r.tunnel == t.name) {
            r.token_matches_fleet = match (&fleet_fp, &r.token_fingerprint) {
                (Some(f), Some(h)) => Some(f == h),
                (Some(_), None) => Some(false),
                _ => None,
            };
        }
    }
    // Operations of this controller that did not finish: a rotation whose journal has no
    // clean end, per host it did not complete.
    let state_dir = crate::ssh::config::expand_tilde(&args.state.state_dir);
    for t in tunnels.values() {
        let (journal, _) = super::rotate::journal_paths(&state_dir, &t.name);
        let Ok(log) = crate::rollout::Journal::load(&journal) else {
            continue;
        };
        let Some(op) = log.pending_op() else {
            continue;
        };
        for r in results.iter_mut().filter(|r| r.tunnel == t.name) {
            if !log.is_done(&op.op_id, &r.name, "retire", "stop_old") {
                r.unfinished.push(format!(
                    "rotation unfinished ({}): run `tunnelfleet rotate-token --resume`",
                    op.op_id
                ));
            }
        }
    }
    for r in &mut results {
        r.ok = r.error.is_none()
            && r.unfinished.is_empty()
            && r.pending.is_none()
            && r.drift.is_empty()
            && r.down.is_empty()
            && r.lock.is_none()
            && r.connector_ready
            && r.token_matches_fleet != Some(false);
    }
    let ok = results.iter().filter(|r| r.ok).count();
    let failed = results.len() - ok;
    if args.json {
        let doc = serde_json::json!({"hosts": results, "summary": {"ok": ok, "failed": failed}});
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        let mut t = Table::new(&[
            "HOST",
            "STATUS",
            "RELEASE",
            "TOKEN",
            "CERT",
            "EXPIRES",
            "CONNECTOR",
            "DETAIL",
        ])
        .painted("STATUS")
        .painted("CONNECTOR")
        .shrinkable("CERT", 10)
        .shrinkable("RELEASE", 12)
        .drop_order(&["CERT", "RELEASE"]);
        for r in &results {
            t.row(vec![
                r.name.clone(),
                if r.ok {
                    "ok".into()
                } else {
                    "ATTENTION".into()
                },
                r.release.clone().unwrap_or_else(|| "-".into()),
                match (&r.token_fingerprint, r.token_matches_fleet) {
                    (Some(fp), Some(false)) => format!("{fp} (differs)"),
                    (Some(fp), _) => fp.clone(),
                    _ => "-".into(),
                },
                r.cert_serial.clone().unwrap_or_else(|| "-".into()),
                r.cert_not_after
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| relative_unix(t.timestamp()))
                    .unwrap_or_else(|| "-".into()),
                if r.connector_ready {
                    "ready".into()
                } else {
                    "NOT READY".into()
                },
                {
                    let mut d: Vec<String> = Vec::new();
                    match &r.error {
                        Some(e) => d.push(e.clone()),
                        None if r.drift.is_empty() => d.push("no drift".into()),
                        None => d.push(format!("drift: {}", r.drift.join("; "))),
                    }
                    d.extend(r.pending.iter().cloned());
                    d.extend(r.down.iter().map(|x| format!("down: {x}")));
                    if let Some(l) = &r.lock {
                        d.push(format!("locked: {l}"));
                    }
                    d.extend(r.unfinished.iter().cloned());
                    d.join("; ")
                },
            ]);
        }
        print!("{}", t.render(style::width()));
        println!("{ok} ok, {failed} need attention");
    }
    Ok(if failed == 0 {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}
