//! What the operations record about each host as they run, kept apart from the steps so
//! that the host context (`deploy::StackHost`) depends on no operation module.

use std::time::Instant;

use serde::Serialize;

use crate::stack::release_scripts::GateContainer;
use crate::stack::scripts::ConnectorContainer;

/// What a rotation did on one host, with times in ms since the new token was in hand.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RotationState {
    /// When the new token was on the host's disk.
    pub persisted_ms: Option<u64>,
    /// When a connector on the new token was ready.
    pub new_ready_ms: Option<u64>,
    /// When the old connector(s) had stopped.
    pub old_stopped_ms: Option<u64>,
    /// The new connector's container.
    pub new_container: Option<String>,
    /// The new connector's id.
    pub new_connector_id: Option<String>,
    /// The old connectors' containers.
    pub old_containers: Vec<String>,
    /// Whether this host was recreated in place (without a second connector).
    pub in_place: bool,
    /// When (ms) the host had no ready connector, in place only: from stop to ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_from_ms: Option<u64>,
    /// Whether this run holds the host's fleet lock.
    #[serde(skip)]
    pub locked: bool,
    /// This host locks first, alone (of two controllers racing, one stops there). Every
    /// host tries the lock in the same round trip as its health check; when another run
    /// holds it somewhere, this host's `lock` step gives back the locks taken early so they
    /// are taken again in order (see `ops::rotate::EarlyLocks`).
    #[serde(skip)]
    pub lock_early: bool,
    /// The lock holder record this run wrote.
    #[serde(skip)]
    pub holder: String,
    /// When the new token was in hand (the clock of the times above).
    #[serde(skip)]
    pub t0: Option<Instant>,
    /// The connector containers listed during preflight (the fleet lock has been held
    /// since), so the window does not pay for listing them again.
    #[serde(skip)]
    pub listed: Option<Vec<ConnectorContainer>>,
    /// The connectors answering on the metrics ports during preflight (id and port): the
    /// new connector is the one answering ready with another id.
    #[serde(skip)]
    pub answering: Option<Vec<crate::ops::health::ConnectorReady>>,
    /// Session channels opened during preflight, so the commands in the window cost one
    /// round trip each.
    #[serde(skip)]
    pub prepared: PreparedChannels,
    /// The `.env` write started during preflight, waiting for the new token on its input,
    /// so that persisting costs one round trip (see [`crate::ssh::PreparedExec::start`]).
    #[serde(skip)]
    pub armed_env: ArmedWrite,
    /// Connections to the new connector's metrics port opened ahead of their requests
    /// (start_connector opens them as soon as the port answers; wait_connector uses them).
    #[serde(skip)]
    pub probes_ahead: ProbesAhead,
}

/// A connection being opened (or open) to a host's loopback port, as a task of its own so
/// it outlives the step that started it.
pub type OpeningStream = tokio::task::JoinHandle<Option<russh::ChannelStream<russh::client::Msg>>>;

/// The new connector's metrics port, once known, and connections to it opened ahead, in
/// the order they were started; shared by the clones of a host's state.
#[derive(Clone, Default)]
pub struct ProbesAhead(std::sync::Arc<std::sync::Mutex<Option<PortAndOpenings>>>);

/// A port and the connections opening (or open) to it, oldest first.
type PortAndOpenings = (u16, std::collections::VecDeque<OpeningStream>);

impl std::fmt::Debug for ProbesAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProbesAhead({:?})", self.port())
    }
}

impl ProbesAhead {
    /// The port, once known.
    pub fn port(&self) -> Option<u16> {
        self.0.lock().ok().and_then(|g| g.as_ref().map(|(p, _)| *p))
    }

    /// Starts watching `port` (the connections opened for another port are dropped).
    pub fn set_port(&self, port: u16) {
        if let Ok(mut g) = self.0.lock() {
            if let Some((_, old)) = g.take() {
                old.iter().for_each(|h| h.abort());
            }
            *g = Some((port, Default::default()));
        }
    }

    /// How many connections are opening or open.
    pub fn len(&self) -> usize {
        self.0
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|(_, q)| q.len()))
            .unwrap_or(0)
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds one, last in line.
    pub fn push(&self, opening: OpeningStream) {
        if let Ok(mut g) = self.0.lock()
            && let Some((_, q)) = g.as_mut()
        {
            q.push_back(opening);
        }
    }

    /// The oldest one.
    pub fn pop(&self) -> Option<OpeningStream> {
        self.0
            .lock()
            .ok()
            .and_then(|mut g| g.as_mut().and_then(|(_, q)| q.pop_front()))
    }

    /// Forgets the port and aborts what is still opening.
    pub fn clear(&self) {
        if let Ok(mut g) = self.0.lock()
            && let Some((_, old)) = g.take()
        {
            old.iter().for_each(|h| h.abort());
        }
    }
}

/// A write started ahead of its contents (see [`crate::remote::atomic_write_framed`]),
/// shared by the clones of a host's state; used once.
#[derive(Clone, Default)]
pub struct ArmedWrite(std::sync::Arc<std::sync::Mutex<Option<crate::ssh::StartedExec>>>);

impl std::fmt::Debug for ArmedWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let armed = self.0.lock().map(|g| g.is_some()).unwrap_or(false);
        write!(f, "ArmedWrite({})", if armed { "armed" } else { "none" })
    }
}

impl ArmedWrite {
    /// Keeps `started` for later.
    pub fn put(&self, started: crate::ssh::StartedExec) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(started);
        }
    }

    /// The started write, if there is one (once).
    pub fn take(&self) -> Option<crate::ssh::StartedExec> {
        self.0.lock().ok().and_then(|mut g| g.take())
    }
}

/// Session channels opened ahead of their commands (see [`crate::ssh::Session::prepare`]),
/// shared by the clones of a host's state; each is used once.
#[derive(Clone, Default)]
pub struct PreparedChannels(std::sync::Arc<std::sync::Mutex<Vec<crate::ssh::PreparedExec>>>);

impl std::fmt::Debug for PreparedChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedChannels({})", self.len())
    }
}

impl PreparedChannels {
    /// Keeps `chans` for later.
    pub fn put(&self, chans: Vec<crate::ssh::PreparedExec>) {
        if let Ok(mut g) = self.0.lock() {
            g.extend(chans);
        }
    }

    /// One channel, if any is left.
    pub fn take(&self) -> Option<crate::ssh::PreparedExec> {
        self.0.lock().ok().and_then(|mut g| g.pop())
    }

    /// How many are left.
    pub fn len(&self) -> usize {
        self.0.lock().map(|g| g.len()).unwrap_or(0)
    }

    /// Whether none is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RotationState {
    pub(crate) fn now_ms(&self) -> Option<u64> {
        self.t0.map(|t| t.elapsed().as_millis() as u64)
    }
}

/// What a release change (deploy, rollback) did on one host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpgradeState {
    /// The release `current` pointed to before this run (None: a first deploy).
    pub from: Option<String>,
    /// The release this run takes the host to.
    pub to: Option<String>,
    /// Moved make-before-break: only the connector's image changes, so a second connector
    /// on the new image starts beside the old one (the host never lacks a ready connector).
    pub surge: bool,
    /// The release's files and images were staged on the host.
    pub staged: bool,
    /// Images pulled while staging.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pulled: Vec<String>,
    /// `current` was switched or containers were changed by this run.
    pub moved: bool,
    /// This run wrote `.env` (a rollback of this run puts the previous one back).
    pub wrote_env: bool,
    /// `deploy --resume`: the interrupted run switched this host but its gate never passed,
    /// so it is gated (and rolled back on failure) before the rollout goes on.
    pub regate: bool,
    /// The gate saw the edge refuse the connector's token (the run's new token is bad).
    pub token_refused: bool,
    /// The host was rolled back (to `from`) after a failure.
    pub rolled_back: bool,
    /// Why the rollback of this host failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_error: Option<String>,
    /// Surge: the connector containers that ran before the new one started.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub old_connectors: Vec<String>,
    /// Surge: the connector container this run started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_connector: Option<String>,
    /// Surge: the old connectors were retired.
    pub retired: bool,
    /// The stack's containers when the gate passed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gate_containers: Vec<GateContainer>,
    /// The failing containers' last log lines (secrets redacted), when a gate failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<(String, Vec<String>)>,
    /// Releases pruned after the rollout.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
    /// The host's releases, when read (rollback, `--check --diff`).
    #[serde(skip)]
    pub releases: Option<crate::stack::release_scripts::ReleasesFacts>,
    /// Milliseconds from the rollout's start when the host stopped having a ready connector
    /// (recreated in place) and when it had one again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_ms: Option<(u64, Option<u64>)>,
}
