//! `tunnelfleet status`: flags in, the table or `--json` out. Reading the hosts is
//! `crate::ops::status`.

use clap::Args;

use super::common::{ConnArgs, StateArgs};
use super::deploy::{TokenArgs, load_inputs};
use super::render::{Table, relative_unix};
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK, style};
use crate::ops::status::{self, StatusInputs};

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
    let report = status::run(
        StatusInputs {
            tunnels,
            hosts: inputs,
            connector,
            state_dir: args.state.state_dir.clone(),
        },
        &super::engine_report::TerminalUi,
    )
    .await;
    let (results, ok, failed) = (&report.hosts, report.ok, report.failed);
    if args.json {
        let doc = serde_json::json!({"hosts": results, "summary": {"ok": ok, "failed": failed}});
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        let mut t = table();
        for r in results {
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
                    d.extend(r.connector_netns_lost.iter().cloned());
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

/// The `status` table's columns: which are painted, which shrink, which go first on a
/// narrow terminal (the render tests use this very table).
pub(crate) fn table() -> Table {
    Table::new(&[
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
    .drop_order(&["CERT", "RELEASE"])
}
