//! tunnelfleet: run the MCP tunnel stack (mcp-proxy + cloudflared under Docker Compose) on a
//! fleet of hosts over SSH.
//!
//! Layers, dependencies pointing down only (see docs/decisions.md):
//! `cli` -> `rollout`/`playbook` -> `stack` -> `remote` -> `ssh` -> `inventory`, with `pki` and
//! `secrets` beside them.

pub mod cli;
pub mod duration;
pub mod fsread;
pub mod fuzzing;
pub mod inventory;
pub mod ops;
pub mod pki;
pub mod playbook;
pub mod remote;
pub mod rollout;
pub mod secrets;
pub mod ssh;
pub mod stack;
pub mod state;
