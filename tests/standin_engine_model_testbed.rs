//! What a real Docker Engine showed (tests/realengine_testbed.rs), now in the testbed's model
//! of Docker (tests/testbed/lib/standin_docker.py), so every stand-in testbed test sees it:
//! - `docker inspect` shows a `network_mode: service:X` container's `HostConfig.NetworkMode`
//!   as `container:<X's full id>`;
//! - a proxy restarted by its restart policy (its process killed by a signal) starts in a new
//!   network namespace and the connector stays in the old one: `status` names the cause,
//!   `deploy` repairs it by recreating the connector, the edge sees the host's new connector;
//! - `testbed fault HOST engine-down`: every docker command fails as against a stopped dockerd;
//!   `status` and `deploy` say the engine is down (never "nothing runs"), `engine-up` heals.

mod common;

use common::{Testbed, describe};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Fleet {
    tb: Testbed,
    state: String,
}

impl Fleet {
    fn up() -> Fleet {
        let tb = Testbed::up(2, &[]);
        let state = tb.state_with_ca();
        Fleet { tb, state }
    }

    fn file(&self, name: &str) -> String {
        self.tb.file(name)
    }

    fn tf(&self, verb: &str, extra: &[&str]) -> Output {
        self.tb.tf_in(&self.state, verb, extra)
    }

    /// (service, name, full id) of the stack's containers on HOST, sorted.
    fn containers(&self, host: &str) -> Vec<(String, String, String)> {
        let out = self.tb.host_exec(
            host,
            "docker inspect -f '{{index .Config.Labels \"com.docker.compose.service\"}} {{.Name}} {{.Id}}' \
             $(docker ps -aq --filter label=com.docker.compose.project=mcp-tunnel-testbed)",
        );
        let mut v: Vec<(String, String, String)> = out
            .lines()
            .filter_map(|l| {
                let mut it = l.split(' ');
                Some((
                    it.next()?.to_string(),
                    it.next()?.trim_start_matches('/').to_string(),
                    it.next()?.to_string(),
                ))
            })
            .collect();
        v.sort();
        v
    }

    fn inspect(&self, host: &str, fmt: &str, name: &str) -> String {
        self.tb
            .host_exec(host, &format!("docker inspect -f '{fmt}' {name}"))
            .trim()
            .to_string()
    }

    fn host_status(&self, host: &str) -> Value {
        self.tb.host_status(&self.state, host)
    }

    /// Polls `status` until HOST is ok.
    fn wait_ok(&self, host: &str, what: &str) -> Value {
        self.tb.wait_host_ok(&self.state, host, what)
    }
}

/// Polls the edge until every host has connectors up on `token` and on no other.
fn wait_edge_on(f: &Fleet, token: &str, what: &str) {
    f.tb.wait_edge_on(token, what);
}

fn by_service(v: &[(String, String, String)], svc: &str) -> Vec<(String, String)> {
    v.iter()
        .filter(|c| c.0 == svc)
        .map(|c| (c.1.clone(), c.2.clone()))
        .collect()
}

#[test]
fn the_model_shows_container_network_mode_a_lost_namespace_and_an_engine_down() {
    let f = Fleet::up();
    let token = std::fs::read_to_string(f.file("token")).expect("token");
    let out = f.tf("deploy", &["--token-file", &f.file("token")]);
    assert!(out.status.success(), "first deploy: {}", describe(&out));
    for h in ["h1", "h2"] {
        f.wait_ok(h, "the first deploy");
    }
    wait_edge_on(&f, &token, "the first deploy");

    // 1. NetworkMode: `container:<the proxy's full id>`, as Compose sets it on Docker.
    let ctrs = f.containers("h1");
    let proxy = by_service(&ctrs, "mcp-proxy");
    let conn = by_service(&ctrs, "cloudflared");
    assert_eq!((proxy.len(), conn.len()), (1, 1), "{ctrs:?}");
    let (proxy, conn) = (proxy[0].clone(), conn[0].clone());
    assert_eq!(proxy.1.len(), 64, "{proxy:?}");
    assert_eq!(
        f.inspect("h1", "{{.HostConfig.NetworkMode}}", &conn.0),
        format!("container:{}", proxy.1)
    );

    // 2. The proxy's process killed by a signal: the restart policy restarts it (same
    // container, a new namespace); the connector stays in the old one.
    let pid: i32 = f
        .inspect("h1", "{{.State.Pid}}", &proxy.0)
        .parse()
        .expect("proxy pid");
    assert!(pid > 0);
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let end = Instant::now() + Duration::from_secs(60);
    while f.inspect("h1", "{{.RestartCount}} {{.State.Status}}", &proxy.0) != "1 running" {
        assert!(
            Instant::now() < end,
            "the restart policy did not restart the proxy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(f.containers("h1"), ctrs, "a restart keeps the containers");
    let h1 = f.host_status("h1");
    assert_eq!(h1["ok"], false, "{h1}");
    let lost = h1["connector_netns_lost"].as_str().unwrap_or_default();
    assert!(
        lost.contains("connector lost the proxy's network after the proxy restarted")
            && lost.contains("tunnelfleet deploy"),
        "{h1}"
    );
    assert_eq!(f.host_status("h2")["ok"], true);

    // deploy repairs it: a new connector in the proxy's namespace, the proxy and h2 untouched.
    let h2_before = f.containers("h2");
    let edge_before = f.tb.edge_stats();
    let out = f.tf("deploy", &["--token-file", &f.file("token")]);
    assert!(out.status.success(), "repairing deploy: {}", describe(&out));
    f.wait_ok("h1", "the repairing deploy");
    let after = f.containers("h1");
    assert_eq!(by_service(&after, "mcp-proxy"), vec![proxy.clone()]);
    let new_conn = by_service(&after, "cloudflared");
    assert_eq!(new_conn.len(), 1, "{after:?}");
    assert_ne!(new_conn[0].1, conn.1, "the connector was recreated");
    assert_eq!(
        f.inspect("h1", "{{.HostConfig.NetworkMode}}", &new_conn[0].0),
        format!("container:{}", proxy.1)
    );
    assert_eq!(f.containers("h2"), h2_before);
    // The edge sees h1 on a connector it did not have before the repair (the new one).
    wait_edge_on(&f, &token, "the repairing deploy");
    let h1_connectors = |stats: &Value| {
        stats["current"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c["host"] == "h1")
            .map(|c| c["connector"].to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (was, now) = (
        h1_connectors(&edge_before),
        h1_connectors(&f.tb.edge_stats()),
    );
    assert!(
        !now.is_empty() && now.is_disjoint(&was),
        "edge: h1 was on {was:?}, is on {now:?}"
    );

    // 3. The engine down: every docker command fails as against a stopped dockerd.
    f.tb.fault("h2", "engine-down");
    let out = f.tb.testbed(&["exec", "h2", "--", "sh", "-c", "docker ps"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. \
             Is the docker daemon running?"
        ),
        "{}",
        describe(&out)
    );
    let h2 = f.host_status("h2");
    assert_eq!(h2["ok"], false, "{h2}");
    let err = h2["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("Docker engine down") && err.contains("start the Docker engine"),
        "{h2}"
    );
    let out = f.tf("deploy", &["--token-file", &f.file("token")]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = describe(&out);
    assert!(text.contains("Docker engine down"), "{text}");
    assert!(!text.contains("start every service"), "{text}");
    assert_eq!(f.host_status("h1")["ok"], true, "h1 is not h2's engine");

    // The engine back: nothing was lost, status is ok again and deploy has nothing to do.
    f.tb.fault("h2", "engine-up");
    f.wait_ok("h2", "engine-up");
    assert_eq!(f.containers("h2"), h2_before);
    let out = f.tf("deploy", &["--token-file", &f.file("token")]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(f.containers("h2"), h2_before);
    wait_edge_on(&f, &token, "engine-up");
}
