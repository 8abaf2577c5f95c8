//! `tunnelfleet inventory`: the inventory as tunnelfleet resolves it.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, EXIT_OK};

/// Flags of `inventory`.
#[derive(Args, Debug)]
pub struct InventoryArgs {
    /// Inventory: a YAML or INI file, or a directory of them; repeat to merge several.
    #[arg(
        short = 'i',
        long = "inventory",
        env = "TUNNELFLEET_INVENTORY",
        required = true
    )]
    inventory: Vec<PathBuf>,
    /// Vault passwords.
    #[command(flatten)]
    vault: super::common::VaultArgs,
    /// Print every group and host with merged vars, as `ansible-inventory --list` does.
    #[arg(long)]
    list: bool,
    /// Print one host's merged vars, as `ansible-inventory --host HOST` does.
    #[arg(long, conflicts_with = "list")]
    host: Option<String>,
    /// Print the hosts a --limit pattern selects, one per line.
    #[arg(short = 'l', long)]
    limit: Option<String>,
}

/// Runs `inventory`.
pub async fn run(args: InventoryArgs) -> Result<i32, CliError> {
    let inv = super::common::load_inventory(&args.inventory, &args.vault)?;
    if args.list {
        let doc = inv.ansible_list();
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    if let Some(name) = &args.host {
        let host = inv.host(name).ok_or_else(|| {
            CliError::input(format!(
                "--host {}: no such host in the inventory",
                crate::inventory::clip_for_message(name)
            ))
        })?;
        let doc = inv.ansible_host(host);
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    let hosts = inv
        .select(args.limit.as_deref())
        .map_err(|e| CliError::input(e.to_string()))?;
    for h in hosts {
        println!("{}", h.name);
    }
    Ok(EXIT_OK)
}
