//! `tunnelfleet deploy`: the same stack, token and certificates on every selected host,
//! health-gated. Facts (one round trip), plan, apply (one round trip), gate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::common::{ConnArgs, SelectedHost, StateArgs, parse_duration};
use super::progress::{Progress, table};
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK};
use crate::ops::deploy::{
    HostInput, StackHost, TunnelInput, host_inputs, register_deploy_steps, tunnel_inputs,
};
use crate::ops::health;
use crate::playbook::{Playbook, StepRegistry};
use crate::rollout::{Engine, HostCtx, HostRecord, HostStatus};
use crate::secrets::{Secret, TokenSource};
use crate::stack::{self, Plan, StackSettings};

/// Where the tunnel token comes from (explicit flags; else env TUNNEL_TOKEN; else the
/// tunnel's `tunnel_token_command`).
#[derive(Args, Debug, Clone, Default)]
pub struct TokenArgs {
    /// Read the token from stdin.
    #[arg(long, conflicts_with = "token_file")]
    pub token_stdin: bool,
    /// Read the token from a file (refused when group or others can read it).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The explicit source, or env TUNNEL_TOKEN when set.
    pub fn flag_or_env(&self) -> Option<TokenSource> {
        if self.token_stdin {
            Some(TokenSource::Stdin)
        } else if let Some(f) = &self.token_file {
            Some(TokenSource::File(f.clone()))
        } else if std::env::var_os("TUNNEL_TOKEN").is_some() {
            Some(TokenSource::env_default())
        } else {
            None
        }
    }
}

/// Flags of `deploy`.
#[derive(Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    token: TokenArgs,
    #[command(flatten)]
    state: StateArgs,
    /// Print each host's plan and touch nothing.
    #[arg(long)]
    check: bool,
    /// Print one JSON document on stdout instead of the recap.
    #[arg(long)]
    json: bool,
    /// How long a host may take to have a ready connector after a change (default: the
    /// playbook's, 60s).
    #[arg(long, value_parser = parse_duration)]
    gate_timeout: Option<Duration>,
}

/// Per-host outcome, for the recap and `--json` (hashes and fingerprints only).
#[derive(Debug, Serialize, Default)]
pub struct HostResult {
    name: String,
    ok: bool,
    error: Option<String>,
    hint: Option<String>,
    stage: String,
    tunnel: String,
    changed: bool,
    plan: Option<Plan>,
    token_fingerprint: Option<String>,
    connector: Option<health::ConnectorReady>,
    gate_ms: Option<u64>,
}

/// The built-in deploy playbook (playbooks/deploy.yaml, compiled in).
pub const DEPLOY_PLAYBOOK: &str = include_str!("../../playbooks/deploy.yaml");

/// Loads the controller-side inputs of every selected host: settings, tunnels, tokens,
/// certificates, releases. Every input error surfaces here, before any host is touched.
pub async fn load_inputs(
    hosts: Vec<SelectedHost>,
    token: Option<TokenSource>,
    state_dir: &str,
    issue: bool,
) -> Result<(BTreeMap<String, TunnelInput>, Vec<HostInput>), CliError> {
    let mut with_settings = Vec::new();
    let mut errors = Vec::new();
    for h in hosts {
        match StackSettings::from_vars(&h.name, &h.vars) {
            Ok(s) => with_settings.push((h, s)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(CliError::input(errors.join("\n")));
    }
    let settings: Vec<StackSettings> = with_settings.iter().map(|(_, s)| s.clone()).collect();
    let groups = stack::group_by_tunnel(&settings).map_err(|e| CliError::input(e.to_string()))?;
    let state = crate::ssh::config::expand_tilde(state_dir);
    let tunnels = tunnel_inputs(&groups, token, &state, issue)
        .await
        .map_err(CliError::input)?;
    let inputs = host_inputs(with_settings, &tunnels).map_err(CliError::input)?;
    Ok((tunnels, inputs))
}

/// The progress display and the host contexts of an engine run over `inputs`.
pub fn contexts(
    conn: &ConnArgs,
    inputs: Vec<HostInput>,
    operation: &str,
    check: bool,
) -> Result<(Progress, Vec<StackHost>), CliError> {
    let connector = conn.connector()?;
    let progress = Progress::for_inputs(operation, &inputs);
    let ctxs = inputs
        .into_iter()
        .map(|i| StackHost::new(i, connector.clone(), operation, check))
        .collect();
    Ok((progress, ctxs))
}

/// Builds a result row from the engine's record and the host's context.
fn result_of(rec: Option<&HostRecord>, h: &StackHost) -> HostResult {
    let ok = rec.is_some_and(|r| r.status == HostStatus::Ok);
    HostResult {
        name: h.input.host.name.clone(),
        ok,
        error: rec.filter(|_| !ok).map(|r| {
            r.message
                .clone()
                .unwrap_or_else(|| format!("{:?}", r.status))
        }),
        hint: rec.filter(|_| !ok).and_then(|r| r.hint.clone()),
        stage: rec
            .map(|r| match (&r.step, ok) {
                (_, true) => "done".to_string(),
                (Some(s), false) => s.clone(),
                (None, false) => r.phase.clone().unwrap_or_default(),
            })
            .unwrap_or_default(),
        tunnel: h.input.settings.tunnel_name.clone(),
        changed: h.plan.as_ref().is_some_and(|p| !p.is_empty()),
        plan: h.plan.clone(),
        token_fingerprint: h.input.token_fp.clone(),
        connector: h.ready.clone(),
        gate_ms: h.gate_ms,
    }
}

/// Runs `deploy`.
pub async fn run(args: DeployArgs) -> Result<i32, CliError> {
    let (_inv, hosts) = args.conn.select().await?;
    let (tunnels, inputs) = load_inputs(
        hosts,
        args.token.flag_or_env(),
        &args.state.state_dir,
        !args.check,
    )
    .await?;
    let mut registry = StepRegistry::new();
    register_deploy_steps(&mut registry, args.gate_timeout);
    let playbook = Playbook::from_str(
        DEPLOY_PLAYBOOK,
        Path::new("playbooks/deploy.yaml"),
        &registry,
    )
    .map_err(|e| CliError::input(format!("built-in playbook: {e}")))?;
    let (progress, ctxs) = contexts(&args.conn, inputs, "deploy", args.check)?;
    let engine = Engine::new(&progress);
    let report = engine.run(playbook.into_phases(), ctxs).await;
    let results: Vec<HostResult> = report
        .contexts
        .iter()
        .map(|h| result_of(report.host(h.name()), h))
        .collect();
    for r in &results {
        if r.ok {
            let msg = match &r.plan {
                Some(p) if p.is_empty() => "up to date".to_string(),
                Some(p) if args.check => format!("would change: {}", p.describe().join("; ")),
                Some(p) => format!("changed: {}", p.describe().join("; ")),
                None => String::new(),
            };
            progress.done(&r.name, true, &msg);
        }
    }
    progress.finish();
    for h in report.contexts {
        if let Some(s) = h.session
            && let Ok(s) = Arc::try_unwrap(s)
        {
            s.close().await;
        }
    }
    render(
        &results,
        &tunnels,
        args.json,
        args.check,
        report.summary.halted.as_deref(),
    );
    if !args.check {
        crate::ops::audit::record(
            &args.state.state_dir,
            "deploy",
            tunnels.keys().cloned().collect(),
            results.iter().map(|r| (r.name.clone(), r.ok)),
            tunnels
                .values()
                .find_map(|t| t.token.as_ref().map(Secret::fingerprint)),
            None,
        );
    }
    Ok(if results.iter().all(|r| r.ok) {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}

fn render(
    results: &[HostResult],
    tunnels: &BTreeMap<String, TunnelInput>,
    json: bool,
    check: bool,
    halted: Option<&str>,
) {
    let ok = results.iter().filter(|r| r.ok).count();
    let failed = results.len() - ok;
    let changed = results.iter().filter(|r| r.ok && r.changed).count();
    if json {
        let t: Vec<serde_json::Value> = tunnels
            .values()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "token_fingerprint": t.token.as_ref().map(Secret::fingerprint),
                    "certificate_issued": t.cert_issued,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "check": check,
            "tunnels": t,
            "hosts": results,
            "summary": {"ok": ok, "failed": failed, "changed": changed, "halted": halted},
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    if check {
        for r in results {
            println!("{}:", r.name);
            match (&r.error, &r.plan) {
                (Some(e), _) => println!("  FAILED: {e}"),
                (None, Some(p)) => {
                    for l in p.describe() {
                        println!("  {l}");
                    }
                }
                _ => {}
            }
        }
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                if r.ok { "ok".into() } else { "FAILED".into() },
                r.tunnel.clone(),
                if r.changed {
                    "changed".into()
                } else {
                    "-".into()
                },
                r.gate_ms
                    .map(|g| format!("{g} ms"))
                    .unwrap_or_else(|| "-".into()),
                match (&r.error, &r.hint) {
                    (Some(e), Some(h)) => format!("{}: {e} (hint: {h})", r.stage),
                    (Some(e), None) => format!("{}: {e}", r.stage),
                    _ => r
                        .plan
                        .as_ref()
                        .map(|p| p.describe().join("; "))
                        .unwrap_or_default(),
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["HOST", "STATUS", "TUNNEL", "CHANGE", "READY IN", "DETAIL"],
            &rows
        )
    );
    let verb = if check { "would change" } else { "changed" };
    println!("{ok} ok ({changed} {verb}), {failed} failed");
    if let Some(h) = halted {
        println!("rollout halted: {h}");
    }
}
