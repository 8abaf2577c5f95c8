//! Token rotation's steps: hold the fleet lock, persist the new token, then per host
//! make-before-break (a second connector on the new token, ready, before the old one stops),
//! or recreate-in-place where two connectors cannot run. Every step is idempotent against
//! the host's own state, so a resumed rotation redoes only what is missing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ops::deploy::{StackHost, holder_json_for, now_rfc3339, operator};
use crate::ops::health;
use crate::playbook::{Params, StepRegistry};
use crate::remote::{
    self, AuditEntry, AuditOutcome, LOCK_HELD_EXIT, WriteSpec, atomic_write, force_unlock,
    mkdir_lock,
};
use crate::rollout::{Step, StepCx, StepFailure, StepOutcome};
use crate::ssh::{ExecOutput, Session};
use crate::stack::Layout;
use crate::stack::scripts::{self, ConnectorContainer};

use crate::ops::host_state::ProbesAhead;
pub use crate::ops::host_state::RotationState;

use crate::ops::ssh_failure as failure;

async fn run(session: &Session, script: &str, stdin: &[u8]) -> Result<ExecOutput, StepFailure> {
    session.exec(script, stdin).await.map_err(failure)
}

/// Runs `script` on a channel opened during preflight when one is left (one round trip),
/// else on a new one (two).
async fn run_prepared(
    h: &StackHost,
    session: &Session,
    script: &str,
    stdin: &[u8],
) -> Result<ExecOutput, StepFailure> {
    match h.rotation.prepared.take() {
        Some(ch) => ch.exec(script, stdin).await.map_err(failure),
        None => run(session, script, stdin).await,
    }
}

/// Session channels each host opens during preflight for the commands that follow the
/// token: lock, start of the new connector, and the `.env` write (started at once, see
/// [`env_write_script`]).
const PREPARED_CHANNELS: usize = 3;

/// Where the new token goes: `.env`, 0600, in a 0700 directory.
fn env_spec(h: &StackHost) -> WriteSpec {
    WriteSpec::new(h.input.layout.env_file(), 0o600).dir_mode(0o700)
}

/// The `.env` write started during preflight, before the token is known: sshd grants a
/// session channel's input window only once its command runs, so a write started when the
/// token is in hand waits a round trip for the window before the token can go. Started
/// ahead, it waits for a header line and the contents on its input; an EOF first (the
/// controller died or stopped) makes it exit having touched nothing.
fn env_write_script(h: &StackHost) -> Result<String, StepFailure> {
    remote::atomic_write_framed(&[env_spec(h)]).map_err(|e| StepFailure::new(e.to_string()))
}

async fn containers(
    session: &Session,
    layout: &Layout,
) -> Result<Vec<ConnectorContainer>, StepFailure> {
    let out = run(session, &scripts::connectors_script(layout), b"").await?;
    Ok(scripts::parse_connectors(&out.stdout_text()))
}

fn new_fp(h: &StackHost) -> Result<String, StepFailure> {
    h.input
        .token_fp
        .clone()
        .ok_or_else(|| StepFailure::new("no new token (internal: rotation without a token)"))
}

fn compose(h: &StackHost) -> Result<crate::stack::ComposeCli, StepFailure> {
    h.facts
        .as_ref()
        .and_then(|f| f.compose)
        .ok_or_else(|| StepFailure::new("no Docker Compose on the host (run `facts` first)"))
}

/// The fleet lock as the hosts of one rotation took it during `healthy` (every host tries
/// it there, so an uncontended lock costs no round trip of its own). When any host finds it
/// held by another run, the `lock` phase's first host gives back every lock taken early
/// before the lock is taken again in order (the first host alone, then the others), so
/// two controllers racing can never each hold part of the fleet and wait for each other.
#[derive(Default)]
pub struct EarlyLocks {
    /// Some host found the lock held by another run.
    contended: std::sync::atomic::AtomicBool,
    /// The locks taken early and not given back: host, session, release script.
    taken: std::sync::Mutex<Vec<(String, Arc<Session>, String)>>,
    /// Hosts whose early lock was given back (their own state still says locked).
    released: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl EarlyLocks {
    fn contended(&self) -> bool {
        self.contended.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn was_released(&self, host: &str) -> bool {
        self.released
            .lock()
            .map(|g| g.contains(host))
            .unwrap_or(false)
    }

    /// Gives back every lock taken early (concurrently); each host's own `lock` step takes
    /// it again in order. A release that fails leaves a lock naming this run, which the
    /// `lock` step takes over.
    async fn give_back(&self) {
        let taken = self
            .taken
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        futures::future::join_all(
            taken
                .iter()
                .map(|(_, session, script)| session.exec(script, b"")),
        )
        .await;
        if let Ok(mut g) = self.released.lock() {
            g.extend(taken.into_iter().map(|(host, _, _)| host));
        }
    }
}

/// `healthy`: the host has a ready connector now (preflight: never start a rotation on a
/// host that is already down). In the same round trip: the host's facts (unless a `facts`
/// step ran already), the connector containers, the session channels the window's
/// commands will run on, and one attempt at the fleet lock (see [`EarlyLocks`]).
pub struct HealthyStep {
    /// This operation's id (the lock holder record names it).
    pub op_id: String,
    /// The locks taken early by this run's hosts.
    pub early: Arc<EarlyLocks>,
}

#[async_trait::async_trait]
impl Step<StackHost> for HealthyStep {
    fn name(&self) -> &str {
        "healthy"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let session = h.session()?;
        let need_facts = h.facts.is_none();
        let input = &h.input;
        // Everything at once: the facts command, the readiness probes (direct-tcpip), the
        // container listing (start_connector uses it instead of taking a round trip for it
        // after the token is in hand), and the channels opened ahead.
        let facts_fut = async {
            if need_facts {
                Some(crate::ops::deploy::read_facts(&session, input).await)
            } else {
                None
            }
        };
        let env_script = env_write_script(h)?;
        let prepare = async {
            let mut chans: Vec<crate::ssh::PreparedExec> =
                futures::future::join_all((0..PREPARED_CHANNELS).map(|_| session.prepare()))
                    .await
                    .into_iter()
                    .filter_map(Result::ok)
                    .collect();
            // The `.env` write starts as soon as its channel is open, so its input window is
            // there long before the token.
            let armed = match chans.pop() {
                Some(ch) => ch.start(&env_script).await.ok(),
                None => None,
            };
            (chans, armed)
        };
        let holder = holder_json_for(&h.operation, &self.op_id);
        let dir = scripts::lock_dir(&h.input.layout);
        let lock_script = mkdir_lock(&dir, &holder).map_err(|e| StepFailure::new(e.to_string()))?;
        let unlock_script =
            remote::unlock(&dir, &holder).map_err(|e| StepFailure::new(e.to_string()))?;
        let lock_fut = async { Some(session.exec(&lock_script, b"").await) };
        let (facts, probes, listed, prepared, locked) = tokio::join!(
            facts_fut,
            health::connectors(&session, h.input.settings.metrics_ports()),
            containers(&session, &h.input.layout),
            prepare,
            lock_fut
        );
        // Taken: the lock phase has nothing left to do here (unless another host found the
        // lock held). Held by another run: the lock phase takes it in order. Anything else
        // (a failure): the lock phase tries again with its full handling.
        match locked {
            Some(Ok(out)) if out.success() => {
                h.rotation.locked = true;
                h.rotation.holder = holder;
                if let Ok(mut g) = self.early.taken.lock() {
                    g.push((h.input.host.name.clone(), session.clone(), unlock_script));
                }
            }
            Some(Ok(out)) if out.status.map(|s| s as i32) == Some(LOCK_HELD_EXIT) => {
                self.early
                    .contended
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            _ => {}
        }
        let (prepared, armed) = prepared;
        h.rotation.prepared.put(prepared);
        if let Some(armed) = armed {
            h.rotation.armed_env.put(armed);
        }
        if let Some(facts) = facts {
            let facts = facts.map_err(StepFailure::new)?;
            if facts.compose.is_none() {
                return Err(StepFailure::new("no Docker Compose on the host")
                    .with_hint("install docker compose (v2) or docker-compose (v1)"));
            }
            if let Some(why) = facts.engine_refusal() {
                return Err(
                    StepFailure::new(why).with_hint(crate::stack::scripts::ENGINE_DOWN_HINT)
                );
            }
            if !h.input.force_dir
                && let Some(why) = crate::stack::deploy_dir_refusal(
                    h.input.layout.deploy_dir(),
                    facts.dir_state.as_deref(),
                )
            {
                return Err(StepFailure::new(why).with_hint(
                    "set deploy_dir to a directory of its own (default /srv/mcp-tunnel)",
                ));
            }
            h.facts = Some(facts);
        }
        h.rotation.listed = listed.ok();
        h.rotation.answering = Some(probes.clone());
        let ready: Vec<health::ConnectorReady> =
            probes.into_iter().filter(|c| c.is_ready()).collect();
        if ready.is_empty() {
            use crate::stack::scripts::{NETNS_LOST_CAUSE, NETNS_LOST_HINT};
            if let Some(why) = h
                .facts
                .as_ref()
                .and_then(|f| f.facts.connector_netns_lost.as_ref())
            {
                return Err(StepFailure::new(format!(
                    "no ready connector on the host: {NETNS_LOST_CAUSE} ({why})"
                ))
                .with_hint(format!("{NETNS_LOST_HINT}, or exclude it with --limit")));
            }
            return Err(
                StepFailure::new("no ready connector on the host").with_hint(
                    "fix the host first: `tunnelfleet status` names the cause and `tunnelfleet \
                     deploy` repairs what it can; or exclude it with --limit",
                ),
            );
        }
        Ok(StepOutcome::unchanged(format!(
            "{} ready connector(s)",
            ready.len()
        )))
    }
}

/// `lock {wait}`: takes the fleet lock for this operation, waiting up to `wait` for another
/// holder; takes over a lock left by an earlier run of the same operation (a resumed run).
/// Nothing to do on a host that took it during `healthy`, unless another host found it held
/// by another run: then the first host ([`RotationState::lock_early`]) gives back every
/// lock taken early, and each host takes it again here, in order.
pub struct LockStep {
    /// How long to wait for another holder.
    pub wait: Duration,
    /// This operation's id (a lock whose holder names it is ours from an earlier run).
    pub op_id: String,
    /// The locks taken early by this run's hosts.
    pub early: Arc<EarlyLocks>,
}

#[async_trait::async_trait]
impl Step<StackHost> for LockStep {
    fn name(&self) -> &str {
        "lock"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        if self.early.contended() {
            if h.rotation.lock_early {
                self.early.give_back().await;
            }
            if self.early.was_released(&h.input.host.name) {
                h.rotation.locked = false;
            }
        }
        if h.rotation.locked {
            return Ok(StepOutcome::changed("fleet lock taken (during preflight)"));
        }
        let session = h.session()?;
        let dir = scripts::lock_dir(&h.input.layout);
        let holder = holder_json_for(&h.operation, &self.op_id);
        let script = mkdir_lock(&dir, &holder).map_err(|e| StepFailure::new(e.to_string()))?;
        let started = Instant::now();
        loop {
            let out = run_prepared(h, &session, &script, b"").await?;
            match out.status.map(|s| s as i32) {
                Some(0) => {
                    h.rotation.locked = true;
                    h.rotation.holder = holder;
                    if let Ok(mut g) = self.early.released.lock() {
                        g.remove(&h.input.host.name);
                    }
                    return Ok(StepOutcome::changed("fleet lock taken"));
                }
                Some(LOCK_HELD_EXIT) => {
                    let current = out.stdout_text().trim().to_string();
                    let same_op = serde_json::from_str::<serde_json::Value>(&current)
                        .ok()
                        .is_some_and(|v| v["op_id"] == self.op_id.as_str());
                    if same_op {
                        // Our own operation's lock from a run that died: take it over.
                        let f = force_unlock(&dir).map_err(|e| StepFailure::new(e.to_string()))?;
                        run(&session, &f, b"").await?;
                        continue;
                    }
                    if started.elapsed() >= self.wait {
                        let since = serde_json::from_str::<serde_json::Value>(&current)
                            .ok()
                            .and_then(|v| v["since"].as_str().map(str::to_string))
                            .unwrap_or_default();
                        return Err(StepFailure::new(format!(
                            "the fleet lock is held by {} (since {since})",
                            if current.is_empty() { "another run" } else { &current }
                        ))
                        .with_hint(format!(
                            "wait for it (--lock-wait 5m), or if that run is dead: tunnelfleet unlock -i INVENTORY --limit {}",
                            h.input.host.name
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                _ => return Err(StepFailure::new(format!("lock: {}", out.stderr_text()))),
            }
        }
    }
}

/// `persist_token`: the new token into `.env` (atomic: temp file, fsync, rename; never
/// empty or partial), unless it is already there.
pub struct PersistTokenStep;

#[async_trait::async_trait]
impl Step<StackHost> for PersistTokenStep {
    fn name(&self) -> &str {
        "persist_token"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let session = h.session()?;
        let fp = new_fp(h)?;
        let env = h
            .input
            .env
            .as_ref()
            .ok_or_else(|| StepFailure::new("no new .env (internal)"))?;
        let facts_fp = h.facts.as_ref().and_then(|f| f.env_token_fp.clone());
        let armed = h.rotation.armed_env.take();
        if facts_fp.as_deref() == Some(fp.as_str()) {
            if let Some(armed) = armed {
                armed.cancel().await;
            }
            h.rotation.persisted_ms = h.rotation.now_ms();
            return Ok(StepOutcome::unchanged(format!(
                "token {fp} already persisted"
            )));
        }
        // The write started during preflight: the token and EOF out, the exit status back.
        let armed_out = match armed {
            Some(armed) => Some(
                armed
                    .finish(&remote::framed_payload(&[env.as_bytes()]))
                    .await
                    .map_err(failure)?,
            ),
            None => None,
        };
        let out = match armed_out {
            // Cancelled before it had its input (it touched nothing): write afresh.
            Some(out) if out.status.map(|s| s as i32) != Some(remote::WRITE_CANCELLED_EXIT) => out,
            _ => {
                let (script, stdin) = atomic_write(&[(env_spec(h), env.as_bytes())])
                    .map_err(|e| StepFailure::new(e.to_string()))?;
                run_prepared(h, &session, &script, &stdin).await?
            }
        };
        if !out.success() {
            return Err(StepFailure::new(out.stderr_text()).with_hint(
                "the old .env is intact; free space or fix permissions, then --resume",
            ));
        }
        h.rotation.persisted_ms = h.rotation.now_ms();
        Ok(StepOutcome::changed(format!("token {fp} persisted")))
    }
}

/// `start_connector`: a second connector on the new token beside the running one (Compose
/// scales the service up without recreating it). Skipped when one already runs on the new
/// token (a resumed run).
pub struct StartConnectorStep;

#[async_trait::async_trait]
impl Step<StackHost> for StartConnectorStep {
    fn name(&self) -> &str {
        "start_connector"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let session = h.session()?;
        let fp = new_fp(h)?;
        let before = match h.rotation.listed.take() {
            Some(listed) => listed,
            None => containers(&session, &h.input.layout).await?,
        };
        let running = |c: &&ConnectorContainer| c.state == "running";
        h.rotation.old_containers = before
            .iter()
            .filter(|c| c.token_fp.as_deref() != Some(fp.as_str()))
            .map(|c| c.name.clone())
            .collect();
        if let Some(c) = before
            .iter()
            .filter(running)
            .find(|c| c.token_fp.as_deref() == Some(fp.as_str()))
        {
            h.rotation.new_container = Some(c.name.clone());
            h.rotation.new_connector_id = c.connector_id.clone();
            return Ok(StepOutcome::unchanged(format!(
                "{} already runs on the new token",
                c.name
            )));
        }
        // One more than every connector container there is, running or not: a connector
        // crash-looping on the old token (it lost the edge while the host was away, and the
        // old token no longer registers) still holds its place in the scale, so counting only
        // the running ones would ask Compose for what it already has.
        let count = before.len() + 1;
        // Scale up and describe the container that appeared, in one round trip.
        let known: Vec<String> = before.iter().map(|c| c.name.clone()).collect();
        let script = format!(
            "{} || exit 1\n{}",
            scripts::scale_connectors_script(&h.input.layout, compose(h)?, count).trim_end(),
            scripts::new_connectors_script(&h.input.layout, &known)
        );
        // While the command runs, watch for the new connector to answer ready (it often
        // registers before Compose has finished): one whose id preflight did not see, on a
        // port the old ones do not hold. The gate then has nothing left to wait for.
        let answering = h.rotation.answering.clone();
        let mut seen = None;
        let out = {
            let start = run_prepared(h, &session, &script, b"");
            tokio::pin!(start);
            match &answering {
                Some(old) => {
                    let all = h.input.settings.metrics_ports();
                    let where_ = health::describe_ports(&all);
                    let (ports, is_new) = new_connector_rule(old, None, all);
                    let mut last = String::new();
                    let ahead = h.rotation.probes_ahead.clone();
                    let watch = watch_ready(&session, &ports, &is_new, &ahead, &where_, &mut last);
                    tokio::select! {
                        out = &mut start => out,
                        found = watch => {
                            seen = Some(found);
                            h.rotation.probes_ahead.clear();
                            start.await
                        }
                    }
                }
                None => start.await,
            }
        }?;
        if !out.success() {
            return Err(StepFailure::new(format!(
                "start a second connector: {}",
                h.redact(&out.stderr_text())
            ))
            .with_hint("the old connector still runs; if this host cannot run two connectors, use --in-place"));
        }
        // The container that appeared, whatever its state this instant: wait_connector waits
        // for it to be ready (and removes it if it never is).
        let after = scripts::parse_connectors(&out.stdout_text());
        let new = after
            .iter()
            .find(|c| c.token_fp.as_deref() == Some(fp.as_str()))
            .ok_or_else(|| {
                StepFailure::new("Compose started no connector on the new token")
                    .with_hint("check that .env holds the new token (tunnelfleet status)")
            })?;
        h.rotation.new_container = Some(new.name.clone());
        h.rotation.new_connector_id = new.connector_id.clone();
        if let Some((c, at)) = seen
            && (new.connector_id.is_none() || new.connector_id == c.connector_id)
        {
            h.rotation.new_ready_ms = h
                .rotation
                .t0
                .map(|t0| at.saturating_duration_since(t0).as_millis() as u64);
            h.rotation.new_connector_id = c.connector_id.clone();
            h.ready = Some(c);
        }
        Ok(StepOutcome::changed(format!("started {}", new.name)))
    }
}

/// `recreate_connector`: recreate the connector in place on the new token (for hosts that
/// cannot run two connectors); the host has no ready connector until the new one is.
pub struct RecreateConnectorStep;

#[async_trait::async_trait]
impl Step<StackHost> for RecreateConnectorStep {
    fn name(&self) -> &str {
        "recreate_connector"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let session = h.session()?;
        let fp = new_fp(h)?;
        let before = containers(&session, &h.input.layout).await?;
        if let Some(c) = before
            .iter()
            .find(|c| c.state == "running" && c.token_fp.as_deref() == Some(fp.as_str()))
        {
            h.rotation.new_container = Some(c.name.clone());
            return Ok(StepOutcome::unchanged("already on the new token"));
        }
        h.rotation.in_place = true;
        h.rotation.unavailable_from_ms = h.rotation.now_ms();
        let script = scripts::compose_script(
            &h.input.layout,
            compose(h)?,
            &[
                "up",
                "-d",
                "--no-deps",
                "--force-recreate",
                scripts::CONNECTOR_SERVICE,
            ],
        );
        let out = run(&session, &script, b"").await?;
        if !out.success() {
            return Err(StepFailure::new(format!(
                "recreate the connector: {}",
                out.stderr_text()
            )));
        }
        h.rotation.old_stopped_ms = h.rotation.now_ms();
        let after = containers(&session, &h.input.layout).await?;
        h.rotation.new_container = after
            .iter()
            .find(|c| c.state == "running" && c.token_fp.as_deref() == Some(fp.as_str()))
            .map(|c| c.name.clone());
        Ok(StepOutcome::changed("recreated in place"))
    }
}

/// `wait_connector {timeout}`: the new connector (by its own connector id, read from its
/// log) answers ready on the host's metrics ports.
pub struct WaitConnectorStep {
    /// How long to wait.
    pub timeout: Duration,
}

#[async_trait::async_trait]
impl Step<StackHost> for WaitConnectorStep {
    fn name(&self) -> &str {
        "wait_connector"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let session = h.session()?;
        let name = match h.rotation.new_container.clone() {
            Some(n) => n,
            None => {
                // A resumed run whose start_connector was done by the interrupted one: the
                // new connector is the one on the new token.
                let fp = new_fp(h)?;
                let c = containers(&session, &h.input.layout)
                    .await?
                    .into_iter()
                    .find(|c| c.token_fp.as_deref() == Some(fp.as_str()))
                    .ok_or_else(|| {
                        StepFailure::new("no connector on the new token on this host").with_hint(
                            "run start_connector first (tunnelfleet rotate-token --resume)",
                        )
                    })?;
                h.rotation.new_connector_id = c.connector_id.clone();
                h.rotation.new_container = Some(c.name.clone());
                c.name
            }
        };
        let started = Instant::now();
        let mut last = String::from("no answer yet");
        // The new connector's id: known from its start, else read from its log (once it has
        // logged it); after that, polling is only the readiness probes, no docker calls.
        let mut id = h.rotation.new_connector_id.clone();
        // Preflight saw which connectors answer (ids and ports): unless the new one's id is
        // already known, the new one is whichever answers ready with another id, on a port
        // the old ones do not hold. Readiness is then only direct-tcpip probes, nothing is
        // started on the host.
        // Seen ready while start_connector ran (it watches the probes meanwhile).
        if h.rotation.new_ready_ms.is_some() && h.ready.is_some() {
            return Ok(StepOutcome::unchanged(format!(
                "{name} ({}) ready as it started",
                h.rotation.new_connector_id.as_deref().unwrap_or("?")
            )));
        }
        // With the new connector's id known (start_connector read it), or preflight's
        // connectors known, readiness is only probes: nothing is started on the host.
        let old = h
            .rotation
            .answering
            .clone()
            .filter(|_| !h.rotation.in_place);
        if id.is_some() || old.is_some() {
            let all = h.input.settings.metrics_ports();
            let where_ = health::describe_ports(&all);
            let (ports, is_new) = new_connector_rule(&old.unwrap_or_default(), id.clone(), all);
            let ahead = h.rotation.probes_ahead.clone();
            let watch = watch_ready(&session, &ports, &is_new, &ahead, &where_, &mut last);
            let watched = tokio::time::timeout(self.timeout, watch).await;
            ahead.clear();
            if let Ok((c, _)) = watched {
                h.rotation.new_ready_ms = h.rotation.now_ms();
                h.rotation.new_connector_id = c.connector_id.clone();
                let ready_id = c.connector_id.clone();
                h.ready = Some(c);
                return Ok(StepOutcome::unchanged(format!(
                    "{name} ({}) ready in {} ms",
                    ready_id.as_deref().unwrap_or("?"),
                    started.elapsed().as_millis()
                )));
            }
        }
        loop {
            if started.elapsed() >= self.timeout {
                return Err(self.give_up(h, &session, &name, &last).await);
            }
            if id.is_none() {
                let script = format!(
                    "docker logs {} 2>&1 | sed -n 's/.*Generated Connector ID: *\\([0-9a-fA-F-]*\\).*/\\1/p' | tail -n 1",
                    remote::quote(&name)
                );
                let out = run(&session, &script, b"").await?;
                let v = out.stdout_text().trim().to_string();
                if !v.is_empty() {
                    id = Some(v);
                }
            }
            if let Some(id) = &id {
                let probes = health::connectors(&session, h.input.settings.metrics_ports()).await;
                if let Some(c) = probes
                    .iter()
                    .find(|c| c.connector_id.as_deref() == Some(id.as_str()))
                {
                    if c.is_ready() {
                        h.rotation.new_ready_ms = h.rotation.now_ms();
                        h.rotation.new_connector_id = Some(id.clone());
                        h.ready = Some(c.clone());
                        return Ok(StepOutcome::unchanged(format!(
                            "{name} ({id}) ready in {} ms",
                            started.elapsed().as_millis()
                        )));
                    }
                    last = format!(
                        "{id} answers {} with {} connections",
                        c.status, c.ready_connections
                    );
                } else {
                    last = format!(
                        "{id} not answering on {}",
                        health::describe_ports(&h.input.settings.metrics_ports())
                    );
                }
            }
            if started.elapsed() >= self.timeout {
                return Err(self.give_up(h, &session, &name, &last).await);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// How often the window's readiness probes ask (direct-tcpip to the host's loopback: no
/// process is started on the host).
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Watches the host's metrics `ports` until a connector that `is_new` accepts answers ready;
/// returns it with when it was seen. Never returns otherwise: the caller bounds it.
///
/// Until the new connector answers at all, rounds of probes over `ports` (each a
/// direct-tcpip open, then the request: two round trips), one at a time, the next as soon
/// as the last has answered but no sooner than [`PROBE_INTERVAL`] after it started. Once
/// it answers (not ready yet), its port is known: connections to it are opened ahead (kept
/// in `ahead`, so they outlive the step), and a request goes out every [`PROBE_INTERVAL`]
/// on one of them without waiting for the earlier answers, so readiness is seen at most an
/// interval plus one round trip after it happens (the metrics server reads a request
/// whenever it comes on an open connection).
async fn watch_ready(
    session: &Arc<Session>,
    ports: &[u16],
    is_new: &(dyn Fn(&health::ConnectorReady) -> bool + Sync),
    ahead: &ProbesAhead,
    where_: &str,
    last: &mut String,
) -> (health::ConnectorReady, Instant) {
    loop {
        // The new connector's port: known from an earlier step, or once it answers.
        let port = match ahead.port() {
            Some(p) => p,
            None => loop {
                let round = tokio::time::Instant::now();
                let probes = health::probe_ports(session, ports).await;
                if let Some(c) = probes.iter().find(|c| c.is_ready() && is_new(c)) {
                    return (c.clone(), Instant::now());
                }
                *last = describe_new(&probes, is_new, where_);
                if let Some(c) = probes.iter().find(|c| is_new(c)) {
                    ahead.set_port(c.port);
                    break c.port;
                }
                tokio::time::sleep_until(round + PROBE_INTERVAL).await;
            },
        };
        if let Some(found) = watch_port(session, port, is_new, ahead, where_, last).await {
            return found;
        }
        // The port stopped answering, or another connector holds it: rounds again.
        ahead.clear();
    }
}

/// What the last probes said about the new connector, for the gate's error.
fn describe_new(
    probes: &[health::ConnectorReady],
    is_new: &(dyn Fn(&health::ConnectorReady) -> bool + Sync),
    where_: &str,
) -> String {
    match probes.iter().find(|c| is_new(c)) {
        Some(c) => format!(
            "{} answers {} with {} connections",
            c.connector_id.as_deref().unwrap_or("?"),
            c.status,
            c.ready_connections
        ),
        None => format!("no new connector answering on {where_}"),
    }
}

/// Connections to the new connector's port opened ahead of their requests.
const CONNECTIONS_AHEAD: usize = 2;

/// Requests on `port` every [`PROBE_INTERVAL`] over connections opened ahead, until the new
/// connector answers ready (returned) or the port stops answering it (`None`).
async fn watch_port(
    session: &Arc<Session>,
    port: u16,
    is_new: &(dyn Fn(&health::ConnectorReady) -> bool + Sync),
    ahead: &ProbesAhead,
    where_: &str,
    last: &mut String,
) -> Option<(health::ConnectorReady, Instant)> {
    use futures::StreamExt;
    let open = || {
        let s = session.clone();
        tokio::spawn(async move { s.open_tcp("127.0.0.1", port).await.ok() })
    };
    let mut answers = futures::stream::FuturesUnordered::new();
    let mut failed = 0;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while ahead.len() < CONNECTIONS_AHEAD {
            ahead.push(open());
        }
        tokio::select! {
            _ = tick.tick() => {
                // The oldest connection: its request goes as soon as it is open.
                if let Some(opening) = ahead.pop() {
                    ahead.push(open());
                    answers.push(async move {
                        match opening.await {
                            Ok(Some(stream)) => health::probe_over(stream, port).await,
                            _ => None,
                        }
                    });
                }
            }
            Some(answer) = answers.next() => match answer {
                Some(c) if !is_new(&c) => return None,
                Some(c) if c.is_ready() => return Some((c, Instant::now())),
                Some(c) => {
                    failed = 0;
                    *last = describe_new(std::slice::from_ref(&c), is_new, where_);
                }
                None => {
                    failed += 1;
                    if failed > CONNECTIONS_AHEAD {
                        return None;
                    }
                }
            },
        }
    }
}

/// The ports a new connector can answer on, and the test that an answer is from it: with
/// its id known, that id on any port (it may be one preflight saw: a resumed or repeated
/// rotation whose connector already runs on the new token); without it, another id than
/// preflight's connectors, on a port they do not hold.
fn new_connector_rule(
    answering: &[health::ConnectorReady],
    id: Option<String>,
    all: health::MetricsPorts,
) -> (
    Vec<u16>,
    impl Fn(&health::ConnectorReady) -> bool + Sync + use<>,
) {
    let old_ids: std::collections::BTreeSet<String> = answering
        .iter()
        .filter_map(|c| c.connector_id.clone())
        .collect();
    let old_ports: Vec<u16> = answering
        .iter()
        .filter(|_| id.is_none())
        .map(|c| c.port)
        .collect();
    let ports: Vec<u16> = all.filter(|p| !old_ports.contains(p)).collect();
    let is_new = move |c: &health::ConnectorReady| match &id {
        Some(id) => c.connector_id.as_deref() == Some(id.as_str()),
        None => c
            .connector_id
            .as_ref()
            .is_some_and(|i| !old_ids.contains(i)),
    };
    (ports, is_new)
}

impl WaitConnectorStep {
    /// The new connector never became ready: remove it (make-before-break: the old one keeps
    /// serving) and say what to do.
    async fn give_up(
        &self,
        h: &StackHost,
        session: &Session,
        name: &str,
        last: &str,
    ) -> StepFailure {
        // Leave no crash-looping connector behind: remove the new one; the old one keeps
        // serving on the old token it was created with.
        if !h.rotation.in_place {
            let rm = format!("docker rm -f {} >/dev/null 2>&1; true", remote::quote(name));
            let _ = session.exec(&rm, b"").await;
            if let Ok(c) = compose(h) {
                let _ = session
                    .exec(
                        &scripts::scale_connectors_script(&h.input.layout, c, 1),
                        b"",
                    )
                    .await;
            }
        }
        StepFailure::new(format!(
            "the new connector {name} did not become ready within {:?} ({last})",
            self.timeout
        ))
        .with_hint(
            "the old connector still serves this host on the old token, and the new connector was \
             removed. The new token is in .env on the hosts it reached; if it is wrong (the edge \
             refuses it), run rotate-token again with the right token; if the host was only slow, \
             run rotate-token --resume with the same token",
        )
    }
}

/// `stop_old {grace}`: the old connectors stop (draining for `grace`) and are removed, once
/// the new one is ready.
pub struct StopOldStep {
    /// Drain time given to each old connector.
    pub grace: Duration,
}

#[async_trait::async_trait]
impl Step<StackHost> for StopOldStep {
    fn name(&self) -> &str {
        "stop_old"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let session = h.session()?;
        let fp = new_fp(h)?;
        // Re-read: stop exactly the connectors not on the new token.
        let old: Vec<String> = containers(&session, &h.input.layout)
            .await?
            .into_iter()
            .filter(|c| c.token_fp.as_deref() != Some(fp.as_str()))
            .map(|c| c.name)
            .collect();
        if old.is_empty() {
            h.rotation.old_stopped_ms = h.rotation.now_ms();
            return Ok(StepOutcome::unchanged("no old connector left"));
        }
        let script = scripts::stop_connectors_script(
            &h.input.layout,
            compose(h)?,
            &old,
            self.grace.as_secs(),
        );
        let out = run(&session, &script, b"").await?;
        if !out.success() {
            return Err(StepFailure::new(format!(
                "stop the old connector: {}",
                out.stderr_text()
            )));
        }
        h.rotation.old_stopped_ms = h.rotation.now_ms();
        Ok(StepOutcome::changed(format!("stopped {}", old.join(", "))))
    }
}

/// `unlock`: releases the fleet lock this run holds (clean-up: runs on every host).
pub struct UnlockStep {
    /// The locks taken early by this run's hosts (one given back is not held any more).
    pub early: Arc<EarlyLocks>,
}

#[async_trait::async_trait]
impl Step<StackHost> for UnlockStep {
    fn name(&self) -> &str {
        "unlock"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        if !h.rotation.locked || self.early.was_released(&h.input.host.name) {
            return Ok(StepOutcome::unchanged("not locked by this run"));
        }
        let session = h.session()?;
        let dir = scripts::lock_dir(&h.input.layout);
        let script = remote::unlock(&dir, &h.rotation.holder)
            .map_err(|e| StepFailure::new(e.to_string()))?;
        let out = run(&session, &script, b"").await?;
        if !out.success() {
            return Err(StepFailure::new(format!("unlock: {}", out.stderr_text())));
        }
        h.rotation.locked = false;
        Ok(StepOutcome::changed("fleet lock released"))
    }
}

/// `audit`: one line in the host's audit log (who, what, when, token fingerprints).
pub struct AuditStep;

#[async_trait::async_trait]
impl Step<StackHost> for AuditStep {
    fn name(&self) -> &str {
        "audit"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let Some(session) = h.session.clone() else {
            return Ok(StepOutcome::unchanged("not connected: nothing to audit"));
        };
        let done = h.rotation.new_ready_ms.is_some();
        let entry = AuditEntry {
            time: now_rfc3339(),
            operator: operator(),
            operation: h.operation.clone(),
            outcome: if done {
                AuditOutcome::Succeeded
            } else {
                AuditOutcome::Failed
            },
            release: None,
            from_release: None,
            token_fingerprint: h.input.token_fp.clone(),
            cert_serial: None,
        };
        let script = remote::audit_line(&scripts::audit_log(&h.input.layout), &entry)
            .map_err(|e| StepFailure::new(e.to_string()))?;
        let out = run(&session, &script, b"").await?;
        if !out.success() {
            return Err(StepFailure::new(out.stderr_text()));
        }
        Ok(StepOutcome::unchanged("audit line written"))
    }
}

/// Registers the rotation steps (and the deploy steps they build on).
pub fn register_rotation_steps(
    r: &mut StepRegistry<StackHost>,
    op_id: &str,
    lock_wait: Duration,
    gate_override: Option<Duration>,
) {
    crate::ops::deploy::register_deploy_steps(
        r,
        crate::ops::deploy::GateOverrides {
            deadline: gate_override,
            min_healthy: None,
        },
    );
    let op = op_id.to_string();
    let early = Arc::new(EarlyLocks::default());
    let shared = early.clone();
    r.register("healthy", move |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(HealthyStep {
            op_id: op.clone(),
            early: shared.clone(),
        }) as Arc<dyn Step<StackHost>>)
    });
    let op = op_id.to_string();
    let shared = early.clone();
    r.register("lock", move |p| {
        let params = Params::new(p, &["wait"])?;
        let wait = params.duration("wait")?.unwrap_or(lock_wait);
        Ok(Arc::new(LockStep {
            wait,
            op_id: op.clone(),
            early: shared.clone(),
        }) as Arc<dyn Step<StackHost>>)
    });
    r.register("persist_token", |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(PersistTokenStep) as Arc<dyn Step<StackHost>>)
    });
    r.register("start_connector", |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(StartConnectorStep) as Arc<dyn Step<StackHost>>)
    });
    r.register("recreate_connector", |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(RecreateConnectorStep) as Arc<dyn Step<StackHost>>)
    });
    r.register("wait_connector", move |p| {
        let params = Params::new(p, &["timeout"])?;
        let timeout = match gate_override {
            Some(d) => d,
            None => params
                .duration("timeout")?
                .unwrap_or(crate::ops::deploy::DEFAULT_GATE_TIMEOUT),
        };
        Ok(Arc::new(WaitConnectorStep { timeout }) as Arc<dyn Step<StackHost>>)
    });
    r.register("stop_old", |p| {
        let params = Params::new(p, &["grace"])?;
        let grace = params.duration("grace")?.unwrap_or(Duration::from_secs(30));
        Ok(Arc::new(StopOldStep { grace }) as Arc<dyn Step<StackHost>>)
    });
    r.register("unlock", move |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(UnlockStep {
            early: early.clone(),
        }) as Arc<dyn Step<StackHost>>)
    });
    r.register("audit", |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(AuditStep) as Arc<dyn Step<StackHost>>)
    });
}
