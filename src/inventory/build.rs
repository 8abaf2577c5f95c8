//! Building the inventory model from the YAML tree, following Ansible's `yaml` inventory
//! plugin (`_parse_group`), `InventoryData.reconcile_inventory` and the variable merge of
//! `VariableManager.get_vars` (`all` vars, then `get_group_vars` sorted by depth, priority,
//! name, then host vars; `hash_behaviour=replace`).

use super::yaml::{self, Entry, Kind, Loc, Node};
use super::{Group, Host, Inventory, InventoryError, at};

use indexmap::IndexMap;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub(super) const ALL: &str = "all";
pub(super) const UNGROUPED: &str = "ungrouped";

/// Accumulates groups and hosts over every inventory source, in Ansible's order, then
/// reconciles them and merges each host's variables ([`Builder::finish`]).
pub(super) struct Builder {
    /// Every file read, indexed by [`Loc::file`].
    pub(super) files: Vec<PathBuf>,
    pub(super) groups: IndexMap<String, Group>,
    pub(super) hosts: IndexMap<String, Host>,
}

impl Builder {
    /// An empty inventory: `all` with `ungrouped`.
    pub(super) fn new() -> Builder {
        let mut b = Builder {
            files: Vec::new(),
            groups: IndexMap::new(),
            hosts: IndexMap::new(),
        };
        b.add_group(ALL, Loc::default());
        b.add_group(UNGROUPED, Loc::default());
        if let Some(g) = b.groups.get_mut(ALL) {
            g.children.push(UNGROUPED.to_owned());
        }
        if let Some(g) = b.groups.get_mut(UNGROUPED) {
            g.parents.push(ALL.to_owned());
        }
        b
    }

    /// Registers a file read; its index goes into the [`Loc`]s of what it defines.
    pub(super) fn add_file(&mut self, path: &Path) -> usize {
        self.files.push(path.to_path_buf());
        self.files.len() - 1
    }

    /// Adds the groups and hosts of one YAML inventory file (already parsed, positions set).
    pub(super) fn yaml_source(
        &mut self,
        root: Option<Node>,
        file: usize,
    ) -> Result<(), InventoryError> {
        let first_line = Loc {
            line: 1,
            column: 1,
            file,
        };
        let root = root.ok_or_else(|| self.err(first_line, "inventory is empty".into()))?;
        let entries = match root.kind {
            Kind::Map(entries) => entries,
            _ => {
                return Err(self.err(
                    root.loc,
                    format!(
                        "an inventory must be a mapping of group names (got {})",
                        root.type_name()
                    ),
                ));
            }
        };
        if entries.is_empty() {
            return Err(self.err(root.loc, "inventory is empty".into()));
        }
        if let Some(p) = entries.iter().find(|e| e.key == "plugin") {
            let name = match &p.value.kind {
                Kind::Scalar { raw, .. } => super::clip(raw),
                _ => "?".to_owned(),
            };
            return Err(self.err(
                p.key_loc,
                format!(
                    "this is a configuration of the inventory plugin '{name}', which Ansible \
                     would run: tunnelfleet does not run inventory plugins; save what it \
                     produces (`ansible-inventory -i FILE --list -y > hosts.yaml`) and use that"
                ),
            ));
        }
        for entry in &entries {
            self.parse_group(entry)?;
        }
        Ok(())
    }

    /// Reconciles groups (`all`, `ungrouped`), computes depths and merges every host's vars.
    pub(super) fn finish(mut self) -> Result<Inventory, InventoryError> {
        self.reconcile()?;
        self.compute_depths();
        self.merge_vars();
        let path = self.files.first().cloned().unwrap_or_default();
        Ok(Inventory {
            path,
            files: self.files,
            groups: self.groups,
            hosts: self.hosts,
            vault: Default::default(),
            vaulted_files: Default::default(),
            warnings: Vec::new(),
        })
    }
}

/// One YAML inventory text as a whole inventory (no group_vars/host_vars).
pub(super) fn build(text: &str, path: &Path) -> Result<Inventory, InventoryError> {
    let mut b = Builder::new();
    let file = b.add_file(path);
    let root = parse_yaml(text, file).map_err(|e| b.err(e.loc, e.message))?;
    b.yaml_source(root, file)?;
    b.finish()
}

/// One INI inventory text as a whole inventory (no group_vars/host_vars).
pub(super) fn build_ini(text: &str, path: &Path) -> Result<Inventory, InventoryError> {
    let mut b = Builder::new();
    let file = b.add_file(path);
    super::ini::ini_source(&mut b, text, file)?;
    b.finish()
}

/// Parses YAML text and sets `file` on every position.
pub(super) fn parse_yaml(text: &str, file: usize) -> Result<Option<Node>, yaml::YamlError> {
    let mut root = yaml::parse(text).map_err(|mut e| {
        e.loc.file = file;
        e
    })?;
    if let Some(r) = root.as_mut() {
        yaml::set_file(r, file);
    }
    Ok(root)
}

fn describe_section(section: &str) -> &'static str {
    match section {
        "hosts" => "a mapping of host names",
        "children" => "a mapping of group names",
        _ => "a mapping of variable names",
    }
}

impl Builder {
    pub(super) fn err(&self, loc: Loc, message: String) -> InventoryError {
        at(&self.file_path(loc.file), loc, message)
    }

    fn file_path(&self, file: usize) -> PathBuf {
        self.files.get(file).cloned().unwrap_or_default()
    }

    pub(super) fn add_group(&mut self, name: &str, loc: Loc) {
        if !self.groups.contains_key(name) {
            self.groups.insert(
                name.to_owned(),
                Group {
                    name: name.to_owned(),
                    vars: IndexMap::new(),
                    children: Vec::new(),
                    hosts: Vec::new(),
                    parents: Vec::new(),
                    depth: 0,
                    priority: 1,
                    loc,
                    var_locs: HashMap::new(),
                    plugin_vars: IndexMap::new(),
                    plugin_locs: HashMap::new(),
                },
            );
        }
    }

    /// Ancestors of `group`, including itself.
    fn ancestors_and_self(&self, group: &str) -> HashSet<String> {
        let mut seen = HashSet::new();
        let mut todo = vec![group.to_owned()];
        while let Some(g) = todo.pop() {
            if seen.insert(g.clone())
                && let Some(group) = self.groups.get(&g)
            {
                todo.extend(group.parents.iter().cloned());
            }
        }
        seen
    }

    pub(super) fn add_child(
        &mut self,
        parent: &str,
        child: &str,
        loc: Loc,
    ) -> Result<(), InventoryError> {
        if self.ancestors_and_self(parent).contains(child) {
            return Err(self.err(
                loc,
                format!("group '{child}' as a child of '{parent}' makes a cycle of groups"),
            ));
        }
        if let Some(p) = self.groups.get_mut(parent)
            && !p.children.iter().any(|c| c == child)
        {
            p.children.push(child.to_owned());
        }
        if let Some(c) = self.groups.get_mut(child)
            && !c.parents.iter().any(|p| p == parent)
        {
            c.parents.push(parent.to_owned());
        }
        Ok(())
    }

    /// `_parse_group`: a group is a mapping (or null) with `vars`, `children`, `hosts`; the
    /// same group may appear several times, each occurrence adds to it.
    fn parse_group(&mut self, entry: &Entry) -> Result<String, InventoryError> {
        let name = entry.key.clone();
        let node = &entry.value;
        if name.is_empty() {
            return Err(self.err(entry.key_loc, "empty group name".into()));
        }
        if entry.key_type != "a string" {
            return Err(self.err(
                entry.key_loc,
                format!(
                    "group name {} is {}, not a string (Ansible refuses it): quote it",
                    super::clip(&name),
                    entry.key_type
                ),
            ));
        }
        let sections = match &node.kind {
            Kind::Map(sections) => sections.as_slice(),
            _ if node.is_null() => &[],
            _ => {
                return Err(self.err(
                    node.loc,
                    format!(
                        "group '{name}' must be a mapping with 'hosts', 'children' or 'vars' (got {})",
                        node.type_name()
                    ),
                ));
            }
        };
        self.add_group(&name, entry.key_loc);
        for section in sections {
            let key = section.key.as_str();
            if !matches!(key, "hosts" | "children" | "vars") {
                return Err(self.err(
                    section.key_loc,
                    format!(
                        "group '{name}': unexpected key '{key}' (a group has 'hosts', 'children' and 'vars')"
                    ),
                ));
            }
            let items: Vec<Entry> = match &section.value.kind {
                Kind::Map(items) => items.clone(),
                // Ansible accepts a single name as a string: `hosts: web1`.
                Kind::Scalar {
                    raw,
                    value: Value::String(_),
                } => vec![Entry {
                    key: raw.clone(),
                    key_loc: section.value.loc,
                    key_type: "a string",
                    value: Node {
                        kind: Kind::Scalar {
                            raw: String::new(),
                            value: Value::Null,
                        },
                        loc: section.value.loc,
                    },
                }],
                _ if section.value.is_null() => Vec::new(),
                _ => {
                    return Err(self.err(
                        section.value.loc,
                        format!(
                            "group '{name}': '{key}' must be {} (got {})",
                            describe_section(key),
                            section.value.type_name()
                        ),
                    ));
                }
            };
            match key {
                "vars" => {
                    for item in &items {
                        self.set_group_var(&name, item)?;
                    }
                }
                "children" => {
                    for item in &items {
                        let child = self.parse_group(item)?;
                        self.add_child(&name, &child, item.key_loc)?;
                    }
                }
                _ => {
                    for item in &items {
                        self.parse_host_entry(&name, item)?;
                    }
                }
            }
        }
        Ok(name)
    }

    fn set_group_var(&mut self, group: &str, item: &Entry) -> Result<(), InventoryError> {
        self.set_group_value(group, &item.key, item.value.to_json(), item.value.loc)
    }

    /// `InventoryData.set_variable` on a group (a later value replaces an earlier one).
    pub(super) fn set_group_value(
        &mut self,
        group: &str,
        key: &str,
        value: Value,
        loc: Loc,
    ) -> Result<(), InventoryError> {
        if key == "ansible_group_priority" {
            let priority = match &value {
                Value::Number(n) if n.is_i64() => n.as_i64(),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            }
            .ok_or_else(|| {
                self.err(
                    loc,
                    format!(
                        "group '{group}': ansible_group_priority must be an integer (got {})",
                        yaml::json_type_name(&value)
                    ),
                )
            })?;
            if let Some(g) = self.groups.get_mut(group) {
                g.priority = priority;
            }
            return Ok(());
        }
        if let Some(g) = self.groups.get_mut(group) {
            g.vars.insert(key.to_owned(), value);
            g.var_locs.insert(key.to_owned(), loc);
        }
        Ok(())
    }

    fn parse_host_entry(&mut self, group: &str, item: &Entry) -> Result<(), InventoryError> {
        let vars: &[Entry] = match &item.value.kind {
            Kind::Map(vars) => vars,
            _ if item.value.is_null() => &[],
            _ => {
                return Err(self.err(
                    item.value.loc,
                    format!(
                        "group '{group}': host '{}' must have a mapping of variables or nothing (got {})",
                        item.key,
                        item.value.type_name()
                    ),
                ));
            }
        };
        if item.key_type != "a string" {
            return Err(self.err(
                item.key_loc,
                format!(
                    "group '{group}': host name {} is {}, not a string (Ansible refuses it): \
                     quote it",
                    super::clip(&item.key),
                    item.key_type
                ),
            ));
        }
        let (names, port) = expand_host_pattern(&item.key)
            .map_err(|m| self.err(item.key_loc, format!("group '{group}': {m}")))?;
        for name in names {
            self.add_host(&name, group, port, item.key_loc);
            for var in vars {
                self.set_host_value(&name, &var.key, var.value.to_json(), var.value.loc);
            }
        }
        Ok(())
    }

    /// `InventoryData.set_variable` on a host (a later value replaces an earlier one).
    pub(super) fn set_host_value(&mut self, host: &str, key: &str, value: Value, loc: Loc) {
        if let Some(h) = self.hosts.get_mut(host) {
            h.own_vars.insert(key.to_owned(), value);
            h.own_locs.insert(key.to_owned(), loc);
        }
    }

    pub(super) fn add_host(&mut self, name: &str, group: &str, port: Option<u16>, loc: Loc) {
        if !self.hosts.contains_key(name) {
            let mut own_vars = IndexMap::new();
            let mut own_locs = HashMap::new();
            // Ansible sets the port of `host:port` only when it creates the host.
            if let Some(p) = port {
                own_vars.insert("ansible_port".to_owned(), Value::from(p));
                own_locs.insert("ansible_port".to_owned(), loc);
            }
            let index = self.hosts.len();
            self.hosts.insert(
                name.to_owned(),
                Host {
                    name: name.to_owned(),
                    vars: IndexMap::new(),
                    groups: Vec::new(),
                    index,
                    direct: Vec::new(),
                    own_vars,
                    own_locs,
                    plugin_vars: IndexMap::new(),
                    plugin_locs: HashMap::new(),
                    origins: HashMap::new(),
                    loc,
                },
            );
        }
        self.add_host_to_group(name, group);
    }

    fn add_host_to_group(&mut self, host: &str, group: &str) {
        if let Some(g) = self.groups.get_mut(group)
            && !g.hosts.iter().any(|h| h == host)
        {
            g.hosts.push(host.to_owned());
        }
        if let Some(h) = self.hosts.get_mut(host)
            && !h.direct.iter().any(|g| g == group)
        {
            h.direct.push(group.to_owned());
        }
    }

    /// Groups of a host: the groups it is listed in and all their ancestors.
    fn host_groups(&self, host: &Host) -> HashSet<String> {
        let mut all = HashSet::new();
        for g in &host.direct {
            all.extend(self.ancestors_and_self(g));
        }
        all
    }

    /// `reconcile_inventory`: parentless groups go under `all`; hosts only in `all` go to
    /// `ungrouped`, hosts in `ungrouped` and in another group leave it.
    fn reconcile(&mut self) -> Result<(), InventoryError> {
        let orphans: Vec<(String, Loc)> = self
            .groups
            .values()
            .filter(|g| g.name != ALL && g.parents.is_empty())
            .map(|g| (g.name.clone(), g.loc))
            .collect();
        for (name, loc) in orphans {
            self.add_child(ALL, &name, loc)?;
        }
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for name in names {
            let Some(host) = self.hosts.get(&name) else {
                continue;
            };
            let groups = self.host_groups(host);
            if groups.contains(UNGROUPED) {
                if groups.iter().any(|g| g != ALL && g != UNGROUPED) {
                    if let Some(g) = self.groups.get_mut(UNGROUPED) {
                        g.hosts.retain(|h| h != &name);
                    }
                    if let Some(h) = self.hosts.get_mut(&name) {
                        h.direct.retain(|g| g != UNGROUPED);
                    }
                }
            } else if groups.iter().all(|g| g == ALL) {
                self.add_host_to_group(&name, UNGROUPED);
            }
        }
        Ok(())
    }

    /// Depth of each group: the longest path from `all` (what Ansible's incremental
    /// `add_child_group` depth updates amount to).
    fn compute_depths(&mut self) {
        fn depth_of(
            name: &str,
            groups: &IndexMap<String, Group>,
            memo: &mut HashMap<String, usize>,
        ) -> usize {
            if let Some(d) = memo.get(name) {
                return *d;
            }
            let d = groups.get(name).map_or(0, |g| {
                g.parents
                    .iter()
                    .map(|p| depth_of(p, groups, memo) + 1)
                    .max()
                    .unwrap_or(0)
            });
            memo.insert(name.to_owned(), d);
            d
        }
        let mut memo = HashMap::new();
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in &names {
            let d = depth_of(name, &self.groups, &mut memo);
            if let Some(g) = self.groups.get_mut(name) {
                g.depth = d;
            }
        }
    }

    /// Merged vars of every host: `all` vars, then its other groups sorted by
    /// (depth, priority, name), then its own vars; a later value replaces an earlier one.
    fn merge_vars(&mut self) {
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for name in names {
            let Some(host) = self.hosts.get(&name) else {
                continue;
            };
            let member_of = self.host_groups(host);
            let mut groups: Vec<&Group> = member_of
                .iter()
                .filter(|g| g.as_str() != ALL)
                .filter_map(|g| self.groups.get(g))
                .collect();
            groups.sort_by(|a, b| {
                (a.depth, a.priority, &a.name).cmp(&(b.depth, b.priority, &b.name))
            });
            let mut vars: IndexMap<String, Value> = IndexMap::new();
            let mut origins: HashMap<String, Loc> = HashMap::new();
            // VariableManager.get_vars: all_inventory, groups_inventory,
            // all_plugins_inventory (group_vars/all), groups_plugins_inventory, then the
            // host's inventory vars and its host_vars.
            let all = self.groups.get(ALL);
            let layers = all
                .into_iter()
                .chain(groups.iter().copied())
                .map(|g| (&g.vars, &g.var_locs))
                .chain(
                    all.into_iter()
                        .chain(groups.iter().copied())
                        .map(|g| (&g.plugin_vars, &g.plugin_locs)),
                )
                .chain(std::iter::once((&host.own_vars, &host.own_locs)))
                .chain(std::iter::once((&host.plugin_vars, &host.plugin_locs)));
            for (layer, locs) in layers {
                for (k, v) in layer {
                    vars.insert(k.clone(), v.clone());
                    if let Some(l) = locs.get(k) {
                        origins.insert(k.clone(), *l);
                    }
                }
            }
            let mut group_names: Vec<String> = member_of.into_iter().filter(|g| g != ALL).collect();
            group_names.sort();
            if let Some(h) = self.hosts.get_mut(&name) {
                h.vars = vars;
                h.origins = origins;
                h.groups = group_names;
            }
        }
    }
}

/// Ansible's `_expand_hostpattern`: an optional `:port` suffix (`host:2222`,
/// `[2001:db8::1]:2222`) and `[a:b]` / `[a:b:step]` ranges (`web[01:10]`, `db-[a:c]`).
pub(super) fn expand_host_pattern(pattern: &str) -> Result<(Vec<String>, Option<u16>), String> {
    let (host, port) = split_port(pattern);
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("host '{pattern}': port '{p}' is not a port number"))?,
        ),
    };
    if host.contains('[') {
        let names = expand_range(host).map_err(|m| format!("host '{pattern}': {m}"))?;
        Ok((names, port))
    } else {
        Ok((vec![host.to_owned()], port))
    }
}

/// Splits `host:port` as Ansible's `parse_address` does; IPv6 addresses need brackets to
/// carry a port, so a bare IPv6 address is kept whole.
fn split_port(pattern: &str) -> (&str, Option<&str>) {
    if let Some(rest) = pattern.strip_prefix('[')
        && let Some(close) = rest.find(']')
        && let Some(port) = rest[close + 1..].strip_prefix(':')
        && !port.is_empty()
        && port.chars().all(|c| c.is_ascii_digit())
        && rest[..close].contains(':')
    {
        return (&rest[..close], Some(port));
    }
    // Outside brackets, exactly one ':' followed by digits.
    let mut depth = 0i32;
    let mut colons = Vec::new();
    for (i, c) in pattern.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => colons.push(i),
            _ => {}
        }
    }
    if let [i] = colons.as_slice() {
        let port = &pattern[i + 1..];
        if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) && *i > 0 {
            return (&pattern[..*i], Some(port));
        }
    }
    (pattern, None)
}

/// Ansible's `expand_hostname_range` for the first `[beg:end(:step)]`, recursively.
fn expand_range(name: &str) -> Result<Vec<String>, String> {
    let Some(open) = name.find('[') else {
        return Ok(vec![name.to_owned()]);
    };
    let close = name[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or("unclosed '[' in host range")?;
    let (head, range, tail) = (&name[..open], &name[open + 1..close], &name[close + 1..]);
    let bounds: Vec<&str> = range.split(':').collect();
    if bounds.len() != 2 && bounds.len() != 3 {
        return Err("host range must be begin:end or begin:end:step".into());
    }
    let beg = if bounds[0].is_empty() { "0" } else { bounds[0] };
    let end = bounds[1];
    if end.is_empty() {
        return Err("host range must specify end value".into());
    }
    let step: usize = match bounds.get(2) {
        Some(s) => s
            .parse()
            .ok()
            .filter(|s| *s > 0)
            .ok_or("host range step must be a positive integer")?,
        None => 1,
    };
    let width = if beg.len() > 1 && beg.starts_with('0') {
        if beg.len() != end.len() {
            return Err("host range must specify equal-length begin and end formats".into());
        }
        beg.len()
    } else {
        0
    };
    const LETTERS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let items: Vec<String> = match (LETTERS.find(beg), LETTERS.find(end)) {
        (Some(b), Some(e)) if beg.len() == 1 && end.len() == 1 => {
            if b > e {
                return Err("host range must have begin <= end".into());
            }
            LETTERS[b..=e]
                .chars()
                .step_by(step)
                .map(|c| c.to_string())
                .collect()
        }
        _ => {
            let b: u64 = beg
                .parse()
                .map_err(|_| format!("bad host range begin '{beg}'"))?;
            let e: u64 = end
                .parse()
                .map_err(|_| format!("bad host range end '{end}'"))?;
            (b..=e)
                .step_by(step)
                .map(|n| format!("{n:0width$}"))
                .collect()
        }
    };
    let mut out = Vec::new();
    for item in items {
        out.extend(expand_range(&format!("{head}{item}{tail}"))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert_eq!(
            expand_host_pattern("web[01:03]:2222"),
            Ok((
                vec!["web01".into(), "web02".into(), "web03".into()],
                Some(2222)
            ))
        );
        assert_eq!(
            expand_host_pattern("db-[a:c:2]"),
            Ok((vec!["db-a".into(), "db-c".into()], None))
        );
        assert_eq!(
            expand_host_pattern("2001:db8::1"),
            Ok((vec!["2001:db8::1".into()], None))
        );
        assert_eq!(
            expand_host_pattern("[2001:db8::1]:22"),
            Ok((vec!["2001:db8::1".into()], Some(22)))
        );
        assert_eq!(
            expand_host_pattern("10.0.0.1"),
            Ok((vec!["10.0.0.1".into()], None))
        );
        assert!(expand_host_pattern("web[1:3").is_err());
    }
}
