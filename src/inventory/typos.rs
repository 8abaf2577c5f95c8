//! Typos in variable names: a var that is not one tunnelfleet or Ansible reads, but is one
//! or two edits away from one (`deploy_dri`, `ansible_hots`), gets a warning with the name
//! it is probably meant to be. Printed before any host is touched.

use super::build::Builder;
use super::yaml::Loc;
use super::{at, clip};
use indexmap::IndexMap;
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// Every variable tunnelfleet itself reads (src/stack/settings.rs, src/inventory/connection.rs,
/// the vault token source). The one list: a unit test checks the readers against it.
pub const TUNNELFLEET_VARS: &[&str] = &[
    "tunnel_name",
    "tunnel_domain",
    "tunnel_routes",
    "tunnel_token",
    "tunnel_token_command",
    "tunnel_metrics_port",
    "deploy_dir",
    "proxy_jump",
    "become",
    "mcp_proxy_image",
    "cloudflared_image",
    "allow_unpinned_images",
    "upstream_allowed_ips",
    "log_level",
    "sample_server",
    "setup_tunnel_id",
    "setup_federation_rule_id",
    "setup_organization_id",
    "setup_workspace_id",
    "setup_identity_token_command",
    "setup_token_version",
    "setup_certificates",
];

/// `ansible_*` variables tunnelfleet reads, and common ones Ansible reads that an operator's
/// inventory may carry for its own Ansible runs (not warned about).
pub const ANSIBLE_VARS: &[&str] = &[
    "ansible_host",
    "ansible_port",
    "ansible_user",
    "ansible_ssh_private_key_file",
    "ansible_private_key_file",
    "ansible_become",
    "ansible_group_priority",
    "ansible_connection",
    "ansible_password",
    "ansible_ssh_pass",
    "ansible_ssh_host",
    "ansible_ssh_port",
    "ansible_ssh_user",
    "ansible_become_user",
    "ansible_become_method",
    "ansible_become_password",
    "ansible_become_pass",
    "ansible_become_exe",
    "ansible_become_flags",
    "ansible_python_interpreter",
    "ansible_shell_type",
    "ansible_shell_executable",
    "ansible_ssh_common_args",
    "ansible_ssh_extra_args",
    "ansible_sftp_extra_args",
    "ansible_scp_extra_args",
    "ansible_ssh_executable",
    "ansible_ssh_pipelining",
    "ansible_pipelining",
    "ansible_timeout",
    "ansible_network_os",
    "ansible_sudo_pass",
];

/// Optimal string alignment distance (a swap of two neighbours is one edit).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The known name `name` is probably a typo of, if any.
pub(super) fn suggestion(name: &str) -> Option<&'static str> {
    if name.chars().count() > 64 || TUNNELFLEET_VARS.contains(&name) || ANSIBLE_VARS.contains(&name)
    {
        return None;
    }
    let limit = if name.len() < 8 { 1 } else { 2 };
    TUNNELFLEET_VARS
        .iter()
        .chain(ANSIBLE_VARS)
        .map(|k| (distance(name, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

/// Warnings for every var name that looks like a typo, once per name and place.
pub(super) fn check(b: &Builder) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut visit = |vars: &IndexMap<String, Value>, locs: &HashMap<String, Loc>| {
        for k in vars.keys() {
            let Some(s) = suggestion(k) else { continue };
            let loc = locs.get(k).copied().unwrap_or_default();
            if !seen.insert((k.clone(), loc.file, loc.line)) {
                continue;
            }
            let path = b.files.get(loc.file).cloned().unwrap_or_default();
            out.push(
                at(
                    &path,
                    loc,
                    format!("unknown variable `{}`: did you mean `{s}`?", clip(k)),
                )
                .to_string(),
            );
        }
    };
    for g in b.groups.values() {
        visit(&g.vars, &g.var_locs);
        visit(&g.plugin_vars, &g.plugin_locs);
    }
    for h in b.hosts.values() {
        visit(&h.own_vars, &h.own_locs);
        visit(&h.plugin_vars, &h.plugin_locs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_the_name_they_miss() {
        assert_eq!(suggestion("deploy_dri"), Some("deploy_dir"));
        assert_eq!(suggestion("ansible_hots"), Some("ansible_host"));
        assert_eq!(suggestion("tunel_domain"), Some("tunnel_domain"));
        assert_eq!(suggestion("deploy_dir"), None);
        assert_eq!(suggestion("my_own_var"), None);
        assert_eq!(suggestion("ansible_python_interpreter"), None);
    }

    /// The one list covers every name the readers use.
    #[test]
    fn the_list_covers_the_readers() {
        let sources = [
            include_str!("../stack/settings.rs"),
            include_str!("connection.rs"),
        ];
        let mut missing = Vec::new();
        for src in sources {
            for (i, _) in src.match_indices("(\"") {
                let rest = &src[i + 2..];
                let Some(end) = rest.find('"') else { continue };
                let name = &rest[..end];
                let wanted = name.starts_with("tunnel_")
                    || name.starts_with("setup_")
                    || name.starts_with("ansible_");
                if wanted
                    && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && !TUNNELFLEET_VARS.contains(&name)
                    && !ANSIBLE_VARS.contains(&name)
                {
                    missing.push(name.to_owned());
                }
            }
        }
        assert!(missing.is_empty(), "not in the known names: {missing:?}");
    }
}
