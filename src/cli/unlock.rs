//! `tunnelfleet unlock`: flags in, one line per host out. Removing dead holders' locks is
//! `crate::ops::unlock`.

use clap::Args;

use super::common::ConnArgs;
use super::render::grouped_lines;
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK, style};
use crate::ops::unlock::{self, UnlockOptions, UnlockOutcome};

/// Flags of `unlock`.
#[derive(Args, Debug)]
pub struct UnlockArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Remove the lock even when its holder may still be running (you checked it is dead).
    #[arg(long)]
    force: bool,
}

/// Runs `unlock`.
pub async fn run(args: UnlockArgs) -> Result<i32, CliError> {
    let (_inv, hosts) = args.conn.select().await?;
    let connector = args.conn.connector()?;
    let outcomes = unlock::run(
        &hosts,
        connector,
        UnlockOptions {
            force: args.force,
            deadline: args.conn.command_timeout,
        },
    )
    .await;
    let mut failed = 0;
    let mut lines: Vec<(String, String)> = Vec::new();
    for (name, r) in outcomes {
        let line = match r {
            UnlockOutcome::NotLocked => "not locked".to_string(),
            UnlockOutcome::Removed(holder) => format!("removed lock held by {holder}"),
            UnlockOutcome::Kept { holder, why } => {
                failed += 1;
                format!(
                    "{}: lock held by {holder}: {why}; wait for that run, or \
                     `tunnelfleet unlock --force` once you know it is dead",
                    style::paint("NOT removed")
                )
            }
            UnlockOutcome::Failed(e) => {
                failed += 1;
                format!("{}: {e}", style::paint("FAILED"))
            }
        };
        lines.push((name, line));
    }
    print!(
        "{}",
        grouped_lines(
            lines
                .iter()
                .map(|(h, l)| (h.as_str(), l.as_str()))
                .collect()
        )
    );
    Ok(if failed == 0 {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}
