//! Operations on hosts: the I/O-doing pieces the verbs are made of (readiness probes, fleet
//! connection, the deploy and rotation steps run by the rollout engine).

pub mod audit;
pub mod deploy;
pub mod fleet;
pub mod health;
pub mod host_state;
pub mod http;
pub mod renew;
pub mod rotate;
pub mod setup;
pub mod tls_probe;
pub mod unlock;
pub mod upgrade;

/// A step failure from an SSH error: its message and hint (one mapping for every step).
pub(crate) fn ssh_failure(e: crate::ssh::SshError) -> crate::rollout::StepFailure {
    let f = crate::rollout::StepFailure::new(e.message);
    match e.hint {
        Some(h) => f.with_hint(h),
        None => f,
    }
}

/// An error that ends an operation before or outside its per-host report: the process exit
/// code (2 bad input, nothing touched; 1 a host failed; 3 the run could not start) and a
/// message without secrets.
#[derive(Debug)]
pub struct OpError {
    /// The exit code.
    pub code: i32,
    /// The message.
    pub message: String,
}

impl OpError {
    /// Bad input (exit 2): nothing was touched.
    pub fn input(message: impl Into<String>) -> Self {
        OpError {
            code: 2,
            message: message.into(),
        }
    }
}

/// A live progress display an engine run reports to.
pub trait LiveProgress: crate::rollout::Reporter {
    /// Clears the display (the recap follows).
    fn finish(&self);
}

/// The operator's side of an operation: a progress display per engine run, and notices.
pub trait OpUi: Sync {
    /// A progress display for an engine run of `operation` over `inputs`.
    fn progress(&self, operation: &str, inputs: &[deploy::HostInput]) -> Box<dyn LiveProgress>;
    /// A line for the operator (stderr), between runs.
    fn notice(&self, line: &str);
}
