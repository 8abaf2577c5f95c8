//! Flags and set-up shared by the verbs that reach hosts: inventory, --limit, SSH options.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::inventory::{Connection, Inventory};
pub use crate::ops::fleet::FleetHost as SelectedHost;
use crate::ssh::{self, Hop, SshOptions, Target};

/// Connection flags shared by every verb that reaches hosts.
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Inventory: a YAML or INI file, or a directory of them; repeat to merge several, in
    /// order (as ansible -i). group_vars/ and host_vars/ beside each are read.
    #[arg(
        short = 'i',
        long = "inventory",
        env = "TUNNELFLEET_INVENTORY",
        required = true
    )]
    pub inventory: Vec<PathBuf>,
    /// Vault passwords for the inventory's vaulted values and files.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Hosts to act on: names, groups, globs, `!` exclusions, `&` intersections (as Ansible).
    #[arg(short = 'l', long)]
    pub limit: Option<String>,
    /// known_hosts file to check host keys against.
    #[arg(long, default_value = "~/.ssh/known_hosts")]
    pub known_hosts: String,
    /// Learn host keys of hosts not yet in known_hosts (a changed key is still refused).
    #[arg(long)]
    pub accept_new: bool,
    /// Deadline for one connection attempt (connect, key exchange, authentication), per hop,
    /// counted once the attempt holds a start slot (e.g. 10s, 1500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Deadline for one remote command.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// At most this many SSH connection starts at once. sshd's MaxStartups (10:30:100) counts
    /// per server, and hosts behind a jump host share one connection to it, so this bounds
    /// the controller's own burst; lower it for a fleet behind a stateful firewall.
    #[arg(long, default_value_t = 32)]
    pub max_starts: usize,
    /// ssh_config file for ProxyJump, IdentityFile, User and Port defaults ("none" to ignore).
    #[arg(long, default_value = "~/.ssh/config")]
    pub ssh_config: String,
}

/// Vault password flags (as Ansible's).
#[derive(Args, Debug, Clone, Default)]
pub struct VaultArgs {
    /// File holding the vault password (its content, whitespace trimmed).
    #[arg(long = "vault-password-file", env = "ANSIBLE_VAULT_PASSWORD_FILE")]
    pub vault_password_file: Vec<PathBuf>,
    /// A vault id with its password file: LABEL@FILE (repeatable).
    #[arg(long = "vault-id")]
    pub vault_id: Vec<String>,
}

impl VaultArgs {
    /// The vault passwords these flags give (read now; errors name the file).
    pub fn keys(&self) -> Result<crate::inventory::VaultKeys, CliError> {
        let mut keys = crate::inventory::VaultKeys::none();
        for f in &self.vault_password_file {
            keys.add_file(&f.to_string_lossy())
                .map_err(CliError::input)?;
        }
        for id in &self.vault_id {
            if !id.contains('@') {
                return Err(CliError::input(format!(
                    "--vault-id {}: expected LABEL@FILE",
                    crate::inventory::clip_for_message(id)
                )));
            }
            keys.add_vault_id(id).map_err(CliError::input)?;
        }
        Ok(keys)
    }
}

/// Loads the inventory sources with the vault passwords, and prints the inventory's warnings
/// (typos in variable names) on stderr, before any host is touched.
pub fn load_inventory(sources: &[PathBuf], vault: &VaultArgs) -> Result<Inventory, CliError> {
    let keys = vault.keys()?;
    let inv =
        Inventory::load_sources(sources, &keys).map_err(|e| CliError::input(e.to_string()))?;
    for w in inv.warnings() {
        eprintln!("warning: {w}");
    }
    Ok(inv)
}

/// Where the controller keeps its state: per tunnel the CA, the server certificate, the
/// rotation journal; and its audit log.
#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// The controller's state directory.
    #[arg(
        long,
        env = "TUNNELFLEET_STATE_DIR",
        default_value = "~/.local/state/tunnelfleet"
    )]
    pub state_dir: String,
}

/// Parses `500ms`, `10s`, `5m`, `720h`, `2d`, `1h30m`, `1.5s`, or a bare number of seconds
/// (the flags' grammar of [`crate::duration`]).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s, crate::duration::Grammar::Flag)
}

/// The SSH endpoint that identifies a machine: `address:port`, and the jump chain if any.
fn endpoint(conn: &Connection) -> String {
    let mut e = format!("{}:{}", conn.address, conn.port);
    if !conn.proxy_jump.is_empty() {
        let hops: Vec<String> = conn
            .proxy_jump
            .iter()
            .map(|j| format!("{}:{}", j.address, j.port))
            .collect();
        e.push_str(&format!(" via {}", hops.join(",")));
    }
    e
}

/// Refuses tunnels that would clash on one machine ([`crate::stack::check_shared_machines`]),
/// over the whole inventory, not only the selected hosts: `--limit` to one tunnel must not
/// deploy it into ports or a directory another tunnel of the inventory uses on that machine.
/// Hosts whose connection or stack vars do not read are skipped here (their own errors come
/// when they are selected).
fn check_shared_machines(inv: &Inventory) -> Result<(), CliError> {
    let mut settings = Vec::new();
    for h in inv.hosts() {
        if let (Ok(conn), Ok(s)) = (
            inv.connection(h),
            crate::stack::StackSettings::from_vars(&h.name, &h.vars),
        ) {
            settings.push((endpoint(&conn), s));
        }
    }
    let pairs: Vec<(String, &crate::stack::StackSettings)> =
        settings.iter().map(|(e, s)| (e.clone(), s)).collect();
    crate::stack::check_shared_machines(&pairs).map_err(|e| CliError::input(e.to_string()))
}

impl ConnArgs {
    /// The SSH options these flags describe.
    pub fn ssh_options(&self) -> SshOptions {
        SshOptions {
            known_hosts: ssh::config::expand_tilde(&self.known_hosts),
            accept_new: self.accept_new,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            max_starts: self.max_starts,
            ..SshOptions::default()
        }
    }

    /// The run's SSH connector (reads known_hosts now).
    pub fn connector(&self) -> Result<std::sync::Arc<crate::ssh::Connector>, CliError> {
        crate::ssh::Connector::new(self.ssh_options())
            .map(std::sync::Arc::new)
            .map_err(|e| CliError::input(e.to_string()))
    }

    /// Loads the inventory and selects hosts; all input errors surface here, before any host
    /// is touched.
    pub async fn select(&self) -> Result<(Inventory, Vec<SelectedHost>), CliError> {
        if self.max_starts == 0 {
            return Err(CliError::input("--max-starts must be at least 1"));
        }
        let inv = load_inventory(&self.inventory, &self.vault)?;
        let hosts = inv
            .select(self.limit.as_deref())
            .map_err(|e| CliError::input(e.to_string()))?;
        check_shared_machines(&inv)?;
        let ssh_config = match self.ssh_config.as_str() {
            "none" => None,
            p => Some(ssh::config::expand_tilde(p)),
        };
        if let Some(p) = &ssh_config {
            ssh::config::check_file(p).map_err(CliError::input)?;
        }
        let mut out = Vec::with_capacity(hosts.len());
        for h in hosts {
            let conn = inv
                .connection(h)
                .map_err(|e| CliError::input(e.to_string()))?;
            let target = to_target(&h.name, &conn, ssh_config.as_deref()).await?;
            out.push(SelectedHost {
                name: h.name.clone(),
                vars: h.vars.clone(),
                conn,
                target,
            });
        }
        Ok((inv, out))
    }
}

/// Parses one `ssh -J` element: `[user@]host[:port]`.
fn parse_jump_spec(spec: &str) -> Result<(Option<String>, String, u16), String> {
    let (user, rest) = match spec.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, spec),
    };
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        match inner.split_once(']') {
            Some((h, p)) => (h.to_string(), p.strip_prefix(':').unwrap_or("")),
            None => return Err(format!("bad jump host '{spec}'")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (rest.to_string(), ""),
        }
    };
    let port = if port.is_empty() {
        22
    } else {
        port.parse()
            .map_err(|_| format!("bad port in jump host '{spec}'"))?
    };
    if host.is_empty() {
        return Err(format!("empty host in jump host '{spec}'"));
    }
    Ok((user, host, port))
}

async fn to_target(
    name: &str,
    conn: &Connection,
    ssh_config: Option<&std::path::Path>,
) -> Result<Target, CliError> {
    let cfg = match ssh_config {
        Some(p) => ssh::config::lookup(p, &conn.address).await,
        None => ssh::config::SshConfigHost::default(),
    };
    let mut key_files: Vec<PathBuf> = conn.key_file.iter().cloned().collect();
    key_files.extend(cfg.identity_files.iter().cloned());
    let mut proxy_jump: Vec<Hop> = conn
        .proxy_jump
        .iter()
        .map(|j| Hop {
            address: j.address.clone(),
            port: j.port,
            user: j.user.clone().unwrap_or_else(|| conn.user.clone()),
            key_files: j
                .key_file
                .iter()
                .cloned()
                .chain(key_files.iter().cloned())
                .collect(),
        })
        .collect();
    if proxy_jump.is_empty()
        && let Some(spec) = &cfg.proxy_jump
    {
        for part in spec.split(',') {
            let (user, host, port) = parse_jump_spec(part.trim())
                .map_err(|e| CliError::input(format!("{name}: ssh_config ProxyJump: {e}")))?;
            let jcfg = match ssh_config {
                Some(p) => ssh::config::lookup(p, &host).await,
                None => ssh::config::SshConfigHost::default(),
            };
            proxy_jump.push(Hop {
                address: jcfg.hostname.clone().unwrap_or(host),
                port: jcfg.port.filter(|_| port == 22).unwrap_or(port),
                user: user
                    .or(jcfg.user.clone())
                    .unwrap_or_else(|| conn.user.clone()),
                key_files: jcfg
                    .identity_files
                    .iter()
                    .cloned()
                    .chain(key_files.iter().cloned())
                    .collect(),
            });
        }
    }
    Ok(Target {
        name: name.to_string(),
        hop: Hop {
            address: conn.address.clone(),
            port: conn.port,
            user: conn.user.clone(),
            key_files,
        },
        proxy_jump,
        become_: conn.become_,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
        // Found by fuzzing: these panicked.
        assert!(parse_duration("99999999999999999999999").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn jump_specs() {
        assert_eq!(
            parse_jump_spec("ops@bastion:2222"),
            Ok((Some("ops".into()), "bastion".into(), 2222))
        );
        assert_eq!(
            parse_jump_spec("10.0.0.1"),
            Ok((None, "10.0.0.1".into(), 22))
        );
        assert_eq!(parse_jump_spec("[::1]:22"), Ok((None, "::1".into(), 22)));
        assert!(parse_jump_spec("h:x").is_err());
    }
}
