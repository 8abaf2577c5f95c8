//! Playbooks: YAML files (`playbooks/*.yaml`) that become rollout phases.
//!
//! ```yaml
//! name: deploy
//! description: Replicate the stack to every host, health-gated.
//! phases:
//!   - name: apply
//!     strategy: parallel            # or {canary: 1, then: 100%}, {batches: 2}, {batches: "25%"}
//!     max_unavailable: 0            # failed hosts tolerated before the rollout halts
//!     hosts: passed                 # or all (clean-up phases: run on every host, even after a halt)
//!     steps:
//!       - write_release             # a step type with no parameters
//!       - health_gate: {timeout: 60s}   # a step type with parameters
//! ```
//!
//! Step types come from a [`StepRegistry`] that the caller (a verb: deploy, rotate-token...)
//! fills with typed steps. Loading checks the whole file against the schema and the registry
//! and reports every problem at once, each as `file:line:column: message`, before anything
//! runs. See [`crate::rollout`] for what phases, strategies and `max_unavailable` mean.

mod load;
mod params;

pub use params::{Params, parse_duration};

use crate::rollout::{HostCtx, Phase, Step};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Builds a step from its parameters (`Value::Null` when the playbook gives none). The error
/// says what is wrong with the parameters; naming one as `parameter 'KEY'` (as [`Params`]
/// does) locates the error at that key in the playbook.
pub type StepFactory<C> =
    Arc<dyn Fn(&Value) -> Result<Arc<dyn Step<C>>, String> + Send + Sync + 'static>;

/// The step types a playbook may use, by name.
pub struct StepRegistry<C: HostCtx> {
    factories: BTreeMap<String, StepFactory<C>>,
}

impl<C: HostCtx> Default for StepRegistry<C> {
    fn default() -> Self {
        StepRegistry::new()
    }
}

impl<C: HostCtx> StepRegistry<C> {
    /// An empty registry.
    pub fn new() -> Self {
        StepRegistry {
            factories: BTreeMap::new(),
        }
    }

    /// Registers (or replaces) the step type `name`, built by `factory` from its parameters.
    pub fn register<F>(&mut self, name: &str, factory: F) -> &mut Self
    where
        F: Fn(&Value) -> Result<Arc<dyn Step<C>>, String> + Send + Sync + 'static,
    {
        self.factories.insert(name.to_owned(), Arc::new(factory));
        self
    }

    /// Whether `name` is a registered step type.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// The registered step type names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds step `name` from `params`; `None` if no such step type is registered.
    pub fn build(&self, name: &str, params: &Value) -> Option<Result<Arc<dyn Step<C>>, String>> {
        self.factories.get(name).map(|f| f(params))
    }
}

/// A loaded playbook: its name, description and phases, ready for [`crate::rollout::Engine`].
pub struct Playbook<C: HostCtx> {
    name: String,
    description: Option<String>,
    path: PathBuf,
    phases: Vec<Phase<C>>,
}

impl<C: HostCtx> fmt::Debug for Playbook<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Playbook")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("path", &self.path)
            .field("phases", &self.phases)
            .finish()
    }
}

impl<C: HostCtx> Playbook<C> {
    /// Reads and checks the playbook at `path`, building its steps from `registry`.
    /// Blocking file I/O (a small file, read once before a rollout).
    pub fn load(path: &Path, registry: &StepRegistry<C>) -> Result<Self, PlaybookError> {
        let text =
            crate::fsread::read_text(path, crate::fsread::SMALL_FILE_LIMIT).map_err(|error| {
                PlaybookError::Read {
                    path: path.to_owned(),
                    error,
                }
            })?;
        Playbook::from_str(&text, path, registry)
    }

    /// Checks the playbook text `text` (named `path` in error messages), building its steps
    /// from `registry`.
    pub fn from_str(
        text: &str,
        path: &Path,
        registry: &StepRegistry<C>,
    ) -> Result<Self, PlaybookError> {
        load::parse(text, path, registry)
    }

    /// The playbook's `name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The playbook's `description`, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The path it was loaded from (as given).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its phases, in order.
    pub fn phases(&self) -> &[Phase<C>] {
        &self.phases
    }

    /// Its phases, to hand to [`crate::rollout::Engine::run`] (callers may adjust them first,
    /// e.g. raise `max_unavailable` for `--allow-down`).
    pub fn into_phases(self) -> Vec<Phase<C>> {
        self.phases
    }
}

/// Why a playbook could not be loaded. Messages name `file:line:column`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlaybookError {
    /// The file could not be read.
    #[error("{}: cannot read playbook: {error}", path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// What went wrong (I/O, not a regular file, over the size limit).
        error: crate::fsread::ReadError,
    },
    /// A problem at a place in the playbook: YAML syntax, an unknown key or step, a value of
    /// the wrong type, bad step parameters.
    #[error("{}:{line}:{column}: {message}", file.display())]
    At {
        /// The playbook file as given.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// Several problems, in file order, one per line.
    #[error("{}", crate::inventory::error::ManyDisplay(.0))]
    Many(Vec<PlaybookError>),
}
