//! Test harness: a real testbed fleet (tests/testbed/testbed) per test, and helpers to run the
//! tunnelfleet binary against it. The testbed is torn down when the value drops.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A running testbed in its own temp dir.
pub struct Testbed {
    pub dir: tempfile::TempDir,
    pub hosts: usize,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn testbed_bin() -> PathBuf {
    repo_root().join("tests/testbed/testbed")
}

pub fn tunnelfleet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tunnelfleet"))
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Testbed {
    /// Brings up `hosts` hosts with extra `up` flags (e.g. `--bastion`, `--latency-ms 20`).
    pub fn up(hosts: usize, extra: &[&str]) -> Testbed {
        let dir = tempfile::Builder::new()
            .prefix("tf-testbed-")
            .tempdir()
            .expect("temp dir for the testbed");
        let n = hosts.to_string();
        let mut args = vec!["up", "--dir"];
        let d = dir.path().to_string_lossy().to_string();
        args.push(&d);
        args.extend(["--hosts", &n]);
        args.extend(extra);
        let out = Command::new(testbed_bin())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run testbed up");
        assert!(out.status.success(), "testbed up failed: {}", show(&out));
        Testbed { dir, hosts }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn inventory(&self) -> PathBuf {
        self.path().join("inventory.yaml")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.path().join("known_hosts")
    }

    pub fn host_names(&self) -> Vec<String> {
        (1..=self.hosts).map(|i| format!("h{i}")).collect()
    }

    /// Runs `testbed ARGS... --dir DIR`-style commands: `testbed(&["fault", "h2", "down"])`.
    pub fn testbed(&self, args: &[&str]) -> Output {
        let d = self.path().to_string_lossy().to_string();
        let (verb, rest) = args.split_first().expect("a testbed verb");
        let mut full = vec![*verb, "--dir", &d];
        full.extend(rest);
        Command::new(testbed_bin())
            .args(&full)
            .stdin(Stdio::null())
            .output()
            .expect("run testbed")
    }

    pub fn fault(&self, host: &str, what: &str) {
        let out = self.testbed(&["fault", host, what]);
        assert!(out.status.success(), "fault {host} {what}: {}", show(&out));
    }

    /// Runs a command inside a host's namespaces (not through ssh), returns stdout.
    pub fn host_exec(&self, host: &str, cmd: &str) -> String {
        let out = self.testbed(&["exec", host, "--", "sh", "-c", cmd]);
        assert!(out.status.success(), "exec on {host}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every command line recorded on every host.
    pub fn recorded_commands(&self) -> String {
        std::fs::read_to_string(self.path().join("commands.log")).unwrap_or_default()
    }

    /// The command lines recorded on one host.
    pub fn host_commands(&self, host: &str) -> String {
        std::fs::read_to_string(self.path().join(format!("hosts/{host}/commands.log")))
            .unwrap_or_default()
    }

    /// A controller state dir (DIR/state) with a CA for the testbed's tunnel (`pki init`).
    pub fn state_with_ca(&self) -> String {
        let state = self.path().join("state").to_string_lossy().into_owned();
        let out = Command::new(tunnelfleet_bin())
            .args(["pki", "init", "--state-dir", &state, "--tunnel", "testbed"])
            .output()
            .expect("pki init");
        assert!(out.status.success(), "pki init: {}", show(&out));
        state
    }

    /// The stand-in edge's statistics (`testbed edge-stats`): connectors up now, timeline.
    pub fn edge_stats(&self) -> serde_json::Value {
        let out = self.testbed(&["edge-stats"]);
        assert!(out.status.success(), "edge-stats: {}", show(&out));
        serde_json::from_slice(&out.stdout).expect("edge-stats json")
    }

    /// Host -> token fingerprints of its connectors up now, per the edge.
    pub fn edge_current(
        &self,
    ) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        let mut m: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
            Default::default();
        for c in self.edge_stats()["current"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            m.entry(c["host"].as_str().unwrap_or_default().to_string())
                .or_default()
                .insert(c["token_fp"].as_str().unwrap_or_default().to_string());
        }
        m
    }

    /// Asserts that, per the edge, every host has connectors up on `token` and on no other.
    pub fn assert_every_host_on(&self, token: &str) {
        let cur = self.edge_current();
        let want = std::collections::BTreeSet::from([fp(token)]);
        for h in self.host_names() {
            assert_eq!(cur.get(&h), Some(&want), "{h}: {cur:?}");
        }
    }

    /// An SSH session to one host, connected as tunnelfleet connects (the testbed's inventory
    /// and known_hosts, no ssh_config), for tests that call `tunnelfleet::ops` directly.
    pub async fn session(&self, host: &str) -> tunnelfleet::ssh::Session {
        let args = tunnelfleet::cli::ConnArgs {
            inventory: vec![self.inventory()],
            vault: Default::default(),
            limit: Some(host.to_string()),
            known_hosts: self.known_hosts().to_string_lossy().into_owned(),
            accept_new: false,
            connect_timeout: std::time::Duration::from_secs(10),
            command_timeout: std::time::Duration::from_secs(60),
            max_starts: 4,
            ssh_config: "none".into(),
        };
        let (_inv, hosts) = args
            .select()
            .await
            .unwrap_or_else(|e| panic!("select {host}: {e}"));
        assert_eq!(hosts.len(), 1, "--limit {host} selects one host");
        let connector =
            tunnelfleet::ssh::Connector::new(args.ssh_options()).expect("ssh connector");
        connector
            .connect(&hosts[0].target)
            .await
            .unwrap_or_else(|e| panic!("connect {host}: {e}"))
    }

    /// Runs tunnelfleet VERB with the testbed's inventory and known_hosts, then `args`.
    pub fn tf(&self, verb: &str, args: &[&str]) -> Output {
        self.tf_with(verb, &self.inventory(), &self.known_hosts(), args)
    }

    /// The command `tf` runs, for running tunnelfleet in the background (to interrupt it).
    pub fn tf_command(&self, verb: &str, args: &[&str]) -> Command {
        let mut c = Command::new(tunnelfleet_bin());
        c.arg(verb)
            .arg("-i")
            .arg(self.inventory())
            .arg("--known-hosts")
            .arg(self.known_hosts())
            .args(["--ssh-config", "none"])
            .args(args)
            .env_remove("SSH_AUTH_SOCK")
            .env("HOME", self.path())
            .env("TUNNELFLEET_MIN_HEALTHY", "0s")
            .stdin(Stdio::null());
        c
    }

    pub fn tf_with(&self, verb: &str, inv: &Path, kh: &Path, args: &[&str]) -> Output {
        Command::new(tunnelfleet_bin())
            .arg(verb)
            .arg("-i")
            .arg(inv)
            .arg("--known-hosts")
            .arg(kh)
            .args(["--ssh-config", "none"])
            .args(args)
            .env_remove("SSH_AUTH_SOCK")
            .env("HOME", self.path())
            // Tests about something else need not wait a release's minimum healthy time; the
            // upgrade tests pass --min-healthy themselves.
            .env("TUNNELFLEET_MIN_HEALTHY", "0s")
            .stdin(Stdio::null())
            .output()
            .expect("run tunnelfleet")
    }
}

impl Testbed {
    /// Runs tunnelfleet VERB with `--state-dir STATE` ahead of `extra`.
    pub fn tf_in(&self, state: &str, verb: &str, extra: &[&str]) -> Output {
        let mut args = vec!["--state-dir", state];
        args.extend(extra);
        self.tf(verb, &args)
    }

    /// A file in the testbed's directory, as a string argument.
    pub fn file(&self, name: &str) -> String {
        self.path().join(name).to_string_lossy().into_owned()
    }

    /// HOST's entry in `status --json` (with the controller state dir STATE).
    pub fn host_status(&self, state: &str, host: &str) -> serde_json::Value {
        let doc = json(&self.tf_in(state, "status", &["--json"]));
        doc["hosts"]
            .as_array()
            .and_then(|a| a.iter().find(|h| h["name"] == host).cloned())
            .unwrap_or_else(|| panic!("{host} in status: {doc}"))
    }

    /// Polls `status` until HOST is ok (90 s at most), and returns its entry.
    pub fn wait_host_ok(&self, state: &str, host: &str, what: &str) -> serde_json::Value {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let h = self.host_status(state, host);
            if h["ok"] == true {
                return h;
            }
            assert!(
                std::time::Instant::now() < end,
                "{host} not ok after {what}: {h}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }

    /// Polls the edge until every host has connectors up on `token` and on no other.
    pub fn wait_edge_on(&self, token: &str, what: &str) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let want = std::collections::BTreeSet::from([fp(token)]);
        loop {
            let cur = self.edge_current();
            if self.host_names().iter().all(|h| cur.get(h) == Some(&want)) {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "edge after {what}: {cur:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = self.testbed(&["down"]);
    }
}

/// Parses stdout as JSON, with the whole output in the panic message when it is not.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", show(out)))
}

pub fn describe(out: &Output) -> String {
    show(out)
}

/// The first 12 hex of sha256 of a token (trailing newline ignored), as the edge and
/// tunnelfleet print token fingerprints.
pub fn fp(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.trim_end().as_bytes()))[..12].to_string()
}

/// Replays the edge's timeline from event `from` on, starting from the connectors up at
/// that point, and returns the fewest hosts that had a connector up at any moment.
pub fn fewest_hosts_up(before: &serde_json::Value, after: &serde_json::Value) -> usize {
    let start = before["timeline"].as_array().map(Vec::len).unwrap_or(0);
    let mut up: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for c in before["current"].as_array().cloned().unwrap_or_default() {
        up.entry(c["host"].as_str().unwrap_or_default().into())
            .or_default()
            .insert(c["connector"].as_str().unwrap_or_default().into());
    }
    let hosts = |up: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>| {
        up.values().filter(|s| !s.is_empty()).count()
    };
    let mut min = hosts(&up);
    for e in after["timeline"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .skip(start)
    {
        let h = e["host"].as_str().unwrap_or_default().to_string();
        let c = e["connector"].as_str().unwrap_or_default().to_string();
        if e["event"] == "up" {
            up.entry(h).or_default().insert(c);
        } else {
            up.entry(h).or_default().remove(&c);
        }
        min = min.min(hosts(&up));
    }
    min
}
