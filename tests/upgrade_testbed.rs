//! Staged upgrades and rollbacks against the testbed: real sshd hosts, the stand-in Compose,
//! cloudflared and mcp-proxy (whose failure modes are chosen by the image reference), and the
//! stand-in edge as the witness of how many hosts served at every moment.

mod common;

use common::{Testbed, describe, fewest_hosts_up, json};
use serde_json::Value;
use std::process::Output;

struct Fleet {
    tb: Testbed,
    state: String,
}

const DEPLOY_DIR: &str = "/srv/mcp-tunnel";

impl Fleet {
    /// A fleet of `n` hosts with the stack deployed (the testbed's pinned images).
    fn deployed(n: usize) -> Fleet {
        let tb = Testbed::up(n, &[]);
        let state = tb.state_with_ca();
        let f = Fleet { tb, state };
        let out = f.deploy(&["--token-file", &f.file("token")]);
        assert!(out.status.success(), "first deploy: {}", describe(&out));
        f
    }

    fn file(&self, name: &str) -> String {
        self.tb.path().join(name).to_string_lossy().into_owned()
    }

    fn tf(&self, verb: &str, extra: &[&str]) -> Output {
        let mut args = vec!["--state-dir", self.state.as_str()];
        args.extend(extra);
        self.tb.tf(verb, &args)
    }

    fn deploy(&self, extra: &[&str]) -> Output {
        self.tf("deploy", extra)
    }

    /// Sets fleet-group vars in the testbed's inventory (YAML lines under `fleet.vars`).
    fn set_vars(&self, lines: &[&str]) {
        let inv = self.tb.inventory();
        let text = std::fs::read_to_string(&inv).expect("inventory");
        let mut out = String::new();
        for l in text.lines() {
            // Drop earlier values of the vars being set.
            if lines.iter().any(|n| {
                l.trim_start()
                    .starts_with(n.split(':').next().unwrap_or(""))
            }) && l.starts_with("        ")
                && !l.starts_with("          ")
            {
                continue;
            }
            out.push_str(l);
            out.push('\n');
            if l.trim() == "tunnel_name: testbed" {
                for n in lines {
                    out.push_str(&format!("        {n}\n"));
                }
            }
        }
        std::fs::write(&inv, out).expect("write inventory");
    }

    fn sh(&self, host: &str, cmd: &str) -> String {
        self.tb.host_exec(host, cmd)
    }

    fn current(&self, host: &str) -> String {
        self.sh(host, &format!("readlink {DEPLOY_DIR}/current"))
            .trim()
            .trim_start_matches("releases/")
            .to_string()
    }

    /// The images of the running stack containers on `host`: (service, image, state).
    fn containers(&self, host: &str) -> Vec<(String, String, String)> {
        let bin = self.tb.path().join("bin");
        let out = self.sh(
            host,
            &format!(
                "PATH={}:$PATH docker ps -a --format '{{{{.Names}}}} {{{{.Image}}}} {{{{.State}}}}'",
                bin.display()
            ),
        );
        out.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let name = it.next()?.to_string();
                let image = it.next()?.to_string();
                let state = it.next()?.to_string();
                let svc = if name.contains("cloudflared") {
                    "cloudflared"
                } else if name.contains("mcp-proxy") {
                    "mcp-proxy"
                } else {
                    return None;
                };
                Some((svc.to_string(), image, state))
            })
            .collect()
    }

    /// Every host runs exactly one proxy and one connector, both running, the connector on
    /// `connector_image` (substring), `current` on `release`, and no lock is left.
    fn assert_on(&self, release: &str, connector_image: &str) {
        for h in self.tb.host_names() {
            assert_eq!(self.current(&h), release, "{h}: current");
            let cs = self.containers(&h);
            let conn: Vec<_> = cs.iter().filter(|c| c.0 == "cloudflared").collect();
            let proxy: Vec<_> = cs.iter().filter(|c| c.0 == "mcp-proxy").collect();
            assert_eq!(conn.len(), 1, "{h}: one connector: {cs:?}");
            assert_eq!(proxy.len(), 1, "{h}: one proxy: {cs:?}");
            assert!(
                conn[0].1.contains(connector_image),
                "{h}: connector image {cs:?}"
            );
            assert!(
                cs.iter().all(|c| c.2 == "running"),
                "{h}: all running: {cs:?}"
            );
            let lock = self.sh(
                &h,
                &format!("test -e {DEPLOY_DIR}/.tunnelfleet/lock && echo held || echo free"),
            );
            assert_eq!(lock.trim(), "free", "{h}: no lock left");
        }
    }

    fn release_of(out: &Output) -> String {
        let doc = json(out);
        doc["hosts"][0]["to"]
            .as_str()
            .unwrap_or_else(|| panic!("no target release: {doc}"))
            .to_string()
    }
}

fn fewest(f: &Fleet, before: &Value) -> usize {
    fewest_hosts_up(before, &f.tb.edge_stats())
}

#[test]
fn connector_only_upgrade_moves_make_before_break_and_keeps_every_host_up() {
    let f = Fleet::deployed(5);
    f.set_vars(&[
        "allow_unpinned_images: true",
        "cloudflared_image: cloudflare/cloudflared:2024.7",
    ]);
    let before = f.tb.edge_stats();
    let out = f.deploy(&[
        "--token-file",
        &f.file("token"),
        "--min-healthy",
        "2s",
        "--drain",
        "2s",
        "--batch",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let doc = json(&out);
    assert_eq!(doc["staging"]["surge"].as_array().map(Vec::len), Some(5));
    let batches: Vec<usize> = doc["staging"]["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .map(|b| b.as_array().map(Vec::len).unwrap_or(0))
        .collect();
    assert_eq!(batches, vec![1, 2, 2], "{doc}");
    let release = Fleet::release_of(&out);
    f.assert_on(&release, "cloudflared:2024.7");
    assert_eq!(
        fewest(&f, &before),
        5,
        "the edge saw a host without a connector"
    );
    // A second deploy of the same release is a no-op.
    let out = f.deploy(&["--token-file", &f.file("token"), "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(json(&out)["staging"]["hosts"], serde_json::json!([]));
}

#[test]
fn config_change_never_takes_more_than_max_unavailable_down() {
    let f = Fleet::deployed(5);
    let old = f.current("h1");
    f.set_vars(&["log_level: debug"]);
    let before = f.tb.edge_stats();
    let out = f.deploy(&[
        "--token-file",
        &f.file("token"),
        "--min-healthy",
        "1s",
        "--max-unavailable",
        "1",
        "--batch",
        "3",
        "--json",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let doc = json(&out);
    assert_eq!(doc["staging"]["recreate"].as_array().map(Vec::len), Some(5));
    assert!(
        doc["staging"]["notes"].as_array().is_some_and(|n| n
            .iter()
            .any(|s| s.as_str().unwrap_or("").contains("--max-unavailable"))),
        "the lowered batch is said: {doc}"
    );
    let release = Fleet::release_of(&out);
    assert_ne!(release, old);
    f.assert_on(&release, "cloudflared@sha256");
    assert!(
        fewest(&f, &before) >= 4,
        "more than max_unavailable hosts were down at once"
    );
    // The proxy serves the new config: its log level is in the running config's hash.
    let cfg = f.sh(
        "h1",
        &format!("cat {DEPLOY_DIR}/current/config/mcp-proxy.yaml"),
    );
    assert!(cfg.contains("debug"), "{cfg}");
}

#[test]
fn a_connector_that_never_registers_is_rolled_back_without_losing_a_host() {
    let f = Fleet::deployed(3);
    let old = f.current("h1");
    let env_before = f.sh("h2", &format!("sha256sum < {DEPLOY_DIR}/shared/.env"));
    f.set_vars(&[
        "allow_unpinned_images: true",
        "cloudflared_image: cloudflare/cloudflared:never-ready",
    ]);
    let before = f.tb.edge_stats();
    let out = f.deploy(&[
        "--token-file",
        &f.file("token"),
        "--healthy-deadline",
        "4s",
        "--min-healthy",
        "1s",
        "--drain",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no new connector became ready within 4s"),
        "{text}"
    );
    assert!(text.contains("rolled back"), "{text}");
    assert!(text.contains("not touched"), "{text}");
    assert!(
        text.contains("last log lines of"),
        "the containers' logs: {text}"
    );
    f.assert_on(&old, "cloudflared@sha256");
    assert_eq!(fewest(&f, &before), 3, "a host lost its connector");
    assert_eq!(
        f.sh("h2", &format!("sha256sum < {DEPLOY_DIR}/shared/.env")),
        env_before
    );
    // Each host's audit log says what happened to it.
    let audit = f.sh(
        "h1",
        &format!("tail -n 1 {DEPLOY_DIR}/.tunnelfleet/audit.log"),
    );
    assert!(audit.contains("\"outcome\":\"rolled_back\""), "{audit}");
}

#[test]
fn a_proxy_with_a_bad_config_fails_fast_and_the_canary_is_rolled_back() {
    let f = Fleet::deployed(3);
    let old = f.current("h1");
    f.set_vars(&[
        "allow_unpinned_images: true",
        "mcp_proxy_image: example.com/mcp-proxy:bad-config",
    ]);
    let before = f.tb.edge_stats();
    let out = f.deploy(&[
        "--token-file",
        &f.file("token"),
        "--healthy-deadline",
        "60s",
        "--min-healthy",
        "1s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let doc = json(&out);
    let h1 = &doc["hosts"][0];
    assert_eq!(h1["outcome"], "rolled back", "{doc}");
    let err = h1["error"].as_str().unwrap_or_default();
    // Down long before the 60 s deadline, with the proxy's own words.
    assert!(err.contains("mcp-proxy"), "{err}");
    assert!(!err.contains("within 60s"), "failed fast: {err}");
    assert!(
        h1["upgrade"]["logs"].to_string().contains("config"),
        "the proxy's last log lines: {doc}"
    );
    assert_eq!(doc["hosts"][1]["outcome"], "skipped", "{doc}");
    f.assert_on(&old, "cloudflared@sha256");
    assert!(fewest(&f, &before) >= 2, "at most one host down at once");
}

#[test]
fn a_connector_crashing_after_it_registered_is_caught_by_min_healthy() {
    let f = Fleet::deployed(3);
    let old = f.current("h1");
    f.set_vars(&[
        "allow_unpinned_images: true",
        "cloudflared_image: cloudflare/cloudflared:crash-after-5s",
    ]);
    let before = f.tb.edge_stats();
    let out = f.deploy(&[
        "--token-file",
        &f.file("token"),
        "--min-healthy",
        "8s",
        "--drain",
        "1s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let doc = json(&out);
    let err = doc["hosts"][0]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("restarted during the minimum healthy time")
            || err.contains("no connector ready after the minimum healthy time"),
        "{doc}"
    );
    assert_eq!(doc["hosts"][0]["outcome"], "rolled back", "{doc}");
    f.assert_on(&old, "cloudflared@sha256");
    assert_eq!(
        fewest(&f, &before),
        3,
        "make-before-break kept every host up"
    );
}

#[test]
fn a_failure_in_a_later_batch_rolls_back_only_the_hosts_that_moved() {
    let f = Fleet::deployed(4);
    let old = f.current("h1");
    // h3 is held by another operation: its apply is refused, before it changes anything.
    f.sh(
        "h3",
        &format!(
            "mkdir -p {DEPLOY_DIR}/.tunnelfleet/lock && echo '{{\"operation\":\"manual\"}}' > {DEPLOY_DIR}/.tunnelfleet/lock/holder.json"
        ),
    );
    let snapshot = |h: &str| {
        f.sh(
            h,
            &format!(
                "cd {DEPLOY_DIR} && readlink current && sha256sum shared/.env shared/data/* current/docker-compose.yaml current/config/mcp-proxy.yaml"
            ),
        )
    };
    let h4_before = snapshot("h4");
    f.set_vars(&["log_level: debug"]);
    let out = f.deploy(&[
        "--token-file",
        &f.file("token"),
        "--min-healthy",
        "0s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let doc = json(&out);
    let outcome = |i: usize| {
        doc["hosts"][i]["outcome"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(outcome(0), "rolled back", "{doc}");
    assert_eq!(outcome(1), "rolled back", "{doc}");
    assert_eq!(outcome(2), "FAILED", "{doc}");
    assert!(
        doc["hosts"][2]["error"]
            .as_str()
            .unwrap_or("")
            .contains("another operation holds the fleet lock"),
        "{doc}"
    );
    assert_eq!(outcome(3), "skipped", "{doc}");
    // The untouched host's running files are byte-identical.
    assert_eq!(snapshot("h4"), h4_before);
    for h in ["h1", "h2", "h3", "h4"] {
        assert_eq!(f.current(h), old, "{h}");
    }
}

#[test]
fn rollback_returns_to_the_previous_release_or_a_named_one_and_refuses_a_missing_one() {
    let f = Fleet::deployed(3);
    let r1 = f.current("h1");
    f.set_vars(&["log_level: debug"]);
    let out = f.deploy(&["--token-file", &f.file("token"), "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let r2 = Fleet::release_of(&out);
    f.set_vars(&["log_level: warn"]);
    let out = f.deploy(&["--token-file", &f.file("token"), "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let r3 = Fleet::release_of(&out);
    assert!(r1 != r2 && r2 != r3 && r1 != r3);

    // `releases` lists what the hosts have, with current and previous.
    let out = f.tf("releases", &["--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let doc = json(&out);
    for h in doc["hosts"].as_array().expect("hosts") {
        let ids: Vec<&str> = h["releases"]
            .as_array()
            .expect("releases")
            .iter()
            .filter_map(|r| r["id"].as_str())
            .collect();
        let name = h["name"].as_str().expect("name");
        let on_host = f.sh(name, &format!("ls -1t {DEPLOY_DIR}/releases"));
        assert_eq!(ids, on_host.lines().collect::<Vec<_>>(), "{name}");
        assert_eq!(h["current"], r3.as_str());
        let role = |id: &str| {
            h["releases"]
                .as_array()
                .and_then(|rs| rs.iter().find(|r| r["id"] == id))
                .map(|r| r["role"].clone())
        };
        assert_eq!(role(&r3), Some(Value::from("current")));
        assert_eq!(role(&r2), Some(Value::from("previous")));
    }

    // A release no host has: refused, and nothing changes on any host.
    let cmds_before = f.tb.recorded_commands().lines().count();
    let out = f.tf("rollback", &["--to", "0123456789ab"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no complete release 0123456789ab"), "{err}");
    assert!(
        err.contains(&r1) && err.contains("(current)"),
        "lists what hosts have: {err}"
    );
    let new_cmds: Vec<String> =
        f.tb.recorded_commands()
            .lines()
            .skip(cmds_before)
            .map(str::to_string)
            .collect();
    assert!(
        new_cmds
            .iter()
            .all(|c| !c.contains("switch release") && !c.contains("tunnelfleet: apply")),
        "a refused rollback changed a host: {new_cmds:?}"
    );
    f.assert_on(&r3, "cloudflared@sha256");

    // Back to the previous release.
    let out = f.tf("rollback", &["--min-healthy", "0s", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    f.assert_on(&r2, "cloudflared@sha256");
    // And to a named one.
    let out = f.tf("rollback", &["--to", &r1, "--min-healthy", "0s"]);
    assert!(out.status.success(), "{}", describe(&out));
    f.assert_on(&r1, "cloudflared@sha256");
    let audit = f.sh(
        "h2",
        &format!("tail -n 1 {DEPLOY_DIR}/.tunnelfleet/audit.log"),
    );
    assert!(
        audit.contains("\"operation\":\"rollback\"") && audit.contains(&r1),
        "{audit}"
    );
}

#[test]
fn keep_releases_prunes_old_releases_but_never_the_current_or_previous() {
    let f = Fleet::deployed(2);
    f.set_vars(&["keep_releases: 2"]);
    let mut ids = vec![f.current("h1")];
    for level in ["debug", "warn", "error"] {
        f.set_vars(&["keep_releases: 2", &format!("log_level: {level}")]);
        let out = f.deploy(&["--token-file", &f.file("token"), "--json"]);
        assert!(out.status.success(), "{}", describe(&out));
        ids.push(Fleet::release_of(&out));
    }
    for h in ["h1", "h2"] {
        let on_host = f.sh(h, &format!("ls -1 {DEPLOY_DIR}/releases | sort"));
        let mut want = vec![ids[2].clone(), ids[3].clone()];
        want.sort();
        assert_eq!(on_host.lines().collect::<Vec<_>>(), want, "{h}");
    }
    // The previous release is still there for a rollback.
    let out = f.tf("rollback", &["--min-healthy", "0s"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(f.current("h1"), ids[2]);
}

#[test]
fn an_image_no_host_can_pull_fails_before_any_host_switches() {
    let f = Fleet::deployed(3);
    let old = f.current("h1");
    f.set_vars(&[
        "allow_unpinned_images: true",
        "cloudflared_image: cloudflare/cloudflared:unpullable",
    ]);
    let before = f.tb.edge_stats();
    let out = f.deploy(&["--token-file", &f.file("token"), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let doc = json(&out);
    for h in doc["hosts"].as_array().expect("hosts") {
        let err = h["error"].as_str().unwrap_or_default();
        assert!(
            err.contains("cloudflare/cloudflared:unpullable") && err.contains("cannot be pulled"),
            "{doc}"
        );
        assert_eq!(h["upgrade"]["moved"], false, "{doc}");
    }
    f.assert_on(&old, "cloudflared@sha256");
    assert_eq!(fewest(&f, &before), 3);
    // `--check` shows the staged plan and the diff without touching anything.
    let out = f.deploy(&["--token-file", &f.file("token"), "--check", "--diff"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("canary: h1 (make-before-break)"), "{text}");
    assert!(
        text.contains("+    image: \"cloudflare/cloudflared:unpullable\""),
        "{text}"
    );
    let token = std::fs::read_to_string(f.file("token")).expect("token");
    assert!(!text.contains(token.trim()), "the token is never printed");
}

#[test]
fn a_token_the_edge_refuses_given_to_deploy_is_undone_on_the_canary_within_seconds() {
    let f = Fleet::deployed(3);
    let env_before = f.sh("h1", &format!("sha256sum < {DEPLOY_DIR}/shared/.env"));
    // Well-formed (base64 JSON with a, t, s) but not a token the edge knows.
    let bad = f.tb.path().join("bad.token");
    std::fs::write(
        &bad,
        "eyJhIjoiYWNjb3VudCIsInQiOiJ0dW5uZWwiLCJzIjoibm90LXRoZS1zZWNyZXQifQ==\n",
    )
    .expect("write token");
    let mut perms = std::fs::metadata(&bad).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&bad, perms).expect("chmod");
    let before = f.tb.edge_stats();
    let out = f.deploy(&[
        "--token-file",
        &bad.to_string_lossy(),
        "--healthy-deadline",
        "60s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let doc = json(&out);
    let h1 = &doc["hosts"][0];
    assert_eq!(h1["outcome"], "rolled back", "{doc}");
    let err = h1["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("Unauthorized"),
        "the connector's own words: {err}"
    );
    assert!(
        !err.contains("within 60s"),
        "detected within seconds: {err}"
    );
    assert!(
        h1["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("rotate-token"),
        "{doc}"
    );
    for i in [1, 2] {
        assert_eq!(doc["hosts"][i]["outcome"], "skipped", "{doc}");
    }
    assert_eq!(
        f.sh("h1", &format!("sha256sum < {DEPLOY_DIR}/shared/.env")),
        env_before,
        "the canary's previous .env is back"
    );
    f.assert_on(&f.current("h2"), "cloudflared@sha256");
    assert!(fewest(&f, &before) >= 2);
    // The token is never printed.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("bm90LXRoZS1zZWNyZXQ"));
    // And the next plan is honest: h1 is up to date again with its old token.
    let out = f.deploy(&["--token-file", &f.file("token"), "--check", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(json(&out)["staging"]["hosts"], serde_json::json!([]));
}
