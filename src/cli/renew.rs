//! `tunnelfleet renew-cert`: flags in, the report out. The renewal itself is
//! `crate::ops::renew`.

use std::time::Duration;

use clap::Args;

use super::common::{ConnArgs, StateArgs, parse_duration};
use super::render::Table;
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK, style};
use crate::ops::renew::{self, RenewInputs, RenewOptions, RenewReport};

/// Flags of `renew-cert`.
#[derive(Args, Debug)]
pub struct RenewArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Renew only when the current certificate has less than this left.
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    renew_before: Duration,
    /// Make a new server key too (default: keep the key, renew the certificate).
    #[arg(long)]
    rekey: bool,
    #[command(flatten)]
    state: StateArgs,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `renew-cert`.
pub async fn run(args: RenewArgs) -> Result<i32, CliError> {
    let (_inv, hosts) = args.conn.select().await?;
    let connector = args.conn.connector()?;
    let report = renew::run(
        RenewInputs {
            hosts,
            state_dir: args.state.state_dir.clone(),
            connector,
        },
        RenewOptions {
            renew_before: args.renew_before,
            rekey: args.rekey,
        },
        &super::engine_report::TerminalUi,
    )
    .await
    .map_err(CliError::from)?;
    render(&report, args.json);
    Ok(if report.failed() == 0 {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}

/// Prints the report: one JSON document, or the table.
fn render(report: &RenewReport, json: bool) {
    if json {
        let hosts: Vec<serde_json::Value> = report
            .hosts
            .iter()
            .map(|h| {
                serde_json::json!({"name": h.name, "ok": h.ok,
                    "error": if h.ok { None } else { Some(&h.message) },
                    "serial": h.serial, "wrote": h.wrote,
                    "renewed": h.ok && h.changed})
            })
            .collect();
        let doc = serde_json::json!({"tunnels": report.tunnels, "hosts": hosts});
        if report.hosts.is_empty() {
            println!("{doc}");
        } else {
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        return;
    }
    if report.hosts.is_empty() {
        return;
    }
    let mut t = Table::new(&["HOST", "STATUS", "SERIAL", "DETAIL"])
        .painted("STATUS")
        .shrinkable("SERIAL", 12)
        .grouped();
    for h in &report.hosts {
        let detail = if h.ok && h.setup_component {
            if h.changed {
                "renewed by the setup component; nothing restarted".into()
            } else {
                "setup component: nothing to do (more than --renew-before left)".into()
            }
        } else if h.ok {
            if h.wrote.is_empty() {
                "already current".into()
            } else {
                format!("wrote {}; nothing restarted", h.wrote)
            }
        } else {
            h.message.clone()
        };
        t.row(vec![
            h.name.clone(),
            if h.ok { "ok".into() } else { "FAILED".into() },
            h.serial.clone().unwrap_or_default(),
            detail,
        ]);
    }
    print!("{}", t.render(style::width()));
}
