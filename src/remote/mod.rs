//! remote
pub mod probe;
