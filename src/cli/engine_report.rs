//! Glue between the rollout engine and the terminal: the progress display as an engine
//! reporter.

use super::progress::Progress;
use crate::rollout::Reporter;

impl Reporter for Progress {
    fn step(&self, host: &str, phase: &str, step: &str) {
        Progress::step(self, host, &format!("{phase}: {step}"));
    }

    fn host_done(&self, host: &str, phase: &str, ok: bool, msg: &str) {
        if !ok {
            Progress::done(self, host, false, &format!("{phase}: {msg}"));
        }
    }
}
