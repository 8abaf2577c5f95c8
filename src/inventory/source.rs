//! Reading inventory sources as Ansible's `InventoryManager` does: each `-i` in order; a
//! directory is every entry in it, sorted by name, recursively (skipping dot files,
//! `group_vars`, `host_vars`, `vars_plugins` and Ansible's ignored extensions); a file is
//! YAML (`.yaml`, `.yml`, `.json`, or no extension and a YAML mapping) or INI (anything
//! else). Then `group_vars/` and `host_vars/` beside each source (Ansible's
//! `host_group_vars` plugin), and vault decryption.
//!
//! What Ansible would read and tunnelfleet cannot is refused by name: inventory scripts
//! (starting with `#!`), TOML inventories, inventory plugin configurations.

use super::build::{Builder, parse_yaml};
use super::vault::{self, VaultKeys};
use super::yaml::{Kind, Loc, VAULT_KEY};
use super::{Inventory, InventoryError, at, clip};
use crate::fsread;
use crate::secrets::Secret;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// `INVENTORY_IGNORE_EXTS` of ansible-core 2.19.
const IGNORED_EXTS: &[&str] = &[
    ".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst", ".orig", ".cfg", ".retry",
];
/// `YAML_FILENAME_EXTENSIONS`.
const YAML_EXTS: &[&str] = &["yml", "yaml", "json"];
/// At most this many files are read from inventory directories and vars directories.
const MAX_FILES: usize = 10_000;

struct Loader<'a> {
    b: Builder,
    keys: &'a VaultKeys,
    /// Files whose whole content was vault-encrypted.
    vaulted_files: HashSet<usize>,
    files_read: usize,
}

fn read_err(path: &Path, what: &str, e: impl std::fmt::Display) -> InventoryError {
    InventoryError::File {
        path: path.to_path_buf(),
        message: format!("{what}: {e}"),
    }
}

/// Reads every source in `paths`, their group_vars/host_vars, and decrypts vault values.
pub(super) fn load(paths: &[PathBuf], keys: &VaultKeys) -> Result<Inventory, InventoryError> {
    if paths.is_empty() {
        return Err(read_err(
            Path::new("-i"),
            "no inventory given",
            "use -i FILE or -i DIR",
        ));
    }
    let mut l = Loader {
        b: Builder::new(),
        keys,
        vaulted_files: HashSet::new(),
        files_read: 0,
    };
    for p in paths {
        l.source(p)?;
    }
    // The vars plugin looks beside each source: the directory itself, or the file's.
    let mut basedirs: Vec<PathBuf> = Vec::new();
    for p in paths {
        let dir = if p.is_dir() {
            p.clone()
        } else {
            match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            }
        };
        if !basedirs.contains(&dir) {
            basedirs.push(dir);
        }
    }
    for dir in &basedirs {
        l.vars_dir(dir)?;
    }
    let secrets = l.decrypt_inline()?;
    let warnings = super::typos::check(&l.b);
    let Loader {
        b, vaulted_files, ..
    } = l;
    let mut inv = b.finish()?;
    inv.vault = secrets;
    inv.vaulted_files = vaulted_files;
    inv.warnings = warnings;
    vaulted_token(&mut inv)?;
    Ok(inv)
}

/// The variable that may hold the tunnel token (from vault only).
pub(super) const TOKEN_VAR: &str = "tunnel_token";

/// `tunnel_token` must come from vault: a plaintext token in an inventory file is a leak
/// (refused, with the way to encrypt it). A token from a vault-encrypted file is replaced in
/// the host's vars by a vault reference, like an inline vault value, so that only
/// [`crate::secrets::TokenSource::Vault`] ever turns it back into the token.
fn vaulted_token(inv: &mut Inventory) -> Result<(), InventoryError> {
    for (ct, secret) in &inv.vault {
        crate::secrets::remember_vaulted(ct, secret.clone());
    }
    let mut errors = Vec::new();
    let mut replace = Vec::new();
    for host in inv.hosts.values() {
        let Some(value) = host.vars.get(TOKEN_VAR) else {
            continue;
        };
        let loc = host.origins.get(TOKEN_VAR).copied().unwrap_or(host.loc);
        let is_ref = matches!(value, Value::Object(m) if m.len() == 1 && m.contains_key(VAULT_KEY));
        if is_ref || value.is_null() {
            continue;
        }
        if inv.vaulted_files.contains(&loc.file)
            && let Value::String(token) = value
        {
            let path = inv.files.get(loc.file).cloned().unwrap_or_default();
            let id = format!("vaulted file {}#{TOKEN_VAR}", path.display());
            crate::secrets::remember_vaulted(&id, Secret::new(token.clone()));
            replace.push((host.name.clone(), id));
            continue;
        }
        errors.push(inv.error_at(
            loc,
            format!(
                "host '{}': {TOKEN_VAR} is not vault-encrypted: a token in a plain inventory \
                 file is a leak (rotate it if this file was shared); encrypt it with \
                 `ansible-vault encrypt_string --stdin-name {TOKEN_VAR}`, or use \
                 tunnel_token_command",
                host.name
            ),
        ));
    }
    for (name, id) in replace {
        if let Some(h) = inv.hosts.get_mut(&name) {
            let mut m = serde_json::Map::new();
            m.insert(VAULT_KEY.to_owned(), Value::String(id));
            h.vars.insert(TOKEN_VAR.to_owned(), Value::Object(m));
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(InventoryError::Many(errors)),
    }
}

impl Loader<'_> {
    fn count(&mut self, path: &Path) -> Result<(), InventoryError> {
        self.files_read += 1;
        if self.files_read > MAX_FILES {
            return Err(read_err(
                path,
                "cannot read inventory",
                format!("more than {MAX_FILES} files in the inventory and vars directories"),
            ));
        }
        Ok(())
    }

    /// One inventory source: a file, or a directory of sources.
    fn source(&mut self, path: &Path) -> Result<(), InventoryError> {
        let meta = std::fs::metadata(path).map_err(|error| InventoryError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        if meta.is_dir() {
            let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(path)
                .map_err(|error| InventoryError::Read {
                    path: path.to_path_buf(),
                    error,
                })?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            names.sort();
            for name in names {
                let text = name.to_string_lossy();
                if text.starts_with('.')
                    || matches!(text.as_ref(), "host_vars" | "group_vars" | "vars_plugins")
                    || IGNORED_EXTS.iter().any(|x| text.ends_with(x))
                {
                    continue;
                }
                self.source(&path.join(&name))?;
            }
            return Ok(());
        }
        self.count(path)?;
        self.inventory_file(path)
    }

    fn inventory_file(&mut self, path: &Path) -> Result<(), InventoryError> {
        let refuse = |why: &str| read_err(path, "refused", why);
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if ext.as_deref() == Some("toml") {
            return Err(refuse(
                "TOML inventories are not supported: convert it to YAML or INI",
            ));
        }
        let text = fsread::read_text(path, fsread::INVENTORY_LIMIT)
            .map_err(|e| read_err(path, "cannot read inventory", e))?;
        // Ansible's script plugin runs a file that starts with `#!` (or is executable: one
        // without `#!` fails to exec, and Ansible goes on to read it as YAML or INI, as we do).
        if text.starts_with("#!") {
            return Err(refuse(
                "the file starts with '#!': Ansible would run it as an inventory script, \
                 which tunnelfleet does not; save its output (`ansible-inventory -i FILE \
                 --list -y > hosts.yaml`) and use that",
            ));
        }
        let file = self.b.add_file(path);
        let text = self.maybe_decrypt_file(path, file, text)?;
        let yaml_ext = ext.as_deref().is_some_and(|e| YAML_EXTS.contains(&e));
        if yaml_ext || ext.is_none() {
            match parse_yaml(&text, file) {
                Ok(Some(root)) if matches!(root.kind, Kind::Map(_)) || yaml_ext => {
                    return self.b.yaml_source(Some(root), file);
                }
                Ok(None) if yaml_ext => return self.b.yaml_source(None, file),
                Err(e) if yaml_ext => return Err(self.b.err(e.loc, e.message)),
                // No extension and not a YAML mapping: Ansible's ini plugin reads it next.
                _ => {}
            }
        }
        super::ini::ini_source(&mut self.b, &text, file)
    }

    /// A whole-file vault: decrypted, and its file marked so its values stay secret.
    fn maybe_decrypt_file(
        &mut self,
        path: &Path,
        file: usize,
        text: String,
    ) -> Result<String, InventoryError> {
        if !vault::is_vaulted(&text) {
            return Ok(text);
        }
        let plain = vault::decrypt(&text, self.keys).map_err(|e| read_err(path, "vault", e))?;
        self.vaulted_files.insert(file);
        String::from_utf8(plain.to_vec())
            .map_err(|_| read_err(path, "vault", "the decrypted file is not UTF-8 text"))
    }

    /// `group_vars/` and `host_vars/` in `dir`, for every group and host.
    fn vars_dir(&mut self, dir: &Path) -> Result<(), InventoryError> {
        for (sub, is_group) in [("group_vars", true), ("host_vars", false)] {
            let base = dir.join(sub);
            if !base.is_dir() {
                continue;
            }
            let names: Vec<String> = if is_group {
                self.b.groups.keys().cloned().collect()
            } else {
                self.b.hosts.keys().cloned().collect()
            };
            for name in names {
                if name.starts_with('/') || name.contains('\0') {
                    continue;
                }
                for f in find_vars_files(&base, &name) {
                    self.count(&f)?;
                    self.vars_file(&f, &name, is_group)?;
                }
            }
        }
        Ok(())
    }

    fn vars_file(&mut self, path: &Path, entity: &str, group: bool) -> Result<(), InventoryError> {
        let text = fsread::read_text(path, fsread::SMALL_FILE_LIMIT)
            .map_err(|e| read_err(path, "cannot read vars file", e))?;
        let file = self.b.add_file(path);
        let text = self.maybe_decrypt_file(path, file, text)?;
        let root = parse_yaml(&text, file).map_err(|e| self.b.err(e.loc, e.message))?;
        let Some(root) = root else {
            return Ok(());
        };
        let Kind::Map(entries) = root.kind else {
            if root.is_null() {
                return Ok(());
            }
            return Err(self.b.err(
                root.loc,
                format!(
                    "a vars file must be a mapping of variable names (got {})",
                    root.type_name()
                ),
            ));
        };
        for e in entries {
            let value = e.value.to_json();
            if group {
                if let Some(g) = self.b.groups.get_mut(entity) {
                    g.plugin_vars.insert(e.key.clone(), value);
                    g.plugin_locs.insert(e.key, e.value.loc);
                }
            } else if let Some(h) = self.b.hosts.get_mut(entity) {
                h.plugin_vars.insert(e.key.clone(), value);
                h.plugin_locs.insert(e.key, e.value.loc);
            }
        }
        Ok(())
    }

    /// Decrypts every inline `!vault` value, anywhere in any layer; a missing or wrong
    /// password is an error naming the file, line and variable.
    fn decrypt_inline(&self) -> Result<HashMap<String, Secret>, InventoryError> {
        let mut out: HashMap<String, Secret> = HashMap::new();
        let mut errors = Vec::new();
        let mut visit = |var: &str, value: &Value, loc: Option<&Loc>| {
            let mut found = Vec::new();
            collect_vaulted(value, &mut found);
            for ct in found {
                if out.contains_key(ct) {
                    continue;
                }
                match vault::decrypt(ct, self.keys) {
                    Ok(plain) => match String::from_utf8(plain.to_vec()) {
                        Ok(s) => {
                            out.insert(ct.to_owned(), Secret::new(s));
                        }
                        Err(_) => errors.push((
                            var.to_owned(),
                            loc.copied(),
                            "decrypts to non-UTF-8 bytes".to_owned(),
                        )),
                    },
                    Err(e) => errors.push((var.to_owned(), loc.copied(), e)),
                }
            }
        };
        for g in self.b.groups.values() {
            for (k, v) in &g.vars {
                visit(k, v, g.var_locs.get(k));
            }
            for (k, v) in &g.plugin_vars {
                visit(k, v, g.plugin_locs.get(k));
            }
        }
        for h in self.b.hosts.values() {
            for (k, v) in &h.own_vars {
                visit(k, v, h.own_locs.get(k));
            }
            for (k, v) in &h.plugin_vars {
                visit(k, v, h.plugin_locs.get(k));
            }
        }
        let mut errs: Vec<InventoryError> = errors
            .into_iter()
            .map(|(var, loc, e)| {
                let loc = loc.unwrap_or_default();
                let path = self.b.files.get(loc.file).cloned().unwrap_or_default();
                at(&path, loc, format!("{}: {e}", clip(&var)))
            })
            .collect();
        match errs.len() {
            0 => Ok(out),
            1 => Err(errs.remove(0)),
            _ => Err(InventoryError::Many(errs)),
        }
    }
}

/// The ciphertexts of the `{"__ansible_vault": ...}` values in `value`.
fn collect_vaulted<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::Object(m) => {
            if m.len() == 1
                && let Some(Value::String(ct)) = m.get(VAULT_KEY)
            {
                out.push(ct);
                return;
            }
            m.values().for_each(|v| collect_vaulted(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_vaulted(v, out)),
        _ => {}
    }
}

/// `DataLoader.find_vars_files(base, name)`: `name`, `name.yml`, `name.yaml`, `name.json`,
/// the first that exists; a directory gives its files (sorted, recursively, no dot files or
/// backups, only `.yml`/`.yaml`/`.json` or no extension).
fn find_vars_files(base: &Path, name: &str) -> Vec<PathBuf> {
    for ext in ["", ".yml", ".yaml", ".json"] {
        let p = base.join(format!("{name}{ext}"));
        if p.exists() {
            if p.is_dir() {
                let mut out = Vec::new();
                dir_vars_files(&p, &mut out);
                return out;
            }
            return vec![p];
        }
    }
    Vec::new()
}

fn dir_vars_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<std::ffi::OsString> =
        rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
    names.sort();
    for name in names {
        let text = name.to_string_lossy().into_owned();
        if text.starts_with('.') || text.ends_with('~') {
            continue;
        }
        let p = dir.join(&name);
        let ext = Path::new(&text)
            .extension()
            .map(|e| e.to_string_lossy().into_owned());
        if p.is_dir() && ext.is_none() {
            dir_vars_files(&p, out);
        } else if ext.is_none() || ext.as_deref().is_some_and(|e| YAML_EXTS.contains(&e)) {
            out.push(p);
        }
    }
}
