//! The stack on a real Docker Engine with real Compose v1 and v2 (`testbed up --engine
//! docker`): what only a real engine does. Each host runs its own dockerd; the images are the
//! test images of tests/testbed/engine-images (no registry). A proxy killed by a signal is
//! restarted by Docker's restart policy in a new network namespace while the connector stays
//! in the old one: status names it, rotate-token's preflight names the repair, deploy repairs
//! it. A stopped engine is "engine down", not "nothing runs". A restarted engine brings the
//! stack back by the restart policies with the token from `.env`. `down` leaves nothing.

mod common;

use common::{Testbed, describe, fewest_hosts_up, fp, repo_root};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Fleet {
    tb: Testbed,
    state: String,
    compose: &'static str,
}

impl Fleet {
    fn up(compose: &'static str) -> Fleet {
        let tb = Testbed::up(2, &["--engine", "docker", "--compose", compose]);
        let out = Command::new(repo_root().join("tests/testbed/engine-images/build"))
            .arg(tb.path())
            .output()
            .expect("run engine-images/build");
        assert!(out.status.success(), "engine images: {}", describe(&out));
        // The test images, referenced by tag.
        let inv = tb.inventory();
        let text = std::fs::read_to_string(&inv).expect("inventory");
        let text = text.replacen(
            "        tunnel_name: testbed\n",
            "        tunnel_name: testbed\n        allow_unpinned_images: true\n        \
             mcp_proxy_image: tunnelfleet-test/mcp-proxy:standin\n        \
             cloudflared_image: tunnelfleet-test/cloudflared:standin\n",
            1,
        );
        std::fs::write(&inv, text).expect("write inventory");
        let state = tb.state_with_ca();
        Fleet { tb, state, compose }
    }

    fn file(&self, name: &str) -> String {
        self.tb.file(name)
    }

    fn tf(&self, verb: &str, extra: &[&str]) -> Output {
        self.tb.tf_in(&self.state, verb, extra)
    }

    /// `docker ARGS` against HOST's own dockerd, from the controller.
    fn docker(&self, host: &str, args: &[&str]) -> String {
        let sock = self
            .tb
            .path()
            .join(format!("hosts/{host}/engine/docker.sock"));
        let out = Command::new("/usr/bin/docker")
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", sock.display()))
            .output()
            .expect("run docker");
        assert!(
            out.status.success(),
            "docker {args:?} on {host}: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// (name, full id) of the stack's containers on HOST, by service.
    fn containers(&self, host: &str) -> Vec<(String, String, String)> {
        let out = self.docker(
            host,
            &[
                "ps",
                "-a",
                "--no-trunc",
                "--filter",
                "label=com.docker.compose.project=mcp-tunnel-testbed",
                "--format",
                "{{.Label \"com.docker.compose.service\"}} {{.Names}} {{.ID}}",
            ],
        );
        let mut v: Vec<(String, String, String)> = out
            .lines()
            .filter_map(|l| {
                let mut it = l.split(' ');
                Some((
                    it.next()?.to_string(),
                    it.next()?.to_string(),
                    it.next()?.to_string(),
                ))
            })
            .collect();
        v.sort();
        v
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

fn run_stack_on_a_real_engine(compose: &'static str) {
    let f = Fleet::up(compose);
    let token = std::fs::read_to_string(f.file("token")).expect("token");

    // First deploy, on the real Compose of the testbed: the edge sees every host.
    let out = f.tf("deploy", &["--token-file", &f.file("token")]);
    assert!(out.status.success(), "first deploy: {}", describe(&out));
    for h in ["h1", "h2"] {
        let st = f.wait_ok(h, "the first deploy");
        assert_eq!(st["connector_token_fingerprint"], fp(&token), "{st}");
    }
    wait_edge_on(&f, &token, "the first deploy");
    let sep = if f.compose == "v1" { "_" } else { "-" };
    let names: Vec<String> = f.containers("h1").into_iter().map(|c| c.1).collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with(&format!("mcp-tunnel-testbed{sep}"))),
        "Compose {} names its containers with {sep}: {names:?}",
        f.compose
    );

    // A no-op deploy recreates nothing.
    let before = (f.containers("h1"), f.containers("h2"));
    let out = f.tf("deploy", &["--token-file", &f.file("token")]);
    assert!(out.status.success(), "no-op deploy: {}", describe(&out));
    assert_eq!(before, (f.containers("h1"), f.containers("h2")));

    // rotate-token, make-before-break: per the edge, no host is ever without a connector,
    // and each ends with one connector container, on the new token (Compose v2 removes the
    // highest-numbered container on a scale-down: the old ones go by name first).
    let edge = f.tb.testbed(&["edge-rotate"]);
    assert!(edge.status.success(), "{}", describe(&edge));
    let token = std::fs::read_to_string(f.file("token.next")).expect("token.next");
    let before = f.tb.edge_stats();
    let out = f.tf("rotate-token", &["--token-file", &f.file("token.next")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "rotate-token: {}",
        describe(&out)
    );
    wait_edge_on(&f, &token, "rotate-token");
    assert_eq!(fewest_hosts_up(&before, &f.tb.edge_stats()), 2);
    for h in ["h1", "h2"] {
        let conns: Vec<_> = f
            .containers(h)
            .into_iter()
            .filter(|c| c.0 == "cloudflared")
            .collect();
        assert_eq!(conns.len(), 1, "{h}: {conns:?}");
        assert_eq!(f.host_status(h)["connector_token_fingerprint"], fp(&token));
    }

    // The proxy killed by a signal: Docker restarts it in a new network namespace; the
    // connector stays "Up" in the old one.
    let proxy = f
        .containers("h1")
        .into_iter()
        .find(|c| c.0 == "mcp-proxy")
        .expect("proxy on h1");
    let pid: i32 = f
        .docker("h1", &["inspect", "-f", "{{.State.Pid}}", &proxy.1])
        .parse()
        .expect("proxy pid");
    assert!(pid > 0);
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let end = Instant::now() + Duration::from_secs(60);
    while f.docker(
        "h1",
        &[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.Status}}",
            &proxy.1,
        ],
    ) != "1 running"
    {
        assert!(
            Instant::now() < end,
            "the restart policy did not restart the proxy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let h1 = f.host_status("h1");
    assert_eq!(h1["ok"], false, "{h1}");
    let lost = h1["connector_netns_lost"].as_str().unwrap_or_default();
    assert!(
        lost.contains("connector lost the proxy's network after the proxy restarted")
            && lost.contains("tunnelfleet deploy"),
        "{h1}"
    );
    assert_eq!(f.host_status("h2")["ok"], true);

    // rotate-token refuses in preflight (before any token is used) and names the repair.
    std::fs::write(
        f.file("token.unused"), // A well-formed token the edge never saw: preflight refuses before it is used.
        "eyJhIjoicHJlZmxpZ2h0IiwidCI6InJlZnVzZXMiLCJzIjoiYm1WMlpYSXRkWE5sWkE9PSJ9\n",
    )
    .expect("token");
    std::fs::set_permissions(
        f.file("token.unused"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod token");
    let out = f.tf("rotate-token", &["--token-file", &f.file("token.unused")]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = describe(&out);
    assert!(
        text.contains("connector lost the proxy's network")
            && text.contains("`tunnelfleet deploy`"),
        "{text}"
    );
    assert_eq!(
        f.host_status("h2")["connector_token_fingerprint"],
        fp(&token),
        "the refused rotation moved nothing"
    );

    // deploy repairs it: the connector is recreated into the proxy's namespace (the edge sees
    // h1 again), the proxy and the other host are left alone.
    let (h1_before, h2_before) = (f.containers("h1"), f.containers("h2"));
    let out = f.tf("deploy", &["--token-file", &f.file("token.next")]);
    assert!(out.status.success(), "repairing deploy: {}", describe(&out));
    f.wait_ok("h1", "the repairing deploy");
    wait_edge_on(&f, &token, "the repairing deploy");
    let h1_after = f.containers("h1");
    let id = |v: &[(String, String, String)], svc: &str| {
        v.iter()
            .filter(|c| c.0 == svc)
            .map(|c| c.2.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(id(&h1_before, "mcp-proxy"), id(&h1_after, "mcp-proxy"));
    assert_ne!(id(&h1_before, "cloudflared"), id(&h1_after, "cloudflared"));
    assert_eq!(id(&h1_after, "cloudflared").len(), 1, "{h1_after:?}");
    assert_eq!(h2_before, f.containers("h2"));

    // The engine stopped: "engine down", never "nothing runs".
    let pidfile = f.tb.path().join("hosts/h2/engine/docker.pid");
    let dpid = std::fs::read_to_string(&pidfile).expect("dockerd pidfile");
    let dpid = dpid.trim().to_string();
    assert!(
        Command::new("kill")
            .arg(&dpid)
            .status()
            .expect("kill")
            .success()
    );
    let end = Instant::now() + Duration::from_secs(60);
    while std::path::Path::new(&format!("/proc/{dpid}")).exists() {
        assert!(Instant::now() < end, "dockerd did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let h2 = f.host_status("h2");
    let err = h2["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("Docker engine down") && err.contains("start the Docker engine"),
        "{h2}"
    );
    let out = f.tf("deploy", &["--token-file", &f.file("token.next")]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = describe(&out);
    assert!(text.contains("Docker engine down"), "{text}");
    assert!(!text.contains("start every service"), "{text}");

    // The engine back (a reboot): the restart policies bring the stack back with the token
    // from .env, and the edge sees the host again.
    f.tb.fault("h2", "reboot");
    let h2 = f.wait_ok("h2", "dockerd came back");
    assert_eq!(h2["connector_token_fingerprint"], fp(&token), "{h2}");
    wait_edge_on(&f, &token, "the reboot");
    if f.compose == "v1" {
        // The slow cases once (Compose v1 only): a config change, and a bad release rolled
        // back by itself.
        release_changes(&f, &token);
    } else {
        // And once (Compose v2): rotate-token --in-place recreates each connector on the new
        // token, one host at a time, the other host serving meanwhile.
        let edge = f.tb.testbed(&["edge-rotate"]);
        assert!(edge.status.success(), "{}", describe(&edge));
        let newer = std::fs::read_to_string(f.file("token.next")).expect("token.next");
        let before = f.tb.edge_stats();
        let out = f.tf(
            "rotate-token",
            &["--in-place", "--token-file", &f.file("token.next")],
        );
        assert_eq!(out.status.code(), Some(0), "--in-place: {}", describe(&out));
        wait_edge_on(&f, &newer, "rotate-token --in-place");
        assert!(fewest_hosts_up(&before, &f.tb.edge_stats()) >= 1);
        for h in ["h1", "h2"] {
            assert_eq!(f.host_status(h)["connector_token_fingerprint"], fp(&newer));
        }
    }
}

/// Sets fleet-group vars in the inventory (replacing earlier values).
fn set_var(f: &Fleet, key: &str, value: &str) {
    let inv = f.tb.inventory();
    let text = std::fs::read_to_string(&inv).expect("inventory");
    let mut out = String::new();
    for l in text.lines() {
        if l.starts_with(&format!("        {key}:")) {
            continue;
        }
        out.push_str(l);
        out.push('\n');
        if l == "        tunnel_name: testbed" {
            out.push_str(&format!("        {key}: {value}\n"));
        }
    }
    std::fs::write(&inv, out).expect("write inventory");
}

fn release_changes(f: &Fleet, token: &str) {
    let tok = f.file("token.next");
    // A config change: the proxy is recreated (it reads its config only at start), the
    // connector with it; the edge sees every host again on the same token.
    let proxy_ids = |h: &str| {
        f.containers(h)
            .into_iter()
            .filter(|c| c.0 == "mcp-proxy")
            .map(|c| c.2)
            .collect::<Vec<_>>()
    };
    let before = (proxy_ids("h1"), proxy_ids("h2"));
    let inv = f.tb.inventory();
    let text = std::fs::read_to_string(&inv).expect("inventory");
    assert!(text.contains(":9000\""), "{text}");
    std::fs::write(&inv, text.replace(":9000\"", ":9001\"")).expect("write inventory");
    let out = f.tf("deploy", &["--token-file", &tok]);
    assert!(out.status.success(), "config change: {}", describe(&out));
    assert_ne!(before.0, proxy_ids("h1"));
    assert_ne!(before.1, proxy_ids("h2"));
    for h in ["h1", "h2"] {
        f.wait_ok(h, "the config change");
    }
    wait_edge_on(f, token, "the config change");

    // A connector image that never becomes ready: the gate fails on the canary, which is
    // rolled back; per the edge no host was ever without a connector (the connector-only
    // change moves make-before-break).
    let release = |h: &str| f.host_status(h)["release"].clone();
    let was = (release("h1"), release("h2"));
    let before = f.tb.edge_stats();
    set_var(
        f,
        "cloudflared_image",
        "tunnelfleet-test/cloudflared:never-ready",
    );
    let out = f.tf(
        "deploy",
        &["--token-file", &tok, "--healthy-deadline", "8s"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad release: {}",
        describe(&out)
    );
    let text = describe(&out);
    assert!(
        text.contains("no new connector became ready within 8s") && text.contains("rolled back"),
        "{text}"
    );
    assert_eq!((release("h1"), release("h2")), was);
    wait_edge_on(f, token, "the rollback");
    assert_eq!(fewest_hosts_up(&before, &f.tb.edge_stats()), 2);
    for h in ["h1", "h2"] {
        let conns: Vec<_> = f
            .containers(h)
            .into_iter()
            .filter(|c| c.0 == "cloudflared")
            .collect();
        assert_eq!(conns.len(), 1, "{h}: {conns:?}");
    }
}

#[test]
fn compose_v1_stack_heals_a_lost_namespace_and_tells_an_engine_down() {
    run_stack_on_a_real_engine("v1");
}

#[test]
fn compose_v2_stack_heals_a_lost_namespace_and_tells_an_engine_down() {
    run_stack_on_a_real_engine("v2");
}

#[test]
fn down_leaves_no_daemon_container_mount_or_namespace() {
    let tb = Testbed::up(1, &["--engine", "docker", "--compose", "v1"]);
    let st: Value = serde_json::from_str(
        &std::fs::read_to_string(tb.path().join("state.json")).expect("state"),
    )
    .expect("state.json");
    let ns = st["hosts"]["h1"]["netns"]
        .as_str()
        .expect("netns")
        .to_string();
    // A container runs (busybox from the test images), so down has one to kill.
    let out = Command::new(repo_root().join("tests/testbed/engine-images/build"))
        .arg(tb.path())
        .output()
        .expect("run engine-images/build");
    assert!(out.status.success(), "{}", describe(&out));
    let started = tb.host_exec(
        "h1",
        "docker run -d --restart always --entrypoint /bin/sleep tunnelfleet-test/cloudflared:standin 1000",
    );
    assert_eq!(started.trim().len(), 64, "{started}");
    let cg = format!("/sys/fs/cgroup/pids/{ns}");
    assert!(
        std::path::Path::new(&cg).exists(),
        "the container runs under {cg}"
    );
    let dir = tb.path().to_string_lossy().into_owned();
    let out = tb.testbed(&["down"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!std::path::Path::new(&format!("/run/netns/{ns}")).exists());
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(!mounts.contains(&dir), "{mounts}");
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if cmd.contains(&dir) && !zombie {
            left.push(cmd);
        }
    }
    assert!(left.is_empty(), "processes left: {left:?}");
    assert!(
        !std::path::Path::new(&cg).exists(),
        "cgroup {cg} left behind"
    );
}
