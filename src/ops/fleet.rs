//! The selected hosts of a run and their connections.

use std::sync::Arc;

use indexmap::IndexMap;

use crate::inventory::Connection;
use crate::ssh::{Connector, Session, SshError, Target};

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

/// Connects to every host at once (connection starts bounded by the connector), in input
/// order.
pub async fn connect_all(
    connector: &Arc<Connector>,
    hosts: &[FleetHost],
) -> Vec<Result<Arc<Session>, SshError>> {
    let futs = hosts.iter().map(|h| {
        let c = connector.clone();
        let t = h.target.clone();
        async move { c.connect(&t).await.map(Arc::new) }
    });
    futures::future::join_all(futs).await
}
