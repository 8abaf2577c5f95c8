//! `tunnelfleet check`: flags in, the table or `--json` out. Probing the hosts is
//! `crate::ops::check`.

use clap::Args;

use super::common::ConnArgs;
use super::render::Table;
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK, style};

/// Flags of `check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Print one JSON document on stdout instead of the recap table.
    #[arg(long)]
    json: bool,
}

/// Runs `check`.
pub async fn run(args: CheckArgs) -> Result<i32, CliError> {
    let (_inv, hosts) = args.conn.select().await?;
    let connector = args.conn.connector()?;
    let report =
        crate::ops::check::run(hosts, connector, &super::engine_report::TerminalUi).await?;
    let (results, ok, failed) = (&report.hosts, report.ok, report.failed);
    if args.json {
        let doc = serde_json::json!({
            "hosts": results,
            "summary": {"ok": ok, "failed": failed},
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        let mut t = Table::new(&[
            "HOST", "STATUS", "AUTH", "COMPOSE", "FREE", "SKEW", "HOST KEY", "DETAIL",
        ])
        .painted("STATUS")
        .shrinkable("HOST KEY", 16)
        .drop_order(&["HOST KEY", "SKEW"]);
        for r in results {
            t.row(vec![
                r.name.clone(),
                if r.ok { "ok".into() } else { "FAILED".into() },
                r.auth.clone().unwrap_or_else(|| "-".into()),
                r.compose
                    .as_ref()
                    .map(|c| format!("{} {}", c.kind, c.version))
                    .unwrap_or_else(|| "-".into()),
                r.free_disk_bytes
                    .map(|b| format!("{} MiB", b / (1024 * 1024)))
                    .unwrap_or_else(|| "-".into()),
                r.clock_skew_ms
                    .map(|s| format!("{s} ms"))
                    .unwrap_or_else(|| "-".into()),
                r.host_key.clone().unwrap_or_else(|| "-".into()),
                match (&r.error, &r.hint) {
                    (Some(e), Some(h)) => format!("{e} (hint: {h})"),
                    (Some(e), None) => e.clone(),
                    _ => r.os.clone().unwrap_or_default(),
                },
            ]);
        }
        print!("{}", t.render(style::width()));
        println!("{ok} ok, {failed} failed");
    }
    Ok(if failed == 0 {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}
