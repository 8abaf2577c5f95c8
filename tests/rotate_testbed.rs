//! Token rotation and certificate renewal against the testbed. Assertions are on what the
//! stand-in edge saw (its timeline of connectors up and down), not on tunnelfleet's report.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Testbed, describe, fp, json};
use serde_json::Value;

struct Fleet {
    tb: Testbed,
    state: String,
}

impl Fleet {
    /// A testbed with the stack deployed on every host.
    fn deployed(n: usize) -> Fleet {
        let tb = Testbed::up(n, &[]);
        let state = tb.state_with_ca();
        let f = Fleet { tb, state };
        let out = f.tf("deploy", &["--token-file", &f.file("token")]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        f
    }

    fn file(&self, name: &str) -> String {
        self.tb.path().join(name).to_string_lossy().into_owned()
    }

    fn token(&self, name: &str) -> String {
        std::fs::read_to_string(self.tb.path().join(name)).expect("token file")
    }

    fn tf(&self, verb: &str, args: &[&str]) -> Output {
        let mut a = vec!["--state-dir", self.state.as_str()];
        a.extend(args);
        self.tb.tf(verb, &a)
    }

    /// The command line of tunnelfleet VERB, for running it in the background.
    fn tf_cmd(&self, verb: &str, args: &[&str]) -> Command {
        let mut c = Command::new(common::tunnelfleet_bin());
        c.arg(verb)
            .arg("-i")
            .arg(self.tb.inventory())
            .arg("--known-hosts")
            .arg(self.tb.known_hosts())
            .args(["--ssh-config", "none", "--state-dir", &self.state])
            .args(args)
            .env_remove("SSH_AUTH_SOCK")
            .env("HOME", self.tb.path())
            .stdin(Stdio::null());
        c
    }

    fn edge(&self) -> Value {
        self.tb.edge_stats()
    }

    fn rotate_at_edge(&self) -> String {
        let out = self.tb.testbed(&["edge-rotate"]);
        assert!(out.status.success(), "{}", describe(&out));
        // Keep each rotation's token in its own file.
        let t = self.token("token.next");
        let name = format!("token.{}", fp(&t));
        std::fs::write(self.tb.path().join(&name), &t).expect("write token");
        let mut perm = std::fs::metadata(self.tb.path().join(&name))
            .expect("stat")
            .permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o600);
        std::fs::set_permissions(self.tb.path().join(&name), perm).expect("chmod");
        name
    }

    /// Host -> token fingerprints of its connectors up now, per the edge.
    fn current(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.tb.edge_current()
    }
}

#[test]
fn rotation_keeps_every_host_ready_and_ends_on_the_new_token() {
    let f = Fleet::deployed(5);
    let old = f.token("token");
    let before = f.edge();
    let name = f.rotate_at_edge();
    let new = f.token(&name);
    let out = f.tf("rotate-token", &["--token-file", &f.file(&name), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = json(&out);
    let after = f.edge();
    // Every host ends with exactly one connector, on the new token.
    f.tb.assert_every_host_on(&new);
    let cur = f.current();
    assert!(!cur.values().any(|s| s.contains(&fp(&old))));
    // The edge never saw fewer hosts with a connector than there are hosts.
    assert_eq!(common::fewest_hosts_up(&before, &after), 5);
    // The report has the timings and the window; no secret anywhere.
    assert!(doc["exposure_window_ms"].as_u64().is_some());
    assert_eq!(doc["fewest_ready_hosts"], 5);
    for h in doc["hosts"].as_array().expect("hosts") {
        assert!(
            h["persisted_ms"].is_u64()
                && h["new_ready_ms"].is_u64()
                && h["old_stopped_ms"].is_u64(),
            "{h}"
        );
    }
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut haystacks = vec![text, f.tb.recorded_commands()];
    for entry in walk(&f.tb.path().join("state")) {
        haystacks.push(std::fs::read_to_string(entry).unwrap_or_default());
    }
    for h in f.tb.host_names() {
        haystacks.push(f.tb.host_exec(&h, "cat /srv/mcp-tunnel/.tunnelfleet/audit.log"));
    }
    for hay in &haystacks {
        assert!(
            !hay.contains(new.trim()) && !hay.contains(old.trim()),
            "a token leaked"
        );
    }
    assert!(
        haystacks.iter().any(|h| h.contains(&fp(&new))),
        "fingerprints are recorded"
    );

    // A reboot right after: the host comes back on the new token.
    f.tb.fault("h2", "reboot");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && f.current().get("h2") != Some(&BTreeSet::from([fp(&new)])) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(f.current().get("h2"), Some(&BTreeSet::from([fp(&new)])));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if !p.ends_with("tls.key") && !p.ends_with("ca.key") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_refused_token_stops_the_rotation_with_every_old_connector_up() {
    // Every host's new connector starts at once (make-before-break, no canary): each one's
    // gate fails and removes it, and the old connectors never stop serving.
    let f = Fleet::deployed(4);
    let old = f.token("token");
    // A well-formed token the edge does not know.
    let bogus = "eyJhIjoidGVzdGJlZCIsInQiOiJ1bmtub3duIiwicyI6Im5vdC1yZWdpc3RlcmVkIn0=";
    let path = f.tb.path().join("bogus");
    std::fs::write(&path, bogus).expect("write");
    let mut perm = std::fs::metadata(&path).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o600);
    std::fs::set_permissions(&path, perm).expect("chmod");
    let out = f.tf(
        "rotate-token",
        &["--token-file", &f.file("bogus"), "--gate-timeout", "5s"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("old connector still serves"), "{text}");
    assert!(text.contains("rotate-token"), "says what to run: {text}");
    f.tb.assert_every_host_on(&old);
    // Nothing crash-loops: each host has one connector container again.
    for h in f.tb.host_names() {
        let n = f.tb.host_exec(
            &h,
            "docker ps -a --filter label=com.docker.compose.service=cloudflared -q | wc -l",
        );
        assert_eq!(n.trim(), "1", "{h}");
    }
}

#[test]
fn readiness_is_probed_without_commands_on_the_host() {
    let f = Fleet::deployed(3);
    let name = f.rotate_at_edge();
    let new = f.token(&name);
    let before: Vec<usize> =
        f.tb.host_names()
            .iter()
            .map(|h| f.tb.host_commands(h).lines().count())
            .collect();
    let out = f.tf("rotate-token", &["--token-file", &f.file(&name)]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    f.tb.assert_every_host_on(&new);
    for (h, skip) in f.tb.host_names().iter().zip(before) {
        let cmds: Vec<String> =
            f.tb.host_commands(h)
                .lines()
                .skip(skip)
                .map(|l| {
                    let v: Value = serde_json::from_str(l).expect("command log line");
                    v["cmd"].as_str().unwrap_or_default().to_string()
                })
                .collect();
        // Facts, listing, lock, persist, start, then retire (listing, stop), audit, unlock:
        // however long the new connector takes to register.
        assert!(cmds.len() <= 9, "{h}: {} commands: {cmds:#?}", cmds.len());
        let start = cmds
            .iter()
            .position(|c| c.contains("--no-recreate") && !c.contains("docker stop"))
            .unwrap_or_else(|| panic!("{h}: no scale-up: {cmds:#?}"));
        // The next command retires the old connector: nothing ran on the host while waiting
        // for the new one to be ready (the probes go over direct-tcpip).
        let next = &cmds[start + 1..];
        assert!(
            next.iter().take(2).any(|c| c.contains("docker stop")),
            "{h}: commands between the start and the retirement: {next:#?}"
        );
    }
}

#[test]
fn in_place_moves_one_host_at_a_time_canary_first() {
    let f = Fleet::deployed(3);
    let before = f.edge();
    let name = f.rotate_at_edge();
    let new = f.token(&name);
    let out = f.tf(
        "rotate-token",
        &["--token-file", &f.file(&name), "--in-place", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    f.tb.assert_every_host_on(&new);
    // Recreated in place one host at a time: never more than one host without a connector.
    assert!(common::fewest_hosts_up(&before, &f.edge()) >= 2);
    let doc = json(&out);
    let mut ready: Vec<u64> = doc["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| {
            assert_eq!(h["in_place"], true, "{h}");
            h["new_ready_ms"].as_u64().expect("new_ready_ms")
        })
        .collect();
    ready.sort();
    // The canary's new connector was ready before any other host was recreated.
    for h in doc["hosts"].as_array().expect("hosts") {
        if let Some(from) = h["unavailable_from_ms"].as_u64()
            && h["new_ready_ms"].as_u64() != Some(ready[0])
        {
            assert!(from >= ready[0], "{h} started before the canary was ready");
        }
    }
}

#[test]
fn a_down_host_is_pending_and_resume_completes_only_it() {
    let f = Fleet::deployed(4);
    f.tb.fault("h3", "partition");
    let name = f.rotate_at_edge();
    let new = f.token(&name);
    // Without --allow-down: preflight fails and nothing is touched.
    let env_before =
        f.tb.host_exec("h1", "sha256sum /srv/mcp-tunnel/shared/.env");
    let out = f.tf(
        "rotate-token",
        &["--token-file", &f.file(&name), "--connect-timeout", "2s"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was changed"));
    assert_eq!(
        env_before,
        f.tb.host_exec("h1", "sha256sum /srv/mcp-tunnel/shared/.env")
    );
    // With --allow-down: the others complete; h3 is pending; exit non-zero.
    let out = f.tf(
        "rotate-token",
        &[
            "--token-file",
            &f.file(&name),
            "--allow-down",
            "--connect-timeout",
            "2s",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let doc = json(&out);
    for h in doc["hosts"].as_array().expect("hosts") {
        if h["name"] == "h3" {
            assert_eq!(h["status"], "pending", "{h}");
        } else {
            assert_eq!(h["ok"], true, "{h}");
        }
    }
    f.tb.fault("h3", "heal");
    let logs_before: Vec<String> = ["h1", "h2", "h4"]
        .iter()
        .map(|h| f.tb.host_commands(h))
        .collect();
    let out = f.tf(
        "rotate-token",
        &["--resume", "--token-file", &f.file(&name)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let logs_after: Vec<String> = ["h1", "h2", "h4"]
        .iter()
        .map(|h| f.tb.host_commands(h))
        .collect();
    assert_eq!(
        logs_before, logs_after,
        "--resume touched a host that was done"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && f.current().get("h3") != Some(&BTreeSet::from([fp(&new)])) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(f.current().get("h3"), Some(&BTreeSet::from([fp(&new)])));
}

#[test]
fn two_controllers_at_once_one_fails_naming_the_holder() {
    let f = Fleet::deployed(3);
    let name = f.rotate_at_edge();
    let a = f
        .tf_cmd("rotate-token", &["--token-file", &f.file(&name)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a");
    let b = f
        .tf_cmd("rotate-token", &["--token-file", &f.file(&name)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn b");
    let (a, b) = (
        a.wait_with_output().expect("a"),
        b.wait_with_output().expect("b"),
    );
    let oks = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert!(
        oks <= 1,
        "both rotated at once:\n{}\n{}",
        describe(&a),
        describe(&b)
    );
    for o in [&a, &b] {
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("held by") && err.contains("rotate-token"),
                "{err}"
            );
        }
    }
    // Whatever happened, a later rotation converges.
    let out = f.tf("rotate-token", &["--token-file", &f.file(&name)]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn killed_controller_always_resumes_and_env_is_never_partial() {
    let f = Fleet::deployed(3);
    // Deterministic "random" kill points over the run's span.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..20 {
        let name = f.rotate_at_edge();
        let new = f.token(&name);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(x % 2500);
        let mut child = f
            .tf_cmd("rotate-token", &["--token-file", &f.file(&name)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let start = Instant::now();
        while start.elapsed() < delay {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Every .env is complete: exactly the two lines, the token one of the valid shapes.
        for h in f.tb.host_names() {
            let env = f.tb.host_exec(&h, "cat /srv/mcp-tunnel/shared/.env");
            assert!(
                env.starts_with("TUNNEL_TOKEN=eyJ")
                    && env.contains("\nTUNNEL_DOMAIN=testbed.example.com\n"),
                "round {round}, {h}: partial .env ({} bytes)",
                env.len()
            );
        }
        let out = f.tf(
            "rotate-token",
            &["--resume", "--token-file", &f.file(&name)],
        );
        if !out.status.success() {
            // Killed before the operation was recorded: a plain run converges.
            let out2 = f.tf("rotate-token", &["--token-file", &f.file(&name)]);
            assert!(
                out2.status.success(),
                "round {round} (killed after {delay:?}): resume: {}\nplain: {}",
                describe(&out),
                describe(&out2)
            );
        }
        let cur = f.current();
        for h in f.tb.host_names() {
            assert_eq!(
                cur.get(&h),
                Some(&BTreeSet::from([fp(&new)])),
                "round {round}: {h}: {cur:?}"
            );
        }
    }
}

#[test]
fn renew_cert_only_when_due_and_without_restarts() {
    let f = Fleet::deployed(3);
    let serial = |h: &str| {
        f.tb.host_exec(
            h,
            "openssl x509 -noout -serial -in /srv/mcp-tunnel/shared/data/tls.crt",
        )
    };
    let before: Vec<String> = f.tb.host_names().iter().map(|h| serial(h)).collect();
    let events = f.edge()["timeline"].as_array().map(Vec::len);
    // Far from expiry: nothing to do, nothing touched.
    let out = f.tf("renew-cert", &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json(&out)["tunnels"][0]["renewed"], false);
    let now: Vec<String> = f.tb.host_names().iter().map(|h| serial(h)).collect();
    assert_eq!(before, now);
    // Within --renew-before: a new certificate on every host, nothing restarted.
    let out = f.tf("renew-cert", &["--renew-before", "2400h", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = json(&out);
    assert_eq!(doc["tunnels"][0]["renewed"], true);
    let new_serial = doc["tunnels"][0]["serial"]
        .as_str()
        .expect("serial")
        .to_uppercase();
    for h in f.tb.host_names() {
        let s = serial(&h);
        assert!(s.trim().ends_with(&new_serial), "{h}: {s} vs {new_serial}");
        assert!(!before.contains(&s), "{h}: serial unchanged");
    }
    assert_eq!(
        f.edge()["timeline"].as_array().map(Vec::len),
        events,
        "a connector restarted"
    );
    // status shows the new serial everywhere.
    let out = f.tf("status", &["--json"]);
    for h in json(&out)["hosts"].as_array().expect("hosts") {
        assert_eq!(
            h["cert_serial"].as_str().map(str::to_uppercase),
            Some(new_serial.clone())
        );
    }
}

#[test]
fn rotation_with_the_token_from_the_tunnels_api() {
    let f = Fleet::deployed(3);
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(f.tb.path().join("state.json")).expect("state.json"),
    )
    .expect("state json");
    let edge = &state["helpers"]["edge"];
    let base = format!("http://127.0.0.1:{}", edge["api_port"]);
    let tunnel_id = edge["tunnel_id"].as_str().expect("tunnel id").to_string();
    let name = f.rotate_at_edge();
    let new = f.token(&name);
    let cred = f.file("api-credential");
    let out = f.tf(
        "rotate-token",
        &[
            "--api-base",
            &base,
            "--tunnel-id",
            &tunnel_id,
            "--api-credential-file",
            &cred,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json(&out)["new_token_fingerprint"], fp(&new));
    f.tb.assert_every_host_on(&new);
    let credential = f.token("api-credential");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains(credential.trim()) && !text.contains(new.trim()));
    assert!(!f.tb.recorded_commands().contains(new.trim()));
}

#[test]
fn guided_rotation_asks_for_the_token_after_preflight_on_a_terminal() {
    use std::io::{Read, Write};
    let f = Fleet::deployed(2);
    let name = f.rotate_at_edge();
    let new = f.token(&name);
    // Run under a pseudo-terminal (util-linux `script`), with no token source given.
    let inner = format!(
        "{} rotate-token -i {} --known-hosts {} --ssh-config none --state-dir {}",
        common::tunnelfleet_bin().display(),
        f.tb.inventory().display(),
        f.tb.known_hosts().display(),
        f.state
    );
    let mut child = Command::new("script")
        .args(["-qfec", &inner, "/dev/null"])
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("TUNNEL_TOKEN")
        .env("HOME", f.tb.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&seen).contains("New tunnel token") {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no prompt: {}",
            String::from_utf8_lossy(&seen)
        );
        if let Ok(chunk) = rx.recv_timeout(left) {
            seen.extend(chunk);
        }
    }
    // Preflight ran first: every host is locked before the operator is asked.
    for h in f.tb.host_names() {
        let lock = f.tb.host_exec(
            &h,
            "ls /srv/mcp-tunnel/.tunnelfleet/lock/ 2>/dev/null; true",
        );
        assert!(lock.contains("holder.json"), "{h} not locked at the prompt");
    }
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{}\r", new.trim()).as_bytes())
        .expect("type the token");
    let status = child.wait().expect("wait");
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.extend(chunk);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(status.success(), "{text}");
    assert!(!text.contains(new.trim()), "the pasted token was echoed");
    f.tb.assert_every_host_on(&new);
}

#[test]
fn resume_gives_a_new_connector_to_a_host_whose_old_one_is_not_running() {
    // A host away during the rotation comes back with its connector not running (stopped
    // here; crash-looping on the old token in real life: the old token no longer registers).
    // The resumed rotation must still start a connector on the new token there.
    let f = Fleet::deployed(3);
    f.tb.fault("h3", "partition");
    let name = f.rotate_at_edge();
    let new = f.token(&name);
    let out = f.tf(
        "rotate-token",
        &[
            "--token-file",
            &f.file(&name),
            "--allow-down",
            "--connect-timeout",
            "2s",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    f.tb.fault("h3", "heal");
    let stopped = f.tb.host_exec(
        "h3",
        "for n in $(docker ps -a --filter label=com.docker.compose.service=cloudflared --format '{{.Names}}'); \
         do docker stop -t 0 \"$n\" >/dev/null; done; \
         docker ps -a --filter label=com.docker.compose.service=cloudflared --format '{{.Names}} {{.State}}'",
    );
    assert!(
        !stopped.trim().is_empty() && !stopped.contains("running"),
        "{stopped}"
    );
    let out = f.tf(
        "rotate-token",
        &["--resume", "--token-file", &f.file(&name)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    f.tb.assert_every_host_on(&new);
    let left = f.tb.host_exec(
        "h3",
        "docker ps -a --filter label=com.docker.compose.service=cloudflared --format '{{.Names}} {{.State}}'",
    );
    assert_eq!(left.trim().lines().count(), 1, "{left}");
}

/// `.env`'s hash and the shared directory's entries (a temp file left behind would show).
fn env_and_shared(f: &Fleet, h: &str) -> String {
    f.tb.host_exec(
        h,
        "sha256sum /srv/mcp-tunnel/shared/.env; ls -A /srv/mcp-tunnel/shared",
    )
}

fn lock_state(f: &Fleet, h: &str) -> String {
    f.tb.host_exec(
        h,
        "cat /srv/mcp-tunnel/.tunnelfleet/lock/holder.json 2>/dev/null || echo free",
    )
}

#[test]
fn a_rotation_stopped_before_the_token_writes_nothing() {
    // The .env write starts on every host during preflight and waits for the token; a run
    // that ends without one (here: no token source and no terminal) must leave every .env
    // and the directory around it as they were, and no lock.
    let f = Fleet::deployed(2);
    let before: Vec<String> = ["h1", "h2"].iter().map(|h| env_and_shared(&f, h)).collect();
    let out = f.tf("rotate-token", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no new token"),
        "{}",
        describe(&out)
    );
    let after: Vec<String> = ["h1", "h2"].iter().map(|h| env_and_shared(&f, h)).collect();
    assert_eq!(before, after);
    for h in ["h1", "h2"] {
        assert_eq!(lock_state(&f, h).trim(), "free", "{h}");
    }
    // And the next rotation goes through.
    let name = f.rotate_at_edge();
    let out = f.tf("rotate-token", &["--token-file", &f.file(&name)]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn a_lock_held_on_one_host_gives_back_the_locks_taken_early() {
    // Every host tries the fleet lock during preflight. One is held by someone else: the
    // locks taken early are given back and taken again in order (the first host alone,
    // then the others), the held one is not waited for (--lock-wait 0s), nothing is
    // written, and every lock this run took is released.
    let f = Fleet::deployed(3);
    let holder = r#"{"operation":"manual","operator":"ann","controller":"ctl9","pid":7,"since":"2026-01-01T00:00:00Z"}"#;
    f.tb.host_exec(
        "h2",
        &format!(
            "mkdir -p /srv/mcp-tunnel/.tunnelfleet/lock && printf '%s\\n' '{holder}' > /srv/mcp-tunnel/.tunnelfleet/lock/holder.json"
        ),
    );
    let before: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| env_and_shared(&f, h))
        .collect();
    let name = f.rotate_at_edge();
    let out = f.tf(
        "rotate-token",
        &["--token-file", &f.file(&name), "--lock-wait", "0s"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing was changed") && err.contains("held by") && err.contains("ann"),
        "{}",
        describe(&out)
    );
    let after: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| env_and_shared(&f, h))
        .collect();
    assert_eq!(before, after);
    assert_eq!(lock_state(&f, "h1").trim(), "free");
    assert_eq!(lock_state(&f, "h3").trim(), "free");
    assert_eq!(lock_state(&f, "h2").trim(), holder);
    // Once the holder is gone, the rotation goes through.
    f.tb.host_exec("h2", "rm -rf /srv/mcp-tunnel/.tunnelfleet/lock");
    let out = f.tf("rotate-token", &["--token-file", &f.file(&name)]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let new = fp(&f.token(&name));
    for (h, fps) in f.current() {
        assert_eq!(fps, BTreeSet::from([new.clone()]), "{h}");
    }
}

#[test]
fn the_round_trip_trace_shows_each_step_and_never_the_token() {
    // TUNNELFLEET_TRACE_RTT=1: every host's protocol steps with times, sizes only. The
    // token's write was started during preflight ("input later") and fed once in hand.
    let f = Fleet::deployed(1);
    let name = f.rotate_at_edge();
    let token = f.token(&name);
    let out = f
        .tf_cmd("rotate-token", &["--token-file", &f.file(&name)])
        .env("TUNNELFLEET_TRACE_RTT", "1")
        .output()
        .expect("run tunnelfleet");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let trace: Vec<&str> = err.lines().filter(|l| l.starts_with("rtt ")).collect();
    for step in [
        "connect: key exchange done",
        "auth: done",
        "open confirmed <-",
        "exec (input later) ->",
        "stdin ->",
        "<- exit-status 0",
        "direct-tcpip 127.0.0.1:",
    ] {
        assert!(
            trace.iter().any(|l| l.contains(step)),
            "no '{step}' in the trace:\n{err}"
        );
    }
    assert!(trace.iter().any(|l| l.contains("wire -> ")), "{err}");
    assert!(!err.contains(token.trim()), "the token is in the trace");
    // Without the variable, nothing of it.
    let name = f.rotate_at_edge();
    let out = f.tf("rotate-token", &["--token-file", &f.file(&name)]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr)
            .lines()
            .any(|l| l.starts_with("rtt ")),
        "{}",
        describe(&out)
    );
}
