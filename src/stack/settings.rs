//! Fleet settings: what a host's merged inventory vars say about the stack it runs.
//!
//! One inventory group is one tunnel. Every host of a tunnel must agree on everything the
//! tunnel serves (domain, routes, images, upstream policy, token source): the same token and
//! certificates serve every replica. `deploy_dir` and `log_level` may differ per host.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use indexmap::IndexMap;
use serde_json::Value;

use super::StackError;

/// mcp-proxy image pinned by the stack's public quickstart.
pub const DEFAULT_MCP_PROXY_IMAGE: &str = "us-docker.pkg.dev/anthropic-public-registry/images/mcp-proxy@sha256:6b9adedbf2763143ec72f106ecaf0ce7fd3294e89b208f54a1db97a33d14c5ba";

/// cloudflared image pinned by the stack's public quickstart.
pub const DEFAULT_CLOUDFLARED_IMAGE: &str = "cloudflare/cloudflared@sha256:6b599ca3e974349ead3286d178da61d291961182ec3fe9c505e1dd02c8ac31b0";

/// Where the stack lives on a host unless `deploy_dir` says otherwise (the inventory's
/// default: one value).
pub use crate::inventory::DEFAULT_DEPLOY_DIR;

/// The route the sample server gets when `sample_server: true` (as in the guide).
pub const SAMPLE_ROUTE: &str = "echo";

/// Upstream of [`SAMPLE_ROUTE`]: the `hello-mcp` compose service on port 9000.
pub const SAMPLE_UPSTREAM: &str = "http://hello-mcp:9000";

/// First of the loopback ports a tunnel's connector metrics (`/ready`) are published on unless
/// `tunnel_metrics_port` says otherwise: cloudflared's own range, 20241-20245.
pub const DEFAULT_METRICS_PORT: u16 = 20241;

/// How many metrics ports a tunnel publishes: cloudflared takes the first free one of
/// 20241-20245 inside the proxy's network namespace, so five connectors can answer at once.
pub const METRICS_PORT_COUNT: u16 = 5;

/// The ports cloudflared's metrics server tries inside the container (fixed by cloudflared);
/// the host side of the mapping is the tunnel's own range.
pub const CONNECTOR_METRICS_PORTS: std::ops::RangeInclusive<u16> = 20241..=20245;

const LOG_LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];

/// The validated stack settings of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSettings {
    /// Inventory host name these settings were read for.
    pub host: String,
    /// Tunnel this host serves (`tunnel_name`, default: the domain). Hosts are grouped by it.
    pub tunnel_name: String,
    /// The tunnel's domain (`tunnel_domain`), lowercase DNS name.
    pub tunnel_domain: String,
    /// Routes subdomain -> `scheme://host:port`, sorted by subdomain. Includes the sample
    /// route when `sample_server` is on.
    pub routes: BTreeMap<String, String>,
    /// Absolute path of the stack on the host, without a trailing slash.
    pub deploy_dir: String,
    /// Controller-side command that prints the tunnel token, if configured.
    pub tunnel_token_command: Option<String>,
    /// The vaulted `tunnel_token` of the inventory, as the id its decrypted value is kept
    /// under (`crate::secrets::TokenSource::Vault`); never the token itself.
    pub tunnel_token_vault: Option<String>,
    /// mcp-proxy image reference (pinned by digest unless `allow_unpinned_images`).
    pub mcp_proxy_image: String,
    /// cloudflared image reference (pinned by digest unless `allow_unpinned_images`).
    pub cloudflared_image: String,
    /// Whether image references given by tag only were accepted.
    pub allow_unpinned_images: bool,
    /// `upstream.allowed_ips` for the proxy; `None` keeps the proxy's default (RFC1918).
    pub upstream_allowed_ips: Option<Vec<String>>,
    /// mcp-proxy `log_level`: one of debug, info, warn, error.
    pub log_level: String,
    /// Whether the guide's sample MCP server (`hello-mcp`) is deployed and routed.
    pub sample_server: bool,
    /// How many release directories a host keeps (`keep_releases`, default 5, at least 2): older
    /// ones are pruned after a successful rollout, never the current or the previous one.
    pub keep_releases: usize,
    /// First of the [`METRICS_PORT_COUNT`] host loopback ports the connectors' metrics are
    /// published on (`tunnel_metrics_port`, default [`DEFAULT_METRICS_PORT`]). Tunnels sharing
    /// a machine need disjoint ranges ([`check_shared_machines`]).
    pub metrics_port: u16,
    /// The setup component (programmatic access through Workload Identity Federation), when
    /// `setup_tunnel_id` is set.
    pub setup: Option<SetupSettings>,
}

/// The setup component's settings: the `setup_*` vars.
///
/// None of these is a secret. The OIDC identity token the component authenticates with is
/// one: it comes from the controller (`--identity-token-file`, `ANTHROPIC_IDENTITY_TOKEN`, or
/// the command in `setup_identity_token_command`) and travels on stdin only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupSettings {
    /// The tunnel's id (`setup_tunnel_id`, `tnl_...`): the component's TUNNEL_ID.
    pub tunnel_id: String,
    /// The federation rule (`setup_federation_rule_id`, `fdrl_...`).
    pub federation_rule_id: String,
    /// The organization id (`setup_organization_id`, a UUID).
    pub organization_id: String,
    /// The workspace (`setup_workspace_id`, `wrkspc_...`) when the rule is workspace-scoped.
    pub workspace_id: Option<String>,
    /// Controller-side command that prints a fresh OIDC identity token, if configured.
    pub identity_token_command: Option<String>,
    /// The token version the fleet was set up with (`setup_token_version`, default 1): a
    /// rotation asks for at least one more than this.
    pub token_version: u32,
    /// Whether the server certificate comes from the setup component (`setup_certificates`):
    /// then deploy leaves data/ca.crt, tls.crt and tls.key alone and renew-cert runs the
    /// component's `renew-cert` on each host.
    pub certificates: bool,
}

/// The hosts serving one tunnel, in inventory order, with identical tunnel-level settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelGroup {
    /// The tunnel's name (`tunnel_name`).
    pub name: String,
    /// The tunnel's domain, shared by every member.
    pub domain: String,
    /// Settings of every host of the tunnel, in the order they were given.
    pub members: Vec<StackSettings>,
}

/// Release directories a host keeps unless `keep_releases` says otherwise.
pub const DEFAULT_KEEP_RELEASES: usize = 5;

impl StackSettings {
    /// Reads and validates the stack settings from one host's merged vars.
    ///
    /// Vars that are absent or null take their defaults; vars unrelated to the stack are
    /// ignored. Errors name the host and the var and say what is expected.
    pub fn from_vars(
        host: &str,
        vars: &IndexMap<String, Value>,
    ) -> Result<StackSettings, StackError> {
        let r = Reader { host, vars };

        let tunnel_domain = r.string("tunnel_domain")?.ok_or_else(|| {
            r.err(
                "tunnel_domain",
                "required: the tunnel's domain as shown in the Console (a DNS name such as \
                     abc123.tunnels.example.com)"
                    .to_string(),
            )
        })?;
        check_dns_name(&tunnel_domain).map_err(|p| r.err("tunnel_domain", p))?;

        let tunnel_name = match r.string("tunnel_name")? {
            Some(name) => {
                check_tunnel_name(&name).map_err(|p| r.err("tunnel_name", p))?;
                name
            }
            None => tunnel_domain.clone(),
        };

        let sample_server = r.boolean("sample_server")?.unwrap_or(false);
        let routes = r.routes(sample_server)?;

        let deploy_dir = match r.string("deploy_dir")? {
            Some(dir) => {
                crate::inventory::check_deploy_dir(&dir).map_err(|p| r.err("deploy_dir", p))?
            }
            None => DEFAULT_DEPLOY_DIR.to_string(),
        };

        let tunnel_token_command = match r.string("tunnel_token_command")? {
            Some(cmd) if cmd.trim().is_empty() => {
                return Err(r.err(
                    "tunnel_token_command",
                    "is empty: give a command that prints the token, or remove the var".into(),
                ));
            }
            Some(cmd) if cmd.contains('\0') => {
                return Err(r.err("tunnel_token_command", "contains a NUL byte".into()));
            }
            other => other,
        };

        let tunnel_token_vault = match vars.get("tunnel_token") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) if m.len() == 1 => match m.get("__ansible_vault") {
                Some(Value::String(id)) => Some(id.clone()),
                _ => return Err(r.err("tunnel_token", "must be a vault-encrypted string".into())),
            },
            Some(_) => {
                return Err(r.err(
                    "tunnel_token",
                    "must be vault-encrypted (`ansible-vault encrypt_string --stdin-name \
                     tunnel_token`): a token in a plain inventory is a leak"
                        .into(),
                ));
            }
        };

        let allow_unpinned_images = r.boolean("allow_unpinned_images")?.unwrap_or(false);
        let mcp_proxy_image = r.image(
            "mcp_proxy_image",
            DEFAULT_MCP_PROXY_IMAGE,
            allow_unpinned_images,
        )?;
        let cloudflared_image = r.image(
            "cloudflared_image",
            DEFAULT_CLOUDFLARED_IMAGE,
            allow_unpinned_images,
        )?;

        let upstream_allowed_ips = r.cidrs("upstream_allowed_ips")?;
        let setup = r.setup()?;

        let log_level = match r.string("log_level")? {
            Some(level) if LOG_LEVELS.contains(&level.as_str()) => level,
            Some(level) => {
                return Err(r.err(
                    "log_level",
                    format!(
                        "`{}` is not a log level: expected one of debug, info, warn, error",
                        level.escape_debug()
                    ),
                ));
            }
            None => "info".to_string(),
        };

        let keep_releases = match r.get("keep_releases") {
            None => DEFAULT_KEEP_RELEASES,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(k) if (2..=1000).contains(&k) => k as usize,
                _ => {
                    return Err(r.err(
                        "keep_releases",
                        format!(
                            "{n} is out of range: keep at least 2 releases (the current and \
                             the previous, for rollback) and at most 1000"
                        ),
                    ));
                }
            },
            Some(other) => {
                return Err(r.err(
                    "keep_releases",
                    format!("expected a number of releases, got {}", type_name(other)),
                ));
            }
        };

        let metrics_port = match r.get("tunnel_metrics_port") {
            None => DEFAULT_METRICS_PORT,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(p) if (1024..=u64::from(u16::MAX - (METRICS_PORT_COUNT - 1))).contains(&p) => {
                    p as u16
                }
                _ => {
                    return Err(r.err(
                        "tunnel_metrics_port",
                        format!(
                            "{n} is out of range: the first of {METRICS_PORT_COUNT} loopback \
                             ports, from 1024 to {} (default {DEFAULT_METRICS_PORT})",
                            u16::MAX - (METRICS_PORT_COUNT - 1)
                        ),
                    ));
                }
            },
            Some(other) => {
                return Err(r.err(
                    "tunnel_metrics_port",
                    format!(
                        "expected a port number (the first of {METRICS_PORT_COUNT}, e.g. 20251), \
                         got {}",
                        type_name(other)
                    ),
                ));
            }
        };

        Ok(StackSettings {
            keep_releases,
            metrics_port,
            host: host.to_string(),
            tunnel_name,
            tunnel_domain,
            routes,
            deploy_dir,
            tunnel_token_command,
            tunnel_token_vault,
            mcp_proxy_image,
            cloudflared_image,
            allow_unpinned_images,
            upstream_allowed_ips,
            log_level,
            sample_server,
            setup,
        })
    }
}

impl StackSettings {
    /// The host loopback ports the connectors' metrics servers are published on.
    pub fn metrics_ports(&self) -> std::ops::RangeInclusive<u16> {
        self.metrics_port..=self.metrics_port + (METRICS_PORT_COUNT - 1)
    }
}

/// Refuses two tunnels on one machine that would clash: overlapping metrics port ranges (the
/// second proxy could not publish its ports, and a readiness probe could not tell whose
/// connector answers) or the same deploy directory.
///
/// `hosts` are `(endpoint, settings)` pairs, the endpoint being what identifies a machine:
/// the SSH address and port (and jump chain) the inventory resolves the host to. Hosts of the
/// same tunnel on one endpoint are not compared (they are the same stack).
pub fn check_shared_machines(hosts: &[(String, &StackSettings)]) -> Result<(), StackError> {
    // Hosts by machine, in inventory order: only hosts on one machine are compared.
    let mut by_endpoint: IndexMap<&str, Vec<&StackSettings>> = IndexMap::new();
    for (endpoint, s) in hosts {
        by_endpoint.entry(endpoint.as_str()).or_default().push(s);
    }
    for (endpoint, on_machine) in &by_endpoint {
        for (i, b) in on_machine.iter().enumerate() {
            for a in &on_machine[..i] {
                if a.tunnel_name == b.tunnel_name {
                    continue;
                }
                check_pair(endpoint, a, b, on_machine)?;
            }
        }
    }
    Ok(())
}

/// Two hosts of different tunnels on the machine `endpoint` (`on_machine`: every host there).
fn check_pair(
    endpoint: &str,
    a: &StackSettings,
    b: &StackSettings,
    on_machine: &[&StackSettings],
) -> Result<(), StackError> {
    let clash = |var: &str, what: String, hint: String| StackError::Var {
        host: b.host.clone(),
        var: var.to_string(),
        problem: format!(
            "tunnels {} ({}) and {} ({}) run on the same machine ({endpoint}) and {what}; {hint}",
            a.tunnel_name, a.host, b.tunnel_name, b.host
        ),
    };
    if a.deploy_dir == b.deploy_dir {
        return Err(clash(
            "deploy_dir",
            format!("both use deploy_dir {}", a.deploy_dir),
            format!(
                "give tunnel {} its own deploy_dir (e.g. /srv/{})",
                b.tunnel_name, b.tunnel_name
            ),
        ));
    }
    let (ra, rb) = (a.metrics_ports(), b.metrics_ports());
    if ra.start() <= rb.end() && rb.start() <= ra.end() {
        // A free range on this machine: after every range already used there.
        let used_end = on_machine
            .iter()
            .map(|s| *s.metrics_ports().end())
            .max()
            .unwrap_or(*rb.end());
        let free = used_end
            .checked_add(1)
            .filter(|p| p.checked_add(METRICS_PORT_COUNT - 1).is_some());
        let hint = match free {
            Some(p) => format!(
                "set `tunnel_metrics_port: {p}` in tunnel {}'s group vars (ports {p}-{}), or \
                 the first of any {METRICS_PORT_COUNT} free ports",
                b.tunnel_name,
                p + (METRICS_PORT_COUNT - 1)
            ),
            None => format!(
                "set `tunnel_metrics_port` in tunnel {}'s group vars to the first of \
                 {METRICS_PORT_COUNT} free ports",
                b.tunnel_name
            ),
        };
        return Err(clash(
            "tunnel_metrics_port",
            format!(
                "their connectors' metrics ports on the loopback overlap ({}-{} and {}-{})",
                ra.start(),
                ra.end(),
                rb.start(),
                rb.end()
            ),
            hint,
        ));
    }
    Ok(())
}

/// Groups hosts by tunnel (`tunnel_name`), in order of first appearance.
///
/// Refuses hosts of one tunnel that disagree on the domain, routes, images, upstream policy,
/// sample server or token command, and two tunnels that claim the same domain.
pub fn group_by_tunnel(hosts: &[StackSettings]) -> Result<Vec<TunnelGroup>, StackError> {
    let mut groups: IndexMap<&str, TunnelGroup> = IndexMap::new();
    for settings in hosts {
        match groups.get_mut(settings.tunnel_name.as_str()) {
            Some(group) => {
                if let Some(first) = group.members.first() {
                    check_same_tunnel(first, settings)?;
                }
                group.members.push(settings.clone());
            }
            None => {
                groups.insert(
                    settings.tunnel_name.as_str(),
                    TunnelGroup {
                        name: settings.tunnel_name.clone(),
                        domain: settings.tunnel_domain.clone(),
                        members: vec![settings.clone()],
                    },
                );
            }
        }
    }

    let mut by_domain: IndexMap<&str, &TunnelGroup> = IndexMap::new();
    for group in groups.values() {
        if let Some(other) = by_domain.get(group.domain.as_str()) {
            return Err(StackError::DomainClash {
                domain: group.domain.clone(),
                first: other.name.clone(),
                first_host: first_host(other),
                second: group.name.clone(),
                second_host: first_host(group),
            });
        }
        by_domain.insert(group.domain.as_str(), group);
    }
    Ok(groups.into_values().collect())
}

fn first_host(group: &TunnelGroup) -> String {
    group
        .members
        .first()
        .map(|m| m.host.clone())
        .unwrap_or_default()
}

fn check_same_tunnel(first: &StackSettings, other: &StackSettings) -> Result<(), StackError> {
    let disagree = |var: &str, detail: String| StackError::Disagree {
        tunnel: first.tunnel_name.clone(),
        var: var.to_string(),
        first_host: first.host.clone(),
        host: other.host.clone(),
        detail,
    };
    let both = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
        format!("{}: {:?}, {}: {:?}", first.host, a, other.host, b)
    };
    if first.tunnel_domain != other.tunnel_domain {
        return Err(disagree(
            "tunnel_domain",
            both(&first.tunnel_domain, &other.tunnel_domain),
        ));
    }
    if first.routes != other.routes {
        return Err(disagree(
            "tunnel_routes",
            both(&first.routes, &other.routes),
        ));
    }
    if first.mcp_proxy_image != other.mcp_proxy_image {
        return Err(disagree(
            "mcp_proxy_image",
            both(&first.mcp_proxy_image, &other.mcp_proxy_image),
        ));
    }
    if first.cloudflared_image != other.cloudflared_image {
        return Err(disagree(
            "cloudflared_image",
            both(&first.cloudflared_image, &other.cloudflared_image),
        ));
    }
    if first.metrics_port != other.metrics_port {
        // In the compose file, so in the release id: `rollback --to ID` needs one id per tunnel.
        return Err(disagree(
            "tunnel_metrics_port",
            both(&first.metrics_port, &other.metrics_port),
        ));
    }
    if first.upstream_allowed_ips != other.upstream_allowed_ips {
        return Err(disagree(
            "upstream_allowed_ips",
            both(&first.upstream_allowed_ips, &other.upstream_allowed_ips),
        ));
    }
    if first.sample_server != other.sample_server {
        return Err(disagree(
            "sample_server",
            both(&first.sample_server, &other.sample_server),
        ));
    }
    if first.tunnel_token_command != other.tunnel_token_command {
        // A command line may embed credentials: say that they differ, not what they are.
        return Err(disagree(
            "tunnel_token_command",
            "values differ".to_string(),
        ));
    }
    let setup_shown = |s: &Option<SetupSettings>| {
        s.as_ref().map(|s| {
            (
                s.tunnel_id.clone(),
                s.federation_rule_id.clone(),
                s.organization_id.clone(),
                s.workspace_id.clone(),
                s.token_version,
                s.certificates,
            )
        })
    };
    if setup_shown(&first.setup) != setup_shown(&other.setup) {
        return Err(disagree(
            "setup_*",
            both(&setup_shown(&first.setup), &setup_shown(&other.setup)),
        ));
    }
    if first.setup.as_ref().map(|s| &s.identity_token_command)
        != other.setup.as_ref().map(|s| &s.identity_token_command)
    {
        return Err(disagree(
            "setup_identity_token_command",
            "values differ".to_string(),
        ));
    }
    Ok(())
}

/// Reads typed vars of one host and builds errors that name it.
struct Reader<'a> {
    host: &'a str,
    vars: &'a IndexMap<String, Value>,
}

impl Reader<'_> {
    fn err(&self, var: &str, problem: String) -> StackError {
        StackError::Var {
            host: self.host.to_string(),
            var: var.to_string(),
            problem,
        }
    }

    /// The var's value; null counts as absent.
    fn get(&self, var: &str) -> Option<&Value> {
        self.vars.get(var).filter(|v| !v.is_null())
    }

    fn string(&self, var: &str) -> Result<Option<String>, StackError> {
        match self.get(var) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => {
                Err(self.err(var, format!("expected a string, got {}", type_name(other))))
            }
        }
    }

    fn boolean(&self, var: &str) -> Result<Option<bool>, StackError> {
        match self.get(var) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.err(
                var,
                format!("expected true or false, got {}", type_name(other)),
            )),
        }
    }

    fn image(&self, var: &str, default: &str, allow_unpinned: bool) -> Result<String, StackError> {
        match self.string(var)? {
            None => Ok(default.to_string()),
            Some(image) => {
                check_image(&image, allow_unpinned).map_err(|p| self.err(var, p))?;
                Ok(image)
            }
        }
    }

    /// The `setup_*` vars: none without `setup_tunnel_id` (then any other `setup_*` var is
    /// a mistake worth naming).
    fn setup(&self) -> Result<Option<SetupSettings>, StackError> {
        const OTHERS: [&str; 6] = [
            "setup_federation_rule_id",
            "setup_organization_id",
            "setup_workspace_id",
            "setup_identity_token_command",
            "setup_token_version",
            "setup_certificates",
        ];
        let Some(tunnel_id) = self.string("setup_tunnel_id")? else {
            if let Some(var) = OTHERS.iter().find(|v| self.get(v).is_some()) {
                return Err(self.err(
                    var,
                    "needs setup_tunnel_id (the tunnel's tnl_... id) to use the setup component"
                        .into(),
                ));
            }
            return Ok(None);
        };
        check_prefixed_id(&tunnel_id, "tnl_").map_err(|p| self.err("setup_tunnel_id", p))?;
        let required = |var: &str, what: &str| -> Result<String, StackError> {
            self.string(var)?
                .ok_or_else(|| self.err(var, format!("required with setup_tunnel_id: {what}")))
        };
        let federation_rule_id = required(
            "setup_federation_rule_id",
            "the federation rule id (fdrl_...) from the Console",
        )?;
        check_prefixed_id(&federation_rule_id, "fdrl_")
            .map_err(|p| self.err("setup_federation_rule_id", p))?;
        let organization_id = required(
            "setup_organization_id",
            "your organization id (a UUID) from the Console",
        )?;
        check_uuid(&organization_id).map_err(|p| self.err("setup_organization_id", p))?;
        let workspace_id = match self.string("setup_workspace_id")? {
            Some(w) => {
                check_prefixed_id(&w, "wrkspc_").map_err(|p| self.err("setup_workspace_id", p))?;
                Some(w)
            }
            None => None,
        };
        let identity_token_command = match self.string("setup_identity_token_command")? {
            Some(c) if c.trim().is_empty() || c.contains('\0') => {
                return Err(self.err(
                    "setup_identity_token_command",
                    "is empty or holds a NUL byte: give a command that prints a fresh OIDC token"
                        .into(),
                ));
            }
            other => other,
        };
        let token_version = match self.get("setup_token_version") {
            None => 1,
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|v| (1..=u64::from(u32::MAX)).contains(v))
                .map(|v| v as u32)
                .ok_or_else(|| {
                    self.err(
                        "setup_token_version",
                        format!("`{n}` is not a token version: a whole number from 1"),
                    )
                })?,
            Some(other) => {
                return Err(self.err(
                    "setup_token_version",
                    format!("expected a whole number, got {}", type_name(other)),
                ));
            }
        };
        let certificates = self.boolean("setup_certificates")?.unwrap_or(false);
        Ok(Some(SetupSettings {
            tunnel_id,
            federation_rule_id,
            organization_id,
            workspace_id,
            identity_token_command,
            token_version,
            certificates,
        }))
    }

    fn cidrs(&self, var: &str) -> Result<Option<Vec<String>>, StackError> {
        let items = match self.get(var) {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(self.err(
                    var,
                    format!(
                        "expected a list of CIDRs such as [\"10.0.0.0/8\"], got {}",
                        type_name(other)
                    ),
                ));
            }
        };
        if items.is_empty() {
            return Err(self.err(
                var,
                "is an empty list: remove it to keep the proxy's default (RFC1918 ranges), or \
                 list the CIDRs upstreams may resolve to"
                    .to_string(),
            ));
        }
        let mut cidrs = Vec::with_capacity(items.len());
        for item in items {
            let Value::String(s) = item else {
                return Err(self.err(
                    var,
                    format!(
                        "expected a list of CIDR strings, found {} in it",
                        type_name(item)
                    ),
                ));
            };
            check_cidr(s).map_err(|p| self.err(var, p))?;
            cidrs.push(s.clone());
        }
        Ok(Some(cidrs))
    }

    fn routes(&self, sample_server: bool) -> Result<BTreeMap<String, String>, StackError> {
        const VAR: &str = "tunnel_routes";
        let mut routes = BTreeMap::new();
        match self.get(VAR) {
            None => {}
            Some(Value::Object(map)) => {
                for (key, value) in map {
                    let var = format!("{VAR}.{key}");
                    check_route_key(key).map_err(|p| self.err(&var, p))?;
                    let upstream = match value {
                        Value::String(s) => s,
                        Value::Array(_) => {
                            return Err(self.err(
                                &var,
                                "expected an upstream scheme://host:port, got a list (mcp-proxy would \
                                 refuse it: \"cannot unmarshal !!seq into string\")"
                                    .to_string(),
                            ));
                        }
                        Value::Object(_) => {
                            return Err(self.err(
                                &var,
                                "expected an upstream scheme://host:port, got a nested map \
                                 (routes are flat; mcp-proxy would refuse it: \"cannot unmarshal \
                                 !!map into string\")"
                                    .to_string(),
                            ));
                        }
                        other => {
                            return Err(self.err(
                                &var,
                                format!(
                                    "expected an upstream scheme://host:port, got {}",
                                    type_name(other)
                                ),
                            ));
                        }
                    };
                    check_upstream(upstream).map_err(|p| self.err(&var, p))?;
                    routes.insert(key.clone(), upstream.clone());
                }
            }
            Some(Value::Array(_)) => {
                return Err(self.err(
                    VAR,
                    "expected a flat map subdomain -> scheme://host:port (e.g. {echo: \
                     \"http://hello-mcp:9000\"}), got a list; mcp-proxy itself refuses a list with \
                     \"cannot unmarshal !!seq into map[string]string\""
                        .to_string(),
                ));
            }
            Some(other) => {
                return Err(self.err(
                    VAR,
                    format!(
                        "expected a flat map subdomain -> scheme://host:port, got {}",
                        type_name(other)
                    ),
                ));
            }
        }

        if sample_server {
            match routes.get(SAMPLE_ROUTE) {
                None => {
                    routes.insert(SAMPLE_ROUTE.to_string(), SAMPLE_UPSTREAM.to_string());
                }
                Some(upstream) if upstream == SAMPLE_UPSTREAM => {}
                Some(_) => {
                    return Err(self.err(
                        &format!("{VAR}.{SAMPLE_ROUTE}"),
                        format!(
                            "sample_server: true routes {SAMPLE_ROUTE} to {SAMPLE_UPSTREAM}; \
                             remove this route or turn sample_server off"
                        ),
                    ));
                }
            }
        }
        if routes.is_empty() {
            return Err(self.err(
                VAR,
                "required: a flat map subdomain -> scheme://host:port with at least one route \
                 (or sample_server: true for the guide's sample server)"
                    .to_string(),
            ));
        }
        Ok(routes)
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

fn shown(s: &str) -> String {
    format!("`{}`", s.escape_debug())
}

/// A DNS label: 1-63 of `[a-z0-9-]`, not starting or ending with `-`.
fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("has an empty label");
    }
    if label.len() > 63 {
        return Err("has a label longer than 63 characters");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may only contain lowercase letters, digits, '-' and '.'");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("has a label that starts or ends with '-'");
    }
    Ok(())
}

fn check_dns_name(name: &str) -> Result<(), String> {
    let expected = "expected a lowercase DNS name such as abc123.tunnels.example.com";
    if name.len() > 253 {
        return Err(format!(
            "{} is longer than 253 characters; {expected}",
            shown(name)
        ));
    }
    if !name.contains('.') {
        return Err(format!(
            "{} is not a fully qualified name; {expected}",
            shown(name)
        ));
    }
    for label in name.split('.') {
        check_label(label).map_err(|p| format!("{} {p}; {expected}", shown(name)))?;
    }
    Ok(())
}

fn check_tunnel_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a valid name: expected 1-64 of letters, digits, '.', '_', '-', starting \
             with a letter or digit",
            shown(name)
        ))
    }
}

fn check_route_key(key: &str) -> Result<(), String> {
    check_label(key).map_err(|p| {
        format!(
            "subdomain {} {p}; expected one DNS label such as `echo` (the proxy serves it as \
             <subdomain>.<tunnel_domain>, which the *.<tunnel_domain> certificate covers)",
            shown(key)
        )
    })
}

/// An upstream is exactly `scheme://host:port`: http or https, port mandatory, nothing else.
fn check_upstream(upstream: &str) -> Result<(), String> {
    let u = shown(upstream);
    let Some((scheme, rest)) = upstream.split_once("://") else {
        return Err(format!(
            "{u} is not scheme://host:port (e.g. http://wiki-mcp.internal:8080)"
        ));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "{u} has scheme `{}`: expected http or https",
            scheme.escape_debug()
        ));
    }
    if rest.contains('@') {
        return Err(format!(
            "{u} has userinfo (user@): expected exactly scheme://host:port"
        ));
    }
    if let Some(i) = rest.find(['/', '?', '#']) {
        let what = match rest.as_bytes().get(i) {
            Some(b'/') => "a path",
            Some(b'?') => "a query",
            _ => "a fragment",
        };
        return Err(format!(
            "{u} has {what} (`{}`): the upstream is exactly scheme://host:port, with no path, query \
             or fragment",
            rest[i..].escape_debug()
        ));
    }
    let missing_port = || format!("{u} has no port: the port is mandatory (e.g. {upstream}:8080)");
    let port = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((addr, after)) = bracketed.split_once(']') else {
            return Err(format!("{u} has an unclosed '[' around an IPv6 address"));
        };
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "{u}: `{}` is not an IPv6 address",
                addr.escape_debug()
            ));
        }
        match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => return Err(missing_port()),
            None => return Err(format!("{u}: expected :port after the IPv6 address")),
        }
    } else {
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(missing_port());
        };
        if host.contains(':') {
            return Err(format!(
                "{u}: an IPv6 address goes in brackets, e.g. http://[fd00::1]:8080"
            ));
        }
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(format!(
                "{u}: host `{}` is not a host name or IP address",
                host.escape_debug()
            ));
        }
        port
    };
    if port.is_empty() {
        return Err(missing_port());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(format!(
            "{u}: port `{}` is not a number from 1 to 65535",
            port.escape_debug()
        )),
    }
}

fn check_image(image: &str, allow_unpinned: bool) -> Result<(), String> {
    let i = shown(image);
    if image.is_empty()
        || !image.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@')
        })
    {
        return Err(format!(
            "{i} is not an image reference (expected NAME@sha256:<64 hex>)"
        ));
    }
    if let Some((name, digest)) = image.split_once("@sha256:") {
        let hex_ok = digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if name.is_empty() || !hex_ok {
            return Err(format!(
                "{i}: expected NAME@sha256:<64 lowercase hex digits>"
            ));
        }
        return Ok(());
    }
    if image.contains('@') {
        return Err(format!(
            "{i}: only sha256 digests are supported (NAME@sha256:<64 hex>)"
        ));
    }
    if allow_unpinned {
        return Ok(());
    }
    Err(format!(
        "{i} is not pinned by digest: expected NAME@sha256:<64 hex> (the stack's docs say to pin \
         images by digest), or set allow_unpinned_images: true to accept a tag"
    ))
}

fn check_cidr(cidr: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{} is not a CIDR such as 10.0.0.0/8 or fd00::/8",
            shown(cidr)
        )
    };
    let (addr, prefix) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!(
            "{}: prefix length {prefix} is over {max}",
            shown(cidr)
        ));
    }
    Ok(())
}

/// An API object id: `prefix` followed by letters, digits and `_`/`-` (they go into the
/// compose file and the component's environment verbatim).
fn check_prefixed_id(id: &str, prefix: &str) -> Result<(), String> {
    let rest = id
        .strip_prefix(prefix)
        .ok_or_else(|| format!("{} does not start with {prefix}", shown(id)))?;
    if rest.is_empty()
        || rest.len() > 100
        || !rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "{}: expected {prefix} followed by letters and digits",
            shown(id)
        ));
    }
    Ok(())
}

/// A UUID in its usual 8-4-4-4-12 hex spelling.
fn check_uuid(id: &str) -> Result<(), String> {
    let groups: Vec<&str> = id.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    if groups.len() != 5
        || groups
            .iter()
            .zip(lens)
            .any(|(g, n)| g.len() != n || !g.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(format!(
            "{} is not a UUID (e.g. 00000000-0000-0000-0000-000000000000)",
            shown(id)
        ));
    }
    Ok(())
}

/// Why deploy must not use `deploy_dir` without `--force`, if it must not: a system directory
/// (`/etc`, `/usr`, ... and below, or exactly `/root`, `/home`, `/srv`, ...), or, per the
/// host's facts (`dir_state`: `absent`, `empty`, `managed`, `foreign`), a non-empty directory
/// tunnelfleet did not create (no `.tunnelfleet/`, no `current`).
///
/// A directory that is already tunnelfleet's (`managed`: deployed before, with `--force` if it
/// needed it) is never refused, so later deploys and rotations need no `--force`.
pub fn deploy_dir_refusal(dir: &str, dir_state: Option<&str>) -> Option<String> {
    if dir_state == Some("managed") {
        return None;
    }
    const UNDER: [&str; 12] = [
        "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/dev",
        "/proc", "/sys",
    ];
    const EXACT: [&str; 11] = [
        "/", "/root", "/home", "/srv", "/opt", "/var", "/tmp", "/mnt", "/media", "/run", "/var/lib",
    ];
    let system = UNDER
        .iter()
        .any(|p| dir == *p || dir.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
        || EXACT.contains(&dir)
        || dir
            .strip_prefix("/home/")
            .is_some_and(|r| !r.is_empty() && !r.contains('/'));
    if system {
        return Some(format!(
            "deploy_dir {dir} is a system directory: the stack would share it with the system's \
             own files"
        ));
    }
    (dir_state == Some("foreign")).then(|| {
        format!(
            "deploy_dir {dir} holds files tunnelfleet did not put there (no .tunnelfleet/ \
             inside): the stack would mix with them"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn system_and_foreign_deploy_dirs_are_refused() {
        for d in [
            "/etc",
            "/etc/mcp",
            "/usr/local/x",
            "/root",
            "/home/ann",
            "/",
            "/srv",
            "/proc/1",
        ] {
            assert!(deploy_dir_refusal(d, Some("absent")).is_some(), "{d}");
            assert!(deploy_dir_refusal(d, None).is_some(), "{d}");
            assert_eq!(deploy_dir_refusal(d, Some("managed")), None, "{d}");
        }
        for d in [
            "/srv/mcp-tunnel",
            "/opt/t",
            "/home/ann/tunnel",
            "/root/tunnel",
            "/etcetera",
        ] {
            assert_eq!(deploy_dir_refusal(d, Some("empty")), None, "{d}");
            assert_eq!(deploy_dir_refusal(d, Some("managed")), None, "{d}");
            assert_eq!(deploy_dir_refusal(d, Some("absent")), None, "{d}");
            assert_eq!(deploy_dir_refusal(d, None), None, "{d}");
        }
        let why = deploy_dir_refusal("/opt/app", Some("foreign")).expect("refused");
        assert!(
            why.contains("/opt/app") && why.contains(".tunnelfleet/"),
            "{why}"
        );
    }

    fn vars(v: Value) -> IndexMap<String, Value> {
        match v {
            Value::Object(m) => m.into_iter().collect(),
            _ => IndexMap::new(),
        }
    }

    fn base() -> Value {
        json!({
            "tunnel_domain": "t1.tunnels.example.com",
            "tunnel_routes": {"wiki": "http://wiki-mcp.internal:8080"},
        })
    }

    fn with(key: &str, value: Value) -> IndexMap<String, Value> {
        let mut v = vars(base());
        v.insert(key.to_string(), value);
        v
    }

    fn err_of(v: &IndexMap<String, Value>) -> String {
        match StackSettings::from_vars("h1", v) {
            Ok(s) => panic!("expected an error, got {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults() {
        let s = StackSettings::from_vars("h1", &vars(base())).expect("valid");
        assert_eq!(s.host, "h1");
        assert_eq!(s.tunnel_name, "t1.tunnels.example.com");
        assert_eq!(s.deploy_dir, "/srv/mcp-tunnel");
        assert_eq!(s.mcp_proxy_image, DEFAULT_MCP_PROXY_IMAGE);
        assert_eq!(s.cloudflared_image, DEFAULT_CLOUDFLARED_IMAGE);
        assert_eq!(s.log_level, "info");
        assert!(!s.sample_server);
        assert_eq!(s.upstream_allowed_ips, None);
        assert_eq!(s.tunnel_token_command, None);
        assert_eq!(s.routes.len(), 1);
    }

    #[test]
    fn null_counts_as_absent() {
        let s = StackSettings::from_vars("h1", &with("tunnel_name", Value::Null)).expect("valid");
        assert_eq!(s.tunnel_name, "t1.tunnels.example.com");
    }

    #[test]
    fn missing_domain() {
        let v = vars(json!({"tunnel_routes": {"a": "http://x:1"}}));
        assert_eq!(
            err_of(&v),
            "h1: tunnel_domain: required: the tunnel's domain as shown in the Console (a DNS name \
             such as abc123.tunnels.example.com)"
        );
    }

    #[test]
    fn bad_domain() {
        assert_eq!(
            err_of(&with("tunnel_domain", json!("Example.com"))),
            "h1: tunnel_domain: `Example.com` may only contain lowercase letters, digits, '-' and \
             '.'; expected a lowercase DNS name such as abc123.tunnels.example.com"
        );
        assert!(
            err_of(&with("tunnel_domain", json!("localhost")))
                .contains("not a fully qualified name")
        );
        assert_eq!(
            err_of(&with("tunnel_domain", json!(42))),
            "h1: tunnel_domain: expected a string, got a number"
        );
    }

    #[test]
    fn routes_list_refused_with_proxy_message() {
        let e = err_of(&with(
            "tunnel_routes",
            json!([{"echo": "http://hello-mcp:9000"}]),
        ));
        assert_eq!(
            e,
            "h1: tunnel_routes: expected a flat map subdomain -> scheme://host:port (e.g. {echo: \
             \"http://hello-mcp:9000\"}), got a list; mcp-proxy itself refuses a list with \
             \"cannot unmarshal !!seq into map[string]string\""
        );
    }

    #[test]
    fn routes_nested_map_refused() {
        let e = err_of(&with(
            "tunnel_routes",
            json!({"echo": {"url": "http://x:1"}}),
        ));
        assert_eq!(
            e,
            "h1: tunnel_routes.echo: expected an upstream scheme://host:port, got a nested map \
             (routes are flat; mcp-proxy would refuse it: \"cannot unmarshal !!map into string\")"
        );
    }

    #[test]
    fn route_path_refused() {
        let e = err_of(&with(
            "tunnel_routes",
            json!({"wiki": "http://wiki:8080/mcp"}),
        ));
        assert_eq!(
            e,
            "h1: tunnel_routes.wiki: `http://wiki:8080/mcp` has a path (`/mcp`): the upstream is \
             exactly scheme://host:port, with no path, query or fragment"
        );
        assert!(
            err_of(&with("tunnel_routes", json!({"wiki": "http://wiki:8080/"})))
                .contains("has a path")
        );
        assert!(
            err_of(&with(
                "tunnel_routes",
                json!({"wiki": "http://wiki:8080?x=1"})
            ))
            .contains("has a query")
        );
    }

    #[test]
    fn route_missing_port_refused() {
        let e = err_of(&with("tunnel_routes", json!({"wiki": "http://wiki"})));
        assert_eq!(
            e,
            "h1: tunnel_routes.wiki: `http://wiki` has no port: the port is mandatory (e.g. \
             http://wiki:8080)"
        );
        assert!(
            err_of(&with("tunnel_routes", json!({"wiki": "http://wiki:"}))).contains("has no port")
        );
        assert!(
            err_of(&with("tunnel_routes", json!({"wiki": "http://[fd00::1]"})))
                .contains("has no port")
        );
        assert!(
            err_of(&with("tunnel_routes", json!({"wiki": "http://wiki:99999"})))
                .contains("not a number from 1 to 65535")
        );
    }

    #[test]
    fn route_scheme_userinfo_key() {
        assert_eq!(
            err_of(&with("tunnel_routes", json!({"wiki": "ftp://wiki:21"}))),
            "h1: tunnel_routes.wiki: `ftp://wiki:21` has scheme `ftp`: expected http or https"
        );
        assert!(
            err_of(&with(
                "tunnel_routes",
                json!({"wiki": "http://u:p@wiki:80"})
            ))
            .contains("userinfo")
        );
        assert!(
            err_of(&with("tunnel_routes", json!({"a.b": "http://wiki:80"})))
                .contains("expected one DNS label")
        );
        assert!(err_of(&with("tunnel_routes", json!({"wiki": 8080}))).contains("got a number"));
    }

    #[test]
    fn route_forms_accepted() {
        let v = with(
            "tunnel_routes",
            json!({"b": "https://10.0.0.5:443", "a": "http://[fd00::1]:8080", "c": "http://svc_1.local:9"}),
        );
        let s = StackSettings::from_vars("h1", &v).expect("valid");
        assert_eq!(s.routes.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    }

    #[test]
    fn no_routes_refused_unless_sample() {
        let v = vars(json!({"tunnel_domain": "t1.example.com"}));
        assert!(err_of(&v).starts_with("h1: tunnel_routes: required"));
        let mut v = v;
        v.insert("sample_server".into(), json!(true));
        let s = StackSettings::from_vars("h1", &v).expect("valid");
        assert_eq!(
            s.routes.get("echo").map(String::as_str),
            Some(SAMPLE_UPSTREAM)
        );
    }

    #[test]
    fn sample_route_conflict() {
        let mut v = with("tunnel_routes", json!({"echo": "http://other:1"}));
        v.insert("sample_server".into(), json!(true));
        assert_eq!(
            err_of(&v),
            "h1: tunnel_routes.echo: sample_server: true routes echo to http://hello-mcp:9000; \
             remove this route or turn sample_server off"
        );
    }

    #[test]
    fn unpinned_image_refused_unless_allowed() {
        let v = with("cloudflared_image", json!("cloudflare/cloudflared:latest"));
        assert_eq!(
            err_of(&v),
            "h1: cloudflared_image: `cloudflare/cloudflared:latest` is not pinned by digest: \
             expected NAME@sha256:<64 hex> (the stack's docs say to pin images by digest), or set \
             allow_unpinned_images: true to accept a tag"
        );
        let mut v = v;
        v.insert("allow_unpinned_images".into(), json!(true));
        let s = StackSettings::from_vars("h1", &v).expect("valid");
        assert_eq!(s.cloudflared_image, "cloudflare/cloudflared:latest");
        assert!(
            err_of(&with("mcp_proxy_image", json!("x@sha256:abc"))).contains("64 lowercase hex")
        );
    }

    #[test]
    fn other_vars() {
        assert_eq!(
            err_of(&with("log_level", json!("verbose"))),
            "h1: log_level: `verbose` is not a log level: expected one of debug, info, warn, error"
        );
        assert_eq!(
            err_of(&with("sample_server", json!("yes"))),
            "h1: sample_server: expected true or false, got a string"
        );
        assert!(err_of(&with("deploy_dir", json!("srv/x"))).contains("must be an absolute path"));
        assert!(err_of(&with("deploy_dir", json!("/srv/../x"))).contains("normalized"));
        assert!(err_of(&with("deploy_dir", json!("/srv/my dir"))).contains("expected a path"));
        let s = StackSettings::from_vars("h1", &with("deploy_dir", json!("/opt/tunnel/")))
            .expect("valid");
        assert_eq!(s.deploy_dir, "/opt/tunnel");
        assert!(err_of(&with("upstream_allowed_ips", json!([]))).contains("empty list"));
        assert_eq!(
            err_of(&with("upstream_allowed_ips", json!(["10.0.0.0/33"]))),
            "h1: upstream_allowed_ips: `10.0.0.0/33`: prefix length 33 is over 32"
        );
        assert!(
            err_of(&with("upstream_allowed_ips", json!("10.0.0.0/8"))).contains("got a string")
        );
        let s = StackSettings::from_vars(
            "h1",
            &with("upstream_allowed_ips", json!(["10.0.0.0/8", "fd00::/8"])),
        )
        .expect("valid");
        assert_eq!(
            s.upstream_allowed_ips,
            Some(vec!["10.0.0.0/8".to_string(), "fd00::/8".to_string()])
        );
        assert!(err_of(&with("tunnel_token_command", json!("  "))).contains("is empty"));
        assert!(err_of(&with("tunnel_name", json!("my tunnel"))).contains("not a valid name"));
    }

    fn setup_vars(extra: Value) -> IndexMap<String, Value> {
        let mut v = with("setup_tunnel_id", json!("tnl_01ab"));
        v.insert("setup_federation_rule_id".into(), json!("fdrl_02cd"));
        v.insert(
            "setup_organization_id".into(),
            json!("00000000-0000-4000-8000-000000000000"),
        );
        if let Value::Object(m) = extra {
            for (k, x) in m {
                v.insert(k, x);
            }
        }
        v
    }

    #[test]
    fn setup_vars_read_and_checked() {
        let s = StackSettings::from_vars("h1", &setup_vars(json!({})))
            .expect("valid")
            .setup
            .expect("setup on");
        assert_eq!(s.tunnel_id, "tnl_01ab");
        assert_eq!(s.token_version, 1);
        assert!(!s.certificates);
        assert_eq!(s.workspace_id, None);
        let s = StackSettings::from_vars(
            "h1",
            &setup_vars(json!({"setup_token_version": 4, "setup_certificates": true,
                "setup_workspace_id": "wrkspc_9"})),
        )
        .expect("valid")
        .setup
        .expect("setup on");
        assert_eq!(
            (s.token_version, s.certificates, s.workspace_id.as_deref()),
            (4, true, Some("wrkspc_9"))
        );
        assert_eq!(
            err_of(&with("setup_certificates", json!(true))),
            "h1: setup_certificates: needs setup_tunnel_id (the tunnel's tnl_... id) to use the setup component"
        );
        assert_eq!(
            err_of(&with("setup_tunnel_id", json!("tnl_01ab"))),
            "h1: setup_federation_rule_id: required with setup_tunnel_id: the federation rule id (fdrl_...) from the Console"
        );
        assert!(
            err_of(&setup_vars(json!({"setup_tunnel_id": "abc"})))
                .contains("does not start with tnl_")
        );
        assert!(
            err_of(&setup_vars(json!({"setup_organization_id": "org-1"}))).contains("not a UUID")
        );
        assert!(
            err_of(&setup_vars(json!({"setup_token_version": 0})))
                .contains("a whole number from 1")
        );
        assert!(
            err_of(&setup_vars(json!({"setup_tunnel_id": "tnl_a b"})))
                .contains("followed by letters and digits")
        );
    }

    fn host(name: &str, extra: Value) -> StackSettings {
        let mut v = vars(base());
        if let Value::Object(m) = extra {
            v.extend(m);
        }
        match StackSettings::from_vars(name, &v) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn keep_releases_defaults_and_bounds() {
        assert_eq!(host("h1", json!({})).keep_releases, DEFAULT_KEEP_RELEASES);
        assert_eq!(host("h1", json!({"keep_releases": 3})).keep_releases, 3);
        for bad in [json!(1), json!(0), json!(-2), json!("5"), json!(2.5)] {
            let mut v = vars(base());
            v.insert("keep_releases".into(), bad.clone());
            let e = StackSettings::from_vars("h1", &v)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"))
                .to_string();
            assert!(e.contains("h1") && e.contains("keep_releases"), "{e}");
        }
    }

    #[test]
    fn tunnel_metrics_port_defaults_and_bounds() {
        let s = host("h1", json!({}));
        assert_eq!(s.metrics_port, DEFAULT_METRICS_PORT);
        assert_eq!(s.metrics_ports(), 20241..=20245);
        let s = host("h1", json!({"tunnel_metrics_port": 20251}));
        assert_eq!(s.metrics_ports(), 20251..=20255);
        assert_eq!(
            host("h1", json!({"tunnel_metrics_port": 65531})).metrics_ports(),
            65531..=65535
        );
        for bad in [
            json!(1023),
            json!(0),
            json!(65532),
            json!(-1),
            json!(20241.5),
            json!("20251"),
            json!([20251]),
        ] {
            let e = err_of(&with("tunnel_metrics_port", bad.clone()));
            assert!(
                e.starts_with("h1: tunnel_metrics_port: "),
                "{bad} accepted or unclear: {e}"
            );
        }
    }

    #[test]
    fn a_tunnel_has_one_metrics_range() {
        let hosts = [
            host("h1", json!({"tunnel_name": "a"})),
            host(
                "h2",
                json!({"tunnel_name": "a", "tunnel_metrics_port": 20300}),
            ),
        ];
        let e = group_by_tunnel(&hosts).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("h2 disagrees with h1 on tunnel_metrics_port")),
            "{e:?}"
        );
    }

    fn on(endpoint: &str, s: &StackSettings) -> (String, StackSettings) {
        (endpoint.to_string(), s.clone())
    }

    fn shared(hosts: &[(String, StackSettings)]) -> Result<(), String> {
        let pairs: Vec<(String, &StackSettings)> =
            hosts.iter().map(|(e, s)| (e.clone(), s)).collect();
        check_shared_machines(&pairs).map_err(|e| e.to_string())
    }

    #[test]
    fn tunnels_sharing_a_machine_need_their_own_ports_and_directory() {
        let a = host("h1", json!({"tunnel_name": "a"}));
        let b = |extra: Value| {
            let mut v = json!({"tunnel_name": "b", "tunnel_domain": "t2.example.com",
                               "deploy_dir": "/srv/b"});
            if let (Value::Object(m), Value::Object(x)) = (&mut v, extra) {
                m.extend(x);
            }
            host("h1b", v)
        };
        // Same machine, default ranges: refused, naming both tunnels, hosts, ranges and a fix.
        let e = shared(&[on("10.0.0.1:22", &a), on("10.0.0.1:22", &b(json!({})))])
            .err()
            .unwrap_or_default();
        assert_eq!(
            e,
            "h1b: tunnel_metrics_port: tunnels a (h1) and b (h1b) run on the same machine \
             (10.0.0.1:22) and their connectors' metrics ports on the loopback overlap \
             (20241-20245 and 20241-20245); set `tunnel_metrics_port: 20246` in tunnel b's group \
             vars (ports 20246-20250), or the first of any 5 free ports"
        );
        // A partial overlap is refused too.
        let e = shared(&[
            on("10.0.0.1:22", &a),
            on("10.0.0.1:22", &b(json!({"tunnel_metrics_port": 20245}))),
        ]);
        assert!(e.is_err_and(|e| e.contains("(20241-20245 and 20245-20249)")));
        // Disjoint ranges on one machine, or the same range on different machines: fine.
        assert_eq!(
            shared(&[
                on("10.0.0.1:22", &a),
                on("10.0.0.1:22", &b(json!({"tunnel_metrics_port": 20246})))
            ]),
            Ok(())
        );
        for other in [
            "10.0.0.2:22",
            "10.0.0.1:2222",
            "10.0.0.1:22 via 192.0.2.1:22",
        ] {
            assert_eq!(
                shared(&[on("10.0.0.1:22", &a), on(other, &b(json!({})))]),
                Ok(()),
                "{other}"
            );
        }
        // Hosts of one tunnel on one machine are the same stack, not a clash.
        assert_eq!(shared(&[on("m:22", &a), on("m:22", &a)]), Ok(()));
        // The same deploy dir on one machine is refused whatever the ports.
        let e = shared(&[
            on("10.0.0.1:22", &a),
            on(
                "10.0.0.1:22",
                &b(json!({"deploy_dir": "/srv/mcp-tunnel", "tunnel_metrics_port": 20300})),
            ),
        ])
        .err()
        .unwrap_or_default();
        assert!(
            e.starts_with("h1b: deploy_dir: tunnels a (h1) and b (h1b)")
                && e.contains("both use deploy_dir /srv/mcp-tunnel"),
            "{e}"
        );
        // The hint skips past every range used on the machine.
        let c = host(
            "h1c",
            json!({"tunnel_name": "c", "tunnel_domain": "t3.example.com", "deploy_dir": "/srv/c"}),
        );
        let e = shared(&[
            on("m:22", &a),
            on("m:22", &b(json!({"tunnel_metrics_port": 20246}))),
            on("m:22", &c),
        ])
        .err()
        .unwrap_or_default();
        assert!(e.contains("tunnel_metrics_port: 20251"), "{e}");
    }

    #[test]
    fn grouping_keeps_order_and_allows_per_host_vars() {
        let hosts = [
            host("h1", json!({"tunnel_name": "a"})),
            host(
                "h2",
                json!({"tunnel_name": "b", "tunnel_domain": "t2.example.com"}),
            ),
            host(
                "h3",
                json!({"tunnel_name": "a", "log_level": "debug", "deploy_dir": "/opt/t"}),
            ),
        ];
        let groups = group_by_tunnel(&hosts).expect("consistent");
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].name, "a");
        assert_eq!(
            groups[0]
                .members
                .iter()
                .map(|m| m.host.as_str())
                .collect::<Vec<_>>(),
            ["h1", "h3"]
        );
        assert_eq!(groups[1].domain, "t2.example.com");
    }

    #[test]
    fn grouping_refuses_disagreement() {
        let hosts = [
            host("h1", json!({})),
            host(
                "h2",
                json!({"tunnel_routes": {"wiki": "http://wiki-mcp.internal:8081"}}),
            ),
        ];
        let e = group_by_tunnel(&hosts)
            .expect_err("routes differ")
            .to_string();
        assert_eq!(
            e,
            "tunnel t1.tunnels.example.com: h2 disagrees with h1 on tunnel_routes (h1: {\"wiki\": \
             \"http://wiki-mcp.internal:8080\"}, h2: {\"wiki\": \"http://wiki-mcp.internal:8081\"}); \
             every replica of a tunnel serves the same token and certificates, so set tunnel_routes \
             once for the whole group"
        );
        let hosts = [
            host("h1", json!({"tunnel_token_command": "pass show t1"})),
            host("h2", json!({"tunnel_token_command": "pass show t2"})),
        ];
        let e = group_by_tunnel(&hosts)
            .expect_err("commands differ")
            .to_string();
        assert!(e.contains("on tunnel_token_command (values differ)"), "{e}");
        assert!(!e.contains("pass show"));
        let hosts = [
            host("h1", json!({"tunnel_name": "x"})),
            host(
                "h2",
                json!({"tunnel_name": "x", "cloudflared_image": "c@sha256:0000000000000000000000000000000000000000000000000000000000000000"}),
            ),
        ];
        assert!(
            group_by_tunnel(&hosts)
                .expect_err("images differ")
                .to_string()
                .contains("on cloudflared_image")
        );
    }

    #[test]
    fn grouping_refuses_domain_clash() {
        let hosts = [
            host("h1", json!({"tunnel_name": "a"})),
            host("h2", json!({"tunnel_name": "b"})),
        ];
        assert_eq!(
            group_by_tunnel(&hosts).expect_err("clash").to_string(),
            "tunnels a and b both use domain t1.tunnels.example.com (hosts h1 and h2): a tunnel \
             domain belongs to exactly one tunnel"
        );
    }
}
