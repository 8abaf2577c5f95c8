//! Status, the operation: what each host runs and how it differs from what deploy would
//! write. Read-only: one facts round trip and the readiness probes per host, every host at
//! once; then the fleet's token per tunnel and the operations of this controller that did
//! not finish. The verb (`cli/status.rs`) renders the [`StatusReport`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::OpUi;
use super::deploy::{HostInput, TunnelInput, desired_state, read_facts};
use super::health;
use crate::pki::cert_info;
use crate::ssh::Connector;
use crate::stack::{self, ContainerState};

/// What the controller has in hand.
pub struct StatusInputs {
    /// The selected hosts' tunnels (with the fleet's token when one was given).
    pub tunnels: BTreeMap<String, TunnelInput>,
    /// Every selected host's inputs.
    pub hosts: Vec<HostInput>,
    /// The SSH connector of the run.
    pub connector: Arc<Connector>,
    /// The controller's state dir, as given.
    pub state_dir: String,
}

/// What `status` found.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// Every host, in inventory order.
    pub hosts: Vec<HostStatus>,
    /// Hosts that need nothing.
    pub ok: usize,
    /// Hosts that need attention.
    pub failed: usize,
}

/// What `status` found on one host (serialised as is in `--json`).
#[derive(Debug, Serialize, Default)]
pub struct HostStatus {
    /// The host.
    pub name: String,
    /// Nothing needs attention.
    pub ok: bool,
    /// Why the host could not be read.
    pub error: Option<String>,
    /// Its tunnel.
    pub tunnel: String,
    /// The release `current` points to.
    pub release: Option<String>,
    /// The release a deploy would install now.
    pub desired_release: String,
    /// What differs from the last deploy.
    pub drift: Vec<String>,
    /// The token fingerprint of the host's `.env`.
    pub token_fingerprint: Option<String>,
    /// Whether it is the fleet's token (the one given, else the most common).
    pub token_matches_fleet: Option<bool>,
    /// The token fingerprint the running connector was created with.
    pub connector_token_fingerprint: Option<String>,
    /// The served certificate's serial.
    pub cert_serial: Option<String>,
    /// Its notAfter (RFC 3339).
    pub cert_not_after: Option<String>,
    /// Service -> state and container name.
    pub containers: BTreeMap<String, String>,
    /// Containers not running: state, restart count, last log line (redacted).
    pub down: Vec<String>,
    /// A deploy not done yet: the host runs the last deployed release, the inventory or
    /// templates now render another.
    pub pending: Option<String>,
    /// The fleet lock on the host, when held: holder and age.
    pub lock: Option<String>,
    /// Operations of this controller that did not finish, with the command that finishes them.
    pub unfinished: Vec<String>,
    /// A running connector outside the running proxy's network namespace: the cause, what
    /// tells it, and the repairing command.
    pub connector_netns_lost: Option<String>,
    /// The connectors answering on the metrics ports.
    pub connectors: Vec<health::ConnectorReady>,
    /// A connector is ready.
    pub connector_ready: bool,
}

async fn status_host(c: &Connector, input: &HostInput) -> HostStatus {
    let mut s = HostStatus {
        name: input.host.name.clone(),
        tunnel: input.settings.tunnel_name.clone(),
        desired_release: input.release.id.clone(),
        ..Default::default()
    };
    let session = match c.connect(&input.host.target).await {
        Ok(x) => x,
        Err(e) => {
            s.error = Some(e.to_string());
            return s;
        }
    };
    // The facts command and the readiness probes (direct-tcpip) in the same round trip.
    let (facts, connectors) = tokio::join!(
        read_facts(&session, input),
        health::connectors(&session, input.settings.metrics_ports())
    );
    s.connectors = connectors;
    s.connector_ready = s.connectors.iter().any(|c| c.is_ready());
    let facts = match facts {
        Ok(f) => f,
        Err(e) => {
            s.error = Some(e);
            return s;
        }
    };
    s.release = facts.facts.current_release.clone();
    s.token_fingerprint = facts.env_token_fp.clone();
    s.connector_token_fingerprint = facts.facts.connector_token_fingerprint.clone();
    if let Some(info) = facts.tls_crt.as_deref().and_then(|p| cert_info(p).ok()) {
        s.cert_serial = Some(info.serial);
        s.cert_not_after = Some(info.not_after);
    }
    if let Some(why) = facts.engine_refusal() {
        // No container fact holds: an engine that does not answer is not "nothing runs".
        s.error = Some(format!(
            "{why} ({})",
            crate::stack::scripts::ENGINE_DOWN_HINT
        ));
        session.close().await;
        return s;
    }
    s.connector_netns_lost = facts.facts.connector_netns_lost.as_ref().map(|why| {
        format!(
            "{} ({why}): `tunnelfleet deploy` recreates it",
            crate::stack::scripts::NETNS_LOST_CAUSE
        )
    });
    for (svc, (name, st)) in &facts.containers {
        let diag = facts.diagnostics.get(name);
        let st = match (st, diag) {
            (ContainerState::Running, _) => "running".to_string(),
            // Docker's own word: restarting, exited, created, dead.
            (_, Some(d)) => d.state.clone(),
            (ContainerState::Exited, None) => "exited".to_string(),
            (ContainerState::Missing, None) => "missing".to_string(),
        };
        s.containers.insert(svc.clone(), format!("{st} ({name})"));
        if let Some(d) = diag {
            let restarts = d
                .restarts
                .map(|r| format!("{r} restarts"))
                .unwrap_or_else(|| "restarts unknown".into());
            let secrets: Vec<&crate::secrets::Secret> = input.token.iter().collect();
            let log =
                crate::secrets::redact_token_shaped(&crate::secrets::redact(&d.last_log, &secrets));
            s.down
                .push(format!("{svc} {}, {restarts}, last log: {log}", d.state));
        }
    }
    if let Some(h) = &facts.lock_holder {
        s.lock = Some(super::unlock::Holder::parse(h).describe(chrono::Utc::now()));
    }
    // Drift is what differs from the deploy; a connector that lost the proxy's namespace is a
    // run-time fault, named above with its cause.
    let mut facts = facts;
    facts.facts.connector_netns_lost = None;
    match desired_state(input, &facts) {
        Ok(d) => {
            let plan = stack::compute_plan(&d, &facts.facts);
            let current = facts.facts.current_release.as_deref();
            if plan.switch_current && current.is_some() && current == facts.last_deployed.as_deref()
            {
                // The host runs what the last deploy installed; the inventory or templates
                // changed since. That is a deploy to do, not drift: drift is what differs
                // beyond it (files as if the new release were installed).
                s.pending = Some(format!(
                    "release {} -> {} not deployed yet (the inventory or templates changed since \
                     the last deploy): run `tunnelfleet deploy`",
                    current.unwrap_or("-"),
                    d.release_id
                ));
                let mut as_if = facts.facts.clone();
                as_if.current_release = Some(d.release_id.clone());
                as_if.files = d
                    .files
                    .iter()
                    .map(|(p, h)| (p.clone(), Some(h.clone())))
                    .collect();
                let rest = stack::compute_plan(&d, &as_if);
                if !rest.is_empty() {
                    s.drift = rest.describe();
                }
            } else if !plan.is_empty() {
                s.drift = plan.describe();
            }
        }
        Err(e) => s.drift.push(e),
    }
    session.close().await;
    s
}

/// Runs `status` on every host at once.
pub async fn run(inputs: StatusInputs, ui: &dyn OpUi) -> StatusReport {
    let tunnels = &inputs.tunnels;
    let connector = &inputs.connector;
    let names: Vec<String> = inputs.hosts.iter().map(|i| i.host.name.clone()).collect();
    let tunnel_names: Vec<String> = tunnels.keys().cloned().collect();
    let progress = ui.progress("status", &tunnel_names, &names);
    let p = progress.as_ref();
    let futs = inputs.hosts.iter().map(|input| {
        let c = connector.clone();
        async move {
            p.working(&input.host.name, "reading facts and probing the connector");
            let r = status_host(&c, input).await;
            p.done(&r.name, r.error.is_none(), "");
            r
        }
    });
    let mut results = futures::future::join_all(futs).await;
    progress.finish();

    // The fleet's token per tunnel: the one given, else the one most hosts have.
    for t in tunnels.values() {
        let fleet_fp = t.token.as_ref().map(|s| s.fingerprint()).or_else(|| {
            let mut count: BTreeMap<&str, usize> = BTreeMap::new();
            for r in results.iter().filter(|r| r.tunnel == t.name) {
                if let Some(fp) = &r.token_fingerprint {
                    *count.entry(fp.as_str()).or_default() += 1;
                }
            }
            count
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(fp, _)| fp.to_string())
        });
        for r in results.iter_mut().filter(|r| r.tunnel == t.name) {
            r.token_matches_fleet = match (&fleet_fp, &r.token_fingerprint) {
                (Some(f), Some(h)) => Some(f == h),
                (Some(_), None) => Some(false),
                _ => None,
            };
        }
    }
    // Operations of this controller that did not finish: a rotation whose journal has no
    // clean end, per host it did not complete.
    let state_dir = crate::ssh::config::expand_tilde(&inputs.state_dir);
    for t in tunnels.values() {
        let (journal, _) = crate::ops::rotate::journal_paths(&state_dir, &t.name);
        let Ok(log) = crate::rollout::Journal::load(&journal) else {
            continue;
        };
        let Some(op) = log.pending_op() else {
            continue;
        };
        for r in results.iter_mut().filter(|r| r.tunnel == t.name) {
            if !log.is_done(&op.op_id, &r.name, "retire", "stop_old") {
                r.unfinished.push(format!(
                    "rotation unfinished ({}): run `tunnelfleet rotate-token --resume`",
                    op.op_id
                ));
            }
        }
    }
    for r in &mut results {
        r.ok = r.error.is_none()
            && r.unfinished.is_empty()
            && r.pending.is_none()
            && r.drift.is_empty()
            && r.down.is_empty()
            && r.connector_netns_lost.is_none()
            && r.lock.is_none()
            && r.connector_ready
            && r.token_matches_fleet != Some(false);
    }
    let ok = results.iter().filter(|r| r.ok).count();
    let failed = results.len() - ok;
    StatusReport {
        hosts: results,
        ok,
        failed,
    }
}
