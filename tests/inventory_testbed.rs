//! The operator's own Ansible layout drives a real fleet: an INI inventory directory whose
//! `tunnel_domain`, routes and `ansible_host` live in group_vars/host_vars, and a
//! `tunnel_token` kept in vault (encrypted by `ansible-vault` in the test) as the token
//! source. The testbed's edge is the witness.

mod common;

use common::{Testbed, describe, json};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tunnelfleet::inventory::Inventory;

fn ansible_vault_bin() -> PathBuf {
    let inv = std::env::var_os("ANSIBLE_INVENTORY_BIN")
        .filter(|b| !b.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/tunnelfleet-ansible/bin/ansible-inventory"));
    let bin = inv.with_file_name("ansible-vault");
    assert!(
        bin.is_file(),
        "{} not found: install ansible-core 2.19 (scripts/install-deps) or set ANSIBLE_INVENTORY_BIN",
        bin.display()
    );
    bin
}

fn write(path: &Path, text: &str) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// `ansible-vault encrypt_string` of `value` as `name`, with the password file `pw`.
fn encrypt_string(dir: &Path, pw: &Path, name: &str, value: &str) -> String {
    use std::io::Write;
    let tmp = dir.join("ansible-tmp");
    let mut child = Command::new(ansible_vault_bin())
        .args(["encrypt_string", "--vault-password-file"])
        .arg(pw)
        .args(["--stdin-name", name])
        .env("ANSIBLE_LOCAL_TEMP", &tmp)
        .env("ANSIBLE_HOME", &tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ansible-vault");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(value.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("ansible-vault");
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn var(inv: &Inventory, host: &str, name: &str) -> Value {
    inv.host(host)
        .and_then(|h| h.vars.get(name))
        .cloned()
        .unwrap_or_else(|| panic!("testbed inventory: no {name} for {host}"))
}

#[test]
fn group_vars_host_vars_and_a_vaulted_token_drive_the_fleet() {
    let tb = Testbed::up(2, &[]);
    let state = tb.state_with_ca();
    let token_file = tb.path().join("token").to_string_lossy().into_owned();
    let out = tb.tf(
        "deploy",
        &["--state-dir", &state, "--token-file", &token_file, "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // The same fleet, written the way Ansible users keep it: the hosts in INI, with neither
    // an address nor the tunnel's settings; those live in group_vars/ and host_vars/.
    let orig = Inventory::load(&tb.inventory()).expect("testbed inventory");
    let routes = serde_json::to_string(&var(&orig, "h1", "tunnel_routes")).expect("json");
    let key = var(&orig, "h1", "ansible_ssh_private_key_file");
    let dir = tb.path().join("ops-inventory");
    write(
        &dir.join("hosts.ini"),
        "# hosts only: addresses in host_vars, the tunnel in group_vars\n\
         [fleet]\nh1\nh2\n\n[fleet:vars]\ntunnel_name=testbed\n",
    );
    write(
        &dir.join("group_vars/all.yml"),
        &format!("ansible_user: root\nansible_ssh_private_key_file: {key}\n"),
    );
    let tunnel_vars = dir.join("group_vars/fleet/tunnel.yml");
    write(
        &tunnel_vars,
        &format!("tunnel_domain: testbed.example.com\ntunnel_routes: {routes}\n"),
    );
    for (h, file) in [("h1", "host_vars/h1.yml"), ("h2", "host_vars/h2/conn.yaml")] {
        write(
            &dir.join(file),
            &format!(
                "ansible_host: {}\nansible_port: {}\n",
                var(&orig, h, "ansible_host"),
                var(&orig, h, "ansible_port")
            ),
        );
    }
    let check = |extra: &[&str]| {
        let mut args = vec![
            "--state-dir",
            state.as_str(),
            "--token-file",
            token_file.as_str(),
            "--json",
            "--check",
        ];
        args.extend_from_slice(extra);
        let out = tb.tf_with("deploy", &dir, &tb.known_hosts(), &args);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        json(&out)
    };

    // Same domain, routes and addresses as deployed: nothing to do on either host (without
    // group_vars the domain would be missing; without host_vars, `h1` would not resolve).
    let doc = check(&[]);
    let hosts = doc["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2, "{doc}");
    for h in hosts {
        assert_eq!(h["plan"]["write_env"], false, "{h}");
        assert_eq!(
            h["plan"]["actions"].as_array().map(Vec::len),
            Some(0),
            "{h}"
        );
    }

    // A domain changed in group_vars is what deploy would write.
    write(
        &tunnel_vars,
        &format!("tunnel_domain: other.example.com\ntunnel_routes: {routes}\n"),
    );
    let doc = check(&[]);
    for h in doc["hosts"].as_array().expect("hosts") {
        assert_eq!(h["plan"]["write_env"], true, "{h}");
    }
    write(
        &tunnel_vars,
        &format!("tunnel_domain: testbed.example.com\ntunnel_routes: {routes}\n"),
    );

    // A plaintext tunnel_token is refused before any host is touched.
    let token_vars = dir.join("group_vars/fleet/token.yml");
    write(&token_vars, "tunnel_token: not-a-secret-anymore\n");
    let out = tb.tf_with(
        "deploy",
        &dir,
        &tb.known_hosts(),
        &["--state-dir", &state, "--check"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tunnel_token is not vault-encrypted"),
        "{}",
        describe(&out)
    );

    // The tunnel's next token, kept in vault: deploy takes it from there.
    let out = tb.testbed(&["edge-rotate"]);
    assert!(out.status.success(), "{}", describe(&out));
    let next = std::fs::read_to_string(tb.path().join("token.next")).expect("token.next");
    let pw = tb.path().join("vault-pw");
    write(&pw, "a vault password\n");
    write(
        &token_vars,
        &encrypt_string(tb.path(), &pw, "tunnel_token", next.trim()),
    );
    let pw_s = pw.to_string_lossy().into_owned();
    let out = tb.tf_with(
        "deploy",
        &dir,
        &tb.known_hosts(),
        &[
            "--state-dir",
            &state,
            "--json",
            "--vault-password-file",
            &pw_s,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    tb.assert_every_host_on(next.trim());
    let shown = describe(&out);
    assert!(
        !shown.contains(next.trim()),
        "the token in tunnelfleet's output"
    );
    assert!(
        !tb.recorded_commands().contains(next.trim()),
        "the token on a remote command line"
    );
}
