//! Connector readiness, read from cloudflared's metrics server on the host's loopback
//! through the SSH connection: the tunnel's own range of five ports (`tunnel_metrics_port`,
//! default 20241-20245), published from cloudflared's 20241-20245 in the proxy's network
//! namespace (the first free one per connector).
//!
//! A stopping cloudflared keeps answering `/ready` during its grace period, so a gate after a
//! connector change must wait for a connector id it has not seen before, not for whichever
//! connector answers.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::http;
use crate::ssh::Session;

/// A tunnel's metrics ports on the host ([`crate::stack::StackSettings::metrics_ports`]).
pub type MetricsPorts = std::ops::RangeInclusive<u16>;

/// How a range reads in messages: `127.0.0.1:20241-20245`.
pub fn describe_ports(ports: &MetricsPorts) -> String {
    format!("127.0.0.1:{}-{}", ports.start(), ports.end())
}

/// One connector's answer on `/ready`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectorReady {
    /// The metrics port it answered on.
    pub port: u16,
    /// HTTP status (200 ready, 503 not yet).
    pub status: u16,
    /// Registered connections to the edge.
    pub ready_connections: u64,
    /// The connector's id.
    pub connector_id: Option<String>,
}

impl ConnectorReady {
    /// Ready: 200 with at least one registered connection.
    pub fn is_ready(&self) -> bool {
        self.status == 200 && self.ready_connections > 0
    }
}

/// Every connector answering on the tunnel's metrics ports `ports` (probed concurrently).
pub async fn connectors(session: &Session, ports: MetricsPorts) -> Vec<ConnectorReady> {
    let ports: Vec<u16> = ports.collect();
    probe_ports(session, &ports).await
}

/// The connectors answering on `ports` (probed concurrently, each a direct-tcpip channel).
pub async fn probe_ports(session: &Session, ports: &[u16]) -> Vec<ConnectorReady> {
    let probes = ports.iter().map(|&port| async move {
        let r = http::get(session, port, "/ready", Duration::from_secs(5)).await;
        r.ok().map(|resp| ready_from(port, &resp))
    });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The `/ready` answer on a connection to `port` opened earlier (one round trip), within
/// five seconds; `None` when there was no HTTP answer.
pub async fn probe_over(
    stream: russh::ChannelStream<russh::client::Msg>,
    port: u16,
) -> Option<ConnectorReady> {
    tokio::time::timeout(
        Duration::from_secs(5),
        http::get_over(stream, port, "/ready"),
    )
    .await
    .ok()?
    .ok()
    .map(|resp| ready_from(port, &resp))
}

fn ready_from(port: u16, resp: &http::Response) -> ConnectorReady {
    let v: serde_json::Value = serde_json::from_str(&resp.body).unwrap_or_default();
    ConnectorReady {
        port,
        status: resp.status,
        ready_connections: v["readyConnections"].as_u64().unwrap_or(0),
        connector_id: v["connectorId"].as_str().map(str::to_string),
    }
}

/// The ids of the connectors answering on `ports` now (ready or not).
pub async fn connector_ids(session: &Session, ports: MetricsPorts) -> BTreeSet<String> {
    connectors(session, ports)
        .await
        .into_iter()
        .filter_map(|c| c.connector_id)
        .collect()
}

/// Waits until a connector on `ports` whose id is not in `old` is ready, or the deadline
/// passes. Returns it, with the time waited.
pub async fn wait_new_ready(
    session: &Session,
    ports: MetricsPorts,
    old: &BTreeSet<String>,
    timeout: Duration,
) -> Result<(ConnectorReady, Duration), String> {
    let started = Instant::now();
    let last = loop {
        let now = connectors(session, ports.clone()).await;
        if let Some(c) = now
            .iter()
            .find(|c| c.is_ready() && c.connector_id.as_ref().is_none_or(|id| !old.contains(id)))
        {
            return Ok((c.clone(), started.elapsed()));
        }
        if started.elapsed() >= timeout {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seen: Vec<String> = last
        .iter()
        .map(|c| {
            format!(
                "port {}: {} ({} connections{})",
                c.port,
                c.status,
                c.ready_connections,
                if c.connector_id.as_ref().is_some_and(|id| old.contains(id)) {
                    ", the old connector"
                } else {
                    ""
                }
            )
        })
        .collect();
    Err(format!(
        "no new connector became ready within {timeout:?} ({})",
        if seen.is_empty() {
            format!("nothing answers on {}", describe_ports(&ports))
        } else {
            seen.join("; ")
        }
    ))
}
