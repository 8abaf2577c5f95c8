//! Bounded reads of the operator's files (inventories, group_vars/host_vars files,
//! playbooks, ssh_config).
//!
//! `std::fs::read_to_string` on `/dev/zero` grows until the process is killed, and on a FIFO
//! with no writer it blocks forever. Every file tunnelfleet reads from the operator goes
//! through [`read_text`]: it refuses anything that is not a regular file (after following
//! symlinks) before opening it, and reads at most `limit` bytes, saying the limit when the
//! file is larger.

use std::fmt;
use std::io::Read;
use std::path::Path;

/// Size limit of an inventory file.
pub const INVENTORY_LIMIT: u64 = 16 * 1024 * 1024;
/// Size limit of the other files read from the operator (vars files, playbooks, ssh_config).
pub const SMALL_FILE_LIMIT: u64 = 1024 * 1024;

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Opening or reading failed (not found, permission denied, ...).
    Io(std::io::Error),
    /// The path is not a regular file; the value names what it is ("a directory", "a FIFO").
    NotRegular(&'static str),
    /// The file is larger than the limit (bytes).
    TooLarge(u64),
    /// The file is not UTF-8 text.
    NotUtf8,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(kind) => {
                write!(f, "is {kind}, not a regular file (give the path of a file)")
            }
            ReadError::TooLarge(limit) => write!(
                f,
                "is larger than {} (the limit for this kind of file); is it the right file?",
                human(*limit)
            ),
            ReadError::NotUtf8 => write!(f, "is not UTF-8 text"),
        }
    }
}

impl std::error::Error for ReadError {}

fn human(bytes: u64) -> String {
    if bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else {
        format!("{bytes} bytes")
    }
}

/// What a non-regular file is, for error messages.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Checks that `path` is a regular file (following symlinks) without opening it.
pub fn check_regular(path: &Path) -> Result<(), ReadError> {
    let meta = std::fs::metadata(path).map_err(ReadError::Io)?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(ReadError::NotRegular(kind_of(&meta)))
    }
}

/// Reads the regular file at `path` as UTF-8 text, at most `limit` bytes.
///
/// Devices, FIFOs, sockets and directories are refused before they are opened (opening a
/// FIFO blocks until a writer comes). The file is opened with `O_NONBLOCK` so that a FIFO
/// swapped in between the check and the open cannot block either, and its type is checked
/// again on the open handle.
pub fn read_text(path: &Path, limit: u64) -> Result<String, ReadError> {
    use std::os::unix::fs::OpenOptionsExt;
    check_regular(path)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(&meta)));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge(limit));
    }
    let mut bytes = Vec::new();
    // One byte over the limit tells a file that grew since the check.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge(limit));
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_fifos_directories_and_large_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = read_text(Path::new("/dev/zero"), 1024)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("is a character device, not a regular file (give the path of a file)")
        );
        let e = read_text(dir.path(), 1024).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("is a directory, not a regular file (give the path of a file)")
        );
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_text(&fifo, 1024).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("is a FIFO, not a regular file (give the path of a file)")
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 2048]).expect("write");
        let e = read_text(&big, 1024).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "is larger than 1024 bytes (the limit for this kind of file); is it the right file?"
            )
        );
        assert_eq!(read_text(&big, 2048).ok().map(|s| s.len()), Some(2048));
        let e = read_text(&big, 1024 * 1024).ok().map(|s| s.len());
        assert_eq!(e, Some(2048));
        assert_eq!(human(16 * 1024 * 1024), "16 MiB");
    }
}
