//! What `deploy` and `rollback` share: the staged-rollout flags, the pause between batches,
//! the interrupt handler, and the rendering of a staged plan and of its outcome.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::CliError;
use super::common::parse_duration;
use super::progress::table;
use crate::ops::deploy::StackHost;
use crate::ops::upgrade::{StagedOptions, Staging};
use crate::rollout::{BatchSize, HostCtx, PauseHook, StopHandle};

/// Exit code: the operator interrupted the run (Ctrl-C or SIGTERM); the message says what to
/// run next.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Flags of a staged release change (deploy, rollback).
#[derive(Args, Debug, Clone)]
pub struct StagedArgs {
    /// Hosts moved first, alone, before any other.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub canary: usize,
    /// Hosts per batch after the canary: a count or a percentage of the hosts that change
    /// (default: --max-unavailable for hosts that recreate the proxy, 25% when every host
    /// moves make-before-break).
    #[arg(long, value_name = "N|P%", value_parser = parse_batch)]
    pub batch: Option<BatchSize>,
    /// Hosts allowed without a ready connector at once (a count or a percentage of the
    /// selected hosts). Hosts that only change the connector's image move make-before-break
    /// and never count.
    #[arg(long, default_value = "1", value_name = "N|P%", value_parser = parse_batch)]
    pub max_unavailable: BatchSize,
    /// Wait between batches: a duration (`30s`), or `prompt` to ask the operator after the
    /// canary (needs a terminal).
    #[arg(long, value_name = "DURATION|prompt")]
    pub pause: Option<String>,
    /// How long both containers must stay up, unrestarted, after the new connector is ready
    /// (catches a container that crashes after starting).
    #[arg(
        long,
        env = "TUNNELFLEET_MIN_HEALTHY",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub min_healthy: Duration,
    /// How long a host may take to pass its health gate.
    #[arg(long, default_value = "60s", value_parser = parse_duration, alias = "gate-timeout")]
    pub healthy_deadline: Duration,
    /// Leave failed hosts as they are (for debugging) instead of rolling back the failed host
    /// and every host already moved.
    #[arg(long)]
    pub no_auto_rollback: bool,
    /// Drain time given to a connector retired after a make-before-break move.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain: Duration,
}

fn parse_batch(s: &str) -> Result<BatchSize, String> {
    s.parse()
}

/// How to pause between batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pause {
    /// Not at all.
    None,
    /// This long.
    For(Duration),
    /// Ask the operator after the canary.
    Prompt,
}

impl StagedArgs {
    /// The options, and the pause; bad values are input errors (nothing touched).
    pub fn options(&self) -> Result<(StagedOptions, Pause), CliError> {
        if self.canary == 0 {
            return Err(CliError::input("--canary: at least 1 host"));
        }
        if self.healthy_deadline.is_zero() {
            return Err(CliError::input("--healthy-deadline: must be more than 0s"));
        }
        let pause = match self.pause.as_deref() {
            None => Pause::None,
            Some("prompt") => {
                if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
                    return Err(CliError::input(
                        "--pause prompt needs a terminal to ask on; use a duration (e.g. --pause 30s)",
                    ));
                }
                Pause::Prompt
            }
            Some(d) => {
                Pause::For(parse_duration(d).map_err(|e| CliError::input(format!("--pause: {e}")))?)
            }
        };
        Ok((
            StagedOptions {
                canary: self.canary,
                batch: self.batch,
                max_unavailable: self.max_unavailable,
                min_healthy: self.min_healthy,
                healthy_deadline: self.healthy_deadline,
                auto_rollback: !self.no_auto_rollback,
                drain: self.drain,
            },
            pause,
        ))
    }
}

/// Pauses between batches: sleeps, or asks on the terminal after the canary.
pub struct BatchPause {
    /// How.
    pub pause: Pause,
    /// The run's stop handle (a Ctrl-C during a pause ends it).
    pub stop: StopHandle,
}

#[async_trait::async_trait]
impl PauseHook for BatchPause {
    async fn pause(&self, phase: &str, next: usize, total: usize) -> Result<(), String> {
        match &self.pause {
            Pause::None => Ok(()),
            Pause::For(d) => {
                eprintln!(
                    "{phase}: batch {next}/{} done; pausing {} before the next",
                    total - 1,
                    crate::rollout::fmt_duration(*d)
                );
                tokio::select! {
                    _ = tokio::time::sleep(*d) => Ok(()),
                    _ = self.stop.requested() => Err("stop requested during the pause".into()),
                }
            }
            Pause::Prompt if next == 1 => {
                // The progress display is cleared while the operator answers.
                let answer = tokio::task::spawn_blocking(|| {
                    super::progress::suspend_current(|| {
                        let mut err = std::io::stderr();
                        let _ = write!(
                            err,
                            "\nThe canary passed its gate. Continue with the other batches? [y/N] "
                        );
                        let _ = err.flush();
                        let mut line = String::new();
                        let _ = std::io::stdin().lock().read_line(&mut line);
                        line
                    })
                })
                .await
                .unwrap_or_default();
                if matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
                    Ok(())
                } else {
                    Err("the operator stopped after the canary".into())
                }
            }
            Pause::Prompt => Ok(()),
        }
    }
}

/// Installs the interrupt handler of a run that changes hosts: the first Ctrl-C (or SIGTERM)
/// requests a stop (running steps finish, nothing new starts); the second exits at once,
/// saying what to run next.
pub fn install_interrupt(stop: StopHandle, next: &'static str) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut seen = 0;
        loop {
            let got = match term.as_mut() {
                Some(t) => tokio::select! {
                    r = tokio::signal::ctrl_c() => r.is_ok(),
                    r = t.recv() => r.is_some(),
                },
                None => tokio::signal::ctrl_c().await.is_ok(),
            };
            if !got {
                return;
            }
            seen += 1;
            if seen == 1 {
                eprintln!(
                    "\ntunnelfleet: interrupted: finishing the step each host is in, starting \
                     nothing new (interrupt again to exit at once)"
                );
                stop.request();
            } else {
                eprintln!(
                    "\ntunnelfleet: exiting at once. A host's change that had started completes \
                     on the host by itself; run `{next}` to finish."
                );
                std::process::exit(EXIT_INTERRUPTED);
            }
        }
    });
}

/// One host's outcome of a staged run, for the recap and `--json` (ids and fingerprints
/// only).
#[derive(Debug, Serialize, Default)]
pub struct StagedHost {
    /// The host.
    pub name: String,
    /// `ok`, `up to date`, `failed`, `rolled back`, `rollback failed`, `skipped`,
    /// `interrupted`, `would change`.
    pub outcome: String,
    /// Whether the host ended where the operator wanted (or was already there).
    pub ok: bool,
    /// The release before.
    pub from: Option<String>,
    /// The release targeted.
    pub to: Option<String>,
    /// Moved make-before-break.
    pub surge: bool,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The gate's wait, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate_ms: Option<u64>,
    /// What the run did on the host (a release change's state).
    pub upgrade: crate::ops::host_state::UpgradeState,
    /// The plan's lines, as the recap prints them.
    #[serde(rename = "plan_lines", skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<String>,
    /// The plan (hashes and fingerprints only), as computed from the host's facts.
    #[serde(rename = "plan")]
    pub plan_detail: Option<crate::stack::Plan>,
    /// The tunnel the host serves.
    pub tunnel: String,
    /// The step where the host stopped (`done` when it passed).
    pub stage: String,
    /// Whether the run changed anything on the host.
    pub changed: bool,
    /// Fingerprint of the token the host was given, when one was.
    pub token_fingerprint: Option<String>,
    /// The connector that passed the gate.
    pub connector: Option<crate::ops::health::ConnectorReady>,
    /// Unified diffs of the changed files, by path (`--diff`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub diffs: BTreeMap<String, String>,
}

/// The staged plan as the operator reads it.
pub fn render_staging(staging: &Staging, hosts: &[StagedHost], verb: &str, diff: bool) {
    let by: BTreeMap<&str, &StagedHost> = hosts.iter().map(|h| (h.name.as_str(), h)).collect();
    if staging.hosts.is_empty() {
        println!("every host is up to date: nothing to {verb}");
    } else {
        println!(
            "{verb}: {} host(s) change, in {} batch(es); at most {} without a ready connector at once",
            staging.hosts.len(),
            staging.batches.len(),
            staging.max_unavailable
        );
        for (i, b) in staging.batches.iter().enumerate() {
            let label = if i == 0 {
                "canary".to_string()
            } else {
                format!("batch {i}")
            };
            let kinds: Vec<String> = b
                .iter()
                .map(|h| {
                    if staging.surge.contains(h) {
                        format!("{h} (make-before-break)")
                    } else if staging.down.contains(h) {
                        format!("{h} (nothing serving yet)")
                    } else {
                        format!("{h} (recreated: counts against --max-unavailable)")
                    }
                })
                .collect();
            println!("  {label}: {}", kinds.join(", "));
        }
        for n in &staging.notes {
            println!("  note: {n}");
        }
    }
    for h in hosts {
        if h.plan.is_empty() {
            continue;
        }
        println!("{}:", h.name);
        for l in &h.plan {
            println!("  {l}");
        }
        if diff {
            for d in h.diffs.values() {
                for l in d.lines() {
                    println!("  {l}");
                }
            }
        }
    }
    let unchanged: Vec<&str> = hosts
        .iter()
        .filter(|h| h.plan.is_empty() && h.ok && !by.is_empty())
        .map(|h| h.name.as_str())
        .collect();
    if !unchanged.is_empty() {
        println!("up to date: {}", unchanged.join(", "));
    }
}

/// The recap of a staged run: one table, then the details of failures once.
pub fn render_outcome(hosts: &[StagedHost], halted: Option<&str>, interrupted: Option<&str>) {
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.outcome.clone(),
                match (&h.from, &h.to) {
                    (Some(f), Some(t)) if f != t => format!("{f} -> {t}"),
                    (None, Some(t)) => format!("new -> {t}"),
                    (_, Some(t)) => t.clone(),
                    _ => "-".into(),
                },
                if h.surge {
                    "make-before-break".into()
                } else if h.upgrade.moved {
                    "recreated".into()
                } else {
                    "-".into()
                },
                h.gate_ms
                    .map(|g| format!("{g} ms"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["HOST", "OUTCOME", "RELEASE", "MOVED", "READY IN"], &rows)
    );
    let skipped: Vec<&str> = hosts
        .iter()
        .filter(|h| h.outcome == "skipped")
        .map(|h| h.name.as_str())
        .collect();
    for h in hosts
        .iter()
        .filter(|h| h.error.is_some() && h.outcome != "skipped")
    {
        println!();
        println!("{}: {}", h.name, h.error.as_deref().unwrap_or_default());
        if let Some(hint) = &h.hint {
            println!("  hint: {hint}");
        }
        for (c, lines) in &h.upgrade.logs {
            if lines.is_empty() {
                continue;
            }
            println!("  last log lines of {c}:");
            for l in lines {
                println!("    {l}");
            }
        }
        if let Some(e) = &h.upgrade.rollback_error {
            println!("  rollback failed: {e}");
        }
    }
    if !skipped.is_empty() {
        println!();
        println!(
            "not touched (the rollout stopped before them): {}",
            skipped.join(", ")
        );
    }
    let ok = hosts.iter().filter(|h| h.ok).count();
    let rolled = hosts
        .iter()
        .filter(|h| h.upgrade.rolled_back && h.upgrade.rollback_error.is_none())
        .count();
    let failed = hosts.len() - ok - rolled - skipped.len();
    println!();
    let mut parts = vec![format!("{ok} ok")];
    if rolled > 0 {
        parts.push(format!(
            "{rolled} rolled back to the release they ran before (gated)"
        ));
    }
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    if !skipped.is_empty() {
        parts.push(format!("{} not touched", skipped.len()));
    }
    println!("{}", parts.join(", "));
    if let Some(h) = halted {
        println!("rollout halted: {h}");
    }
    if let Some(i) = interrupted {
        println!("{i}");
    }
}

/// Builds a host's row from what the engine and the steps recorded.
pub fn staged_host(h: &StackHost, rec: Option<&crate::rollout::HostRecord>) -> StagedHost {
    use crate::rollout::HostStatus;
    let up_to_date = h.plan.as_ref().is_some_and(|p| p.is_empty()) && !h.upgrade.moved;
    let status = rec.map(|r| r.status);
    let (outcome, ok) = if h.upgrade.rolled_back && h.upgrade.rollback_error.is_none() {
        ("rolled back".to_string(), false)
    } else if h.upgrade.rollback_error.is_some() {
        ("ROLLBACK FAILED".to_string(), false)
    } else {
        match status {
            Some(HostStatus::Ok) if up_to_date => ("up to date".to_string(), true),
            Some(HostStatus::Ok) => ("ok".to_string(), true),
            Some(HostStatus::Failed) => ("FAILED".to_string(), false),
            Some(HostStatus::Skipped) => ("skipped".to_string(), false),
            Some(HostStatus::Stopped) => ("interrupted".to_string(), false),
            None => ("up to date".to_string(), true),
        }
    };
    let failed_rec = rec.filter(|r| r.status != HostStatus::Ok);
    StagedHost {
        name: h.name().to_string(),
        outcome,
        ok,
        from: h.upgrade.from.clone().or_else(|| {
            h.facts
                .as_ref()
                .and_then(|f| f.facts.current_release.clone())
        }),
        to: h
            .upgrade
            .to
            .clone()
            .or_else(|| h.plan.as_ref().map(|p| p.release_id.clone())),
        surge: h.upgrade.surge,
        error: failed_rec.and_then(|r| {
            r.message.clone().map(|m| match &r.step {
                Some(s) => format!("{s}: {m}"),
                None => m,
            })
        }),
        hint: failed_rec.and_then(|r| r.hint.clone()),
        gate_ms: h.gate_ms,
        upgrade: h.upgrade.clone(),
        plan: {
            let mut lines = h
                .plan
                .as_ref()
                .filter(|p| !p.is_empty())
                .map(|p| p.describe())
                .unwrap_or_default();
            if h.upgrade.surge && !lines.is_empty() {
                lines.push(
                    "start a second connector on the new image beside the old one; retire the \
                     old one once the new one is ready (make-before-break)"
                        .into(),
                );
            }
            lines
        },
        diffs: BTreeMap::new(),
        plan_detail: h.plan.clone(),
        tunnel: h.input.settings.tunnel_name.clone(),
        stage: match rec {
            Some(r) if r.status == HostStatus::Ok => "done".to_string(),
            Some(r) => r
                .step
                .clone()
                .or_else(|| r.phase.clone())
                .unwrap_or_default(),
            None => "done".to_string(),
        },
        changed: h.upgrade.moved || h.plan.as_ref().is_some_and(|p| !p.is_empty()),
        token_fingerprint: h.input.token_fp.clone(),
        connector: h.ready.clone(),
    }
}

/// Loads a release-change playbook (deploy, rollback) with the deploy and upgrade steps, the
/// operator's gate and drain flags winning over the playbook's parameters.
pub fn release_playbook(
    text: &str,
    path: &str,
    opts: &StagedOptions,
) -> Result<crate::playbook::Playbook<StackHost>, CliError> {
    let mut registry = crate::playbook::StepRegistry::new();
    crate::ops::deploy::register_deploy_steps(
        &mut registry,
        crate::ops::deploy::GateOverrides {
            deadline: Some(opts.healthy_deadline),
            min_healthy: Some(opts.min_healthy),
        },
    );
    crate::ops::upgrade::register_upgrade_steps(&mut registry, Some(opts.drain));
    crate::playbook::Playbook::from_str(text, std::path::Path::new(path), &registry)
        .map_err(|e| CliError::input(format!("built-in playbook: {e}")))
}

/// Closes the hosts' SSH sessions politely (those no step still shares).
pub async fn close_sessions(hosts: Vec<StackHost>) {
    for h in hosts {
        if let Some(s) = h.session
            && let Ok(s) = Arc::try_unwrap(s)
        {
            s.close().await;
        }
    }
}

/// Wraps a stop handle so the same one reaches every engine of a run.
pub fn shared_stop() -> StopHandle {
    StopHandle::new()
}

/// The pause hook for `pause`, if any.
pub fn pause_hook(pause: Pause, stop: &StopHandle) -> Option<Arc<dyn PauseHook>> {
    match pause {
        Pause::None => None,
        p => Some(Arc::new(BatchPause {
            pause: p,
            stop: stop.clone(),
        })),
    }
}
