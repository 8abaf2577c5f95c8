//! `tunnelfleet renew-cert`: a new server certificate from the controller's CA when the
//! current one is close to expiry, written to every host without restarting anything.

use std::path::Path;
use std::time::Duration;

use clap::Args;

use super::common::{ConnArgs, StateArgs, parse_duration};
use super::deploy::load_inputs;
use super::render::Table;
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK, style};
use crate::ops::deploy::{register_deploy_steps, tunnel_pki_dir};
use crate::pki::{Ca, cert_info};
use crate::playbook::{Playbook, StepRegistry};
use crate::rollout::{Engine, HostCtx, HostStatus};
use crate::stack::{self, StackSettings};

/// The built-in renewal playbook (playbooks/renew-cert.yaml, compiled in).
pub const RENEW_PLAYBOOK: &str = include_str!("../../playbooks/renew-cert.yaml");

/// The renewal playbook for certificates from the setup component
/// (playbooks/renew-cert-setup.yaml, compiled in).
pub const RENEW_SETUP_PLAYBOOK: &str = include_str!("../../playbooks/renew-cert-setup.yaml");

/// Flags of `renew-cert`.
#[derive(Args, Debug)]
pub struct RenewArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Renew only when the current certificate has less than this left.
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    renew_before: Duration,
    /// Make a new server key too (default: keep the key, renew the certificate).
    #[arg(long)]
    rekey: bool,
    #[command(flatten)]
    state: StateArgs,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `renew-cert`.
pub async fn run(args: RenewArgs) -> Result<i32, CliError> {
    let (_inv, hosts) = args.conn.select().await?;
    let state = crate::ssh::config::expand_tilde(&args.state.state_dir);
    // Which tunnels, and renew on the controller first (before any host is touched).
    let mut settings = Vec::new();
    for h in &hosts {
        settings.push(
            StackSettings::from_vars(&h.name, &h.vars)
                .map_err(|e| CliError::input(e.to_string()))?,
        );
    }
    let groups = stack::group_by_tunnel(&settings).map_err(|e| CliError::input(e.to_string()))?;
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
    if args.rekey && !setup_tunnels.is_empty() {
        return Err(CliError::input(format!(
            "--rekey: the certificates of {} come from the setup component, whose renew-cert keeps \
             its key; leave out --rekey (or --limit to the other tunnels)",
            setup_tunnels.join(", ")
        )));
    }
    let mut renewed = Vec::new();
    let mut tunnels_json = Vec::new();
    for g in groups.iter().filter(|g| !setup_tunnels.contains(&g.name)) {
        let dir = tunnel_pki_dir(&state, &g.name).map_err(CliError::input)?;
        let ca =
            Ca::load(&dir).map_err(|e| CliError::input(format!("tunnel '{}': {e}", g.name)))?;
        let stored = ca
            .stored_server()
            .map_err(|e| CliError::input(format!("tunnel '{}': {e}", g.name)))?;
        let info = stored.as_ref().and_then(|c| cert_info(&c.cert_pem).ok());
        let left = info
            .as_ref()
            .map(|i| i.remaining(chrono::Utc::now()))
            .and_then(|d| d.to_std().ok())
            .unwrap_or(Duration::ZERO);
        let due = info.is_none() || left < args.renew_before;
        if due {
            let key = if args.rekey {
                None
            } else {
                stored.as_ref().map(|c| &c.key_pem)
            };
            let cert = ca
                .issue_server_with_key(&g.domain, crate::pki::DEFAULT_SERVER_DAYS, key)
                .map_err(|e| CliError::input(format!("tunnel '{}': {e}", g.name)))?;
            ca.store_server(&cert)
                .map_err(|e| CliError::input(format!("tunnel '{}': {e}", g.name)))?;
            let new = cert_info(&cert.cert_pem).map_err(|e| CliError::input(e.to_string()))?;
            eprintln!(
                "tunnel '{}': renewed: serial {} valid until {}",
                g.name, new.serial, new.not_after
            );
            tunnels_json.push(serde_json::json!({"tunnel": g.name, "renewed": true,
                "serial": new.serial, "not_after": new.not_after}));
            renewed.push(g.name.clone());
        } else if let Some(i) = &info {
            eprintln!(
                "tunnel '{}': nothing to do: certificate {} valid until {} ({} days left, more than --renew-before)",
                g.name,
                i.serial,
                i.not_after,
                left.as_secs() / 86400
            );
            tunnels_json.push(serde_json::json!({"tunnel": g.name, "renewed": false,
                "serial": i.serial, "not_after": i.not_after}));
        }
    }
    for t in &setup_tunnels {
        tunnels_json.push(serde_json::json!({"tunnel": t, "setup_component": true}));
    }
    let (hosts, setup_hosts): (Vec<_>, Vec<_>) = hosts
        .into_iter()
        .zip(settings.iter())
        .filter(|(_, s)| renewed.contains(&s.tunnel_name) || setup_tunnels.contains(&s.tunnel_name))
        .partition(|(_, s)| !setup_tunnels.contains(&s.tunnel_name));
    let hosts: Vec<_> = hosts.into_iter().map(|(h, _)| h).collect();
    let setup_hosts: Vec<_> = setup_hosts.into_iter().map(|(h, _)| h).collect();
    if hosts.is_empty() && setup_hosts.is_empty() {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"tunnels": tunnels_json, "hosts": []})
            );
        }
        return Ok(EXIT_OK);
    }
    let mut registry = StepRegistry::new();
    register_deploy_steps(&mut registry, Default::default());
    crate::ops::setup::register_setup_steps(&mut registry, Some(args.renew_before));
    let mut contexts = Vec::new();
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
            .map_err(|e| CliError::input(format!("built-in playbook: {e}")))?;
        let (_, inputs) = load_inputs(selected, None, &args.state.state_dir, false).await?;
        let (progress, mut ctxs) =
            super::deploy::contexts(&args.conn, inputs, "renew-cert", false)?;
        for c in &mut ctxs {
            c.certs_only = true;
        }
        let report = Engine::new(&progress)
            .run(playbook.into_phases(), ctxs)
            .await;
        progress.finish();
        records.extend(report.hosts);
        contexts.extend(report.contexts);
    }
    let mut rows = Vec::new();
    let mut json_hosts = Vec::new();
    for h in &contexts {
        let rec = records.iter().find(|r| r.host == h.name());
        let ok = rec.is_some_and(|r| r.status == HostStatus::Ok);
        let msg = rec.and_then(|r| r.message.clone()).unwrap_or_default();
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
        rows.push(vec![
            h.name().to_string(),
            if ok { "ok".into() } else { "FAILED".into() },
            h.input.cert_serial.clone().unwrap_or_default(),
            if ok && setup_tunnels.contains(&h.input.settings.tunnel_name) {
                if rec.is_some_and(|r| r.changed) {
                    "renewed by the setup component; nothing restarted".into()
                } else {
                    "setup component: nothing to do (more than --renew-before left)".into()
                }
            } else if ok {
                if wrote.is_empty() {
                    "already current".into()
                } else {
                    format!("wrote {wrote}; nothing restarted")
                }
            } else {
                msg.clone()
            },
        ]);
        json_hosts.push(serde_json::json!({"name": h.name(), "ok": ok, "error": if ok { None } else { Some(msg) },
            "serial": h.input.cert_serial, "wrote": wrote,
            "renewed": ok && rec.is_some_and(|r| r.changed)}));
    }
    let failed = rows.iter().filter(|r| r[1] != "ok").count();
    crate::ops::audit::append(
        &state,
        &crate::ops::audit::ControllerAudit {
            time: crate::ops::deploy::now_rfc3339(),
            operator: crate::ops::deploy::operator(),
            operation: "renew-cert",
            tunnels: renewed.iter().chain(&setup_tunnels).cloned().collect(),
            ok: rows
                .iter()
                .filter(|r| r[1] == "ok")
                .map(|r| r[0].clone())
                .collect(),
            failed: rows
                .iter()
                .filter(|r| r[1] != "ok")
                .map(|r| r[0].clone())
                .collect(),
            token_fingerprint: None,
            cert_serial: contexts.first().and_then(|h| h.input.cert_serial.clone()),
        },
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"tunnels": tunnels_json, "hosts": json_hosts})
            )
            .unwrap_or_default()
        );
    } else {
        let mut t = Table::new(&["HOST", "STATUS", "SERIAL", "DETAIL"])
            .painted("STATUS")
            .shrinkable("SERIAL", 12)
            .grouped();
        for r in rows {
            t.row(r);
        }
        print!("{}", t.render(style::width()));
    }
    Ok(if failed == 0 {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}
