//! `tunnelfleet rollback [--to RELEASE]`: the fleet (or `--limit`) back to each host's previous
//! release, or to a release still on every host, staged and gated as a deploy (see
//! `crate::ops::upgrade`). Refused before touching anything when a host lacks the release.

use clap::Args;

use super::common::{ConnArgs, StateArgs};
use super::deploy::{contexts, load_inputs};
use super::staged::{self, StagedArgs, StagedHost};
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK};
use crate::ops::upgrade::{ReleaseInputs, run_release_change};
use crate::rollout::HostCtx;
use crate::stack::release_scripts::is_release_id;
use crate::state::StateDir;

/// The built-in rollback playbook (playbooks/rollback.yaml, compiled in).
pub const ROLLBACK_PLAYBOOK: &str = include_str!("../../playbooks/rollback.yaml");

/// Flags of `rollback`.
#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    state: StateArgs,
    #[command(flatten)]
    staged: StagedArgs,
    /// The release to go to (an id `tunnelfleet releases` lists); it must be on every
    /// selected host. Default: each host's previous release (or, after an interrupted
    /// deploy, the release each host ran before it).
    #[arg(long, value_name = "RELEASE")]
    to: Option<String>,
    /// Print the staged plan and the diffs, touch nothing.
    #[arg(long)]
    check: bool,
    /// Print one JSON document on stdout instead of the recap.
    #[arg(long)]
    json: bool,
}

/// Runs `rollback`.
pub async fn run(args: RollbackArgs) -> Result<i32, CliError> {
    let (opts, pause) = args.staged.options()?;
    if let Some(t) = &args.to
        && !is_release_id(t)
    {
        return Err(CliError::input(format!(
            "--to {t:?}: a release id is 12 lowercase hex digits (see tunnelfleet releases)"
        )));
    }
    let (_inv, hosts) = args.conn.select().await?;
    let (tunnels, inputs) = load_inputs(hosts, None, &args.state.state_dir, false).await?;
    let playbook = staged::release_playbook(ROLLBACK_PLAYBOOK, "playbooks/rollback.yaml", &opts)?;
    let (progress, ctxs) = contexts(&args.conn, inputs, "rollback", args.check)?;
    let stop = staged::shared_stop();
    if !args.check {
        staged::install_interrupt(stop.clone(), "tunnelfleet rollback");
    }
    let pause = staged::pause_hook(pause, &stop);
    let state = StateDir::new(crate::ssh::config::expand_tilde(&args.state.state_dir));
    let result = run_release_change(
        ReleaseInputs {
            operation: "rollback",
            hosts: ctxs,
            phases: playbook.into_phases(),
            state,
            tunnels: tunnels.keys().cloned().collect(),
            check: args.check,
            resume: false,
            to: args.to.clone(),
        },
        &opts,
        &progress,
        stop,
        pause,
    )
    .await;
    progress.finish();
    let report = result.map_err(|e| CliError {
        code: e.code,
        message: e.message,
    })?;
    let mut rows: Vec<StagedHost> = report
        .hosts
        .iter()
        .map(|h| {
            let mut r = staged::staged_host(h, report.records.get(h.name()));
            r.plan.clear();
            if let (Some(f), Some(t)) = (&r.from, &r.to)
                && f != t
            {
                r.plan.push(format!("switch current: {f} -> {t}"));
                r.plan.push(if r.surge {
                    "start a connector from the earlier release beside the current one; retire \
                     the current one once the new one is ready (make-before-break)"
                        .to_string()
                } else {
                    "recreate every service (the compose file or the proxy config differs)"
                        .to_string()
                });
                if args.check && r.ok {
                    r.outcome = "would change".into();
                }
            }
            if let Some(d) = report.diffs.get(&r.name) {
                r.diffs = d.clone();
            }
            r
        })
        .collect();
    for r in rows.iter_mut() {
        if !args.check && r.ok && r.from == r.to {
            r.outcome = "already there".into();
        }
    }
    staged::close_sessions(report.hosts).await;
    let all_ok = rows.iter().all(|r| r.ok);
    if args.json {
        let doc = serde_json::json!({
            "op_id": report.op_id,
            "check": args.check,
            "staging": report.staging,
            "hosts": rows,
            "summary": {
                "ok": rows.iter().filter(|r| r.ok).count(),
                "failed": rows.iter().filter(|r| !r.ok).count(),
                "halted": report.halted,
                "rolled_back": report.rolled_back,
                "interrupted": report.interrupted,
            },
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else if args.check {
        staged::render_staging(&report.staging, &rows, "rollback", true);
    } else {
        staged::render_outcome(
            &rows,
            report.halted.as_deref(),
            report
                .interrupted
                .then_some("interrupted: every host is on one complete release; run `tunnelfleet rollback` again to finish"),
        );
    }
    Ok(if report.interrupted {
        staged::EXIT_INTERRUPTED
    } else if all_ok {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}
