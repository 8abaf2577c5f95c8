//! Where a tunnel token comes from: stdin, a file, an environment variable, or a command run
//! on the controller. Every source is validated after loading.

use super::token::{TokenError, strip_one_trailing_newline, validate_tunnel_token};
use super::{Secret, redact, redact_token_shaped};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use zeroize::Zeroizing;

/// Environment variable read by [`TokenSource::env_default`].
pub const DEFAULT_TOKEN_ENV: &str = "TUNNEL_TOKEN";

/// How long a token command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// At most this many bytes of a failing token command's stderr are kept in the error (after
/// redaction), so a command that echoes its input cannot flood or leak through the message.
pub const COMMAND_STDERR_CAP: usize = 512;

/// Largest input accepted from any source. Tokens are a few hundred bytes; anything bigger is
/// the wrong file.
const MAX_INPUT: u64 = 64 * 1024;

/// Where to read the tunnel token from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// All of stdin (refused when stdin is a terminal: the token would echo on screen).
    Stdin,
    /// A file on the controller; refused when group or others can read it.
    File(PathBuf),
    /// An environment variable of the controller (its name; usually `TUNNEL_TOKEN`).
    Env(String),
    /// A command run on the controller with `sh -c`; its stdout is the token. It gets no stdin
    /// and is killed after [`COMMAND_TIMEOUT`].
    Command(String),
    /// A vaulted `tunnel_token` of the inventory, decrypted when the inventory was read; the
    /// value is the id it was kept under (see [`super::remember_vaulted`]), not the token.
    Vault(String),
}

impl fmt::Display for TokenSource {
    /// A description safe to print: for a command only its first word is shown, since a
    /// command line may itself carry a credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Stdin => write!(f, "stdin"),
            TokenSource::File(p) => write!(f, "file {}", p.display()),
            TokenSource::Env(v) => write!(f, "environment variable {v}"),
            TokenSource::Vault(_) => write!(f, "the inventory's vaulted tunnel_token"),
            TokenSource::Command(c) => {
                let first = c.split_whitespace().next().unwrap_or("");
                if c.split_whitespace().nth(1).is_some() {
                    write!(f, "command `{first} …`")
                } else {
                    write!(f, "command `{first}`")
                }
            }
        }
    }
}

/// Why a token could not be loaded. Messages name the source and what to do, and never
/// contain the token.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `--token-stdin` with an interactive terminal on stdin.
    #[error(
        "token from stdin: stdin is a terminal; pipe the token in (e.g. `tunnelfleet ... < token-file`) or use a token file"
    )]
    StdinIsTerminal,
    /// The token file does not exist.
    #[error("token file {path}: not found; check the path (the file must hold only the token)")]
    FileMissing {
        /// The path given.
        path: PathBuf,
    },
    /// The token file can be read by group or others.
    #[error("token file {path}: mode {mode:04o} lets group or others read it; {advice}")]
    FileTooOpen {
        /// The path given (with the symlink's target named, when it is one).
        path: String,
        /// Its permission bits.
        mode: u32,
        /// What to do: `chmod 600` only for the operator's own regular file named directly.
        advice: String,
    },
    /// The path is not a regular file (a device such as /dev/null, a socket).
    #[error(
        "token file {path}: is {what}, not a regular file; give the path of a file of your own holding only the token (mode 0600), or use --token-stdin"
    )]
    NotRegular {
        /// The path given (with the symlink's target named, when it is one).
        path: String,
        /// What it is, e.g. "a character device".
        what: &'static str,
    },
    /// The path is a directory.
    #[error("token file {path}: is a directory; give the path of the file holding the token")]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// An I/O error reading stdin or the file.
    #[error("token from {origin}: cannot read: {cause}")]
    Read {
        /// Description of the source.
        origin: String,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// More input than any token could be.
    #[error(
        "token from {origin}: more than {limit} bytes; expected a single tunnel token (a few hundred bytes)"
    )]
    TooLarge {
        /// Description of the source.
        origin: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The environment variable is not set.
    #[error(
        "token from environment variable {var}: not set; export it or choose another token source"
    )]
    EnvMissing {
        /// The variable name.
        var: String,
    },
    /// The input is not UTF-8 text.
    #[error("token from {origin}: not UTF-8 text; expected a base64 tunnel token")]
    NotUtf8 {
        /// Description of the source.
        origin: String,
    },
    /// The token command could not be started.
    #[error("token from {origin}: cannot run `sh -c`: {cause}")]
    CommandSpawn {
        /// Description of the source.
        origin: String,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The token command exited unsuccessfully.
    #[error("token from {origin}: command failed ({status}); its stderr: {stderr}")]
    CommandFailed {
        /// Description of the source.
        origin: String,
        /// Exit status, e.g. "exit code 1" or "killed by signal 9".
        status: String,
        /// The command's stderr, redacted and capped at [`COMMAND_STDERR_CAP`] bytes.
        stderr: String,
    },
    /// The token command ran longer than [`COMMAND_TIMEOUT`].
    #[error(
        "token from {origin}: command still running after {secs} s, killed; check that it does not wait for input"
    )]
    CommandTimeout {
        /// Description of the source.
        origin: String,
        /// The timeout in seconds.
        secs: u64,
    },
    /// The source gave nothing.
    #[error("token from {origin}: empty; expected a tunnel token")]
    Empty {
        /// Description of the source.
        origin: String,
    },
    /// The source gave something that is not a tunnel token.
    #[error("token from {origin}: {err}")]
    Invalid {
        /// Description of the source.
        origin: String,
        /// What is wrong with it.
        #[source]
        err: TokenError,
    },
    /// A background task failed (panicked or was cancelled).
    #[error("token from {origin}: internal error: reading task failed: {cause}")]
    Task {
        /// Description of the source.
        origin: String,
        /// The join error.
        cause: String,
    },
}

impl TokenSource {
    /// The environment variable `TUNNEL_TOKEN`.
    pub fn env_default() -> Self {
        TokenSource::Env(DEFAULT_TOKEN_ENV.to_string())
    }

    /// Loads the token and validates it ([`validate_tunnel_token`]).
    ///
    /// One trailing line break is removed from stdin, file and command output. Blocking reads
    /// run on tokio's blocking pool.
    pub async fn load(&self) -> Result<Secret, SecretError> {
        let origin = self.to_string();
        match self {
            TokenSource::Stdin => {
                let bytes = run_blocking(&origin, read_stdin).await?;
                finish(&origin, bytes, true)
            }
            TokenSource::File(path) => {
                let path = path.clone();
                let bytes = run_blocking(&origin, move || read_file(&path)).await?;
                finish(&origin, bytes, true)
            }
            TokenSource::Env(var) => match std::env::var_os(var) {
                None => Err(SecretError::EnvMissing { var: var.clone() }),
                Some(v) => finish(&origin, Zeroizing::new(v.into_encoded_bytes()), false),
            },
            TokenSource::Command(cmd) => {
                let bytes = run_command(&origin, cmd, COMMAND_TIMEOUT).await?;
                finish(&origin, bytes, true)
            }
            TokenSource::Vault(id) => {
                let secret = super::recall_vaulted(id).ok_or(SecretError::Empty {
                    origin: origin.clone(),
                })?;
                finish(
                    &origin,
                    Zeroizing::new(secret.expose().as_bytes().to_vec()),
                    true,
                )
            }
        }
    }

    /// Loads a secret that is not a tunnel token (an API credential): the same sources and
    /// checks (file modes, size caps, one trailing newline), without the token validation.
    pub async fn load_raw(&self) -> Result<Secret, SecretError> {
        let origin = self.to_string();
        let bytes = match self {
            TokenSource::Stdin => run_blocking(&origin, read_stdin).await?,
            TokenSource::File(path) => {
                let path = path.clone();
                run_blocking(&origin, move || read_file(&path)).await?
            }
            TokenSource::Env(var) => match std::env::var_os(var) {
                None => return Err(SecretError::EnvMissing { var: var.clone() }),
                Some(v) => Zeroizing::new(v.into_encoded_bytes()),
            },
            TokenSource::Command(cmd) => run_command(&origin, cmd, COMMAND_TIMEOUT).await?,
            TokenSource::Vault(id) => match super::recall_vaulted(id) {
                Some(s) => Zeroizing::new(s.expose().as_bytes().to_vec()),
                None => return Err(SecretError::Empty { origin }),
            },
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| SecretError::NotUtf8 {
            origin: origin.clone(),
        })?;
        let text = strip_one_trailing_newline(text);
        if text.is_empty() {
            return Err(SecretError::Empty { origin });
        }
        Ok(Secret::new(text.to_string()))
    }
}

/// Runs `f` on the blocking pool.
async fn run_blocking<F>(origin: &str, f: F) -> Result<Zeroizing<Vec<u8>>, SecretError>
where
    F: FnOnce() -> Result<Zeroizing<Vec<u8>>, SecretError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(SecretError::Task {
            origin: origin.to_string(),
            cause: e.to_string(),
        }),
    }
}

/// Reads at most `MAX_INPUT` bytes; more is an error.
fn read_capped(origin: &str, r: impl Read) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let mut buf = Zeroizing::new(Vec::new());
    r.take(MAX_INPUT + 1)
        .read_to_end(&mut buf)
        .map_err(|cause| SecretError::Read {
            origin: origin.to_string(),
            cause,
        })?;
    if buf.len() as u64 > MAX_INPUT {
        return Err(SecretError::TooLarge {
            origin: origin.to_string(),
            limit: MAX_INPUT,
        });
    }
    Ok(buf)
}

fn read_stdin() -> Result<Zeroizing<Vec<u8>>, SecretError> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
        return Err(SecretError::StdinIsTerminal);
    }
    read_capped("stdin", std::io::stdin().lock())
}

/// Opens the file, checks its mode on the open descriptor (no race with a chmod in between),
/// and reads it.
fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let origin = format!("file {}", path.display());
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SecretError::FileMissing {
                path: path.to_path_buf(),
            });
        }
        Err(cause) => return Err(SecretError::Read { origin, cause }),
    };
    let meta = file.metadata().map_err(|cause| SecretError::Read {
        origin: origin.clone(),
        cause,
    })?;
    if meta.is_dir() {
        return Err(SecretError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    // Name what the operator really pointed at: a symlink's target, so that no advice ever
    // applies to a link whose target is someone else's file (e.g. /etc/shadow).
    let link_target = std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_symlink())
        .map(|_| {
            std::fs::canonicalize(path)
                .or_else(|_| std::fs::read_link(path))
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "an unreadable target".into())
        });
    let shown = match &link_target {
        Some(t) => format!("{} (a symlink to {t})", path.display()),
        None => path.display().to_string(),
    };
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_fifo() {
        // A pipe: process substitution (`--token-file <(cmd)`) or a named pipe with a writer.
        // Its mode says nothing about who can read the token.
        return read_capped(&origin, file);
    }
    if !ft.is_file() {
        let what = if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(SecretError::NotRegular { path: shown, what });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o044 != 0 {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        let own = meta.uid() == unsafe { libc::geteuid() };
        let advice = match (&link_target, own) {
            (None, true) => format!(
                "run `chmod 600 {}` and rotate the token if others may have read it",
                path.display()
            ),
            (Some(_), _) => "copy the token into a file of your own with mode 0600 and give \
                             that path (tunnelfleet does not advise changing a link's target); \
                             rotate the token if others may have read it"
                .to_string(),
            (None, false) => format!(
                "the file belongs to uid {}, not to you: copy the token into a file of your \
                 own with mode 0600; rotate the token if others may have read it",
                meta.uid()
            ),
        };
        return Err(SecretError::FileTooOpen {
            path: shown,
            mode,
            advice,
        });
    }
    read_capped(&origin, file)
}

/// Runs `sh -c cmd` with no stdin, returns its stdout.
async fn run_command(
    origin: &str,
    cmd: &str,
    timeout: Duration,
) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|cause| SecretError::CommandSpawn {
            origin: origin.to_string(),
            cause,
        })?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            return Err(SecretError::CommandTimeout {
                origin: origin.to_string(),
                secs: timeout.as_secs(),
            });
        }
        Ok(Err(cause)) => {
            return Err(SecretError::Read {
                origin: origin.to_string(),
                cause,
            });
        }
        Ok(Ok(o)) => o,
    };
    let stdout = Zeroizing::new(output.stdout);
    if !output.status.success() {
        let status = describe_status(&output.status);
        // The command may echo the token (or part of it) on stderr: redact whatever it
        // printed on stdout, then cap.
        let partial =
            Secret::new(strip_one_trailing_newline(&String::from_utf8_lossy(&stdout)).to_string());
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Then anything token-shaped: the command may print a token it read elsewhere
        // (`cat tokenfile >&2`), which tunnelfleet never saw.
        let stderr = redact_token_shaped(&redact(stderr.trim_end(), &[&partial]));
        return Err(SecretError::CommandFailed {
            origin: origin.to_string(),
            status,
            stderr: cap(&stderr, COMMAND_STDERR_CAP),
        });
    }
    if stdout.len() as u64 > MAX_INPUT {
        return Err(SecretError::TooLarge {
            origin: origin.to_string(),
            limit: MAX_INPUT,
        });
    }
    Ok(stdout)
}

fn describe_status(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "unknown status".to_string(),
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
fn cap(s: &str, max: usize) -> String {
    if s.is_empty() {
        return "(empty)".to_string();
    }
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &s[..end], s.len() - end)
}

/// Turns raw input into a validated [`Secret`].
fn finish(
    origin: &str,
    bytes: Zeroizing<Vec<u8>>,
    strip_newline: bool,
) -> Result<Secret, SecretError> {
    let text = std::str::from_utf8(&bytes).map_err(|_| SecretError::NotUtf8 {
        origin: origin.to_string(),
    })?;
    let text = if strip_newline {
        strip_one_trailing_newline(text)
    } else {
        text
    };
    if text.is_empty() {
        return Err(SecretError::Empty {
            origin: origin.to_string(),
        });
    }
    let secret = Secret::new(text.to_string());
    validate_tunnel_token(secret.expose()).map_err(|err| SecretError::Invalid {
        origin: origin.to_string(),
        err,
    })?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const EXAMPLE: &str = "eyJhIjoiRVhBTVBMRSIsInQiOiJFWEFNUExFIiwicyI6IkVYQU1QTEUifQ==";

    fn rt() -> tokio::runtime::Runtime {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("tokio runtime: {e}"),
        }
    }

    fn write_file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(content.as_bytes()).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn file_source_strips_one_newline_and_validates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write_file(dir.path(), "tok", &format!("{EXAMPLE}\n"), 0o600);
        let s = rt().block_on(TokenSource::File(p).load()).expect("load");
        assert_eq!(s.expose(), EXAMPLE);
    }

    #[test]
    fn file_source_refuses_group_or_world_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        for mode in [0o640, 0o604, 0o644] {
            let p = write_file(dir.path(), "tok", EXAMPLE, mode);
            let err = rt()
                .block_on(TokenSource::File(p.clone()).load())
                .expect_err("open file");
            let msg = err.to_string();
            assert!(matches!(err, SecretError::FileTooOpen { .. }), "{msg}");
            assert!(msg.contains(&format!("chmod 600 {}", p.display())), "{msg}");
            assert!(!msg.contains(EXAMPLE));
        }
    }

    #[test]
    fn file_advice_never_names_a_devices_or_a_links_target_for_chmod() {
        // /dev/null: refused as not a regular file, no chmod advice.
        let err = rt()
            .block_on(TokenSource::File("/dev/null".into()).load())
            .expect_err("device");
        let msg = err.to_string();
        assert!(matches!(err, SecretError::NotRegular { .. }), "{msg}");
        assert!(msg.contains("a character device"), "{msg}");
        assert!(!msg.contains("chmod"), "{msg}");

        // A symlink to an open file (think /etc/shadow): the target is named, and no chmod
        // is suggested on either the link or the target.
        let dir = tempfile::tempdir().expect("tempdir");
        let target = write_file(dir.path(), "shadow", EXAMPLE, 0o640);
        let link = dir.path().join("tok");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = rt()
            .block_on(TokenSource::File(link.clone()).load())
            .expect_err("open target");
        let msg = err.to_string();
        assert!(matches!(err, SecretError::FileTooOpen { .. }), "{msg}");
        let real = std::fs::canonicalize(&target).expect("canonicalize");
        assert!(
            msg.contains(&format!("a symlink to {}", real.display())),
            "{msg}"
        );
        assert!(!msg.contains("chmod"), "{msg}");
        assert!(!msg.contains(EXAMPLE), "{msg}");

        // Someone else's file: no chmod either.
        if unsafe { libc::geteuid() } == 0 {
            let other = write_file(dir.path(), "other", EXAMPLE, 0o644);
            std::os::unix::fs::chown(&other, Some(65534), None).expect("chown");
            let err = rt()
                .block_on(TokenSource::File(other).load())
                .expect_err("not ours");
            let msg = err.to_string();
            assert!(msg.contains("belongs to uid 65534"), "{msg}");
            assert!(!msg.contains("chmod"), "{msg}");
        }
    }

    #[test]
    fn file_source_reads_a_pipe_as_process_substitution_gives_it() {
        // What `--token-file <(cmd)` hands over: /dev/fd/N, a pipe with a writer. Its mode
        // is no reason to refuse.
        let (r, mut w) = std::io::pipe().expect("pipe");
        let writer = std::thread::spawn(move || {
            w.write_all(format!("{EXAMPLE}\n").as_bytes())
                .expect("write");
        });
        use std::os::fd::AsRawFd;
        let path = PathBuf::from(format!("/proc/self/fd/{}", r.as_raw_fd()));
        let s = rt()
            .block_on(TokenSource::File(path).load())
            .expect("a pipe is read");
        writer.join().expect("writer");
        assert_eq!(s.expose(), EXAMPLE);
    }

    #[test]
    fn file_source_missing_and_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = rt()
            .block_on(TokenSource::File(dir.path().join("nope")).load())
            .expect_err("missing");
        assert!(matches!(err, SecretError::FileMissing { .. }), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let err = rt()
            .block_on(TokenSource::File(dir.path().to_path_buf()).load())
            .expect_err("dir");
        assert!(matches!(err, SecretError::NotAFile { .. }), "{err}");
    }

    #[test]
    fn file_source_invalid_token_message_has_no_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = "eyJhIjoiRVhBTVBMRSJ9 trailing";
        let p = write_file(dir.path(), "tok", bad, 0o600);
        let err = rt()
            .block_on(TokenSource::File(p).load())
            .expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.contains("contains a space"), "{msg}");
        assert!(!msg.contains("eyJhIjoiRVhBTVBMRSJ9"), "{msg}");
    }

    #[test]
    fn env_source() {
        // Unique names: tests run in parallel threads of one process.
        let var = "TUNNELFLEET_TEST_TOKEN_ENV_SOURCE";
        // SAFETY: only this test touches this variable.
        unsafe { std::env::set_var(var, EXAMPLE) };
        let s = rt()
            .block_on(TokenSource::Env(var.into()).load())
            .expect("env");
        assert_eq!(s.expose(), EXAMPLE);
        let err = rt()
            .block_on(TokenSource::Env("TUNNELFLEET_TEST_SURELY_UNSET".into()).load())
            .expect_err("unset");
        assert!(matches!(err, SecretError::EnvMissing { .. }), "{err}");
        assert!(matches!(TokenSource::env_default(), TokenSource::Env(v) if v == "TUNNEL_TOKEN"));
    }

    #[test]
    fn command_source_success_empty_and_failure() {
        let s = rt()
            .block_on(TokenSource::Command(format!("echo {EXAMPLE}")).load())
            .expect("command");
        assert_eq!(s.expose(), EXAMPLE);

        let err = rt()
            .block_on(TokenSource::Command("true".into()).load())
            .expect_err("empty");
        assert!(matches!(err, SecretError::Empty { .. }), "{err}");

        // A failing command that echoes the token on stderr: the token is redacted.
        let cmd = format!("printf '%s' {EXAMPLE}; echo \"cannot unlock {EXAMPLE}\" >&2; exit 3");
        let err = rt()
            .block_on(TokenSource::Command(cmd).load())
            .expect_err("failing");
        let msg = err.to_string();
        assert!(msg.contains("exit code 3"), "{msg}");
        assert!(msg.contains("cannot unlock <redacted:"), "{msg}");
        assert!(!msg.contains(EXAMPLE), "{msg}");
        // The description shows only the command's first word.
        assert!(msg.starts_with("token from command `printf …`"), "{msg}");

        // A failing command that prints a token it read elsewhere (never on its stdout):
        // redacted by its shape.
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write_file(dir.path(), "tok", EXAMPLE, 0o600);
        let cmd = format!("cat '{}' >&2; exit 1", p.display());
        let err = rt()
            .block_on(TokenSource::Command(cmd).load())
            .expect_err("failing");
        let msg = err.to_string();
        assert!(!msg.contains(EXAMPLE), "{msg}");
        assert!(!msg.contains(&EXAMPLE[..30]), "{msg}");
        assert!(msg.contains("<redacted>"), "{msg}");
    }

    #[test]
    fn command_stderr_is_capped() {
        let err = rt()
            .block_on(
                TokenSource::Command("yes 'no token here' | head -c 5000 >&2; exit 1".into())
                    .load(),
            )
            .expect_err("failing");
        match err {
            SecretError::CommandFailed { stderr, .. } => {
                assert!(stderr.len() < COMMAND_STDERR_CAP + 40, "{}", stderr.len());
                assert!(stderr.ends_with("bytes cut)"), "{stderr}");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn command_timeout_kills() {
        let err = rt()
            .block_on(run_command(
                "command `sleep`",
                "sleep 30",
                Duration::from_millis(200),
            ))
            .expect_err("timeout");
        assert!(matches!(err, SecretError::CommandTimeout { .. }), "{err}");
    }

    #[test]
    fn finish_refuses_non_utf8_and_too_large() {
        let err = finish("stdin", Zeroizing::new(vec![0xff, 0xfe]), true).expect_err("utf8");
        assert!(matches!(err, SecretError::NotUtf8 { .. }), "{err}");
        let err =
            read_capped("stdin", std::io::repeat(b'a').take(MAX_INPUT + 10)).expect_err("large");
        assert!(matches!(err, SecretError::TooLarge { .. }), "{err}");
        let s = finish(
            "stdin",
            Zeroizing::new(format!("{EXAMPLE}\r\n").into_bytes()),
            true,
        )
        .expect("crlf");
        assert_eq!(s.expose(), EXAMPLE);
    }
}
