//! `tunnelfleet unlock` removes only locks whose holder is dead, unless `--force`, and says
//! what it removed or kept.

mod common;

use common::{Testbed, describe};

const LOCK: &str = "/srv/mcp-tunnel/.tunnelfleet/lock";

fn this_controller() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string()
}

fn lock(tb: &Testbed, host: &str, controller: &str, pid: u32, since: &str) {
    let holder = format!(
        r#"{{"operation":"rotate-token","op_id":"x","operator":"ann","controller":"{controller}","pid":{pid},"since":"{since}"}}"#
    );
    let out = tb.host_exec(
        host,
        &format!("mkdir -p {LOCK} && printf '%s\\n' '{holder}' > {LOCK}/holder.json && echo ok"),
    );
    assert!(out.contains("ok"), "{out}");
}

fn locked(tb: &Testbed, host: &str) -> bool {
    tb.host_exec(host, &format!("[ -d {LOCK} ] && echo yes || echo no"))
        .contains("yes")
}

/// The line about `host`: hosts with the same outcome share one line (`h2, h4: not locked`,
/// `h1–h3: ...`).
fn line<'a>(stdout: &'a str, host: &str) -> &'a str {
    let num = |s: &str| {
        s.trim_start_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
            .ok()
    };
    let names = |label: &str| -> bool {
        label.split(", ").any(|part| match part.split_once('–') {
            None => part == host,
            Some((a, b)) => matches!(
                (num(a), num(b), num(host)),
                (Some(a), Some(b), Some(h)) if a <= h && h <= b
            ),
        })
    };
    stdout
        .lines()
        .find(|l| l.split_once(": ").is_some_and(|(label, _)| names(label)))
        .unwrap_or_default()
}

#[test]
fn unlock_keeps_a_live_holders_lock_unless_forced() {
    let tb = Testbed::up(4, &[]);
    let me = this_controller();
    let now = chrono::Utc::now();
    let rfc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut dead = std::process::Command::new("true").spawn().expect("spawn");
    let dead_pid = dead.id();
    dead.wait().expect("wait");

    // h1: this controller, a live process (this test). h2: this controller, a dead pid.
    // h3: another controller, taken just now. h4: another controller, an hour ago.
    lock(&tb, "h1", &me, std::process::id(), &rfc(now));
    lock(&tb, "h2", &me, dead_pid, &rfc(now));
    lock(&tb, "h3", "elsewhere", 1, &rfc(now));
    lock(
        &tb,
        "h4",
        "elsewhere",
        1,
        &rfc(now - chrono::TimeDelta::hours(1)),
    );

    let out = tb.tf("unlock", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(line(&stdout, "h1").contains("NOT removed"), "{stdout}");
    assert!(
        line(&stdout, "h1").contains("alive on this controller"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "h1").contains("rotate-token by ann@"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "h2").contains("removed lock held by rotate-token"),
        "{stdout}"
    );
    assert!(line(&stdout, "h3").contains("NOT removed"), "{stdout}");
    assert!(
        line(&stdout, "h4").contains("removed lock held by rotate-token"),
        "{stdout}"
    );
    assert!(locked(&tb, "h1") && locked(&tb, "h3"));
    assert!(!locked(&tb, "h2") && !locked(&tb, "h4"));

    let out = tb.tf("unlock", &["--force"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        line(&stdout, "h1").contains("removed lock held by"),
        "{stdout}"
    );
    assert!(line(&stdout, "h2").contains("not locked"), "{stdout}");
    for h in tb.host_names() {
        assert!(!locked(&tb, &h), "{h}");
    }
}
