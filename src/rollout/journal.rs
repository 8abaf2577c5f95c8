//! The rollout journal: an append-only file of JSON lines, fsync'd line by line, recording
//! which step finished on which host for which operation, so that `--resume` after a crash
//! (or for a host that was down) redoes only what is not done.
//!
//! It records names (operation, phase, host, step), statuses, times and the steps'
//! secret-free `detail` strings; never a failure message, never a parameter of a step. A line
//! looks like:
//!
//! ```text
//! {"op":"20260519T101500Z-1a2b3c","operation":"rotate-token","event":"step","phase":"apply","host":"h1","step":"write_env","status":"changed","detail":"wrote .env","time":"2026-05-19T10:15:01.123Z"}
//! ```
//!
//! `event` is `op_start` (written by [`Journal::open`]), `step`, or `op_end` (written when the
//! engine's run ends, with the operation's [`OpStatus`]).

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How an operation ended, as recorded in its `op_end` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    /// Every host passed every phase.
    Ok,
    /// Some hosts failed or were skipped, but no phase halted the rollout.
    Failed,
    /// A canary failed or a phase exceeded its failure budget.
    Halted,
    /// A stop was requested.
    Stopped,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Line {
    op: String,
    operation: String,
    event: Event,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<String>,
    /// For steps: `ok`, `changed` or `failed`; for `op_end`: an [`OpStatus`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    time: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Event {
    OpStart,
    Step,
    OpEnd,
}

/// An open journal, appending lines for one operation. Cheap to clone (clones share the file).
#[derive(Clone, Debug)]
pub struct Journal {
    file: Arc<Mutex<File>>,
    path: PathBuf,
    op_id: Arc<str>,
    operation: Arc<str>,
}

impl Journal {
    /// Opens (or creates, mode 0600) the journal at `path` for operation `op_id` named
    /// `operation` (e.g. `rotate-token`), and records the operation's start. Reopening with
    /// the id of an earlier operation continues it (that is `--resume`). A torn last line left
    /// by a crash is cut off first, so the file stays one JSON document per line.
    ///
    /// Blocking file I/O: call it before the rollout starts (or from `spawn_blocking`).
    pub fn open(path: &Path, op_id: &str, operation: &str) -> io::Result<Journal> {
        let created = !path.exists();
        let mut opts = OpenOptions::new();
        opts.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)?;
        if text.last().is_some_and(|b| *b != b'\n') {
            let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64)?;
            file.seek(SeekFrom::End(0))?;
        }
        if created {
            sync_parent(path)?;
        }
        let journal = Journal {
            file: Arc::new(Mutex::new(file)),
            path: path.to_owned(),
            op_id: Arc::from(op_id),
            operation: Arc::from(operation),
        };
        journal.append_now(&journal.line(Event::OpStart))?;
        Ok(journal)
    }

    /// Reads the journal at `path` back. A last line that does not parse (torn by a crash) is
    /// ignored; a bad line elsewhere is an error naming its line number. A missing file reads
    /// as an empty journal.
    pub fn load(path: &Path) -> io::Result<JournalLog> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let mut log = JournalLog::default();
        for (i, raw) in lines.iter().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Line>(raw) {
                Ok(line) => log.add(line),
                Err(_) if i + 1 == lines.len() => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}:{}: not a journal line: {e}", path.display(), i + 1),
                    ));
                }
            }
        }
        Ok(log)
    }

    /// The last operation in the journal at `path` that needs `--resume`: one with no end
    /// recorded (the controller died), or one that ended other than [`OpStatus::Ok`] (a host
    /// was down, a canary failed, a stop was requested). `None` when the last operation ended
    /// ok, or the journal is empty or missing.
    pub fn pending_op(path: &Path) -> io::Result<Option<PendingOp>> {
        Ok(Journal::load(path)?.pending_op())
    }

    /// The operation id this journal records.
    pub fn op_id(&self) -> &str {
        &self.op_id
    }

    /// The operation name this journal records.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn line(&self, event: Event) -> Line {
        Line {
            op: self.op_id.to_string(),
            operation: self.operation.to_string(),
            event,
            phase: None,
            host: None,
            step: None,
            status: None,
            detail: None,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    /// Records a step's end: `status` is `ok`, `changed` or `failed`; `detail` must be
    /// secret-free (it is a [`super::StepOutcome::detail`]).
    pub(crate) async fn step(
        &self,
        phase: &str,
        host: &str,
        step: &str,
        status: &str,
        detail: Option<&str>,
    ) -> io::Result<()> {
        let mut line = self.line(Event::Step);
        line.phase = Some(phase.to_owned());
        line.host = Some(host.to_owned());
        line.step = Some(step.to_owned());
        line.status = Some(status.to_owned());
        line.detail = detail.map(str::to_owned);
        self.append(line).await
    }

    /// Records the operation's end.
    pub(crate) async fn end(&self, status: OpStatus) -> io::Result<()> {
        let mut line = self.line(Event::OpEnd);
        line.status = Some(op_status_str(status).to_owned());
        self.append(line).await
    }

    async fn append(&self, line: Line) -> io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.append_now(&line))
            .await
            .map_err(io::Error::other)?
    }

    fn append_now(&self, line: &Line) -> io::Result<()> {
        let mut text = serde_json::to_string(line).map_err(io::Error::other)?;
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(text.as_bytes())?;
        file.sync_data()
    }
}

fn op_status_str(s: OpStatus) -> &'static str {
    match s {
        OpStatus::Ok => "ok",
        OpStatus::Failed => "failed",
        OpStatus::Halted => "halted",
        OpStatus::Stopped => "stopped",
    }
}

fn parse_op_status(s: &str) -> Option<OpStatus> {
    match s {
        "ok" => Some(OpStatus::Ok),
        "failed" => Some(OpStatus::Failed),
        "halted" => Some(OpStatus::Halted),
        "stopped" => Some(OpStatus::Stopped),
        _ => None,
    }
}

/// Makes a new file's directory entry durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// An operation that needs `--resume`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingOp {
    /// Its id, to reopen the journal with.
    pub op_id: String,
    /// Its name (e.g. `rotate-token`).
    pub operation: String,
    /// How it ended, if an end was recorded (`None`: the controller died mid-run).
    pub ended: Option<OpStatus>,
}

#[derive(Clone, Debug, Default)]
struct OpState {
    operation: String,
    ended: Option<OpStatus>,
}

/// A journal read back by [`Journal::load`].
#[derive(Clone, Debug, Default)]
pub struct JournalLog {
    /// Operations in the order of their latest start.
    ops: IndexMap<String, OpState>,
    /// (op, host, phase, step) -> whether the latest record says done.
    steps: HashMap<(String, String, String, String), bool>,
}

impl JournalLog {
    fn add(&mut self, line: Line) {
        match line.event {
            Event::OpStart => {
                // A restart moves the op to the end: it is the latest.
                self.ops.shift_remove(&line.op);
                self.ops.insert(
                    line.op,
                    OpState {
                        operation: line.operation,
                        ended: None,
                    },
                );
            }
            Event::OpEnd => {
                let st = self.ops.entry(line.op).or_insert_with(|| OpState {
                    operation: line.operation,
                    ended: None,
                });
                st.ended = Some(
                    line.status
                        .as_deref()
                        .and_then(parse_op_status)
                        .unwrap_or(OpStatus::Failed),
                );
            }
            Event::Step => {
                let (Some(host), Some(phase), Some(step)) = (line.host, line.phase, line.step)
                else {
                    return;
                };
                let done = matches!(line.status.as_deref(), Some("ok" | "changed"));
                self.steps.insert((line.op, host, phase, step), done);
            }
        }
    }

    /// Whether `step` of `phase` was recorded done (ok or changed) on `host` for operation
    /// `op_id`. A step that appears twice in a phase is journaled as `name#2` for its second
    /// occurrence, and so on.
    pub fn is_done(&self, op_id: &str, host: &str, phase: &str, step: &str) -> bool {
        self.steps
            .get(&(
                op_id.to_owned(),
                host.to_owned(),
                phase.to_owned(),
                step.to_owned(),
            ))
            .copied()
            .unwrap_or(false)
    }

    /// The last operation that needs `--resume` (see [`Journal::pending_op`]).
    pub fn pending_op(&self) -> Option<PendingOp> {
        let (op_id, st) = self.ops.last()?;
        if st.ended == Some(OpStatus::Ok) {
            return None;
        }
        Some(PendingOp {
            op_id: op_id.clone(),
            operation: st.operation.clone(),
            ended: st.ended,
        })
    }

    /// The ids of the operations recorded, oldest first (by their latest start).
    pub fn op_ids(&self) -> impl Iterator<Item = &str> {
        self.ops.keys().map(String::as_str)
    }
}
