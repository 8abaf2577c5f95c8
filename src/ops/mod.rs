//! Operations on hosts: the I/O-doing pieces the verbs are made of (readiness probes, fleet
//! connection, the deploy and rotation steps run by the rollout engine).

pub mod audit;
pub mod check;
pub mod deploy;
pub mod fleet;
pub mod health;
pub mod host_state;
pub mod http;
pub mod releases;
pub mod renew;
pub mod rotate;
pub mod setup;
pub mod status;
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
    /// Outside an engine run: `host` is at `what` (plain words).
    fn working(&self, host: &str, what: &str);
    /// Outside an engine run: `host` is done, `ok` or not, with a one-line summary.
    fn done(&self, host: &str, ok: bool, msg: &str);
}

/// The operator's side of an operation: a progress display per engine run, and notices.
pub trait OpUi: Sync {
    /// A progress display for a run of `operation` of `tunnels` over `hosts`.
    fn progress(
        &self,
        operation: &str,
        tunnels: &[String],
        hosts: &[String],
    ) -> Box<dyn LiveProgress>;
    /// A line for the operator (stderr), between runs.
    fn notice(&self, line: &str);
}

/// The tunnels of `inputs`, in order of first appearance, and the hosts' names (what a
/// progress display is headed by).
pub fn tunnels_and_hosts(inputs: &[deploy::HostInput]) -> (Vec<String>, Vec<String>) {
    let mut tunnels: Vec<String> = Vec::new();
    for i in inputs {
        if !tunnels.contains(&i.settings.tunnel_name) {
            tunnels.push(i.settings.tunnel_name.clone());
        }
    }
    let names = inputs.iter().map(|i| i.host.name.clone()).collect();
    (tunnels, names)
}
