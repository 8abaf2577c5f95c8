//! The fleet inventory: an Ansible-style YAML inventory, read with Ansible's semantics.
//!
//! - [`Inventory::load`] reads the YAML shape of an Ansible inventory (`all:` with `hosts`,
//!   `children`, `vars`; other top-level groups; nested groups; `ungrouped`) and merges each
//!   host's variables with Ansible's precedence: `all` vars < group vars by depth (same depth:
//!   by `ansible_group_priority`, then name) < host vars.
//! - [`Inventory::select`] applies a `--limit` pattern (names, globs, `!`, `&`, `all`).
//! - [`Inventory::connection`] gives the SSH view of a host (address, port, user, key,
//!   become, ProxyJump chain, deploy dir), checking every value it uses.
//! - [`Inventory::ansible_list`] gives what `ansible-inventory -i FILE --list` prints.
//!
//! Errors point at `file:line:column` (see [`InventoryError`]).

mod build;
mod connection;
pub(crate) mod error;
mod ini;
mod limit;
mod list;
mod pyliteral;
mod source;
mod typos;
pub mod vault;
/// The located YAML reader, shared with the playbook loader (`crate::playbook`) so its
/// schema errors name `file:line:column` too. Crate-internal; nothing here is public API.
pub(crate) mod yaml;

pub use connection::{Connection, DEFAULT_DEPLOY_DIR, JumpHost, check_deploy_dir};
pub use error::InventoryError;
pub use list::VAULTED_FILE_VALUE;
pub use vault::VaultKeys;

use indexmap::IndexMap;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use yaml::Loc;

/// A parsed inventory: its groups and hosts in the order they first appear in the file.
#[derive(Debug, Clone)]
pub struct Inventory {
    path: PathBuf,
    /// Every file read (inventory files, then vars files), indexed by `Loc::file`.
    files: Vec<PathBuf>,
    groups: IndexMap<String, Group>,
    hosts: IndexMap<String, Host>,
    /// Decrypted inline vault values, by ciphertext.
    vault: HashMap<String, crate::secrets::Secret>,
    /// Files (indices into `files`) that were vault-encrypted as a whole.
    vaulted_files: HashSet<usize>,
    /// Warnings found while reading (typos in variable names), to print before any host is
    /// touched.
    warnings: Vec<String>,
}

/// A group of the inventory, with its own (unmerged) variables.
#[derive(Debug, Clone)]
pub struct Group {
    /// The group name, as written.
    pub name: String,
    /// Variables set on this group (`vars:`), in file order. `ansible_group_priority` is
    /// not a variable (Ansible consumes it): see [`Group::priority`].
    pub vars: IndexMap<String, Value>,
    /// Child groups, in the order they were added.
    pub children: Vec<String>,
    /// Hosts listed directly in this group (not via children), in the order they were added.
    pub hosts: Vec<String>,
    /// Parent groups (`all` for top-level groups).
    pub parents: Vec<String>,
    /// Length of the longest path from `all` (0 for `all`); deeper groups' vars win.
    pub depth: usize,
    /// `ansible_group_priority` (default 1): at equal depth, higher priority wins.
    pub priority: i64,
    loc: Loc,
    var_locs: HashMap<String, Loc>,
    /// Variables from `group_vars/` (Ansible's `host_group_vars` plugin), merged above every
    /// group's inventory vars.
    plugin_vars: IndexMap<String, Value>,
    plugin_locs: HashMap<String, Loc>,
}

/// A host with its merged variables.
#[derive(Debug, Clone)]
pub struct Host {
    /// The host name (inventory_hostname), exactly as written in the file.
    pub name: String,
    /// The host's variables after Ansible's precedence merge (all < groups < host).
    pub vars: IndexMap<String, Value>,
    /// The groups the host belongs to, directly or through child groups, sorted by name,
    /// without `all` (Ansible's `group_names`).
    pub groups: Vec<String>,
    /// Index in inventory order.
    index: usize,
    /// Groups the host is listed in directly, in the order it was added to them.
    direct: Vec<String>,
    /// Variables set on the host itself.
    own_vars: IndexMap<String, Value>,
    own_locs: HashMap<String, Loc>,
    /// Variables from `host_vars/`, the highest layer.
    plugin_vars: IndexMap<String, Value>,
    plugin_locs: HashMap<String, Loc>,
    /// Where the value of each merged variable was written.
    origins: HashMap<String, Loc>,
    loc: Loc,
}

impl Inventory {
    /// Reads the inventory at `path` (a file or a directory) with its group_vars/host_vars,
    /// without vault passwords (a vaulted value is then an error).
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        Inventory::load_sources(&[path.to_path_buf()], &VaultKeys::none())
    }

    /// Reads several inventory sources (`-i` options, in order) as Ansible does: files (YAML
    /// or INI) and directories of them, then `group_vars/` and `host_vars/` beside each
    /// source; vault values are decrypted with `keys`. Every problem is reported here.
    pub fn load_sources(paths: &[PathBuf], keys: &VaultKeys) -> Result<Inventory, InventoryError> {
        source::load(paths, keys)
    }

    /// The decrypted value of `host`'s variable `var` when that value is vaulted (an inline
    /// `!vault` value, or a string from a vault-encrypted vars file); `None` otherwise.
    pub fn vaulted_var(&self, host: &Host, var: &str) -> Option<crate::secrets::Secret> {
        let value = host.vars.get(var)?;
        if let Value::Object(m) = value
            && m.len() == 1
            && let Some(Value::String(ct)) = m.get(yaml::VAULT_KEY)
        {
            return self.vault.get(ct).cloned();
        }
        if self.var_is_from_vaulted_file(host, var)
            && let Value::String(s) = value
        {
            return Some(crate::secrets::Secret::new(s.clone()));
        }
        None
    }

    /// Whether the merged value of `var` for `host` comes from a vault-encrypted file.
    pub(crate) fn var_is_from_vaulted_file(&self, host: &Host, var: &str) -> bool {
        host.origins
            .get(var)
            .is_some_and(|l| self.vaulted_files.contains(&l.file))
    }

    /// Warnings found while reading: variable names that look like typos of known ones
    /// ("did you mean `deploy_dir`?"), with their place.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Every file read for this inventory, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Parses inventory YAML `text`; `path` names the file in error messages and is the base
    /// for relative key file paths.
    pub fn from_str(text: &str, path: &Path) -> Result<Inventory, InventoryError> {
        build::build(text, path)
    }

    /// Parses inventory INI `text` (Ansible's `ini` plugin format) as [`Inventory::from_str`]
    /// does YAML. Files are read through [`Inventory::load`], which picks the format.
    pub fn from_ini_str(text: &str, path: &Path) -> Result<Inventory, InventoryError> {
        build::build_ini(text, path)
    }

    /// The path the inventory was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All hosts, in inventory order (order of first appearance in the file).
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// The host named `name`, if any.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.get(name)
    }

    /// All groups, `all` and `ungrouped` first, then in order of first appearance.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// The group named `name`, if any.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    /// The hosts selected by a `--limit` pattern (all hosts when `None`), in inventory order.
    ///
    /// Patterns follow Ansible: separated by `,` (or `:`), each a host name, group name or
    /// glob (`web*`, `db?`, `[ab]*`), `all` or `*`, with `!` to exclude and `&` to intersect,
    /// and an optional `[i]` / `[i:j]` subscript on a group. Unlike Ansible, a name that is
    /// neither a host nor a group, a glob that matches nothing, and a pattern that selects no
    /// host are errors. `~regex` patterns are not supported.
    pub fn select(&self, limit: Option<&str>) -> Result<Vec<&Host>, InventoryError> {
        limit::select(self, limit)
    }

    /// What `ansible-inventory -i FILE --list` prints for this inventory, as JSON.
    pub fn ansible_list(&self) -> Value {
        list::ansible_list(self)
    }

    /// What `ansible-inventory --host NAME` prints for `host`, as JSON.
    pub fn ansible_host(&self, host: &Host) -> Value {
        Value::Object(list::host_vars(self, host))
    }

    /// The connection view of `host`, with its ProxyJump chain resolved; every variable used
    /// is checked, and an invalid one is reported with its place in the file.
    pub fn connection(&self, host: &Host) -> Result<Connection, InventoryError> {
        connection::connection(self, host)
    }

    /// The connections of several hosts; all invalid values are reported at once, so a run
    /// can refuse to start before touching any host.
    pub fn connections(&self, hosts: &[&Host]) -> Result<Vec<Connection>, InventoryError> {
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for host in hosts {
            match self.connection(host) {
                Ok(c) => ok.push(c),
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(ok),
            1 => Err(errors.remove(0)),
            _ => Err(InventoryError::Many(errors)),
        }
    }

    /// An error located at `loc` in this inventory's files.
    fn error_at(&self, loc: Loc, message: String) -> InventoryError {
        let path = self.files.get(loc.file).unwrap_or(&self.path);
        at(path, loc, message)
    }
}

/// At most this many characters of a value from the operator's files go into a message.
pub(crate) const CLIP_CHARS: usize = 80;

/// `text` cut for an error message (at most 80 characters are shown).
pub fn clip_for_message(text: &str) -> String {
    clip(text)
}

/// `text` for an error message: at most [`CLIP_CHARS`] characters, then `…(N chars)`.
pub(crate) fn clip(text: &str) -> String {
    let n = text.chars().count();
    if n <= CLIP_CHARS {
        text.to_owned()
    } else {
        let head: String = text.chars().take(CLIP_CHARS).collect();
        format!("{head}…({n} chars)")
    }
}

/// An error located at `loc` in `path`.
fn at(path: &Path, loc: Loc, message: String) -> InventoryError {
    InventoryError::At {
        file: path.to_path_buf(),
        line: loc.line,
        column: loc.column,
        message,
    }
}

impl Host {
    /// Where the merged value of variable `name` was written, as (line, column).
    pub fn var_location(&self, name: &str) -> Option<(usize, usize)> {
        self.origins.get(name).map(|l| (l.line, l.column))
    }
}

#[cfg(test)]
mod tests;
