//! `tunnelfleet rotate-token`: the new token on every host, connectors moved
//! make-before-break on every host at once (canary first with --in-place), with a journal for `--resume` and a report of the
//! exposure window.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::common::{ConnArgs, StateArgs, parse_duration};
use super::deploy::{TokenArgs, load_inputs};
use super::progress::{Progress, table};
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK};
use crate::ops::deploy::StackHost;
use crate::ops::rotate::{RotationState, register_rotation_steps};
use crate::playbook::{Playbook, StepRegistry};
use crate::rollout::{BatchSize, Engine, HostCtx, HostStatus, Journal, Phase, Strategy, new_op_id};
use crate::secrets::{Secret, TokenSource, validate_tunnel_token};
use crate::state::StateDir;

/// The built-in rotation playbook (playbooks/rotate-token.yaml, compiled in).
pub const ROTATE_PLAYBOOK: &str = include_str!("../../playbooks/rotate-token.yaml");

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

/// What the journal directory keeps about a rotation besides the engine's step records:
/// which token it rotates to (its fingerprint only) and which hosts it covers.
#[derive(Debug, Serialize, serde::Deserialize)]
struct OpRecord {
    op_id: String,
    tunnel: String,
    new_token_fp: Option<String>,
    hosts: Vec<String>,
    started: String,
    /// The host whose setup component produced the new token, and the version it ran with
    /// (a resumed run reads the token back there instead of rotating again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    setup_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    setup_version: Option<u32>,
}

#[derive(Debug, Serialize)]
struct HostReport {
    name: String,
    ok: bool,
    status: String,
    error: Option<String>,
    hint: Option<String>,
    #[serde(flatten)]
    rotation: RotationState,
}

fn read_setup_version(state: &StateDir, tunnel: &str) -> Option<u32> {
    std::fs::read_to_string(state.setup_version(tunnel))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The journal and operation record of a tunnel's rotation (`status` reads them too).
pub(crate) fn journal_paths(state_dir: &Path, tunnel: &str) -> (PathBuf, PathBuf) {
    let state = StateDir::new(state_dir);
    (
        state.journal("rotate", tunnel),
        state.op_record("rotate", tunnel),
    )
}

async fn token_from_api(args: &RotateArgs) -> Result<Secret, CliError> {
    let (Some(base), Some(id)) = (&args.api_base, &args.tunnel_id) else {
        return Err(CliError::input("--api-base needs --tunnel-id"));
    };
    let cred_file = args.api_credential_file.clone().ok_or_else(|| {
        CliError::input(
            "--api-base needs --api-credential-file (or TUNNELFLEET_API_CREDENTIAL_FILE)",
        )
    })?;
    let cred = TokenSource::File(cred_file.clone())
        .load_raw()
        .await
        .map_err(|e| CliError::input(format!("API credential: {e}")))?;
    let url = format!(
        "{}/v1/organizations/tunnels/{}/reveal_token",
        base.trim_end_matches('/'),
        id
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| CliError::input(format!("Tunnels API client: {e}")))?;
    let resp = client
        .post(&url)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "mcp-tunnels-2026-05-19")
        .bearer_auth(cred.expose())
        .send()
        .await
        .map_err(|e| CliError::input(format!("Tunnels API {url}: {}", e.without_url())))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.map_err(|e| {
        CliError::input(format!("Tunnels API {url}: not JSON ({})", e.without_url()))
    })?;
    if !status.is_success() {
        let msg = body["error"]["message"].as_str().unwrap_or("no message");
        return Err(CliError::input(format!(
            "Tunnels API {url}: HTTP {status}: {msg}"
        )));
    }
    let token = body["tunnel_token"].as_str().ok_or_else(|| {
        CliError::input(format!("Tunnels API {url}: the answer has no tunnel_token"))
    })?;
    validate_tunnel_token(token).map_err(|e| CliError::input(format!("Tunnels API token: {e}")))?;
    Ok(Secret::new(token.to_string()))
}

/// The OIDC identity token for the setup component: --identity-token-file, else
/// ANTHROPIC_IDENTITY_TOKEN, else the inventory's setup_identity_token_command.
async fn identity_token(
    args: &RotateArgs,
    setup: &crate::stack::SetupSettings,
) -> Result<Secret, CliError> {
    let source = if let Some(f) = &args.identity_token_file {
        TokenSource::File(f.clone())
    } else if std::env::var_os("ANTHROPIC_IDENTITY_TOKEN").is_some() {
        TokenSource::Env("ANTHROPIC_IDENTITY_TOKEN".into())
    } else if let Some(c) = &setup.identity_token_command {
        TokenSource::Command(c.clone())
    } else {
        return Err(CliError::input(
            "--from-setup needs a fresh OIDC identity token for the setup component: \
             --identity-token-file F, ANTHROPIC_IDENTITY_TOKEN, or setup_identity_token_command in the inventory",
        ));
    };
    let t = source
        .load_raw()
        .await
        .map_err(|e| CliError::input(format!("identity token from {source}: {e}")))?;
    crate::secrets::validate_identity_token(t.expose())
        .map_err(|e| CliError::input(format!("identity token from {source}: {e}")))?;
    Ok(t)
}

/// The new token from the setup component: run it (bumped --token-version) on the chosen
/// host, or, resuming, read back what it wrote. Returns the token, the host and the version.
async fn token_from_setup(
    args: &RotateArgs,
    pre: &crate::rollout::RolloutReport<StackHost>,
    identity: Option<&Secret>,
    resume: Option<&(String, Option<u32>)>,
    reader: Option<crate::ops::deploy::HostInput>,
    connector: &std::sync::Arc<crate::ssh::Connector>,
    known_version: Option<u32>,
) -> Result<(Secret, String, Option<u32>), String> {
    let passed = |name: &str| {
        pre.hosts
            .iter()
            .any(|h| h.host == name && h.status == HostStatus::Ok)
    };
    if let Some((host, _)) = resume {
        let got = if let Some(input) = reader {
            // The setup host finished its own rotation: a connection just to read the token.
            let session = connector
                .connect(&input.host.target)
                .await
                .map_err(|e| format!("{host}: {}", e.message))?;
            let mut ctx = StackHost::new(input, connector.clone(), "rotate-token", false);
            ctx.session = Some(std::sync::Arc::new(session));
            crate::ops::setup::read_token(&ctx).await?
        } else {
            let ctx = pre
                .contexts
                .iter()
                .find(|c| c.name() == host && passed(host))
                .ok_or_else(|| {
                    format!(
                        "{host}: the setup component made this rotation's token there, and the host \
                         is not reachable now; bring it back and resume again"
                    )
                })?;
            crate::ops::setup::read_token(ctx).await?
        };
        return Ok((got.token, host.clone(), got.version));
    }
    let ctx = match &args.setup_host {
        Some(name) => pre
            .contexts
            .iter()
            .find(|c| c.name() == name && passed(name))
            .ok_or_else(|| format!("--setup-host {name}: the host did not pass preflight"))?,
        None => pre
            .contexts
            .iter()
            .find(|c| passed(c.name()))
            .ok_or_else(|| "no host passed preflight to run the setup component".to_string())?,
    };
    let identity = identity.ok_or_else(|| "no identity token (internal)".to_string())?;
    let got = crate::ops::setup::rotate_token(ctx, identity, known_version).await?;
    Ok((got.token, ctx.name().to_string(), got.version))
}

fn token_from_tty(tunnel: &str, hosts: usize) -> Result<Secret, CliError> {
    eprintln!(
        "Preflight passed on {hosts} host(s), all locked. Rotate the token of tunnel '{tunnel}' \
         in the Console now (the old token stops working at once), then paste the new token."
    );
    let t = rpassword::prompt_password("New tunnel token (not echoed): ")
        .map_err(|e| CliError::input(format!("read the token: {e}")))?;
    let t = t.trim().to_string();
    validate_tunnel_token(&t).map_err(|e| CliError::input(format!("the pasted token: {e}")))?;
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
    let (tunnels, mut inputs) = load_inputs(hosts, None, &args.state.state_dir, false).await?;
    if tunnels.len() != 1 {
        let names: Vec<&String> = tunnels.keys().collect();
        return Err(CliError::input(format!(
            "rotate one tunnel at a time: the selected hosts serve {} tunnels ({names:?}); use --limit",
            tunnels.len()
        )));
    }
    let tunnel = tunnels.keys().next().cloned().unwrap_or_default();
    let setup_settings = inputs.first().and_then(|i| i.settings.setup.clone());
    if args.from_setup && setup_settings.is_none() {
        return Err(CliError::input(format!(
            "--from-setup: tunnel '{tunnel}' has no setup component configured (set setup_tunnel_id, \
             setup_federation_rule_id and setup_organization_id in the inventory, then deploy)"
        )));
    }
    if let Some(name) = &args.setup_host
        && !inputs.iter().any(|i| &i.host.name == name)
    {
        return Err(CliError::input(format!(
            "--setup-host {name}: not one of the selected hosts of tunnel '{tunnel}'"
        )));
    }
    let state = StateDir::new(&state_dir);
    state
        .ensure_journal_dir()
        .map_err(|e| CliError::input(format!("{}: {e}", state.journal_dir().display())))?;
    let (journal_path, op_path) = (
        state.journal("rotate", &tunnel),
        state.op_record("rotate", &tunnel),
    );
    // One rotation per tunnel per controller: the op record and journal are this tunnel's.
    let _controller_lock = controller_lock(&state, &tunnel, args.lock_wait).await?;
    // A rotation the controller left mid-run (killed, interrupted) holds locks under its op
    // id and has a token on some hosts: a new one would lose track of both.
    if !args.resume
        && let Ok(Some(p)) = Journal::pending_op(&journal_path)
        && matches!(p.ended, None | Some(crate::rollout::OpStatus::Stopped))
    {
        return Err(CliError::input(format!(
            "rotation {} of tunnel '{tunnel}' did not finish (the controller {}): run \
             `tunnelfleet rotate-token --resume` with the same token to finish it",
            p.op_id,
            if p.ended.is_some() {
                "was interrupted"
            } else {
                "died or was killed"
            }
        )));
    }
    let stop = super::staged::shared_stop();
    super::staged::install_interrupt(stop.clone(), "tunnelfleet rotate-token --resume");

    // Resume: the unfinished operation, its token fingerprint, and only its pending hosts.
    let mut resume_setup: Option<(String, Option<u32>)> = None;
    let mut setup_reader: Option<crate::ops::deploy::HostInput> = None;
    let (op_id, resume_fp, all_hosts) = if args.resume {
        let text = std::fs::read_to_string(&op_path).map_err(|_| {
            CliError::input(format!(
                "no rotation to resume for tunnel '{tunnel}' (no {})",
                op_path.display()
            ))
        })?;
        let rec: OpRecord = serde_json::from_str(&text)
            .map_err(|e| CliError::input(format!("{}: {e}", op_path.display())))?;
        let log = Journal::load(&journal_path)
            .map_err(|e| CliError::input(format!("{}: {e}", journal_path.display())))?;
        let pending: Vec<String> = rec
            .hosts
            .iter()
            .filter(|h| !log.is_done(&rec.op_id, h, "retire", "stop_old"))
            .cloned()
            .collect();
        if let (Some(host), Some(_)) = (&rec.setup_host, rec.setup_version) {
            // The setup component already made the new token there: read it back, even when
            // that host itself is done.
            resume_setup = Some((host.clone(), rec.setup_version));
            if !pending.contains(host) {
                setup_reader = inputs
                    .iter()
                    .position(|i| &i.host.name == host)
                    .map(|p| inputs.remove(p));
            }
        } else if args.from_setup && rec.new_token_fp.is_some() {
            // Running the component now would rotate the token again under a rotation that
            // is halfway to another one.
            return Err(CliError::input(format!(
                "--resume --from-setup: rotation {} moves to token {} which did not come from the \
                 setup component; resume it with the token it started with (--token-file, \
                 --token-stdin, TUNNEL_TOKEN or --api-base)",
                rec.op_id,
                rec.new_token_fp.as_deref().unwrap_or("?")
            )));
        }
        inputs.retain(|i| pending.contains(&i.host.name));
        if inputs.is_empty() {
            println!(
                "rotation {} is complete: every host is on token {}",
                rec.op_id,
                rec.new_token_fp.as_deref().unwrap_or("?")
            );
            let _ = std::fs::remove_file(&op_path);
            return Ok(EXIT_OK);
        }
        (rec.op_id, rec.new_token_fp, rec.hosts)
    } else {
        let names = inputs.iter().map(|i| i.host.name.clone()).collect();
        (new_op_id(), None, names)
    };
    // The identity token for the setup component, checked before any host is touched.
    let identity = match &setup_settings {
        Some(setup) if args.from_setup && resume_setup.is_none() => {
            Some(identity_token(&args, setup).await?)
        }
        _ => None,
    };
    if let (Some(fp), Some(t)) = (&resume_fp, &early)
        && &t.fingerprint() != fp
    {
        return Err(CliError::input(format!(
            "--resume finishes the rotation to token {fp}, but the token given is {}",
            t.fingerprint()
        )));
    }

    // Record the operation before any host is touched (locks included), so that a run
    // killed at any point can be resumed: the resumed run recognises its own locks by op id.
    let mut rec = OpRecord {
        op_id: op_id.clone(),
        tunnel: tunnel.clone(),
        new_token_fp: resume_fp
            .clone()
            .or(early.as_ref().map(Secret::fingerprint)),
        hosts: all_hosts,
        started: crate::ops::deploy::now_rfc3339(),
        setup_host: resume_setup.as_ref().map(|(h, _)| h.clone()),
        setup_version: resume_setup.as_ref().and_then(|(_, v)| *v),
    };
    if let Some(d) = op_path.parent() {
        std::fs::create_dir_all(d).map_err(|e| CliError::input(format!("{}: {e}", d.display())))?;
    }
    write_private(
        &op_path,
        &serde_json::to_string_pretty(&rec).unwrap_or_default(),
    )?;

    let connector = args.conn.connector()?;
    let mut registry = StepRegistry::new();
    register_rotation_steps(&mut registry, &op_id, args.lock_wait, args.gate_timeout);
    let playbook = Playbook::from_str(
        ROTATE_PLAYBOOK,
        Path::new("playbooks/rotate-token.yaml"),
        &registry,
    )
    .map_err(|e| CliError::input(format!("built-in playbook: {e}")))?;
    let mut phases: Vec<Phase<StackHost>> = playbook.into_phases();
    for p in phases
        .iter_mut()
        .filter(|p| p.name == "preflight" || p.name == "lock")
    {
        if args.allow_down {
            p.max_unavailable = usize::MAX;
        }
    }
    if let Some(p) = phases.iter_mut().find(|p| p.name == "preflight")
        && args.resume
    {
        // A host left mid-rotation may have no ready connector (that is what resuming
        // fixes): reachable, facts read and locked is enough.
        let facts = registry
            .build("facts", &serde_json::Value::Null)
            .and_then(Result::ok)
            .ok_or_else(|| CliError::input("internal: no facts step"))?;
        p.steps = p
            .steps
            .iter()
            .map(|s| {
                if s.name() == "healthy" {
                    facts.clone()
                } else {
                    s.clone()
                }
            })
            .collect();
    }
    if let Some(p) = phases.iter_mut().find(|p| p.name == "connectors") {
        // Make-before-break: every host at once (a refused token harms nothing, the old
        // connectors keep serving); a canary only when capacity is at stake (--in-place) or
        // when the operator asks for batches.
        p.strategy = match (args.in_place, args.batch) {
            (false, None) => Strategy::Parallel,
            (true, None) => Strategy::Canary {
                count: 1,
                then: BatchSize::Count(1),
            },
            (_, Some(then)) => Strategy::Canary { count: 1, then },
        };
        if args.in_place {
            let keep: Vec<_> = p
                .steps
                .iter()
                .filter(|s| s.name() == "wait_connector")
                .cloned()
                .collect();
            let recreate = registry
                .build("recreate_connector", &serde_json::Value::Null)
                .and_then(Result::ok)
                .ok_or_else(|| CliError::input("internal: no recreate_connector step"))?;
            p.steps = std::iter::once(recreate).chain(keep).collect();
        }
    }
    let preflight: Vec<Phase<StackHost>> = phases
        .iter()
        .filter(|p| p.name == "preflight" || p.name == "lock")
        .cloned()
        .collect();
    let release: Vec<Phase<StackHost>> = phases
        .iter()
        .filter(|p| p.name == "release")
        .cloned()
        .collect();
    let rest: Vec<Phase<StackHost>> = phases
        .into_iter()
        .filter(|p| p.name != "preflight" && p.name != "lock")
        .collect();

    // Contexts without a token yet (it is set on each after preflight).
    let names: Vec<String> = inputs.iter().map(|i| i.host.name.clone()).collect();
    let progress = Progress::for_tunnels("rotate-token", std::slice::from_ref(&tunnel), &names);
    let mut ctxs: Vec<StackHost> = inputs
        .into_iter()
        .map(|i| StackHost::new(i, connector.clone(), "rotate-token", false))
        .collect();
    // The lock phase's canary (the first host) tries the lock with its health check.
    if let Some(first) = ctxs.first_mut() {
        first.rotation.lock_early = true;
    }

    // a. Preflight: reachable, healthy, locked; nothing is written to any host before this passes.
    let engine = Engine::new(&progress).with_stop(stop.clone());
    let pre = engine.run(preflight, ctxs).await;
    let failed_pre: Vec<String> = pre
        .hosts
        .iter()
        .filter(|h| h.status != HostStatus::Ok)
        .map(|h| {
            let mut line = format!("{}: {}", h.host, h.message.clone().unwrap_or_default());
            if let Some(hint) = &h.hint {
                line.push_str(&format!("\n    hint: {hint}"));
            }
            line
        })
        .collect();
    if !failed_pre.is_empty() && !args.allow_down {
        let cleanup = Engine::new(&progress);
        let _ = cleanup.run(release, pre.contexts).await;
        progress.finish();
        eprintln!(
            "preflight failed; nothing was changed on any host (locks released):\n  {}\n\
             fix those hosts, exclude them with --limit, or go ahead with --allow-down (they stay pending for --resume)",
            failed_pre.join("\n  ")
        );
        return Ok(EXIT_HOST_FAILED);
    }

    // b. The new token, now.
    let from_setup = args.from_setup || resume_setup.is_some();
    // The setup component invalidates the old token while it runs: the window starts there.
    let setup_started = (from_setup && resume_setup.is_none()).then(Instant::now);
    let token = match early {
        Some(t) => t,
        None if from_setup => {
            match token_from_setup(
                &args,
                &pre,
                identity.as_ref(),
                resume_setup.as_ref(),
                setup_reader.take(),
                &connector,
                read_setup_version(&state, &tunnel),
            )
            .await
            {
                Ok((t, host, version)) => {
                    rec.setup_host = Some(host.clone());
                    rec.setup_version = version;
                    if let Some(v) = version {
                        write_private(&state.setup_version(&tunnel), &format!("{v}\n"))?;
                    }
                    eprintln!(
                        "setup component on {host}: token {} (token version {})",
                        t.fingerprint(),
                        version.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
                    );
                    t
                }
                Err(e) => {
                    let cleanup = Engine::new(&progress);
                    let _ = cleanup.run(release, pre.contexts).await;
                    progress.finish();
                    return Err(CliError {
                        code: EXIT_HOST_FAILED,
                        message: format!(
                            "{e}\nnothing was changed on any host (locks released); the old token is still the fleet's"
                        ),
                    });
                }
            }
        }
        None if args.api_base.is_some() => token_from_api(&args).await?,
        None if std::io::stdin().is_terminal() => {
            progress.suspend(|| token_from_tty(&tunnel, names.len()))?
        }
        None => {
            let cleanup = Engine::new(&progress);
            let _ = cleanup.run(release, pre.contexts).await;
            return Err(CliError::input(
                "no new token: give --token-file F, --token-stdin, TUNNEL_TOKEN, --api-base with \
                 --tunnel-id, or --from-setup, or run on a terminal to paste it",
            ));
        }
    };
    if let Some(fp) = &resume_fp
        && &token.fingerprint() != fp
    {
        let cleanup = Engine::new(&progress);
        let _ = cleanup.run(release, pre.contexts).await;
        return Err(CliError::input(format!(
            "--resume finishes the rotation to token {fp}, but the token given is {}",
            token.fingerprint()
        )));
    }
    let t0 = setup_started.unwrap_or_else(Instant::now);
    // The same moment on the wall clock, for benchmarks that line it up with the edge's
    // timeline and with when the process started.
    let t0_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64 - t0.elapsed().as_millis() as u64)
        .unwrap_or(0);
    let new_fp = token.fingerprint();

    // Give every context the new token's .env (rendered per host).
    let mut ctxs = pre.contexts;
    for c in &mut ctxs {
        c.input.set_token(&token).map_err(CliError::input)?;
        c.rotation.t0 = Some(t0);
    }

    // Journal: what this rotation is, for --resume (fingerprints and names only).
    rec.new_token_fp = Some(new_fp.clone());
    write_private(
        &op_path,
        &serde_json::to_string_pretty(&rec).unwrap_or_default(),
    )?;
    let journal = Journal::open(&journal_path, &op_id, "rotate-token")
        .map_err(|e| CliError::input(format!("{}: {e}", journal_path.display())))?;
    let mut engine = Engine::new(&progress)
        .with_journal(journal)
        .with_stop(stop.clone());
    if args.resume
        && let Ok(log) = Journal::load(&journal_path)
    {
        engine = engine.resuming(log);
    }
    // c-f. Persist everywhere, then connectors (every host at once; canary first in place),
    // then audit + unlock everywhere.
    let report = engine.run(rest, ctxs).await;
    progress.finish();

    let mut rows = Vec::new();
    for h in &report.contexts {
        let rec = report.host(h.name());
        let ok = h.rotation.new_ready_ms.is_some()
            && h.rotation.old_stopped_ms.is_some()
            && rec.is_none_or(|r| r.status == HostStatus::Ok);
        rows.push(HostReport {
            name: h.name().to_string(),
            ok,
            status: rec
                .map(|r| format!("{:?}", r.status).to_lowercase())
                .unwrap_or_default(),
            error: rec.filter(|_| !ok).and_then(|r| r.message.clone()),
            hint: rec.filter(|_| !ok).and_then(|r| r.hint.clone()),
            rotation: h.rotation.clone(),
        });
    }
    // Hosts that failed preflight under --allow-down are pending.
    for f in pre.hosts.iter().filter(|h| h.status != HostStatus::Ok) {
        if let Some(r) = rows.iter_mut().find(|r| r.name == f.host) {
            r.ok = false;
            r.status = "pending".into();
            r.error = f.message.clone();
            r.hint = Some("bring the host back, then: tunnelfleet rotate-token --resume".into());
        }
    }
    let window_ms = rows.iter().filter_map(|r| r.rotation.new_ready_ms).max();
    let all_done = rows.iter().all(|r| r.ok);
    let fewest_ready = fewest_ready(&rows, names.len());
    if all_done {
        let _ = std::fs::remove_file(&op_path);
    }
    crate::ops::audit::append(
        &state_dir,
        &crate::ops::audit::ControllerAudit {
            time: crate::ops::deploy::now_rfc3339(),
            operator: crate::ops::deploy::operator(),
            operation: "rotate-token",
            tunnels: vec![tunnel.clone()],
            ok: rows
                .iter()
                .filter(|r| r.ok)
                .map(|r| r.name.clone())
                .collect(),
            failed: rows
                .iter()
                .filter(|r| !r.ok)
                .map(|r| r.name.clone())
                .collect(),
            token_fingerprint: Some(new_fp.clone()),
            cert_serial: None,
        },
    );
    let doc = serde_json::json!({
        "op_id": op_id,
        "tunnel": tunnel,
        "new_token_fingerprint": new_fp,
        "exposure_window_ms": window_ms,
        "window_from": if setup_started.is_some() { "setup_started" } else { "token_in_hand" },
        "window_start_unix_ms": t0_unix_ms,
        "fewest_ready_hosts": fewest_ready,
        "hosts": rows,
        "complete": all_done,
        "halted": report.summary.halted,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
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
            "token {new_fp}: exposure window {} ({} -> last host on it); fewest ready hosts {fewest_ready}/{}",
            ms(window_ms),
            if setup_started.is_some() {
                "setup component started"
            } else {
                "new token in hand"
            },
            names.len()
        );
        if let Some(h) = &report.summary.halted {
            println!("halted: {h}");
        }
        if stop.is_requested() {
            println!(
                "interrupted: the fleet locks are released; run `tunnelfleet rotate-token --resume` (with the same token) to finish"
            );
        } else if !all_done {
            println!(
                "not complete: fix what is reported, then run: tunnelfleet rotate-token --resume (with the same token)"
            );
        }
    }
    Ok(if stop.is_requested() {
        super::staged::EXIT_INTERRUPTED
    } else if all_done {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}

/// The fewest hosts with a ready connector at any moment, from each host's own record:
/// make-before-break hosts never lack one; in-place hosts lack one from the recreation
/// until their new connector is ready; hosts that never got there count as lacking one
/// from then on.
fn fewest_ready(rows: &[HostReport], total: usize) -> usize {
    let mut events: Vec<(u64, i64)> = Vec::new();
    let mut never = 0i64;
    for r in rows {
        if r.status == "pending" {
            never += 1;
        } else if let Some(from) = r.rotation.unavailable_from_ms {
            events.push((from, -1));
            if let Some(to) = r.rotation.new_ready_ms {
                events.push((to, 1));
            }
        }
    }
    events.sort();
    let mut cur = total as i64 - never;
    let mut min = cur;
    for (_, d) in events {
        cur += d;
        min = min.min(cur);
    }
    min.max(0) as usize
}

fn write_private(path: &Path, text: &str) -> Result<(), CliError> {
    crate::state::write_private(path, text)
        .map_err(|e| CliError::input(format!("{}: {e}", path.display())))
}

/// One rotation per tunnel on this controller (see [`StateDir::lock`]).
async fn controller_lock(
    state: &StateDir,
    tunnel: &str,
    wait: Duration,
) -> Result<std::fs::File, CliError> {
    state
        .lock("rotate", tunnel, wait)
        .await
        .map_err(|e| match e {
            crate::state::LockError::Held { .. } => CliError {
                code: 3,
                message: format!(
                    "another rotate-token for tunnel '{tunnel}' runs on this controller: {e} \
                     (wait with --lock-wait 5m, or let it finish)"
                ),
            },
            other => CliError::input(other.to_string()),
        })
}
