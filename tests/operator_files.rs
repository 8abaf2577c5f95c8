//! The operator's files through the CLI: what cannot be read is refused with its path
//! before any host is touched (no hang on a FIFO, no endless read of a device), typos in
//! variable names get a "did you mean" warning, and a huge bad value is not echoed back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tunnelfleet(args: &[&str], home: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tunnelfleet"))
        .args(args)
        .env("HOME", home)
        .env_remove("ANSIBLE_VAULT_PASSWORD_FILE")
        .env_remove("TUNNELFLEET_INVENTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tunnelfleet");
    // A refusal is immediate; a hang (a FIFO opened for reading) is the bug under test.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                panic!("tunnelfleet {args:?} still running after 60 s");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn fifo(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    p
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn fifos_and_devices_are_refused_by_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let inv = dir.join("hosts.ini");
    std::fs::write(&inv, "[fleet]\nh1 ansible_host=127.0.0.1\n").expect("write");
    let inv = inv.to_string_lossy().into_owned();

    let f = fifo(dir, "inv.fifo");
    let f = f.to_string_lossy().into_owned();
    let out = tunnelfleet(&["inventory", "--list", "-i", &f], dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{f}: cannot read inventory: is a FIFO")),
        "{}",
        stderr(&out)
    );

    let out = tunnelfleet(&["inventory", "--list", "-i", "/dev/zero"], dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("/dev/zero: cannot read inventory: is a character device"));

    let cfg = fifo(dir, "ssh_config.fifo");
    let cfg = cfg.to_string_lossy().into_owned();
    let out = tunnelfleet(&["check", "-i", &inv, "--ssh-config", &cfg], dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{cfg}: cannot read ssh_config: is a FIFO")),
        "{}",
        stderr(&out)
    );

    let pb = fifo(dir, "playbook.fifo");
    let pb = pb.to_string_lossy().into_owned();
    let out = tunnelfleet(&["run", &pb, "-i", &inv, "--check"], dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is a FIFO"), "{}", stderr(&out));

    std::fs::create_dir_all(dir.join("group_vars")).expect("mkdir");
    fifo(&dir.join("group_vars"), "fleet.yml");
    let out = tunnelfleet(&["inventory", "--list", "-i", &inv], dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("group_vars/fleet.yml: cannot read vars file: is a FIFO"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn typos_are_warned_with_the_name_meant() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::write(
        dir.join("hosts.ini"),
        "[fleet]\nh1 ansible_hots=10.0.0.1\nh2 ansible_hots=10.0.0.2\n[fleet:vars]\ndeploy_dri=/srv/x\nmy_own=1\n",
    )
    .expect("write");
    std::fs::create_dir_all(dir.join("host_vars")).expect("mkdir");
    std::fs::write(
        dir.join("host_vars/h1.yml"),
        "tunel_domain: a.example.com\n",
    )
    .expect("write");
    let inv = dir.join("hosts.ini").to_string_lossy().into_owned();
    let out = tunnelfleet(&["inventory", "--list", "-i", &inv], dir);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    let want = [
        format!("warning: {inv}:5:1: unknown variable `deploy_dri`: did you mean `deploy_dir`?"),
        format!(
            "warning: {inv}:2:1: unknown variable `ansible_hots`: did you mean `ansible_host`?"
        ),
        format!(
            "warning: {inv}:3:1: unknown variable `ansible_hots`: did you mean `ansible_host`?"
        ),
        format!(
            "warning: {}:1:15: unknown variable `tunel_domain`: did you mean `tunnel_domain`?",
            dir.join("host_vars/h1.yml").display()
        ),
    ];
    for w in &want {
        assert!(lines.contains(&w.as_str()), "missing {w:?} in:\n{err}");
    }
    assert_eq!(lines.len(), want.len(), "{err}");
}

#[test]
fn a_huge_bad_value_is_not_echoed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let long = "x".repeat(100_000);
    std::fs::write(
        dir.join("hosts.ini"),
        format!("[fleet]\nh1 ansible_host={long}\n"),
    )
    .expect("write");
    let inv = dir.join("hosts.ini").to_string_lossy().into_owned();
    let out = tunnelfleet(&["check", "-i", &inv, "--ssh-config", "none"], dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        out.stderr.len() < 1024,
        "{} bytes of error",
        out.stderr.len()
    );
    assert!(
        stderr(&out).contains("100000 characters is too long (at most 253)"),
        "{}",
        stderr(&out)
    );
}
