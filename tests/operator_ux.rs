//! The operator's conventions, through the real binary: a closed pipe, completions and the
//! man page, the project file's precedence, the pki tunnel taken from the inventory.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn tf() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tunnelfleet"));
    c.env_remove("TUNNELFLEET_INVENTORY")
        .env_remove("TUNNELFLEET_STATE_DIR")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    c
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn example_inventory() -> String {
    format!("{}/inventory/example.yaml", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `args` with stdout a pipe whose reader is already closed (as `| head -1` after its
/// first line): every write fails with EPIPE.
fn into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let child = tf()
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tunnelfleet");
    child.wait_with_output().expect("wait for tunnelfleet")
}

#[test]
fn a_closed_pipe_ends_the_run_quietly() {
    let inv = example_inventory();
    for args in [
        vec!["inventory", "--list", "-i", inv.as_str()],
        vec!["inventory", "-i", inv.as_str()],
        vec!["completions", "bash"],
        vec!["man"],
    ] {
        let out = into_closed_pipe(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {}", show(&out));
        assert_eq!(out.status.code(), Some(141), "{args:?}: {}", show(&out));
        assert!(err.is_empty(), "{args:?}: {}", show(&out));
    }
}

#[test]
fn completions_for_each_shell_and_a_man_page_from_the_definitions() {
    for (shell, marker) in [
        ("bash", "complete -F _tunnelfleet"),
        ("zsh", "#compdef tunnelfleet"),
        ("fish", "complete -c tunnelfleet"),
    ] {
        let out = tf().args(["completions", shell]).output().expect("run");
        assert!(out.status.success(), "{}", show(&out));
        let text = stdout(&out);
        assert!(text.contains(marker), "{shell}: {text}");
        for verb in ["rotate-token", "renew-cert", "audit", "unlock"] {
            assert!(text.contains(verb), "{shell} lacks {verb}");
        }
    }
    let out = tf().arg("man").output().expect("run");
    assert!(out.status.success(), "{}", show(&out));
    let page = stdout(&out);
    assert!(page.contains(".TH tunnelfleet 1"), "{page}");
    assert!(page.contains(".SH \"TUNNELFLEET DEPLOY\""), "{page}");
    assert!(
        page.contains("\\-\\-token\\-file"),
        "deploy's options are on the page"
    );
    assert!(
        page.contains("Exit codes"),
        "the exit codes are on the page"
    );
}

#[test]
fn help_lists_exit_codes_and_starts_at_init() {
    let out = tf().arg("--help").output().expect("run");
    assert!(out.status.success(), "{}", show(&out));
    let help = stdout(&out);
    assert!(
        help.starts_with("Start here: `tunnelfleet init DIR`"),
        "{help}"
    );
    for code in [
        "0    every host ok",
        "1    some host failed",
        "2    bad input",
        "3    the run could not start",
    ] {
        assert!(help.contains(code), "{code}: {help}");
    }
    let pos = |v: &str| help.find(&format!("\n  {v} ")).unwrap_or(usize::MAX);
    let journey = ["init", "pki", "check", "deploy", "status", "rotate-token"];
    for w in journey.windows(2) {
        assert!(pos(w[0]) < pos(w[1]), "{} before {}: {help}", w[0], w[1]);
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write a test file");
}

fn inventory_with(host: &str, tunnel: &str) -> String {
    format!(
        "all:\n  children:\n    {tunnel}:\n      vars:\n        tunnel_name: {tunnel}\n        tunnel_domain: {tunnel}.example.com\n      hosts:\n        {host}: {{ansible_host: 192.0.2.1}}\n"
    )
}

#[test]
fn the_project_file_supplies_defaults_and_flags_and_env_win() {
    let d = tempfile::tempdir().expect("temp dir");
    write(&d.path().join("a.yaml"), &inventory_with("from-file", "ta"));
    write(&d.path().join("b.yaml"), &inventory_with("from-flag", "tb"));
    let run = |f: &dyn Fn(&mut Command)| {
        let mut c = tf();
        c.current_dir(d.path()).arg("inventory");
        f(&mut c);
        c.output().expect("run")
    };
    // Without a project file, -i is required.
    let out = run(&|_| {});
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));

    write(
        &d.path().join("tunnelfleet.toml"),
        "# the project\ninventory = \"a.yaml\"\n",
    );
    let out = run(&|_| {});
    assert_eq!(stdout(&out), "from-file\n", "{}", show(&out));
    let out = run(&|c| {
        c.args(["-i", "b.yaml"]);
    });
    assert_eq!(stdout(&out), "from-flag\n", "{}", show(&out));
    let out = run(&|c| {
        c.env("TUNNELFLEET_INVENTORY", "b.yaml");
    });
    assert_eq!(stdout(&out), "from-flag\n", "the env wins: {}", show(&out));
    let out = run(&|c| {
        c.arg("-v");
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tunnelfleet.toml") && err.contains("a.yaml"),
        "-v says which file was read: {}",
        show(&out)
    );
    let out = run(&|_| {});
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("tunnelfleet.toml"),
        "silent without -v"
    );

    write(
        &d.path().join("tunnelfleet.toml"),
        "inventroy = \"a.yaml\"\n",
    );
    let out = run(&|_| {});
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("tunnelfleet.toml:1: unknown key `inventroy` (did you mean `inventory`?)"),
        "{}",
        show(&out)
    );
}

#[test]
fn pki_after_init_uses_the_inventorys_tunnel() {
    let d = tempfile::tempdir().expect("temp dir");
    let project = d.path().join("fleet");
    let state = d.path().join("state");
    let out = tf()
        .args(["init", "--tunnel", "tunnel_main", "--sample-server"])
        .arg(&project)
        .output()
        .expect("run init");
    assert!(out.status.success(), "{}", show(&out));
    let in_project = |args: &[&str]| {
        tf().current_dir(&project)
            .env("TUNNELFLEET_STATE_DIR", &state)
            .args(args)
            .output()
            .expect("run")
    };
    let out = in_project(&["pki", "init"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(state.join("pki/tunnel_main/ca.crt").is_file());
    let out = in_project(&["pki", "show"]);
    assert!(out.status.success(), "{}", show(&out));
    let text = stdout(&out);
    assert!(text.starts_with("CA of tunnel 'tunnel_main'\n"), "{text}");
    assert!(text.contains("  valid        "), "{text}");
    assert!(text.contains("(in 3"), "a relative expiry: {text}");
    let out = in_project(&["pki", "show", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["tunnel"], "tunnel_main");
    assert_eq!(v["ca"]["is_ca"], true);

    // Two tunnels: the operator picks one, told which exist.
    let two = d.path().join("two.yaml");
    write(
        &two,
        &format!(
            "{}{}",
            inventory_with("h1", "ta"),
            "    tb:\n      vars:\n        tunnel_name: tb\n        tunnel_domain: tb.example.com\n      hosts:\n        h2: {ansible_host: 192.0.2.2}\n"
        ),
    );
    let out = tf()
        .args(["pki", "show", "-i"])
        .arg(&two)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("serves 2 tunnels (ta, tb)"),
        "{}",
        show(&out)
    );
}
