//! The inventory error type.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong reading an inventory, selecting hosts or building a host's
/// connection. Messages name the place to fix: `file:line:column` for the inventory, the
/// column in the pattern for `--limit`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// The inventory file could not be read.
    #[error("{}: cannot read inventory: {error}", path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// An inventory or vars file that cannot be used as a whole: not a regular file, too
    /// large, an inventory script, a format tunnelfleet does not read, a vault it cannot open.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// A problem at a place in the inventory file: YAML syntax, structure (a `hosts:` that is
    /// a list, a group that is not a mapping), or an invalid value for a known variable.
    #[error("{}:{line}:{column}: {message}", file.display())]
    At {
        /// The inventory file as given to [`crate::inventory::Inventory::load`].
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What is wrong, naming the group, host and variable concerned.
        message: String,
    },
    /// A problem in a `--limit` pattern; `column` is 1-based, in characters.
    #[error("--limit:1:{column}: {message}")]
    Limit {
        /// Where in the pattern the problem starts.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// Several problems, reported together (e.g. invalid connection vars on several hosts).
    #[error("{}", ManyDisplay(.0))]
    Many(Vec<InventoryError>),
}

/// Displays several errors, one per line (shared by the inventory's and the playbooks'
/// located errors).
pub(crate) struct ManyDisplay<'a, E>(pub(crate) &'a [E]);

impl<E: fmt::Display> fmt::Display for ManyDisplay<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
