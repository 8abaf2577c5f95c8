//! The setup component's flows against the testbed: the new token from `docker compose run
//! --rm setup` on one host (rotate-token --from-setup), and certificates renewed by its
//! `renew-cert` on every host. Assertions are on the edge's record and the hosts' files and
//! command logs, not on tunnelfleet's report.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;

use common::{Testbed, describe, fp, json};
use serde_json::Value;

struct Fleet {
    tb: Testbed,
    state: String,
    inventory: String,
}

impl Fleet {
    /// A testbed whose inventory configures the setup component (ids from the edge's
    /// stand-in), with the stack deployed on every host.
    fn deployed(n: usize, certificates: bool) -> Fleet {
        let tb = Testbed::up(n, &[]);
        let state = tb.state_with_ca();
        let inventory = tb.path().join("inventory-setup.yaml");
        let f = Fleet {
            inventory: inventory.to_string_lossy().into_owned(),
            tb,
            state,
        };
        // The certificates go out from the controller's CA first; a fleet whose certificates
        // come from the setup component has the CA key in data/ (the component made it).
        f.write_inventory(false);
        let out = f.tf("deploy", &["--token-file", &f.file("token")]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        // The guide's install step, by hand on one host: the component's first run (token
        // version 1) reveals the tunnel's token. The identity token is read from its file
        // inside the host's shell, never put on a command line.
        let out = f.tb.host_exec(
            "h1",
            &format!(
                "cd /srv/mcp-tunnel/current && ANTHROPIC_IDENTITY_TOKEN=$(cat '{}') && \
                 export ANTHROPIC_IDENTITY_TOKEN && \
                 docker compose -p mcp-tunnel-testbed run --rm -T setup --token-version=1 --output=dir:/data 2>&1 && \
                 [ \"$(cat /srv/mcp-tunnel/shared/data/tunnel-token)\" = \"$(cat '{}')\" ] && echo same-token",
                f.file("identity-token"),
                f.file("token")
            ),
        );
        assert!(out.contains("same-token"), "install run of setup: {out}");
        if certificates {
            let key = format!("{}/pki/testbed/ca.key", f.state);
            for h in f.tb.host_names() {
                f.tb.host_exec(
                    &h,
                    &format!(
                        "install -m 0600 '{key}' /srv/mcp-tunnel/shared/data/ca.key && \
                         test -s /srv/mcp-tunnel/shared/data/ca.key"
                    ),
                );
            }
            f.write_inventory(true);
            let out = f.tf("deploy", &[]);
            assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        }
        f
    }

    fn write_inventory(&self, certificates: bool) {
        let setup: Value = serde_json::from_str(
            &std::fs::read_to_string(self.tb.path().join("setup.json")).expect("setup.json"),
        )
        .expect("setup.json is JSON");
        let base = std::fs::read_to_string(self.tb.inventory()).expect("inventory");
        let vars = format!(
            "        tunnel_name: testbed\n\
             \x20       setup_tunnel_id: {}\n\
             \x20       setup_federation_rule_id: {}\n\
             \x20       setup_organization_id: {}\n\
             \x20       setup_certificates: {certificates}\n",
            setup["tunnel_id"].as_str().expect("tunnel_id"),
            setup["federation_rule_id"]
                .as_str()
                .expect("federation_rule_id"),
            setup["organization_id"].as_str().expect("organization_id"),
        );
        let text = base.replacen("        tunnel_name: testbed\n", &vars, 1);
        assert_ne!(text, base, "the testbed inventory changed shape");
        std::fs::write(&self.inventory, text).expect("write inventory");
    }

    fn file(&self, name: &str) -> String {
        self.tb.path().join(name).to_string_lossy().into_owned()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.tb.path().join(name)).expect("read testbed file")
    }

    fn tf(&self, verb: &str, args: &[&str]) -> Output {
        let mut a = vec!["--state-dir", self.state.as_str()];
        a.extend(args);
        self.tb.tf_with(
            verb,
            std::path::Path::new(&self.inventory),
            &self.tb.known_hosts(),
            &a,
        )
    }

    fn edge(&self) -> Value {
        self.tb.edge_stats()
    }

    fn current(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.tb.edge_current()
    }

    /// The hosts whose recorded command lines ran the setup component, with those lines.
    fn setup_runs(&self) -> BTreeMap<String, Vec<String>> {
        let mut m = BTreeMap::new();
        for h in self.tb.host_names() {
            let lines: Vec<String> = self
                .tb
                .host_commands(&h)
                .lines()
                .filter(|l| l.contains("run --rm -T setup"))
                .map(str::to_string)
                .collect();
            if !lines.is_empty() {
                m.insert(h, lines);
            }
        }
        m
    }

    /// The token version the host recorded for its last setup run.
    fn version_on(&self, host: &str) -> String {
        self.tb
            .host_exec(
                host,
                "cat /srv/mcp-tunnel/.tunnelfleet/setup-token-version 2>/dev/null || true",
            )
            .trim()
            .to_string()
    }

    /// Every file of the controller's state dir, as text.
    fn state_text(&self) -> String {
        let mut text = String::new();
        let mut dirs = vec![std::path::PathBuf::from(&self.state)];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("read state dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_none_or(|x| x != "key") {
                    text.push_str(&String::from_utf8_lossy(
                        &std::fs::read(&p).unwrap_or_default(),
                    ));
                }
            }
        }
        text
    }
}

#[test]
fn rotation_takes_the_token_from_the_setup_component_on_one_host() {
    let f = Fleet::deployed(5, false);
    let old = f.read("token");
    let identity = f.read("identity-token");
    let out = f.tf(
        "rotate-token",
        &[
            "--from-setup",
            "--identity-token-file",
            &f.file("identity-token"),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // The edge rotated (the component bumped the version) and wrote the new token.
    let new = f.read("token.next");
    assert_ne!(fp(&new), fp(&old));
    assert_eq!(json(&out)["new_token_fingerprint"], fp(&new));
    assert_eq!(f.edge()["setup_token_version"], 2);
    // The component ran once, on one host, with the version bumped.
    let runs = f.setup_runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let lines: Vec<&String> = runs.values().flatten().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let setup_host = runs.keys().next().cloned().unwrap_or_default();
    assert_eq!(f.version_on(&setup_host), "2");
    // Every host serves on the new token only.
    f.tb.assert_every_host_on(&new);
    // Neither the identity token nor the tunnel token in any command line, output or state.
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let commands = f.tb.recorded_commands();
    let state = f.state_text();
    for secret in [identity.trim(), new.trim()] {
        assert!(!text.contains(secret), "a secret in the output");
        assert!(!commands.contains(secret), "a secret in a command line");
        assert!(!state.contains(secret), "a secret in the state dir");
    }

    // A second rotation, run on another host, goes one version further.
    let out = f.tf(
        "rotate-token",
        &[
            "--from-setup",
            "--setup-host",
            "h3",
            "--identity-token-file",
            &f.file("identity-token"),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let newer = f.read("token.next");
    assert_ne!(fp(&newer), fp(&new));
    assert_eq!(f.edge()["setup_token_version"], 3);
    let runs = f.setup_runs();
    assert!(runs.get("h3").is_some_and(|l| l.len() == 1), "{runs:?}");
    assert_eq!(f.version_on("h3"), "3");
    f.tb.assert_every_host_on(&newer);
}

#[test]
fn a_refused_identity_token_changes_nothing() {
    let f = Fleet::deployed(3, false);
    let old = f.read("token");
    let before = f.current();
    // A well-formed JWT the edge does not know.
    let bogus = f.tb.path().join("bogus-identity");
    std::fs::write(
        &bogus,
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJub2JvZHkifQ.c2lnbmF0dXJl\n",
    )
    .expect("write");
    let mut perm = std::fs::metadata(&bogus).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o600);
    std::fs::set_permissions(&bogus, perm).expect("chmod");
    let out = f.tf(
        "rotate-token",
        &[
            "--from-setup",
            "--identity-token-file",
            bogus.to_str().expect("path"),
        ],
    );
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("setup component"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    // Still the old token everywhere, no host locked.
    assert_eq!(f.current(), before);
    assert!(before.values().all(|s| s == &BTreeSet::from([fp(&old)])));
    for h in f.tb.host_names() {
        let lock = f.tb.host_exec(
            &h,
            "ls /srv/mcp-tunnel/.tunnelfleet/lock 2>/dev/null || true",
        );
        assert_eq!(lock.trim(), "", "{h}: lock left behind");
    }
    // A malformed identity token is refused before any host is touched.
    let commands = f.tb.recorded_commands().len();
    std::fs::write(&bogus, "not-a-jwt\n").expect("write");
    let out = f.tf(
        "rotate-token",
        &[
            "--from-setup",
            "--identity-token-file",
            bogus.to_str().expect("path"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a JWT"));
    assert_eq!(f.tb.recorded_commands().len(), commands);
}

#[test]
fn resume_reads_the_setup_token_back_instead_of_rotating_again() {
    let f = Fleet::deployed(4, false);
    f.tb.fault("h4", "partition");
    let out = f.tf(
        "rotate-token",
        &[
            "--from-setup",
            "--allow-down",
            "--identity-token-file",
            &f.file("identity-token"),
            "--json",
        ],
    );
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    let new = f.read("token.next");
    f.tb.fault("h4", "heal");
    let h1_before = f.tb.host_commands("h1").lines().count();
    let out = f.tf("rotate-token", &["--resume", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json(&out)["new_token_fingerprint"], fp(&new));
    // The component ran once in all; the resumed run only read its token back on h1.
    let runs = f.setup_runs();
    assert_eq!(runs.values().map(Vec::len).sum::<usize>(), 1, "{runs:?}");
    assert_eq!(f.edge()["setup_token_version"], 2);
    let h1_after: Vec<String> =
        f.tb.host_commands("h1")
            .lines()
            .skip(h1_before)
            .map(str::to_string)
            .collect();
    assert!(
        h1_after
            .iter()
            .all(|l| !l.contains("compose") && !l.contains("TUNNEL_TOKEN")),
        "{h1_after:?}"
    );
    f.tb.assert_every_host_on(&new);
}

#[test]
fn renew_cert_runs_the_setup_component_on_every_host_without_restarts() {
    let f = Fleet::deployed(3, true);
    let crt = "/srv/mcp-tunnel/shared/data/tls.crt";
    let sum = |h: &str| f.tb.host_exec(h, &format!("sha256sum {crt}"));
    let serial = |h: &str| {
        f.tb.host_exec(h, &format!("openssl x509 -noout -serial -in {crt}"))
            .trim()
            .trim_start_matches("serial=")
            .to_uppercase()
    };
    let hosts = f.tb.host_names();
    let sums: Vec<String> = hosts.iter().map(|h| sum(h)).collect();
    let serials: Vec<String> = hosts.iter().map(|h| serial(h)).collect();
    let events = f.edge()["timeline"].as_array().map(Vec::len);

    // Far from expiry: the component does nothing, on every host.
    let out = f.tf("renew-cert", &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = json(&out);
    for h in doc["hosts"].as_array().expect("hosts") {
        assert_eq!(h["renewed"], false, "{h}");
    }
    assert_eq!(hosts.iter().map(|h| sum(h)).collect::<Vec<_>>(), sums);
    assert_eq!(
        f.setup_runs().len(),
        hosts.len(),
        "renew-cert ran on every host"
    );

    // Within --renew-before: a new certificate on every host from the same CA.
    let out = f.tf("renew-cert", &["--renew-before", "2400h", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = json(&out);
    for (i, h) in hosts.iter().enumerate() {
        let s = serial(h);
        assert_ne!(s, serials[i], "{h}: serial unchanged");
        let reported = doc["hosts"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == h.as_str()))
            .expect("host in --json");
        assert_eq!(reported["renewed"], true);
        assert_eq!(
            reported["serial"].as_str().map(str::to_uppercase),
            Some(s.clone())
        );
        let verify = f.tb.host_exec(
            h,
            "cd /srv/mcp-tunnel/shared/data && openssl verify -CAfile ca.crt tls.crt",
        );
        assert!(verify.contains("tls.crt: OK"), "{h}: {verify}");
    }
    assert_eq!(
        f.edge()["timeline"].as_array().map(Vec::len),
        events,
        "a connector restarted"
    );
    // status shows each host's new serial.
    let out = f.tf("status", &["--json"]);
    for h in json(&out)["hosts"].as_array().expect("hosts") {
        let name = h["name"].as_str().unwrap_or_default();
        assert_eq!(
            h["cert_serial"].as_str().map(str::to_uppercase),
            Some(serial(name)),
            "{name}"
        );
    }
    // --rekey is refused for these certificates before any host is touched.
    let commands = f.tb.recorded_commands().len();
    let out = f.tf("renew-cert", &["--rekey"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert_eq!(f.tb.recorded_commands().len(), commands);
}

#[test]
fn a_host_without_the_setup_service_is_told_to_deploy_first() {
    // Deployed before the setup_* vars were set: no setup service in the compose file.
    let tb = Testbed::up(2, &[]);
    let state = tb.state_with_ca();
    let token = tb.path().join("token").to_string_lossy().into_owned();
    let out = tb.tf("deploy", &["--state-dir", &state, "--token-file", &token]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let f = Fleet {
        inventory: tb
            .path()
            .join("inventory-setup.yaml")
            .to_string_lossy()
            .into_owned(),
        tb,
        state,
    };
    f.write_inventory(false);
    let before = f.current();
    let out = f.tf(
        "rotate-token",
        &[
            "--from-setup",
            "--identity-token-file",
            &f.file("identity-token"),
        ],
    );
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no setup service"), "{err}");
    assert!(err.contains("tunnelfleet deploy"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(f.current(), before);
    assert_eq!(f.edge()["setup_token_version"], Value::Null);
}

#[test]
fn resume_from_setup_refuses_a_rotation_that_used_another_token() {
    let f = Fleet::deployed(2, false);
    f.tb.fault("h2", "partition");
    let out = f.tb.testbed(&["edge-rotate"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = f.tf(
        "rotate-token",
        &[
            "--token-file",
            &f.file("token.next"),
            "--allow-down",
            "--connect-timeout",
            "2s",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    f.tb.fault("h2", "heal");
    let version = f.edge()["setup_token_version"].clone();
    let commands = f.tb.recorded_commands().len();
    let out = f.tf(
        "rotate-token",
        &[
            "--resume",
            "--from-setup",
            "--identity-token-file",
            &f.file("identity-token"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not come from the setup component"),
        "{}",
        describe(&out)
    );
    assert_eq!(f.edge()["setup_token_version"], version);
    assert_eq!(f.tb.recorded_commands().len(), commands);
}
