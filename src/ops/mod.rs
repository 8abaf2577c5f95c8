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
