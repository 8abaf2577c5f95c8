//! Command-line verbs. One file per verb: each builds its work, hands it to the lower layers,
//! and renders a recap or `--json`. Exit codes: 0 all hosts ok, 1 some host failed, 2 bad
//! input (nothing was touched), 3 the run could not start (e.g. lock held), 141 the output
//! was closed early. Global flags (`--color`, `-q`, `-v`) set [`style`]; tables and grouping
//! are in [`render`], progress in [`progress`]; an optional `tunnelfleet.toml` supplies the
//! defaults of `-i` and `--state-dir`.

mod audit;
mod check;
mod common;
mod config;
mod deploy;
mod engine_report;
mod init;
mod inventory_cmd;
pub mod pki;
pub mod progress;
mod releases;
pub mod render;
mod renew;
mod rollback;
mod rotate;
mod run_playbook;
mod staged;
mod status;
pub mod style;
mod unlock;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub use common::{ConnArgs, parse_duration};

/// Exit code: every host succeeded.
pub const EXIT_OK: i32 = 0;
/// Exit code: at least one host failed.
pub const EXIT_HOST_FAILED: i32 = 1;
/// Exit code: bad input (inventory, flag, token, certificate); no host was touched.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code: stdout or stderr was closed early (e.g. piped into `head`), as a Unix tool
/// killed by SIGPIPE reports (128 + 13).
pub const EXIT_BROKEN_PIPE: i32 = 141;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    every host ok
  1    some host failed (or was rolled back)
  2    bad input (nothing was touched)
  3    the run could not start (another run holds the controller's lock)
  130  interrupted (Ctrl-C or SIGTERM; the recap names the command that finishes the job)
  141  the output was closed early (e.g. piped into head)

Project file: tunnelfleet.toml in the current directory may set `inventory` and `state_dir`
(a flag or TUNNELFLEET_INVENTORY / TUNNELFLEET_STATE_DIR wins over it).";

/// tunnelfleet: run the MCP tunnel stack (mcp-proxy + cloudflared) on a fleet of hosts over SSH.
#[derive(Parser, Debug)]
#[command(
    name = "tunnelfleet",
    version,
    about,
    long_about = None,
    before_help = "Start here: `tunnelfleet init DIR`, then the verbs below in order (pki init, check, deploy --check, deploy, status).",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// Colour the output: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, global = true, value_enum, default_value_t = style::ColorChoice::Auto)]
    color: style::ColorChoice,
    /// Quiet: no progress, the recap and errors only.
    #[arg(short = 'q', long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More output: -v says which files were read and prints every host event; -vv also
    /// every remote command (secrets are never in them, and redacted anyway).
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Scaffold an operator's project: inventory, the stack to review, .gitignore,
    /// tunnelfleet.toml.
    Init(init::InitArgs),
    /// Manage the controller's CA for the tunnel's server certificates.
    Pki(pki::PkiArgs),
    /// Connect to every selected host and report what a deploy needs (reachability, auth,
    /// host key, OS, Docker Compose, deploy dir, disk, clock).
    Check(check::CheckArgs),
    /// Show the inventory as tunnelfleet resolves it.
    Inventory(inventory_cmd::InventoryArgs),
    /// Deploy the stack, the shared token and certificates to every selected host,
    /// health-gated; `--check` prints each host's plan and touches nothing.
    Deploy(deploy::DeployArgs),
    /// Show what each host runs: release, drift, token fingerprint, certificate, containers,
    /// connector readiness.
    Status(status::StatusArgs),
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
    /// The fleet's history: the controller's audit log merged with every host's.
    Audit(audit::AuditArgs),
    /// Remove the fleet lock left by a dead operation (shows the holder it removes).
    Unlock(unlock::UnlockArgs),
    /// Print a shell completion script: `tunnelfleet completions bash > /etc/bash_completion.d/tunnelfleet`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the man page (roff) on stdout: `tunnelfleet man | man -l -`.
    Man,
}

/// Shells `completions` writes for.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
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

impl From<crate::ops::OpError> for CliError {
    fn from(e: crate::ops::OpError) -> Self {
        CliError {
            code: e.code,
            message: e.message,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Makes a write to a closed stdout or stderr (`tunnelfleet inventory --list | head -1`) end
/// the process quietly with [`EXIT_BROKEN_PIPE`], as a Unix tool killed by SIGPIPE does,
/// instead of panicking (exit 101). SIGPIPE itself stays ignored, so a closed SSH or agent
/// socket is still an error the run handles, not a silent death.
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if is_broken_pipe_panic(msg) {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        default(info);
    }));
}

/// Whether a panic message is std's "failed printing to stdout/stderr: Broken pipe".
fn is_broken_pipe_panic(msg: &str) -> bool {
    msg.starts_with("failed printing to std")
        && (msg.contains("Broken pipe") || msg.contains("os error 32"))
}

/// Entry point used by the binary: parses arguments, runs the verb, returns the exit code.
pub fn main() -> i32 {
    exit_quietly_on_broken_pipe();
    let project = std::env::current_dir()
        .map_err(|e| format!("the current directory: {e}"))
        .and_then(|d| config::load(&d));
    let mut cmd = Cli::command();
    if let Ok(Some(cfg)) = &project {
        cmd = config::apply(cmd, cfg);
    }
    let cli = match cmd
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(c) => c,
        Err(e) => {
            // A broken project file explains a missing -i better than clap can.
            if let (Err(pe), true) = (&project, e.use_stderr()) {
                eprintln!("tunnelfleet: {pe}");
                return EXIT_BAD_INPUT;
            }
            let code = if e.use_stderr() { EXIT_BAD_INPUT } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    style::init(cli.color, cli.quiet, cli.verbose);
    match &cli.command {
        Command::Completions { shell } => return completions(*shell),
        Command::Man => return man_page(),
        _ => {}
    }
    match &project {
        Err(e) => {
            eprintln!("tunnelfleet: {e}");
            return EXIT_BAD_INPUT;
        }
        Ok(Some(cfg)) if style::verbosity() >= style::Verbosity::Verbose => {
            eprintln!("{}", config::describe(cfg));
        }
        _ => {}
    }
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
            Command::Audit(a) => audit::run(a).await,
            Command::Unlock(a) => unlock::run(a).await,
            Command::Completions { .. } | Command::Man => Ok(EXIT_OK),
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

/// Writes the completion script for `shell` on stdout.
fn completions(shell: CompletionShell) -> i32 {
    let mut cmd = Cli::command();
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "tunnelfleet", &mut script);
    write_stdout(&script)
}

/// Writes `bytes` on stdout: a closed pipe ends quietly.
fn write_stdout(bytes: &[u8]) -> i32 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Ok(()) => EXIT_OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_BROKEN_PIPE,
        Err(e) => {
            eprintln!("tunnelfleet: write to stdout: {e}");
            EXIT_HOST_FAILED
        }
    }
}

/// Text safe as a roff paragraph line (no leading `.` or `'`, backslashes escaped).
fn roff_text(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('\n', " ");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// Writes the man page on stdout.
fn man_page() -> i32 {
    let cmd = Cli::command();
    let mut page = Vec::new();
    if let Err(e) = clap_mangen::Man::new(cmd.clone()).render(&mut page) {
        eprintln!("tunnelfleet: render the man page: {e}");
        return EXIT_HOST_FAILED;
    }
    // One page for the whole tool: each verb's options follow as a section.
    for sc in cmd.get_subcommands() {
        let name = format!("tunnelfleet {}", sc.get_name());
        page.extend_from_slice(format!(".SH \"{}\"\n", name.to_uppercase()).as_bytes());
        if let Some(about) = sc.get_about() {
            page.extend_from_slice(format!("{}\n", roff_text(&about.to_string())).as_bytes());
        }
        // clap wants a 'static name; the process ends right after printing.
        let man = clap_mangen::Man::new(sc.clone().name(&*Box::leak(name.into_boxed_str())));
        let _ = man.render_synopsis_section(&mut page);
        let _ = man.render_options_section(&mut page);
    }
    write_stdout(&page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn broken_pipe_panics_are_recognised() {
        assert!(is_broken_pipe_panic(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(!is_broken_pipe_panic("index out of bounds"));
    }
}
