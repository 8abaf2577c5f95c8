//! The controller's state directory: where every operation keeps what outlives its process.
//!
//! ```text
//! <state>/pki/<tunnel>/                CA and server certificate (see crate::pki)
//! <state>/journal/<op>-<tunnel>.jsonl  the rollout engine's journal of an operation
//! <state>/journal/<op>-<tunnel>.op.json what the operation is about (hosts, releases, token fp)
//! <state>/journal/<op>-<tunnel>.lock   one run of <op> per tunnel on this controller (flock)
//! <state>/audit.log                    one line per operation (crate::ops::audit)
//! ```
//!
//! One owner for these paths, for private (0600, fsynced, renamed) writes and for the
//! controller-side lock, so deploy, rollback and rotation cannot drift apart on them.

use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The controller's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root` (`~` already expanded by the caller).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<state>/journal`.
    pub fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }

    /// The engine journal of `operation` for `tunnel`: `<state>/journal/<op>-<tunnel>.jsonl`.
    pub fn journal(&self, operation: &str, tunnel: &str) -> PathBuf {
        self.journal_dir()
            .join(format!("{operation}-{tunnel}.jsonl"))
    }

    /// The operation record of `operation` for `tunnel`: `<state>/journal/<op>-<tunnel>.op.json`.
    pub fn op_record(&self, operation: &str, tunnel: &str) -> PathBuf {
        self.journal_dir()
            .join(format!("{operation}-{tunnel}.op.json"))
    }

    /// The controller lock file of `operation` for `tunnel`.
    pub fn lock_file(&self, operation: &str, tunnel: &str) -> PathBuf {
        self.journal_dir()
            .join(format!("{operation}-{tunnel}.lock"))
    }

    /// Where the controller keeps the last `--token-version` its setup runs used for a tunnel.
    pub fn setup_version(&self, tunnel: &str) -> PathBuf {
        self.journal_dir()
            .join(format!("setup-{tunnel}.token-version"))
    }

    /// Creates `<state>/journal` (0700) if needed.
    pub fn ensure_journal_dir(&self) -> io::Result<PathBuf> {
        let dir = self.journal_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(dir)
    }

    /// Reads a JSON record written by [`write_json`]; `Ok(None)` when there is none.
    pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes the controller lock of `operation` for `tunnel` (an exclusive `flock`, held
    /// until the returned file is dropped, naming its holder inside). Waits up to `wait`.
    pub async fn lock(
        &self,
        operation: &str,
        tunnel: &str,
        wait: Duration,
    ) -> Result<std::fs::File, LockError> {
        self.ensure_journal_dir().map_err(|e| LockError::Io {
            path: self.journal_dir(),
            error: e,
        })?;
        let path = self.lock_file(operation, tunnel);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| LockError::Io {
                path: path.clone(),
                error: e,
            })?;
        let started = Instant::now();
        loop {
            // SAFETY: flock on an open descriptor we own; released when the file is closed.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                let _ = f.set_len(0);
                let _ = f.rewind();
                let _ = write!(
                    f,
                    "pid {} since {}",
                    std::process::id(),
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                return Ok(f);
            }
            if started.elapsed() >= wait {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                return Err(LockError::Held {
                    path,
                    holder: if holder.is_empty() {
                        "another process".to_string()
                    } else {
                        holder
                    },
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Why the controller lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it.
    Held {
        /// The lock file.
        path: PathBuf,
        /// What the holder wrote in it (pid and time).
        holder: String,
    },
    /// The lock file could not be opened.
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { path, holder } => {
                write!(f, "the lock {} is held by {holder}", path.display())
            }
            LockError::Io { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

/// Writes `text` to `path` privately: a 0600 temp file beside it, fsynced, renamed over it.
pub fn write_private(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Serializes `value` and writes it with [`write_private`].
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    write_private(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_per_operation_and_tunnel() {
        let s = StateDir::new("/st");
        assert_eq!(
            s.journal("deploy", "t1"),
            PathBuf::from("/st/journal/deploy-t1.jsonl")
        );
        assert_eq!(
            s.op_record("rotate", "t1"),
            PathBuf::from("/st/journal/rotate-t1.op.json")
        );
        assert_eq!(
            s.lock_file("deploy", "t1"),
            PathBuf::from("/st/journal/deploy-t1.lock")
        );
    }

    #[test]
    fn private_writes_are_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("rec.json");
        write_json(&p, &serde_json::json!({"a": 1})).expect("write");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let v: Option<serde_json::Value> = StateDir::read_json(&p).expect("read");
        assert_eq!(v, Some(serde_json::json!({"a": 1})));
        let none: Option<serde_json::Value> =
            StateDir::read_json(&dir.path().join("missing")).expect("read missing");
        assert!(none.is_none());
    }

    #[tokio::test]
    async fn a_second_lock_is_refused_with_its_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = StateDir::new(dir.path());
        let held = s.lock("deploy", "t", Duration::ZERO).await.expect("first");
        match s.lock("deploy", "t", Duration::ZERO).await {
            Err(LockError::Held { holder, .. }) => {
                assert!(holder.contains(&format!("pid {}", std::process::id())))
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        assert!(s.lock("deploy", "t", Duration::ZERO).await.is_ok());
    }
}
