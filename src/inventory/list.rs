//! `ansible-inventory --list` output (ansible-core 2.19, without `--export`).
//!
//! Shape, as `InventoryCLI.json_inventory` builds it: one entry per group reached from
//! `all` (depth first, each group once) with `hosts` (not for `all`) and `children`, each
//! key only when non-empty and the group only when it has one of them; `all.children`
//! starts with `ungrouped`. `_meta.hostvars` has every host's merged vars (group vars
//! included: without `--export` they are not shown on the groups), minus Ansible's internal
//! variable names, and only for hosts that have vars; `_meta.profile` is `inventory_legacy`.

use super::{Host, Inventory};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// What `--list` prints for a value that comes from a vault-encrypted file.
pub const VAULTED_FILE_VALUE: &str = "<vaulted: from a vault-encrypted file, not shown>";

/// `ansible.constants.INTERNAL_STATIC_VARS`: removed from `--list` output.
const INTERNAL_STATIC_VARS: &[&str] = &[
    "ansible_async_path",
    "ansible_collection_name",
    "ansible_config_file",
    "ansible_dependent_role_names",
    "ansible_diff_mode",
    "ansible_facts",
    "ansible_forks",
    "ansible_inventory_sources",
    "ansible_limit",
    "ansible_play_batch",
    "ansible_play_hosts",
    "ansible_play_hosts_all",
    "ansible_play_role_names",
    "ansible_playbook_python",
    "ansible_role_name",
    "ansible_role_names",
    "ansible_run_tags",
    "ansible_skip_tags",
    "ansible_verbosity",
    "ansible_version",
    "inventory_dir",
    "inventory_file",
    "inventory_hostname",
    "inventory_hostname_short",
    "groups",
    "group_names",
    "hostvars",
    "playbook_dir",
    "play_hosts",
    "role_name",
    "role_names",
    "role_path",
    "role_uuid",
];

pub(super) fn ansible_list(inv: &Inventory) -> Value {
    let mut out = Map::new();
    let mut seen = HashSet::new();
    format_group(inv, "all", &mut seen, &mut out);

    let mut hostvars = Map::new();
    for host in inv.hosts() {
        let vars = host_vars(inv, host);
        if !vars.is_empty() {
            hostvars.insert(host.name.clone(), Value::Object(vars));
        }
    }
    let mut meta = Map::new();
    meta.insert("hostvars".into(), Value::Object(hostvars));
    meta.insert("profile".into(), Value::from("inventory_legacy"));
    out.insert("_meta".into(), Value::Object(meta));
    Value::Object(out)
}

/// What `ansible-inventory --host HOST` prints: the host's merged vars, minus Ansible's
/// internal names; values from vault-encrypted files are not shown.
pub(super) fn host_vars(inv: &Inventory, host: &Host) -> Map<String, Value> {
    host.vars
        .iter()
        .filter(|(k, _)| !INTERNAL_STATIC_VARS.contains(&k.as_str()))
        .map(|(k, v)| {
            // ansible-inventory prints the decrypted values of a vault-encrypted vars
            // file; tunnelfleet keeps them secret (see docs/decisions.md).
            if inv.var_is_from_vaulted_file(host, k) {
                (k.clone(), Value::from(VAULTED_FILE_VALUE))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

fn format_group(
    inv: &Inventory,
    name: &str,
    seen: &mut HashSet<String>,
    out: &mut Map<String, Value>,
) {
    let Some(group) = inv.group(name) else {
        return;
    };
    let mut entry = Map::new();
    if name != "all" && !group.hosts.is_empty() {
        entry.insert(
            "hosts".into(),
            Value::from(
                group
                    .hosts
                    .iter()
                    .map(|h| Value::from(h.as_str()))
                    .collect::<Vec<_>>(),
            ),
        );
    }
    if !group.children.is_empty() {
        entry.insert(
            "children".into(),
            Value::from(
                group
                    .children
                    .iter()
                    .map(|c| Value::from(c.as_str()))
                    .collect::<Vec<_>>(),
            ),
        );
    }
    for child in &group.children {
        if seen.insert(child.clone()) {
            format_group(inv, child, seen, out);
        }
    }
    if !entry.is_empty() {
        out.insert(name.to_owned(), Value::Object(entry));
    }
}
