//! `tunnelfleet deploy`: the same stack, token and certificates on every selected host,
//! health-gated. Facts (one round trip), plan, apply (one round trip), gate.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::common::{ConnArgs, SelectedHost, parse_duration};
use super::pki::PkiLocation;
use super::progress::{Progress, table};
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK};
use crate::ops::health;
use crate::pki::{Ca, ServerCert, cert_info};
use crate::remote::{AuditEntry, AuditOutcome, LOCK_HELD_EXIT};
use crate::secrets::{Secret, TokenSource};
use crate::ssh::{Connector, Session};
use crate::stack::scripts::{self, ApplySpec, CHANGED_EXIT, ParsedFacts};
use crate::stack::{
    self, CertFile, DesiredState, EnvFile, Layout, Plan, Release, StackSettings, TunnelGroup,
};

/// Where the tunnel token comes from (explicit flags; else env TUNNEL_TOKEN; else the
/// tunnel's `tunnel_token_command`).
#[derive(Args, Debug, Clone, Default)]
pub struct TokenArgs {
    /// Read the token from stdin.
    #[arg(long, conflicts_with = "token_file")]
    pub token_stdin: bool,
    /// Read the token from a file (refused when group or others can read it).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The explicit source, or env TUNNEL_TOKEN when set.
    pub fn flag_or_env(&self) -> Option<TokenSource> {
        if self.token_stdin {
            Some(TokenSource::Stdin)
        } else if let Some(f) = &self.token_file {
            Some(TokenSource::File(f.clone()))
        } else if std::env::var_os("TUNNEL_TOKEN").is_some() {
            Some(TokenSource::env_default())
        } else {
            None
        }
    }
}

/// Flags of `deploy`.
#[derive(Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    token: TokenArgs,
    /// The controller's state directory (CA and server certificate per tunnel).
    #[arg(
        long,
        env = "TUNNELFLEET_STATE_DIR",
        default_value = "~/.local/state/tunnelfleet"
    )]
    state_dir: String,
    /// Print each host's plan and touch nothing.
    #[arg(long)]
    check: bool,
    /// Print one JSON document on stdout instead of the recap.
    #[arg(long)]
    json: bool,
    /// How long a host may take to have a ready connector after a change.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    gate_timeout: Duration,
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

/// Per-host outcome, for the recap and `--json` (hashes and fingerprints only).
#[derive(Debug, Serialize, Default)]
pub struct HostResult {
    name: String,
    ok: bool,
    error: Option<String>,
    hint: Option<String>,
    stage: String,
    tunnel: String,
    changed: bool,
    plan: Option<Plan>,
    token_fingerprint: Option<String>,
    connector: Option<health::ConnectorReady>,
    gate_ms: Option<u64>,
}

impl HostResult {
    fn fail(mut self, stage: &str, error: impl Into<String>, hint: Option<String>) -> Self {
        self.ok = false;
        self.stage = stage.to_string();
        self.error = Some(error.into());
        self.hint = hint;
        self
    }
}

/// Loads the tunnels' tokens and certificates. Every input error surfaces here, before any
/// host is touched.
pub async fn tunnel_inputs(
    groups: &[TunnelGroup],
    token: &TokenArgs,
    pki: &str,
    issue: bool,
) -> Result<BTreeMap<String, TunnelInput>, CliError> {
    let explicit = token.flag_or_env();
    if explicit.is_some() && groups.len() > 1 {
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        return Err(CliError::input(format!(
            "the selected hosts serve {} tunnels ({}); one token cannot serve them all: \
             --limit to one tunnel, or set tunnel_token_command per tunnel",
            names.len(),
            names.join(", ")
        )));
    }
    let mut out = BTreeMap::new();
    for g in groups {
        let source = explicit.clone().or_else(|| {
            g.members
                .first()
                .and_then(|m| m.tunnel_token_command.clone())
                .map(TokenSource::Command)
        });
        let token = match source {
            Some(s) => Some(s.load().await.map_err(|e| {
                CliError::input(format!("tunnel '{}': token from {s}: {e}", g.name))
            })?),
            None => None,
        };
        let loc = PkiLocation {
            state_dir: pki.to_string(),
            tunnel: g.name.clone(),
        };
        let dir = loc.dir()?;
        let ca = Ca::load(&dir).map_err(|e| {
            CliError::input(format!(
                "tunnel '{}': {e} (make it with: tunnelfleet pki init --tunnel {} --state-dir {}, \
                 then register ca.crt in the Console)",
                g.name, g.name, pki
            ))
        })?;
        let stored = ca
            .stored_server()
            .map_err(|e| CliError::input(format!("tunnel '{}': {e}", g.name)))?;
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
                .map_err(|e| CliError::input(format!("tunnel '{}': {e}", g.name)))?;
            ca.store_server(&cert)
                .map_err(|e| CliError::input(format!("tunnel '{}': {e}", g.name)))?;
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
    pub host: SelectedHost,
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
    /// Certificates: (file, content, sha256).
    pub certs: Vec<(CertFile, Vec<u8>, String)>,
    /// Serial of the server certificate.
    pub cert_serial: Option<String>,
}

/// Builds each host's input from its settings and its tunnel's input.
pub fn host_inputs(
    hosts: Vec<(SelectedHost, StackSettings)>,
    tunnels: &BTreeMap<String, TunnelInput>,
) -> Result<Vec<HostInput>, CliError> {
    let mut out = Vec::new();
    for (host, settings) in hosts {
        let t = tunnels.get(&settings.tunnel_name).ok_or_else(|| {
            CliError::input(format!(
                "{}: tunnel '{}' has no input",
                host.name, settings.tunnel_name
            ))
        })?;
        let env = match &t.token {
            Some(tok) => Some(
                stack::render_env(&settings, tok.expose())
                    .map_err(|e| CliError::input(format!("{}: {e}", host.name)))?,
            ),
            None => None,
        };
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
        out.push(HostInput {
            layout: Layout::new(&settings.deploy_dir),
            release: stack::render_release(&settings),
            token_fp: t.token.as_ref().map(Secret::fingerprint),
            host,
            settings,
            env,
            certs,
            cert_serial,
        });
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

fn holder_json(operation: &str) -> String {
    serde_json::json!({
        "operation": operation,
        "operator": operator(),
        "controller": controller_name(),
        "pid": std::process::id(),
        "since": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
    .to_string()
}

/// The operator's name on the controller.
pub fn operator() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

fn controller_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "controller".into())
}

async fn deploy_host(
    connector: &Arc<Connector>,
    input: &HostInput,
    check: bool,
    gate_timeout: Duration,
    progress: &Progress,
) -> HostResult {
    let name = input.host.name.clone();
    let r = HostResult {
        name: name.clone(),
        tunnel: input.settings.tunnel_name.clone(),
        token_fingerprint: input.token_fp.clone(),
        stage: "connect".into(),
        ..Default::default()
    };
    progress.step(&name, "connecting");
    let session = match connector.connect(&input.host.target).await {
        Ok(s) => s,
        Err(e) => return r.fail("connect", e.message.clone(), e.hint.clone()),
    };
    progress.step(&name, "reading facts");
    let facts = match read_facts(&session, input).await {
        Ok(f) => f,
        Err(e) => return r.fail("facts", e, None),
    };
    let Some(compose) = facts.compose else {
        return r.fail(
            "facts",
            "no Docker Compose on the host",
            Some("install docker compose (v2) or docker-compose (v1)".into()),
        );
    };
    let desired = match desired_state(input, &facts) {
        Ok(d) => d,
        Err(e) => {
            return r.fail(
                "plan",
                e,
                Some("give the token: --token-file F, --token-stdin, or TUNNEL_TOKEN".into()),
            );
        }
    };
    let plan = stack::compute_plan(&desired, &facts.facts);
    let mut r = HostResult {
        plan: Some(plan.clone()),
        changed: !plan.is_empty(),
        stage: "plan".into(),
        ..r
    };
    if check || plan.is_empty() {
        r.ok = true;
        r.stage = if check { "check" } else { "done" }.into();
        session_close(session).await;
        return r;
    }
    let old_ids = if plan.actions.is_empty() {
        Default::default()
    } else {
        health::connector_ids(&session).await
    };
    progress.step(&name, "applying");
    let audit = AuditEntry {
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        operator: operator(),
        operation: "deploy".into(),
        outcome: AuditOutcome::Succeeded,
        release: Some(plan.release_id.clone()),
        token_fingerprint: desired.token_fingerprint.clone(),
        cert_serial: if plan.write_certs.is_empty() {
            None
        } else {
            input.cert_serial.clone()
        },
    };
    let holder = holder_json("deploy");
    let certs: Vec<(CertFile, &[u8])> = input
        .certs
        .iter()
        .filter(|(c, _, _)| plan.write_certs.contains(c))
        .map(|(c, b, _)| (*c, b.as_slice()))
        .collect();
    let spec = ApplySpec {
        layout: &input.layout,
        release: &input.release,
        write_release: plan.write_release,
        switch_current: plan.switch_current,
        env: if plan.write_env {
            input.env.as_ref().map(|e| e.as_bytes())
        } else {
            None
        },
        certs,
        actions: plan.actions.clone(),
        compose,
        holder_json: &holder,
        expect_current: facts.facts.current_release.as_deref(),
        expect_env_sha256: facts.facts.env_sha256.as_deref(),
        audit: &audit,
    };
    let (script, stdin) = match scripts::apply_script(&spec) {
        Ok(x) => x,
        Err(e) => return r.fail("apply", e.to_string(), None),
    };
    let out = match session.exec(&script, &stdin).await {
        Ok(o) => o,
        Err(e) => return r.fail("apply", e.message.clone(), e.hint.clone()),
    };
    match out.status.map(|s| s as i32) {
        Some(0) => {}
        Some(LOCK_HELD_EXIT) => {
            return r.fail(
                "lock",
                format!(
                    "another operation holds the fleet lock: {}",
                    out.stdout_text().trim()
                ),
                Some(format!(
                    "wait for it, or if that run is dead: tunnelfleet unlock -i INV --limit {name}"
                )),
            );
        }
        Some(CHANGED_EXIT) => {
            return r.fail("apply", out.stderr_text(), Some("rerun deploy".into()));
        }
        _ => {
            return r.fail(
                "apply",
                last_line(&out.stderr_text()),
                Some("nothing was half-written: files are replaced only once all are complete; fix the cause and rerun".into()),
            );
        }
    }
    if !plan.actions.is_empty() {
        progress.step(&name, "waiting for the connector");
        match health::wait_new_ready(&session, &old_ids, gate_timeout).await {
            Ok((c, waited)) => {
                r.connector = Some(c);
                r.gate_ms = Some(waited.as_millis() as u64);
            }
            Err(e) => {
                return r.fail(
                    "gate",
                    e,
                    Some("see the connector's logs: docker compose logs cloudflared".into()),
                );
            }
        }
    }
    session_close(session).await;
    r.ok = true;
    r.stage = "done".into();
    r
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("failed")
        .to_string()
}

async fn session_close(s: Session) {
    s.close().await;
}

/// Runs `deploy`.
pub async fn run(args: DeployArgs) -> Result<i32, CliError> {
    let (_inv, hosts) = args.conn.select().await?;
    let mut with_settings = Vec::new();
    let mut errors = Vec::new();
    for h in hosts {
        match StackSettings::from_vars(&h.name, &h.vars) {
            Ok(s) => with_settings.push((h, s)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(CliError::input(errors.join("\n")));
    }
    let settings: Vec<StackSettings> = with_settings.iter().map(|(_, s)| s.clone()).collect();
    let groups = stack::group_by_tunnel(&settings).map_err(|e| CliError::input(e.to_string()))?;
    let tunnels = tunnel_inputs(&groups, &args.token, &args.state_dir, !args.check).await?;
    let inputs = host_inputs(with_settings, &tunnels)?;

    let connector = Arc::new(
        Connector::new(args.conn.ssh_options()).map_err(|e| CliError::input(e.to_string()))?,
    );
    let names: Vec<String> = inputs.iter().map(|i| i.host.name.clone()).collect();
    let progress = Arc::new(Progress::new("deploy", &names));
    let mut set = tokio::task::JoinSet::new();
    for (i, input) in inputs.into_iter().enumerate() {
        let (c, p) = (connector.clone(), progress.clone());
        let (check, gate) = (args.check, args.gate_timeout);
        set.spawn(async move {
            let r = deploy_host(&c, &input, check, gate, &p).await;
            let msg = match (&r.error, &r.plan) {
                (Some(e), _) => e.clone(),
                (None, Some(p)) if p.is_empty() => "up to date".into(),
                (None, Some(p)) if check => format!("would change: {}", p.describe().join("; ")),
                (None, Some(p)) => format!("changed: {}", p.describe().join("; ")),
                _ => String::new(),
            };
            p.done(&r.name, r.ok, &msg);
            (i, r)
        });
    }
    let mut results = Vec::new();
    while let Some(j) = set.join_next().await {
        match j {
            Ok(x) => results.push(x),
            Err(e) => {
                return Err(CliError::input(format!(
                    "internal error: a host task failed: {e}"
                )));
            }
        }
    }
    progress.finish();
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<HostResult> = results.into_iter().map(|(_, r)| r).collect();
    render(&results, &tunnels, args.json, args.check);
    Ok(if results.iter().all(|r| r.ok) {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}

fn render(
    results: &[HostResult],
    tunnels: &BTreeMap<String, TunnelInput>,
    json: bool,
    check: bool,
) {
    let ok = results.iter().filter(|r| r.ok).count();
    let failed = results.len() - ok;
    let changed = results.iter().filter(|r| r.ok && r.changed).count();
    if json {
        let t: Vec<serde_json::Value> = tunnels
            .values()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "token_fingerprint": t.token.as_ref().map(Secret::fingerprint),
                    "certificate_issued": t.cert_issued,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "check": check,
            "tunnels": t,
            "hosts": results,
            "summary": {"ok": ok, "failed": failed, "changed": changed},
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    if check {
        for r in results {
            println!("{}:", r.name);
            match (&r.error, &r.plan) {
                (Some(e), _) => println!("  FAILED: {e}"),
                (None, Some(p)) => {
                    for l in p.describe() {
                        println!("  {l}");
                    }
                }
                _ => {}
            }
        }
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                if r.ok { "ok".into() } else { "FAILED".into() },
                r.tunnel.clone(),
                if r.changed {
                    "changed".into()
                } else {
                    "-".into()
                },
                r.gate_ms
                    .map(|g| format!("{g} ms"))
                    .unwrap_or_else(|| "-".into()),
                match (&r.error, &r.hint) {
                    (Some(e), Some(h)) => format!("{}: {e} (hint: {h})", r.stage),
                    (Some(e), None) => format!("{}: {e}", r.stage),
                    _ => r
                        .plan
                        .as_ref()
                        .map(|p| p.describe().join("; "))
                        .unwrap_or_default(),
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["HOST", "STATUS", "TUNNEL", "CHANGE", "READY IN", "DETAIL"],
            &rows
        )
    );
    let verb = if check { "would change" } else { "changed" };
    println!("{ok} ok ({changed} {verb}), {failed} failed");
}
