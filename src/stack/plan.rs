//! Restart rules: from what a host should run and what it runs, the per-host plan of files to
//! write and services to restart.
//!
//! The rules follow the stack's documented behaviour:
//! - mcp-proxy does not reload its config: a config change restarts it;
//! - mcp-proxy polls `tls.cert_file`: a certificate change restarts nothing;
//! - cloudflared reads `TUNNEL_TOKEN` only when its container is created: a token change
//!   recreates it;
//! - cloudflared shares the proxy's network namespace, so whenever the proxy container is
//!   restarted or recreated the connector must be recreated too (it would otherwise keep a
//!   namespace with only loopback: docker/compose#6626, #10263);
//! - nothing changed: nothing written, nothing restarted.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{PROXY_CONFIG, Release};

/// State of one container of the stack, as `docker ps -a` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// The container exists and runs.
    Running,
    /// The container exists but is not running: exited, created, dead, or restarting (a
    /// crash loop: Docker's `restarting` is between two failed starts, never serving).
    Exited,
    /// There is no such container in the project.
    #[default]
    Missing,
}

/// A certificate file in `shared/data`. Declared in write order: `tls.crt` last, because the
/// proxy polls it and the key it pairs with must already be in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum CertFile {
    /// `ca.crt`, the CA registered in the Console.
    #[serde(rename = "ca.crt")]
    CaCrt,
    /// `tls.key`, the server key (the non-root proxy must be able to read it).
    #[serde(rename = "tls.key")]
    TlsKey,
    /// `tls.crt`, the server certificate the proxy polls.
    #[serde(rename = "tls.crt")]
    TlsCrt,
}

impl CertFile {
    /// Every certificate file, in write order.
    pub const ALL: [CertFile; 3] = [CertFile::CaCrt, CertFile::TlsKey, CertFile::TlsCrt];

    /// The file's name inside `shared/data`.
    pub fn file_name(self) -> &'static str {
        match self {
            CertFile::CaCrt => "ca.crt",
            CertFile::TlsKey => "tls.key",
            CertFile::TlsCrt => "tls.crt",
        }
    }
}

/// What a host should have: hashes only, never contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    /// Id of the desired release.
    pub release_id: String,
    /// SHA-256 of each release file, by path relative to the release directory.
    pub files: BTreeMap<String, String>,
    /// SHA-256 of the desired `shared/.env`.
    pub env_sha256: String,
    /// Fingerprint of the desired token (as the secrets layer computes it), when known.
    pub token_fingerprint: Option<String>,
    /// SHA-256 of each certificate file tunnelfleet manages on this host; files not listed are
    /// left alone (e.g. when the setup component writes them).
    pub certs: BTreeMap<CertFile, String>,
    /// Permission bits of each release file, by path relative to the release directory (a
    /// proxy config the container user cannot read crash-loops the proxy).
    pub file_modes: BTreeMap<String, u32>,
}

impl DesiredState {
    /// The desired state for `release` and an `.env` with hash `env_sha256`, with no
    /// certificates managed and no token fingerprint; set those fields as needed.
    pub fn new(release: &Release, env_sha256: String) -> DesiredState {
        DesiredState {
            release_id: release.id.clone(),
            files: release.file_hashes(),
            env_sha256,
            token_fingerprint: None,
            certs: BTreeMap::new(),
            file_modes: release
                .files
                .iter()
                .map(|f| (f.path.clone(), f.mode))
                .collect(),
        }
    }
}

/// What a host has, gathered in one round trip before planning.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// Release id `current` points to; `None` when the link is missing.
    pub current_release: Option<String>,
    /// SHA-256 of each managed file as seen through `current/`, `None` when missing. A path
    /// absent from the map counts as missing.
    pub files: BTreeMap<String, Option<String>>,
    /// SHA-256 of `shared/.env`, `None` when missing.
    pub env_sha256: Option<String>,
    /// SHA-256 of each certificate in `shared/data`, `None` when missing.
    pub certs: BTreeMap<CertFile, Option<String>>,
    /// State of the `mcp-proxy` container.
    pub proxy: ContainerState,
    /// State of the `cloudflared` container.
    pub connector: ContainerState,
    /// Fingerprint of the token the running connector was created with, when the host could
    /// tell. Lets a plan recreate a connector left on an old token after an interrupted run,
    /// when `.env` already holds the new one.
    pub connector_token_fingerprint: Option<String>,
    /// Containers of the old shared project name ([`super::LEGACY_PROJECT_NAME`]) run from
    /// this deploy dir: the host was deployed before project names derived from the tunnel.
    pub legacy_project: bool,
    /// Containers of this tunnel's project run from another directory than
    /// `<deploy_dir>/current` (their `com.docker.compose.project.working_dir` label).
    pub runs_elsewhere: bool,
    /// Mode, owner uid and group gid of the secret-bearing paths, by path relative to the
    /// deploy dir (`shared`, `shared/.env`, `shared/data`, `shared/data/tls.key`); a path
    /// absent from the map does not exist.
    pub perms: BTreeMap<String, (u32, u32, u32)>,
    /// The uid tunnelfleet's commands run as on the host (the owner its writes get).
    pub remote_uid: Option<u32>,
    /// A running connector is not in the running proxy's network namespace (the proxy was
    /// restarted by Docker's restart policy, or recreated alone): what tells it. It serves
    /// nothing (`localhost:8080` is nobody there) until it is recreated.
    pub connector_netns_lost: Option<String>,
}

/// The gid the stack's containers run as (`user: "65532:65532"` in the compose file): the
/// group that may read `tls.key`.
pub const PROXY_GID: u32 = 65532;

/// The modes (and group) tunnelfleet keeps on the secret-bearing paths: `shared/` 0700,
/// `.env` 0600, `shared/data/` 0755 (the proxy's bind mount needs to traverse it), and, when
/// tunnelfleet manages the certificates, `tls.key` 0640 in the proxy's group. Paths are
/// relative to the deploy dir.
pub fn wanted_perms(desired: &DesiredState) -> Vec<(&'static str, u32, Option<u32>)> {
    let mut v = vec![
        ("shared", 0o700, None),
        ("shared/.env", 0o600, None),
        ("shared/data", 0o755, None),
    ];
    if desired.certs.contains_key(&CertFile::TlsKey) {
        v.push(("shared/data/tls.key", 0o640, Some(PROXY_GID)));
    }
    v
}

/// A permission repair: `chown` then `chmod` of one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PermFix {
    /// Path relative to the deploy dir.
    pub path: String,
    /// Wanted permission bits.
    pub mode: u32,
    /// Wanted owner for `chown` (`uid` or `uid:gid`), when the host's uid is known.
    pub owner: Option<String>,
    /// What the host has: `mode uid:gid`.
    pub from: String,
}

/// A Compose operation on the host's stack. [`super::ComposeCli::action_command`] spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing runs yet: `up -d --remove-orphans` creates every service.
    UpAll,
    /// The proxy config changed (mcp-proxy does not reload it) or the proxy is not running:
    /// `up -d --no-deps --force-recreate mcp-proxy cloudflared`. Recreating rather than
    /// `restart` makes the container mount the release `current` now points to, and the
    /// connector is recreated with it to rejoin the proxy's new network namespace.
    RestartProxy,
    /// The token changed (cloudflared reads it only at creation), the running connector uses
    /// another token, or the connector is not running:
    /// `up -d --no-deps --force-recreate cloudflared`.
    RecreateConnector,
    /// A running connector lost the proxy's network namespace (the proxy restarted after a
    /// crash or was recreated alone): `up -d --no-deps --force-recreate cloudflared` puts it
    /// back into the proxy's namespace. Break-before-make costs nothing here: the old
    /// connector reaches no origin.
    RejoinConnector,
    /// The compose file changed: `up -d --force-recreate --remove-orphans` recreates every
    /// service, so the connector never outlives the proxy whose namespace it shares.
    UpChanged,
    /// The stack runs under the old shared project name: `down --remove-orphans` in that
    /// project (it publishes the same loopback ports), before the stack comes up under the
    /// tunnel's own project.
    MigrateProject,
}

impl Action {
    /// The arguments after `docker compose -p ... -f ...`.
    pub fn compose_args(self) -> &'static [&'static str] {
        match self {
            Action::UpAll => &["up", "-d", "--remove-orphans"],
            Action::RestartProxy => &[
                "up",
                "-d",
                "--no-deps",
                "--force-recreate",
                "mcp-proxy",
                "cloudflared",
            ],
            Action::RecreateConnector | Action::RejoinConnector => {
                &["up", "-d", "--no-deps", "--force-recreate", "cloudflared"]
            }
            Action::UpChanged => &["up", "-d", "--force-recreate", "--remove-orphans"],
            Action::MigrateProject => &["down", "--remove-orphans"],
        }
    }

    /// One human line: what restarts and why.
    pub fn describe(self) -> &'static str {
        match self {
            Action::UpAll => "start every service (nothing runs yet)",
            Action::RestartProxy => {
                "restart mcp-proxy and cloudflared (the proxy reads its config only at start; \
                 the connector shares its network namespace)"
            }
            Action::RecreateConnector => {
                "recreate cloudflared (it reads TUNNEL_TOKEN only when created)"
            }
            Action::RejoinConnector => {
                "recreate cloudflared (connector lost the proxy's network after the proxy \
                 restarted: it reaches no origin)"
            }
            Action::UpChanged => {
                "recreate every service (the compose file changed, or containers of this \
                 tunnel's project run from another directory)"
            }
            Action::MigrateProject => {
                "remove the containers of the old project `mcp-tunnel` (the stack moves to the \
                 tunnel's own project)"
            }
        }
    }
}

/// One release file whose content on the host differs from the desired one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    /// Path relative to the release directory.
    pub path: String,
    /// Hash on the host (through `current/`), `None` when missing.
    pub from: Option<String>,
    /// Desired hash.
    pub to: String,
}

/// What to do on one host, in apply order: certificates, `.env`, release files, switch
/// `current`, then the actions. Serializes for `--json` with hashes and fingerprints only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The desired release id.
    pub release_id: String,
    /// The release `current` points to on the host, if any.
    pub current_release: Option<String>,
    /// Write the release directory `releases/<release_id>/` (files and links).
    pub write_release: bool,
    /// Point `current` at `releases/<release_id>`.
    pub switch_current: bool,
    /// Release files that differ from what the host runs.
    pub changed_files: Vec<FileChange>,
    /// Write `shared/.env` (token or domain changed, or missing).
    pub write_env: bool,
    /// Fingerprint of the desired token, when known.
    pub token_fingerprint: Option<String>,
    /// Certificate files to write, in write order.
    pub write_certs: Vec<CertFile>,
    /// Compose operations, in order.
    pub actions: Vec<Action>,
    /// Modes and owners of secret-bearing paths to repair (after the writes).
    pub fix_perms: Vec<PermFix>,
}

impl Plan {
    /// Whether the host is up to date: nothing to write, nothing to restart.
    pub fn is_empty(&self) -> bool {
        !self.write_release
            && !self.switch_current
            && !self.write_env
            && self.write_certs.is_empty()
            && self.actions.is_empty()
            && self.fix_perms.is_empty()
    }

    /// Human lines for `--check`: files that would change and services that would restart.
    pub fn describe(&self) -> Vec<String> {
        if self.is_empty() {
            return vec!["up to date: nothing to write, nothing to restart".to_string()];
        }
        let mut lines = Vec::new();
        let current = self.current_release.as_deref().unwrap_or("none");
        lines.push(format!("release {} (current: {current})", self.release_id));
        for cert in &self.write_certs {
            let note = if *cert == CertFile::TlsCrt {
                " (no restart: mcp-proxy polls tls.cert_file)"
            } else {
                ""
            };
            lines.push(format!("write shared/data/{}{note}", cert.file_name()));
        }
        if self.write_env {
            let fp = match &self.token_fingerprint {
                Some(fp) => format!(", token {fp}"),
                None => String::new(),
            };
            lines.push(format!("write shared/.env (0600{fp})"));
        }
        if self.write_release {
            if self.changed_files.is_empty() {
                lines.push(format!(
                    "write releases/{}/ (same content as current)",
                    self.release_id
                ));
            }
            for change in &self.changed_files {
                let what = match &change.from {
                    Some(_) => "changed",
                    None => "new",
                };
                lines.push(format!(
                    "write releases/{}/{} ({what})",
                    self.release_id, change.path
                ));
            }
        }
        if self.switch_current {
            lines.push(format!("switch current -> releases/{}", self.release_id));
        }
        for f in &self.fix_perms {
            let owner = match &f.owner {
                Some(o) => format!(" owner {o}"),
                None => String::new(),
            };
            lines.push(format!(
                "fix permissions of {}: {:04o}{owner} (was {})",
                f.path, f.mode, f.from
            ));
        }
        for action in &self.actions {
            lines.push(action.describe().to_string());
        }
        lines
    }
}

/// Computes the plan that takes a host from `facts` to `desired`.
pub fn compute_plan(desired: &DesiredState, facts: &HostFacts) -> Plan {
    let changed_files: Vec<FileChange> = desired
        .files
        .iter()
        .filter_map(|(path, want)| {
            let have = facts.files.get(path).cloned().flatten();
            (have.as_deref() != Some(want.as_str())).then(|| FileChange {
                path: path.clone(),
                from: have,
                to: want.clone(),
            })
        })
        .collect();
    let switch_current = facts.current_release.as_deref() != Some(desired.release_id.as_str());
    let write_release = switch_current || !changed_files.is_empty();

    let config_changed = changed_files.iter().any(|c| c.path == PROXY_CONFIG);
    let compose_changed = changed_files.iter().any(|c| c.path != PROXY_CONFIG);

    let write_env = facts.env_sha256.as_deref() != Some(desired.env_sha256.as_str());
    let connector_on_old_token = match (
        &desired.token_fingerprint,
        &facts.connector_token_fingerprint,
    ) {
        (Some(want), Some(have)) => want != have,
        _ => false,
    };

    let write_certs: Vec<CertFile> = CertFile::ALL
        .into_iter()
        .filter(|cert| match desired.certs.get(cert) {
            Some(want) => {
                facts.certs.get(cert).cloned().flatten().as_deref() != Some(want.as_str())
            }
            None => false,
        })
        .collect();

    let mut actions = Vec::new();
    if facts.legacy_project {
        actions.push(Action::MigrateProject);
    }
    let none_here =
        facts.proxy == ContainerState::Missing && facts.connector == ContainerState::Missing;
    if none_here && !facts.runs_elsewhere {
        actions.push(Action::UpAll);
    } else if compose_changed || facts.runs_elsewhere {
        actions.push(Action::UpChanged);
    } else if config_changed || facts.proxy != ContainerState::Running {
        actions.push(Action::RestartProxy);
    } else if write_env || connector_on_old_token || facts.connector != ContainerState::Running {
        actions.push(Action::RecreateConnector);
    } else if facts.connector_netns_lost.is_some() {
        actions.push(Action::RejoinConnector);
    }
    // A certificate change alone adds no action: the proxy polls tls.cert_file.

    let fix_perms = wanted_perms(desired)
        .into_iter()
        .filter_map(|(path, mode, gid)| {
            let (m, u, g) = *facts.perms.get(path)?;
            let wrong_owner = facts.remote_uid.is_some_and(|me| me != u);
            let wrong_group = gid.is_some_and(|want| want != g);
            (m != mode || wrong_owner || wrong_group).then(|| PermFix {
                path: path.to_string(),
                mode,
                owner: facts.remote_uid.map(|me| match gid {
                    Some(gid) => format!("{me}:{gid}"),
                    None => me.to_string(),
                }),
                from: format!("{m:04o} {u}:{g}"),
            })
        })
        .collect::<Vec<PermFix>>();
    let mut fix_perms = fix_perms;
    if !write_release {
        // The files of the live release, seen through `current/` (a new release gets its
        // modes when written).
        for (path, &mode) in &desired.file_modes {
            let key = format!("current/{path}");
            if let Some(&(m, u, g)) = facts.perms.get(&key)
                && m != mode
            {
                fix_perms.push(PermFix {
                    path: key,
                    mode,
                    owner: None,
                    from: format!("{m:04o} {u}:{g}"),
                });
            }
        }
    }

    Plan {
        release_id: desired.release_id.clone(),
        current_release: facts.current_release.clone(),
        write_release,
        switch_current,
        changed_files,
        write_env,
        token_fingerprint: desired.token_fingerprint.clone(),
        write_certs,
        actions,
        fix_perms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::{COMPOSE_FILE, ReleaseFile, ReleaseSymlink};

    fn release(config: &str, compose: &str) -> Release {
        Release::new(
            vec![
                ReleaseFile {
                    path: COMPOSE_FILE.into(),
                    contents: compose.as_bytes().to_vec(),
                    mode: 0o644,
                },
                ReleaseFile {
                    path: PROXY_CONFIG.into(),
                    contents: config.as_bytes().to_vec(),
                    mode: 0o644,
                },
            ],
            vec![ReleaseSymlink {
                path: ".env".into(),
                target: "../../shared/.env".into(),
            }],
        )
    }

    fn desired(r: &Release) -> DesiredState {
        let mut d = DesiredState::new(r, "env1".into());
        d.certs.insert(CertFile::CaCrt, "ca1".into());
        d.certs.insert(CertFile::TlsKey, "key1".into());
        d.certs.insert(CertFile::TlsCrt, "crt1".into());
        d.token_fingerprint = Some("fp1".into());
        d
    }

    /// Facts of a host that runs exactly `r` with env1 and the certificates of `desired`.
    fn in_sync(r: &Release) -> HostFacts {
        HostFacts {
            current_release: Some(r.id.clone()),
            files: r
                .file_hashes()
                .into_iter()
                .map(|(p, h)| (p, Some(h)))
                .collect(),
            env_sha256: Some("env1".into()),
            certs: [
                (CertFile::CaCrt, "ca1"),
                (CertFile::TlsKey, "key1"),
                (CertFile::TlsCrt, "crt1"),
            ]
            .into_iter()
            .map(|(c, h)| (c, Some(h.to_string())))
            .collect(),
            proxy: ContainerState::Running,
            connector: ContainerState::Running,
            connector_token_fingerprint: Some("fp1".into()),
            legacy_project: false,
            runs_elsewhere: false,
            connector_netns_lost: None,
            perms: [
                ("shared", (0o700, 0, 0)),
                ("shared/.env", (0o600, 0, 0)),
                ("shared/data", (0o755, 0, 0)),
                ("shared/data/tls.key", (0o640, 0, PROXY_GID)),
            ]
            .into_iter()
            .map(|(p, v)| (p.to_string(), v))
            .collect(),
            remote_uid: Some(0),
        }
    }

    #[test]
    fn permission_drift_is_planned_and_repaired_alone() {
        let r = release("cfg", "compose");
        let d = desired(&r);
        assert!(compute_plan(&d, &in_sync(&r)).is_empty());
        let mut facts = in_sync(&r);
        facts.perms.insert("shared".into(), (0o755, 0, 0));
        facts.perms.insert("shared/.env".into(), (0o644, 0, 0));
        facts
            .perms
            .insert("shared/data/tls.key".into(), (0o644, 0, 0));
        let plan = compute_plan(&d, &facts);
        let fixed: Vec<(&str, u32, Option<&str>)> = plan
            .fix_perms
            .iter()
            .map(|f| (f.path.as_str(), f.mode, f.owner.as_deref()))
            .collect();
        assert_eq!(
            fixed,
            [
                ("shared", 0o700, Some("0")),
                ("shared/.env", 0o600, Some("0")),
                ("shared/data/tls.key", 0o640, Some("0:65532")),
            ]
        );
        // Nothing restarts for a mode fix.
        assert!(plan.actions.is_empty() && !plan.write_env && !plan.write_release);
        let before = plan.describe();
        // A release file the proxy cannot read is repaired through `current/`.
        let mut facts = in_sync(&r);
        facts
            .perms
            .insert(format!("current/{PROXY_CONFIG}"), (0o600, 0, 0));
        let plan = compute_plan(&d, &facts);
        assert_eq!(plan.fix_perms.len(), 1);
        assert_eq!(plan.fix_perms[0].path, format!("current/{PROXY_CONFIG}"));
        assert_eq!(plan.fix_perms[0].mode, 0o644);
        assert!(!plan.is_empty());
        assert!(
            before
                .iter()
                .any(|l| l == "fix permissions of shared/.env: 0600 owner 0 (was 0644 0:0)"),
            "{:?}",
            before
        );
        // Another owner is drift too; tls.key is left alone when the certificates are not
        // tunnelfleet's (setup component).
        let mut facts = in_sync(&r);
        facts.perms.insert("shared/.env".into(), (0o600, 1000, 0));
        facts
            .perms
            .insert("shared/data/tls.key".into(), (0o644, 0, 0));
        let mut d2 = d.clone();
        d2.certs.clear();
        let plan = compute_plan(&d2, &facts);
        assert_eq!(plan.fix_perms.len(), 1, "{:?}", plan.fix_perms);
        assert_eq!(plan.fix_perms[0].path, "shared/.env");
    }

    #[test]
    fn a_stack_under_the_old_project_name_moves_to_the_tunnels_project() {
        let r = release("cfg", "compose");
        let mut facts = in_sync(&r);
        facts.proxy = ContainerState::Missing;
        facts.connector = ContainerState::Missing;
        facts.legacy_project = true;
        let plan = compute_plan(&desired(&r), &facts);
        assert_eq!(plan.actions, vec![Action::MigrateProject, Action::UpAll]);
        assert!(!plan.write_release && !plan.write_env);
    }

    #[test]
    fn containers_running_from_another_directory_are_recreated() {
        let r = release("cfg", "compose");
        let mut facts = in_sync(&r);
        facts.runs_elsewhere = true;
        assert_eq!(
            compute_plan(&desired(&r), &facts).actions,
            vec![Action::UpChanged]
        );
        // Even when none of this tunnel's containers runs from here.
        facts.proxy = ContainerState::Missing;
        facts.connector = ContainerState::Missing;
        assert_eq!(
            compute_plan(&desired(&r), &facts).actions,
            vec![Action::UpChanged]
        );
    }

    #[test]
    fn nothing_changed_empty_plan() {
        let r = release("a", "c");
        let plan = compute_plan(&desired(&r), &in_sync(&r));
        assert!(plan.is_empty(), "{plan:?}");
        assert!(plan.changed_files.is_empty());
        assert_eq!(
            plan.describe(),
            ["up to date: nothing to write, nothing to restart"]
        );
    }

    #[test]
    fn first_deploy_up_all() {
        let r = release("a", "c");
        let plan = compute_plan(&desired(&r), &HostFacts::default());
        assert_eq!(plan.actions, [Action::UpAll]);
        assert!(plan.write_release && plan.switch_current && plan.write_env);
        assert_eq!(plan.write_certs, CertFile::ALL);
        assert_eq!(plan.changed_files.len(), 2);
        assert!(plan.changed_files.iter().all(|c| c.from.is_none()));
    }

    #[test]
    fn config_change_only_restarts_proxy() {
        let old = release("a", "c");
        let new = release("b", "c");
        let plan = compute_plan(&desired(&new), &in_sync(&old));
        assert_eq!(plan.actions, [Action::RestartProxy]);
        assert!(plan.write_release && plan.switch_current);
        assert!(!plan.write_env && plan.write_certs.is_empty());
        assert_eq!(
            plan.changed_files
                .iter()
                .map(|c| c.path.as_str())
                .collect::<Vec<_>>(),
            [PROXY_CONFIG]
        );
    }

    #[test]
    fn cert_change_no_action() {
        let r = release("a", "c");
        let mut facts = in_sync(&r);
        facts.certs.insert(CertFile::TlsCrt, Some("crt0".into()));
        let plan = compute_plan(&desired(&r), &facts);
        assert_eq!(plan.write_certs, [CertFile::TlsCrt]);
        assert!(plan.actions.is_empty());
        assert!(!plan.write_release && !plan.switch_current && !plan.write_env);
        assert!(plan.describe().contains(
            &"write shared/data/tls.crt (no restart: mcp-proxy polls tls.cert_file)".to_string()
        ));
    }

    #[test]
    fn unmanaged_certs_left_alone() {
        let r = release("a", "c");
        let mut d = desired(&r);
        d.certs.clear();
        let mut facts = in_sync(&r);
        facts.certs.clear();
        assert!(compute_plan(&d, &facts).is_empty());
    }

    #[test]
    fn token_change_recreates_connector() {
        let r = release("a", "c");
        let mut facts = in_sync(&r);
        facts.env_sha256 = Some("env0".into());
        facts.connector_token_fingerprint = Some("fp0".into());
        let plan = compute_plan(&desired(&r), &facts);
        assert_eq!(plan.actions, [Action::RecreateConnector]);
        assert!(plan.write_env && !plan.write_release && plan.write_certs.is_empty());
    }

    #[test]
    fn connector_left_on_old_token_is_recreated() {
        let r = release("a", "c");
        let mut facts = in_sync(&r);
        facts.connector_token_fingerprint = Some("fp0".into());
        let plan = compute_plan(&desired(&r), &facts);
        assert_eq!(plan.actions, [Action::RecreateConnector]);
        assert!(!plan.write_env);
    }

    #[test]
    fn connector_outside_the_proxys_namespace_is_rejoined_and_nothing_else_moves() {
        let r = release("a", "c");
        let mut facts = in_sync(&r);
        facts.connector_netns_lost = Some("c is in network namespace 9, the proxy p in 10".into());
        let plan = compute_plan(&desired(&r), &facts);
        assert_eq!(plan.actions, [Action::RejoinConnector]);
        assert!(!plan.write_env && !plan.write_release && !plan.switch_current);
        assert!(
            plan.describe()
                .iter()
                .any(|l| l.contains("connector lost the proxy's network after the proxy restarted")),
            "{:?}",
            plan.describe()
        );
        assert_eq!(
            Action::RejoinConnector.compose_args(),
            Action::RecreateConnector.compose_args()
        );
        // A proxy restart recreates the connector with it: no second action.
        facts.files.insert(PROXY_CONFIG.into(), Some("old".into()));
        assert_eq!(
            compute_plan(&desired(&r), &facts).actions,
            [Action::RestartProxy]
        );
    }

    #[test]
    fn compose_change_recreates_all() {
        let old = release("a", "c");
        let new = release("b", "d");
        let mut facts = in_sync(&old);
        facts.env_sha256 = Some("env0".into());
        let plan = compute_plan(&desired(&new), &facts);
        assert_eq!(plan.actions, [Action::UpChanged]);
    }

    #[test]
    fn config_and_token_change_one_action() {
        let old = release("a", "c");
        let new = release("b", "c");
        let mut facts = in_sync(&old);
        facts.env_sha256 = Some("env0".into());
        let plan = compute_plan(&desired(&new), &facts);
        // RestartProxy recreates the connector too, which then reads the new .env.
        assert_eq!(plan.actions, [Action::RestartProxy]);
        assert!(plan.write_env);
    }

    #[test]
    fn stopped_containers() {
        let r = release("a", "c");
        let mut facts = in_sync(&r);
        facts.proxy = ContainerState::Exited;
        assert_eq!(
            compute_plan(&desired(&r), &facts).actions,
            [Action::RestartProxy]
        );
        let mut facts = in_sync(&r);
        facts.connector = ContainerState::Missing;
        assert_eq!(
            compute_plan(&desired(&r), &facts).actions,
            [Action::RecreateConnector]
        );
    }

    #[test]
    fn drift_in_current_release_is_rewritten() {
        let r = release("a", "c");
        let mut facts = in_sync(&r);
        facts
            .files
            .insert(PROXY_CONFIG.into(), Some("edited".into()));
        let plan = compute_plan(&desired(&r), &facts);
        assert!(plan.write_release && !plan.switch_current);
        assert_eq!(plan.actions, [Action::RestartProxy]);
    }

    #[test]
    fn describe_and_json() {
        let old = release("a", "c");
        let new = release("b", "c");
        let mut facts = in_sync(&old);
        facts.env_sha256 = None;
        let plan = compute_plan(&desired(&new), &facts);
        assert_eq!(
            plan.describe(),
            [
                format!("release {} (current: {})", new.id, old.id),
                "write shared/.env (0600, token fp1)".to_string(),
                format!("write releases/{}/config/mcp-proxy.yaml (changed)", new.id),
                format!("switch current -> releases/{}", new.id),
                Action::RestartProxy.describe().to_string(),
            ]
        );
        let json = serde_json::to_value(&plan).unwrap_or_default();
        assert_eq!(json["actions"], serde_json::json!(["restart_proxy"]));
        assert_eq!(json["write_env"], serde_json::json!(true));
        assert_eq!(json["token_fingerprint"], serde_json::json!("fp1"));
        let d = desired(&new);
        let all = compute_plan(&d, &HostFacts::default());
        let json = serde_json::to_value(&all).unwrap_or_default();
        assert_eq!(
            json["write_certs"],
            serde_json::json!(["ca.crt", "tls.key", "tls.crt"])
        );
    }
}
