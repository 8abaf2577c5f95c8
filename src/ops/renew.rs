//! Certificate renewal, the operation: a new server certificate from the controller's CA
//! when the current one is close to expiry (renewed on the controller before any host is
//! touched), written to every host of the renewed tunnels without restarting anything; for
//! tunnels whose certificates come from the setup component, its `renew-cert` on each host.
//! The verb (`cli/renew.rs`) parses flags and renders the [`RenewReport`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::OpError;
use super::OpUi;
use super::deploy::{StackHost, register_deploy_steps, tunnel_pki_dir};
use super::fleet::FleetHost;
use crate::pki::{Ca, cert_info};
use crate::playbook::{Playbook, StepRegistry};
use crate::rollout::{Engine, HostCtx, HostStatus};
use crate::ssh::Connector;
use crate::stack::{self, StackSettings};

/// The built-in renewal playbook (playbooks/renew-cert.yaml, compiled in).
pub const RENEW_PLAYBOOK: &str = include_str!("../../playbooks/renew-cert.yaml");

/// The renewal playbook for certificates from the setup component
/// (playbooks/renew-cert-setup.yaml, compiled in).
pub const RENEW_SETUP_PLAYBOOK: &str = include_str!("../../playbooks/renew-cert-setup.yaml");

/// What the controller has in hand.
pub struct RenewInputs {
    /// The selected hosts.
    pub hosts: Vec<FleetHost>,
    /// The controller's state dir, as given (`~` expanded here).
    pub state_dir: String,
    /// The SSH connector of the run.
    pub connector: Arc<Connector>,
}

/// How to renew.
#[derive(Debug, Clone, Copy)]
pub struct RenewOptions {
    /// Renew only when the current certificate has less than this left.
    pub renew_before: Duration,
    /// Make a new server key too.
    pub rekey: bool,
}

/// What became of one tunnel's certificate on the controller.
#[derive(Debug, Clone, Serialize)]
pub struct TunnelRenewal {
    /// The tunnel.
    pub tunnel: String,
    /// A new certificate was issued (None: the setup component renews on the hosts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewed: Option<bool>,
    /// The serial of the certificate the tunnel has now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Its notAfter (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// The certificates come from the setup component.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub setup_component: bool,
}

/// What became of one host.
#[derive(Debug, Clone)]
pub struct RenewHost {
    /// The host.
    pub name: String,
    /// The host's steps passed.
    pub ok: bool,
    /// Why not (the engine's message).
    pub message: String,
    /// The serial of the tunnel's certificate.
    pub serial: Option<String>,
    /// The certificate files written (comma-separated; empty when already current).
    pub wrote: String,
    /// A step changed something.
    pub changed: bool,
    /// The host's tunnel renews through the setup component.
    pub setup_component: bool,
}

/// What a renewal did.
#[derive(Debug, Clone, Default)]
pub struct RenewReport {
    /// Per tunnel, what the controller did.
    pub tunnels: Vec<TunnelRenewal>,
    /// Per host, in run order.
    pub hosts: Vec<RenewHost>,
}

impl RenewReport {
    /// How many hosts failed.
    pub fn failed(&self) -> usize {
        self.hosts.iter().filter(|h| !h.ok).count()
    }
}

/// Runs a renewal: the controller's certificates first, then the hosts of the tunnels that
/// were renewed (and of the setup component's tunnels), then the controller's audit line.
pub async fn run(
    inputs: RenewInputs,
    opts: RenewOptions,
    ui: &dyn OpUi,
) -> Result<RenewReport, OpError> {
    let RenewInputs {
        hosts,
        state_dir,
        connector,
    } = inputs;
    let state = crate::ssh::config::expand_tilde(&state_dir);
    // Which tunnels, and renew on the controller first (before any host is touched).
    let mut settings = Vec::new();
    for h in &hosts {
        settings.push(
            StackSettings::from_vars(&h.name, &h.vars)
                .map_err(|e| OpError::input(e.to_string()))?,
        );
    }
    let groups = stack::group_by_tunnel(&settings).map_err(|e| OpError::input(e.to_string()))?;
    // Tunnels whose certificates come from the setup component renew on each host.
    let setup_tunnels: Vec<String> = groups
        .iter()
        .filter(|g| {
            g.members
                .first()
                .and_then(|m| m.setup.as_ref())
                .is_some_and(|s| s.certificates)
        })
        .map(|g| g.name.clone())
        .collect();
    if opts.rekey && !setup_tunnels.is_empty() {
        return Err(OpError::input(format!(
            "--rekey: the certificates of {} come from the setup component, whose renew-cert keeps \
             its key; leave out --rekey (or --limit to the other tunnels)",
            setup_tunnels.join(", ")
        )));
    }
    let mut renewed = Vec::new();
    let mut report = RenewReport::default();
    for g in groups.iter().filter(|g| !setup_tunnels.contains(&g.name)) {
        let dir = tunnel_pki_dir(&state, &g.name).map_err(OpError::input)?;
        let ca = Ca::load(&dir).map_err(|e| OpError::input(format!("tunnel '{}': {e}", g.name)))?;
        let stored = ca
            .stored_server()
            .map_err(|e| OpError::input(format!("tunnel '{}': {e}", g.name)))?;
        let info = stored.as_ref().and_then(|c| cert_info(&c.cert_pem).ok());
        let left = info
            .as_ref()
            .map(|i| i.remaining(chrono::Utc::now()))
            .and_then(|d| d.to_std().ok())
            .unwrap_or(Duration::ZERO);
        let due = info.is_none() || left < opts.renew_before;
        if due {
            let key = if opts.rekey {
                None
            } else {
                stored.as_ref().map(|c| &c.key_pem)
            };
            let cert = ca
                .issue_server_with_key(&g.domain, crate::pki::DEFAULT_SERVER_DAYS, key)
                .map_err(|e| OpError::input(format!("tunnel '{}': {e}", g.name)))?;
            ca.store_server(&cert)
                .map_err(|e| OpError::input(format!("tunnel '{}': {e}", g.name)))?;
            let new = cert_info(&cert.cert_pem).map_err(|e| OpError::input(e.to_string()))?;
            ui.notice(&format!(
                "tunnel '{}': renewed: serial {} valid until {}",
                g.name, new.serial, new.not_after
            ));
            report.tunnels.push(TunnelRenewal {
                tunnel: g.name.clone(),
                renewed: Some(true),
                serial: Some(new.serial),
                not_after: Some(new.not_after),
                setup_component: false,
            });
            renewed.push(g.name.clone());
        } else if let Some(i) = &info {
            ui.notice(&format!(
                "tunnel '{}': nothing to do: certificate {} valid until {} ({} days left, more than --renew-before)",
                g.name,
                i.serial,
                i.not_after,
                left.as_secs() / 86400
            ));
            report.tunnels.push(TunnelRenewal {
                tunnel: g.name.clone(),
                renewed: Some(false),
                serial: Some(i.serial.clone()),
                not_after: Some(i.not_after.clone()),
                setup_component: false,
            });
        }
    }
    for t in &setup_tunnels {
        report.tunnels.push(TunnelRenewal {
            tunnel: t.clone(),
            renewed: None,
            serial: None,
            not_after: None,
            setup_component: true,
        });
    }
    let (hosts, setup_hosts): (Vec<_>, Vec<_>) = hosts
        .into_iter()
        .zip(settings.iter())
        .filter(|(_, s)| renewed.contains(&s.tunnel_name) || setup_tunnels.contains(&s.tunnel_name))
        .partition(|(_, s)| !setup_tunnels.contains(&s.tunnel_name));
    let hosts: Vec<_> = hosts.into_iter().map(|(h, _)| h).collect();
    let setup_hosts: Vec<_> = setup_hosts.into_iter().map(|(h, _)| h).collect();
    if hosts.is_empty() && setup_hosts.is_empty() {
        return Ok(report);
    }
    let mut registry = StepRegistry::new();
    register_deploy_steps(&mut registry, Default::default());
    super::setup::register_setup_steps(&mut registry, Some(opts.renew_before));
    let mut contexts: Vec<StackHost> = Vec::new();
    let mut records = Vec::new();
    for (selected, text, path) in [
        (hosts, RENEW_PLAYBOOK, "playbooks/renew-cert.yaml"),
        (
            setup_hosts,
            RENEW_SETUP_PLAYBOOK,
            "playbooks/renew-cert-setup.yaml",
        ),
    ] {
        if selected.is_empty() {
            continue;
        }
        let playbook = Playbook::from_str(text, Path::new(path), &registry)
            .map_err(|e| OpError::input(format!("built-in playbook: {e}")))?;
        let (_, inputs) = super::deploy::load_inputs(selected, None, &state_dir, false)
            .await
            .map_err(OpError::input)?;
        let (tunnels, names) = super::tunnels_and_hosts(&inputs);
        let progress = ui.progress("renew-cert", &tunnels, &names);
        let mut ctxs: Vec<StackHost> = inputs
            .into_iter()
            .map(|i| StackHost::new(i, connector.clone(), "renew-cert", false))
            .collect();
        for c in &mut ctxs {
            c.certs_only = true;
        }
        let run = Engine::new(progress.as_ref())
            .run(playbook.into_phases(), ctxs)
            .await;
        progress.finish();
        records.extend(run.hosts);
        contexts.extend(run.contexts);
    }
    for h in &contexts {
        let rec = records.iter().find(|r| r.host == h.name());
        let ok = rec.is_some_and(|r| r.status == HostStatus::Ok);
        let wrote = h
            .plan
            .as_ref()
            .map(|p| {
                p.write_certs
                    .iter()
                    .map(|c| c.file_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        report.hosts.push(RenewHost {
            name: h.name().to_string(),
            ok,
            message: rec.and_then(|r| r.message.clone()).unwrap_or_default(),
            serial: h.input.cert_serial.clone(),
            wrote,
            changed: rec.is_some_and(|r| r.changed),
            setup_component: setup_tunnels.contains(&h.input.settings.tunnel_name),
        });
    }
    crate::ops::audit::append(
        &state,
        &crate::ops::audit::ControllerAudit {
            cert_serial: contexts.first().and_then(|h| h.input.cert_serial.clone()),
            ..crate::ops::audit::ControllerAudit::ended(
                "renew-cert",
                renewed.iter().chain(&setup_tunnels).cloned().collect(),
                report.hosts.iter().map(|h| (h.name.as_str(), h.ok)),
            )
        },
    );
    Ok(report)
}
