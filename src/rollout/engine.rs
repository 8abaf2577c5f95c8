//! The engine proper: batches, host tasks, failure budgets, the report.

use super::journal::{Journal, JournalLog, OpStatus};
use super::step::{HostCtx, Step, StepCx, StepFailure, StopHandle};
use super::{HostFilter, Phase, Strategy};
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Receives progress as the rollout runs (e.g. to draw per-host progress on stderr).
/// Called from the engine's own task, never concurrently for one rollout.
pub trait Reporter: Send + Sync {
    /// `host` starts `step` of `phase`.
    fn step(&self, host: &str, phase: &str, step: &str);
    /// `host` is done with `phase`: `ok` if it passed, otherwise `msg` says why (failed at a
    /// step, skipped, stopped).
    fn host_done(&self, host: &str, phase: &str, ok: bool, msg: &str);
    /// Batch `index` of `count` of `phase` starts on `hosts` (index 0 of a canary phase is
    /// the canary). Called once per batch, before its hosts' first step.
    fn batch(&self, _phase: &str, _index: usize, _count: usize, _hosts: &[String]) {}
}

/// Decides what happens between two batches of a phase that pauses
/// ([`super::Phase::pause_between_batches`]): wait a while, or ask the operator.
#[async_trait::async_trait]
pub trait PauseHook: Send + Sync {
    /// Called before batch `next` (0-based; the first is never paused before) of `total`
    /// batches of `phase` starts. `Err(reason)` halts the rollout: the remaining batches are
    /// skipped with that reason.
    async fn pause(&self, phase: &str, next: usize, total: usize) -> Result<(), String>;
}

/// A [`Reporter`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullReporter;

impl Reporter for NullReporter {
    fn step(&self, _: &str, _: &str, _: &str) {}
    fn host_done(&self, _: &str, _: &str, _: bool, _: &str) {}
}

/// What became of one step on one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Ran, changed nothing.
    Ok,
    /// Ran, changed something.
    Changed,
    /// Ran and failed; the host stopped there.
    Failed,
    /// Not run: a stop was requested before it started.
    Skipped,
    /// Not run: the journal of the resumed operation records it done.
    DoneEarlier,
}

/// One step on one host, on the rollout's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// The host's name.
    pub host: String,
    /// The phase's name.
    pub phase: String,
    /// The step's name; `name#2`, `name#3`... for repeated occurrences in one phase.
    pub step: String,
    /// The batch the host was in (0: the canary batch of a canary phase).
    pub batch: usize,
    /// Milliseconds from the rollout's start to the step's start.
    pub start_ms: u64,
    /// Milliseconds from the rollout's start to the step's end.
    pub end_ms: u64,
    /// What became of the step.
    pub status: StepStatus,
    /// The step's secret-free detail, or the failure's message, or why it did not run.
    pub detail: String,
    /// For a failure: what the operator can do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Where a host ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// Passed every phase it was in.
    Ok,
    /// A step failed (see the record's phase, step, message).
    Failed,
    /// Not run (or not to the end of the rollout) because a canary failed, a phase exceeded
    /// its failure budget, or a stop was requested before its batch.
    Skipped,
    /// Interrupted by a stop request between two steps of a phase.
    Stopped,
}

/// How one host fared over the whole rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostRecord {
    /// The host's name.
    pub host: String,
    /// Where it ended up.
    pub status: HostStatus,
    /// Whether any step changed anything on it.
    pub changed: bool,
    /// For a host not `ok`: the phase where that happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// For a failed or stopped host: the step concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// For a host not `ok`: the failure's message, or why it was skipped or stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For a failed host: what the operator can do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// For a failed host: whether running again (`--resume`) may help as is.
    pub retryable: bool,
}

/// Counts over the hosts, and why the rollout ended early, if it did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Hosts in the rollout.
    pub hosts: usize,
    /// Hosts that passed every phase.
    pub ok: usize,
    /// Hosts where some step changed something (whatever their status).
    pub changed: usize,
    /// Hosts that failed.
    pub failed: usize,
    /// Hosts skipped.
    pub skipped: usize,
    /// Hosts interrupted by a stop request.
    pub stopped: usize,
    /// Why the rollout halted (a canary failed, a phase exceeded its failure budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// Whether a stop was requested before the rollout ended.
    pub stop_requested: bool,
    /// A failure to record the operation's end in the journal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_error: Option<String>,
}

/// The result of [`Engine::run`]: per-host records, the timeline of steps, summary counts,
/// and the host contexts handed back. Serializes (for `--json`) without the contexts.
#[derive(Debug, Serialize)]
#[serde(bound = "")]
pub struct RolloutReport<C> {
    /// The operation id.
    pub op_id: String,
    /// One record per host, in the order the hosts were given.
    pub hosts: Vec<HostRecord>,
    /// Every step run (or skipped, or done earlier), by start time.
    pub timeline: Vec<StepRecord>,
    /// Counts and early-end reasons.
    pub summary: Summary,
    /// The host contexts, in the order given, with whatever the steps recorded in them. A
    /// host whose task died outside a step (an engine bug) is missing.
    #[serde(skip)]
    pub contexts: Vec<C>,
}

impl<C> RolloutReport<C> {
    /// Whether every host passed.
    pub fn is_success(&self) -> bool {
        self.summary.ok == self.summary.hosts
    }

    /// The record of the host named `name`.
    pub fn host(&self, name: &str) -> Option<&HostRecord> {
        self.hosts.iter().find(|h| h.host == name)
    }

    /// How the operation ended, as journaled.
    pub fn op_status(&self) -> OpStatus {
        if self.summary.stop_requested {
            OpStatus::Stopped
        } else if self.summary.halted.is_some() {
            OpStatus::Halted
        } else if self.is_success() {
            OpStatus::Ok
        } else {
            OpStatus::Failed
        }
    }
}

/// Runs phases on hosts. Borrows a reporter; optionally journals, and resumes an operation.
pub struct Engine<'a> {
    reporter: &'a dyn Reporter,
    journal: Option<Journal>,
    resume: Option<Arc<JournalLog>>,
    op_id: Arc<str>,
    stop: StopHandle,
    pause: Option<Arc<dyn PauseHook>>,
}

impl<'a> Engine<'a> {
    /// An engine reporting to `reporter`, without a journal, with a fresh operation id.
    pub fn new(reporter: &'a dyn Reporter) -> Self {
        Engine {
            reporter,
            journal: None,
            resume: None,
            op_id: Arc::from(new_op_id()),
            stop: StopHandle::new(),
            pause: None,
        }
    }

    /// Calls `hook` between the batches of phases that pause.
    pub fn with_pause(mut self, hook: Arc<dyn PauseHook>) -> Self {
        self.pause = Some(hook);
        self
    }

    /// Uses `stop` as this engine's stop handle (shared with a Ctrl-C handler installed
    /// before the engine exists, or with the engines of the next parts of an operation).
    pub fn with_stop(mut self, stop: StopHandle) -> Self {
        self.stop = stop;
        self
    }

    /// Uses `op_id` as the operation id (without a journal).
    pub fn with_op_id(mut self, op_id: &str) -> Self {
        self.op_id = Arc::from(op_id);
        self
    }

    /// Journals every step's end (and the operation's end) to `journal`; the operation id
    /// becomes the journal's.
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.op_id = Arc::from(journal.op_id());
        self.journal = Some(journal);
        self
    }

    /// Resume mode: (host, phase, step) that `log` records done for this engine's operation
    /// are not run again but reported [`StepStatus::DoneEarlier`]. Call after
    /// [`Engine::with_journal`] (opened with the pending operation's id).
    pub fn resuming(mut self, log: JournalLog) -> Self {
        self.resume = Some(Arc::new(log));
        self
    }

    /// The operation id steps see in [`StepCx::op_id`].
    pub fn op_id(&self) -> &str {
        &self.op_id
    }

    /// A handle to request a stop of this engine's rollout (e.g. from a Ctrl-C handler).
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Runs `phases` on `hosts` and reports. Never fails as a whole: every problem is a host's
    /// (see the module documentation for the semantics).
    pub async fn run<C: HostCtx>(&self, phases: Vec<Phase<C>>, hosts: Vec<C>) -> RolloutReport<C> {
        let started = Instant::now();
        let names: Vec<String> = hosts.iter().map(|h| h.name().to_owned()).collect();
        let n = hosts.len();
        let mut slots: Vec<Option<C>> = hosts.into_iter().map(Some).collect();
        let mut states: Vec<HostState> = vec![HostState::default(); n];
        let mut timeline: Vec<StepRecord> = Vec::new();
        let mut halted: Option<String> = None;

        for phase in &phases {
            // A stop request starts no more work, but clean-up phases (`hosts: all`: release
            // the fleet lock, write the audit line) still run: an interrupted run must not
            // leave its locks behind.
            if self.stop.is_requested() && phase.hosts != HostFilter::All {
                for (i, st) in states.iter_mut().enumerate() {
                    if st.status == Live::Pending {
                        st.skip(&phase.name, "stop requested");
                        self.reporter.host_done(
                            &names[i],
                            &phase.name,
                            false,
                            "skipped: stop requested",
                        );
                    }
                }
                continue;
            }
            let selected: Vec<usize> = match phase.hosts {
                HostFilter::Passed => {
                    if let Some(reason) = &halted {
                        for st in states.iter_mut().filter(|s| s.status == Live::Pending) {
                            st.skip(&phase.name, reason);
                        }
                        continue;
                    }
                    (0..n)
                        .filter(|&i| states[i].status == Live::Pending)
                        .collect()
                }
                HostFilter::All => (0..n).collect(),
            };
            let labels: Arc<[String]> = step_labels(&phase.steps).into();
            let phase_name: Arc<str> = Arc::from(phase.name.as_str());
            // Resuming: hosts with every step of this phase done earlier are not batched, so
            // a canary is a host that still has work to do.
            // Clean-up phases always run again when resuming: the resumed run took the
            // fleet lock again and must release it (and audit what it did).
            let selected: Vec<usize> = match &self.resume {
                None => selected,
                Some(_) if phase.hosts == HostFilter::All => selected,
                Some(log) => {
                    let (done, todo): (Vec<usize>, Vec<usize>) =
                        selected.into_iter().partition(|&i| {
                            !labels.is_empty()
                                && labels
                                    .iter()
                                    .all(|l| log.is_done(&self.op_id, &names[i], &phase.name, l))
                        });
                    for i in done {
                        let at = ms_since(started);
                        timeline.extend(labels.iter().map(|l| StepRecord {
                            host: names[i].clone(),
                            phase: phase.name.clone(),
                            step: l.clone(),
                            batch: 0,
                            start_ms: at,
                            end_ms: at,
                            status: StepStatus::DoneEarlier,
                            detail: "done earlier".to_owned(),
                            hint: None,
                        }));
                        self.reporter
                            .host_done(&names[i], &phase.name, true, "done earlier");
                    }
                    todo
                }
            };
            let is_canary = matches!(phase.strategy, Strategy::Canary { .. });
            let mut failures: Vec<(usize, String)> = Vec::new();
            let mut phase_halt: Option<String> = None;
            let mut offset = 0;
            let sizes = phase.strategy.batch_sizes(selected.len());
            let total_batches = sizes.len();
            for (b, size) in sizes.into_iter().enumerate() {
                let batch = &selected[offset..offset + size];
                offset += size;
                if b > 0
                    && phase_halt.is_none()
                    && !self.stop.is_requested()
                    && phase.pause_between_batches
                    && let Some(hook) = &self.pause
                    && let Err(reason) = hook.pause(&phase.name, b, total_batches).await
                {
                    phase_halt = Some(reason);
                }
                let reason = if let Some(r) = &phase_halt {
                    Some(r.clone())
                } else if self.stop.is_requested() && phase.hosts != HostFilter::All {
                    Some("stop requested".to_owned())
                } else {
                    None
                };
                if let Some(reason) = reason {
                    for &i in batch {
                        if states[i].status == Live::Pending {
                            states[i].skip(&phase.name, &reason);
                        }
                        self.reporter.host_done(
                            &names[i],
                            &phase.name,
                            false,
                            &format!("skipped: {reason}"),
                        );
                    }
                    continue;
                }
                let batch_names: Vec<String> = batch.iter().map(|&i| names[i].clone()).collect();
                self.reporter
                    .batch(&phase.name, b, total_batches, &batch_names);
                let members: Vec<(usize, C)> = batch
                    .iter()
                    .filter_map(|&i| slots[i].take().map(|c| (i, c)))
                    .collect();
                let runs = self
                    .run_batch(phase, &phase_name, &labels, b, members, started)
                    .await;
                for run in runs {
                    match run {
                        BatchResult::Done(run) => {
                            let i = run.idx;
                            timeline.extend(run.records);
                            slots[i] = Some(run.ctx);
                            states[i].changed |= run.changed;
                            match run.end {
                                HostEnd::Passed => {}
                                HostEnd::Failed { step, failure } => {
                                    failures.push((i, failure.message.clone()));
                                    states[i].fail(&phase.name, &step, failure);
                                }
                                HostEnd::Stopped { step } => states[i].stop(&phase.name, &step),
                            }
                        }
                        BatchResult::Lost(i) => {
                            let failure = StepFailure::new(
                                "internal error: the host's task died outside a step",
                            );
                            failures.push((i, failure.message.clone()));
                            states[i].fail(&phase.name, "", failure);
                            self.reporter.host_done(
                                &names[i],
                                &phase.name,
                                false,
                                "internal error: the host's task died",
                            );
                        }
                    }
                }
                if is_canary && b == 0 {
                    if let Some((i, msg)) = failures.first() {
                        phase_halt = Some(format!("canary {} failed: {msg}", names[*i]));
                    }
                } else if failures.len() > phase.max_unavailable {
                    let list: Vec<String> = failures
                        .iter()
                        .map(|(i, m)| format!("{}: {m}", names[*i]))
                        .collect();
                    phase_halt = Some(format!(
                        "phase '{}': {} host(s) failed, more than max_unavailable {} ({})",
                        phase.name,
                        failures.len(),
                        phase.max_unavailable,
                        list.join("; ")
                    ));
                }
            }
            if halted.is_none() {
                halted = phase_halt;
            }
        }

        let stop_requested = self.stop.is_requested();
        let hosts: Vec<HostRecord> = names
            .iter()
            .zip(states)
            .map(|(name, st)| st.record(name))
            .collect();
        timeline.sort_by_key(|r| r.start_ms);
        let mut summary = Summary {
            hosts: n,
            halted,
            stop_requested,
            ..Summary::default()
        };
        for h in &hosts {
            match h.status {
                HostStatus::Ok => summary.ok += 1,
                HostStatus::Failed => summary.failed += 1,
                HostStatus::Skipped => summary.skipped += 1,
                HostStatus::Stopped => summary.stopped += 1,
            }
            summary.changed += usize::from(h.changed);
        }
        let mut report = RolloutReport {
            op_id: self.op_id.to_string(),
            hosts,
            timeline,
            summary,
            contexts: slots.into_iter().flatten().collect(),
        };
        if let Some(j) = &self.journal
            && let Err(e) = j.end(report.op_status()).await
        {
            report.summary.journal_error = Some(format!(
                "{}: cannot record the operation's end: {e}",
                j.path().display()
            ));
        }
        report
    }

    /// Runs one batch: a task per host, progress forwarded to the reporter as it happens.
    async fn run_batch<C: HostCtx>(
        &self,
        phase: &Phase<C>,
        phase_name: &Arc<str>,
        labels: &Arc<[String]>,
        batch: usize,
        members: Vec<(usize, C)>,
        started: Instant,
    ) -> Vec<BatchResult<C>> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Progress>();
        let mut set = JoinSet::new();
        let mut task_hosts = HashMap::new();
        for (idx, ctx) in members {
            let task = HostTask {
                idx,
                steps: phase.steps.clone(),
                labels: labels.clone(),
                cx: StepCx::for_engine(
                    self.op_id.clone(),
                    phase_name.clone(),
                    batch,
                    started,
                    self.stop.clone(),
                ),
                journal: self.journal.clone(),
                resume: if phase.hosts == HostFilter::All {
                    None
                } else {
                    self.resume.clone()
                },
                cleanup: phase.hosts == HostFilter::All,
                tx: tx.clone(),
                started,
            };
            let handle = set.spawn(task.run(ctx));
            task_hosts.insert(handle.id(), idx);
        }
        drop(tx);
        // Every task holds a sender until it ends, so this drains until the batch is done.
        while let Some(p) = rx.recv().await {
            match p {
                Progress::Step { host, step } => self.reporter.step(&host, phase_name, &step),
                Progress::Done { host, ok, msg } => {
                    self.reporter.host_done(&host, phase_name, ok, &msg)
                }
            }
        }
        let mut out = Vec::new();
        while let Some(joined) = set.join_next_with_id().await {
            match joined {
                Ok((_, run)) => out.push(BatchResult::Done(run)),
                Err(e) => {
                    if let Some(&i) = task_hosts.get(&e.id()) {
                        out.push(BatchResult::Lost(i));
                    }
                }
            }
        }
        out.sort_by_key(|r| match r {
            BatchResult::Done(run) => run.idx,
            BatchResult::Lost(i) => *i,
        });
        out
    }
}

fn ms_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A fresh operation id: UTC time and 6 random hex digits, e.g. `20260519T101500Z-1a2b3c`.
pub fn new_op_id() -> String {
    let suffix: u32 = rand::random::<u32>() & 0x00ff_ffff;
    format!(
        "{}-{suffix:06x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    )
}

/// Labels of a phase's steps: the name, or `name#k` for the k-th occurrence (k >= 2).
fn step_labels<C: HostCtx>(steps: &[Arc<dyn Step<C>>]) -> Vec<String> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    steps
        .iter()
        .map(|s| {
            let k = seen.entry(s.name()).or_insert(0);
            *k += 1;
            if *k == 1 {
                s.name().to_owned()
            } else {
                format!("{}#{k}", s.name())
            }
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Live {
    #[default]
    Pending,
    Failed,
    Skipped,
    Stopped,
}

#[derive(Clone, Debug, Default)]
struct HostState {
    status: Live,
    changed: bool,
    phase: Option<String>,
    step: Option<String>,
    message: Option<String>,
    hint: Option<String>,
    retryable: bool,
}

impl HostState {
    fn skip(&mut self, phase: &str, reason: &str) {
        self.status = Live::Skipped;
        self.phase = Some(phase.to_owned());
        self.step = None;
        self.message = Some(reason.to_owned());
    }

    /// A failure overrides a skip (an `All` phase can fail a skipped host) but never an
    /// earlier failure, which is the one to fix first.
    fn fail(&mut self, phase: &str, step: &str, f: StepFailure) {
        if self.status == Live::Failed {
            return;
        }
        self.status = Live::Failed;
        self.phase = Some(phase.to_owned());
        self.step = (!step.is_empty()).then(|| step.to_owned());
        self.message = Some(f.message);
        self.hint = f.hint;
        self.retryable = f.retryable;
    }

    fn stop(&mut self, phase: &str, step: &str) {
        if self.status != Live::Pending {
            return;
        }
        self.status = Live::Stopped;
        self.phase = Some(phase.to_owned());
        self.step = Some(step.to_owned());
        self.message = Some(format!("stop requested before step '{step}'"));
    }

    fn record(self, host: &str) -> HostRecord {
        HostRecord {
            host: host.to_owned(),
            status: match self.status {
                Live::Pending => HostStatus::Ok,
                Live::Failed => HostStatus::Failed,
                Live::Skipped => HostStatus::Skipped,
                Live::Stopped => HostStatus::Stopped,
            },
            changed: self.changed,
            phase: self.phase,
            step: self.step,
            message: self.message,
            hint: self.hint,
            retryable: self.retryable,
        }
    }
}

enum Progress {
    Step { host: String, step: String },
    Done { host: String, ok: bool, msg: String },
}

enum HostEnd {
    Passed,
    Failed { step: String, failure: StepFailure },
    Stopped { step: String },
}

struct HostRun<C> {
    idx: usize,
    ctx: C,
    records: Vec<StepRecord>,
    changed: bool,
    end: HostEnd,
}

enum BatchResult<C> {
    Done(HostRun<C>),
    Lost(usize),
}

struct HostTask<C> {
    idx: usize,
    steps: Vec<Arc<dyn Step<C>>>,
    labels: Arc<[String]>,
    cx: StepCx,
    journal: Option<Journal>,
    resume: Option<Arc<JournalLog>>,
    /// A clean-up phase: its steps run even after a stop request.
    cleanup: bool,
    tx: mpsc::UnboundedSender<Progress>,
    started: Instant,
}

impl<C: HostCtx> HostTask<C> {
    fn ms(&self) -> u64 {
        ms_since(self.started)
    }

    fn record(&self, host: &str, step: &str, start_ms: u64, status: StepStatus) -> StepRecord {
        StepRecord {
            host: host.to_owned(),
            phase: self.cx.phase().to_owned(),
            step: step.to_owned(),
            batch: self.cx.batch(),
            start_ms,
            end_ms: self.ms(),
            status,
            detail: String::new(),
            hint: None,
        }
    }

    async fn run(self, mut ctx: C) -> HostRun<C> {
        let host = ctx.name().to_owned();
        let phase = self.cx.phase().to_owned();
        let mut records = Vec::new();
        let mut changed = false;
        let mut end = HostEnd::Passed;
        for (i, step) in self.steps.iter().enumerate() {
            let label = self.labels[i].as_str();
            if self.cx.stop_requested() && !self.cleanup {
                for rest in &self.labels[i..] {
                    let mut r = self.record(&host, rest, self.ms(), StepStatus::Skipped);
                    r.detail = "stop requested".to_owned();
                    records.push(r);
                }
                end = HostEnd::Stopped {
                    step: label.to_owned(),
                };
                break;
            }
            if self
                .resume
                .as_ref()
                .is_some_and(|log| log.is_done(self.cx.op_id(), &host, &phase, label))
            {
                let mut r = self.record(&host, label, self.ms(), StepStatus::DoneEarlier);
                r.detail = "done earlier".to_owned();
                records.push(r);
                continue;
            }
            let _ = self.tx.send(Progress::Step {
                host: host.clone(),
                step: label.to_owned(),
            });
            let start_ms = self.ms();
            let result = CatchUnwind(step.run(&mut ctx, &self.cx))
                .await
                .unwrap_or_else(|()| {
                    Err(StepFailure::new(format!(
                        "{label}: the step panicked (see stderr)"
                    )))
                });
            match result {
                Ok(outcome) => {
                    let (status, word) = if outcome.changed {
                        (StepStatus::Changed, "changed")
                    } else {
                        (StepStatus::Ok, "ok")
                    };
                    changed |= outcome.changed;
                    let mut r = self.record(&host, label, start_ms, status);
                    r.detail = outcome.detail;
                    let journaled = match &self.journal {
                        Some(j) => j.step(&phase, &host, label, word, Some(&r.detail)).await,
                        None => Ok(()),
                    };
                    records.push(r);
                    if let Err(e) = journaled {
                        let failure = StepFailure::new(format!(
                            "{label}: done, but the journal could not record it: {e}"
                        ))
                        .with_hint("fix the journal's file system; --resume would redo this step");
                        end = HostEnd::Failed {
                            step: label.to_owned(),
                            failure,
                        };
                        break;
                    }
                }
                Err(failure) => {
                    if let Some(j) = &self.journal {
                        // The host is failed either way; a lost line only means a redo.
                        let _ = j.step(&phase, &host, label, "failed", None).await;
                    }
                    let mut r = self.record(&host, label, start_ms, StepStatus::Failed);
                    r.detail = failure.message.clone();
                    r.hint = failure.hint.clone();
                    records.push(r);
                    end = HostEnd::Failed {
                        step: label.to_owned(),
                        failure,
                    };
                    break;
                }
            }
        }
        let (ok, msg) = match &end {
            HostEnd::Passed => (true, if changed { "changed" } else { "ok" }.to_owned()),
            HostEnd::Failed { step, failure } => (false, format!("{step}: {failure}")),
            HostEnd::Stopped { step } => (false, format!("stop requested before step '{step}'")),
        };
        let _ = self.tx.send(Progress::Done {
            host: host.clone(),
            ok,
            msg,
        });
        HostRun {
            idx: self.idx,
            ctx,
            records,
            changed,
            end,
        }
    }
}

/// Turns a panic while polling the inner future into `Err(())`, so a panicking step fails its
/// host instead of losing the host's context with the task.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *inner).poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}
