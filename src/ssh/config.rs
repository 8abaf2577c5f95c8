//! What `~/.ssh/config` says about a host: `ssh -G` when the OpenSSH client is installed (it
//! evaluates Match, Include and every other rule exactly as ssh would), else a small parser of
//! `Host` blocks with HostName, User, Port, IdentityFile and ProxyJump.

use std::path::{Path, PathBuf};

/// The settings tunnelfleet takes from ssh_config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshConfigHost {
    /// `HostName`.
    pub hostname: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `Port`.
    pub port: Option<u16>,
    /// `IdentityFile`s, in order, `~` expanded.
    pub identity_files: Vec<PathBuf>,
    /// `ProxyJump` (an `ssh -J` spec), unless `none`.
    pub proxy_jump: Option<String>,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// Expands a leading `~/`.
pub fn expand_tilde(p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        home().join(rest)
    } else if p == "~" {
        home()
    } else {
        PathBuf::from(p)
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// Checks, before any host is touched, that the ssh_config file at `path` can be read: a
/// regular file within [`crate::fsread::SMALL_FILE_LIMIT`] (a missing file is fine: there is
/// nothing to apply). `ssh -G` would block forever on a FIFO and read a device endlessly.
pub fn check_file(path: &Path) -> Result<(), String> {
    if !path.exists() {
        return Ok(());
    }
    crate::fsread::read_text(path, crate::fsread::SMALL_FILE_LIMIT)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{}: cannot read ssh_config: {e} (or --ssh-config none)",
                path.display()
            )
        })
}

/// Looks up `host` in the ssh_config file at `path` (None: the file does not exist).
pub async fn lookup(path: &Path, host: &str) -> SshConfigHost {
    if !path.exists() {
        return SshConfigHost::default();
    }
    if let Some(ssh) = which("ssh") {
        let out = tokio::process::Command::new(ssh)
            .arg("-G")
            .arg("-F")
            .arg(path)
            .arg("--")
            .arg(host)
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        if let Ok(out) = out
            && out.status.success()
        {
            return parse_g_output(&String::from_utf8_lossy(&out.stdout));
        }
    }
    match crate::fsread::read_text(path, crate::fsread::SMALL_FILE_LIMIT) {
        Ok(text) => parse_config(&text, host),
        Err(_) => SshConfigHost::default(),
    }
}

/// Parses `ssh -G` output (lower-case keys, one setting per line, defaults included).
pub fn parse_g_output(text: &str) -> SshConfigHost {
    let mut h = SshConfigHost::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(' ') else {
            continue;
        };
        let v = v.trim();
        match k {
            "hostname" => h.hostname = Some(v.to_string()),
            "user" => h.user = Some(v.to_string()),
            "port" => h.port = v.parse().ok(),
            "identityfile" => h.identity_files.push(expand_tilde(v)),
            "proxyjump" if v != "none" => h.proxy_jump = Some(v.to_string()),
            _ => {}
        }
    }
    h
}

/// A minimal ssh_config reader: `Host` patterns (first value wins, as in ssh).
pub fn parse_config(text: &str, host: &str) -> SshConfigHost {
    let mut h = SshConfigHost::default();
    let mut active = true;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = match line.split_once(|c: char| c.is_whitespace() || c == '=') {
            Some((k, v)) => (
                k.to_ascii_lowercase(),
                v.trim_start_matches(['=', ' ', '\t']),
            ),
            None => continue,
        };
        let v = v.trim().trim_matches('"');
        match k.as_str() {
            "host" => {
                let mut m = false;
                for p in v.split_whitespace() {
                    if let Some(neg) = p.strip_prefix('!') {
                        if super::known_hosts::glob_match(neg, host) {
                            m = false;
                            break;
                        }
                    } else if super::known_hosts::glob_match(p, host) {
                        m = true;
                    }
                }
                active = m;
            }
            "match" => active = false,
            _ if !active => {}
            "hostname" if h.hostname.is_none() => h.hostname = Some(v.replace("%h", host)),
            "user" if h.user.is_none() => h.user = Some(v.to_string()),
            "port" if h.port.is_none() => h.port = v.parse().ok(),
            "identityfile" => h.identity_files.push(expand_tilde(v)),
            "proxyjump" if h.proxy_jump.is_none() && v != "none" => {
                h.proxy_jump = Some(v.to_string())
            }
            _ => {}
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_blocks() {
        let text = "Host bastion\n  HostName 10.1.1.1\n  User ops\n\nHost 10.2.* !10.2.0.9\n  ProxyJump ops@bastion:2222\n  IdentityFile ~/.ssh/fleet\n  Port 2200\nHost *\n  User nobody\n";
        let h = parse_config(text, "10.2.0.4");
        assert_eq!(h.proxy_jump.as_deref(), Some("ops@bastion:2222"));
        assert_eq!(h.port, Some(2200));
        assert_eq!(h.user.as_deref(), Some("nobody"));
        assert!(h.identity_files[0].ends_with(".ssh/fleet"));
        let h = parse_config(text, "10.2.0.9");
        assert_eq!(h.proxy_jump, None);
    }

    #[test]
    fn parses_ssh_g() {
        let h = parse_g_output(
            "user root\nhostname 10.0.0.1\nport 22\nidentityfile ~/.ssh/id_rsa\nproxyjump none\n",
        );
        assert_eq!(h.port, Some(22));
        assert_eq!(h.proxy_jump, None);
        assert_eq!(h.identity_files.len(), 1);
    }
}
