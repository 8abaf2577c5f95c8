//! `tunnelfleet pki`: the controller's CA for the tunnel's server certificates.
//!
//! The CA key stays in the controller's state directory (0600, directory 0700) and never goes
//! to a host; hosts get ca.crt, tls.crt and tls.key only.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, EXIT_OK};
use crate::pki::Ca;

/// Flags of `pki`.
#[derive(Args, Debug)]
pub struct PkiArgs {
    #[command(subcommand)]
    cmd: PkiCmd,
}

#[derive(Subcommand, Debug)]
enum PkiCmd {
    /// Make the CA whose certificate you register in the Console (one per tunnel).
    Init {
        #[command(flatten)]
        loc: PkiLocation,
        /// The CA's common name.
        #[arg(long, default_value = "tunnelfleet CA")]
        name: String,
        /// Replace an existing CA (hosts' certificates must then be re-issued and the new
        /// ca.crt registered in the Console).
        #[arg(long)]
        force: bool,
    },
    /// Show the CA certificate's details.
    Show {
        #[command(flatten)]
        loc: PkiLocation,
    },
}

/// Where a tunnel's CA lives on the controller.
#[derive(Args, Debug, Clone)]
pub struct PkiLocation {
    /// The controller's state directory.
    #[arg(
        long,
        env = "TUNNELFLEET_STATE_DIR",
        default_value = "~/.local/state/tunnelfleet"
    )]
    pub state_dir: String,
    /// The tunnel (inventory group / tunnel_name) the CA belongs to.
    #[arg(long, default_value = "default")]
    pub tunnel: String,
}

impl PkiLocation {
    /// `<state_dir>/pki/<tunnel>`.
    pub fn dir(&self) -> Result<PathBuf, CliError> {
        if self.tunnel.is_empty()
            || !self
                .tunnel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.tunnel.starts_with('.')
        {
            return Err(CliError::input(format!(
                "--tunnel '{}': use letters, digits, '-', '_' and '.' only",
                self.tunnel
            )));
        }
        Ok(crate::ssh::config::expand_tilde(&self.state_dir)
            .join("pki")
            .join(&self.tunnel))
    }
}

/// Runs `pki`.
pub async fn run(args: PkiArgs) -> Result<i32, CliError> {
    match args.cmd {
        PkiCmd::Init { loc, name, force } => {
            let dir = loc.dir()?;
            let ca = Ca::init(&dir, &name, force).map_err(|e| CliError::input(e.to_string()))?;
            let info = ca.info().map_err(|e| CliError::input(e.to_string()))?;
            println!(
                "CA for tunnel '{}' created in {}",
                loc.tunnel,
                dir.display()
            );
            println!(
                "  certificate: {} (register this file in the Console)",
                dir.join("ca.crt").display()
            );
            println!(
                "  private key: {} (0600; never leaves this machine)",
                dir.join("ca.key").display()
            );
            println!("  serial {}  valid until {}", info.serial, info.not_after);
            Ok(EXIT_OK)
        }
        PkiCmd::Show { loc } => {
            let dir = loc.dir()?;
            let ca = Ca::load(&dir).map_err(|e| CliError::input(e.to_string()))?;
            let info = ca.info().map_err(|e| CliError::input(e.to_string()))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&info).unwrap_or_default()
            );
            Ok(EXIT_OK)
        }
    }
}
