//! Command-line verbs. One file per verb; no SSH calls here beyond handing work to lower layers.

/// Entry point used by the binary: parses arguments, runs the verb, returns the exit code.
pub fn main() -> i32 {
    0
}
