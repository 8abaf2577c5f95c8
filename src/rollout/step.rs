//! What the engine runs: host contexts, steps, their outcomes, and the step's view of the run.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A host as the engine sees it: the caller's per-host state (connection, facts, what steps
/// recorded), moved into the host's task for a batch and handed back in the report.
pub trait HostCtx: Send + 'static {
    /// The host's name, as in the inventory; it keys reports and the journal.
    fn name(&self) -> &str;
}

/// One typed step of a phase, run on one host at a time (possibly on many hosts at once).
#[async_trait::async_trait]
pub trait Step<C: HostCtx>: Send + Sync {
    /// The step's name (e.g. `write_env`), as in playbooks, reports and the journal.
    fn name(&self) -> &str;

    /// Runs the step on `host`. `Ok` says whether anything changed; `Err` fails the host for
    /// the rest of the rollout. Neither may carry a secret: details and messages go to
    /// reports, logs and (details only) the journal.
    async fn run(&self, host: &mut C, cx: &StepCx) -> Result<StepOutcome, StepFailure>;
}

/// A step that succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepOutcome {
    /// Whether the step changed anything on the host.
    pub changed: bool,
    /// A short, secret-free account (e.g. "wrote .env (fp 3f2a9c1b0d4e)"); journaled.
    pub detail: String,
}

impl StepOutcome {
    /// The step changed something.
    pub fn changed(detail: impl Into<String>) -> Self {
        StepOutcome {
            changed: true,
            detail: detail.into(),
        }
    }

    /// The step found nothing to do.
    pub fn unchanged(detail: impl Into<String>) -> Self {
        StepOutcome {
            changed: false,
            detail: detail.into(),
        }
    }
}

/// A step that failed: what happened, what the operator can do, and whether trying again
/// (e.g. `--resume`) may help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepFailure {
    /// What went wrong, secret-free (e.g. "write .env: No space left on device").
    pub message: String,
    /// What the operator can do about it (e.g. "free space and run with --resume").
    pub hint: Option<String>,
    /// Whether the same step may succeed if run again unchanged (a timeout, an unreachable
    /// host), as opposed to a problem that needs fixing first.
    pub retryable: bool,
}

impl StepFailure {
    /// A failure with this message, no hint, not retryable.
    pub fn new(message: impl Into<String>) -> Self {
        StepFailure {
            message: message.into(),
            hint: None,
            retryable: false,
        }
    }

    /// Adds what the operator can do.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Marks the failure as worth retrying.
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }
}

impl fmt::Display for StepFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

/// Asks a running rollout to stop: no new batch or step starts; running steps finish.
/// Cheap to clone; every clone controls the same rollout.
#[derive(Clone, Debug)]
pub struct StopHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for StopHandle {
    fn default() -> Self {
        StopHandle::new()
    }
}

impl StopHandle {
    /// A handle on which no stop has been requested yet.
    pub fn new() -> Self {
        StopHandle {
            tx: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Requests the stop (idempotent).
    pub fn request(&self) {
        self.tx.send_replace(true);
    }

    /// Whether a stop has been requested.
    pub fn is_requested(&self) -> bool {
        *self.tx.borrow()
    }

    /// Completes when a stop is requested (at once if it already was). A step that waits for
    /// something long may `select!` on this to give up early.
    pub async fn requested(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail while we wait.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// What a step knows about the run it is part of.
#[derive(Clone, Debug)]
pub struct StepCx {
    op_id: Arc<str>,
    phase: Arc<str>,
    batch: usize,
    started: Instant,
    stop: StopHandle,
}

impl StepCx {
    /// A context for running a step outside the engine (tests, one-off calls): batch 0, the
    /// clock starting now, a fresh stop handle.
    pub fn new(op_id: impl Into<String>, phase: impl Into<String>, batch: usize) -> Self {
        StepCx {
            op_id: Arc::from(op_id.into()),
            phase: Arc::from(phase.into()),
            batch,
            started: Instant::now(),
            stop: StopHandle::new(),
        }
    }

    pub(crate) fn for_engine(
        op_id: Arc<str>,
        phase: Arc<str>,
        batch: usize,
        started: Instant,
        stop: StopHandle,
    ) -> Self {
        StepCx {
            op_id,
            phase,
            batch,
            started,
            stop,
        }
    }

    /// The operation id (also the journal's key for this run).
    pub fn op_id(&self) -> &str {
        &self.op_id
    }

    /// The name of the phase being run.
    pub fn phase(&self) -> &str {
        &self.phase
    }

    /// The index of the batch this host is in (0 is the canary batch of a canary phase).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Milliseconds since the rollout started (the clock of the report's timeline).
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant `limit` from now, for waits that poll until a deadline.
    pub fn deadline(&self, limit: Duration) -> tokio::time::Instant {
        tokio::time::Instant::now() + limit
    }

    /// Runs `fut` with a deadline: past `limit`, the step fails (retryable) with
    /// "`what`: no result within `limit`".
    pub async fn within<T, F>(&self, what: &str, limit: Duration, fut: F) -> Result<T, StepFailure>
    where
        F: Future<Output = T>,
    {
        tokio::time::timeout(limit, fut).await.map_err(|_| {
            StepFailure::new(format!("{what}: no result within {}", fmt_duration(limit)))
                .retryable()
        })
    }

    /// Whether a stop was requested (a long step may give up early and fail).
    pub fn stop_requested(&self) -> bool {
        self.stop.is_requested()
    }

    /// The rollout's stop handle (to `select!` on [`StopHandle::requested`]).
    pub fn stop(&self) -> &StopHandle {
        &self.stop
    }
}

/// `1m30s`, `500ms`, `60s`: a duration as playbooks write it.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_written() {
        assert_eq!(fmt_duration(Duration::from_secs(60)), "1m");
        assert_eq!(fmt_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(fmt_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(fmt_duration(Duration::from_secs(3600 + 5)), "1h5s");
    }

    #[tokio::test]
    async fn stop_handle_wakes_waiters() {
        let stop = StopHandle::new();
        let waiter = {
            let s = stop.clone();
            tokio::spawn(async move { s.requested().await })
        };
        assert!(!stop.is_requested());
        stop.request();
        assert!(waiter.await.is_ok());
        assert!(stop.is_requested());
        stop.requested().await;
    }
}
