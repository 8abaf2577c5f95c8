//! Atomic write of several files from one stdin stream, in one remote command.
//!
//! # Stdin framing
//! The payload is the files' contents back to back, in the order given, with nothing in
//! between: `content_1 ‖ content_2 ‖ … ‖ content_n`. The byte length of each file is written in
//! the script (lengths are not secret); the script reads exactly that many bytes per file with
//! `head -c N` and checks the size it got. Contents never appear in the script.
//!
//! # What the script does
//! With `umask 077` (a temp file is never readable by others, even briefly):
//! 1. for each file: refuse a target that is a directory; create the parent directory if
//!    missing (`mkdir -p -m DIR_MODE`, new intermediate directories 0755); create a temp file
//!    `.tunnelfleet-tmp.XXXXXXXX` in the target's directory (`mktemp`, mode 0600); copy exactly N
//!    bytes from stdin into it and verify its size; fsync it (`sync -- FILE`: coreutils ≥ 8.24
//!    and busybox fsync just that file; older coreutils ignore the argument and sync everything,
//!    which is slower but still correct); `chown` if an owner is given; `chmod` to the final
//!    mode.
//! 2. only when every temp file is complete: `mv -f` each temp file over its target (a rename
//!    in the same directory: readers see the old or the new file, never a mix).
//! 3. fsync each target directory so the renames are durable (a failure there is reported on
//!    stderr as a warning; the files are in place).
//!
//! On any failure in step 1 (e.g. ENOSPC) all temp files are removed, every old target is
//! intact, and the script exits 1 with `write PATH: CAUSE (old file kept)` on stderr. A failure
//! in step 2 says which targets were already replaced. The group of renames is not atomic as a
//! whole: a crash between two renames leaves some files new and some old (each file is whole).
//! On SIGHUP/SIGINT/SIGTERM the temp files are removed too; a SIGKILL can leave a
//! `.tunnelfleet-tmp.*` file behind (never a partial target).

use super::{ScriptError, check_path, check_value, parent_of, quote};
use std::fmt::Write as _;

/// Mode for parent directories that [`atomic_write`] has to create, unless a [`WriteSpec`]
/// says otherwise.
pub const DEFAULT_DIR_MODE: u32 = 0o755;

/// Name prefix of the temp files, so leftovers of a killed run can be recognised.
pub const TEMP_PREFIX: &str = ".tunnelfleet-tmp.";

/// One file of an atomic write: where, with which mode and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSpec {
    /// Absolute path on the host (a relative path is relative to the remote login directory).
    pub path: String,
    /// Final permission bits, e.g. `0o600` for `.env`.
    pub mode: u32,
    /// Final owner for `chown` (`user`, `user:group`, `uid:gid`); `None` keeps the remote
    /// user's.
    pub owner: Option<String>,
    /// Mode of the parent directory if it has to be created (existing directories are left
    /// alone).
    pub dir_mode: u32,
}

impl WriteSpec {
    /// A file at `path` with `mode`, no owner change, parent created with
    /// [`DEFAULT_DIR_MODE`] if missing.
    pub fn new(path: impl Into<String>, mode: u32) -> Self {
        WriteSpec {
            path: path.into(),
            mode,
            owner: None,
            dir_mode: DEFAULT_DIR_MODE,
        }
    }

    /// Sets the owner passed to `chown`.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Sets the mode of the parent directory if it has to be created.
    pub fn dir_mode(mut self, mode: u32) -> Self {
        self.dir_mode = mode;
        self
    }
}

/// Shell functions shared by every atomic write script.
const PRELUDE: &str = r#"umask 077
tf_state='old file kept'
tf_why() { tf_w=${1##*: }; [ -n "$tf_w" ] || tf_w='failed'; printf '%s' "$tf_w"; }
"#;

/// Builds the script and the stdin payload that write `files` atomically (see the module
/// documentation for the framing and the guarantees).
///
/// The payload holds the contents; the script holds only paths, modes, owners and lengths.
pub fn atomic_write(files: &[(WriteSpec, &[u8])]) -> Result<(String, Vec<u8>), ScriptError> {
    let specs: Vec<&WriteSpec> = files.iter().map(|(s, _)| s).collect();
    let lens: Vec<usize> = files.iter().map(|(_, c)| c.len()).collect();
    let script = build(&specs, Some(&lens))?;
    let total: usize = lens.iter().sum();
    let mut payload = Vec::with_capacity(total);
    for (_, content) in files {
        payload.extend_from_slice(content);
    }
    Ok((script, payload))
}

/// Exit status of a framed write that got no (or no complete) header: the controller
/// closed its input without sending anything, and nothing was touched.
pub const WRITE_CANCELLED_EXIT: i32 = 3;

/// The script of an atomic write of `specs` whose contents are not known yet: it can be
/// started ahead (while its input window opens) and fed later with [`framed_payload`].
///
/// Framing: one header line, the byte length of each file in order separated by spaces,
/// then the contents back to back. The script reads the header before touching anything:
/// an EOF before a complete header (a controller that died, or gave up, before it had the
/// contents) exits [`WRITE_CANCELLED_EXIT`] with nothing created; a header that is not
/// `specs.len()` decimal lengths fails the same way; input shorter than the header says
/// fails as in [`atomic_write`] (temp files removed, old files kept). The rest (temp file,
/// fsync, rename, directory fsync) is [`atomic_write`]'s.
pub fn atomic_write_framed(specs: &[WriteSpec]) -> Result<String, ScriptError> {
    let specs: Vec<&WriteSpec> = specs.iter().collect();
    build(&specs, None)
}

/// The input of an [`atomic_write_framed`] script for `contents` (one per spec, in order).
pub fn framed_payload(contents: &[&[u8]]) -> Vec<u8> {
    let lens: Vec<String> = contents.iter().map(|c| c.len().to_string()).collect();
    let mut payload = format!("{}\n", lens.join(" ")).into_bytes();
    for c in contents {
        payload.extend_from_slice(c);
    }
    payload
}

/// The script for `specs`; `lens` the contents' lengths when known (written in the script),
/// `None` when the input carries them in a header line (framed).
fn build(specs: &[&WriteSpec], lens: Option<&[usize]>) -> Result<String, ScriptError> {
    let files: Vec<(&WriteSpec, ())> = specs.iter().map(|s| (*s, ())).collect();
    let mut seen = std::collections::HashSet::new();
    for (spec, _) in &files {
        check_path(&spec.path)?;
        if spec.mode > 0o7777 {
            return Err(ScriptError::BadMode {
                path: spec.path.clone(),
                mode: spec.mode,
            });
        }
        if spec.dir_mode > 0o7777 {
            return Err(ScriptError::BadMode {
                path: parent_of(&spec.path).to_string(),
                mode: spec.dir_mode,
            });
        }
        if let Some(owner) = &spec.owner {
            check_value("owner", owner)?;
        }
        if !seen.insert(spec.path.as_str()) {
            return Err(ScriptError::DuplicatePath {
                path: spec.path.clone(),
            });
        }
    }

    let n = files.len();
    let mut s = String::new();
    let _ = writeln!(s, "# tunnelfleet: atomic write of {n} file(s) from stdin");
    s.push_str(PRELUDE);
    for i in 1..=n {
        let _ = writeln!(s, "tf_t{i}=");
    }
    s.push_str("tf_cleanup() {\n");
    for i in 1..=n {
        let _ = writeln!(
            s,
            "  if [ -n \"$tf_t{i}\" ]; then rm -f -- \"$tf_t{i}\"; fi"
        );
    }
    s.push_str("  :\n}\n");
    s.push_str(
        "tf_fail() { tf_cleanup; printf 'write %s: %s (%s)\\n' \"$1\" \"$2\" \"$tf_state\" >&2; exit 1; }\n",
    );
    s.push_str("trap 'tf_cleanup; exit 129' HUP\n");
    s.push_str("trap 'tf_cleanup; exit 130' INT\n");
    s.push_str("trap 'tf_cleanup; exit 143' TERM\n");

    // Step 0 (framed): the lengths, from the input's header line, before touching anything.
    if lens.is_none() {
        let vars: Vec<String> = (1..=n).map(|i| format!("tf_l{i}")).collect();
        let _ = writeln!(
            s,
            "if ! IFS=' ' read -r {} tf_rest; then printf 'no input: nothing written (cancelled)\\n' >&2; exit {WRITE_CANCELLED_EXIT}; fi",
            vars.join(" ")
        );
        let _ = writeln!(
            s,
            "if [ -n \"$tf_rest\" ]; then printf 'bad input header: nothing written\\n' >&2; exit {WRITE_CANCELLED_EXIT}; fi"
        );
        for v in &vars {
            let _ = writeln!(
                s,
                "case \"${v}\" in ''|*[!0-9]*) printf 'bad input header: nothing written\\n' >&2; exit {WRITE_CANCELLED_EXIT};; esac"
            );
        }
    }

    // Step 1: temp files.
    for (idx, (spec, _)) in files.iter().enumerate() {
        let i = idx + 1;
        let p = quote(&spec.path);
        let dir = parent_of(&spec.path);
        let d = quote(dir);
        let (len, len_text) = match lens {
            Some(l) => (l[idx].to_string(), l[idx].to_string()),
            None => (format!("\"$tf_l{i}\""), format!("$tf_l{i}")),
        };
        let t = format!("\"$tf_t{i}\"");
        match lens {
            Some(l) => {
                let _ = writeln!(
                    s,
                    "# {i}: {} ({} bytes)",
                    spec.path.replace('\n', " "),
                    l[idx]
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "# {i}: {} (length from the input's header)",
                    spec.path.replace('\n', " ")
                );
            }
        }
        let _ = writeln!(s, "if [ -d {p} ]; then tf_fail {p} 'is a directory'; fi");
        let _ = writeln!(
            s,
            "if [ ! -d {d} ]; then tf_e=$( (umask 022 && mkdir -p -m {dm:04o} -- {d}) 2>&1 ) || tf_fail {p} \"cannot create directory \"{d}\": $(tf_why \"$tf_e\")\"; fi",
            dm = spec.dir_mode
        );
        // mktemp takes no `--`: keep the template from starting with '-'.
        let template_dir = if dir == "/" {
            String::new()
        } else if dir.starts_with('/') || dir.starts_with("./") || dir == "." {
            dir.to_string()
        } else {
            format!("./{dir}")
        };
        let template = quote(&format!("{template_dir}/{TEMP_PREFIX}XXXXXXXX"));
        let _ = writeln!(
            s,
            "tf_e=$(mktemp {template} 2>&1) || tf_fail {p} \"cannot create temp file: $(tf_why \"$tf_e\")\""
        );
        let _ = writeln!(s, "tf_t{i}=$tf_e");
        let _ = writeln!(
            s,
            "tf_e=$(head -c {len} 2>&1 >{t}) || tf_fail {p} \"$(tf_why \"$tf_e\")\""
        );
        let _ = writeln!(s, "tf_n=$(wc -c < {t}) || tf_fail {p} 'cannot check size'");
        let _ = writeln!(
            s,
            "if [ \"$tf_n\" -ne {len} ]; then tf_fail {p} \"short input: got $((tf_n)) of {len_text} bytes\"; fi"
        );
        let _ = writeln!(
            s,
            "tf_e=$(sync -- {t} 2>&1) || tf_fail {p} \"fsync: $(tf_why \"$tf_e\")\""
        );
        if let Some(owner) = &spec.owner {
            let o = quote(owner);
            let _ = writeln!(
                s,
                "tf_e=$(chown -- {o} {t} 2>&1) || tf_fail {p} \"chown \"{o}\": $(tf_why \"$tf_e\")\""
            );
        }
        let _ = writeln!(
            s,
            "tf_e=$(chmod -- {m:04o} {t} 2>&1) || tf_fail {p} \"chmod {m:04o}: $(tf_why \"$tf_e\")\"",
            m = spec.mode
        );
    }

    // Step 2: renames.
    let mut replaced: Vec<&str> = Vec::new();
    for (idx, (spec, _)) in files.iter().enumerate() {
        let i = idx + 1;
        let p = quote(&spec.path);
        let _ = writeln!(
            s,
            "tf_e=$(mv -f -- \"$tf_t{i}\" {p} 2>&1) || tf_fail {p} \"rename: $(tf_why \"$tf_e\")\""
        );
        let _ = writeln!(s, "tf_t{i}=");
        replaced.push(&spec.path);
        if i < n {
            let state = format!("old file kept; already replaced: {}", replaced.join(", "));
            let _ = writeln!(s, "tf_state={}", quote(&state));
        }
    }

    // Step 3: directory fsync, once per directory.
    let mut dirs: Vec<&str> = Vec::new();
    for (spec, _) in files {
        let dir = parent_of(&spec.path);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        let d = quote(dir);
        let _ = writeln!(
            s,
            "tf_e=$(sync -- {d} 2>&1) || printf 'warning: fsync directory %s: %s (files are in place)\\n' {d} \"$(tf_why \"$tf_e\")\" >&2"
        );
    }
    s.push_str("exit 0\n");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_has_lengths_modes_and_paths_but_no_content() {
        let secret = b"TUNNEL_TOKEN=eyJhIjoiRVhBTVBMRSJ9\n";
        let files = [
            (
                WriteSpec::new("/srv/mcp-tunnel/shared/.env", 0o600),
                &secret[..],
            ),
            (
                WriteSpec::new("/srv/mcp-tunnel/shared/data/tls.crt", 0o644).owner("1000:1000"),
                &b"CERT"[..],
            ),
        ];
        let (script, payload) = atomic_write(&files).expect("build");
        assert_eq!(payload, [&secret[..], b"CERT"].concat());
        assert!(!script.contains("eyJ"), "{script}");
        assert!(script.contains(&format!("head -c {}", secret.len())));
        assert!(script.contains("head -c 4 "));
        assert!(script.contains("umask 077"));
        assert!(script.contains("chmod -- 0600 "));
        assert!(script.contains("chmod -- 0644 "));
        assert!(script.contains("chown -- 1000:1000 "));
        assert!(script.contains("mv -f -- \"$tf_t1\" /srv/mcp-tunnel/shared/.env"));
        assert!(script.contains("mktemp /srv/mcp-tunnel/shared/.tunnelfleet-tmp.XXXXXXXX"));
        assert!(script.contains("sync -- /srv/mcp-tunnel/shared/data"));
        // All temp files are complete before the first rename.
        let last_chmod = script.rfind("chmod --").expect("chmod");
        let first_mv = script.find("mv -f").expect("mv");
        assert!(last_chmod < first_mv);
    }

    #[test]
    fn refuses_bad_specs() {
        let e = atomic_write(&[(WriteSpec::new("/a/", 0o600), &b""[..])]).expect_err("slash");
        assert!(matches!(e, ScriptError::BadPath { .. }));
        let e = atomic_write(&[(WriteSpec::new("/a", 0o10000), &b""[..])]).expect_err("mode");
        assert!(matches!(e, ScriptError::BadMode { .. }));
        let e = atomic_write(&[
            (WriteSpec::new("/a", 0o600), &b""[..]),
            (WriteSpec::new("/a", 0o600), &b""[..]),
        ])
        .expect_err("dup");
        assert!(matches!(e, ScriptError::DuplicatePath { .. }));
        let e = atomic_write(&[(WriteSpec::new("/a", 0o600).owner("ro\0ot"), &b""[..])])
            .expect_err("nul");
        assert!(matches!(e, ScriptError::Nul { .. }));
    }

    #[test]
    fn relative_dir_starting_with_dash_is_not_an_option() {
        let (script, _) =
            atomic_write(&[(WriteSpec::new("-x/f", 0o600), &b"1"[..])]).expect("build");
        assert!(
            script.contains("mktemp ./-x/.tunnelfleet-tmp.XXXXXXXX"),
            "{script}"
        );
        let (script, _) = atomic_write(&[(WriteSpec::new("f", 0o600), &b"1"[..])]).expect("build");
        assert!(
            script.contains("mktemp ./.tunnelfleet-tmp.XXXXXXXX"),
            "{script}"
        );
    }

    #[test]
    fn root_level_file_template() {
        let (script, _) = atomic_write(&[(WriteSpec::new("/x", 0o600), &b"1"[..])]).expect("build");
        assert!(
            script.contains("mktemp /.tunnelfleet-tmp.XXXXXXXX"),
            "{script}"
        );
    }
}
