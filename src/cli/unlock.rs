//! `tunnelfleet unlock`: remove the fleet lock on hosts whose holder is known to be dead
//! (a controller killed mid-operation). Shows what it removes.

use clap::Args;

use super::common::ConnArgs;
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK};
use crate::remote::{HOLDER_FILE, force_unlock, quote};
use crate::stack::scripts;

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
            let lock = scripts::lock_dir_in(&h.conn.deploy_dir);
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
    for (name, r) in futures::future::join_all(futs).await {
        match r {
            Ok(holder) if holder.is_empty() => println!("{name}: not locked"),
            Ok(holder) => println!("{name}: removed lock held by {holder}"),
            Err(e) => {
                failed += 1;
                println!("{name}: FAILED: {e}");
            }
        }
    }
    Ok(if failed == 0 {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}
