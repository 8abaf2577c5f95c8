//! The deploy operation's pieces: controller-side inputs (tokens, certificates, releases),
//! host facts and plans, and the rollout steps that apply them (connect, facts, apply,
//! health_gate). The `deploy` playbook strings the steps together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::fleet::FleetHost;
use super::health;
use crate::pki::{Ca, ServerCert, cert_info};
use crate::playbook::{Params, StepRegistry};
use crate::remote::{AuditEntry, AuditOutcome, LOCK_HELD_EXIT};
use crate::rollout::{HostCtx, Step, StepCx, StepFailure, StepOutcome};
use crate::secrets::{Secret, TokenSource};
use crate::ssh::{Connector, Session};
use crate::stack::scripts::{self, ApplySpec, CHANGED_EXIT, ParsedFacts};
use crate::stack::{
    self, CertFile, DesiredState, EnvFile, Layout, Plan, Release, StackSettings, TunnelGroup,
};

/// `<state_dir>/pki/<tunnel>`, refusing tunnel names that are not plain file names.
pub fn tunnel_pki_dir(state_dir: &Path, tunnel: &str) -> Result<PathBuf, String> {
    if tunnel.is_empty()
        || tunnel.starts_with('.')
        || !tunnel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "tunnel name '{tunnel}': use letters, digits, '-', '_' and '.' only"
        ));
    }
    Ok(state_dir.join("pki").join(tunnel))
}

/// What one tunnel brings to its hosts.
pub struct TunnelInput {
    /// The tunnel's name.
    pub name: String,
    /// The token, when one was given (None: `.env` is left as it is on each host).
    pub token: Option<Secret>,
    /// The server certificate and CA certificate (None in `--check` when none exists yet).
    pub certs: Option<(ServerCert, String)>,
    /// Whether a new server certificate will be (or was) issued.
    pub cert_issued: bool,
}

/// Loads the tunnels' tokens and certificates. Every input error surfaces here, before any
/// host is touched.
pub async fn tunnel_inputs(
    groups: &[TunnelGroup],
    explicit: Option<TokenSource>,
    state_dir: &Path,
    issue: bool,
) -> Result<BTreeMap<String, TunnelInput>, String> {
    if explicit.is_some() && groups.len() > 1 {
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        return Err(format!(
            "the selected hosts serve {} tunnels ({}); one token cannot serve them all: \
             --limit to one tunnel, or set tunnel_token_command per tunnel",
            names.len(),
            names.join(", ")
        ));
    }
    let mut out = BTreeMap::new();
    for g in groups {
        let source = explicit.clone().or_else(|| {
            g.members
                .first()
                .and_then(|m| m.tunnel_token_command.clone())
                .map(TokenSource::Command)
        });
        let source = source.or_else(|| {
            g.members
                .first()
                .and_then(|m| m.tunnel_token_vault.clone())
                .map(TokenSource::Vault)
        });
        let token = match source {
            Some(s) => Some(
                s.load()
                    .await
                    .map_err(|e| format!("tunnel '{}': token from {s}: {e}", g.name))?,
            ),
            None => None,
        };
        if g.members
            .first()
            .and_then(|m| m.setup.as_ref())
            .is_some_and(|s| s.certificates)
        {
            // The setup component issues and renews the certificates on each host: they are
            // not tunnelfleet's to write (and there is no controller CA to load).
            out.insert(
                g.name.clone(),
                TunnelInput {
                    name: g.name.clone(),
                    token,
                    certs: None,
                    cert_issued: false,
                },
            );
            continue;
        }
        let dir = tunnel_pki_dir(state_dir, &g.name)?;
        let ca = Ca::load(&dir).map_err(|e| {
            format!(
                "tunnel '{}': {e} (make it with: tunnelfleet pki init --tunnel {} --state-dir {}, \
                 then register ca.crt in the Console)",
                g.name,
                g.name,
                state_dir.display()
            )
        })?;
        let stored = ca
            .stored_server()
            .map_err(|e| format!("tunnel '{}': {e}", g.name))?;
        let fits = stored.as_ref().is_some_and(|c| {
            cert_info(&c.cert_pem)
                .map(|i| i.dns_names.iter().any(|d| d == &g.domain))
                .unwrap_or(false)
        });
        let (certs, cert_issued) = if fits {
            (stored.map(|c| (c, ca.cert_pem().to_string())), false)
        } else if issue {
            let cert = ca
                .issue_server_with_key(
                    &g.domain,
                    crate::pki::DEFAULT_SERVER_DAYS,
                    stored.as_ref().map(|c| &c.key_pem),
                )
                .or_else(|_| ca.issue_server(&g.domain, crate::pki::DEFAULT_SERVER_DAYS))
                .map_err(|e| format!("tunnel '{}': {e}", g.name))?;
            ca.store_server(&cert)
                .map_err(|e| format!("tunnel '{}': {e}", g.name))?;
            (Some((cert, ca.cert_pem().to_string())), true)
        } else {
            (None, true)
        };
        out.insert(
            g.name.clone(),
            TunnelInput {
                name: g.name.clone(),
                token,
                certs,
                cert_issued,
            },
        );
    }
    Ok(out)
}

/// Everything a host needs, computed on the controller before any host is touched.
pub struct HostInput {
    /// The host.
    pub host: FleetHost,
    /// Its stack settings.
    pub settings: StackSettings,
    /// Its layout.
    pub layout: Layout,
    /// Its release.
    pub release: Release,
    /// Its `.env` (None: no token given; the host's `.env` is kept).
    pub env: Option<EnvFile>,
    /// Token fingerprint, when a token was given.
    pub token_fp: Option<String>,
    /// The token itself, only to redact it from any message as a last resort (it is sent
    /// only inside `env`, on stdin).
    pub token: Option<Secret>,
    /// Certificates: (file, content, sha256).
    pub certs: Vec<(CertFile, Vec<u8>, String)>,
    /// Serial of the server certificate.
    pub cert_serial: Option<String>,
    /// `--check` only: a new server certificate would be issued (none exists yet for the
    /// tunnel's domain), so the plan writes every certificate file.
    pub certs_pending: bool,
    /// `--force`: deploy into a system directory or a non-empty directory tunnelfleet did
    /// not create.
    pub force_dir: bool,
}

impl HostInput {
    /// Sets the token this host gets: its `.env` rendered with it, and its fingerprint.
    pub fn set_token(&mut self, token: &Secret) -> Result<(), String> {
        let env = stack::render_env(&self.settings, token.expose())
            .map_err(|e| format!("{}: {e}", self.host.name))?;
        self.env = Some(env);
        self.token_fp = Some(token.fingerprint());
        self.token = Some(token.clone());
        Ok(())
    }
}

/// Loads the controller-side inputs of every selected host: settings, tunnels, tokens,
/// certificates, releases. Every input error surfaces here, before any host is touched.
pub async fn load_inputs(
    hosts: Vec<FleetHost>,
    token: Option<TokenSource>,
    state_dir: &str,
    issue: bool,
) -> Result<(BTreeMap<String, TunnelInput>, Vec<HostInput>), String> {
    let mut with_settings = Vec::new();
    let mut errors = Vec::new();
    for h in hosts {
        match StackSettings::from_vars(&h.name, &h.vars) {
            Ok(s) => with_settings.push((h, s)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    let settings: Vec<StackSettings> = with_settings.iter().map(|(_, s)| s.clone()).collect();
    let groups = crate::stack::group_by_tunnel(&settings).map_err(|e| e.to_string())?;
    let state = crate::ssh::config::expand_tilde(state_dir);
    let tunnels = tunnel_inputs(&groups, token, &state, issue).await?;
    let inputs = host_inputs(with_settings, &tunnels)?;
    Ok((tunnels, inputs))
}

/// Builds each host's input from its settings and its tunnel's input.
pub fn host_inputs(
    hosts: Vec<(FleetHost, StackSettings)>,
    tunnels: &BTreeMap<String, TunnelInput>,
) -> Result<Vec<HostInput>, String> {
    let mut out = Vec::new();
    for (host, settings) in hosts {
        let t = tunnels.get(&settings.tunnel_name).ok_or_else(|| {
            format!(
                "{}: tunnel '{}' has no input",
                host.name, settings.tunnel_name
            )
        })?;
        let mut certs = Vec::new();
        let mut cert_serial = None;
        if let Some((server, ca_pem)) = &t.certs {
            for (c, bytes) in [
                (CertFile::CaCrt, ca_pem.as_bytes().to_vec()),
                (
                    CertFile::TlsKey,
                    server.key_pem.expose().as_bytes().to_vec(),
                ),
                (CertFile::TlsCrt, server.cert_pem.as_bytes().to_vec()),
            ] {
                let h = stack::sha256_hex(&bytes);
                certs.push((c, bytes, h));
            }
            cert_serial = cert_info(&server.cert_pem).ok().map(|i| i.serial);
        }
        let mut input = HostInput {
            layout: Layout::new(&settings.deploy_dir, &settings.tunnel_name),
            release: stack::render_release(&settings),
            token_fp: None,
            token: None,
            host,
            settings,
            env: None,
            certs,
            cert_serial,
            certs_pending: t.certs.is_none() && t.cert_issued,
            force_dir: false,
        };
        if let Some(tok) = &t.token {
            input.set_token(tok)?;
        }
        out.push(input);
    }
    Ok(out)
}

/// Reads a host's facts (one round trip).
pub async fn read_facts(session: &Session, input: &HostInput) -> Result<ParsedFacts, String> {
    let script = scripts::facts_script(&input.layout, &input.release).map_err(|e| e.to_string())?;
    let out = session
        .exec(&script, b"")
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("read facts: {}", out.stderr_text()));
    }
    Ok(scripts::parse_facts(
        &input.layout,
        &input.release,
        &out.stdout_text(),
    ))
}

/// The desired state of a host given its facts (an `.env` not managed this run is desired
/// as it is).
pub fn desired_state(input: &HostInput, facts: &ParsedFacts) -> Result<DesiredState, String> {
    let env_sha = match (&input.env, &facts.facts.env_sha256) {
        (Some(e), _) => e.sha256(),
        (None, Some(h)) => h.clone(),
        (None, None) => {
            return Err("the host has no .env and no token was given".into());
        }
    };
    let mut d = DesiredState::new(&input.release, env_sha);
    d.token_fingerprint = input.token_fp.clone().or(facts.env_token_fp.clone());
    for (c, _, h) in &input.certs {
        d.certs.insert(*c, h.clone());
    }
    Ok(d)
}

/// The fleet lock's holder record for `operation` (who, where, when; no secrets).
pub fn holder_json(operation: &str) -> String {
    holder_json_for(operation, "")
}

/// The fleet lock's holder record for `operation` with id `op_id` (a resumed run of the
/// same operation recognises its own lock by it).
pub fn holder_json_for(operation: &str, op_id: &str) -> String {
    serde_json::json!({
        "operation": operation,
        "op_id": op_id,
        "operator": operator(),
        "controller": controller_name(),
        "pid": std::process::id(),
        "since": now_rfc3339(),
    })
    .to_string()
}

/// The operator's name on the controller.
pub fn operator() -> String {
    super::audit::operator()
}

/// This controller's hostname, as lock holders and audit lines record it.
pub fn controller_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "controller".into())
}

/// A host as the deploy (and rotation) steps see it: its input, its connection, and what the
/// steps learned and did. Secret-free apart from the input's token-bearing `.env` bytes.
pub struct StackHost {
    /// What the controller computed for this host.
    pub input: HostInput,
    /// The run's connector (shared by every host).
    pub connector: Arc<Connector>,
    /// Print plans only: steps that would change the host do nothing.
    pub check_only: bool,
    /// The operation's name, for the lock holder and the audit line.
    pub operation: String,
    /// The open session, after `connect`.
    pub session: Option<Arc<Session>>,
    /// The host's facts, after `facts`.
    pub facts: Option<ParsedFacts>,
    /// The plan, after `facts`.
    pub plan: Option<Plan>,
    /// Connector ids answering before the change (the gate waits for a new one).
    pub old_connector_ids: BTreeSet<String>,
    /// Whether `apply` ran compose actions (so `health_gate` has something to wait for).
    pub restarted: bool,
    /// The connector that passed the gate.
    pub ready: Option<health::ConnectorReady>,
    /// How long the gate waited.
    pub gate_ms: Option<u64>,
    /// What a token rotation did on this host.
    pub rotation: super::host_state::RotationState,
    /// What a release change (deploy, rollback) did on this host.
    pub upgrade: super::host_state::UpgradeState,
    /// The audit line is written after the gate by the operation (with the real outcome),
    /// not by the apply script.
    pub deferred_audit: bool,
    /// Certificates only (renew-cert): the plan keeps only the certificate writes.
    pub certs_only: bool,
}

impl StackHost {
    /// A host context for `operation`.
    pub fn new(
        input: HostInput,
        connector: Arc<Connector>,
        operation: &str,
        check_only: bool,
    ) -> Self {
        StackHost {
            input,
            connector,
            check_only,
            operation: operation.to_string(),
            session: None,
            facts: None,
            plan: None,
            old_connector_ids: BTreeSet::new(),
            restarted: false,
            ready: None,
            gate_ms: None,
            rotation: Default::default(),
            upgrade: Default::default(),
            deferred_audit: false,
            certs_only: false,
        }
    }

    /// `text` with the token (if any) replaced by its fingerprint: a last-resort guard for
    /// messages that carry a host's stderr.
    pub fn redact(&self, text: &str) -> String {
        match &self.input.token {
            Some(t) => crate::secrets::redact(text, &[t]),
            None => text.to_string(),
        }
    }

    /// The open session, or a step failure saying `connect` must run first.
    pub fn session(&self) -> Result<Arc<Session>, StepFailure> {
        self.session.clone().ok_or_else(|| {
            StepFailure::new("not connected (the playbook must run `connect` first)")
        })
    }
}

impl HostCtx for StackHost {
    fn name(&self) -> &str {
        &self.input.host.name
    }
}

/// `connect`: one SSH session per host, reused by every later step.
pub struct ConnectStep;

#[async_trait::async_trait]
impl Step<StackHost> for ConnectStep {
    fn name(&self) -> &str {
        "connect"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let s = h
            .connector
            .connect(&h.input.host.target)
            .await
            .map_err(super::ssh_failure)?;
        let detail = format!("{} ({})", s.auth, s.host_key_fingerprint);
        h.session = Some(Arc::new(s));
        Ok(StepOutcome::unchanged(detail))
    }
}

/// `facts`: what the host has (one round trip), and the plan for it.
pub struct FactsStep;

#[async_trait::async_trait]
impl Step<StackHost> for FactsStep {
    fn name(&self) -> &str {
        "facts"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let session = h.session()?;
        let facts = read_facts(&session, &h.input)
            .await
            .map_err(StepFailure::new)?;
        if facts.compose.is_none() {
            return Err(StepFailure::new("no Docker Compose on the host")
                .with_hint("install docker compose (v2) or docker-compose (v1)"));
        }
        if let Some(why) = facts.engine_refusal() {
            return Err(StepFailure::new(why).with_hint(scripts::ENGINE_DOWN_HINT));
        }
        if !h.input.force_dir
            && let Some(why) =
                stack::deploy_dir_refusal(h.input.layout.deploy_dir(), facts.dir_state.as_deref())
        {
            return Err(StepFailure::new(why).with_hint(
                "set deploy_dir to a directory of its own (default /srv/mcp-tunnel), or deploy \
                 with --force if this directory is really meant for the stack",
            ));
        }
        let desired = desired_state(&h.input, &facts).map_err(|e| {
            StepFailure::new(e)
                .with_hint("give the token: --token-file F, --token-stdin, or TUNNEL_TOKEN")
        })?;
        let mut plan = stack::compute_plan(&desired, &facts.facts);
        if h.input.certs_pending {
            plan.write_certs = crate::stack::CertFile::ALL.to_vec();
        }
        if h.certs_only {
            plan.write_release = false;
            plan.switch_current = false;
            plan.changed_files.clear();
            plan.write_env = false;
            plan.actions.clear();
        }
        let detail = if plan.is_empty() {
            "up to date".to_string()
        } else {
            plan.describe().join("; ")
        };
        h.facts = Some(facts);
        h.plan = Some(plan);
        Ok(StepOutcome::unchanged(detail))
    }
}

/// `apply`: the plan in one round trip under the fleet lock (nothing when up to date or in
/// `--check`).
pub struct ApplyStep;

#[async_trait::async_trait]
impl Step<StackHost> for ApplyStep {
    fn name(&self) -> &str {
        "apply"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let (Some(plan), Some(facts)) = (h.plan.clone(), h.facts.clone()) else {
            return Err(StepFailure::new(
                "no plan (the playbook must run `facts` first)",
            ));
        };
        if h.check_only || plan.is_empty() {
            return Ok(StepOutcome::unchanged(if plan.is_empty() {
                "up to date"
            } else {
                "check only"
            }));
        }
        let session = h.session()?;
        let compose = facts
            .compose
            .ok_or_else(|| StepFailure::new("no Docker Compose on the host"))?;
        if !plan.actions.is_empty() {
            h.old_connector_ids =
                health::connector_ids(&session, h.input.settings.metrics_ports()).await;
        }
        let desired_fp = h.input.token_fp.clone().or(facts.env_token_fp.clone());
        let audit = AuditEntry {
            time: now_rfc3339(),
            operator: operator(),
            operation: h.operation.clone(),
            outcome: AuditOutcome::Succeeded,
            release: Some(plan.release_id.clone()),
            from_release: None,
            token_fingerprint: desired_fp,
            cert_serial: if plan.write_certs.is_empty() {
                None
            } else {
                h.input.cert_serial.clone()
            },
        };
        let holder = holder_json(&h.operation);
        let certs: Vec<(CertFile, &[u8])> = h
            .input
            .certs
            .iter()
            .filter(|(c, _, _)| plan.write_certs.contains(c))
            .map(|(c, b, _)| (*c, b.as_slice()))
            .collect();
        h.upgrade.from = facts.facts.current_release.clone();
        h.upgrade.to = Some(plan.release_id.clone());
        let spec = ApplySpec {
            layout: &h.input.layout,
            release: &h.input.release,
            // Staged earlier (files and links): only the switch is left.
            write_release: plan.write_release && !h.upgrade.staged,
            switch_current: plan.switch_current,
            env: if plan.write_env {
                h.input.env.as_ref().map(|e| e.as_bytes())
            } else {
                None
            },
            certs,
            actions: plan.actions.clone(),
            compose,
            holder_json: &holder,
            expect_current: facts.facts.current_release.as_deref(),
            expect_env_sha256: facts.facts.env_sha256.as_deref(),
            audit: (!h.deferred_audit).then_some(&audit),
            fix_perms: plan.fix_perms.clone(),
        };
        let (script, stdin) =
            scripts::apply_script(&spec).map_err(|e| StepFailure::new(e.to_string()))?;
        let out = session.exec(&script, &stdin).await.map_err(|e| {
            // The connection went during the apply: the script completes on the host
            // (it ignores SIGHUP/SIGPIPE), so count the host as moved for a rollback.
            h.upgrade.moved = plan.switch_current || !plan.actions.is_empty();
            super::ssh_failure(e)
        })?;
        match out.status.map(|s| s as i32) {
            Some(0) => {}
            Some(crate::stack::release_scripts::COMPOSE_FAILED_EXIT) => {
                // `current` was switched and files written before Compose failed.
                h.upgrade.moved = true;
                h.upgrade.wrote_env = plan.write_env;
                return Err(StepFailure::new(h.redact(out.stderr_text().trim()))
                    .with_hint("the new release is in place but did not start"));
            }
            Some(LOCK_HELD_EXIT) => {
                return Err(StepFailure::new(format!(
                    "another operation holds the fleet lock: {}",
                    out.stdout_text().trim()
                ))
                .with_hint(format!(
                    "wait for it; if that run is dead: tunnelfleet unlock -i INVENTORY --limit {}",
                    h.input.host.name
                )));
            }
            Some(CHANGED_EXIT) => {
                return Err(StepFailure::new(h.redact(&out.stderr_text())).with_hint("rerun"));
            }
            None => {
                // No exit status: the script was killed (the host rebooted or went down) after
                // it started; it may have switched `current`, so count the host as moved (a
                // rollback takes it back; switching to where it is changes nothing).
                h.upgrade.moved = plan.switch_current || !plan.actions.is_empty();
                return Err(StepFailure::new(format!(
                    "the apply script ended without an exit status (killed, or the host went \
                     down): {}",
                    h.redact(&last_line(&out.stderr_text()))
                ))
                .with_hint("run again once the host is back: the next run reads where it is"));
            }
            _ => {
                return Err(
                    StepFailure::new(h.redact(&last_line(&out.stderr_text()))).with_hint(
                        "files are replaced only once all are complete, so nothing was \
                     half-written; fix the cause and rerun",
                    ),
                );
            }
        }
        h.restarted = !plan.actions.is_empty();
        h.upgrade.moved = plan.switch_current || !plan.actions.is_empty();
        h.upgrade.wrote_env = plan.write_env;
        Ok(StepOutcome::changed(plan.describe().join("; ")))
    }
}

/// `health_gate {timeout, min_healthy}`: after a restart, a connector the host did not have
/// before is ready (a stopping connector keeps answering /ready while it drains), the proxy and
/// the connector run, and both still run, unrestarted, after `min_healthy` (a crash-looping
/// container passes a one-shot check). A container found down while waiting fails the gate
/// at once, with its last log lines (see [`super::upgrade::gate`]).
pub struct HealthGateStep {
    /// How long to wait (the healthy deadline).
    pub timeout: Duration,
    /// How long both containers must stay up after the connector is ready.
    pub min_healthy: Duration,
}

#[async_trait::async_trait]
impl Step<StackHost> for HealthGateStep {
    fn name(&self) -> &str {
        "health_gate"
    }
    async fn run(&self, h: &mut StackHost, cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        if !h.restarted {
            return Ok(StepOutcome::unchanged("nothing restarted"));
        }
        let detail = super::upgrade::gate(h, cx, self.timeout, self.min_healthy).await?;
        Ok(StepOutcome::unchanged(detail))
    }
}

/// The default deadline of `health_gate`.
pub const DEFAULT_GATE_TIMEOUT: Duration = Duration::from_secs(60);

/// The last non-empty line of a remote command's output (`failed` when there is none).
pub(crate) fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("failed")
        .to_string()
}

/// Now, RFC 3339 UTC to the second.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The operator's overrides of the health gate's playbook parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct GateOverrides {
    /// Wins over the playbook's `timeout` (default [`DEFAULT_GATE_TIMEOUT`]).
    pub deadline: Option<Duration>,
    /// Wins over the playbook's `min_healthy` (default none).
    pub min_healthy: Option<Duration>,
}

/// The deploy steps, by playbook name, with the operator's gate overrides.
pub fn register_deploy_steps(r: &mut StepRegistry<StackHost>, gate: GateOverrides) {
    r.register("connect", |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(ConnectStep) as Arc<dyn Step<StackHost>>)
    });
    r.register("facts", |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(FactsStep) as Arc<dyn Step<StackHost>>)
    });
    r.register("apply", |p| {
        Params::new(p, &[])?;
        Ok(Arc::new(ApplyStep) as Arc<dyn Step<StackHost>>)
    });
    r.register("health_gate", move |p| {
        let params = Params::new(p, &["timeout", "min_healthy"])?;
        let timeout = match gate.deadline {
            Some(d) => d,
            None => params.duration("timeout")?.unwrap_or(DEFAULT_GATE_TIMEOUT),
        };
        let min_healthy = match gate.min_healthy {
            Some(d) => d,
            None => params.duration("min_healthy")?.unwrap_or(Duration::ZERO),
        };
        Ok(Arc::new(HealthGateStep {
            timeout,
            min_healthy,
        }) as Arc<dyn Step<StackHost>>)
    });
}
