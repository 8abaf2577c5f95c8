//! The guided rotation's prompt on a real terminal: the progress display is cleared before
//! it and draws nothing while it waits (it used to overwrite the prompt within ~300 ms).

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Testbed, describe};

const PROMPT: &str = "New tunnel token (not echoed): ";

#[test]
fn nothing_draws_over_the_token_prompt_until_it_is_answered() {
    let tb = Testbed::up(2, &[]);
    let state = tb.state_with_ca();
    let token = tb.path().join("token").to_string_lossy().into_owned();
    let out = tb.tf("deploy", &["--state-dir", &state, "--token-file", &token]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = tb.testbed(&["edge-rotate"]);
    assert!(out.status.success(), "{}", describe(&out));
    let new = std::fs::read_to_string(tb.path().join("token.next")).expect("token.next");

    // A pseudo-terminal (util-linux `script`) so the spinners are live, no token source.
    let inner = format!(
        "stty cols 100 rows 40; {} rotate-token -i {} --known-hosts {} --ssh-config none --state-dir {}",
        common::tunnelfleet_bin().display(),
        tb.inventory().display(),
        tb.known_hosts().display(),
        state
    );
    let mut child = Command::new("script")
        .args(["-qfec", &inner, "/dev/null"])
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("TUNNEL_TOKEN")
        .env_remove("NO_COLOR")
        .env("HOME", tb.path())
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
    while !String::from_utf8_lossy(&seen).contains(PROMPT) {
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
    let text = String::from_utf8_lossy(&seen).into_owned();
    // The spinners were live before the prompt (so this is a terminal run)...
    let before = &text[..text.find("Preflight passed").unwrap_or(0)];
    assert!(before.contains("taking the fleet lock"), "{text}");
    // ...and nothing follows the prompt while it waits: the spinners tick every 120 ms, so
    // without the suspension they redraw well within this window.
    let after_prompt = &text[text.find(PROMPT).unwrap_or(0) + PROMPT.len()..];
    assert_eq!(after_prompt, "", "drawn after the prompt");
    if let Ok(chunk) = rx.recv_timeout(Duration::from_secs(2)) {
        panic!(
            "drawn over the prompt while it waits: {:?}",
            String::from_utf8_lossy(&chunk)
        );
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
    tb.assert_every_host_on(&new);
}
