//! The setup component on a host: a new tunnel token from it (rotation), and its
//! `renew-cert` (renewal). The OIDC identity token it authenticates with travels on stdin
//! only; the tunnel token comes back on stdout and is never logged.

use std::sync::Arc;
use std::time::Duration;

use super::deploy::{StackHost, holder_json, now_rfc3339, operator};
use crate::pki::cert_info;
use crate::playbook::{Params, StepRegistry};
use crate::remote::{self, AuditEntry, AuditOutcome, LOCK_HELD_EXIT};
use crate::rollout::{HostCtx, Step, StepCx, StepFailure, StepOutcome};
use crate::secrets::{Secret, redact, validate_tunnel_token};
use crate::stack::scripts;

/// A token the setup component produced, and the `--token-version` it ran with.
pub struct SetupToken {
    /// The new tunnel token.
    pub token: Secret,
    /// The version recorded on the host (None: the host never recorded one).
    pub version: Option<u32>,
}

fn compose(h: &StackHost) -> Result<crate::stack::ComposeCli, String> {
    h.facts
        .as_ref()
        .and_then(|f| f.compose)
        .ok_or_else(|| format!("{}: no Docker Compose on the host", h.name()))
}

fn setup_floor(h: &StackHost) -> Result<u32, String> {
    h.input
        .settings
        .setup
        .as_ref()
        .map(|s| s.token_version)
        .ok_or_else(|| {
            format!(
                "{}: the setup component is not configured for tunnel '{}' (set setup_tunnel_id, \
                 setup_federation_rule_id and setup_organization_id, then deploy)",
                h.name(),
                h.input.settings.tunnel_name
            )
        })
}

/// Checks and wraps what a setup script printed; every message is about `host` and is
/// redacted of `identity` as a last resort.
fn finish(
    host: &str,
    out: crate::ssh::ExecOutput,
    identity: Option<&Secret>,
) -> Result<SetupToken, String> {
    let clean = |t: String| match identity {
        Some(s) => redact(&t, &[s]),
        None => t,
    };
    if !out.success() {
        let code = out.status.map(|s| s as i32);
        let err = clean(out.stderr_text().trim().to_string());
        let hint = match code {
            Some(scripts::SETUP_FAILED_EXIT) if err.contains("no such service") => {
                "the host's compose file has no setup service: run tunnelfleet deploy after setting \
                 the setup_* vars"
            }
            Some(scripts::SETUP_FAILED_EXIT) => {
                "check the identity token (a fresh OIDC token: they expire), the setup_* ids, and \
                 the host's outbound access to the API"
            }
            _ => "see the message above",
        };
        return Err(format!("{host}: setup component: {err} ({hint})"));
    }
    let parsed = scripts::parse_setup_token(&out.stdout_text())
        .ok_or_else(|| format!("{host}: setup component: no token in its output"))?;
    validate_tunnel_token(&parsed.token).map_err(|e| {
        format!("{host}: the token the setup component wrote in data/tunnel-token: {e}")
    })?;
    Ok(SetupToken {
        token: Secret::new(parsed.token),
        version: parsed.version,
    })
}

/// Runs the setup component on `h` with `--token-version` bumped past the inventory's
/// `setup_token_version`, `known` (the last version this controller used), and the host's
/// own record, and reads back the token it wrote.
pub async fn rotate_token(
    h: &StackHost,
    identity: &Secret,
    known: Option<u32>,
) -> Result<SetupToken, String> {
    let floor = setup_floor(h)?.max(known.unwrap_or(0));
    let session = h.session().map_err(|e| e.message)?;
    let script = scripts::setup_token_script(&h.input.layout, compose(h)?, floor);
    let stdin = zeroize::Zeroizing::new(format!("{}\n", identity.expose()));
    let out = session
        .exec(&script, stdin.as_bytes())
        .await
        .map_err(|e| format!("{}: {}", h.name(), e.message))?;
    finish(h.name(), out, Some(identity))
}

/// Reads back the token the setup component wrote on `h` earlier (a resumed rotation), without
/// running it again.
pub async fn read_token(h: &StackHost) -> Result<SetupToken, String> {
    setup_floor(h)?;
    let session = h.session().map_err(|e| e.message)?;
    let out = session
        .exec(&scripts::setup_read_token_script(&h.input.layout), b"")
        .await
        .map_err(|e| format!("{}: {}", h.name(), e.message))?;
    finish(h.name(), out, None)
}

/// `setup_renew_cert {renew_before}`: the setup component's `renew-cert` on the host, under
/// the fleet lock, then an audit line with the served certificate's serial. Nothing is
/// restarted (the proxy polls its certificate file).
pub struct SetupRenewCertStep {
    /// Passed as `--renew-before`: the component does nothing while more than this is left.
    pub renew_before: Option<Duration>,
}

#[async_trait::async_trait]
impl Step<StackHost> for SetupRenewCertStep {
    fn name(&self) -> &str {
        "setup_renew_cert"
    }
    async fn run(&self, h: &mut StackHost, _cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        if !h
            .input
            .settings
            .setup
            .as_ref()
            .is_some_and(|s| s.certificates)
        {
            return Err(StepFailure::new(
                "the certificates of this tunnel are not the setup component's",
            )
            .with_hint("set setup_certificates: true, or renew with the controller's CA"));
        }
        let session = h.session()?;
        let compose = compose(h).map_err(StepFailure::new)?;
        let before = h
            .facts
            .as_ref()
            .and_then(|f| f.tls_crt.as_deref())
            .and_then(|p| cert_info(p).ok())
            .map(|i| i.serial);
        let holder = holder_json(&h.operation);
        let script =
            scripts::setup_renew_cert_script(&h.input.layout, compose, self.renew_before, &holder)
                .map_err(|e| StepFailure::new(e.to_string()))?;
        let out = session
            .exec(&script, b"")
            .await
            .map_err(|e| StepFailure::new(e.message))?;
        match out.status.map(|s| s as i32) {
            Some(0) => {}
            Some(LOCK_HELD_EXIT) => {
                return Err(StepFailure::new(format!(
                    "the fleet lock is held by {}",
                    out.stdout_text().trim()
                ))
                .with_hint(format!(
                    "wait for that operation, or if it is dead: tunnelfleet unlock -i INVENTORY --limit {}",
                    h.name()
                )));
            }
            _ => {
                return Err(StepFailure::new(format!(
                    "setup renew-cert: {}",
                    out.stderr_text().trim()
                )));
            }
        }
        let pem = scripts::parse_cert_block(&out.stdout_text())
            .ok_or_else(|| StepFailure::new("setup renew-cert left no data/tls.crt on the host"))?;
        let info = cert_info(&pem).map_err(|e| StepFailure::new(format!("data/tls.crt: {e}")))?;
        let renewed = before.as_deref() != Some(info.serial.as_str());
        h.input.cert_serial = Some(info.serial.clone());
        let entry = AuditEntry {
            time: now_rfc3339(),
            operator: operator(),
            operation: h.operation.clone(),
            outcome: AuditOutcome::Succeeded,
            release: None,
            from_release: None,
            token_fingerprint: None,
            cert_serial: Some(info.serial.clone()),
        };
        let audit = remote::audit_line(&scripts::audit_log(&h.input.layout), &entry)
            .map_err(|e| StepFailure::new(e.to_string()))?;
        let _ = session.exec(&audit, b"").await;
        let what = format!("serial {} valid until {}", info.serial, info.not_after);
        Ok(if renewed {
            StepOutcome::changed(format!("renewed: {what}; nothing restarted"))
        } else {
            StepOutcome::unchanged(format!("nothing to do: {what}"))
        })
    }
}

/// Registers `setup_renew_cert` (`renew_before` overrides the playbook's value when given).
pub fn register_setup_steps(r: &mut StepRegistry<StackHost>, renew_before: Option<Duration>) {
    r.register("setup_renew_cert", move |p| {
        let params = Params::new(p, &["renew_before"])?;
        let d = match renew_before {
            Some(d) => Some(d),
            None => params.duration("renew_before")?,
        };
        Ok(Arc::new(SetupRenewCertStep { renew_before: d }) as Arc<dyn Step<StackHost>>)
    });
}
