//! The rollout engine with fake steps: ordering, canaries, batches, failure budgets,
//! concurrency, stop requests. No timing assertions; concurrency is proven with barriers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tunnelfleet::rollout::{
    BatchSize, Engine, HostCtx, HostFilter, HostStatus, NullReporter, Phase, Reporter, Step,
    StepCx, StepFailure, StepOutcome, StepStatus, Strategy,
};

/// A fake host: records the steps run on it.
struct Host {
    name: String,
    ran: Vec<String>,
}

impl HostCtx for Host {
    fn name(&self) -> &str {
        &self.name
    }
}

fn hosts(n: usize) -> Vec<Host> {
    (1..=n)
        .map(|i| Host {
            name: format!("h{i}"),
            ran: Vec::new(),
        })
        .collect()
}

/// Shared event log: ("start"|"end", host, step, batch).
type Log = Arc<Mutex<Vec<(&'static str, String, String, usize)>>>;

fn log_of(log: &Log) -> Vec<(&'static str, String, String, usize)> {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

/// A step that succeeds (changed) except on the hosts in `fail_on`.
struct Fake {
    name: String,
    fail_on: HashSet<String>,
    log: Log,
}

fn fake(name: &str, fail_on: &[&str], log: &Log) -> Arc<dyn Step<Host>> {
    Arc::new(Fake {
        name: name.to_owned(),
        fail_on: fail_on.iter().map(|s| s.to_string()).collect(),
        log: log.clone(),
    })
}

#[async_trait::async_trait]
impl Step<Host> for Fake {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, host: &mut Host, cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        let push = |what| {
            if let Ok(mut l) = self.log.lock() {
                l.push((what, host.name.clone(), self.name.clone(), cx.batch()));
            }
        };
        push("start");
        host.ran.push(format!("{}/{}", cx.phase(), self.name));
        tokio::task::yield_now().await;
        push("end");
        if self.fail_on.contains(&host.name) {
            return Err(StepFailure::new(format!("{} broke", self.name)).with_hint("fix it"));
        }
        Ok(StepOutcome::changed(format!("did {}", self.name)))
    }
}

fn phase(name: &str, strategy: Strategy, steps: Vec<Arc<dyn Step<Host>>>) -> Phase<Host> {
    let mut p = Phase::new(name).strategy(strategy);
    p.steps = steps;
    p
}

fn status_of<C>(r: &tunnelfleet::rollout::RolloutReport<C>, host: &str) -> HostStatus {
    r.host(host).map(|h| h.status).unwrap_or(HostStatus::Ok)
}

fn ran<'a>(r: &'a tunnelfleet::rollout::RolloutReport<Host>, host: &str) -> &'a [String] {
    r.contexts
        .iter()
        .find(|h| h.name == host)
        .map(|h| h.ran.as_slice())
        .unwrap_or(&[])
}

#[tokio::test]
async fn phases_run_in_order_and_contexts_come_back() {
    let log = Log::default();
    let phases = vec![
        phase(
            "one",
            Strategy::Parallel,
            vec![fake("a", &[], &log), fake("b", &[], &log)],
        ),
        phase("two", Strategy::Parallel, vec![fake("c", &[], &log)]),
    ];
    let report = Engine::new(&NullReporter).run(phases, hosts(3)).await;
    assert!(report.is_success());
    assert_eq!(report.contexts.len(), 3);
    for h in ["h1", "h2", "h3"] {
        assert_eq!(ran(&report, h), ["one/a", "one/b", "two/c"]);
    }
    assert_eq!(report.summary.ok, 3);
    assert_eq!(report.summary.changed, 3);
    assert_eq!(report.timeline.len(), 9);
    assert!(
        report
            .timeline
            .iter()
            .all(|s| s.status == StepStatus::Changed && s.start_ms <= s.end_ms)
    );
    let json = serde_json::to_value(&report).unwrap_or_default();
    assert_eq!(json["summary"]["ok"], 3);
    assert_eq!(json["hosts"][0]["status"], "ok");
    assert_eq!(json["timeline"][0]["status"], "changed");
}

#[tokio::test]
async fn a_failing_step_stops_that_host_only() {
    let log = Log::default();
    let phases = vec![
        phase(
            "one",
            Strategy::Parallel,
            vec![
                fake("a", &[], &log),
                fake("b", &["h2"], &log),
                fake("c", &[], &log),
            ],
        )
        .max_unavailable(1),
        phase("two", Strategy::Parallel, vec![fake("d", &[], &log)]),
    ];
    let report = Engine::new(&NullReporter).run(phases, hosts(3)).await;
    assert_eq!(ran(&report, "h1"), ["one/a", "one/b", "one/c", "two/d"]);
    assert_eq!(ran(&report, "h2"), ["one/a", "one/b"]);
    assert_eq!(ran(&report, "h3"), ["one/a", "one/b", "one/c", "two/d"]);
    let h2 = report.host("h2").cloned();
    let h2 = h2.as_ref();
    assert_eq!(h2.map(|h| h.status), Some(HostStatus::Failed));
    assert_eq!(h2.and_then(|h| h.step.as_deref()), Some("b"));
    assert_eq!(h2.and_then(|h| h.message.as_deref()), Some("b broke"));
    assert_eq!(h2.and_then(|h| h.hint.as_deref()), Some("fix it"));
    assert_eq!(report.summary.failed, 1);
    assert_eq!(report.summary.ok, 2);
    assert_eq!(report.summary.halted, None);
}

#[tokio::test]
async fn a_failed_canary_stops_everything_and_leaves_other_hosts_untouched() {
    let log = Log::default();
    let phases = vec![
        phase(
            "restart",
            Strategy::Canary {
                count: 1,
                then: BatchSize::Percent(100),
            },
            vec![fake("a", &["h1"], &log)],
        )
        .max_unavailable(10),
        phase("after", Strategy::Parallel, vec![fake("z", &[], &log)]),
    ];
    let report = Engine::new(&NullReporter).run(phases, hosts(4)).await;
    assert_eq!(ran(&report, "h1"), ["restart/a"]);
    for h in ["h2", "h3", "h4"] {
        assert!(ran(&report, h).is_empty(), "{h} was touched");
        let rec = report.host(h).cloned();
        assert_eq!(rec.as_ref().map(|r| r.status), Some(HostStatus::Skipped));
        assert_eq!(
            rec.and_then(|r| r.message),
            Some("canary h1 failed: a broke".to_owned())
        );
    }
    assert_eq!(status_of(&report, "h1"), HostStatus::Failed);
    assert_eq!(
        report.summary.halted.as_deref(),
        Some("canary h1 failed: a broke")
    );
    // Only the canary ever ran anything.
    assert!(log_of(&log).iter().all(|(_, h, _, _)| h == "h1"));
}

#[tokio::test]
async fn canary_then_batches_by_percent_of_the_rest() {
    let log = Log::default();
    let phases = vec![phase(
        "p",
        Strategy::Canary {
            count: 1,
            then: BatchSize::Percent(50),
        },
        vec![fake("a", &[], &log)],
    )];
    let report = Engine::new(&NullReporter).run(phases, hosts(6)).await;
    assert!(report.is_success());
    // 1 canary, then 5 hosts in batches of ceil(50% of 5) = 3: [1, 3, 2].
    let batches: Vec<(String, usize)> = log_of(&log)
        .into_iter()
        .filter(|e| e.0 == "start")
        .map(|e| (e.1, e.3))
        .collect();
    let mut by_host: Vec<(String, usize)> = batches.clone();
    by_host.sort();
    assert_eq!(
        by_host,
        [
            ("h1", 0),
            ("h2", 1),
            ("h3", 1),
            ("h4", 1),
            ("h5", 2),
            ("h6", 2)
        ]
        .map(|(h, b)| (h.to_owned(), b))
    );
    assert_batches_sequential(&log_of(&log));
}

/// No step of batch k+1 starts before every step of batch k ended.
fn assert_batches_sequential(events: &[(&'static str, String, String, usize)]) {
    let mut max_batch_ended = 0usize;
    let mut open: Vec<usize> = Vec::new();
    for (what, _, _, batch) in events {
        match *what {
            "start" => {
                assert!(
                    open.iter().all(|b| b == batch),
                    "batch {batch} started while batch {open:?} ran"
                );
                assert!(*batch >= max_batch_ended, "batch order");
                open.push(*batch);
            }
            _ => {
                if let Some(i) = open.iter().position(|b| b == batch) {
                    open.remove(i);
                }
                max_batch_ended = max_batch_ended.max(*batch);
            }
        }
    }
}

#[tokio::test]
async fn batches_by_count_and_percent_rounding() {
    for (size, expect) in [
        (BatchSize::Count(2), vec![0, 0, 1, 1, 2]),
        (BatchSize::Percent(25), vec![0, 0, 1, 1, 2]), // ceil(25% of 5) = 2
        (BatchSize::Percent(10), vec![0, 1, 2, 3, 4]), // ceil(0.5) = 1
        (BatchSize::Percent(100), vec![0, 0, 0, 0, 0]),
    ] {
        let log = Log::default();
        let phases = vec![phase(
            "p",
            Strategy::Batches(size),
            vec![fake("a", &[], &log), fake("b", &[], &log)],
        )];
        let report = Engine::new(&NullReporter).run(phases, hosts(5)).await;
        assert!(report.is_success());
        let events = log_of(&log);
        let mut got: Vec<(String, usize)> = events
            .iter()
            .filter(|e| e.0 == "start" && e.2 == "a")
            .map(|e| (e.1.clone(), e.3))
            .collect();
        got.sort();
        let got: Vec<usize> = got.into_iter().map(|(_, b)| b).collect();
        assert_eq!(got, expect, "{size:?}");
        assert_batches_sequential(&events);
    }
}

#[tokio::test]
async fn max_unavailable_stops_further_batches() {
    let log = Log::default();
    // Batches of 2: [h1 h2] [h3 h4] [h5 h6]. One failure in batch 0 is tolerated; the second
    // (in batch 1) exceeds the budget, so batch 2 never starts and the next phase never runs.
    let phases = vec![
        phase(
            "p",
            Strategy::Batches(BatchSize::Count(2)),
            vec![fake("a", &["h2", "h3"], &log)],
        )
        .max_unavailable(1),
        phase("q", Strategy::Parallel, vec![fake("z", &[], &log)]),
    ];
    let report = Engine::new(&NullReporter).run(phases, hosts(6)).await;
    assert_eq!(status_of(&report, "h1"), HostStatus::Skipped);
    assert_eq!(status_of(&report, "h2"), HostStatus::Failed);
    assert_eq!(status_of(&report, "h3"), HostStatus::Failed);
    assert_eq!(status_of(&report, "h4"), HostStatus::Skipped);
    for h in ["h5", "h6"] {
        assert_eq!(status_of(&report, h), HostStatus::Skipped);
        assert!(ran(&report, h).is_empty());
        let msg = report.host(h).and_then(|r| r.message.clone());
        assert_eq!(
            msg.as_deref(),
            Some(
                "phase 'p': 2 host(s) failed, more than max_unavailable 1 (h2: a broke; h3: a broke)"
            )
        );
    }
    // Hosts that passed 'p' are skipped for 'q' with the same reason.
    assert_eq!(ran(&report, "h1"), ["p/a"]);
    assert_eq!(
        report.host("h1").and_then(|r| r.phase.clone()).as_deref(),
        Some("q")
    );
    assert!(log_of(&log).iter().all(|e| e.2 == "a"));
    assert!(report.summary.halted.is_some());
}

#[tokio::test]
async fn within_budget_failures_do_not_halt() {
    let log = Log::default();
    let phases = vec![
        phase(
            "p",
            Strategy::Batches(BatchSize::Count(1)),
            vec![fake("a", &["h1", "h2"], &log)],
        )
        .max_unavailable(2),
        phase("q", Strategy::Parallel, vec![fake("z", &[], &log)]),
    ];
    let report = Engine::new(&NullReporter).run(phases, hosts(4)).await;
    assert_eq!(report.summary.failed, 2);
    assert_eq!(report.summary.ok, 2);
    assert_eq!(ran(&report, "h4"), ["p/a", "q/z"]);
    assert_eq!(report.summary.halted, None);
}

/// Waits at a barrier shared by all hosts: completes only if every host is inside the step
/// at the same time.
struct AllAtOnce(Arc<tokio::sync::Barrier>);

#[async_trait::async_trait]
impl Step<Host> for AllAtOnce {
    fn name(&self) -> &str {
        "all_at_once"
    }
    async fn run(&self, _: &mut Host, _: &StepCx) -> Result<StepOutcome, StepFailure> {
        self.0.wait().await;
        Ok(StepOutcome::unchanged("met"))
    }
}

#[tokio::test]
async fn parallel_runs_every_host_at_once() {
    let n = 8;
    let phases = vec![phase(
        "p",
        Strategy::Parallel,
        vec![Arc::new(AllAtOnce(Arc::new(tokio::sync::Barrier::new(n))))],
    )];
    // A deadline only so that a regression fails instead of hanging.
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        Engine::new(&NullReporter).run(phases, hosts(n)),
    )
    .await;
    assert!(
        report.is_ok_and(|r| r.is_success()),
        "hosts did not all reach the barrier together"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_runs_its_hosts_at_once_on_a_multi_thread_runtime() {
    let phases = vec![phase(
        "p",
        Strategy::Batches(BatchSize::Count(3)),
        vec![Arc::new(AllAtOnce(Arc::new(tokio::sync::Barrier::new(3))))],
    )];
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        Engine::new(&NullReporter).run(phases, hosts(6)),
    )
    .await;
    assert!(report.is_ok_and(|r| r.is_success()));
}

/// Requests a stop from inside a step (as a Ctrl-C handler would from outside).
struct StopNow;

#[async_trait::async_trait]
impl Step<Host> for StopNow {
    fn name(&self) -> &str {
        "stop_now"
    }
    async fn run(&self, host: &mut Host, cx: &StepCx) -> Result<StepOutcome, StepFailure> {
        host.ran.push("stop_now".to_owned());
        cx.stop().request();
        Ok(StepOutcome::unchanged("asked to stop"))
    }
}

#[tokio::test]
async fn a_stop_request_lets_running_steps_finish_and_starts_nothing_new() {
    let log = Log::default();
    let phases = vec![
        phase(
            "p",
            Strategy::Batches(BatchSize::Count(1)),
            vec![Arc::new(StopNow), fake("after", &[], &log)],
        ),
        phase("q", Strategy::Parallel, vec![fake("z", &[], &log)]).hosts(HostFilter::All),
    ];
    let engine = Engine::new(&NullReporter);
    let report = engine.run(phases, hosts(3)).await;
    // Nothing new in `p`; the clean-up phase `q` (hosts: all) still runs on every host, so an
    // interrupted run releases what it holds.
    assert_eq!(ran(&report, "h1"), ["stop_now", "q/z"]);
    assert_eq!(ran(&report, "h2"), ["q/z"]);
    assert!(log_of(&log).iter().all(|l| l.0 != "after"));
    assert_eq!(status_of(&report, "h1"), HostStatus::Stopped);
    assert_eq!(status_of(&report, "h2"), HostStatus::Skipped);
    assert!(report.summary.stop_requested);
    assert!(engine.stop_handle().is_requested());
    let skipped = report
        .timeline
        .iter()
        .find(|s| s.host == "h1" && s.step == "after")
        .map(|s| s.status);
    assert_eq!(skipped, Some(StepStatus::Skipped));
}

#[tokio::test]
async fn all_phases_run_on_every_host_even_after_a_halt() {
    let log = Log::default();
    let phases = vec![
        phase(
            "apply",
            Strategy::Canary {
                count: 1,
                then: BatchSize::Percent(100),
            },
            vec![fake("a", &["h1"], &log)],
        ),
        phase("more", Strategy::Parallel, vec![fake("m", &[], &log)]),
        phase(
            "unlock",
            Strategy::Parallel,
            vec![fake("unlock", &[], &log)],
        )
        .hosts(HostFilter::All),
    ];
    let report = Engine::new(&NullReporter).run(phases, hosts(3)).await;
    assert_eq!(ran(&report, "h1"), ["apply/a", "unlock/unlock"]);
    assert_eq!(ran(&report, "h2"), ["unlock/unlock"]);
    assert_eq!(status_of(&report, "h1"), HostStatus::Failed);
    assert_eq!(status_of(&report, "h2"), HostStatus::Skipped);
}

struct Panics;

#[async_trait::async_trait]
impl Step<Host> for Panics {
    fn name(&self) -> &str {
        "panics"
    }
    async fn run(&self, host: &mut Host, _: &StepCx) -> Result<StepOutcome, StepFailure> {
        if host.name == "h2" {
            panic!("fake step panic");
        }
        Ok(StepOutcome::unchanged(""))
    }
}

#[tokio::test]
async fn a_panicking_step_fails_its_host_and_keeps_its_context() {
    let phases = vec![phase("p", Strategy::Parallel, vec![Arc::new(Panics)]).max_unavailable(5)];
    let report = Engine::new(&NullReporter).run(phases, hosts(3)).await;
    assert_eq!(report.contexts.len(), 3);
    assert_eq!(status_of(&report, "h2"), HostStatus::Failed);
    assert_eq!(report.summary.ok, 2);
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Reporter for Recorder {
    fn step(&self, host: &str, phase: &str, step: &str) {
        if let Ok(mut v) = self.0.lock() {
            v.push(format!("{host} {phase} {step}"));
        }
    }
    fn host_done(&self, host: &str, phase: &str, ok: bool, msg: &str) {
        if let Ok(mut v) = self.0.lock() {
            v.push(format!("{host} {phase} done {ok} {msg}"));
        }
    }
}

#[tokio::test]
async fn the_reporter_hears_steps_and_host_ends() {
    let log = Log::default();
    let rec = Recorder::default();
    let phases = vec![phase(
        "p",
        Strategy::Batches(BatchSize::Count(1)),
        vec![fake("a", &["h1"], &log)],
    )];
    let _ = Engine::new(&rec).run(phases, hosts(2)).await;
    let lines = rec.0.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(
        lines,
        [
            "h1 p a",
            "h1 p done false a: a broke (fix it)",
            "h2 p done false skipped: phase 'p': 1 host(s) failed, more than max_unavailable 0 (h1: a broke)",
        ]
    );
}

/// Tells the test it has started, then waits for the test's go before finishing.
struct Gate {
    started: tokio::sync::mpsc::UnboundedSender<String>,
    go: Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl Step<Host> for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    async fn run(&self, host: &mut Host, _: &StepCx) -> Result<StepOutcome, StepFailure> {
        let _ = self.started.send(host.name.clone());
        let permit = self.go.acquire().await;
        drop(permit);
        host.ran.push("gate".to_owned());
        Ok(StepOutcome::changed("passed the gate"))
    }
}

#[tokio::test]
async fn a_stop_from_outside_waits_for_running_steps() {
    let log = Log::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let phases = vec![
        phase(
            "p",
            Strategy::Batches(BatchSize::Count(2)),
            vec![
                Arc::new(Gate {
                    started: tx,
                    go: go.clone(),
                }),
                fake("next", &[], &log),
            ],
        ),
        phase("q", Strategy::Parallel, vec![fake("z", &[], &log)]),
    ];
    let engine = Engine::new(&NullReporter);
    let stop = engine.stop_handle();
    let control = async {
        // Both hosts of the first batch are inside the step: ask to stop (as Ctrl-C would),
        // then let the running steps finish.
        let mut inside = vec![rx.recv().await, rx.recv().await];
        inside.sort();
        stop.request();
        go.add_permits(2);
        inside
    };
    let (report, inside) = tokio::join!(engine.run(phases, hosts(4)), control);
    assert_eq!(inside, [Some("h1".to_owned()), Some("h2".to_owned())]);
    for h in ["h1", "h2"] {
        assert_eq!(
            ran(&report, h),
            ["gate"],
            "the running step finished on {h}"
        );
        assert_eq!(status_of(&report, h), HostStatus::Stopped);
    }
    for h in ["h3", "h4"] {
        assert!(ran(&report, h).is_empty());
        assert_eq!(status_of(&report, h), HostStatus::Skipped);
    }
    assert!(log_of(&log).is_empty(), "no new step started");
    assert_eq!(report.op_status(), tunnelfleet::rollout::OpStatus::Stopped);
}
