//! Interrupted rotations: Ctrl-C (SIGINT) and a killed controller leave no fleet lock behind,
//! a plain retry names `--resume`, and one `--resume` finishes, releases every lock it holds
//! and writes every host's audit line.

mod common;

use common::{Testbed, describe, fp};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

const LOCK: &str = "/srv/mcp-tunnel/.tunnelfleet/lock";

struct Fleet {
    tb: Testbed,
    state: String,
}

impl Fleet {
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

    fn tf(&self, verb: &str, args: &[&str]) -> Output {
        let mut a = vec!["--state-dir", self.state.as_str()];
        a.extend(args);
        self.tb.tf(verb, &a)
    }

    fn spawn(&self, verb: &str, args: &[&str]) -> std::process::Child {
        let mut a = vec!["--state-dir", self.state.as_str()];
        a.extend(args);
        self.tb
            .tf_command(verb, &a)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tunnelfleet")
    }

    /// Rotates the token at the edge; the new token is in `token.next` (0600).
    fn rotate_at_edge(&self) -> String {
        let out = self.tb.testbed(&["edge-rotate"]);
        assert!(out.status.success(), "{}", describe(&out));
        std::fs::read_to_string(self.tb.path().join("token.next")).expect("token.next")
    }

    fn journal(&self) -> String {
        std::fs::read_to_string(format!("{}/journal/rotate-testbed.jsonl", self.state))
            .unwrap_or_default()
    }

    fn locks_held(&self) -> Vec<String> {
        self.tb
            .host_names()
            .into_iter()
            .filter(|h| {
                self.tb
                    .host_exec(h, &format!("test -d {LOCK} && echo held || echo free"))
                    .trim()
                    == "held"
            })
            .collect()
    }

    /// Waits (with a deadline) until the journal records `step` done on some host.
    fn wait_journal(&self, step: &str) {
        let start = Instant::now();
        let want = format!("\"step\":\"{step}\"");
        while !self.journal().lines().any(|l| {
            l.contains(&want)
                && (l.contains("\"status\":\"ok\"") || l.contains("\"status\":\"changed\""))
        }) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no {step} in the journal: {}",
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn ctrl_c_mid_rotation_releases_every_lock_and_resume_finishes() {
    let f = Fleet::deployed(3);
    let new = f.rotate_at_edge();
    let child = f.spawn("rotate-token", &["--token-file", &f.file("token.next")]);
    // Once the new token is persisted somewhere, interrupt (as Ctrl-C does).
    f.wait_journal("persist_token");
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("wait");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The persist round trip is done on a host; the connectors take a registration (about a
    // second) more, so the interrupt lands mid-rotation.
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(text.contains("tunnelfleet rotate-token --resume"), "{text}");
    assert!(
        f.locks_held().is_empty(),
        "locks left: {:?}",
        f.locks_held()
    );
    // A plain retry would lose track of the interrupted one: refused, naming --resume.
    let out = f.tf("rotate-token", &["--token-file", &f.file("token.next")]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--resume"),
        "{}",
        describe(&out)
    );
    let out = f.tf(
        "rotate-token",
        &["--resume", "--token-file", &f.file("token.next")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    f.tb.assert_every_host_on(&new);
    assert!(
        f.locks_held().is_empty(),
        "locks left: {:?}",
        f.locks_held()
    );
    for h in f.tb.host_names() {
        let last =
            f.tb.host_exec(&h, "tail -n 1 /srv/mcp-tunnel/.tunnelfleet/audit.log");
        assert!(
            last.contains("\"operation\":\"rotate-token\"")
                && last.contains("\"outcome\":\"succeeded\"")
                && last.contains(&fp(&new)),
            "{h}: {last}"
        );
    }
}

#[test]
fn a_killed_rotation_is_finished_by_one_resume_that_releases_its_locks() {
    let f = Fleet::deployed(3);
    let new = f.rotate_at_edge();
    let mut child = f.spawn("rotate-token", &["--token-file", &f.file("token.next")]);
    f.wait_journal("persist_token");
    let _ = child.kill(); // SIGKILL: nothing runs after this on the controller
    let _ = child.wait();
    let out = f.tf("rotate-token", &["--token-file", &f.file("token.next")]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("died or was killed"),
        "{}",
        describe(&out)
    );
    let out = f.tf(
        "rotate-token",
        &["--resume", "--token-file", &f.file("token.next")],
    );
    assert_eq!(out.status.code(), Some(0), "one resume: {}", describe(&out));
    f.tb.assert_every_host_on(&new);
    assert!(
        f.locks_held().is_empty(),
        "locks left: {:?}",
        f.locks_held()
    );
    // The next operation is not stopped by a lock or an unfinished rotation.
    let out = f.tf("deploy", &["--token-file", &f.file("token.next")]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}
