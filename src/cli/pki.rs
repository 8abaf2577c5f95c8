//! `tunnelfleet pki`: the controller's CA for the tunnel's server certificates.
//!
//! The CA key stays in the controller's state directory (0600, directory 0700) and never goes
//! to a host; hosts get ca.crt, tls.crt and tls.key only.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::render::{relative, relative_unix};
use super::{CliError, EXIT_OK};
use crate::inventory::Inventory;
use crate::pki::{Ca, CertInfo, cert_info};

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
    /// Show the CA certificate (and the server certificate issued from it), readably or
    /// as `--json`.
    Show {
        #[command(flatten)]
        loc: PkiLocation,
        /// Print one JSON document on stdout.
        #[arg(long)]
        json: bool,
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
    /// The tunnel (inventory group / tunnel_name) the CA belongs to; default: the one tunnel
    /// of the inventory (`-i`, TUNNELFLEET_INVENTORY or tunnelfleet.toml), else "default".
    #[arg(long)]
    pub tunnel: Option<String>,
    /// Inventory whose tunnel to use when --tunnel is not given.
    #[arg(short = 'i', long = "inventory", env = "TUNNELFLEET_INVENTORY")]
    pub inventory: Option<PathBuf>,
}

/// The tunnel names the hosts of an inventory serve, in inventory order.
fn inventory_tunnels(path: &Path) -> Result<Vec<String>, CliError> {
    let inv = Inventory::load(path).map_err(|e| CliError::input(e.to_string()))?;
    let hosts = inv
        .select(None)
        .map_err(|e| CliError::input(e.to_string()))?;
    let mut names: Vec<String> = Vec::new();
    // A host's tunnel is its tunnel_name, by default its tunnel_domain (as deploy reads
    // them); a host with neither serves no tunnel (a jump host). Only the name matters
    // here, so the rest of the stack settings is not validated.
    for h in hosts {
        let name = ["tunnel_name", "tunnel_domain"]
            .iter()
            .find_map(|k| h.vars.get(*k).and_then(|v| v.as_str()))
            .map(str::to_string);
        if let Some(n) = name
            && !names.contains(&n)
        {
            names.push(n);
        }
    }
    Ok(names)
}

impl PkiLocation {
    /// The tunnel: `--tunnel`, else the inventory's only tunnel, else "default".
    pub fn tunnel(&self) -> Result<String, CliError> {
        if let Some(t) = &self.tunnel {
            return Ok(t.clone());
        }
        let Some(inv) = &self.inventory else {
            return Ok("default".into());
        };
        let names = inventory_tunnels(inv)?;
        match names.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(CliError::input(format!(
                "{}: no hosts, so no tunnel; give --tunnel NAME",
                inv.display()
            ))),
            many => Err(CliError::input(format!(
                "{} serves {} tunnels ({}); pick one with --tunnel NAME",
                inv.display(),
                many.len(),
                many.join(", ")
            ))),
        }
    }

    /// `<state_dir>/pki/<tunnel>` and the tunnel's name.
    pub fn dir(&self) -> Result<(PathBuf, String), CliError> {
        let tunnel = self.tunnel()?;
        if tunnel.is_empty()
            || !tunnel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || tunnel.starts_with('.')
        {
            return Err(CliError::input(format!(
                "--tunnel '{tunnel}': use letters, digits, '-', '_' and '.' only"
            )));
        }
        Ok((
            crate::ssh::config::expand_tilde(&self.state_dir)
                .join("pki")
                .join(&tunnel),
            tunnel,
        ))
    }
}

/// Runs `pki`.
pub async fn run(args: PkiArgs) -> Result<i32, CliError> {
    match args.cmd {
        PkiCmd::Init { loc, name, force } => {
            let (dir, tunnel) = loc.dir()?;
            let ca = Ca::init(&dir, &name, force).map_err(|e| CliError::input(e.to_string()))?;
            let info = ca.info().map_err(|e| CliError::input(e.to_string()))?;
            println!("CA for tunnel '{tunnel}' created in {}", dir.display());
            println!(
                "  certificate: {} (register this file in the Console)",
                dir.join("ca.crt").display()
            );
            println!(
                "  private key: {} (0600; never leaves this machine)",
                dir.join("ca.key").display()
            );
            println!(
                "  serial {}  valid until {} ({})",
                info.serial,
                info.not_after,
                relative_unix(info.not_after_unix)
            );
            Ok(EXIT_OK)
        }
        PkiCmd::Show { loc, json } => {
            let (dir, tunnel) = loc.dir()?;
            let ca = Ca::load(&dir).map_err(|e| {
                CliError::input(format!(
                    "tunnel '{tunnel}': {e} (hint: `tunnelfleet pki init --tunnel {tunnel}` makes one)"
                ))
            })?;
            let info = ca.info().map_err(|e| CliError::input(e.to_string()))?;
            let server: Option<CertInfo> = ca
                .stored_server()
                .ok()
                .flatten()
                .and_then(|c| cert_info(&c.cert_pem).ok());
            if json {
                let doc = serde_json::json!({
                    "tunnel": tunnel,
                    "dir": dir,
                    "ca": info,
                    "server": server,
                });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                print!(
                    "{}",
                    show_text(&tunnel, &dir, &info, server.as_ref(), chrono::Utc::now())
                );
            }
            Ok(EXIT_OK)
        }
    }
}

/// The readable summary of `pki show`.
fn show_text(
    tunnel: &str,
    dir: &Path,
    ca: &CertInfo,
    server: Option<&CertInfo>,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let rel = |unix: i64| {
        chrono::DateTime::from_timestamp(unix, 0)
            .map(|t| relative(now, t))
            .unwrap_or_default()
    };
    let mut out = format!("CA of tunnel '{tunnel}'\n");
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<12} {v}\n"));
    line(
        "subject",
        ca.subject_cn.clone().unwrap_or_else(|| "-".into()),
    );
    line("serial", ca.serial.clone());
    line(
        "valid",
        format!(
            "{} to {} ({})",
            ca.not_before,
            ca.not_after,
            rel(ca.not_after_unix)
        ),
    );
    line("sha256", ca.sha256.clone());
    line(
        "certificate",
        format!(
            "{} (register this file in the Console)",
            dir.join("ca.crt").display()
        ),
    );
    line(
        "private key",
        format!(
            "{} (never leaves this machine)",
            dir.join("ca.key").display()
        ),
    );
    match server {
        Some(s) => {
            line(
                "server cert",
                format!("serial {}, for {}", s.serial, s.dns_names.join(", ")),
            );
            line(
                "",
                format!("valid until {} ({})", s.not_after, rel(s.not_after_unix)),
            );
        }
        None => line("server cert", "none yet (deploy issues one)".into()),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_reads_like_a_summary() {
        let info = |serial: &str, cn: &str, after: i64| CertInfo {
            serial: serial.into(),
            subject_cn: Some(cn.into()),
            issuer_cn: None,
            dns_names: vec!["*.t.example.com".into()],
            is_ca: true,
            not_before: "2026-12-03T00:00:00Z".into(),
            not_before_unix: 1_796_256_000,
            not_after: "2036-12-01T00:00:00Z".into(),
            not_after_unix: after,
            sha256: "ab".repeat(32),
        };
        let now = chrono::DateTime::from_timestamp(1_796_256_000, 0).unwrap_or_default();
        let got = show_text(
            "tunnel_main",
            Path::new("/s/pki/tunnel_main"),
            &info("01ab", "tunnelfleet CA", 1_796_256_000 + 3650 * 86400),
            Some(&info(
                "02cd",
                "t.example.com",
                1_796_256_000 + 89 * 86400 + 60,
            )),
            now,
        );
        let want = format!(
            "CA of tunnel 'tunnel_main'
  subject      tunnelfleet CA
  serial       01ab
  valid        2026-12-03T00:00:00Z to 2036-12-01T00:00:00Z (in 3650d)
  sha256       {}
  certificate  /s/pki/tunnel_main/ca.crt (register this file in the Console)
  private key  /s/pki/tunnel_main/ca.key (never leaves this machine)
  server cert  serial 02cd, for *.t.example.com
               valid until 2036-12-01T00:00:00Z (in 89d)
",
            "ab".repeat(32)
        );
        assert_eq!(got, want);
    }
}
