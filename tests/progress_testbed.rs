//! What an operator reads while a run goes on, piped (one line per host event, plain words,
//! the canary named) and what `-q` and `--color` change, on a real testbed.

mod common;

use std::process::{Command, Output, Stdio};

use common::{Testbed, describe};

fn tf(tb: &Testbed, state: &str, verb: &str, args: &[&str]) -> Output {
    Command::new(common::tunnelfleet_bin())
        .arg(verb)
        .arg("-i")
        .arg(tb.inventory())
        .arg("--known-hosts")
        .arg(tb.known_hosts())
        .args(["--ssh-config", "none", "--state-dir", state])
        .args(args)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("NO_COLOR")
        .env_remove("COLUMNS")
        .env("HOME", tb.path())
        .stdin(Stdio::null())
        .output()
        .expect("run tunnelfleet")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn piped_progress_says_what_happens_per_host_and_quiet_and_colour_flags_hold() {
    let tb = Testbed::up(3, &[]);
    let state = tb.state_with_ca();
    let token = tb.path().join("token").to_string_lossy().into_owned();

    let out = tf(&tb, &state, "deploy", &["--token-file", &token]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("deploy · tunnel testbed · 3 hosts\n"),
        "a header: {err}"
    );
    for line in [
        "h1: reading facts",
        "h2, h3: waiting for canary h1",
        "h1: waiting for a new connector",
        "h2: batch 2/3: writing files and restarting what changed",
    ] {
        assert!(err.contains(line), "{line:?} in:\n{err}");
    }
    assert!(!err.contains("facts: facts"), "{err}");
    assert!(!err.contains("health_gate"), "{err}");
    // The plan is not repeated in the progress: it is in the recap, once.
    assert!(!err.contains("write shared/.env"), "{err}");

    // A piped rotation prints its host events (it printed nothing).
    let out = tb.testbed(&["edge-rotate"]);
    assert!(out.status.success(), "{}", describe(&out));
    let next = tb.path().join("token.next").to_string_lossy().into_owned();
    let out = tf(&tb, &state, "rotate-token", &["--token-file", &next]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("rotate-token · tunnel testbed · 3 hosts\n"),
        "{err}"
    );
    for h in tb.host_names() {
        for what in [
            "taking the fleet lock",
            "new connector registering",
            "retiring the old connector",
            "releasing the lock",
        ] {
            assert!(
                err.lines()
                    .any(|l| l.starts_with(&format!("{h}: ")) && l.ends_with(what)),
                "{h}: {what} in:\n{err}"
            );
        }
    }
    assert!(err.contains("h2, h3: waiting for canary h1"), "{err}");

    // -q: the recap only.
    let out = tf(&tb, &state, "status", &["-q"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(stderr(&out), "", "{}", describe(&out));
    let plain = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!plain.contains('\x1b'), "piped: no colour: {plain}");

    // --color always colours the outcome words even piped; never, never.
    let out = tf(&tb, &state, "status", &["-q", "--color", "always"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\x1b[32mok\x1b[0m"), "{text}");
    assert!(text.contains("\x1b[32mready\x1b[0m"), "{text}");
    let out = tf(&tb, &state, "status", &["-q", "--color", "never"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains('\x1b'));
}
