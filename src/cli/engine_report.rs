//! Glue between the rollout engine and the terminal: the progress display as an engine
//! reporter. Step names become plain words ([`super::progress::phrase`]); batches and the
//! canary show as `batch 2/5` and `waiting for canary h1`.

use super::progress::{Progress, phrase};
use crate::rollout::Reporter;

impl Reporter for Progress {
    fn step(&self, host: &str, _phase: &str, step: &str) {
        Progress::step(self, host, &phrase(step));
    }

    fn host_done(&self, host: &str, phase: &str, ok: bool, msg: &str) {
        if ok {
            return;
        }
        if msg.starts_with("skipped") {
            Progress::skipped(self, host, msg);
        } else {
            Progress::done(self, host, false, &format!("at {phase}: {msg}"));
        }
    }

    fn batch(&self, phase: &str, index: usize, count: usize, hosts: &[String]) {
        Progress::batch(self, phase, index, count, hosts);
    }
}

impl crate::ops::LiveProgress for Progress {
    fn finish(&self) {
        Progress::finish(self);
    }

    fn working(&self, host: &str, what: &str) {
        Progress::step(self, host, what);
    }

    fn done(&self, host: &str, ok: bool, msg: &str) {
        Progress::done(self, host, ok, msg);
    }
}

/// The terminal as an operation's operator side: the progress display on stderr for each
/// engine run, notices on stderr.
pub struct TerminalUi;

impl crate::ops::OpUi for TerminalUi {
    fn progress(
        &self,
        operation: &str,
        tunnels: &[String],
        hosts: &[String],
    ) -> Box<dyn crate::ops::LiveProgress> {
        Box::new(Progress::for_tunnels(operation, tunnels, hosts))
    }

    fn notice(&self, line: &str) {
        eprintln!("{line}");
    }
}
