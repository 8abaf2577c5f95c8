//! The rollout journal: resume skips what is done, a torn last line is tolerated, and no
//! secret a step holds ever reaches the file.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tunnelfleet::rollout::{
    BatchSize, Engine, HostCtx, HostStatus, Journal, NullReporter, OpStatus, Phase, Step, StepCx,
    StepFailure, StepOutcome, StepStatus, Strategy,
};

struct Host {
    name: String,
    /// A value the steps are given as a secret (a stand-in for a tunnel token).
    token: String,
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
            token: format!("eyJTOPSECRET-token-of-h{i}-ZZZ"),
        })
        .collect()
}

/// Counts its runs per host; fails on `broken_on` while `broken` is set.
struct Counted {
    name: &'static str,
    runs: Arc<Mutex<Vec<String>>>,
    broken_on: &'static str,
    broken: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Step<Host> for Counted {
    fn name(&self) -> &str {
        self.name
    }
    async fn run(&self, host: &mut Host, _: &StepCx) -> Result<StepOutcome, StepFailure> {
        if let Ok(mut r) = self.runs.lock() {
            r.push(format!("{}/{}", host.name, self.name));
        }
        if host.name == self.broken_on && self.broken.load(Ordering::SeqCst) {
            return Err(StepFailure::new("host down").retryable());
        }
        Ok(StepOutcome::changed(format!("{} done", self.name)))
    }
}

struct Setup {
    runs: Arc<Mutex<Vec<String>>>,
    broken: Arc<AtomicBool>,
}

impl Setup {
    fn new() -> Self {
        Setup {
            runs: Arc::default(),
            broken: Arc::new(AtomicBool::new(true)),
        }
    }
    fn step(&self, name: &'static str, broken_on: &'static str) -> Arc<dyn Step<Host>> {
        Arc::new(Counted {
            name,
            runs: self.runs.clone(),
            broken_on,
            broken: self.broken.clone(),
        })
    }
    fn phases(&self) -> Vec<Phase<Host>> {
        vec![
            Phase::new("persist")
                .max_unavailable(5)
                .step(self.step("write_env", "h3")),
            Phase::new("restart")
                .strategy(Strategy::Canary {
                    count: 1,
                    then: BatchSize::Percent(100),
                })
                .step(self.step("restart", ""))
                .step(self.step("check", ""))
                .step(self.step("check", "")),
        ]
    }
    fn take_runs(&self) -> Vec<String> {
        self.runs
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn resume_redoes_only_what_is_not_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.jsonl");
    let setup = Setup::new();

    // First run: h3 is down while persisting.
    let journal = Journal::open(&path, "op-1", "rotate-token").expect("open");
    let report = Engine::new(&NullReporter)
        .with_journal(journal)
        .run(setup.phases(), hosts(3))
        .await;
    assert_eq!(report.op_id, "op-1");
    assert_eq!(
        report.host("h3").map(|h| h.status),
        Some(HostStatus::Failed)
    );
    assert_eq!(report.op_status(), OpStatus::Failed);
    assert_eq!(setup.take_runs().len(), 3 + 2 * 3);

    // The operation needs --resume.
    let pending = Journal::pending_op(&path).expect("load").expect("pending");
    assert_eq!(pending.op_id, "op-1");
    assert_eq!(pending.operation, "rotate-token");
    assert_eq!(pending.ended, Some(OpStatus::Failed));
    let log = Journal::load(&path).expect("load");
    assert!(log.is_done("op-1", "h1", "persist", "write_env"));
    assert!(log.is_done("op-1", "h1", "restart", "check#2"));
    assert!(!log.is_done("op-1", "h3", "persist", "write_env"));
    assert!(!log.is_done("op-2", "h1", "persist", "write_env"));

    // The host is back: resume touches only h3.
    setup.broken.store(false, Ordering::SeqCst);
    let journal = Journal::open(&path, &pending.op_id, &pending.operation).expect("reopen");
    let report = Engine::new(&NullReporter)
        .with_journal(journal)
        .resuming(log)
        .run(setup.phases(), hosts(3))
        .await;
    assert!(report.is_success(), "{:?}", report.hosts);
    assert_eq!(
        setup.take_runs(),
        ["h3/write_env", "h3/restart", "h3/check", "h3/check"]
    );
    let earlier = report
        .timeline
        .iter()
        .filter(|s| s.status == StepStatus::DoneEarlier)
        .count();
    assert_eq!(earlier, 2 * 4);
    // Hosts done earlier are not batched: the canary of the resumed restart is h3.
    let canary: Vec<&str> = report
        .timeline
        .iter()
        .filter(|s| s.phase == "restart" && s.batch == 0 && s.status != StepStatus::DoneEarlier)
        .map(|s| s.host.as_str())
        .collect();
    assert_eq!(canary, ["h3", "h3", "h3"]);
    assert!(
        report
            .timeline
            .iter()
            .filter(|s| s.status == StepStatus::DoneEarlier)
            .all(|s| s.detail == "done earlier")
    );
    assert_eq!(Journal::pending_op(&path).expect("load"), None);
}

#[tokio::test]
async fn a_crash_leaves_an_op_without_end_and_a_torn_line_is_tolerated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.jsonl");
    let setup = Setup::new();
    setup.broken.store(false, Ordering::SeqCst);
    let journal = Journal::open(&path, "op-ok", "deploy").expect("open");
    let report = Engine::new(&NullReporter)
        .with_journal(journal)
        .run(setup.phases(), hosts(2))
        .await;
    assert!(report.is_success());
    assert_eq!(Journal::pending_op(&path).expect("load"), None);

    // A second operation "crashes" after one step line and half of another.
    let journal = Journal::open(&path, "op-crash", "deploy").expect("open");
    drop(journal);
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append");
        let line = r#"{"op":"op-crash","operation":"deploy","event":"step","phase":"persist","host":"h1","step":"write_env","status":"changed","detail":"x","time":"2026-01-01T00:00:00.000Z"}"#;
        writeln!(f, "{line}").expect("write");
        write!(
            f,
            r#"{{"op":"op-crash","operation":"deploy","event":"step","phase":"pers"#
        )
        .expect("write");
    }
    let log = Journal::load(&path).expect("a torn last line is tolerated");
    assert!(log.is_done("op-crash", "h1", "persist", "write_env"));
    let pending = log.pending_op().expect("pending");
    assert_eq!((pending.op_id.as_str(), pending.ended), ("op-crash", None));

    // Reopening cuts the torn line off, so later lines stay whole.
    let journal = Journal::open(&path, "op-crash", "deploy").expect("reopen");
    let report = Engine::new(&NullReporter)
        .with_journal(journal)
        .resuming(log)
        .run(setup.phases(), hosts(2))
        .await;
    assert!(report.is_success());
    let text = std::fs::read_to_string(&path).expect("read");
    for (i, line) in text.lines().enumerate() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "line {} is not JSON: {line}",
            i + 1
        );
    }
    assert_eq!(Journal::pending_op(&path).expect("load"), None);

    // A bad line that is not the last one is an error naming it.
    std::fs::write(&path, "garbage\n{}\n").expect("write");
    let e = Journal::load(&path).err().map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|e| e.contains("journal.jsonl:1:")),
        "{e:?}"
    );
}

/// Uses the host's token (as a real step would, sending it on stdin) and reports only its
/// fingerprint; fails on h2 with a message that names the step, not the token.
struct UsesToken {
    used: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Step<Host> for UsesToken {
    fn name(&self) -> &str {
        "write_env"
    }
    async fn run(&self, host: &mut Host, _: &StepCx) -> Result<StepOutcome, StepFailure> {
        use sha2::Digest;
        let fp = hex::encode(sha2::Sha256::digest(host.token.as_bytes()));
        self.used.fetch_add(host.token.len(), Ordering::SeqCst);
        if host.name == "h2" {
            return Err(StepFailure::new("write .env: No space left on device"));
        }
        Ok(StepOutcome::changed(format!(
            "wrote .env (fp {})",
            &fp[..12]
        )))
    }
}

#[tokio::test]
async fn the_journal_never_holds_a_secret_given_to_a_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.jsonl");
    let used = Arc::new(AtomicUsize::new(0));
    let phases = vec![
        Phase::new("persist")
            .max_unavailable(1)
            .step(Arc::new(UsesToken { used: used.clone() })),
    ];
    let fleet = hosts(3);
    let secrets: Vec<String> = fleet.iter().map(|h| h.token.clone()).collect();
    let journal = Journal::open(&path, "op-s", "rotate-token").expect("open");
    let report = Engine::new(&NullReporter)
        .with_journal(journal)
        .run(phases, fleet)
        .await;
    assert!(used.load(Ordering::SeqCst) > 0, "the steps used the secret");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains("wrote .env (fp "));
    let json = serde_json::to_string(&report).expect("json");
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "journal holds a secret");
        assert!(
            !text.contains("TOPSECRET"),
            "journal holds part of a secret"
        );
        assert!(!json.contains(s.as_str()), "--json holds a secret");
    }
    // The failure's message is not journaled either (only names, status, time).
    assert!(!text.contains("No space left"));
    assert!(text.contains(r#""status":"failed""#));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
    }
}
