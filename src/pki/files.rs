//! Controller-side file handling for the CA state directory: a private directory, files
//! created with their final mode from the start, written to a temp file, fsynced and renamed.

use super::PkiError;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn io(what: String) -> impl FnOnce(std::io::Error) -> PkiError {
    move |cause| PkiError::Io { what, cause }
}

/// Creates `dir` (and missing parents) with mode 0700, or checks that an existing `dir` is a
/// directory not open to group or others.
pub(super) fn ensure_private_dir(dir: &Path) -> Result<(), PkiError> {
    match std::fs::metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(PkiError::Io {
                    what: format!("state directory {}", dir.display()),
                    cause: std::io::Error::new(ErrorKind::NotADirectory, "not a directory"),
                });
            }
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(PkiError::StateDirTooOpen {
                    dir: dir.to_path_buf(),
                    mode,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(format!("create state directory {}", dir.display())))?;
            std::fs::set_permissions(dir, Permissions::from_mode(0o700))
                .map_err(io(format!("chmod 700 {}", dir.display())))
        }
        Err(cause) => Err(PkiError::Io {
            what: format!("state directory {}", dir.display()),
            cause,
        }),
    }
}

/// Whether `path` exists (a dangling symlink counts as existing).
pub(super) fn exists(path: &Path) -> Result<bool, PkiError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(cause) => Err(PkiError::Io {
            what: format!("stat {}", path.display()),
            cause,
        }),
    }
}

/// Reads `path` as UTF-8; `None` when it does not exist. With `forbidden` mode bits, refuses a
/// file that has any of them (checked on the open descriptor).
pub(super) fn read_to_string(
    path: &Path,
    forbidden: Option<u32>,
) -> Result<Option<String>, PkiError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(cause) => {
            return Err(PkiError::Io {
                what: format!("open {}", path.display()),
                cause,
            });
        }
    };
    if let Some(bits) = forbidden {
        let mode = file
            .metadata()
            .map_err(io(format!("stat {}", path.display())))?
            .permissions()
            .mode()
            & 0o7777;
        if mode & bits != 0 {
            return Err(PkiError::KeyTooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let mut s = String::new();
    file.read_to_string(&mut s)
        .map_err(io(format!("read {}", path.display())))?;
    Ok(Some(s))
}

/// A temp file next to `target`, created with `mode` (never wider, whatever the umask),
/// written and fsynced. Removed on drop unless renamed.
struct TempFile {
    path: PathBuf,
    renamed: bool,
}

impl TempFile {
    fn write(target: &Path, bytes: &[u8], mode: u32) -> Result<TempFile, PkiError> {
        let dir = target.parent().unwrap_or(Path::new("."));
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let suffix: u64 = rand::random();
        let path = dir.join(format!(".{name}.tmp-{suffix:016x}"));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io(format!("create {}", path.display())))?;
        let tmp = TempFile {
            path,
            renamed: false,
        };
        let what = format!("write {}", target.display());
        // The umask may have removed bits (e.g. 0644 -> 0600); set the exact mode.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(io(what.clone()))?;
        file.write_all(bytes).map_err(io(what.clone()))?;
        file.sync_all().map_err(io(what))?;
        Ok(tmp)
    }

    fn rename_to(mut self, target: &Path) -> Result<(), PkiError> {
        std::fs::rename(&self.path, target)
            .map_err(io(format!("rename into {}", target.display())))?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes two files (key first, then certificate) so that neither is ever partly written and
/// the key is never readable by others: both temp files are complete and fsynced before
/// either rename, then the directory is fsynced.
pub(super) fn write_pair(
    key_path: &Path,
    key: &[u8],
    key_mode: u32,
    cert_path: &Path,
    cert: &[u8],
    cert_mode: u32,
) -> Result<(), PkiError> {
    let key_tmp = TempFile::write(key_path, key, key_mode)?;
    let cert_tmp = TempFile::write(cert_path, cert, cert_mode)?;
    key_tmp.rename_to(key_path)?;
    cert_tmp.rename_to(cert_path)?;
    let dir = key_path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("fsync directory {}", dir.display())))
}
