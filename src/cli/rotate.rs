//! `tunnelfleet rotate-token`: flags in, the report out. The rotation itself (preflight,
//! token, persist, connectors, retire, journal, report) is `crate::ops::rotate`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Args;

use super::common::{ConnArgs, StateArgs, parse_duration};
use super::deploy::{TokenArgs, load_inputs};
use super::progress::{Progress, table};
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK};
use crate::ops::rotate::{
    self, RotateInputs, RotateOptions, RotateOutcome, RotateReport, RotateUi,
};
use crate::rollout::{BatchSize, Reporter, StopHandle};
use crate::secrets::{Secret, TunnelsApi, validate_tunnel_token};

/// Flags of `rotate-token`.
#[derive(Args, Debug)]
pub struct RotateArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    token: TokenArgs,
    /// Fetch the new token from the Tunnels API: its base URL (e.g. https://api.anthropic.com).
    #[arg(long, value_name = "URL", requires = "tunnel_id")]
    api_base: Option<String>,
    /// The tunnel id (tnl_...) for the Tunnels API.
    #[arg(long, value_name = "ID")]
    tunnel_id: Option<String>,
    /// File holding the Tunnels API credential (refused when group or others can read it).
    #[arg(long, value_name = "FILE", env = "TUNNELFLEET_API_CREDENTIAL_FILE")]
    api_credential_file: Option<PathBuf>,
    /// Get the new token from the setup component: `docker compose run --rm setup` with
    /// --token-version bumped on one host, data/tunnel-token read back and sent to the others.
    #[arg(long, conflicts_with_all = ["api_base", "token_file", "token_stdin"])]
    from_setup: bool,
    /// The host that runs the setup component (default: the first host that passed preflight).
    #[arg(long, value_name = "HOST", requires = "from_setup")]
    setup_host: Option<String>,
    /// File holding a fresh OIDC identity token for the setup component (else
    /// ANTHROPIC_IDENTITY_TOKEN, else the inventory's setup_identity_token_command).
    #[arg(long, value_name = "FILE", requires = "from_setup")]
    identity_token_file: Option<PathBuf>,
    #[command(flatten)]
    state: StateArgs,
    /// Move connectors in batches: a canary host, then this many hosts at a time (N or P%;
    /// default: every host at once without a canary, or one at a time with --in-place).
    #[arg(long, value_parser = parse_batch)]
    batch: Option<BatchSize>,
    /// Recreate each connector in place instead of make-before-break (for hosts that cannot
    /// run two connectors); the host is without a ready connector until the new one is.
    #[arg(long)]
    in_place: bool,
    /// Go ahead when some hosts are unreachable or unhealthy; they are recorded as pending
    /// for --resume.
    #[arg(long)]
    allow_down: bool,
    /// Finish the last unfinished rotation: only the hosts not yet on the new token.
    #[arg(long)]
    resume: bool,
    /// Wait this long for another operation's fleet lock.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    lock_wait: Duration,
    /// How long a new connector may take to become ready (default: the playbook's, 60s).
    #[arg(long, value_parser = parse_duration)]
    gate_timeout: Option<Duration>,
    /// Print one JSON document on stdout instead of the report.
    #[arg(long)]
    json: bool,
}

fn parse_batch(s: &str) -> Result<BatchSize, String> {
    s.parse()
}

/// The rotation's operator side: the progress display (made once the hosts are known), the
/// terminal prompt for the token, and notices on stderr.
#[derive(Default)]
struct Ui {
    progress: OnceLock<Progress>,
}

impl Reporter for Ui {
    fn step(&self, host: &str, phase: &str, step: &str) {
        if let Some(p) = self.progress.get() {
            Reporter::step(p, host, phase, step);
        }
    }
    fn host_done(&self, host: &str, phase: &str, ok: bool, msg: &str) {
        if let Some(p) = self.progress.get() {
            Reporter::host_done(p, host, phase, ok, msg);
        }
    }
    fn batch(&self, phase: &str, index: usize, count: usize, hosts: &[String]) {
        if let Some(p) = self.progress.get() {
            Reporter::batch(p, phase, index, count, hosts);
        }
    }
}

impl RotateUi for Ui {
    fn arm(&self, stop: &StopHandle) {
        super::staged::install_interrupt(stop.clone(), "tunnelfleet rotate-token --resume");
    }
    fn begin(&self, tunnel: &str, hosts: &[String]) {
        let _ = self.progress.set(Progress::for_tunnels(
            "rotate-token",
            std::slice::from_ref(&tunnel.to_string()),
            hosts,
        ));
    }
    fn finish(&self) {
        if let Some(p) = self.progress.get() {
            p.finish();
        }
    }
    fn prompt_token(&self, tunnel: &str, hosts: usize) -> Option<Result<Secret, String>> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        let ask = || token_from_tty(tunnel, hosts);
        Some(match self.progress.get() {
            Some(p) => p.suspend(ask),
            None => ask(),
        })
    }
    fn notice(&self, line: &str) {
        eprintln!("{line}");
    }
}

fn token_from_tty(tunnel: &str, hosts: usize) -> Result<Secret, String> {
    eprintln!(
        "Preflight passed on {hosts} host(s), all locked. Rotate the token of tunnel '{tunnel}' \
         in the Console now (the old token stops working at once), then paste the new token."
    );
    let t = rpassword::prompt_password("New tunnel token (not echoed): ")
        .map_err(|e| format!("read the token: {e}"))?;
    let t = t.trim().to_string();
    validate_tunnel_token(&t).map_err(|e| format!("the pasted token: {e}"))?;
    Ok(Secret::new(t))
}

/// Runs `rotate-token`.
pub async fn run(args: RotateArgs) -> Result<i32, CliError> {
    let state_dir = crate::ssh::config::expand_tilde(&args.state.state_dir);
    let explicit = args.token.flag_or_env();
    if explicit.is_some() && (args.api_base.is_some() || args.from_setup) {
        return Err(CliError::input(
            "give the new token one way: --token-file/--token-stdin/TUNNEL_TOKEN, --api-base, or --from-setup",
        ));
    }
    // Load the token before touching anything when it is already at hand (file, stdin,
    // environment, command); the API and the guided prompt come after preflight, right
    // before the old token is invalidated.
    let early: Option<Secret> = match &explicit {
        Some(s) => Some(
            s.load()
                .await
                .map_err(|e| CliError::input(format!("new token from {s}: {e}")))?,
        ),
        None => None,
    };
    let (_inv, hosts) = args.conn.select().await?;
    // Inputs without a token yet: each host's .env is rendered once the token is in hand.
    let (tunnels, inputs) = load_inputs(hosts, None, &args.state.state_dir, false).await?;
    let connector = args.conn.connector()?;
    let stop = super::staged::shared_stop();
    let opts = RotateOptions {
        api: args.api_base.clone().map(|base| TunnelsApi {
            base,
            tunnel_id: args.tunnel_id.clone(),
            credential_file: args.api_credential_file.clone(),
        }),
        from_setup: args.from_setup,
        setup_host: args.setup_host.clone(),
        identity_token_file: args.identity_token_file.clone(),
        batch: args.batch,
        in_place: args.in_place,
        allow_down: args.allow_down,
        resume: args.resume,
        lock_wait: args.lock_wait,
        gate_timeout: args.gate_timeout,
        stop: stop.clone(),
    };
    let inputs = RotateInputs {
        tunnels,
        hosts: inputs,
        new_token: early,
        state_dir,
        connector,
    };
    let ui = Ui::default();
    let report = match rotate::run(inputs, opts, &ui).await.map_err(|e| CliError {
        code: e.code,
        message: e.message,
    })? {
        RotateOutcome::AlreadyComplete {
            op_id,
            new_token_fp,
        } => {
            println!(
                "rotation {op_id} is complete: every host is on token {}",
                new_token_fp.as_deref().unwrap_or("?")
            );
            return Ok(EXIT_OK);
        }
        RotateOutcome::PreflightFailed(failed) => {
            eprintln!(
                "preflight failed; nothing was changed on any host (locks released):\n  {}\n\
                 fix those hosts, exclude them with --limit, or go ahead with --allow-down (they stay pending for --resume)",
                failed.join("\n  ")
            );
            return Ok(EXIT_HOST_FAILED);
        }
        RotateOutcome::Ran(r) => r,
    };
    render(&report, args.json);
    Ok(if report.interrupted {
        super::staged::EXIT_INTERRUPTED
    } else if report.complete {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}

/// Prints the report: one JSON document, or the table and the window line.
fn render(report: &RotateReport, json: bool) {
    let rows = &report.hosts;
    let new_fp = &report.new_token_fp;
    let window_ms = report.exposure_window_ms;
    if json {
        let doc = serde_json::json!({
            "op_id": report.op_id,
            "tunnel": report.tunnel,
            "new_token_fingerprint": new_fp,
            "exposure_window_ms": window_ms,
            "window_from": if report.window_from_setup { "setup_started" } else { "token_in_hand" },
            "window_start_unix_ms": report.window_start_unix_ms,
            "fewest_ready_hosts": report.fewest_ready,
            "hosts": rows,
            "complete": report.complete,
            "halted": report.halted,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    let ms = |v: Option<u64>| v.map(|x| format!("{x} ms")).unwrap_or_else(|| "-".into());
    let trows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                if r.ok {
                    "ok".into()
                } else {
                    r.status.to_uppercase()
                },
                ms(r.rotation.persisted_ms),
                ms(r.rotation.new_ready_ms),
                ms(r.rotation.old_stopped_ms),
                match (&r.error, &r.hint) {
                    (Some(e), Some(h)) => format!("{e} (hint: {h})"),
                    (Some(e), None) => e.clone(),
                    _ => r.rotation.new_connector_id.clone().unwrap_or_default(),
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "HOST",
                "STATUS",
                "PERSISTED",
                "NEW READY",
                "OLD STOPPED",
                "DETAIL"
            ],
            &trows
        )
    );
    println!(
        "token {new_fp}: exposure window {} ({} -> last host on it); fewest ready hosts {}/{}",
        ms(window_ms),
        if report.window_from_setup {
            "setup component started"
        } else {
            "new token in hand"
        },
        report.fewest_ready,
        report.host_count
    );
    if let Some(h) = &report.halted {
        println!("halted: {h}");
    }
    if report.interrupted {
        println!(
            "interrupted: the fleet locks are released; run `tunnelfleet rotate-token --resume` (with the same token) to finish"
        );
    } else if !report.complete {
        println!(
            "not complete: fix what is reported, then run: tunnelfleet rotate-token --resume (with the same token)"
        );
    }
}
