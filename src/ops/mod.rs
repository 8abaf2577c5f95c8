//! Operations on hosts: the I/O-doing pieces the verbs are made of (readiness probes, fleet
//! connection, the deploy and rotation steps run by the rollout engine).

pub mod audit;
pub mod deploy;
pub mod fleet;
pub mod health;
pub mod host_state;
pub mod http;
pub mod rotate;
pub mod setup;
pub mod tls_probe;
pub mod upgrade;

/// A step failure from an SSH error: its message and hint (one mapping for every step).
pub(crate) fn ssh_failure(e: crate::ssh::SshError) -> crate::rollout::StepFailure {
    let f = crate::rollout::StepFailure::new(e.message);
    match e.hint {
        Some(h) => f.with_hint(h),
        None => f,
    }
}
