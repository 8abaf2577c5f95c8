//! `tunnelfleet releases`: flags in, per host the releases present (hosts with the same
//! history shown once) out. Reading them is `crate::ops::releases`.

use std::collections::BTreeMap;

use clap::Args;

use super::common::{ConnArgs, StateArgs};
use super::deploy::load_inputs;
use super::progress::table;
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK};
use crate::ops::releases::HostReleases;

/// Flags of `releases`.
#[derive(Args, Debug)]
pub struct ReleasesArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    state: StateArgs,
    /// Print one JSON document on stdout instead of the tables.
    #[arg(long)]
    json: bool,
}

fn short_image(i: &str) -> String {
    let name = i.rsplit('/').next().unwrap_or(i);
    match name.split_once("@sha256:") {
        Some((n, d)) => format!("{n}@{}", &d[..d.len().min(12)]),
        None => name.to_string(),
    }
}

/// Runs `releases`.
pub async fn run(args: ReleasesArgs) -> Result<i32, CliError> {
    let (_inv, hosts) = args.conn.select().await?;
    let (_tunnels, inputs) = load_inputs(hosts, None, &args.state.state_dir, false).await?;
    let connector = args.conn.connector()?;
    let out = crate::ops::releases::run(inputs, connector, &super::engine_report::TerminalUi).await;
    let all_ok = out.iter().all(|h| h.ok);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "hosts": out })).unwrap_or_default()
        );
    } else {
        // Hosts with the same releases (same ids, roles, times) are shown once.
        let mut groups: BTreeMap<String, (Vec<&str>, &HostReleases)> = BTreeMap::new();
        let mut order = Vec::new();
        for h in out.iter().filter(|h| h.ok) {
            let key = serde_json::to_string(&h.releases).unwrap_or_default();
            if !groups.contains_key(&key) {
                order.push(key.clone());
            }
            groups.entry(key).or_insert((Vec::new(), h)).0.push(&h.name);
        }
        for key in order {
            let (names, h) = &groups[&key];
            println!("{}:", names.join(", "));
            let rows: Vec<Vec<String>> = h
                .releases
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        if r.complete {
                            r.role.clone()
                        } else {
                            format!("{} (incomplete)", r.role).trim().to_string()
                        },
                        r.deployed.clone().unwrap_or_else(|| "-".into()),
                        r.by.clone().unwrap_or_else(|| "-".into()),
                        r.images
                            .iter()
                            .map(|i| short_image(i))
                            .collect::<Vec<_>>()
                            .join(", "),
                        r.config_sha.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            let text = table(
                &["RELEASE", "ROLE", "DEPLOYED", "BY", "IMAGES", "CONFIG"],
                &rows,
            );
            for l in text.lines() {
                println!("  {l}");
            }
        }
        for h in out.iter().filter(|h| !h.ok) {
            println!(
                "{}: FAILED: {}",
                h.name,
                h.error.as_deref().unwrap_or("unreachable")
            );
        }
    }
    Ok(if all_ok { EXIT_OK } else { EXIT_HOST_FAILED })
}
