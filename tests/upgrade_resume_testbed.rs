//! `deploy --resume` after a controller killed while the canary's gate was waiting: the
//! canary, switched but never gated, is gated again before the rollout goes on, so a bad
//! release caught mid-gate does not spread to the rest of the fleet.

mod common;

use common::{Testbed, describe, json};
use std::process::Stdio;
use std::time::{Duration, Instant};

const DEPLOY_DIR: &str = "/srv/mcp-tunnel";

#[test]
fn resume_gates_a_host_the_killed_run_switched_and_rolls_it_back_when_it_fails() {
    let tb = Testbed::up(3, &[]);
    let state = tb.state_with_ca();
    let token = tb.path().join("token").to_string_lossy().into_owned();
    let out = tb.tf("deploy", &["--state-dir", &state, "--token-file", &token]);
    assert!(out.status.success(), "{}", describe(&out));
    let current = |h: &str| {
        tb.host_exec(h, &format!("readlink {DEPLOY_DIR}/current"))
            .trim()
            .to_string()
    };
    let old = current("h1");

    // A connector release that never registers.
    let inv = tb.inventory();
    let text = std::fs::read_to_string(&inv).expect("inventory");
    let text = text.replace(
        "        tunnel_name: testbed\n",
        "        tunnel_name: testbed\n        allow_unpinned_images: true\n        cloudflared_image: cloudflare/cloudflared:never-ready\n",
    );
    std::fs::write(&inv, text).expect("write inventory");

    let journal = format!("{state}/journal/deploy-testbed.jsonl");
    let seen = std::fs::read_to_string(&journal).unwrap_or_default().len();
    let mut child = tb
        .tf_command(
            "deploy",
            &[
                "--state-dir",
                &state,
                "--token-file",
                &token,
                "--healthy-deadline",
                "60s",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn deploy");
    // Kill it once the canary is switched (its apply journaled) and its gate is waiting.
    let start = Instant::now();
    loop {
        let all = std::fs::read_to_string(&journal).unwrap_or_default();
        let j = all.get(seen..).unwrap_or_default();
        if j.lines().any(|l| {
            l.contains("\"host\":\"h1\"")
                && l.contains("\"step\":\"apply\"")
                && l.contains("\"status\":\"changed\"")
        }) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the canary never applied: {j}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_ne!(
        current("h1"),
        old,
        "the canary was switched before the kill"
    );

    let out = tb.tf(
        "deploy",
        &[
            "--state-dir",
            &state,
            "--token-file",
            &token,
            "--resume",
            "--healthy-deadline",
            "5s",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let doc = json(&out);
    assert_eq!(doc["hosts"][0]["outcome"], "rolled back", "{doc}");
    for i in [1, 2] {
        assert_eq!(doc["hosts"][i]["outcome"], "skipped", "{doc}");
    }
    for h in ["h1", "h2", "h3"] {
        assert_eq!(
            current(h),
            old,
            "{h} is back on (or never left) the old release"
        );
    }
}
