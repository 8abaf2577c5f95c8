//! Staged release changes: `deploy` of a new release and `rollback` to an earlier one.
//!
//! A release change runs in three parts, each an engine rollout over the hosts concerned:
//! 1. **prepare** (all hosts at once): the new release's files and images staged on every host
//!    (`stage`); a host that cannot get an image fails the rollout before anything switched.
//! 2. **apply** (canary first, then batches): `current` switched (`apply` for a deploy,
//!    `switch` for a rollback), a second connector beside the old one where only the
//!    connector's image changes (`surge_connector`), the health gate (`health_gate`: a new
//!    connector ready, the proxy running, both still up and unrestarted after `min_healthy`),
//!    the old connector retired (`retire_old`). Hosts that recreate the proxy are without a
//!    ready connector for a while, so their batches never exceed `max_unavailable`.
//! 3. **rollback** (on failure, unless disabled): the failed host and every host already
//!    moved go back to the release each ran before, gated the same way; hosts not reached are
//!    not touched.
//!
//! The orchestration (which hosts, which batches, when to roll back, recording) lives here;
//! the CLI only parses flags and renders the [`ReleaseReport`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::deploy::{StackHost, holder_json_for, now_rfc3339, operator};
use super::health;
use crate::playbook::{Params, StepRegistry};
use crate::remote::{AuditEntry, AuditOutcome, LOCK_HELD_EXIT};
use crate::rollout::{
    BatchSize, Engine, HostCtx, HostFilter, HostStatus, Journal, PauseHook, Phase, Reporter,
    RolloutReport, Step, StepCx, StepFailure, StepOutcome, StopHandle, Strategy,
};
use crate::ssh::{ExecOutput, Session};
use crate::stack::release_scripts::{
    self as rs, COMPOSE_FAILED_EXIT, GateContainer, INCOMPLETE_EXIT, PULL_FAILED_EXIT,
    ReleasesFacts, SwitchSpec,
};
use crate::stack::scripts::{self, CHANGED_EXIT, CONNECTOR_SERVICE, PROXY_SERVICE};
use crate::stack::{Action, COMPOSE_FILE, ComposeCli, PROXY_CONFIG, Release};
use crate::state::StateDir;

/// How a release change is staged.
#[derive(Debug, Clone)]
pub struct StagedOptions {
    /// Hosts moved first, alone (default 1).
    pub canary: usize,
    /// Hosts per batch after the canary (None: `max_unavailable` for hosts that recreate the
    /// proxy, a quarter of the fleet when every host surges).
    pub batch: Option<BatchSize>,
    /// Hosts allowed without a ready connector at once (of the selected hosts).
    pub max_unavailable: BatchSize,
    /// How long both containers must stay up, unrestarted, after the new connector is ready.
    pub min_healthy: Duration,
    /// How long a host may take to pass the gate.
    pub healthy_deadline: Duration,
    /// Roll moved hosts back when a gate fails.
    pub auto_rollback: bool,
    /// Drain time given to a retired connector.
    pub drain: Duration,
}

impl Default for StagedOptions {
    fn default() -> Self {
        StagedOptions {
            canary: 1,
            batch: None,
            max_unavailable: BatchSize::Count(1),
            min_healthy: Duration::from_secs(10),
            healthy_deadline: super::deploy::DEFAULT_GATE_TIMEOUT,
            auto_rollback: true,
            drain: Duration::from_secs(30),
        }
    }
}

/// The staged plan: which hosts change, in which batches, which surge.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Staging {
    /// Hosts that change, in rollout order.
    pub hosts: Vec<String>,
    /// Hosts that move make-before-break (never without a ready connector).
    pub surge: Vec<String>,
    /// Hosts with no running stack before the change (a first deploy, a host found down):
    /// they have no capacity to lose and do not count against `max_unavailable`.
    pub down: Vec<String>,
    /// Hosts that recreate the proxy (and so the connector): they count against
    /// `max_unavailable` while they move.
    pub recreate: Vec<String>,
    /// The batches, the canary batch first.
    pub batches: Vec<Vec<String>>,
    /// `max_unavailable` as a host count.
    pub max_unavailable: usize,
    /// Adjustments made to the operator's flags, said once.
    pub notes: Vec<String>,
}

/// Computes batches for `hosts` (in order), given which surge and the fleet's size.
pub fn stage(
    hosts: &[String],
    surge: &BTreeSet<String>,
    down: &BTreeSet<String>,
    fleet: usize,
    opts: &StagedOptions,
) -> (Staging, Strategy) {
    let max_unavailable = opts.max_unavailable.of(fleet.max(1));
    let recreate: Vec<String> = hosts
        .iter()
        .filter(|h| !surge.contains(*h) && !down.contains(*h))
        .cloned()
        .collect();
    let mut notes = Vec::new();
    let mut canary = opts.canary.max(1);
    let mut then = match opts.batch {
        Some(b) => b.of(hosts.len().saturating_sub(canary).max(1)),
        None if recreate.is_empty() => BatchSize::Percent(25).of(fleet.max(1)),
        None => max_unavailable,
    };
    if !recreate.is_empty() {
        if canary > max_unavailable {
            notes.push(format!(
                "canary lowered from {canary} to {max_unavailable}: hosts that recreate the proxy \
                 lack a ready connector while they move, and --max-unavailable is {max_unavailable}"
            ));
            canary = max_unavailable;
        }
        if then > max_unavailable {
            notes.push(format!(
                "batches lowered from {then} to {max_unavailable} hosts (--max-unavailable)"
            ));
            then = max_unavailable;
        }
    }
    let strategy = Strategy::Canary {
        count: canary,
        then: BatchSize::Count(then),
    };
    let mut batches = Vec::new();
    let mut at = 0;
    for size in strategy.batch_sizes(hosts.len()) {
        batches.push(hosts[at..at + size].to_vec());
        at += size;
    }
    (
        Staging {
            hosts: hosts.to_vec(),
            surge: hosts
                .iter()
                .filter(|h| surge.contains(*h))
                .cloned()
                .collect(),
            down: hosts
                .iter()
                .filter(|h| down.contains(*h))
                .cloned()
                .collect(),
            recreate,
            batches,
            max_unavailable,
            notes,
        },
        strategy,
    )
}

/// The images a release's compose file names, unique, in order.
pub fn release_images(release: &Release) -> Vec<String> {
    let Some(f) = release.file(COMPOSE_FILE) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for line in String::from_utf8_lossy(&f.contents).lines() {
        if let Some(v) = line.trim_start().strip_prefix("image:") {
            let img = v.trim().trim_matches(|c| c == '\'' || c == '"').to_string();
            if !img.is_empty() && !out.contains(&img) {
                out.push(img);
            }
        }
    }
    out
}

/// A transport failure may pass when run again (`--resume`).
fn failure(e: crate::ssh::SshError) -> StepFailure {
    super::ssh_failure(e).retryable()
}

async fn exec(session: &Session, script: &str, stdin: &[u8]) -> Result<ExecOutput, StepFailure> {
    session.exec(script, stdin).await.map_err(failure)
}

fn compose(h: &StackHost) -> Result<ComposeCli, StepFailure> {
    h.facts
        .as_ref()
        .and_then(|f| f.compose)
        .ok_or_else(|| StepFailure::new("no Docker Compose on the host (run `facts` first)"))
}

use super::deploy::last_line;

/// `stage`: the new release's files (not switched to) and every image it names, present or
/// pulled. Nothing runs differently on the host afterwards.
pub struct StageStep;

#[async_trait::async_trait]
impl Step<StackHost> for StageStep {
    fn name(&self) -> &str {
        "stage"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let needed = h.plan.as_ref().is_some_and(|p| p.write_release);
        if h.check_only || !needed {
            return Ok(StepOutcome::unchanged("nothing to stage"));
        }
        let session = h.session()?;
        let images = release_images(&h.input.release);
        let (script, stdin) = rs::stage_script(&h.input.layout, &h.input.release, &images)
            .map_err(|e| StepFailure::new(e.to_string()))?;
        let out = exec(&session, &script, &stdin).await?;
        match out.status.map(|s| s as i32) {
            Some(0) => {}
            Some(PULL_FAILED_EXIT) => {
                return Err(StepFailure::new(last_line(&out.stderr_text())).with_hint(
                    "check the image reference and the host's access to its registry; \
                     no host was switched",
                ));
            }
            _ => {
                return Err(StepFailure::new(format!(
                    "stage release {}: {}",
                    h.input.release.id,
                    last_line(&out.stderr_text())
                ))
                .with_hint("nothing was switched; fix the cause and rerun"));
            }
        }
        let staged = rs::parse_stage(&out.stdout_text());
        h.upgrade.pulled = staged
            .iter()
            .filter(|(_, pulled)| *pulled)
            .map(|(i, _)| i.clone())
            .collect();
        h.upgrade.staged = true;
        Ok(StepOutcome::changed(format!(
            "staged release {} ({} image(s), {} pulled)",
            h.input.release.id,
            staged.len(),
            h.upgrade.pulled.len()
        )))
    }
}

/// `settle {wait}`: after the facts of a release change, when they show the fleet lock
/// held, waits (up to `wait`) while the
/// host's fleet lock is held. A change script keeps running on the host when its controller
/// dies (it ignores SIGHUP and SIGPIPE, so a host is never left half-switched), and holds the
/// lock until it completes; a run started right after (`deploy --resume`, `rollback`) must
/// read the host (again: the facts are re-read) once that script is done, not in the middle of its Compose recreate. Only a
/// change script's lock (it records the host's boot) is waited for; any other holder, and a
/// lock still held after `wait`, is left to the step that needs it to report (with its holder).
pub struct SettleStep {
    /// How long to wait for the lock to be released.
    pub wait: Duration,
}

#[async_trait::async_trait]
impl Step<StackHost> for SettleStep {
    fn name(&self) -> &str {
        "settle"
    }
    async fn run(&self, h: &mut StackHost, cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        if h.check_only {
            return Ok(StepOutcome::unchanged("check only"));
        }
        // The facts (read just before) say whether a lock is there: none, no round trip.
        if h.facts.as_ref().is_some_and(|f| f.lock_holder.is_none()) {
            return Ok(StepOutcome::unchanged("no change in progress"));
        }
        let session = h.session()?;
        // No lock: nothing written, one round trip. A lock: taking it and releasing it at
        // once tells free, or stale (left by a script the host's reboot killed: removed), and
        // the host can be read; held, wait.
        let lock = scripts::lock_dir(&h.input.layout);
        let holder = holder_json_for(&h.operation, cx.op_id());
        let take = crate::remote::script_lock(&lock, &holder)
            .map_err(|e| StepFailure::new(e.to_string()))?;
        let release =
            crate::remote::unlock(&lock, &holder).map_err(|e| StepFailure::new(e.to_string()))?;
        let script = format!(
            "[ -d {l} ] || exit 0\n\
             ( {take} ) >/dev/null 2>&1; tf_rc=$?\n\
             if [ \"$tf_rc\" = {LOCK_HELD_EXIT} ]; then if [ -f {b} ]; then echo held; else echo foreign; fi; cat {f} 2>/dev/null; exit 0; fi\n\
             ( {release} ) >/dev/null 2>&1; exit 0\n",
            l = crate::remote::quote(&lock),
            f = crate::remote::quote(&format!("{lock}/{}", crate::remote::HOLDER_FILE)),
            b = crate::remote::quote(&format!("{lock}/boot")),
        );
        let started = tokio::time::Instant::now();
        let mut waited = false;
        loop {
            let out = exec(&session, &script, b"").await?;
            let text = out.stdout_text();
            // A lock held across commands (a rotation, an operator's own) is no change script
            // about to finish: waiting would only delay the error that names its holder.
            if let Some(holder) = text.strip_prefix("foreign") {
                return Ok(StepOutcome::unchanged(format!(
                    "the fleet lock is held by another operation: {}",
                    holder.trim()
                )));
            }
            let Some(holder) = text.strip_prefix("held") else {
                if waited {
                    // The host changed while we waited: read it again.
                    super::deploy::FactsStep.run(h, cx).await?;
                }
                return Ok(StepOutcome::unchanged(if !waited {
                    "no change in progress".to_string()
                } else {
                    format!(
                        "waited {} for a change in progress to complete",
                        crate::rollout::fmt_duration(Duration::from_millis(
                            started.elapsed().as_millis() as u64
                        ))
                    )
                }));
            };
            if started.elapsed() >= self.wait || cx.stop().is_requested() {
                return Ok(StepOutcome::unchanged(format!(
                    "the fleet lock is still held after {}: {}",
                    crate::rollout::fmt_duration(self.wait),
                    holder.trim()
                )));
            }
            waited = true;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `surge_connector`: on a surge host, a second connector from the (new) compose file beside
/// the running one; the gate then waits for it, `retire_old` stops the old one.
pub struct SurgeStep;

#[async_trait::async_trait]
impl Step<StackHost> for SurgeStep {
    fn name(&self) -> &str {
        "surge_connector"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        if h.check_only || !h.upgrade.surge {
            return Ok(StepOutcome::unchanged("no surge"));
        }
        if h.upgrade.new_connector.is_some() {
            return Ok(StepOutcome::unchanged("second connector already started"));
        }
        let session = h.session()?;
        let list = scripts::connectors_script(&h.input.layout);
        let (ids, listed) = tokio::join!(
            health::connector_ids(&session, h.input.settings.metrics_ports()),
            exec(&session, &list, b"")
        );
        let before = scripts::parse_connectors(&listed?.stdout_text());
        let known: Vec<String> = before.iter().map(|c| c.name.clone()).collect();
        let script = format!(
            "{} || exit 1\n{}",
            scripts::scale_connectors_script(&h.input.layout, compose(h)?, known.len() + 1)
                .trim_end(),
            scripts::new_connectors_script(&h.input.layout, &known)
        );
        let out = exec(&session, &script, b"").await?;
        if !out.success() {
            return Err(StepFailure::new(format!(
                "start a second connector: {}",
                h.redact(&last_line(&out.stderr_text()))
            ))
            .with_hint("the old connector still runs"));
        }
        let new = scripts::parse_connectors(&out.stdout_text())
            .into_iter()
            .next()
            .ok_or_else(|| StepFailure::new("Compose started no second connector"))?;
        h.old_connector_ids = ids;
        h.upgrade.old_connectors = known;
        h.upgrade.new_connector = Some(new.name.clone());
        h.upgrade.retired = false;
        h.restarted = true;
        Ok(StepOutcome::changed(format!(
            "started {} beside the old connector",
            new.name
        )))
    }
}

/// `retire_old {grace}`: on a surge host whose new connector passed the gate, the old
/// connectors drain and are removed, and the service's scale goes back to 1.
pub struct RetireStep {
    /// Drain time given to each old connector.
    pub grace: Duration,
}

#[async_trait::async_trait]
impl Step<StackHost> for RetireStep {
    fn name(&self) -> &str {
        "retire_old"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        if h.check_only || !h.upgrade.surge || h.upgrade.retired {
            return Ok(StepOutcome::unchanged("nothing to retire"));
        }
        let old = h.upgrade.old_connectors.clone();
        let session = h.session()?;
        let script = scripts::stop_connectors_script(
            &h.input.layout,
            compose(h)?,
            &old,
            self.grace.as_secs(),
        );
        let out = exec(&session, &script, b"").await?;
        if !out.success() {
            return Err(StepFailure::new(format!(
                "retire the old connector: {}",
                last_line(&out.stderr_text())
            )));
        }
        h.upgrade.retired = true;
        Ok(StepOutcome::changed(if old.is_empty() {
            "scale back to one connector".to_string()
        } else {
            format!("retired {}", old.join(", "))
        }))
    }
}

/// `switch {back}`: `current` to a release already on the host, with the Compose actions its
/// change needs. `back: true` returns the host to the release it ran before this run (the
/// automatic rollback); otherwise to `upgrade.to` (the `rollback` verb's target).
pub struct SwitchStep {
    /// Return to `upgrade.from` (undo this run) rather than go to `upgrade.to`.
    pub back: bool,
}

#[async_trait::async_trait]
impl Step<StackHost> for SwitchStep {
    fn name(&self) -> &str {
        if self.back { "switch_back" } else { "switch" }
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let (target, expect) = if self.back {
            (h.upgrade.from.clone(), h.upgrade.to.clone())
        } else {
            (h.upgrade.to.clone(), h.upgrade.from.clone())
        };
        let Some(target) = target else {
            return Err(StepFailure::new(if self.back {
                "no earlier release to return to (this was the host's first release)"
            } else {
                "no target release"
            }));
        };
        if h.check_only {
            return Ok(StepOutcome::unchanged(format!("would switch to {target}")));
        }
        let session = h.session()?;
        let compose = compose(h)?;
        // Same release (only `.env` to put back): recreating the connector is enough.
        let mut actions = if target_is_current(&h.upgrade, self.back) {
            vec![Action::RecreateConnector]
        } else {
            vec![Action::UpChanged]
        };
        let mut note = String::new();
        // A surge host whose old connector still runs (the new one never passed the gate):
        // removing the new connector is the whole undo.
        let undo_surge = self.back && h.upgrade.surge && !h.upgrade.retired;
        if undo_surge {
            actions.clear();
            if let Some(n) = h.upgrade.new_connector.clone() {
                let q = crate::remote::quote(&n);
                let _ = exec(
                    &session,
                    &format!("docker rm -f {q} >/dev/null 2>&1; exit 0\n"),
                    b"",
                )
                .await?;
                note = format!(", removed {n}");
            }
        } else if h.upgrade.surge {
            // Make-before-break the other way: switch, then a second connector on the
            // earlier image, gated, then the current one retired.
            actions.clear();
            h.upgrade.new_connector = None;
            h.upgrade.retired = false;
        } else {
            h.old_connector_ids =
                health::connector_ids(&session, h.input.settings.metrics_ports()).await;
        }
        let holder = holder_json_for(&h.operation, _cx.op_id());
        let spec = SwitchSpec {
            layout: &h.input.layout,
            compose,
            target: &target,
            expect_current: expect.as_deref(),
            actions: actions.clone(),
            restore_env: self.back && h.upgrade.wrote_env,
            holder_json: &holder,
        };
        let script = rs::switch_script(&spec).map_err(|e| StepFailure::new(e.to_string()))?;
        let out = exec(&session, &script, b"").await?;
        match out.status.map(|s| s as i32) {
            Some(0) => {}
            Some(LOCK_HELD_EXIT) => {
                return Err(StepFailure::new(format!(
                    "another operation holds the fleet lock: {}",
                    out.stdout_text().trim()
                ))
                .with_hint(format!(
                    "wait for it; if that run is dead: tunnelfleet unlock -i INVENTORY --limit {}",
                    h.input.host.name
                ))
                .retryable());
            }
            Some(INCOMPLETE_EXIT) => {
                return Err(StepFailure::new(last_line(&out.stderr_text()))
                    .with_hint("see `tunnelfleet releases` for what the host has"));
            }
            Some(CHANGED_EXIT) => {
                return Err(StepFailure::new(last_line(&out.stderr_text())).retryable());
            }
            Some(COMPOSE_FAILED_EXIT) => {
                h.upgrade.moved = true;
                return Err(StepFailure::new(
                    h.redact(&out.stderr_text()).trim().to_string(),
                ));
            }
            None => {
                // Killed on the host (a reboot) after it started: it may have switched.
                h.upgrade.moved = true;
                return Err(StepFailure::new(format!(
                    "the switch script ended without an exit status (killed, or the host went \
                     down): {}",
                    h.redact(&last_line(&out.stderr_text()))
                )));
            }
            _ => {
                return Err(StepFailure::new(h.redact(&last_line(&out.stderr_text()))));
            }
        }
        h.upgrade.moved = true;
        h.restarted = !actions.is_empty() || (h.upgrade.surge && !undo_surge);
        if undo_surge {
            // The old connector never stopped: nothing to wait for, nothing to start or
            // retire (the removed connector counts as handled).
            h.restarted = false;
            h.upgrade.retired = true;
        }
        if self.back {
            h.upgrade.rolled_back = true;
        }
        Ok(StepOutcome::changed(format!(
            "current -> {target}{note}{}",
            if actions.is_empty() {
                ""
            } else {
                " (every service recreated)"
            }
        )))
    }
}

fn target_is_current(u: &super::host_state::UpgradeState, back: bool) -> bool {
    back && u.from.is_some() && u.from == u.to
}

/// The stack's containers as the gate sees them (one round trip).
async fn gate_state(
    session: &Session,
    layout: &crate::stack::Layout,
) -> Result<Vec<GateContainer>, StepFailure> {
    Ok(gate_state_ip(session, layout).await?.0)
}

async fn gate_state_ip(
    session: &Session,
    layout: &crate::stack::Layout,
) -> Result<(Vec<GateContainer>, Option<String>), StepFailure> {
    let out = exec(session, &rs::gate_state_script(layout), b"").await?;
    let text = out.stdout_text();
    Ok((rs::parse_gate_state(&text), rs::parse_proxy_ip(&text)))
}

/// The port the proxy terminates TLS on (`listen_addr` in the rendered config).
pub const PROXY_TLS_PORT: u16 = 8080;

/// The proxy actually serving: a TLS handshake with the tunnel domain as SNI on the proxy's
/// port, through the SSH connection, trusting only the fleet's CA. Skipped (None) when the
/// controller has no CA for the tunnel (the setup component owns the certificates).
async fn proxy_serves(
    h: &StackHost,
    session: &Session,
    ip: Option<&str>,
) -> Option<Result<String, String>> {
    let ca = h
        .input
        .certs
        .iter()
        .find(|(c, _, _)| *c == crate::stack::CertFile::CaCrt)
        .map(|(_, b, _)| String::from_utf8_lossy(b).into_owned())?;
    let Some(ip) = ip else {
        return Some(Err(
            "the proxy container has no address to reach it on".to_string()
        ));
    };
    let r = super::tls_probe::handshake(
        session,
        ip,
        PROXY_TLS_PORT,
        &h.input.settings.tunnel_domain,
        &ca,
        Duration::from_secs(5),
    )
    .await;
    Some(r.map(|p| format!("serves certificate {}", p.serial)))
}

/// What is wrong with the stack's containers, if anything: a service missing or down, or
/// restarted since `baseline` (same container name, higher restart count or a new start).
fn unhealthy(now: &[GateContainer], baseline: Option<&[GateContainer]>) -> Option<String> {
    for svc in [PROXY_SERVICE, CONNECTOR_SERVICE] {
        let of_svc: Vec<&GateContainer> = now.iter().filter(|c| c.service == svc).collect();
        if of_svc.is_empty() {
            return Some(format!("{svc}: no container"));
        }
        if !of_svc.iter().any(|c| c.is_running()) {
            let c = of_svc[0];
            return Some(format!(
                "{svc}: {} is {} (restarted {} time(s))",
                c.name, c.state, c.restarts
            ));
        }
    }
    if let Some(base) = baseline {
        for c in now {
            if let Some(b) = base.iter().find(|b| b.name == c.name)
                && (c.restarts > b.restarts || c.started_at != b.started_at || !c.is_running())
            {
                return Some(format!(
                    "{}: {} restarted during the minimum healthy time ({} -> {} restarts, now {})",
                    c.service, c.name, b.restarts, c.restarts, c.state
                ));
            }
        }
    }
    None
}

/// Reads the last log lines of `names` into the host's report (secrets redacted), and
/// returns the most telling line for the failure message.
async fn collect_logs(h: &mut StackHost, session: &Session, names: &[String]) -> Option<String> {
    // Enough lines to span a crash-looping container's last incarnations (a restart prints a
    // few start lines before its error); the report keeps the last 8.
    let out = session.exec(&rs::logs_script(names, 20), b"").await.ok()?;
    let blocks = rs::parse_logs(&out.stdout_text());
    let mut telling = None;
    let mut logs = Vec::new();
    for (name, lines) in blocks {
        let lines: Vec<String> = lines
            .iter()
            .map(|l| crate::secrets::redact_token_shaped(&h.redact(l)))
            .collect();
        if lines.iter().any(|l| l.contains("Unauthorized")) {
            h.upgrade.token_refused = true;
        }
        if let Some(l) = lines.iter().rev().find(|l| {
            let low = l.to_ascii_lowercase();
            low.contains("error") || low.contains("fatal") || low.contains("unauthorized")
        }) && telling.is_none()
        {
            telling = Some(format!("{name}: {l}"));
        }
        let keep = lines.len().saturating_sub(8);
        logs.push((name, lines[keep..].to_vec()));
    }
    h.upgrade.logs = logs;
    telling
}

/// The health gate of a host that changed: a connector it did not have before is ready, the
/// proxy and the connector run, and after `min_healthy` both still run, unrestarted, with the
/// connector still ready. A container that is down while the gate waits fails it at once
/// (a refused token, a bad config), with the containers' last log lines.
pub async fn gate(
    h: &mut StackHost,
    cx: &StepCx,
    deadline: Duration,
    min_healthy: Duration,
) -> Result<String, StepFailure> {
    let session = h.session()?;
    let started = tokio::time::Instant::now();
    let until = started + deadline;
    let mut down_twice = 0u32;
    let mut tls_error: Option<String> = None;
    let ready = loop {
        let (probes, state) = tokio::join!(
            health::connectors(&session, h.input.settings.metrics_ports()),
            gate_state_ip(&session, &h.input.layout)
        );
        let (state, proxy_ip) = state?;
        if let Some(c) = probes.iter().find(|c| {
            c.is_ready()
                && c.connector_id
                    .as_ref()
                    .is_none_or(|id| !h.old_connector_ids.contains(id))
        }) && unhealthy(&state, None).is_none()
        {
            match proxy_serves(h, &session, proxy_ip.as_deref()).await {
                Some(Err(e)) => {
                    tls_error = Some(e);
                }
                served => break (c.clone(), state, served.and_then(Result::ok)),
            }
        }
        // Two looks in a row: a container between a crash and its restart is not a verdict.
        if let Some(why) = unhealthy(&state, None) {
            down_twice += 1;
            if down_twice >= 2 {
                let names: Vec<String> = state.iter().map(|c| c.name.clone()).collect();
                let telling = collect_logs(h, &session, &names).await;
                return Err(gate_failure(why, telling));
            }
        } else {
            down_twice = 0;
        }
        if tokio::time::Instant::now() >= until {
            let names: Vec<String> = state.iter().map(|c| c.name.clone()).collect();
            let telling = collect_logs(h, &session, &names).await;
            let why = match tls_error.take() {
                Some(e) => format!(
                    "the proxy does not serve within {}: {e}",
                    crate::rollout::fmt_duration(deadline)
                ),
                None => format!(
                    "no new connector became ready within {}",
                    crate::rollout::fmt_duration(deadline)
                ),
            };
            return Err(gate_failure(why, telling));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let (c, baseline, served) = ready;
    let ready_ms = started.elapsed().as_millis() as u64;
    h.gate_ms = Some(ready_ms);
    if !min_healthy.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(min_healthy) => {}
            _ = cx.stop().requested() => {}
        }
        let (probes, state) = tokio::join!(
            health::connectors(&session, h.input.settings.metrics_ports()),
            gate_state(&session, &h.input.layout)
        );
        let state = state?;
        let still_ready = probes.iter().any(|p| p.is_ready());
        let why = unhealthy(&state, Some(&baseline)).or_else(|| {
            (!still_ready).then(|| "no connector ready after the minimum healthy time".into())
        });
        if let Some(why) = why {
            let names: Vec<String> = state.iter().map(|c| c.name.clone()).collect();
            let telling = collect_logs(h, &session, &names).await;
            return Err(gate_failure(why, telling));
        }
        h.upgrade.gate_containers = state;
    } else {
        h.upgrade.gate_containers = baseline;
    }
    let detail = format!(
        "connector {} ready in {ready_ms} ms{}{}",
        c.connector_id.as_deref().unwrap_or("?"),
        served.map(|s| format!(", proxy {s}")).unwrap_or_default(),
        if min_healthy.is_zero() {
            String::new()
        } else {
            format!(
                ", healthy for {}",
                crate::rollout::fmt_duration(min_healthy)
            )
        }
    );
    h.ready = Some(c);
    Ok(detail)
}

fn gate_failure(why: String, telling: Option<String>) -> StepFailure {
    let refused = telling
        .as_deref()
        .is_some_and(|t| t.contains("Unauthorized"));
    let msg = match telling {
        Some(t) => format!("{why}; last log: {t}"),
        None => why,
    };
    StepFailure::new(msg).with_hint(if refused {
        "the edge refused the token: the previous .env is put back on the hosts this run \
         reached; a token change belongs to `tunnelfleet rotate-token`"
    } else {
        "the containers' last log lines are in the report (--json: hosts[].upgrade.logs)"
    })
}

/// `releases`: the releases on the host, with their compose files and configs (read-only).
pub struct ReleasesStep;

#[async_trait::async_trait]
impl Step<StackHost> for ReleasesStep {
    fn name(&self) -> &str {
        "releases"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let session = h.session()?;
        let facts = read_releases(&session, h, true).await?;
        let detail = format!(
            "{} release(s), current {}",
            facts.releases.len(),
            facts.current.as_deref().unwrap_or("none")
        );
        h.upgrade.releases = Some(facts);
        Ok(StepOutcome::unchanged(detail))
    }
}

/// Reads the host's releases (one round trip).
pub async fn read_releases(
    session: &Session,
    h: &StackHost,
    with_files: bool,
) -> Result<ReleasesFacts, StepFailure> {
    let out = exec(
        session,
        &rs::releases_script(&h.input.layout, with_files),
        b"",
    )
    .await?;
    if !out.success() {
        return Err(StepFailure::new(format!(
            "list releases: {}",
            last_line(&out.stderr_text())
        )));
    }
    Ok(rs::parse_releases(&out.stdout_text()))
}

/// Registers the release-change steps (`settle`, `stage`, `surge_connector`, `retire_old`,
/// `switch`, `switch_back`) beside the deploy steps.
pub fn register_upgrade_steps(r: &mut StepRegistry<StackHost>, drain_override: Option<Duration>) {
    r.register("settle", |p| {
        let params = Params::new(p, &["wait"])?;
        let wait = params.duration("wait")?.unwrap_or(Duration::from_secs(120));
        Ok(Arc::new(SettleStep { wait }) as Arc<dyn Step<StackHost>>)
    });
    r.register("stage", |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(StageStep) as Arc<dyn Step<StackHost>>)
    });
    r.register("surge_connector", |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(SurgeStep) as Arc<dyn Step<StackHost>>)
    });
    r.register("retire_old", move |p| {
        let params = Params::new(p, &["grace"])?;
        let grace = match drain_override {
            Some(d) => d,
            None => params.duration("grace")?.unwrap_or(Duration::from_secs(30)),
        };
        Ok(Arc::new(RetireStep { grace }) as Arc<dyn Step<StackHost>>)
    });
    r.register("releases", |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(ReleasesStep) as Arc<dyn Step<StackHost>>)
    });
    r.register("switch", |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(SwitchStep { back: false }) as Arc<dyn Step<StackHost>>)
    });
    r.register("switch_back", |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(SwitchStep { back: true }) as Arc<dyn Step<StackHost>>)
    });
}

/// What the controller keeps about a release change while it runs (so `--resume` and
/// `rollback` know where every host came from).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReleaseOpRecord {
    /// The operation id.
    pub op_id: String,
    /// `deploy` or `rollback`.
    pub operation: String,
    /// Who ran it.
    pub operator: String,
    /// When it started (RFC 3339).
    pub started: String,
    /// Per host: the release before, the release targeted.
    pub hosts: Vec<RecordedHost>,
    /// Whether the run reached its end (every host on one complete release, rolled back
    /// where a gate failed). False: the controller died or was interrupted.
    pub finished: bool,
    /// How it ended, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// One host of a [`ReleaseOpRecord`].
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RecordedHost {
    /// The host.
    pub name: String,
    /// Its release before the operation.
    pub from: Option<String>,
    /// The release the operation takes it to.
    pub to: String,
}

/// The key the record and journal of a release change are kept under: the tunnel(s).
pub fn record_key(tunnels: &[String]) -> String {
    let mut t = tunnels.to_vec();
    t.sort();
    t.dedup();
    t.join("+")
}

/// Reads the release-change record for `key`.
pub fn read_record(state: &StateDir, key: &str) -> Result<Option<ReleaseOpRecord>, String> {
    StateDir::read_json(&state.op_record("release", key)).map_err(|e| e.to_string())
}

/// Writes the release-change record for `key`.
pub fn write_record(state: &StateDir, key: &str, rec: &ReleaseOpRecord) -> Result<(), String> {
    state
        .ensure_journal_dir()
        .and_then(|_| crate::state::write_json(&state.op_record("release", key), rec))
        .map_err(|e| format!("{}: {e}", state.op_record("release", key).display()))
}

/// What a staged run reports.
pub struct RolloutOutcome {
    /// The hosts' contexts after every part (changing hosts only).
    pub hosts: Vec<StackHost>,
    /// The forward rollout's report (without contexts).
    pub forward: RolloutReport<()>,
    /// The rollback's report, when one ran.
    pub rollback: Option<RolloutReport<()>>,
    /// Whether a stop was requested.
    pub interrupted: bool,
}

fn strip<C>(r: RolloutReport<C>) -> (RolloutReport<()>, Vec<C>) {
    (
        RolloutReport {
            op_id: r.op_id,
            hosts: r.hosts,
            timeline: r.timeline,
            summary: r.summary,
            contexts: Vec::new(),
        },
        r.contexts,
    )
}

/// The parts of a staged run, all over the same host contexts.
pub struct StagedRun<'a> {
    /// Progress.
    pub reporter: &'a dyn Reporter,
    /// Shared with the Ctrl-C handler.
    pub stop: StopHandle,
    /// Between batches.
    pub pause: Option<Arc<dyn PauseHook>>,
    /// The operation id.
    pub op_id: String,
    /// The journal, when the run keeps one.
    pub journal: Option<Journal>,
}

impl StagedRun<'_> {
    /// Runs `forward` (prepare + apply phases) on `hosts`; on a failure with
    /// `opts.auto_rollback`, runs the `rollback` phase on every host that moved.
    pub async fn run(
        &self,
        forward: Vec<Phase<StackHost>>,
        rollback: Phase<StackHost>,
        hosts: Vec<StackHost>,
        opts: &StagedOptions,
        max_unavailable: usize,
    ) -> RolloutOutcome {
        let mut engine = Engine::new(self.reporter).with_op_id(&self.op_id);
        if let Some(j) = &self.journal {
            engine = engine.with_journal(j.clone());
        }
        engine = engine.with_stop(self.stop.clone());
        if let Some(p) = &self.pause {
            engine = engine.with_pause(p.clone());
        }
        let report = engine.run(forward, hosts).await;
        let interrupted = report.summary.stop_requested;
        let failed = !report.is_success();
        let (forward, mut ctxs) = strip(report);
        if !failed || interrupted || !opts.auto_rollback {
            return RolloutOutcome {
                hosts: ctxs,
                forward,
                rollback: None,
                interrupted,
            };
        }
        // What a rollback undoes: release switches; and, when the edge refused the run's new
        // token, the `.env` it wrote. A token or certificate that is merely new is shared
        // state, not part of a release: never brought back.
        let refused = ctxs.iter().any(|h| h.upgrade.token_refused);
        for h in ctxs.iter_mut() {
            if !refused {
                h.upgrade.wrote_env = false;
            }
        }
        let (moved, rest): (Vec<StackHost>, Vec<StackHost>) = ctxs.drain(..).partition(|h| {
            h.upgrade.moved && (h.upgrade.from != h.upgrade.to || h.upgrade.wrote_env)
        });
        if moved.is_empty() {
            return RolloutOutcome {
                hosts: rest,
                forward,
                rollback: None,
                interrupted,
            };
        }
        let phase = rollback
            .strategy(Strategy::Batches(BatchSize::Count(max_unavailable.max(1))))
            .max_unavailable(usize::MAX)
            .hosts(HostFilter::Passed);
        let engine = Engine::new(self.reporter)
            .with_op_id(&self.op_id)
            .with_stop(self.stop.clone());
        let report = engine.run(vec![phase], moved).await;
        let interrupted = interrupted || report.summary.stop_requested;
        let (rb, moved) = strip(report);
        let mut all = rest;
        for mut h in moved {
            if let Some(r) = rb.host(h.name())
                && r.status != HostStatus::Ok
            {
                h.upgrade.rolled_back = false;
                h.upgrade.rollback_error = Some(
                    r.message
                        .clone()
                        .unwrap_or_else(|| "rollback did not complete".into()),
                );
            }
            all.push(h);
        }
        RolloutOutcome {
            hosts: all,
            forward,
            rollback: Some(rb),
            interrupted,
        }
    }
}

/// Writes each changed host's audit line with the real outcome, and prunes old releases on
/// hosts that ended on their target (keeping `keep_releases`, the current and the previous).
pub async fn record_outcomes(hosts: &mut [StackHost], ok: &BTreeSet<String>, op_id: &str) {
    let jobs = hosts.iter_mut().map(|h| async move {
        let Some(session) = h.session.clone() else {
            return;
        };
        let succeeded = ok.contains(h.name());
        let outcome = if h.upgrade.rolled_back {
            AuditOutcome::RolledBack
        } else if succeeded {
            AuditOutcome::Succeeded
        } else {
            AuditOutcome::Failed
        };
        let release = if h.upgrade.rolled_back {
            h.upgrade.from.clone()
        } else {
            h.upgrade.to.clone()
        };
        let entry = AuditEntry {
            time: now_rfc3339(),
            operator: operator(),
            operation: h.operation.clone(),
            outcome,
            release,
            from_release: h.upgrade.from.clone(),
            token_fingerprint: if h.upgrade.wrote_env && !h.upgrade.rolled_back {
                h.input.token_fp.clone()
            } else {
                None
            },
            cert_serial: None,
        };
        let Ok(audit) = crate::remote::audit_line(&scripts::audit_log(&h.input.layout), &entry)
        else {
            return;
        };
        let mut script = format!("( {audit} ) || echo 'audit log: not written' >&2\n");
        if succeeded && !h.upgrade.rolled_back {
            let holder = holder_json_for(&h.operation, op_id);
            let protect: Vec<&str> = [h.upgrade.from.as_deref(), h.upgrade.to.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            if let Ok(p) = rs::prune_script(
                &h.input.layout,
                h.input.settings.keep_releases,
                &protect,
                &holder,
            ) {
                script.push_str(&format!("( {p} )\n"));
            }
        }
        if let Ok(out) = session.exec(&script, b"").await {
            h.upgrade.pruned = rs::parse_pruned(&out.stdout_text());
        }
    });
    futures::future::join_all(jobs).await;
}

/// Which release each host goes back to for `rollback` without `--to`.
///
/// While a release change is unfinished (a controller died or was interrupted), `rollback`
/// concerns that change only: a host it recorded goes to the release it ran before an
/// interrupted deploy (the `from`, which is `current` again for a host the deploy never
/// reached or already undid: no change), or to the target of an interrupted rollback (which
/// finishes it); a host it did not record stays where it is. Otherwise: the release the host's
/// audit log says `current` replaced, else the newest other complete release on the host.
pub fn previous_release(
    host: &str,
    facts: &ReleasesFacts,
    unfinished: Option<&ReleaseOpRecord>,
) -> Option<String> {
    let cur = facts.current.as_deref()?;
    let complete = |id: &str| facts.release(id).is_some_and(|r| r.complete);
    if let Some(rec) = unfinished {
        let Some(h) = rec.hosts.iter().find(|h| h.name == host) else {
            return Some(cur.to_string());
        };
        let target = if rec.operation == "rollback" {
            Some(h.to.as_str())
        } else {
            h.from.as_deref()
        };
        return target.filter(|t| complete(t)).map(str::to_string);
    }
    for line in facts.audit.iter().rev() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["release"].as_str() == Some(cur)
            && matches!(
                v["outcome"].as_str(),
                Some("succeeded") | Some("rolled_back")
            )
            && let Some(from) = v["from_release"].as_str()
            && from != cur
            && complete(from)
        {
            return Some(from.to_string());
        }
    }
    facts
        .releases
        .iter()
        .find(|r| r.id != cur && r.complete)
        .map(|r| r.id.clone())
}

/// Whether moving a host from release `from` to `to` can surge (only the connector's image
/// changes), judged on the files the host has.
pub fn can_surge(facts: &ReleasesFacts, from: &str, to_compose: &str, to_config: &str) -> bool {
    let (Some(fc), Some(fp)) = (
        facts.file(from, COMPOSE_FILE),
        facts.file(from, PROXY_CONFIG),
    ) else {
        return false;
    };
    fp == to_config && rs::connector_image_only(fc, to_compose)
}

/// Why a release change did not start (nothing was touched).
#[derive(Debug)]
pub struct ReleaseError {
    /// 2: bad input; 3: another run holds the controller's lock.
    pub code: i32,
    /// What to do, secret-free.
    pub message: String,
}

impl ReleaseError {
    fn input(message: impl Into<String>) -> Self {
        ReleaseError {
            code: 2,
            message: message.into(),
        }
    }
}

/// What a release change is asked to do.
pub struct ReleaseInputs {
    /// `deploy` or `rollback`.
    pub operation: &'static str,
    /// The host contexts (not connected yet), in inventory order.
    pub hosts: Vec<StackHost>,
    /// The playbook's phases: `facts`, (`prepare`), `apply`, `rollback` (run only on failure).
    pub phases: Vec<Phase<StackHost>>,
    /// The controller's state dir.
    pub state: StateDir,
    /// The tunnel(s) concerned (the record's key).
    pub tunnels: Vec<String>,
    /// Plan only.
    pub check: bool,
    /// Finish an interrupted run of the same operation.
    pub resume: bool,
    /// `rollback --to`: the release every host goes to.
    pub to: Option<String>,
}

/// What a release change did (or, with `check`, would do).
pub struct ReleaseReport {
    /// The operation id.
    pub op_id: String,
    /// The staged plan.
    pub staging: Staging,
    /// Every host, in inventory order, with what the steps recorded.
    pub hosts: Vec<StackHost>,
    /// Per host: the engine's record of its facts, forward and rollback parts.
    pub records: BTreeMap<String, crate::rollout::HostRecord>,
    /// Why the forward rollout halted, if it did.
    pub halted: Option<String>,
    /// The run was interrupted (Ctrl-C, SIGTERM).
    pub interrupted: bool,
    /// A rollback ran.
    pub rolled_back: bool,
    /// Per host, unified diffs of the changed text files (by path).
    pub diffs: BTreeMap<String, BTreeMap<String, String>>,
    /// Whether the record says the change is complete.
    pub finished: bool,
}

fn take_phase(phases: &mut Vec<Phase<StackHost>>, name: &str) -> Option<Phase<StackHost>> {
    let i = phases.iter().position(|p| p.name == name)?;
    Some(phases.remove(i))
}

/// Runs a release change: facts everywhere, the staged plan, then (unless `check`) the
/// staged rollout with automatic rollback, the audit lines, pruning, and the record.
pub async fn run_release_change(
    mut inputs: ReleaseInputs,
    opts: &StagedOptions,
    reporter: &dyn Reporter,
    stop: StopHandle,
    pause: Option<Arc<dyn PauseHook>>,
) -> Result<ReleaseReport, ReleaseError> {
    let op = inputs.operation;
    let key = record_key(&inputs.tunnels);
    let prior = read_record(&inputs.state, &key).map_err(ReleaseError::input)?;
    let unfinished = prior.filter(|r| !r.finished);
    if !inputs.check {
        match (&unfinished, inputs.resume) {
            // `rollback` undoes an interrupted deploy, or finishes an interrupted rollback.
            (Some(_), false) if op == "rollback" => {}
            (Some(r), _) if r.operation != op || !inputs.resume => {
                let next = if r.operation == "rollback" {
                    "run `tunnelfleet rollback` to finish it".to_string()
                } else {
                    "run `tunnelfleet deploy --resume` to finish it, or `tunnelfleet rollback` \
                     to undo it"
                        .to_string()
                };
                return Err(ReleaseError::input(format!(
                    "an interrupted {} (op {}, started {} by {}) has not finished on {} host(s): \
                     {next}",
                    r.operation,
                    r.op_id,
                    r.started,
                    r.operator,
                    r.hosts.len(),
                )));
            }
            (None, true) => {
                return Err(ReleaseError::input(format!(
                    "nothing to resume: no interrupted release change for {key} on this \
                     controller (every earlier run finished); run `tunnelfleet {op}` instead"
                )));
            }
            _ => {}
        }
    }
    // Continuing an interrupted run (its op id, its record): `deploy --resume`, or `rollback`
    // after an interrupted rollback.
    let continuing = !inputs.check
        && unfinished
            .as_ref()
            .is_some_and(|r| r.operation == op && (inputs.resume || op == "rollback"));
    let _lock = if inputs.check {
        None
    } else {
        Some(
            inputs
                .state
                .lock("release", &key, Duration::ZERO)
                .await
                .map_err(|e| match e {
                    crate::state::LockError::Held { .. } => ReleaseError {
                        code: 3,
                        message: format!(
                            "another deploy or rollback of {key} runs on this controller: {e}"
                        ),
                    },
                    other => ReleaseError::input(other.to_string()),
                })?,
        )
    };
    let op_id = match (&unfinished, continuing) {
        (Some(r), true) => r.op_id.clone(),
        _ => crate::rollout::new_op_id(),
    };
    let facts_phase = take_phase(&mut inputs.phases, "facts")
        .ok_or_else(|| ReleaseError::input("playbook: no `facts` phase"))?;
    let rollback_phase = take_phase(&mut inputs.phases, "rollback")
        .ok_or_else(|| ReleaseError::input("playbook: no `rollback` phase"))?;
    let mut apply_phase = take_phase(&mut inputs.phases, "apply")
        .ok_or_else(|| ReleaseError::input("playbook: no `apply` phase"))?;
    let prepare_phase = take_phase(&mut inputs.phases, "prepare");
    let fleet = inputs.hosts.len();
    for h in inputs.hosts.iter_mut() {
        h.deferred_audit = true;
    }

    // 1. Facts, everywhere at once.
    let engine = Engine::new(reporter)
        .with_op_id(&op_id)
        .with_stop(stop.clone());
    let facts_report = engine.run(vec![facts_phase], inputs.hosts).await;
    let (facts_report, mut hosts) = strip(facts_report);
    let mut records: BTreeMap<String, crate::rollout::HostRecord> = facts_report
        .hosts
        .iter()
        .map(|r| (r.host.clone(), r.clone()))
        .collect();
    let reached = |h: &StackHost| {
        facts_report
            .host(h.name())
            .is_some_and(|r| r.status == HostStatus::Ok)
    };

    // 2. Targets (rollback) and the surge decision.
    let mut diffs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    if op == "rollback" {
        let mut problems = Vec::new();
        for h in hosts.iter_mut().filter(|h| reached(h)) {
            let Some(rf) = h.upgrade.releases.clone() else {
                continue;
            };
            let target = match &inputs.to {
                Some(t) => rf.release(t).filter(|r| r.complete).map(|r| r.id.clone()),
                None => previous_release(h.name(), &rf, unfinished.as_ref()),
            };
            let Some(target) = target else {
                let have: Vec<String> = rf
                    .releases
                    .iter()
                    .map(|r| {
                        let mut s = r.id.clone();
                        if Some(&r.id) == rf.current.as_ref() {
                            s.push_str(" (current)");
                        }
                        if !r.complete {
                            s.push_str(" (incomplete)");
                        }
                        s
                    })
                    .collect();
                problems.push(format!(
                    "{}: {} (it has: {})",
                    h.name(),
                    match &inputs.to {
                        Some(t) => format!("no complete release {t}"),
                        None => "no earlier complete release to go back to".to_string(),
                    },
                    if have.is_empty() {
                        "nothing".to_string()
                    } else {
                        have.join(", ")
                    }
                ));
                continue;
            };
            h.upgrade.from = rf.current.clone();
            h.upgrade.to = Some(target.clone());
            if rf.current.as_deref() != Some(target.as_str()) {
                let get = |path: &str| rf.file(&target, path).unwrap_or_default().to_string();
                if let Some(cur) = &rf.current {
                    h.upgrade.surge = can_surge(&rf, cur, &get(COMPOSE_FILE), &get(PROXY_CONFIG))
                        && h.facts.as_ref().is_some_and(|f| {
                            f.facts.proxy == crate::stack::ContainerState::Running
                                && f.facts.connector == crate::stack::ContainerState::Running
                        });
                    let mut d = BTreeMap::new();
                    for path in [COMPOSE_FILE, PROXY_CONFIG] {
                        let text = crate::stack::diff::unified(
                            &format!("releases/{cur}/{path}"),
                            &format!("releases/{target}/{path}"),
                            rf.file(cur, path).unwrap_or_default(),
                            &get(path),
                        );
                        if !text.is_empty() {
                            d.insert(path.to_string(), text);
                        }
                    }
                    diffs.insert(h.name().to_string(), d);
                }
            }
        }
        if !problems.is_empty() {
            return Err(ReleaseError::input(format!(
                "rollback refused before touching any host:\n  {}",
                problems.join("\n  ")
            )));
        }
    } else {
        // Deploy: read the releases of hosts whose release changes, for the surge decision
        // and the diffs.
        let jobs = hosts.iter().enumerate().filter_map(|(i, h)| {
            let p = h.plan.as_ref()?;
            (reached(h) && p.write_release).then_some(i)
        });
        let idx: Vec<usize> = jobs.collect();
        let reads = futures::future::join_all(idx.iter().map(|&i| {
            let h = &hosts[i];
            async move {
                match h.session.clone() {
                    Some(s) => read_releases(&s, h, true).await.ok(),
                    None => None,
                }
            }
        }))
        .await;
        for (i, rf) in idx.into_iter().zip(reads) {
            let h = &mut hosts[i];
            let (Some(rf), Some(plan)) = (rf, h.plan.clone()) else {
                continue;
            };
            let new_file = |path: &str| {
                h.input
                    .release
                    .file(path)
                    .map(|f| String::from_utf8_lossy(&f.contents).into_owned())
                    .unwrap_or_default()
            };
            let (nc, np) = (new_file(COMPOSE_FILE), new_file(PROXY_CONFIG));
            let mut d = BTreeMap::new();
            let cur = plan.current_release.clone();
            for (path, new) in [(COMPOSE_FILE, &nc), (PROXY_CONFIG, &np)] {
                let old = cur
                    .as_deref()
                    .and_then(|c| rf.file(c, path))
                    .unwrap_or_default();
                let text = crate::stack::diff::unified(
                    &match &cur {
                        Some(c) => format!("releases/{c}/{path}"),
                        None => "/dev/null".to_string(),
                    },
                    &format!("releases/{}/{path}", plan.release_id),
                    old,
                    new,
                );
                if !text.is_empty() {
                    d.insert(path.to_string(), text);
                }
            }
            diffs.insert(h.name().to_string(), d);
            let healthy = h.facts.as_ref().is_some_and(|f| {
                f.facts.proxy == crate::stack::ContainerState::Running
                    && f.facts.connector == crate::stack::ContainerState::Running
                    && f.containers.len() <= 3
            });
            if let Some(c) = &cur
                && plan.switch_current
                && plan.actions == [Action::UpChanged]
                && healthy
                && can_surge(&rf, c, &nc, &np)
            {
                h.upgrade.surge = true;
                if let Some(p) = h.plan.as_mut() {
                    p.actions.clear();
                }
            }
            h.upgrade.releases = Some(rf);
        }
        if let Some(rec) = unfinished.as_ref().filter(|_| inputs.resume) {
            // What the interrupted run's journal says passed its gate.
            let log = Journal::load(&inputs.state.journal(op, &key)).ok();
            for h in hosts.iter_mut() {
                if let Some(r) = rec.hosts.iter().find(|r| r.name == h.name()) {
                    h.upgrade.from = r.from.clone();
                    // Switched by the interrupted run but never gated: its plan is empty
                    // now, yet it must pass the gate before the rollout goes on (a bad
                    // release caught mid-gate must not spread), and be rolled back if not.
                    let switched = h
                        .plan
                        .as_ref()
                        .is_some_and(|p| p.is_empty() && p.release_id == r.to)
                        && r.from.as_deref() != Some(r.to.as_str());
                    let gated = log
                        .as_ref()
                        .is_some_and(|l| l.is_done(&rec.op_id, &r.name, "apply", "health_gate"));
                    if switched && !gated && reached(h) {
                        h.upgrade.regate = true;
                        h.upgrade.moved = true;
                        h.upgrade.to = Some(r.to.clone());
                        h.restarted = true;
                    }
                }
            }
        }
    }
    // A host to gate again may be mid make-before-break (the old connector still beside the
    // new one): the gate must wait for the connector on the release's image, not accept the
    // old one, and a rollback must remove the new one.
    for h in hosts.iter_mut().filter(|h| h.upgrade.regate) {
        let Some(session) = h.session.clone() else {
            continue;
        };
        let Ok(out) = session
            .exec(&rs::connector_images_script(&h.input.layout), b"")
            .await
        else {
            continue;
        };
        let text = out.stdout_text();
        let listed = scripts::parse_connectors(&text);
        let images = rs::parse_connector_images(&text);
        let want = h.input.settings.cloudflared_image.clone();
        type Named<'a> = Vec<&'a (String, String)>;
        let (new, old): (Named, Named) = images.iter().partition(|(_, i)| *i == want);
        // Connectors on another image than the release's: the host is mid make-before-break
        // (or its surge step never ran): finish it, gated on a connector on the new image.
        if !old.is_empty() {
            h.upgrade.surge = true;
            h.upgrade.new_connector = new.first().map(|(n, _)| n.clone());
            h.upgrade.old_connectors = old.iter().map(|(n, _)| n.clone()).collect();
            h.upgrade.retired = false;
            h.old_connector_ids = listed
                .iter()
                .filter(|c| old.iter().any(|(n, _)| *n == c.name))
                .filter_map(|c| c.connector_id.clone())
                .collect();
        }
    }
    let changing: Vec<String> = hosts
        .iter()
        .filter(|h| reached(h))
        .filter(|h| match op {
            "rollback" => h.upgrade.to.is_some() && h.upgrade.to != h.upgrade.from,
            _ => h.plan.as_ref().is_some_and(|p| !p.is_empty()) || h.upgrade.regate,
        })
        .map(|h| h.name().to_string())
        .collect();
    let surge: BTreeSet<String> = hosts
        .iter()
        .filter(|h| h.upgrade.surge && changing.iter().any(|c| c == h.name()))
        .map(|h| h.name().to_string())
        .collect();
    let down: BTreeSet<String> = hosts
        .iter()
        .filter(|h| changing.iter().any(|c| c == h.name()))
        .filter(|h| {
            h.facts.as_ref().is_some_and(|f| {
                f.facts.proxy != crate::stack::ContainerState::Running
                    || f.facts.connector != crate::stack::ContainerState::Running
            })
        })
        .map(|h| h.name().to_string())
        .collect();
    let (staging, strategy) = stage(&changing, &surge, &down, fleet, opts);
    // Hosts an unfinished run recorded that this run cannot reach: the record keeps them (and
    // stays unfinished), so a later `--resume` or `rollback` still knows where they came from.
    let unreached: Vec<RecordedHost> = match &unfinished {
        Some(r) if !inputs.check && (continuing || op == "rollback") => r
            .hosts
            .iter()
            .filter(|rh| !hosts.iter().any(|h| h.name() == rh.name && reached(h)))
            .filter_map(|rh| {
                if continuing {
                    Some(rh.clone())
                } else {
                    // A rollback undoing an interrupted deploy: the host's target is the
                    // release it ran before that deploy.
                    Some(RecordedHost {
                        name: rh.name.clone(),
                        from: Some(rh.to.clone()),
                        to: rh.from.clone()?,
                    })
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    if inputs.check || changing.is_empty() {
        let mut finished = unfinished.is_none();
        if !inputs.check
            && let Some(mut rec) = unfinished
                .clone()
                .filter(|_| continuing || op == "rollback")
        {
            // Nothing left to do on the hosts reached: the interrupted run had finished every
            // host (resumed), or no host it moved is left to undo (rollback).
            if unreached.is_empty() {
                rec.finished = true;
                rec.outcome = Some(
                    if continuing {
                        "finished by a later run"
                    } else {
                        "undone by rollback"
                    }
                    .into(),
                );
                finished = true;
                let _ = write_record(&inputs.state, &key, &rec);
            }
        }
        return Ok(ReleaseReport {
            op_id,
            staging,
            hosts,
            records,
            halted: None,
            interrupted: stop.is_requested(),
            rolled_back: false,
            diffs,
            finished,
        });
    }

    // 3. The record, then the staged rollout.
    let mut rec_hosts: Vec<RecordedHost> = hosts
        .iter()
        .filter(|h| changing.iter().any(|c| c == h.name()))
        .map(|h| RecordedHost {
            name: h.name().to_string(),
            from: h
                .upgrade
                .from
                .clone()
                .or_else(|| h.plan.as_ref().and_then(|p| p.current_release.clone())),
            to: h
                .upgrade
                .to
                .clone()
                .or_else(|| h.plan.as_ref().map(|p| p.release_id.clone()))
                .unwrap_or_default(),
        })
        .collect();
    if let Some(r) = unfinished.as_ref().filter(|_| continuing) {
        // Keep where every host of the interrupted run came from, including hosts it had
        // already finished (a rollback of this run must still take them back).
        for h in rec_hosts.iter_mut() {
            if let Some(o) = r.hosts.iter().find(|o| o.name == h.name) {
                h.from = o.from.clone();
            }
        }
        for o in &r.hosts {
            if !rec_hosts.iter().any(|h| h.name == o.name) {
                rec_hosts.push(o.clone());
            }
        }
    } else {
        for u in &unreached {
            if !rec_hosts.iter().any(|h| h.name == u.name) {
                rec_hosts.push(u.clone());
            }
        }
    }
    let mut record = ReleaseOpRecord {
        op_id: op_id.clone(),
        operation: op.to_string(),
        operator: operator(),
        started: now_rfc3339(),
        hosts: rec_hosts,
        finished: false,
        outcome: None,
    };
    if let Some(r) = unfinished.as_ref().filter(|_| continuing) {
        record.started = r.started.clone();
    }
    write_record(&inputs.state, &key, &record).map_err(ReleaseError::input)?;
    let journal = inputs
        .state
        .ensure_journal_dir()
        .ok()
        .and_then(|_| Journal::open(&inputs.state.journal(op, &key), &op_id, op).ok());

    apply_phase = apply_phase
        .strategy(strategy)
        .max_unavailable(0)
        .pause_between_batches(pause.is_some());
    let mut forward = Vec::new();
    if let Some(p) = prepare_phase {
        forward.push(p.max_unavailable(0));
    }
    forward.push(apply_phase);
    let order: Vec<String> = hosts.iter().map(|h| h.name().to_string()).collect();
    let (moving, mut idle): (Vec<StackHost>, Vec<StackHost>) = hosts
        .into_iter()
        .partition(|h| changing.iter().any(|c| c == h.name()));
    // The rollout order is the staging order (inventory order of the changing hosts).
    let run = StagedRun {
        reporter,
        stop: stop.clone(),
        pause,
        op_id: op_id.clone(),
        journal,
    };
    let outcome = run
        .run(
            forward,
            rollback_phase,
            moving,
            opts,
            staging.max_unavailable,
        )
        .await;
    for r in outcome.forward.hosts.iter() {
        records.insert(r.host.clone(), r.clone());
    }
    let ok: BTreeSet<String> = outcome
        .forward
        .hosts
        .iter()
        .filter(|r| r.status == HostStatus::Ok)
        .map(|r| r.host.clone())
        .collect();
    let mut moved_hosts = outcome.hosts;
    record_outcomes(&mut moved_hosts, &ok, &op_id).await;
    let rolled_back = outcome.rollback.is_some();
    let consistent = moved_hosts
        .iter()
        .all(|h| ok.contains(h.name()) || !h.upgrade.moved || h.upgrade.rolled_back);
    let finished = !outcome.interrupted && consistent && unreached.is_empty();
    record.finished = finished;
    record.outcome = Some(
        if outcome.interrupted {
            "interrupted"
        } else if !consistent {
            "rollback incomplete"
        } else if !unreached.is_empty() {
            "hosts of the interrupted run not reached"
        } else if rolled_back {
            "rolled back"
        } else if ok.len() == changing.len() {
            "succeeded"
        } else {
            "failed"
        }
        .to_string(),
    );
    let _ = write_record(&inputs.state, &key, &record);
    idle.extend(moved_hosts);
    idle.sort_by_key(|h| order.iter().position(|n| n == h.name()));
    Ok(ReleaseReport {
        op_id,
        staging,
        hosts: idle,
        records,
        halted: outcome.forward.summary.halted.clone(),
        interrupted: outcome.interrupted,
        rolled_back,
        diffs,
        finished,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("h{i}")).collect()
    }

    #[test]
    fn recreating_hosts_never_exceed_max_unavailable() {
        let opts = StagedOptions {
            batch: Some(BatchSize::Count(3)),
            canary: 2,
            ..StagedOptions::default()
        };
        let (s, _) = stage(&names(5), &BTreeSet::new(), &BTreeSet::new(), 5, &opts);
        assert_eq!(s.max_unavailable, 1);
        assert!(s.batches.iter().all(|b| b.len() == 1), "{:?}", s.batches);
        assert_eq!(s.notes.len(), 2, "{:?}", s.notes);
    }

    #[test]
    fn surging_hosts_go_in_the_operators_batches() {
        let all: BTreeSet<String> = names(9).into_iter().collect();
        let opts = StagedOptions {
            batch: Some(BatchSize::Count(4)),
            ..StagedOptions::default()
        };
        let (s, _) = stage(&names(9), &all, &BTreeSet::new(), 9, &opts);
        assert_eq!(
            s.batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 4, 4]
        );
        assert!(s.recreate.is_empty() && s.notes.is_empty());
        // Hosts with nothing serving yet do not count against max_unavailable either.
        let (s, _) = stage(
            &names(9),
            &BTreeSet::new(),
            &all,
            9,
            &StagedOptions::default(),
        );
        assert_eq!(
            s.batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 3, 3, 2]
        );
    }

    #[test]
    fn percent_max_unavailable_is_of_the_fleet() {
        let opts = StagedOptions {
            max_unavailable: BatchSize::Percent(50),
            ..StagedOptions::default()
        };
        // 2 of 10 hosts change; half the fleet may be down: both after the canary at once.
        let (s, _) = stage(&names(2), &BTreeSet::new(), &BTreeSet::new(), 10, &opts);
        assert_eq!(s.max_unavailable, 5);
        assert_eq!(
            s.batches,
            vec![vec!["h1".to_string()], vec!["h2".to_string()]]
        );
    }

    #[test]
    fn previous_release_prefers_the_audit_log_then_the_newest() {
        use crate::stack::release_scripts::HostRelease;
        let rel = |id: &str, complete: bool| HostRelease {
            id: id.into(),
            complete,
            mtime: 0,
            config_sha: None,
            images: vec![],
        };
        let mut f = ReleasesFacts {
            current: Some("aaaaaaaaaaaa".into()),
            releases: vec![
                rel("aaaaaaaaaaaa", true),
                rel("bbbbbbbbbbbb", true),
                rel("cccccccccccc", true),
            ],
            ..ReleasesFacts::default()
        };
        assert_eq!(
            previous_release("h1", &f, None).as_deref(),
            Some("bbbbbbbbbbbb")
        );
        f.audit.push(
            r#"{"release":"aaaaaaaaaaaa","outcome":"succeeded","from_release":"cccccccccccc"}"#
                .into(),
        );
        assert_eq!(
            previous_release("h1", &f, None).as_deref(),
            Some("cccccccccccc")
        );
        let rec = ReleaseOpRecord {
            op_id: "x".into(),
            operation: "deploy".into(),
            operator: "o".into(),
            started: "t".into(),
            hosts: vec![RecordedHost {
                name: "h1".into(),
                from: Some("bbbbbbbbbbbb".into()),
                to: "aaaaaaaaaaaa".into(),
            }],
            finished: false,
            outcome: None,
        };
        assert_eq!(
            previous_release("h1", &f, Some(&rec)).as_deref(),
            Some("bbbbbbbbbbbb")
        );
        // While that deploy is unfinished, a host it did not record, or recorded but never
        // reached (its `from` is still current), stays where it is: the audit log's earlier
        // release is not the target of undoing the interrupted deploy.
        assert_eq!(
            previous_release("h2", &f, Some(&rec)).as_deref(),
            Some("aaaaaaaaaaaa")
        );
        let mut not_reached = rec.clone();
        not_reached.hosts[0].from = Some("aaaaaaaaaaaa".into());
        not_reached.hosts[0].to = "bbbbbbbbbbbb".into();
        assert_eq!(
            previous_release("h1", &f, Some(&not_reached)).as_deref(),
            Some("aaaaaaaaaaaa")
        );
        // An interrupted rollback is finished: its target, not the release it left.
        let mut rb = not_reached.clone();
        rb.operation = "rollback".into();
        rb.hosts[0].from = Some("bbbbbbbbbbbb".into());
        rb.hosts[0].to = "cccccccccccc".into();
        assert_eq!(
            previous_release("h1", &f, Some(&rb)).as_deref(),
            Some("cccccccccccc")
        );
        // An incomplete release is never a target.
        f.releases[2].complete = false;
        f.audit.clear();
        f.releases[1].complete = false;
        assert_eq!(previous_release("h1", &f, None), None);
    }
}
