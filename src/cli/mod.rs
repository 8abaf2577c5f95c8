//! Command-line verbs. One file per verb: each builds its work, hands it to the lower layers,
//! and renders a recap or `--json`. Exit codes: 0 all hosts ok, 1 some host failed, 2 bad
//! input (nothing was touched), 3 the run could not start (e.g. lock held).

mod check;
mod common;
mod deploy;
mod engine_report;
mod init;
mod inventory_cmd;
pub mod pki;
pub mod progress;
mod releases;
mod renew;
mod rollback;
mod rotate;
mod run_playbook;
mod staged;
mod status;
mod unlock;

use clap::{Parser, Subcommand};

pub use common::{ConnArgs, parse_duration};

/// Exit code: every host succeeded.
pub const EXIT_OK: i32 = 0;
/// Exit code: at least one host failed.
pub const EXIT_HOST_FAILED: i32 = 1;
/// Exit code: bad input (inventory, flag, token, certificate); no host was touched.
pub const EXIT_BAD_INPUT: i32 = 2;

/// tunnelfleet: run the MCP tunnel stack (mcp-proxy + cloudflared) on a fleet of hosts over SSH.
#[derive(Parser, Debug)]
#[command(name = "tunnelfleet", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect to every selected host and report what a deploy needs (reachability, auth,
    /// host key, OS, Docker Compose, deploy dir, disk, clock).
    Check(check::CheckArgs),
    /// Deploy the stack, the shared token and certificates to every selected host,
    /// health-gated; `--check` prints each host's plan and touches nothing.
    Deploy(deploy::DeployArgs),
    /// Scaffold an operator's project: inventory, the stack to review, .gitignore.
    Init(init::InitArgs),
    /// Show the inventory as tunnelfleet resolves it.
    Inventory(inventory_cmd::InventoryArgs),
    /// Rotate the tunnel token on every host: persist it everywhere at once, then move
    /// connectors make-before-break, canary first; `--resume` finishes an interrupted one.
    RotateToken(rotate::RotateArgs),
    /// Renew the shared server certificate when it is close to expiry and put it on every
    /// host (no restart: the proxy reloads it).
    RenewCert(renew::RenewArgs),
    /// Take hosts back to their previous release (or --to RELEASE), staged and gated like a
    /// deploy.
    Rollback(rollback::RollbackArgs),
    /// Show the releases each host keeps: current, previous, when and by whom, images, config.
    Releases(releases::ReleasesArgs),
    /// Run an operator's own playbook with tunnelfleet's typed steps.
    Run(run_playbook::RunArgs),
    /// Show what each host runs: release, drift, token fingerprint, certificate, containers,
    /// connector readiness.
    Status(status::StatusArgs),
    /// Remove the fleet lock left by a dead operation (shows the holder it removes).
    Unlock(unlock::UnlockArgs),
    /// Manage the controller's CA for the tunnel's server certificates.
    Pki(pki::PkiArgs),
}

/// An error that stops a verb before or during its run, mapped to an exit code by [`main`].
#[derive(Debug)]
pub struct CliError {
    /// The exit code to use.
    pub code: i32,
    /// The message (no secrets).
    pub message: String,
}

impl CliError {
    /// Bad input: exit 2.
    pub fn input(message: impl Into<String>) -> Self {
        CliError {
            code: EXIT_BAD_INPUT,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Entry point used by the binary: parses arguments, runs the verb, returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_BAD_INPUT } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tunnelfleet: cannot start the async runtime: {e}");
            return 3;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Check(a) => check::run(a).await,
            Command::Deploy(a) => deploy::run(a).await,
            Command::Init(a) => init::run(a).await,
            Command::Inventory(a) => inventory_cmd::run(a).await,
            Command::Pki(a) => pki::run(a).await,
            Command::Status(a) => status::run(a).await,
            Command::RotateToken(a) => rotate::run(a).await,
            Command::RenewCert(a) => renew::run(a).await,
            Command::Run(a) => run_playbook::run(a).await,
            Command::Rollback(a) => rollback::run(a).await,
            Command::Releases(a) => releases::run(a).await,
            Command::Unlock(a) => unlock::run(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tunnelfleet: {}", e.message);
            e.code
        }
    }
}
