//! `tunnelfleet deploy`: the same stack, token and certificates on every selected host, and
//! staged upgrades with automatic rollback (see `crate::ops::upgrade`). This file parses the
//! flags and renders the report.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;

use super::common::{ConnArgs, SelectedHost, StateArgs};
use super::progress::Progress;
use super::staged::{self, StagedArgs, StagedHost};
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK};
use crate::ops::deploy::{HostInput, StackHost, TunnelInput};
use crate::ops::upgrade::{ReleaseInputs, run_release_change};
use crate::rollout::HostCtx;
use crate::secrets::{Secret, TokenSource};
use crate::state::StateDir;

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
    #[command(flatten)]
    staged: StagedArgs,
    /// Print the staged plan (batches, which hosts move make-before-break, every write and
    /// restart) and touch nothing.
    #[arg(long)]
    check: bool,
    /// With --check: a unified diff of every changed file (compose file, proxy config; the
    /// token only as fingerprints).
    #[arg(long)]
    diff: bool,
    /// Finish a deploy that was interrupted (Ctrl-C, a dead controller).
    #[arg(long)]
    resume: bool,
    /// Print one JSON document on stdout instead of the recap.
    #[arg(long)]
    json: bool,
    /// Deploy even into a system directory (/etc, /usr, /root, ...) or a non-empty directory
    /// tunnelfleet did not create.
    #[arg(long)]
    force: bool,
}

/// The built-in deploy playbook (playbooks/deploy.yaml, compiled in).
pub const DEPLOY_PLAYBOOK: &str = include_str!("../../playbooks/deploy.yaml");

/// Loads the controller-side inputs of every selected host (see
/// [`crate::ops::deploy::load_inputs`]); every input error surfaces here, before any host is
/// touched.
pub async fn load_inputs(
    hosts: Vec<SelectedHost>,
    token: Option<TokenSource>,
    state_dir: &str,
    issue: bool,
) -> Result<(BTreeMap<String, TunnelInput>, Vec<HostInput>), CliError> {
    crate::ops::deploy::load_inputs(hosts, token, state_dir, issue)
        .await
        .map_err(CliError::input)
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

/// Runs `deploy`.
pub async fn run(args: DeployArgs) -> Result<i32, CliError> {
    let (opts, pause) = args.staged.options()?;
    if args.diff && !args.check {
        return Err(CliError::input("--diff goes with --check"));
    }
    let (_inv, hosts) = args.conn.select().await?;
    let (tunnels, mut inputs) = load_inputs(
        hosts,
        args.token.flag_or_env(),
        &args.state.state_dir,
        !args.check,
    )
    .await?;
    inputs.iter_mut().for_each(|i| i.force_dir = args.force);
    let playbook = staged::release_playbook(DEPLOY_PLAYBOOK, "playbooks/deploy.yaml", &opts)?;
    let (progress, ctxs) = contexts(&args.conn, inputs, "deploy", args.check)?;
    let stop = staged::shared_stop();
    if !args.check {
        staged::install_interrupt(stop.clone(), "tunnelfleet deploy --resume");
    }
    let state = StateDir::new(crate::ssh::config::expand_tilde(&args.state.state_dir));
    let pause = staged::pause_hook(pause, &stop);
    let report = run_release_change(
        ReleaseInputs {
            operation: "deploy",
            hosts: ctxs,
            phases: playbook.into_phases(),
            state: state.clone(),
            tunnels: tunnels.keys().cloned().collect(),
            check: args.check,
            resume: args.resume,
            to: None,
        },
        &opts,
        &progress,
        stop,
        pause,
    )
    .await
    .map_err(|e| CliError {
        code: e.code,
        message: e.message,
    })?;
    progress.finish();
    let mut rows: Vec<StagedHost> = report
        .hosts
        .iter()
        .map(|h| staged::staged_host(h, report.records.get(h.name())))
        .collect();
    for r in rows.iter_mut() {
        if let Some(d) = report.diffs.get(&r.name) {
            r.diffs = d.clone();
        }
        if args.check && r.ok && !r.plan.is_empty() {
            r.outcome = "would change".into();
        }
    }
    let all_ok = rows.iter().all(|r| r.ok);
    if !args.check {
        crate::ops::audit::append(
            state.root(),
            &crate::ops::audit::ControllerAudit {
                token_fingerprint: tunnels
                    .values()
                    .find_map(|t| t.token.as_ref().map(Secret::fingerprint)),
                ..crate::ops::audit::ControllerAudit::ended(
                    "deploy",
                    tunnels.keys().cloned().collect(),
                    rows.iter().map(|r| (r.name.as_str(), r.ok)),
                )
            },
        );
    }
    staged::close_sessions(report.hosts).await;
    let interrupted = report.interrupted.then_some(
        "interrupted: every host is on one complete release; run `tunnelfleet deploy --resume` \
         to finish, or `tunnelfleet rollback` to undo",
    );
    if args.json {
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
            "op_id": report.op_id,
            "check": args.check,
            "tunnels": t,
            "staging": report.staging,
            "hosts": rows,
            "summary": {
                "ok": rows.iter().filter(|r| r.ok).count(),
                "failed": rows.iter().filter(|r| !r.ok).count(),
                "changed": rows.iter().filter(|r| r.upgrade.moved || (!r.plan.is_empty() && r.ok)).count(),
                "halted": report.halted,
                "rolled_back": report.rolled_back,
                "interrupted": report.interrupted,
            },
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else if args.check {
        staged::render_staging(&report.staging, &rows, "deploy", args.diff);
    } else {
        staged::render_outcome(&rows, report.halted.as_deref(), interrupted);
    }
    Ok(if report.interrupted {
        staged::EXIT_INTERRUPTED
    } else if all_ok {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}
