//! `tunnelfleet check` against a real testbed fleet (sshd in network namespaces).

mod common;

use common::{Testbed, describe, json};
use std::process::Command;

/// The SHA256 fingerprint OpenSSH itself computes for each host key recorded in known_hosts.
fn fingerprints_by_ssh_keygen(tb: &Testbed, address: &str) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-F", address, "-f"])
        .arg(tb.known_hosts())
        .output()
        .expect("ssh-keygen");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_succeeds_on_every_host_and_json_matches() {
    let tb = Testbed::up(5, &[]);
    let out = tb.tf("check", &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = json(&out);
    let hosts = doc["hosts"].as_array().expect("hosts array");
    let names: Vec<&str> = hosts.iter().filter_map(|h| h["name"].as_str()).collect();
    assert_eq!(names, tb.host_names());
    for h in hosts {
        let name = h["name"].as_str().unwrap_or_default();
        assert_eq!(h["ok"], true, "{h}");
        assert!(h["error"].is_null(), "{h}");
        assert_eq!(h["reachable"], true);
        let addr = h["address"].as_str().expect("address");
        // The fingerprint reported is the one OpenSSH computes for the recorded key.
        let fp = h["host_key"].as_str().expect("host_key");
        assert!(
            fingerprints_by_ssh_keygen(&tb, addr).contains(fp),
            "{name}: {fp} not in known_hosts per ssh-keygen"
        );
        assert!(
            h["auth"]
                .as_str()
                .unwrap_or_default()
                .contains("id_ed25519")
        );
        assert!(h["os"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(h["free_disk_bytes"].as_u64().is_some_and(|b| b > 0));
        assert!(h["clock_skew_ms"].is_i64());
        assert_eq!(h["deploy_dir_writable"], true);
        assert!(h["compose"]["kind"].is_string(), "{h}");
    }
    assert_eq!(doc["summary"]["ok"], 5);
    assert_eq!(doc["summary"]["failed"], 0);
    // Every host really ran the probe: the testbed's sshd wrapper recorded it on each.
    let log = tb.recorded_commands();
    for n in tb.host_names() {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("\"host\": \"{n}\""))
                    || l.contains(&format!("\"host\":\"{n}\""))),
            "no recorded command on {n}:\n{log}"
        );
    }
}

#[test]
fn host_keys_unknown_learned_and_changed() {
    let tb = Testbed::up(5, &[]);
    let empty = tb.path().join("kh-empty");
    std::fs::write(&empty, "").expect("write");

    // Strict by default: every host refused, with its fingerprint and how to accept it.
    let out = tb.tf_with("check", &tb.inventory(), &empty, &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let doc = json(&out);
    for h in doc["hosts"].as_array().expect("hosts") {
        assert_eq!(h["ok"], false);
        assert_eq!(h["error_kind"], "host_key", "{h}");
        let msg = h["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains("unknown host key") && msg.contains("SHA256:"),
            "{msg}"
        );
        assert!(
            h["hint"]
                .as_str()
                .unwrap_or_default()
                .contains("--accept-new")
        );
    }
    assert_eq!(std::fs::read_to_string(&empty).expect("read"), "");

    // --accept-new learns them; afterwards strict mode accepts.
    let out = tb.tf_with("check", &tb.inventory(), &empty, &["--accept-new"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let learned = std::fs::read_to_string(&empty).expect("read");
    assert_eq!(learned.lines().count(), 5, "{learned}");
    let out = tb.tf_with("check", &tb.inventory(), &empty, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // A changed key (h3's entry replaced by h1's key) is refused, even with --accept-new.
    let real = std::fs::read_to_string(tb.known_hosts()).expect("read");
    let doc = json(&tb.tf("check", &["--json"]));
    let addr = |n: usize| {
        doc["hosts"][n]["address"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (a1, a3) = (addr(0), addr(2));
    // known_hosts lines name a host by its address (and maybe its name): "ADDR[,NAME] KEY".
    let names = |l: &str| -> Vec<String> {
        l.split_whitespace()
            .next()
            .unwrap_or_default()
            .split(',')
            .map(str::to_string)
            .collect()
    };
    let key_of = |a: &str| {
        real.lines()
            .find(|l| names(l).iter().any(|n| n == a))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .expect("host line in known_hosts")
    };
    let forged: String = real
        .lines()
        .map(|l| {
            if names(l).contains(&a3) {
                format!("{a3} {}\n", key_of(&a1))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let kh = tb.path().join("kh-forged");
    std::fs::write(&kh, &forged).expect("write");
    let out = tb.tf_with("check", &tb.inventory(), &kh, &["--json", "--accept-new"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let doc = json(&out);
    for h in doc["hosts"].as_array().expect("hosts") {
        if h["name"] == "h3" {
            assert_eq!(h["error_kind"], "host_key");
            let msg = h["error"].as_str().unwrap_or_default();
            assert!(
                msg.contains("HAS CHANGED") && msg.contains("man-in-the-middle"),
                "{msg}"
            );
        } else {
            assert_eq!(h["ok"], true, "{h}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(&kh).expect("read"),
        forged,
        "known_hosts was modified"
    );
}

#[test]
fn down_and_hung_hosts_hit_their_deadlines_while_others_succeed() {
    let tb = Testbed::up(5, &[]);
    tb.fault("h2", "down");
    tb.fault("h4", "hang");
    let out = tb.tf(
        "check",
        &[
            "--json",
            "--connect-timeout",
            "3s",
            "--command-timeout",
            "5s",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let doc = json(&out);
    for h in doc["hosts"].as_array().expect("hosts") {
        match h["name"].as_str() {
            Some("h2") => {
                assert_eq!(h["ok"], false);
                assert!(
                    matches!(h["error_kind"].as_str(), Some("unreachable" | "timeout")),
                    "{h}"
                );
            }
            Some("h4") => {
                assert_eq!(h["ok"], false);
                assert_eq!(h["error_kind"], "timeout", "{h}");
            }
            _ => assert_eq!(h["ok"], true, "{h}"),
        }
    }
    assert_eq!(doc["summary"]["ok"], 3);
    assert_eq!(doc["summary"]["failed"], 2);
    tb.fault("h4", "resume");
    tb.fault("h2", "resume");
    let out = tb.tf("check", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn bastion_with_and_without_proxy_jump() {
    let tb = Testbed::up(5, &["--bastion"]);
    let out = tb.tf("check", &["--json", "--limit", "fleet"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = json(&out);
    for h in doc["hosts"].as_array().expect("hosts") {
        assert_eq!(h["ok"], true, "{h}");
        assert_eq!(h["via"].as_array().map(Vec::len), Some(1), "{h}");
    }
    // The same inventory without proxy_jump: those hosts are not reachable from here.
    let text = std::fs::read_to_string(tb.inventory()).expect("read inventory");
    let stripped: String = text
        .lines()
        .filter(|l| !l.contains("proxy_jump"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(stripped, text, "inventory had no proxy_jump line");
    let inv = tb.path().join("no-jump.yaml");
    std::fs::write(&inv, stripped).expect("write");
    let out = tb.tf_with(
        "check",
        &inv,
        &tb.known_hosts(),
        &["--json", "--limit", "fleet", "--connect-timeout", "3s"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let doc = json(&out);
    for h in doc["hosts"].as_array().expect("hosts") {
        assert_eq!(h["ok"], false, "{h}");
        assert!(
            matches!(h["error_kind"].as_str(), Some("unreachable" | "timeout")),
            "{h}"
        );
    }
}

#[test]
fn bad_inventory_and_limit_fail_before_touching_hosts() {
    let tb = Testbed::up(1, &[]);
    let bad = tb.path().join("bad.yaml");
    std::fs::write(&bad, "all:\n  hosts:\n    h1: {ansible_host: [1, 2\n").expect("write");
    let out = tb.tf_with("check", &bad, &tb.known_hosts(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:"), "{err}");
    let loc = err.split("bad.yaml:").nth(1).unwrap_or_default();
    let mut parts = loc.split(':');
    assert!(
        parts.next().is_some_and(|l| l.parse::<u32>().is_ok()),
        "{err}"
    );
    assert!(
        parts.next().is_some_and(|c| c.parse::<u32>().is_ok()),
        "{err}"
    );

    let out = tb.tf("check", &["--limit", "fleet,!nosuchgroup"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nosuchgroup") && err.contains("--limit:1:"),
        "{err}"
    );
    assert_eq!(tb.recorded_commands(), "", "a host was touched");
}

#[test]
fn agent_first_and_a_passphrase_key_fails_clearly_without_a_terminal() {
    let tb = Testbed::up(2, &[]);
    // A passphrase-protected key, authorized on the hosts (their homes live in the testbed dir).
    let key = tb.path().join("id_locked");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "secret-pass", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "{}", describe(&out));
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    for h in tb.host_names() {
        let ak = tb
            .path()
            .join(format!("hosts/{h}/home/.ssh/authorized_keys"));
        let mut text = std::fs::read_to_string(&ak).expect("authorized_keys");
        text.push_str(&pubkey);
        std::fs::write(&ak, text).expect("write authorized_keys");
    }
    let inv = std::fs::read_to_string(tb.inventory()).expect("inventory");
    let locked = inv.replace(
        &tb.path().join("id_ed25519").to_string_lossy().to_string(),
        &key.to_string_lossy(),
    );
    let inv_locked = tb.path().join("locked.yaml");
    std::fs::write(&inv_locked, locked).expect("write");
    // No agent, no terminal: a clear error naming the key and the ssh-add remedy.
    let out = tb.tf_with("check", &inv_locked, &tb.known_hosts(), &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    for h in json(&out)["hosts"].as_array().expect("hosts") {
        let e = h["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("passphrase-protected") && e.contains("ssh-add"),
            "{e}"
        );
    }
    // With the key in ssh-agent, the agent is used.
    let agent = Command::new("ssh-agent")
        .arg("-s")
        .output()
        .expect("ssh-agent");
    let env = String::from_utf8_lossy(&agent.stdout).into_owned();
    let var = |name: &str| {
        env.split(';')
            .find_map(|p| p.trim().strip_prefix(&format!("{name}=")))
            .map(str::to_string)
            .expect("agent variable")
    };
    let (sock, pid) = (var("SSH_AUTH_SOCK"), var("SSH_AGENT_PID"));
    let added = Command::new("ssh-add")
        .arg(tb.path().join("id_ed25519"))
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .expect("ssh-add");
    assert!(added.status.success(), "{}", describe(&added));
    let out = Command::new(common::tunnelfleet_bin())
        .args(["check", "--json", "--ssh-config", "none", "-i"])
        .arg(&inv_locked)
        .arg("--known-hosts")
        .arg(tb.known_hosts())
        .env("SSH_AUTH_SOCK", &sock)
        .env("HOME", tb.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("tunnelfleet");
    let _ = Command::new("kill").arg(&pid).output();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for h in json(&out)["hosts"].as_array().expect("hosts") {
        assert!(
            h["auth"].as_str().unwrap_or_default().starts_with("agent"),
            "{h}"
        );
    }
}

#[test]
fn proxy_jump_from_ssh_config() {
    let tb = Testbed::up(2, &["--bastion"]);
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tb.path().join("state.json")).expect("state"),
    )
    .expect("state json");
    let bastion = state["hosts"]["bastion"]["addr"]
        .as_str()
        .expect("bastion addr")
        .to_string();
    let text = std::fs::read_to_string(tb.inventory()).expect("read inventory");
    let stripped: String = text
        .lines()
        .filter(|l| !l.contains("proxy_jump"))
        .map(|l| format!("{l}\n"))
        .collect();
    let inv = tb.path().join("no-jump.yaml");
    std::fs::write(&inv, stripped).expect("write");
    let cfg = tb.path().join("my_ssh_config");
    std::fs::write(
        &cfg,
        format!(
            "Host 10.214.*\n  ProxyJump root@{bastion}\n  IdentityFile {}\n",
            tb.path().join("id_ed25519").display()
        ),
    )
    .expect("write ssh_config");
    let out = Command::new(common::tunnelfleet_bin())
        .args(["check", "--json", "--limit", "fleet", "-i"])
        .arg(&inv)
        .arg("--known-hosts")
        .arg(tb.known_hosts())
        .arg("--ssh-config")
        .arg(&cfg)
        .env_remove("SSH_AUTH_SOCK")
        .env("HOME", tb.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("tunnelfleet");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for h in json(&out)["hosts"].as_array().expect("hosts") {
        assert_eq!(h["via"].as_array().map(Vec::len), Some(1), "{h}");
    }
}
