//! Token rotation, the operation: preflight (reachable, healthy, fleet lock) before the old
//! token is invalidated, the new token (given, from the Tunnels API, from the setup
//! component, or pasted), persisted on every host, connectors moved make-before-break (a
//! canary first with `--in-place` or `--batch`), old connectors retired, with a journal for
//! `--resume` and a report of the exposure window. The per-host steps are in [`steps`]; the
//! verb (`cli/rotate.rs`) parses flags and renders the [`RotateReport`].

pub mod steps;

pub use steps::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ops::deploy::{HostInput, StackHost, TunnelInput};
use crate::playbook::{Playbook, StepRegistry};
use crate::rollout::{
    BatchSize, Engine, HostCtx, HostStatus, Journal, Phase, Reporter, StopHandle, Strategy,
    new_op_id,
};
use crate::secrets::{Secret, TokenSource, TunnelsApi};
use crate::ssh::Connector;
use crate::state::StateDir;

/// The built-in rotation playbook (playbooks/rotate-token.yaml, compiled in).
pub const ROTATE_PLAYBOOK: &str = include_str!("../../../playbooks/rotate-token.yaml");

/// An error that ends a rotation: the process exit code (2 bad input, nothing touched;
/// 1 a host failed; 3 another rotation runs) and a message without secrets.
#[derive(Debug)]
pub struct RotateError {
    /// The exit code.
    pub code: i32,
    /// The message.
    pub message: String,
}

impl RotateError {
    fn input(message: impl Into<String>) -> Self {
        RotateError {
            code: 2,
            message: message.into(),
        }
    }
}

/// What the controller has in hand before any host is touched.
pub struct RotateInputs {
    /// The selected hosts' tunnels (a rotation covers exactly one).
    pub tunnels: BTreeMap<String, TunnelInput>,
    /// Every selected host's inputs, without a token (each `.env` is rendered once the new
    /// token is in hand).
    pub hosts: Vec<HostInput>,
    /// The new token when it was given up front (file, stdin, environment, command).
    pub new_token: Option<Secret>,
    /// The controller's state dir (tilde expanded).
    pub state_dir: PathBuf,
    /// The SSH connector of the run.
    pub connector: Arc<Connector>,
}

/// How to rotate.
#[derive(Debug, Clone, Default)]
pub struct RotateOptions {
    /// Fetch the new token from the Tunnels API (after preflight).
    pub api: Option<TunnelsApi>,
    /// Get the new token from the setup component on one host.
    pub from_setup: bool,
    /// The host that runs the setup component.
    pub setup_host: Option<String>,
    /// File holding the OIDC identity token for the setup component.
    pub identity_token_file: Option<PathBuf>,
    /// Batches after a canary (else every host at once, or one at a time in place).
    pub batch: Option<BatchSize>,
    /// Recreate each connector in place instead of make-before-break.
    pub in_place: bool,
    /// Go ahead when some hosts fail preflight (they stay pending for `--resume`).
    pub allow_down: bool,
    /// Finish the last unfinished rotation.
    pub resume: bool,
    /// How long to wait for another operation's fleet lock.
    pub lock_wait: Duration,
    /// How long a new connector may take to become ready.
    pub gate_timeout: Option<Duration>,
    /// Stops the rollout between steps (Ctrl-C, SIGTERM).
    pub stop: StopHandle,
}

/// What the rotation needs from the operator's side while it runs: progress, a terminal to
/// paste the token on, and a place for notices.
pub trait RotateUi: Reporter {
    /// Called right before anything can be left half-done (interrupts should now stop the
    /// rollout between steps rather than kill the process).
    fn arm(&self, stop: &StopHandle);
    /// The hosts this run moves are known: start showing progress for them.
    fn begin(&self, tunnel: &str, hosts: &[String]);
    /// Clear the live progress display.
    fn finish(&self);
    /// Asks the operator for the new token on a terminal; `None` when there is none.
    fn prompt_token(&self, tunnel: &str, hosts: usize) -> Option<Result<Secret, String>>;
    /// A line for the operator (stderr).
    fn notice(&self, line: &str);
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

/// One host's line of the report.
#[derive(Debug, Serialize)]
pub struct HostReport {
    /// The host.
    pub name: String,
    /// On the new token with its old connectors retired.
    pub ok: bool,
    /// The engine's status (`ok`, `failed`, ...), or `pending` (failed preflight under
    /// `--allow-down`).
    pub status: String,
    /// Why not ok.
    pub error: Option<String>,
    /// What to do about it.
    pub hint: Option<String>,
    /// What the steps recorded.
    #[serde(flatten)]
    pub rotation: RotationState,
}

/// What a rotation did.
#[derive(Debug)]
pub struct RotateReport {
    /// The operation id.
    pub op_id: String,
    /// The tunnel.
    pub tunnel: String,
    /// The new token's fingerprint.
    pub new_token_fp: String,
    /// From the start of the window to the last host with a ready connector on the new token.
    pub exposure_window_ms: Option<u64>,
    /// The window started when the setup component started (else: token in hand).
    pub window_from_setup: bool,
    /// The window's start on the wall clock (ms since the epoch).
    pub window_start_unix_ms: u64,
    /// The fewest hosts with a ready connector at any moment.
    pub fewest_ready: usize,
    /// How many hosts this run covered.
    pub host_count: usize,
    /// Every host.
    pub hosts: Vec<HostReport>,
    /// Every host is done.
    pub complete: bool,
    /// Why the rollout halted, if it did.
    pub halted: Option<String>,
    /// The run was interrupted.
    pub interrupted: bool,
}

/// How a rotation ended.
#[derive(Debug)]
pub enum RotateOutcome {
    /// `--resume` found every host already on the new token (the record is removed).
    AlreadyComplete {
        /// The rotation's id.
        op_id: String,
        /// Its token's fingerprint.
        new_token_fp: Option<String>,
    },
    /// Preflight failed on these hosts (`host: why`); nothing was changed, locks released.
    PreflightFailed(Vec<String>),
    /// The rotation ran.
    Ran(RotateReport),
}

fn read_setup_version(state: &StateDir, tunnel: &str) -> Option<u32> {
    std::fs::read_to_string(state.setup_version(tunnel))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The journal and operation record of a tunnel's rotation (`status` reads them too).
pub fn journal_paths(state_dir: &Path, tunnel: &str) -> (PathBuf, PathBuf) {
    let state = StateDir::new(state_dir);
    (
        state.journal("rotate", tunnel),
        state.op_record("rotate", tunnel),
    )
}

/// The OIDC identity token for the setup component: the given file, else
/// ANTHROPIC_IDENTITY_TOKEN, else the inventory's setup_identity_token_command.
async fn identity_token(
    file: Option<&PathBuf>,
    setup: &crate::stack::SetupSettings,
) -> Result<Secret, RotateError> {
    let source = if let Some(f) = file {
        TokenSource::File(f.clone())
    } else if std::env::var_os("ANTHROPIC_IDENTITY_TOKEN").is_some() {
        TokenSource::Env("ANTHROPIC_IDENTITY_TOKEN".into())
    } else if let Some(c) = &setup.identity_token_command {
        TokenSource::Command(c.clone())
    } else {
        return Err(RotateError::input(
            "--from-setup needs a fresh OIDC identity token for the setup component: \
             --identity-token-file F, ANTHROPIC_IDENTITY_TOKEN, or setup_identity_token_command in the inventory",
        ));
    };
    let t = source
        .load_raw()
        .await
        .map_err(|e| RotateError::input(format!("identity token from {source}: {e}")))?;
    crate::secrets::validate_identity_token(t.expose())
        .map_err(|e| RotateError::input(format!("identity token from {source}: {e}")))?;
    Ok(t)
}

/// The new token from the setup component: run it (bumped --token-version) on the chosen
/// host, or, resuming, read back what it wrote. Returns the token, the host and the version.
async fn token_from_setup(
    setup_host: Option<&String>,
    pre: &crate::rollout::RolloutReport<StackHost>,
    identity: Option<&Secret>,
    resume: Option<&(String, Option<u32>)>,
    reader: Option<HostInput>,
    connector: &Arc<Connector>,
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
            ctx.session = Some(Arc::new(session));
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
    let ctx = match setup_host {
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

/// Runs a rotation: every input check first, then preflight, the new token, persist,
/// connectors, retire, audit and unlock, the controller's audit line, and the report.
pub async fn run(
    inputs: RotateInputs,
    opts: RotateOptions,
    ui: &dyn RotateUi,
) -> Result<RotateOutcome, RotateError> {
    let RotateInputs {
        tunnels,
        hosts: mut inputs,
        new_token: early,
        state_dir,
        connector,
    } = inputs;
    let stop = opts.stop.clone();
    if tunnels.len() != 1 {
        let names: Vec<&String> = tunnels.keys().collect();
        return Err(RotateError::input(format!(
            "rotate one tunnel at a time: the selected hosts serve {} tunnels ({names:?}); use --limit",
            tunnels.len()
        )));
    }
    let tunnel = tunnels.keys().next().cloned().unwrap_or_default();
    let setup_settings = inputs.first().and_then(|i| i.settings.setup.clone());
    if opts.from_setup && setup_settings.is_none() {
        return Err(RotateError::input(format!(
            "--from-setup: tunnel '{tunnel}' has no setup component configured (set setup_tunnel_id, \
             setup_federation_rule_id and setup_organization_id in the inventory, then deploy)"
        )));
    }
    if let Some(name) = &opts.setup_host
        && !inputs.iter().any(|i| &i.host.name == name)
    {
        return Err(RotateError::input(format!(
            "--setup-host {name}: not one of the selected hosts of tunnel '{tunnel}'"
        )));
    }
    let state = StateDir::new(&state_dir);
    state
        .ensure_journal_dir()
        .map_err(|e| RotateError::input(format!("{}: {e}", state.journal_dir().display())))?;
    let (journal_path, op_path) = (
        state.journal("rotate", &tunnel),
        state.op_record("rotate", &tunnel),
    );
    // One rotation per tunnel per controller: the op record and journal are this tunnel's.
    let _controller_lock = controller_lock(&state, &tunnel, opts.lock_wait).await?;
    // A rotation the controller left mid-run (killed, interrupted) holds locks under its op
    // id and has a token on some hosts: a new one would lose track of both.
    if !opts.resume
        && let Ok(Some(p)) = Journal::pending_op(&journal_path)
        && matches!(p.ended, None | Some(crate::rollout::OpStatus::Stopped))
    {
        return Err(RotateError::input(format!(
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
    ui.arm(&stop);

    // Resume: the unfinished operation, its token fingerprint, and only its pending hosts.
    let mut resume_setup: Option<(String, Option<u32>)> = None;
    let mut setup_reader: Option<HostInput> = None;
    let (op_id, resume_fp, all_hosts) = if opts.resume {
        let text = std::fs::read_to_string(&op_path).map_err(|_| {
            RotateError::input(format!(
                "no rotation to resume for tunnel '{tunnel}' (no {})",
                op_path.display()
            ))
        })?;
        let rec: OpRecord = serde_json::from_str(&text)
            .map_err(|e| RotateError::input(format!("{}: {e}", op_path.display())))?;
        let log = Journal::load(&journal_path)
            .map_err(|e| RotateError::input(format!("{}: {e}", journal_path.display())))?;
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
        } else if opts.from_setup && rec.new_token_fp.is_some() {
            // Running the component now would rotate the token again under a rotation that
            // is halfway to another one.
            return Err(RotateError::input(format!(
                "--resume --from-setup: rotation {} moves to token {} which did not come from the \
                 setup component; resume it with the token it started with (--token-file, \
                 --token-stdin, TUNNEL_TOKEN or --api-base)",
                rec.op_id,
                rec.new_token_fp.as_deref().unwrap_or("?")
            )));
        }
        inputs.retain(|i| pending.contains(&i.host.name));
        if inputs.is_empty() {
            let _ = std::fs::remove_file(&op_path);
            return Ok(RotateOutcome::AlreadyComplete {
                op_id: rec.op_id,
                new_token_fp: rec.new_token_fp,
            });
        }
        (rec.op_id, rec.new_token_fp, rec.hosts)
    } else {
        let names = inputs.iter().map(|i| i.host.name.clone()).collect();
        (new_op_id(), None, names)
    };
    // The identity token for the setup component, checked before any host is touched.
    let identity = match &setup_settings {
        Some(setup) if opts.from_setup && resume_setup.is_none() => {
            Some(identity_token(opts.identity_token_file.as_ref(), setup).await?)
        }
        _ => None,
    };
    if let (Some(fp), Some(t)) = (&resume_fp, &early)
        && &t.fingerprint() != fp
    {
        return Err(RotateError::input(format!(
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
        std::fs::create_dir_all(d)
            .map_err(|e| RotateError::input(format!("{}: {e}", d.display())))?;
    }
    write_private(
        &op_path,
        &serde_json::to_string_pretty(&rec).unwrap_or_default(),
    )?;

    let mut registry = StepRegistry::new();
    register_rotation_steps(&mut registry, &op_id, opts.lock_wait, opts.gate_timeout);
    let playbook = Playbook::from_str(
        ROTATE_PLAYBOOK,
        Path::new("playbooks/rotate-token.yaml"),
        &registry,
    )
    .map_err(|e| RotateError::input(format!("built-in playbook: {e}")))?;
    let mut phases: Vec<Phase<StackHost>> = playbook.into_phases();
    for p in phases
        .iter_mut()
        .filter(|p| p.name == "preflight" || p.name == "lock")
    {
        if opts.allow_down {
            p.max_unavailable = usize::MAX;
        }
    }
    if let Some(p) = phases.iter_mut().find(|p| p.name == "preflight")
        && opts.resume
    {
        // A host left mid-rotation may have no ready connector (that is what resuming
        // fixes): reachable, facts read and locked is enough.
        let facts = registry
            .build("facts", &serde_json::Value::Null)
            .and_then(Result::ok)
            .ok_or_else(|| RotateError::input("internal: no facts step"))?;
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
        p.strategy = match (opts.in_place, opts.batch) {
            (false, None) => Strategy::Parallel,
            (true, None) => Strategy::Canary {
                count: 1,
                then: BatchSize::Count(1),
            },
            (_, Some(then)) => Strategy::Canary { count: 1, then },
        };
        if opts.in_place {
            let keep: Vec<_> = p
                .steps
                .iter()
                .filter(|s| s.name() == "wait_connector")
                .cloned()
                .collect();
            let recreate = registry
                .build("recreate_connector", &serde_json::Value::Null)
                .and_then(Result::ok)
                .ok_or_else(|| RotateError::input("internal: no recreate_connector step"))?;
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
    ui.begin(&tunnel, &names);
    let mut ctxs: Vec<StackHost> = inputs
        .into_iter()
        .map(|i| StackHost::new(i, connector.clone(), "rotate-token", false))
        .collect();
    // The lock phase's canary (the first host) tries the lock with its health check.
    if let Some(first) = ctxs.first_mut() {
        first.rotation.lock_early = true;
    }

    // a. Preflight: reachable, healthy, locked; nothing is written to any host before this passes.
    let engine = Engine::new(ui).with_stop(stop.clone());
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
    if !failed_pre.is_empty() && !opts.allow_down {
        let cleanup = Engine::new(ui);
        let _ = cleanup.run(release, pre.contexts).await;
        ui.finish();
        return Ok(RotateOutcome::PreflightFailed(failed_pre));
    }

    // b. The new token, now.
    let from_setup = opts.from_setup || resume_setup.is_some();
    // The setup component invalidates the old token while it runs: the window starts there.
    let setup_started = (from_setup && resume_setup.is_none()).then(Instant::now);
    let token = match early {
        Some(t) => t,
        None if from_setup => {
            match token_from_setup(
                opts.setup_host.as_ref(),
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
                    ui.notice(&format!(
                        "setup component on {host}: token {} (token version {})",
                        t.fingerprint(),
                        version.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
                    ));
                    t
                }
                Err(e) => {
                    let cleanup = Engine::new(ui);
                    let _ = cleanup.run(release, pre.contexts).await;
                    ui.finish();
                    return Err(RotateError {
                        code: 1,
                        message: format!(
                            "{e}\nnothing was changed on any host (locks released); the old token is still the fleet's"
                        ),
                    });
                }
            }
        }
        None if opts.api.is_some() => match &opts.api {
            Some(api) => api.reveal_token().await.map_err(RotateError::input)?,
            None => return Err(RotateError::input("internal: no Tunnels API")),
        },
        None => match ui.prompt_token(&tunnel, names.len()) {
            Some(t) => t.map_err(RotateError::input)?,
            None => {
                let cleanup = Engine::new(ui);
                let _ = cleanup.run(release, pre.contexts).await;
                return Err(RotateError::input(
                    "no new token: give --token-file F, --token-stdin, TUNNEL_TOKEN, --api-base with \
                     --tunnel-id, or --from-setup, or run on a terminal to paste it",
                ));
            }
        },
    };
    if let Some(fp) = &resume_fp
        && &token.fingerprint() != fp
    {
        let cleanup = Engine::new(ui);
        let _ = cleanup.run(release, pre.contexts).await;
        return Err(RotateError::input(format!(
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
        c.input.set_token(&token).map_err(RotateError::input)?;
        c.rotation.t0 = Some(t0);
    }

    // Journal: what this rotation is, for --resume (fingerprints and names only).
    rec.new_token_fp = Some(new_fp.clone());
    write_private(
        &op_path,
        &serde_json::to_string_pretty(&rec).unwrap_or_default(),
    )?;
    let journal = Journal::open(&journal_path, &op_id, "rotate-token")
        .map_err(|e| RotateError::input(format!("{}: {e}", journal_path.display())))?;
    let mut engine = Engine::new(ui)
        .with_journal(journal)
        .with_stop(stop.clone());
    if opts.resume
        && let Ok(log) = Journal::load(&journal_path)
    {
        engine = engine.resuming(log);
    }
    // c-f. Persist everywhere, then connectors (every host at once; canary first in place),
    // then audit + unlock everywhere.
    let report = engine.run(rest, ctxs).await;
    ui.finish();

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
            token_fingerprint: Some(new_fp.clone()),
            ..crate::ops::audit::ControllerAudit::ended(
                "rotate-token",
                vec![tunnel.clone()],
                rows.iter().map(|r| (r.name.as_str(), r.ok)),
            )
        },
    );
    Ok(RotateOutcome::Ran(RotateReport {
        op_id,
        tunnel,
        new_token_fp: new_fp,
        exposure_window_ms: window_ms,
        window_from_setup: setup_started.is_some(),
        window_start_unix_ms: t0_unix_ms,
        fewest_ready,
        host_count: names.len(),
        hosts: rows,
        complete: all_done,
        halted: report.summary.halted,
        interrupted: stop.is_requested(),
    }))
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

fn write_private(path: &Path, text: &str) -> Result<(), RotateError> {
    crate::state::write_private(path, text)
        .map_err(|e| RotateError::input(format!("{}: {e}", path.display())))
}

/// One rotation per tunnel on this controller (see [`StateDir::lock`]).
async fn controller_lock(
    state: &StateDir,
    tunnel: &str,
    wait: Duration,
) -> Result<std::fs::File, RotateError> {
    state
        .lock("rotate", tunnel, wait)
        .await
        .map_err(|e| match e {
            crate::state::LockError::Held { .. } => RotateError {
                code: 3,
                message: format!(
                    "another rotate-token for tunnel '{tunnel}' runs on this controller: {e} \
                     (wait with --lock-wait 5m, or let it finish)"
                ),
            },
            other => RotateError::input(other.to_string()),
        })
}
