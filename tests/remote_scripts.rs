//! The remote scripts run for real, locally, under dash (`sh`) and `bash`, in temp dirs.
//!
//! The full-disk test mounts a 64 KiB tmpfs in a private mount namespace (`unshare --mount`),
//! which needs root. Without root it fails with a message; set TUNNELFLEET_SKIP_ROOT_TESTS=1
//! to skip it explicitly.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use tunnelfleet::remote::{
    AuditEntry, AuditOutcome, FileHash, LOCK_HELD_EXIT, TEMP_PREFIX, WRITE_CANCELLED_EXIT,
    WriteSpec, atomic_write, atomic_write_framed, audit_line, force_unlock, framed_payload,
    mkdir_lock, parse_sha256_facts, sha256_facts, unlock,
};

const SHELLS: [&str; 2] = ["sh", "bash"];

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `program args…` with `stdin` fed from a thread (payloads exceed a pipe buffer).
fn run_with(program: &str, args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut pipe = child.stdin.take().expect("stdin pipe");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The script may exit early without reading everything: ignore EPIPE.
        let _ = pipe.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer thread");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(shell: &str, script: &str, stdin: &[u8]) -> Run {
    run_with(shell, &["-c", script], stdin)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readdir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) {
            found.push(name);
        }
        if entry.file_type().expect("type").is_dir() {
            found.extend(leftovers(&entry.path()));
        }
    }
    found
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

const TOKEN: &str = "eyJhIjoiRVhBTVBMRSIsInQiOiJFWEFNUExFIiwicyI6IkVYQU1QTEUifQ==";

#[test]
fn atomic_write_round_trips_several_files() {
    for shell in SHELLS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_str().expect("utf-8 temp path").to_string();
        let env = format!("TUNNEL_TOKEN={TOKEN}\nTUNNEL_DOMAIN=mcp.example.com\n");
        let binary: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let big = pseudo_random(1024 * 1024, 42);
        let tricky_name = format!("{root}/odd dir/it's \"x\" $(echo y) `z` ✓.txt");
        let files: Vec<(WriteSpec, &[u8])> = vec![
            (
                WriteSpec::new(format!("{root}/shared/.env"), 0o600),
                env.as_bytes(),
            ),
            (
                WriteSpec::new(format!("{root}/shared/data/bin"), 0o644),
                &binary,
            ),
            (
                WriteSpec::new(format!("{root}/shared/data/big"), 0o640),
                &big,
            ),
            (WriteSpec::new(format!("{root}/empty"), 0o600), b""),
            (
                WriteSpec::new(format!("{root}/new/deep/dir/file"), 0o644).dir_mode(0o750),
                b"deep\n",
            ),
            (WriteSpec::new(tricky_name.clone(), 0o600), b"odd"),
        ];
        let (script, payload) = atomic_write(&files).expect("build");
        assert!(!script.contains(TOKEN), "token in script text");
        assert!(!script.contains("TUNNEL_DOMAIN"), "content in script text");

        let r = run(shell, &script, &payload);
        assert_eq!(r.code, 0, "{shell}: stderr: {}", r.stderr);
        assert_eq!(r.stderr, "", "{shell}");

        for (spec, content) in &files {
            let p = Path::new(&spec.path);
            assert_eq!(
                std::fs::read(p).expect("read back"),
                *content,
                "{shell}: {}",
                spec.path
            );
            assert_eq!(mode(p), spec.mode, "{shell}: {}", spec.path);
        }
        assert_eq!(mode(&tmp.path().join("new/deep/dir")), 0o750);
        // Intermediate directories get 0755, not the 0700 the umask 077 would give.
        assert_eq!(mode(&tmp.path().join("new/deep")), 0o755);
        assert_eq!(mode(&tmp.path().join("shared")), 0o755);
        assert!(leftovers(tmp.path()).is_empty(), "{shell}: temp files left");
    }
}

#[test]
fn atomic_write_replaces_existing_files_and_sets_owner() {
    for shell in SHELLS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join(".env");
        std::fs::write(&target, "OLD").expect("old");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let path = target.to_str().expect("utf-8").to_string();
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let owner = if uid == 0 {
            "65534:65534".to_string()
        } else {
            format!("{uid}:{gid}")
        };
        let (script, payload) =
            atomic_write(&[(WriteSpec::new(path, 0o600).owner(owner), b"NEW")]).expect("build");
        let r = run(shell, &script, &payload);
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        assert_eq!(std::fs::read(&target).expect("read"), b"NEW");
        assert_eq!(mode(&target), 0o600);
        let meta = std::fs::metadata(&target).expect("stat");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.uid(), if uid == 0 { 65534 } else { uid });
    }
}

#[test]
fn short_input_keeps_old_files() {
    for shell in SHELLS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        std::fs::write(&a, "OLD-A").expect("old");
        std::fs::write(&b, "OLD-B").expect("old");
        let files = [
            (
                WriteSpec::new(a.to_str().expect("utf-8"), 0o600),
                &b"NEW-A"[..],
            ),
            (
                WriteSpec::new(b.to_str().expect("utf-8"), 0o600),
                &b"NEW-B-LONGER"[..],
            ),
        ];
        let (script, payload) = atomic_write(&files).expect("build");
        // The connection drops 3 bytes early.
        let r = run(shell, &script, &payload[..payload.len() - 3]);
        assert_eq!(r.code, 1, "{shell}");
        assert_eq!(
            r.stderr,
            format!(
                "write {}: short input: got 9 of 12 bytes (old file kept)\n",
                b.display()
            ),
            "{shell}"
        );
        assert_eq!(
            std::fs::read(&a).expect("a"),
            b"OLD-A",
            "{shell}: a replaced early"
        );
        assert_eq!(std::fs::read(&b).expect("b"), b"OLD-B");
        assert!(leftovers(tmp.path()).is_empty(), "{shell}");
    }
}

#[test]
fn framed_write_reads_its_lengths_from_the_input() {
    for shell in SHELLS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_str().expect("utf-8 temp path").to_string();
        let env = format!("TUNNEL_TOKEN={TOKEN}\nTUNNEL_DOMAIN=mcp.example.com\n");
        // Contents that start with digits, spaces and newlines: the header must not eat them.
        let binary: Vec<u8> = b"12 34\n\n"
            .iter()
            .copied()
            .chain((0..=255u8).rev())
            .collect();
        let big = pseudo_random(256 * 1024, 7);
        let specs = [
            WriteSpec::new(format!("{root}/shared/.env"), 0o600).dir_mode(0o700),
            WriteSpec::new(format!("{root}/shared/data/bin"), 0o644),
            WriteSpec::new(format!("{root}/shared/data/big"), 0o640),
            WriteSpec::new(format!("{root}/empty"), 0o600),
        ];
        let contents: [&[u8]; 4] = [env.as_bytes(), &binary, &big, b""];
        let script = atomic_write_framed(&specs).expect("build");
        assert!(!script.contains(TOKEN), "token in script text");
        let r = run(shell, &script, &framed_payload(&contents));
        assert_eq!(r.code, 0, "{shell}: stderr: {}", r.stderr);
        assert_eq!(r.stderr, "", "{shell}");
        for (spec, content) in specs.iter().zip(contents) {
            let p = Path::new(&spec.path);
            assert_eq!(
                std::fs::read(p).expect("read back"),
                content,
                "{shell}: {}",
                spec.path
            );
            assert_eq!(mode(p), spec.mode, "{shell}: {}", spec.path);
        }
        assert_eq!(mode(&tmp.path().join("shared")), 0o700, "{shell}");
        assert!(leftovers(tmp.path()).is_empty(), "{shell}: temp files left");
    }
}

#[test]
fn framed_write_without_complete_header_touches_nothing() {
    for shell in SHELLS {
        // (input, files the script writes, what it says)
        for (input, n, why) in [
            (&b""[..], 2, "no input: nothing written (cancelled)"),
            (&b"228"[..], 2, "no input: nothing written (cancelled)"),
            (
                &b"x\nTUNNEL_TOKEN=1\n"[..],
                2,
                "bad input header: nothing written",
            ),
            (
                &b"5 5\nABCDEABCDE"[..],
                1,
                "bad input header: nothing written",
            ),
            (&b"\nABCDE"[..], 2, "bad input header: nothing written"),
        ] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let old = tmp.path().join("old");
            std::fs::write(&old, "OLD").expect("old");
            let missing_dir = tmp.path().join("shared/.env");
            let specs = [
                WriteSpec::new(old.to_str().expect("utf-8"), 0o600),
                WriteSpec::new(missing_dir.to_str().expect("utf-8"), 0o600),
            ];
            let specs = &specs[..n];
            let script = atomic_write_framed(specs).expect("build");
            let r = run(shell, &script, input);
            assert_eq!(
                r.code, WRITE_CANCELLED_EXIT,
                "{shell} {input:?}: {}",
                r.stderr
            );
            assert_eq!(r.stderr, format!("{why}\n"), "{shell} {input:?}");
            assert_eq!(
                std::fs::read(&old).expect("old"),
                b"OLD",
                "{shell} {input:?}"
            );
            assert!(
                !tmp.path().join("shared").exists(),
                "{shell} {input:?}: a directory was created"
            );
            assert!(leftovers(tmp.path()).is_empty(), "{shell} {input:?}");
        }
    }
}

#[test]
fn framed_write_short_body_keeps_old_file() {
    for shell in SHELLS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = tmp.path().join("a");
        std::fs::write(&a, "OLD-A").expect("old");
        let specs = [WriteSpec::new(a.to_str().expect("utf-8"), 0o600)];
        let script = atomic_write_framed(&specs).expect("build");
        let payload = framed_payload(&[b"NEW-A-LONGER"]);
        // The controller dies 3 bytes before the end of the token.
        let r = run(shell, &script, &payload[..payload.len() - 3]);
        assert_eq!(r.code, 1, "{shell}");
        assert_eq!(
            r.stderr,
            format!(
                "write {}: short input: got 9 of 12 bytes (old file kept)\n",
                a.display()
            ),
            "{shell}"
        );
        assert_eq!(std::fs::read(&a).expect("a"), b"OLD-A", "{shell}");
        assert!(leftovers(tmp.path()).is_empty(), "{shell}");
    }
}

#[test]
fn unwritable_parent_and_directory_target_fail_clearly() {
    for shell in SHELLS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = tmp.path().join("a");
        std::fs::write(&a, "OLD-A").expect("old");
        // The parent of the second file is a regular file: mkdir -p fails.
        let blocker = tmp.path().join("blocker");
        std::fs::write(&blocker, "x").expect("blocker");
        let bad = blocker.join("sub/file");
        let files = [
            (
                WriteSpec::new(a.to_str().expect("utf-8"), 0o600),
                &b"NEW"[..],
            ),
            (
                WriteSpec::new(bad.to_str().expect("utf-8"), 0o600),
                &b"X"[..],
            ),
        ];
        let (script, payload) = atomic_write(&files).expect("build");
        let r = run(shell, &script, &payload);
        assert_eq!(r.code, 1, "{shell}");
        assert!(
            r.stderr.starts_with(&format!(
                "write {}: cannot create directory {}: ",
                bad.display(),
                blocker.join("sub").display()
            )),
            "{shell}: {}",
            r.stderr
        );
        assert!(r.stderr.ends_with("(old file kept)\n"), "{}", r.stderr);
        assert_eq!(std::fs::read(&a).expect("a"), b"OLD-A");
        assert!(leftovers(tmp.path()).is_empty(), "{shell}");

        let dir_target = tmp.path().join("adir");
        std::fs::create_dir(&dir_target).expect("mkdir");
        let (script, payload) = atomic_write(&[(
            WriteSpec::new(dir_target.to_str().expect("utf-8"), 0o600),
            b"X",
        )])
        .expect("build");
        let r = run(shell, &script, &payload);
        assert_eq!(r.code, 1);
        assert_eq!(
            r.stderr,
            format!(
                "write {}: is a directory (old file kept)\n",
                dir_target.display()
            )
        );
    }
}

#[test]
fn full_disk_keeps_old_file() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var_os("TUNNELFLEET_SKIP_ROOT_TESTS").is_some() {
            eprintln!("skipping full_disk_keeps_old_file: not root");
            return;
        }
        panic!(
            "full_disk_keeps_old_file needs root (it mounts a tmpfs under `unshare --mount`); run as root or set TUNNELFLEET_SKIP_ROOT_TESTS=1"
        );
    }
    const WRAPPER: &str = r#"
mount -t tmpfs -o size=64k tunnelfleet-test "$1" || exit 90
printf 'OLD-ENV' > "$1/.env"; chmod 600 "$1/.env"
printf 'OLD-SMALL' > "$1/small"
"$3" -c "$2"; rc=$?
cat "$1/.env" > "$4/after-env"
cat "$1/small" > "$4/after-small"
stat -c %a "$1/.env" > "$4/after-mode"
ls -A "$1" > "$4/listing"
exit $rc
"#;
    for shell in SHELLS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mnt = tmp.path().join("mnt");
        let out = tmp.path().join("out");
        std::fs::create_dir(&mnt).expect("mnt");
        std::fs::create_dir(&out).expect("out");
        let env_path = format!("{}/.env", mnt.display());
        let small_path = format!("{}/small", mnt.display());
        let big = pseudo_random(200 * 1024, 7);
        let (script, payload) = atomic_write(&[
            (WriteSpec::new(small_path, 0o644), &b"NEW-SMALL"[..]),
            (WriteSpec::new(env_path.clone(), 0o600), &big),
        ])
        .expect("build");
        let r = run_with(
            "unshare",
            &[
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                WRAPPER,
                "wrapper",
                mnt.to_str().expect("utf-8"),
                &script,
                shell,
                out.to_str().expect("utf-8"),
            ],
            &payload,
        );
        assert_ne!(r.code, 90, "cannot mount a tmpfs: {}", r.stderr);
        assert_eq!(r.code, 1, "{shell}: {} {}", r.stdout, r.stderr);
        assert_eq!(
            r.stderr,
            format!("write {env_path}: No space left on device (old file kept)\n"),
            "{shell}"
        );
        let read = |name: &str| std::fs::read_to_string(out.join(name)).expect("result");
        assert_eq!(read("after-env"), "OLD-ENV");
        assert_eq!(read("after-small"), "OLD-SMALL");
        assert_eq!(read("after-mode").trim(), "600");
        let listing = read("listing");
        assert_eq!(
            listing.lines().collect::<Vec<_>>(),
            vec![".env", "small"],
            "{shell}"
        );
    }
}

#[test]
fn sha256_facts_reports_present_missing_and_odd_paths() {
    for shell in SHELLS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = tmp.path().join("a file");
        let b = tmp.path().join("it's $(x)");
        std::fs::write(&a, "hello").expect("a");
        std::fs::write(&b, [0u8, 1, 2, 255]).expect("b");
        let missing = tmp.path().join("missing");
        let paths = [
            a.to_str().expect("utf-8"),
            b.to_str().expect("utf-8"),
            missing.to_str().expect("utf-8"),
            tmp.path().to_str().expect("utf-8"),
        ];
        let script = sha256_facts(&paths).expect("build");
        let r = run(shell, &script, b"");
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        let parsed = parse_sha256_facts(&r.stdout).expect("parse");
        assert_eq!(
            parsed,
            vec![
                (
                    paths[0].to_string(),
                    FileHash::Sha256(hex::encode(Sha256::digest(b"hello")))
                ),
                (
                    paths[1].to_string(),
                    FileHash::Sha256(hex::encode(Sha256::digest([0u8, 1, 2, 255])))
                ),
                (paths[2].to_string(), FileHash::Missing),
                (paths[3].to_string(), FileHash::Missing),
            ],
            "{shell}"
        );
    }
}

#[test]
fn lock_is_exclusive_and_shows_holder() {
    for shell in SHELLS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let lock = format!("{}/srv/.tunnelfleet/lock", tmp.path().display());
        let me = r#"{"holder":"alice@ctl","op":"deploy","note":"it's \"quoted\" $(x)"}"#;
        let other = r#"{"holder":"bob@ctl","op":"rotate"}"#;

        let r = run(shell, &mkdir_lock(&lock, me).expect("build"), b"");
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        let held = std::fs::read_to_string(format!("{lock}/holder.json")).expect("holder");
        assert_eq!(held, format!("{me}\n"));

        let r = run(shell, &mkdir_lock(&lock, other).expect("build"), b"");
        assert_eq!(r.code, LOCK_HELD_EXIT, "{shell}");
        assert_eq!(r.stdout, format!("{me}\n"));
        assert!(r.stderr.contains("held by another run"), "{}", r.stderr);

        let r = run(shell, &unlock(&lock, other).expect("build"), b"");
        assert_eq!(
            r.code, LOCK_HELD_EXIT,
            "{shell}: someone else's lock must stay"
        );
        assert_eq!(r.stdout, format!("{me}\n"));
        assert!(Path::new(&lock).is_dir());

        let r = run(shell, &unlock(&lock, me).expect("build"), b"");
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        assert!(!Path::new(&lock).exists());
        let r = run(shell, &unlock(&lock, me).expect("build"), b"");
        assert_eq!(r.code, 0, "{shell}: releasing twice is fine");

        let r = run(shell, &mkdir_lock(&lock, other).expect("build"), b"");
        assert_eq!(r.code, 0);
        let r = run(shell, &force_unlock(&lock).expect("build"), b"");
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        assert!(!Path::new(&lock).exists());
    }
}

#[test]
fn lock_fails_clearly_when_it_cannot_be_created() {
    for shell in SHELLS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").expect("file");
        // The lock path exists as a regular file: not a lock held by anyone.
        let r = run(
            shell,
            &mkdir_lock(file.to_str().expect("utf-8"), "{}").expect("build"),
            b"",
        );
        assert_eq!(r.code, 1, "{shell}");
        assert_eq!(r.stderr, format!("lock {}: File exists\n", file.display()));
    }
}

#[test]
fn audit_line_appends_one_json_line_each() {
    for shell in SHELLS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = format!("{}/.tunnelfleet/audit.log", tmp.path().display());
        let mut entry = AuditEntry {
            time: "2026-01-01T00:00:00Z".into(),
            operator: "alice 'the op'\n$(whoami) `id`".into(),
            operation: "rotate".into(),
            outcome: AuditOutcome::Succeeded,
            release: Some("20260101-000000".into()),
            from_release: None,
            token_fingerprint: Some("ba7816bf8f01".into()),
            cert_serial: None,
        };
        for _ in 0..2 {
            let r = run(shell, &audit_line(&log, &entry).expect("build"), b"");
            assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        }
        let text = std::fs::read_to_string(&log).expect("log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            assert_eq!(v["operator"], "alice 'the op'\n$(whoami) `id`");
            assert_eq!(v["outcome"], "succeeded");
            assert_eq!(v["token_fingerprint"], "ba7816bf8f01");
        }
        assert_eq!(mode(Path::new(&log)), 0o640);

        entry.token_fingerprint = Some(TOKEN.into());
        assert!(
            audit_line(&log, &entry).is_err(),
            "a token is not a fingerprint"
        );
    }
}

#[test]
fn audit_line_reports_unwritable_log() {
    for shell in SHELLS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("log-is-a-dir");
        std::fs::create_dir(&dir).expect("dir");
        let entry = AuditEntry {
            time: "2026-01-01T00:00:00Z".into(),
            operator: "alice".into(),
            operation: "deploy".into(),
            outcome: AuditOutcome::Started,
            release: None,
            from_release: None,
            token_fingerprint: None,
            cert_serial: None,
        };
        let r = run(
            shell,
            &audit_line(dir.to_str().expect("utf-8"), &entry).expect("build"),
            b"",
        );
        assert_eq!(r.code, 1, "{shell}");
        assert!(
            r.stderr.starts_with(&format!("audit {}: ", dir.display())),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.to_lowercase().contains("is a directory"),
            "{}",
            r.stderr
        );
    }
}

/// A fake `docker` for the setup scripts: records its arguments and whether the identity
/// token reached it through the environment, then plays the setup component (writes
/// data/tunnel-token) or fails when FAKE_FAIL is set.
fn fake_docker(bin: &Path, log: &Path, data: &Path) {
    std::fs::create_dir_all(bin).expect("bin dir");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{log}'\n\
         printf 'env=%s\\n' \"${{ANTHROPIC_IDENTITY_TOKEN:-unset}}\" >> '{log}.env'\n\
         if [ -n \"${{FAKE_FAIL:-}}\" ]; then echo 'setup: token version unchanged' >&2; exit 1; fi\n\
         for a in \"$@\"; do case $a in --token-version=*) v=${{a#--token-version=}};; esac; done\n\
         printf 'eyJ-token-v%s' \"$v\" > '{data}/tunnel-token'\n",
        log = log.display(),
        data = data.display()
    );
    let path = bin.join("docker");
    std::fs::write(&path, script).expect("write fake docker");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn setup_token_script_bumps_the_version_and_keeps_the_identity_token_off_argv() {
    use tunnelfleet::stack::scripts::{
        SETUP_FAILED_EXIT, parse_setup_token, setup_read_token_script, setup_token_script,
        setup_version_file,
    };
    use tunnelfleet::stack::{ComposeCli, Layout};
    let tmp = tempfile::tempdir().expect("tempdir");
    let deploy = tmp.path().join("stack");
    let data = deploy.join("shared/data");
    std::fs::create_dir_all(&data).expect("data dir");
    let bin = tmp.path().join("bin");
    let log = tmp.path().join("docker.log");
    fake_docker(&bin, &log, &data);
    let layout = Layout::new(deploy.to_str().expect("utf-8 path"), "testbed");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let identity = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ2bSJ9.c2lnbmF0dXJl";
    let run_script = |script: &str, stdin: &[u8], fail: bool| {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).env("PATH", &path);
        if fail {
            cmd.env("FAKE_FAIL", "1");
        }
        let out = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().expect("stdin").write_all(stdin)?;
                c.wait_with_output()
            })
            .expect("run script");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let line = format!("{identity}\n");
    for (floor, expect) in [(1u32, 2u32), (1, 3), (7, 8)] {
        let script = setup_token_script(&layout, ComposeCli::V2, floor);
        assert!(!script.contains(identity));
        let (code, stdout, stderr) = run_script(&script, line.as_bytes(), false);
        assert_eq!(code, 0, "{stderr}");
        let got = parse_setup_token(&stdout).expect("token in output");
        assert_eq!(got.version, Some(expect));
        assert_eq!(got.token, format!("eyJ-token-v{expect}"));
        let recorded = std::fs::read_to_string(setup_version_file(&layout)).expect("version");
        assert_eq!(recorded.trim(), expect.to_string());
    }
    let argv = std::fs::read_to_string(&log).expect("docker log");
    assert!(
        argv.lines()
            .all(|l| l.contains(" run --rm -T setup --token-version=") && !l.contains(identity)),
        "{argv}"
    );
    let envs = std::fs::read_to_string(format!("{}.env", log.display())).expect("env log");
    assert!(
        envs.lines().all(|l| l == format!("env={identity}")),
        "{envs}"
    );

    // A failing component: its message, our exit code, the recorded version unchanged.
    let (code, _, stderr) = run_script(
        &setup_token_script(&layout, ComposeCli::V2, 1),
        line.as_bytes(),
        true,
    );
    assert_eq!(code, SETUP_FAILED_EXIT);
    assert!(stderr.contains("token version unchanged"), "{stderr}");
    assert!(stderr.contains("--token-version=9"), "{stderr}");
    let recorded = std::fs::read_to_string(setup_version_file(&layout)).expect("version");
    assert_eq!(recorded.trim(), "8");

    // No identity token on stdin: refused before the component runs.
    let before = std::fs::read_to_string(&log).expect("docker log").len();
    let (code, _, stderr) = run_script(&setup_token_script(&layout, ComposeCli::V2, 1), b"", false);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(std::fs::read_to_string(&log).expect("log").len(), before);

    // Read back (a resumed rotation): the last token and version, the component not run.
    let (code, stdout, stderr) = run_script(&setup_read_token_script(&layout), b"", false);
    assert_eq!(code, 0, "{stderr}");
    let got = parse_setup_token(&stdout).expect("token");
    assert_eq!((got.version, got.token.as_str()), (Some(8), "eyJ-token-v8"));
    assert_eq!(std::fs::read_to_string(&log).expect("log").len(), before);
}

/// A fake engine for the facts script: `docker ps` fails like a stopped dockerd when
/// FAKE_ENGINE_DOWN is set; otherwise it lists a running proxy and connector of the stack in
/// `cur`, and `docker inspect` reports them with the PIDs and network modes given.
fn fake_engine(bin: &Path, cur: &str, proxy_pid: u32, conn_pid: u32, conn_mode: &str) {
    std::fs::create_dir_all(bin).expect("bin dir");
    let labels = |svc: &str| {
        format!(
            "com.docker.compose.project=mcp-tunnel-testbed,com.docker.compose.project.working_dir={cur},com.docker.compose.service={svc}"
        )
    };
    let script = format!(
        "#!/bin/sh\n\
         if [ -n \"${{FAKE_ENGINE_DOWN:-}}\" ]; then \
         echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?' >&2; exit 1; fi\n\
         case $1 in\n\
         ps) case \"$*\" in *mcp-tunnel-testbed*) printf '%s\\n' 'p1 running {lp}' 'c1 running {lc}';; esac;;\n\
         inspect) case \"$*\" in *.State.Pid*) printf '%s\\n' '/p1 pid-p1 {proxy_pid} default 2026-12-03T21:00:00.5Z mcp-proxy' '/c1 pid-c1 {conn_pid} {conn_mode} 2026-12-03T21:00:01Z cloudflared';; esac;;\n\
         esac\n",
        lp = labels("mcp-proxy"),
        lc = labels("cloudflared"),
    );
    let path = bin.join("docker");
    std::fs::write(&path, script).expect("write fake docker");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn facts_script_tells_an_engine_down_and_a_connector_outside_the_proxys_namespace() {
    use tunnelfleet::stack::scripts::{facts_script, parse_facts};
    use tunnelfleet::stack::{ContainerState, Layout, Release};
    let tmp = tempfile::tempdir().expect("tempdir");
    let deploy = tmp.path().join("stack");
    std::fs::create_dir_all(&deploy).expect("deploy dir");
    let layout = Layout::new(deploy.to_str().expect("utf-8 path"), "testbed");
    let release = Release::new(Vec::new(), Vec::new());
    let script = facts_script(&layout, &release).expect("facts script");
    let bin = tmp.path().join("bin");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let me = std::process::id();
    let facts = |down: bool| {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]).env("PATH", &path);
        if down {
            cmd.env("FAKE_ENGINE_DOWN", "1");
        }
        let out = cmd.output().expect("run facts script");
        assert!(out.status.success(), "{out:?}");
        parse_facts(&layout, &release, &String::from_utf8_lossy(&out.stdout))
    };

    fake_engine(&bin, &layout.current(), me, me, "container:pid-p1");
    let p = facts(true);
    assert_eq!(
        p.engine_down.as_deref(),
        Some(
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
        )
    );
    assert!(p.containers.is_empty());

    // Same namespace (one process), joined the running proxy: nothing lost.
    let p = facts(false);
    assert_eq!(p.engine_down, None);
    assert_eq!(p.facts.proxy, ContainerState::Running);
    assert_eq!(p.netns.len(), 2, "{:?}", p.netns);
    assert!(p.netns.iter().all(|n| n.inode.is_some()), "{:?}", p.netns);
    assert_eq!(p.facts.connector_netns_lost, None);

    // The connector joined a proxy container that no longer runs (inodes unreadable: PID 0).
    fake_engine(&bin, &layout.current(), 0, 0, "container:pid-old");
    let p = facts(false);
    let why = p.facts.connector_netns_lost.expect("lost");
    assert!(why.contains("c1 joined container pid-old"), "{why}");
}
