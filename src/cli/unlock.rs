//! `tunnelfleet unlock`: remove the fleet lock on hosts whose holder is known to be dead
//! (a controller killed mid-operation). Shows what it removes.

use clap::Args;

use super::common::ConnArgs;
use super::render::grouped_lines;
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK, style};
use crate::remote::{HOLDER_FILE, force_unlock, quote};
use crate::stack::{Layout, scripts};

/// Flags of `unlock`.
#[derive(Args, Debug)]
pub struct UnlockArgs {
    #[command(flatten)]
    conn: ConnArgs,
}

/// Runs `unlock`.
pub async fn run(args: UnlockArgs) -> Result<i32, CliError> {
    let (_inv, hosts) = args.conn.select().await?;
    let connector = args.conn.connector()?;
    let futs = hosts.iter().map(|h| {
        let c = connector.clone();
        async move {
            let lock = scripts::lock_dir(&Layout::new(&h.conn.deploy_dir));
            let script = match force_unlock(&lock) {
                Ok(s) => format!(
                    "cat {} 2>/dev/null; {s}",
                    quote(&format!("{lock}/{HOLDER_FILE}"))
                ),
                Err(e) => return (h.name.clone(), Err(e.to_string())),
            };
            let r = match c.connect(&h.target).await {
                Ok(s) => match s.exec(&script, b"").await {
                    Ok(o) if o.success() => Ok(o.stdout_text().trim().to_string()),
                    Ok(o) => Err(o.stderr_text()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            (h.name.clone(), r)
        }
    });
    let mut failed = 0;
    let mut lines: Vec<(String, String)> = Vec::new();
    for (name, r) in futures::future::join_all(futs).await {
        let line = match r {
            Ok(holder) if holder.is_empty() => "not locked".to_string(),
            Ok(holder) => format!("removed lock held by {holder}"),
            Err(e) => {
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
