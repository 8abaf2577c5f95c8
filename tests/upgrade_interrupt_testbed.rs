//! Interrupted staged upgrades converge (issue 8, item 7): a controller killed with SIGKILL at
//! several points of a rollout, a Ctrl-C, a host unreachable mid-rollout, a host rebooted
//! mid-rollout. After each, the hosts themselves (read with `testbed exec`, not through
//! tunnelfleet) and the stand-in edge are the witnesses: every host's `current` points to one
//! complete release, both containers run, `.env` is byte-identical, no fleet lock is left, and
//! the next command says what to do.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Testbed, describe};
use serde_json::Value;

/// A 3-host testbed with a CA, a first deploy done, and the `.env` hashes taken after it.
struct Fleet {
    tb: Testbed,
    state: String,
    token: String,
    env_sha: BTreeMap<String, String>,
}

/// What a host has, read on the host.
#[derive(Debug, Default)]
struct HostView {
    current: String,
    complete: bool,
    env_sha: String,
    lock: bool,
    level: String,
    /// The cloudflared image tag of the current release's compose file.
    cf: String,
    running: Vec<String>,
}

impl Fleet {
    fn up() -> Fleet {
        let tb = Testbed::up(3, &[]);
        let state = tb.state_with_ca();
        let token = tb.path().join("token").to_string_lossy().into_owned();
        let mut f = Fleet {
            tb,
            state,
            token,
            env_sha: BTreeMap::new(),
        };
        f.set_level("info");
        let out = f.run("deploy", &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "first deploy: {}",
            describe(&out)
        );
        for h in f.tb.host_names() {
            let v = f.view(&h);
            assert!(v.complete && v.env_sha.len() == 64, "{h}: {v:?}");
            f.env_sha.insert(h, v.env_sha);
        }
        f
    }

    /// Sets the fleet group's `log_level` in the inventory (a proxy config change: every host
    /// recreates its containers and counts against --max-unavailable).
    fn set_level(&self, level: &str) {
        let path = self.tb.inventory();
        let text = std::fs::read_to_string(&path).expect("read inventory");
        let mut out = String::new();
        for line in text.lines() {
            if line.trim_start().starts_with("log_level:") {
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if line == "        tunnel_name: testbed" {
                out.push_str(&format!("        log_level: {level}\n"));
            }
        }
        assert!(out.contains("log_level"), "inventory shape changed: {text}");
        std::fs::write(&path, out).expect("write inventory");
    }

    /// Sets the fleet group's `log_level` and its cloudflared image tag (unpinned images
    /// allowed): a change of the level recreates both containers (max-unavailable), a change
    /// of the tag alone moves the connector make-before-break (surge).
    fn set_release(&self, level: &str, cf_tag: &str) {
        self.set_level(level);
        let path = self.tb.inventory();
        let text = std::fs::read_to_string(&path).expect("read inventory");
        let mut out = String::new();
        for line in text.lines() {
            let t = line.trim_start();
            if t.starts_with("cloudflared_image:") || t.starts_with("allow_unpinned_images:") {
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if line == "        tunnel_name: testbed" {
                out.push_str("        allow_unpinned_images: true\n");
                out.push_str(&format!(
                    "        cloudflared_image: cloudflare/cloudflared:{cf_tag}\n"
                ));
            }
        }
        std::fs::write(&path, out).expect("write inventory");
    }

    /// The tunnelfleet command for `verb` against the testbed (token and state dir given).
    fn command(&self, verb: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(common::tunnelfleet_bin());
        c.arg(verb)
            .arg("-i")
            .arg(self.tb.inventory())
            .arg("--known-hosts")
            .arg(self.tb.known_hosts())
            .args(["--ssh-config", "none", "--state-dir", &self.state])
            .env_remove("SSH_AUTH_SOCK")
            .env("HOME", self.tb.path())
            .env("TUNNELFLEET_MIN_HEALTHY", "0s")
            .stdin(Stdio::null());
        if verb == "deploy" {
            c.args(["--token-file", &self.token]);
        }
        c.args(extra);
        c
    }

    fn run(&self, verb: &str, extra: &[&str]) -> Output {
        self.command(verb, extra).output().expect("run tunnelfleet")
    }

    fn spawn(&self, verb: &str, extra: &[&str]) -> Child {
        self.command(verb, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tunnelfleet")
    }

    fn record_path(&self) -> PathBuf {
        PathBuf::from(&self.state).join("journal/release-testbed.op.json")
    }

    /// The controller's release-change record, if any.
    fn record(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.record_path()).ok()?;
        Some(serde_json::from_str(&text).expect("record is JSON"))
    }

    /// The journal lines of operation `op`, as `phase/host/step` (for the log of where a kill
    /// landed).
    fn journal_steps(&self, op: &str) -> Vec<String> {
        let path = PathBuf::from(&self.state).join("journal/deploy-testbed.jsonl");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["op"] == op && v["event"] == "step")
            .map(|v| {
                format!(
                    "{}/{}/{}",
                    v["phase"].as_str().unwrap_or("?"),
                    v["host"].as_str().unwrap_or("?"),
                    v["step"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    /// The id of the last recorded release change.
    fn last_op(&self) -> Option<String> {
        self.record()
            .and_then(|r| r["op_id"].as_str().map(String::from))
    }

    /// Polls (deadline `within`) until the journal of the deploy started after operation
    /// `before` says `host` finished `step` of the apply phase.
    fn wait_for_step(
        &self,
        child: &mut Child,
        before: &Option<String>,
        host: &str,
        step: &str,
        within: Duration,
    ) {
        let until = Instant::now() + within;
        let want = format!("apply/{host}/{step}");
        loop {
            if let Some(op) = self.last_op().filter(|op| Some(op) != before.as_ref())
                && self.journal_steps(&op).contains(&want)
            {
                return;
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("the deploy ended ({st}) before {want} was journaled");
            }
            assert!(
                Instant::now() < until,
                "{want:?} not journaled within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls (deadline `within`, every 20 ms) until the journal of the deploy started after
    /// operation `before` has every entry of `want` (`phase/host/step`); `Some(status)` when
    /// the deploy ended first.
    fn wait_journaled(
        &self,
        child: &mut Child,
        before: &Option<String>,
        want: &[&str],
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        if want.is_empty() {
            return None;
        }
        let until = Instant::now() + within;
        loop {
            if let Some(op) = self.last_op().filter(|op| Some(op) != before.as_ref()) {
                let done = self.journal_steps(&op);
                if want.iter().all(|w| done.iter().any(|d| d == w)) {
                    return None;
                }
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            assert!(
                Instant::now() < until,
                "{want:?} not journaled within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every host on release `want` (its log level and cloudflared tag), converged.
    fn assert_on(&self, want: (&'static str, &'static str), when: &str) {
        self.assert_converged(&self.all(want.0), when);
        for h in self.tb.host_names() {
            let v = self.view(&h);
            assert_eq!(
                v.cf, want.1,
                "{when}: {h}: on the wrong connector image: {v:?}"
            );
        }
    }

    /// Reads a host's state on the host itself (testbed exec, not tunnelfleet).
    fn view(&self, host: &str) -> HostView {
        let out = self.tb.host_exec(
            host,
            r#"cd /srv/mcp-tunnel || exit 1
c=$(readlink current); echo "current=${c##*/}"
r="releases/${c##*/}"
if [ -n "$c" ] && [ -f "$r/docker-compose.yaml" ] && [ -f "$r/config/mcp-proxy.yaml" ] \
   && [ -L "$r/.env" ] && [ -f "$r/.env" ] && [ -L "$r/data" ] && [ -f "$r/data/tls.crt" ]; then
  echo complete=yes
fi
echo "env=$(sha256sum < shared/.env | cut -c1-64)"
[ -e .tunnelfleet/lock ] && echo lock=yes
sed -n 's/^log_level: *"\{0,1\}\([a-z]*\)"\{0,1\}$/level=\1/p' "$r/config/mcp-proxy.yaml" 2>/dev/null
sed -n 's/^ *image: *"\{0,1\}cloudflare\/cloudflared:\([^"@]*\)"\{0,1\}$/cf=\1/p' "$r/docker-compose.yaml" 2>/dev/null
docker ps --format '{{.Names}} {{.State}}' | sed -n 's/ running$//p' | sed 's/^/up=/'
"#,
        );
        let mut v = HostView::default();
        for line in out.lines() {
            let (k, val) = line.split_once('=').unwrap_or((line, ""));
            match k {
                "current" => v.current = val.to_string(),
                "complete" => v.complete = true,
                "env" => v.env_sha = val.to_string(),
                "lock" => v.lock = true,
                "level" => v.level = val.to_string(),
                "cf" => v.cf = val.to_string(),
                "up" => v.running.push(val.to_string()),
                _ => {}
            }
        }
        v
    }

    /// The invariant, on every host: `current` is one complete release whose config has
    /// `levels[host]`, the proxy and a connector run, `.env` is the one the first deploy
    /// wrote, no fleet lock is left; and the edge sees a connector of every host on the token.
    fn assert_converged(&self, levels: &BTreeMap<String, &str>, when: &str) {
        let mut releases = BTreeMap::new();
        for h in self.tb.host_names() {
            let v = self.view(&h);
            assert!(
                v.complete,
                "{when}: {h}: current is not a complete release: {v:?}"
            );
            assert_eq!(
                v.env_sha, self.env_sha[&h],
                "{when}: {h}: .env changed: {v:?}"
            );
            assert!(!v.lock, "{when}: {h}: a fleet lock was left: {v:?}");
            assert_eq!(
                v.level, levels[&h],
                "{when}: {h}: on the wrong release: {v:?}"
            );
            let proxy = v.running.iter().filter(|n| n.contains("mcp-proxy")).count();
            let conn = v
                .running
                .iter()
                .filter(|n| n.contains("cloudflared"))
                .count();
            assert!(
                proxy == 1 && conn >= 1,
                "{when}: {h}: containers not both up: {v:?}"
            );
            releases.insert(h, v.current);
        }
        // The edge, not tunnelfleet's report: every host has a connector up on the token.
        let token = std::fs::read_to_string(&self.token).expect("token");
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let cur = self.tb.edge_current();
            let want = std::collections::BTreeSet::from([common::fp(&token)]);
            if self
                .tb
                .host_names()
                .iter()
                .all(|h| cur.get(h) == Some(&want))
            {
                break;
            }
            assert!(
                Instant::now() < until,
                "{when}: the edge does not see every host on the token: {cur:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("{when}: converged: {releases:?}");
    }

    fn all(&self, level: &'static str) -> BTreeMap<String, &'static str> {
        self.tb
            .host_names()
            .into_iter()
            .map(|h| (h, level))
            .collect()
    }

    /// The record says a release change is unfinished.
    fn unfinished(&self) -> Option<Value> {
        self.record().filter(|r| r["finished"] == false)
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn other(level: &str) -> &'static str {
    if level == "info" { "debug" } else { "info" }
}

/// A small seeded generator (splitmix64): the same seed gives the same kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Where a kill lands: once the journal has every entry of `after` (`phase/host/step`;
/// none: counted from the start of the process), plus a seeded delay below `max_delay_ms`.
struct KillPoint {
    what: &'static str,
    after: &'static [&'static str],
    max_delay_ms: u64,
}

/// Every step of a rollout on 3 hosts (canary h1, then h2, then h3).
const KILL_POINTS: [KillPoint; 9] = [
    KillPoint {
        what: "facts or staging",
        after: &[],
        max_delay_ms: 900,
    },
    KillPoint {
        what: "staging",
        after: &["prepare/h1/stage"],
        max_delay_ms: 200,
    },
    KillPoint {
        what: "staged everywhere, canary switch",
        after: &["prepare/h1/stage", "prepare/h2/stage", "prepare/h3/stage"],
        max_delay_ms: 150,
    },
    KillPoint {
        what: "canary surge or gate",
        after: &["apply/h1/apply"],
        max_delay_ms: 400,
    },
    KillPoint {
        what: "canary gate",
        after: &["apply/h1/surge_connector"],
        max_delay_ms: 400,
    },
    KillPoint {
        what: "canary retire",
        after: &["apply/h1/health_gate"],
        max_delay_ms: 300,
    },
    KillPoint {
        what: "pause, later batch",
        after: &["apply/h1/retire_old"],
        max_delay_ms: 1500,
    },
    KillPoint {
        what: "later batch gate or retire",
        after: &["apply/h2/apply"],
        max_delay_ms: 600,
    },
    KillPoint {
        what: "last batch, audit and record",
        after: &["apply/h3/health_gate"],
        max_delay_ms: 250,
    },
];

const TAGS: [&str; 2] = ["2024.6", "2024.7"];

fn other_tag(tag: &str) -> &'static str {
    if tag == TAGS[0] { TAGS[1] } else { TAGS[0] }
}

/// SIGKILL of the controller at 20 seeded points of 3-host rollouts, each followed by
/// `deploy --resume` (even runs) or `rollback` (odd runs). Runs 0-8 and 18-19 change the
/// proxy config (every host recreates both containers, one at a time); runs 9-17 change the
/// cloudflared image only (every host moves make-before-break). The points cycle through
/// [`KILL_POINTS`] (every step of a rollout, with both kinds of change and both
/// recoveries); the delay after each is drawn from the seed (`TUNNELFLEET_KILL_SEED`, default
/// fixed; printed with every point, so a failure can be replayed). After each recovery the
/// hosts themselves and the edge are the witnesses (see `assert_converged`). One testbed
/// serves every run; `TUNNELFLEET_KILL_RUNS` runs fewer or more.
#[test]
fn kill_9_at_any_point_then_resume_or_rollback_converges() {
    let started = Instant::now();
    let seed: u64 = std::env::var("TUNNELFLEET_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7f1e_e7d0_2026);
    let runs: usize = std::env::var("TUNNELFLEET_KILL_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    eprintln!("kill points: seed {seed} (TUNNELFLEET_KILL_SEED={seed} replays them), {runs} runs");
    let mut rng = Rng(seed);
    let f = Fleet::up();
    // Unpinned connector images from here on, so that a tag change is a release of its own.
    let mut on: (&'static str, &'static str) = ("info", TAGS[0]);
    f.set_release(on.0, on.1);
    let out = f.run("deploy", &[]);
    assert_eq!(out.status.code(), Some(0), "deploy: {}", describe(&out));
    f.assert_on(on, "before the runs");
    let mut inventory = on;
    let mut covered: BTreeMap<&'static str, usize> = BTreeMap::new();
    for i in 0..runs {
        let point = &KILL_POINTS[i % KILL_POINTS.len()];
        let surge = (9..18).contains(&i);
        let next = if surge {
            (on.0, other_tag(on.1))
        } else {
            (other(on.0), on.1)
        };
        let delay = rng.below(point.max_delay_ms);
        let when = format!(
            "run {i} ({} change, kill at {}{} + {delay} ms, seed {seed})",
            if surge { "connector-only" } else { "proxy" },
            point.what,
            if point.after.is_empty() {
                String::new()
            } else {
                format!(" after {}", point.after.join(", "))
            },
        );
        f.set_release(next.0, next.1);
        inventory = next;
        let before = f.last_op();
        let mut child = f.spawn(
            "deploy",
            &["--min-healthy", "0s", "--pause", "1s", "--drain", "1s"],
        );
        let ended = f.wait_journaled(&mut child, &before, point.after, Duration::from_secs(90));
        if let Some(st) = ended {
            panic!("{when}: the deploy ended ({st}) before {:?}", point.after);
        }
        std::thread::sleep(Duration::from_millis(delay));
        if let Ok(Some(st)) = child.try_wait() {
            // The delay outlived the rollout: nothing to kill; it must have succeeded.
            let out = child.wait_with_output().expect("wait");
            assert!(st.success(), "{when}: {}", describe(&out));
            eprintln!("{when}: the deploy finished before the kill");
            on = next;
            f.assert_on(on, &format!("{when}, finished"));
            continue;
        }
        child.kill().expect("SIGKILL the controller");
        let _ = child.wait();
        *covered.entry(point.what).or_default() += 1;
        let rec = f
            .unfinished()
            .filter(|r| r["op_id"].as_str() != before.as_deref());
        let Some(rec) = rec else {
            // Killed before the release change was recorded (facts): nothing moved, nothing
            // to resume; a plain deploy does the change.
            eprintln!("{when}: killed before any host was touched");
            f.assert_on(on, &format!("{when}, after the kill"));
            let out = f.run("deploy", &["--resume"]);
            assert_eq!(out.status.code(), Some(2), "{when}: {}", describe(&out));
            assert!(
                text(&out).contains("nothing to resume")
                    && text(&out).contains("run `tunnelfleet deploy` instead"),
                "{when}: --resume says what to do: {}",
                describe(&out)
            );
            let out = f.run("deploy", &[]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{when}: deploy: {}",
                describe(&out)
            );
            on = next;
            f.assert_on(on, &format!("{when}, after deploy"));
            continue;
        };
        let op = rec["op_id"].as_str().unwrap_or_default().to_string();
        eprintln!(
            "{when}: journaled before the kill: {:?}",
            f.journal_steps(&op)
        );

        // A plain deploy refuses while the interrupted one is unfinished, naming --resume,
        // before touching any host.
        let out = f.run("deploy", &[]);
        assert_eq!(out.status.code(), Some(2), "{when}: {}", describe(&out));
        let msg = text(&out);
        assert!(
            msg.contains("tunnelfleet deploy --resume") && msg.contains("tunnelfleet rollback"),
            "{when}: the refusal says what to do: {msg}"
        );

        if i % 2 == 0 {
            let out = f.run("deploy", &["--resume"]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{when}: --resume: {}",
                describe(&out)
            );
            on = next;
        } else {
            let out = f.run("rollback", &[]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{when}: rollback: {}",
                describe(&out)
            );
        }
        f.assert_on(on, &format!("{when}, after recovery"));
        let r = f.record().expect("record");
        assert_eq!(r["finished"], true, "{when}: record: {r}");
    }
    // After the last recovery a plain deploy is accepted again (and brings the fleet to the
    // inventory's release if a rollback left it on the earlier one).
    let out = f.run("deploy", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "final deploy: {}",
        describe(&out)
    );
    f.assert_on(inventory, "after the final deploy");
    eprintln!(
        "kills landed per point: {covered:?}; wall time {:.0?}",
        started.elapsed()
    );
}

/// One Ctrl-C (SIGINT) after the canary passed: the run finishes the step in progress, exits
/// 130 naming `tunnelfleet deploy --resume`; every host is on one complete release; a plain
/// deploy refuses until `--resume` finishes the rollout.
#[test]
fn ctrl_c_mid_rollout_stops_cleanly_and_resume_finishes() {
    let f = Fleet::up();
    f.set_level("debug");
    let before = f.last_op();
    let mut child = f.spawn("deploy", &["--pause", "5s"]);
    f.wait_for_step(
        &mut child,
        &before,
        "h1",
        "retire_old",
        Duration::from_secs(60),
    );
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0, "SIGINT the controller");
    let out = child.wait_with_output().expect("wait");
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(130), "{}", describe(&out));
    assert!(msg.contains("tunnelfleet deploy --resume"), "{msg}");
    let mut levels = f.all("info");
    levels.insert("h1".into(), "debug");
    f.assert_converged(&levels, "after Ctrl-C");

    let out = f.run("deploy", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(text(&out).contains("--resume"), "{}", describe(&out));
    let out = f.run("deploy", &["--resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    f.assert_converged(&f.all("debug"), "after --resume");
    assert_eq!(f.record().expect("record")["finished"], true);
}

/// A host partitioned after the canary passed: its step fails (the command deadline), the
/// rollout halts, the canary is rolled back (gated), the unreachable host is named; after the
/// partition heals, `rollback` converges the fleet on the earlier release, and the next plain
/// deploy is accepted and completes.
#[test]
fn unreachable_host_mid_rollout_halts_rolls_back_and_converges_after_heal() {
    let f = Fleet::up();
    f.set_level("debug");
    let before = f.last_op();
    let mut child = f.spawn("deploy", &["--pause", "5s", "--command-timeout", "8s"]);
    f.wait_for_step(
        &mut child,
        &before,
        "h1",
        "retire_old",
        Duration::from_secs(60),
    );
    f.tb.fault("h2", "partition");
    let out = child.wait_with_output().expect("wait");
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(msg.contains("h2"), "the unreachable host is named: {msg}");
    // The canary went back to the release it ran before, and passed its gate.
    let h1 = f.view("h1");
    assert_eq!(h1.level, "info", "h1 rolled back: {h1:?}\n{msg}");
    assert!(msg.contains("rolled back"), "{msg}");
    // h3 was never reached.
    assert_eq!(f.view("h3").level, "info");

    f.tb.fault("h2", "heal");
    let out = f.run("rollback", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "rollback after heal: {}",
        describe(&out)
    );
    f.assert_converged(&f.all("info"), "after heal + rollback");
    let out = f.run("deploy", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "deploy after: {}",
        describe(&out)
    );
    f.assert_converged(&f.all("debug"), "after the next deploy");
}

/// A host rebooted while the rollout runs (after the canary passed, around its own apply):
/// the run stops or rolls back; once tunnelfleet runs again, every host is on one complete
/// release with both containers up and no lock left.
#[test]
fn host_rebooted_mid_rollout_converges_when_run_again() {
    let f = Fleet::up();
    f.set_level("debug");
    let before = f.last_op();
    let mut child = f.spawn("deploy", &["--pause", "1s", "--command-timeout", "15s"]);
    f.wait_for_step(
        &mut child,
        &before,
        "h1",
        "retire_old",
        Duration::from_secs(60),
    );
    // The pause is 1 s: h2's apply starts about then; reboot it in the middle.
    std::thread::sleep(Duration::from_millis(1800));
    f.tb.fault("h2", "reboot");
    let out = child.wait_with_output().expect("wait");
    eprintln!("deploy during the reboot: {}", describe(&out));
    // Whatever the run managed, the next command converges the fleet.
    let next = if f.unfinished().is_some() {
        f.run("deploy", &["--resume"])
    } else {
        f.run("deploy", &[])
    };
    assert_eq!(
        next.status.code(),
        Some(0),
        "after the reboot: {}",
        describe(&next)
    );
    f.assert_converged(&f.all("debug"), "after the reboot, run again");
}
