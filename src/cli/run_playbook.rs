//! `tunnelfleet run PLAYBOOK`: an operator's own playbook, with the same typed steps as the
//! built-in verbs (connect, facts, apply, health_gate, healthy, lock, persist_token,
//! start_connector, recreate_connector, wait_connector, stop_old, audit, unlock,
//! setup_renew_cert).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::common::{ConnArgs, StateArgs};
use super::deploy::{TokenArgs, load_inputs};
use super::render::Table;
use super::style;
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK};
use crate::ops::rotate::register_rotation_steps;
use crate::playbook::{Playbook, StepRegistry};
use crate::rollout::{Engine, HostStatus, new_op_id};

/// Flags of `run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The playbook (YAML: name, phases with strategy, max_unavailable, hosts, steps).
    playbook: PathBuf,
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    token: TokenArgs,
    #[command(flatten)]
    state: StateArgs,
    /// Steps that would change a host only report what they would do.
    #[arg(long)]
    check: bool,
    /// Print the rollout report as one JSON document.
    #[arg(long)]
    json: bool,
}

/// Runs `run`.
pub async fn run(args: RunArgs) -> Result<i32, CliError> {
    let op_id = new_op_id();
    let mut registry = StepRegistry::new();
    register_rotation_steps(&mut registry, &op_id, Duration::ZERO, None);
    crate::ops::setup::register_setup_steps(&mut registry, None);
    // Schema errors (file:line:column) before anything else.
    let playbook =
        Playbook::load(&args.playbook, &registry).map_err(|e| CliError::input(e.to_string()))?;
    let (_inv, hosts) = args.conn.select().await?;
    let (_, inputs) = load_inputs(
        hosts,
        args.token.flag_or_env(),
        &args.state.state_dir,
        !args.check,
    )
    .await?;
    let (progress, ctxs) =
        super::deploy::contexts(&args.conn, inputs, playbook.name(), args.check)?;
    let report = Engine::new(&progress)
        .run(playbook.into_phases(), ctxs)
        .await;
    progress.finish();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let mut t = Table::new(&["HOST", "STATUS", "CHANGE", "DETAIL"])
            .painted("STATUS")
            .grouped();
        for h in &report.hosts {
            t.row(vec![
                h.host.clone(),
                format!("{:?}", h.status).to_lowercase(),
                if h.changed {
                    "changed".into()
                } else {
                    "-".into()
                },
                h.message.clone().unwrap_or_default(),
            ]);
        }
        print!("{}", t.render(style::width()));
        if let Some(h) = &report.summary.halted {
            println!("halted: {h}");
        }
    }
    let ok = report.hosts.iter().all(|h| h.status == HostStatus::Ok);
    Ok(if ok { EXIT_OK } else { EXIT_HOST_FAILED })
}
