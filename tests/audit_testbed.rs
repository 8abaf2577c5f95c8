//! `tunnelfleet audit` after a real deploy on the testbed: the controller's audit log records
//! the deploy, each host's audit log is read over SSH, and the merged history names the
//! operator.

mod common;

use std::process::{Command, Output, Stdio};

use common::{Testbed, describe, json};

fn tf(tb: &Testbed, verb: &str, args: &[&str]) -> Output {
    Command::new(common::tunnelfleet_bin())
        .arg(verb)
        .arg("-i")
        .arg(tb.inventory())
        .arg("--known-hosts")
        .arg(tb.known_hosts())
        .args(["--ssh-config", "none"])
        .args(args)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("TUNNELFLEET_INVENTORY")
        .env_remove("TUNNELFLEET_STATE_DIR")
        .env("HOME", tb.path())
        .env("SUDO_USER", "ada-operator")
        .env("COLUMNS", "80")
        .stdin(Stdio::null())
        .output()
        .expect("run tunnelfleet")
}

#[test]
fn audit_merges_the_controllers_and_every_hosts_record_of_a_deploy() {
    let tb = Testbed::up(3, &[]);
    let state = tb.state_with_ca();
    let token = tb.path().join("token").to_string_lossy().into_owned();
    let out = tf(
        &tb,
        "deploy",
        &["--state-dir", &state, "--token-file", &token, "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let out = tf(&tb, "audit", &["--state-dir", &state, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = json(&out);
    let entries = doc["entries"].as_array().cloned().unwrap_or_default();
    let controller: Vec<_> = entries
        .iter()
        .filter(|e| e["source"] == "controller" && e["operation"] == "deploy")
        .collect();
    assert_eq!(
        controller.len(),
        1,
        "the controller recorded the deploy: {doc}"
    );
    assert_eq!(controller[0]["outcome"], "ok", "{doc}");
    assert_eq!(controller[0]["operator"], "ada-operator", "{doc}");
    assert_eq!(
        controller[0]["hosts"],
        serde_json::json!(["h1", "h2", "h3"]),
        "{doc}"
    );
    // The hosts' own lines, read over SSH, collapse into one entry for the three hosts.
    let hosts: Vec<_> = entries
        .iter()
        .filter(|e| e["source"] != "controller" && e["operation"] == "deploy")
        .collect();
    assert_eq!(hosts.len(), 1, "{doc}");
    assert_eq!(hosts[0]["source"], "h1–h3", "{doc}");
    assert_eq!(hosts[0]["operator"], "ada-operator", "{doc}");
    assert!(
        hosts[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("release ")),
        "{doc}"
    );
    // What the hosts hold is what was read (the witness: the file on each host).
    for h in tb.host_names() {
        let log = tb.host_exec(&h, "cat /srv/mcp-tunnel/.tunnelfleet/audit.log");
        assert!(log.contains("\"operator\":\"ada-operator\""), "{h}: {log}");
    }

    // One host: its entries and the controller's that name it.
    let out = tf(
        &tb,
        "audit",
        &["--state-dir", &state, "--host", "h2", "--json"],
    );
    let doc = json(&out);
    for e in doc["entries"].as_array().cloned().unwrap_or_default() {
        assert!(
            e["source"] == "controller" || e["source"] == "h2",
            "--host h2 shows {e}"
        );
    }

    // The table fits 80 columns.
    let out = tf(&tb, "audit", &["--state-dir", &state]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("TIME "), "{text}");
    assert!(text.contains("h1–h3"), "{text}");
    for l in text.lines().take_while(|l| !l.is_empty()) {
        assert!(l.chars().count() <= 80, "{l:?}\n{text}");
    }

    // Nothing since a time to come.
    let out = tf(
        &tb,
        "audit",
        &["--state-dir", &state, "--since", "2099-01-01T00:00:00Z"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no audit entries in that time\n",
        "{}",
        describe(&out)
    );
    let out = tf(&tb, "audit", &["--state-dir", &state, "--since", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}
