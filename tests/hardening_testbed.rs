//! What a host can get wrong under tunnelfleet's feet, seen and repaired: modes and owners
//! of the secret-bearing files, a crash-looping proxy; and what status says about held locks,
//! unfinished rotations and deploys not done yet.

mod common;

use std::time::{Duration, Instant};

use common::{Testbed, describe, json};
use serde_json::Value;

const D: &str = "/srv/mcp-tunnel";

struct Fleet {
    tb: Testbed,
    state: String,
    token_file: String,
}

impl Fleet {
    fn up(n: usize) -> Fleet {
        let tb = Testbed::up(n, &[]);
        let state = tb.state_with_ca();
        let token_file = tb.path().join("token").to_string_lossy().into_owned();
        Fleet {
            tb,
            state,
            token_file,
        }
    }

    fn run(&self, verb: &str) -> std::process::Output {
        self.tb.tf(
            verb,
            &[
                "--state-dir",
                &self.state,
                "--token-file",
                &self.token_file,
                "--json",
            ],
        )
    }

    fn status_h1(&self) -> (Option<i32>, Value) {
        let out = self.run("status");
        let doc = json(&out);
        (out.status.code(), doc["hosts"][0].clone())
    }

    fn changed(&self) -> Value {
        let out = self.run("deploy");
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        json(&out)["summary"]["changed"].clone()
    }

    fn stat(&self, path: &str) -> String {
        self.tb
            .host_exec("h1", &format!("stat -c '%a %u %g' {D}/{path}"))
            .trim()
            .to_string()
    }

    fn proxy_state(&self) -> String {
        self.tb
            .host_exec(
                "h1",
                "docker ps -a --filter label=com.docker.compose.service=mcp-proxy --format '{{.State}}'",
            )
            .trim()
            .to_string()
    }
}

#[test]
fn permission_drift_and_a_crash_looping_proxy_are_seen_and_repaired() {
    let f = Fleet::up(1);
    let token = std::fs::read_to_string(&f.token_file).expect("token");
    assert_eq!(f.changed(), 1);
    // tls.key: readable by the proxy's group only.
    assert_eq!(f.stat("shared/data/tls.key"), "640 0 65532");
    assert_eq!(f.stat("shared/.env"), "600 0 0");
    f.tb.assert_every_host_on(&token);

    // Item 4: a local user could now read the token.
    f.tb.host_exec(
        "h1",
        &format!("chmod 755 {D}/shared; chmod 644 {D}/shared/.env"),
    );
    let (code, h) = f.status_h1();
    assert_eq!(code, Some(1), "{h}");
    let drift = h["drift"].to_string();
    assert!(drift.contains("fix permissions of shared: 0700"), "{h}");
    assert!(
        drift.contains("fix permissions of shared/.env: 0600"),
        "{h}"
    );
    assert_eq!(f.changed(), 1);
    assert_eq!(f.stat("shared"), "700 0 0");
    assert_eq!(f.stat("shared/.env"), "600 0 0");
    assert_eq!(f.changed(), 0);

    // Item 3: the proxy cannot read its config and crash-loops.
    f.tb.host_exec(
        "h1",
        &format!("chmod 600 {D}/current/config/mcp-proxy.yaml"),
    );
    f.tb.host_exec(
        "h1",
        "docker restart $(docker ps -q --filter label=com.docker.compose.service=mcp-proxy)",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut h = Value::Null;
    while Instant::now() < deadline {
        let (code, st) = f.status_h1();
        let down = st["down"].to_string();
        if code == Some(1) && down.contains("mcp-proxy") && down.contains("permission denied") {
            h = st;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        !h.is_null(),
        "the proxy never showed as down: {}",
        f.proxy_state()
    );
    let shown = h["containers"]["mcp-proxy"].as_str().unwrap_or_default();
    assert!(!shown.starts_with("running"), "{h}");
    let down = h["down"].to_string();
    assert!(down.contains("restarts"), "{h}");
    assert!(down.contains("last log:"), "{h}");
    assert!(!down.contains(token.trim()), "{h}");
    // deploy repairs it: the file's mode, then the proxy.
    assert_eq!(f.changed(), 1);
    assert_eq!(
        f.stat("current/config/mcp-proxy.yaml").split(' ').next(),
        Some("644")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && f.status_h1().0 != Some(0) {
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, h) = f.status_h1();
    assert_eq!(code, Some(0), "{h}");
    assert_eq!(f.proxy_state(), "running");
    f.tb.assert_every_host_on(&token);
    assert_eq!(f.changed(), 0);
}

#[test]
fn status_names_held_locks_unfinished_rotations_and_deploys_not_done_yet() {
    let f = Fleet::up(1);
    assert_eq!(f.changed(), 1);
    let (code, h) = f.status_h1();
    assert_eq!(code, Some(0), "{h}");

    // A held lock: holder and age.
    let since = chrono::Utc::now() - chrono::TimeDelta::minutes(5);
    let holder = format!(
        r#"{{"operation":"deploy","operator":"ann","controller":"ctl9","pid":7,"since":"{}"}}"#,
        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    f.tb.host_exec(
        "h1",
        &format!("mkdir -p {D}/.tunnelfleet/lock && printf '%s\\n' '{holder}' > {D}/.tunnelfleet/lock/holder.json"),
    );
    let (code, h) = f.status_h1();
    assert_eq!(code, Some(1), "{h}");
    let lock = h["lock"].as_str().unwrap_or_default();
    assert!(
        lock.starts_with("deploy by ann@ctl9 (pid 7, 5m ago)"),
        "{h}"
    );
    f.tb.host_exec("h1", &format!("rm -rf {D}/.tunnelfleet/lock"));

    // An unfinished rotation in this controller's journal.
    let journal = std::path::Path::new(&f.state).join("journal");
    std::fs::create_dir_all(&journal).expect("journal dir");
    let j = tunnelfleet::rollout::Journal::open(
        &journal.join("rotate-testbed.jsonl"),
        "op-crashed",
        "rotate-token",
    )
    .expect("journal");
    drop(j);
    let (code, h) = f.status_h1();
    assert_eq!(code, Some(1), "{h}");
    assert!(
        h["unfinished"]
            .to_string()
            .contains("rotation unfinished (op-crashed): run `tunnelfleet rotate-token --resume`"),
        "{h}"
    );
    std::fs::remove_file(journal.join("rotate-testbed.jsonl")).expect("rm journal");

    // The inventory changed since the last deploy: a deploy to do, not drift.
    let inv = std::fs::read_to_string(f.tb.inventory()).expect("inventory");
    let inv2 = inv.replacen(
        "        tunnel_routes:\n",
        "        tunnel_routes:\n          extra: \"http://127.0.0.1:9009\"\n",
        1,
    );
    assert_ne!(inv, inv2);
    let path = f.tb.path().join("inventory-changed.yaml");
    std::fs::write(&path, inv2).expect("write");
    let out = f.tb.tf_with(
        "status",
        &path,
        &f.tb.known_hosts(),
        &[
            "--state-dir",
            &f.state,
            "--token-file",
            &f.token_file,
            "--json",
        ],
    );
    let h = json(&out)["hosts"][0].clone();
    assert_eq!(h["drift"].as_array().map(Vec::len), Some(0), "{h}");
    assert!(
        h["pending"]
            .as_str()
            .unwrap_or_default()
            .contains("not deployed yet"),
        "{h}"
    );
    // Real drift beside it is still drift.
    f.tb.host_exec("h1", &format!("chmod 644 {D}/shared/.env"));
    let out = f.tb.tf_with(
        "status",
        &path,
        &f.tb.known_hosts(),
        &[
            "--state-dir",
            &f.state,
            "--token-file",
            &f.token_file,
            "--json",
        ],
    );
    let h = json(&out)["hosts"][0].clone();
    assert!(h["drift"].to_string().contains("shared/.env"), "{h}");
}

#[test]
fn a_system_or_foreign_deploy_dir_is_refused_unless_forced() {
    let f = Fleet::up(1);
    let base = std::fs::read_to_string(f.tb.inventory()).expect("inventory");
    let with_dir = |dir: &str| {
        let text = base.replace("deploy_dir: /srv/mcp-tunnel", &format!("deploy_dir: {dir}"));
        assert_ne!(text, base);
        let path =
            f.tb.path()
                .join(format!("inv{}.yaml", dir.replace('/', "-")));
        std::fs::write(&path, text).expect("write inventory");
        path
    };
    let deploy = |inv: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "--state-dir",
            f.state.as_str(),
            "--token-file",
            f.token_file.as_str(),
        ];
        args.extend(extra);
        f.tb.tf_with("deploy", inv, &f.tb.known_hosts(), &args)
    };

    // A system directory: refused, nothing created.
    let out = deploy(&with_dir("/etc/mcp-tunnel"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        describe(&out).contains("system directory"),
        "{}",
        describe(&out)
    );
    assert!(describe(&out).contains("--force"), "{}", describe(&out));
    let there =
        f.tb.host_exec("h1", "[ -e /etc/mcp-tunnel ] && echo yes || echo no");
    assert_eq!(there.trim(), "no");

    // Someone else's non-empty directory: refused and left as it was; --force deploys.
    f.tb.host_exec("h1", "mkdir -p /srv/app && echo keep > /srv/app/data.txt");
    let inv = with_dir("/srv/app");
    let out = deploy(&inv, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        describe(&out).contains("did not put there"),
        "{}",
        describe(&out)
    );
    let ls = f.tb.host_exec("h1", "ls -A /srv/app");
    assert_eq!(ls.trim(), "data.txt");
    let out = deploy(&inv, &["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // Once tunnelfleet's (it has .tunnelfleet/), no --force is needed any more.
    let out = deploy(&inv, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}
