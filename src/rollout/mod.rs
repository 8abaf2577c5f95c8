//! The rollout engine: runs phases of steps on a fleet of hosts, in an order set by each
//! phase's strategy (parallel, canary, rolling batches), with a failure budget
//! (`max_unavailable`), a journal for `--resume`, and a way to request a stop.
//!
//! The engine knows nothing about Docker, tokens or SSH. A host is any [`HostCtx`] (the
//! caller's per-host state: a connection, gathered facts, what steps recorded); a step is any
//! [`Step`] over that context. Callers build [`Phase`]s (by hand or from a playbook, see
//! [`crate::playbook`]) and hand them to [`Engine::run`] with the hosts.
//!
//! Semantics, in short:
//! - Phases run in order. A phase runs on the hosts its [`HostFilter`] selects; each host runs
//!   the phase's steps in order and stops at its first failing step. A failed host is failed
//!   for the rest of the rollout: no later [`HostFilter::Passed`] phase touches it.
//! - Hosts of one batch run concurrently, one tokio task each (the context is moved into the
//!   task and back). Batches run one after another.
//! - A phase *halts* the rollout when a canary fails, or when its failures exceed
//!   `max_unavailable`: no further batch of that phase starts (those hosts are `skipped`, with
//!   the reason) and no later `Passed` phase runs. `All` phases (clean-up such as releasing a
//!   lock) still run, on every host.
//! - [`StopHandle::request`] (e.g. on Ctrl-C, which the caller handles) stops the rollout: no
//!   new batch or step starts, running steps finish; only `All` (clean-up) phases still run,
//!   so an interrupted run releases its locks. Resuming never skips a clean-up phase.

mod batch;
mod engine;
mod journal;
mod step;

pub use engine::{
    Engine, HostRecord, HostStatus, NullReporter, PauseHook, Reporter, RolloutReport, StepRecord,
    StepStatus, Summary, new_op_id,
};
pub use journal::{Journal, JournalLog, OpStatus, PendingOp};
pub(crate) use step::fmt_duration;
pub use step::{HostCtx, Step, StepCx, StepFailure, StepOutcome, StopHandle};

use std::sync::Arc;

/// How many hosts make a batch: a fixed count, or a percentage of the hosts concerned.
/// Parses from `5` or `25%` (`str::parse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchSize {
    /// This many hosts (0 is treated as 1).
    Count(usize),
    /// This percentage of the hosts, rounded up, at least one host (0 is treated as 1 host,
    /// more than 100 as 100).
    Percent(u8),
}

/// The order in which a phase processes its hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// All hosts at once, as one batch.
    Parallel,
    /// `count` canary hosts first (batch 0); if any fails, the phase and the rollout stop
    /// (every other host `skipped`). Otherwise the remaining hosts run in batches of `then`,
    /// where a percentage is of the hosts remaining after the canaries (`100%`: all at once).
    Canary {
        /// How many hosts form the canary batch (0 is treated as 1).
        count: usize,
        /// Batch size for the hosts after the canaries.
        then: BatchSize,
    },
    /// Rolling batches of this size, one after another; a percentage is of the phase's hosts.
    Batches(BatchSize),
}

/// Which hosts a phase runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HostFilter {
    /// Every host of the rollout, including hosts that failed or were skipped earlier; runs
    /// even after an earlier phase halted the rollout (but not after a stop request). For
    /// clean-up phases: releasing the fleet lock, writing the audit line.
    All,
    /// Only hosts that passed every earlier phase (the default).
    #[default]
    Passed,
}

/// One phase of a rollout: steps run on each selected host, hosts ordered by the strategy.
pub struct Phase<C: HostCtx> {
    /// The phase's name, unique within a rollout (it keys the journal).
    pub name: String,
    /// How the phase's hosts are ordered into batches.
    pub strategy: Strategy,
    /// Failed hosts tolerated in this phase; one more halts the rollout (default 0).
    pub max_unavailable: usize,
    /// The steps each host runs, in order; a host stops at its first failing step.
    pub steps: Vec<Arc<dyn Step<C>>>,
    /// Which hosts the phase runs on (default: those that passed earlier phases).
    pub hosts: HostFilter,
    /// Call the engine's [`PauseHook`] before every batch after the first (a timed pause, or
    /// the operator's go-ahead after the canary).
    pub pause_between_batches: bool,
}

impl<C: HostCtx> Phase<C> {
    /// A phase with the default strategy ([`Strategy::Parallel`]), `max_unavailable` 0, no
    /// steps, on the hosts that passed earlier phases.
    pub fn new(name: impl Into<String>) -> Self {
        Phase {
            name: name.into(),
            strategy: Strategy::Parallel,
            max_unavailable: 0,
            steps: Vec::new(),
            hosts: HostFilter::Passed,
            pause_between_batches: false,
        }
    }

    /// Sets the strategy.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the failure budget.
    pub fn max_unavailable(mut self, n: usize) -> Self {
        self.max_unavailable = n;
        self
    }

    /// Appends a step.
    pub fn step(mut self, step: Arc<dyn Step<C>>) -> Self {
        self.steps.push(step);
        self
    }

    /// Sets which hosts the phase runs on.
    pub fn hosts(mut self, hosts: HostFilter) -> Self {
        self.hosts = hosts;
        self
    }

    /// Pauses (through the engine's [`PauseHook`]) before every batch after the first.
    pub fn pause_between_batches(mut self, pause: bool) -> Self {
        self.pause_between_batches = pause;
        self
    }
}

impl<C: HostCtx> Clone for Phase<C> {
    fn clone(&self) -> Self {
        Phase {
            name: self.name.clone(),
            strategy: self.strategy,
            max_unavailable: self.max_unavailable,
            steps: self.steps.clone(),
            hosts: self.hosts,
            pause_between_batches: self.pause_between_batches,
        }
    }
}

impl<C: HostCtx> std::fmt::Debug for Phase<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phase")
            .field("name", &self.name)
            .field("strategy", &self.strategy)
            .field("max_unavailable", &self.max_unavailable)
            .field(
                "steps",
                &self.steps.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field("hosts", &self.hosts)
            .finish()
    }
}
