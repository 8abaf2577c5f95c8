//! The selected hosts of a run.

use indexmap::IndexMap;

use crate::inventory::Connection;
use crate::ssh::Target;

/// A selected host: its inventory name, merged vars, connection settings and SSH target.
#[derive(Debug, Clone)]
pub struct FleetHost {
    /// Inventory name.
    pub name: String,
    /// Merged inventory vars.
    pub vars: IndexMap<String, serde_json::Value>,
    /// Connection settings from the inventory.
    pub conn: Connection,
    /// Where to connect, after ssh_config defaults.
    pub target: Target,
}
