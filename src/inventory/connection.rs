//! The SSH connection view of a host, from its merged variables.
//!
//! | field        | variables                                                   | default            |
//! |--------------|-------------------------------------------------------------|--------------------|
//! | `address`    | `ansible_host`                                              | the host name      |
//! | `port`       | `ansible_port` (integer or numeric string)                  | 22                 |
//! | `user`       | `ansible_user`                                              | `$USER`, `$LOGNAME`, else `root` |
//! | `key_file`   | `ansible_ssh_private_key_file`, else `ansible_private_key_file` | none           |
//! | `become_`    | `become` (tunnelfleet), else `ansible_become`               | false              |
//! | `proxy_jump` | `proxy_jump` (tunnelfleet)                                  | none               |
//! | `deploy_dir` | `deploy_dir` (tunnelfleet)                                  | `/srv/mcp-tunnel`  |

use super::yaml::{Loc, UNSAFE_KEY, json_type_name};
use super::{Host, Inventory, InventoryError, clip};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where the stack lives on a host when `deploy_dir` is not set.
pub const DEFAULT_DEPLOY_DIR: &str = "/srv/mcp-tunnel";

/// How to reach and operate on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The inventory host name.
    pub host: String,
    /// Address to connect to (`ansible_host`, default the host name).
    pub address: String,
    /// SSH port (`ansible_port`, default 22).
    pub port: u16,
    /// Remote user (`ansible_user`, default the current user, else `root`).
    pub user: String,
    /// Private key file (`ansible_ssh_private_key_file`), `~` expanded, relative paths taken
    /// from the inventory file's directory.
    pub key_file: Option<PathBuf>,
    /// Whether to run privileged steps through sudo (`become` / `ansible_become`).
    pub become_: bool,
    /// Jump hosts to go through, outermost first (OpenSSH `-J` order).
    pub proxy_jump: Vec<JumpHost>,
    /// Directory of the stack on the host (`deploy_dir`, default [`DEFAULT_DEPLOY_DIR`]).
    pub deploy_dir: String,
}

/// One hop of a ProxyJump chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    /// Address of the jump host.
    pub address: String,
    /// SSH port of the jump host.
    pub port: u16,
    /// User on the jump host; `None` when the `-J` spec names none.
    pub user: Option<String>,
    /// Key for the jump host (set when the jump host is an inventory host with a key).
    pub key_file: Option<PathBuf>,
}

struct Ctx<'a> {
    inv: &'a Inventory,
    host: &'a Host,
}

impl Ctx<'_> {
    fn loc(&self, var: &str) -> Loc {
        self.host.origins.get(var).copied().unwrap_or(self.host.loc)
    }

    fn err(&self, var: &str, message: String) -> InventoryError {
        self.inv.error_at(
            self.loc(var),
            format!("host '{}': {var}: {message}", clip(&self.host.name)),
        )
    }

    /// A variable's value; null counts as unset, and an `!unsafe` string as the string.
    fn get(&self, var: &str) -> Option<&Value> {
        let v = self.host.vars.get(var).filter(|v| !v.is_null())?;
        match v {
            Value::Object(m) if m.len() == 1 => match m.get(UNSAFE_KEY) {
                Some(s @ Value::String(_)) => Some(s),
                _ => Some(v),
            },
            _ => Some(v),
        }
    }

    /// A string var that will end up on an ssh command line or in a remote path: non-empty,
    /// no whitespace or control characters, not starting with `-`.
    fn word(&self, var: &str, what: &str, max: usize) -> Result<Option<String>, InventoryError> {
        let Some(v) = self.get(var) else {
            return Ok(None);
        };
        let Value::String(s) = v else {
            return Err(self.err(var, format!("must be {what} (got {})", json_type_name(v))));
        };
        check_len(s, max).map_err(|m| self.err(var, format!("{m} for {what}")))?;
        check_word(s).map_err(|m| self.err(var, format!("{m} in {what} '{}'", clip(s))))?;
        Ok(Some(s.clone()))
    }
}

/// Longest host name or address accepted (a DNS name has at most 253 characters).
pub const MAX_ADDRESS_LEN: usize = 253;
/// Longest user name accepted.
pub const MAX_USER_LEN: usize = 255;

fn check_len(s: &str, max: usize) -> Result<(), String> {
    let n = s.chars().count();
    if n > max {
        Err(format!("{n} characters is too long (at most {max})"))
    } else {
        Ok(())
    }
}

fn check_word(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty value");
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("whitespace or control character");
    }
    if s.starts_with('-') {
        return Err("leading '-'");
    }
    Ok(())
}

pub(super) fn connection(inv: &Inventory, host: &Host) -> Result<Connection, InventoryError> {
    let mut chain = vec![host.name.clone()];
    resolve(inv, host, &mut chain)
}

fn resolve(
    inv: &Inventory,
    host: &Host,
    chain: &mut Vec<String>,
) -> Result<Connection, InventoryError> {
    let cx = Ctx { inv, host };
    let address = match cx.word("ansible_host", "a host name or address", MAX_ADDRESS_LEN)? {
        Some(a) => a,
        None => {
            check_len(&host.name, MAX_ADDRESS_LEN)
                .map_err(|m| m.to_string())
                .and_then(|()| check_word(&host.name).map_err(|m| m.to_string()))
                .map_err(|m| {
                    inv.error_at(
                        host.loc,
                        format!(
                            "host '{}': {m} in the host name (or set ansible_host)",
                            clip(&host.name)
                        ),
                    )
                })?;
            host.name.clone()
        }
    };
    let port = match cx.get("ansible_port") {
        None => 22,
        Some(v) => parse_port(v).ok_or_else(|| {
            cx.err(
                "ansible_port",
                format!("must be a port number 1-65535 (got {})", show(v)),
            )
        })?,
    };
    let user = match cx.word("ansible_user", "a user name", MAX_USER_LEN)? {
        Some(u) => u,
        None => default_user(),
    };
    let key_file = key_file(&cx)?;
    let become_ = match ["become", "ansible_become"]
        .into_iter()
        .find_map(|k| cx.get(k).map(|v| (k, v)))
    {
        None => false,
        Some((k, v)) => parse_bool(v).ok_or_else(|| {
            cx.err(
                k,
                format!(
                    "must be a boolean (true/false, yes/no, on/off, 1/0; got {})",
                    show(v)
                ),
            )
        })?,
    };
    let deploy_dir = match cx.get("deploy_dir") {
        None => DEFAULT_DEPLOY_DIR.to_owned(),
        Some(Value::String(s)) => check_deploy_dir(s).map_err(|m| cx.err("deploy_dir", m))?,
        Some(v) => {
            return Err(cx.err(
                "deploy_dir",
                format!("must be an absolute path (got {})", json_type_name(v)),
            ));
        }
    };
    let proxy_jump = proxy_jump(&cx, chain)?;
    Ok(Connection {
        host: host.name.clone(),
        address,
        port,
        user,
        key_file,
        become_,
        proxy_jump,
        deploy_dir,
    })
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{}'", clip(s)),
        other => clip(&format!("{other}")),
    }
}

fn parse_port(v: &Value) -> Option<u16> {
    let n = match v {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.trim().parse::<u64>().ok()?,
        _ => return None,
    };
    u16::try_from(n).ok().filter(|p| *p > 0)
}

/// Ansible's `boolean()` (strict): true for `true`, `yes`, `on`, `y`, `t`, `1` (any case),
/// 1 and 1.0; false for `false`, `no`, `off`, `n`, `f`, `0`, 0 and 0.0.
fn parse_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" | "on" | "1" | "true" | "t" => Some(true),
            "n" | "no" | "off" | "0" | "false" | "f" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// The user OpenSSH would use by default: `$USER`, then `$LOGNAME`, else `root`.
fn default_user() -> String {
    ["USER", "LOGNAME"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|u| check_word(u).is_ok())
        .unwrap_or_else(|| "root".to_owned())
}

fn key_file(cx: &Ctx<'_>) -> Result<Option<PathBuf>, InventoryError> {
    let Some((var, v)) = ["ansible_ssh_private_key_file", "ansible_private_key_file"]
        .into_iter()
        .find_map(|k| cx.get(k).map(|v| (k, v)))
    else {
        return Ok(None);
    };
    let Value::String(s) = v else {
        return Err(cx.err(
            var,
            format!("must be a file path (got {})", json_type_name(v)),
        ));
    };
    if s.is_empty() || s.contains(['\0', '\n']) {
        return Err(cx.err(var, format!("must be a file path (got {})", show(v))));
    }
    let path = if s == "~" || s.starts_with("~/") {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                cx.err(
                    var,
                    format!("cannot expand '~' in '{}': HOME is not set", clip(s)),
                )
            })?;
        let mut p = PathBuf::from(home);
        if let Some(rest) = s.strip_prefix("~/") {
            p.push(rest);
        }
        p
    } else if s.starts_with('~') {
        return Err(cx.err(
            var,
            format!(
                "'~user' paths are not supported ('{}'); write the full path",
                clip(s)
            ),
        ));
    } else if Path::new(s).is_absolute() {
        PathBuf::from(s)
    } else {
        // Relative to the inventory: the first source directory, or the first file's.
        let first = cx.inv.path.as_path();
        let base = if first.is_dir() {
            first
        } else {
            first.parent().unwrap_or(Path::new(""))
        };
        base.join(s)
    };
    Ok(Some(path))
}

/// The one check of a `deploy_dir` value (the inventory's connection and the stack's
/// settings both read the var through it): an absolute, normalized path of letters, digits,
/// `/`, `.`, `_` and `-`, not `/` itself; returned without a trailing `/`.
pub fn check_deploy_dir(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!("must be an absolute path (got '{}')", clip(s)));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "expected a path of letters, digits, '/', '.', '_', '-' (got '{}')",
            clip(s).escape_default()
        ));
    }
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("must not be '/': the stack cannot live in /".to_owned());
    }
    if trimmed[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "expected a normalized path (no '//', '.' or '..'; got '{}')",
            clip(s)
        ));
    }
    Ok(trimmed.to_owned())
}

/// `proxy_jump`: a string of comma-separated hops, or a list of hops. A hop is the name of
/// another inventory host (its own chain comes first, then the host with its address, port,
/// user and key) or an OpenSSH `-J` spec `[ssh://][user@]host[:port]` (`[v6addr]:port`).
fn proxy_jump(cx: &Ctx<'_>, chain: &mut Vec<String>) -> Result<Vec<JumpHost>, InventoryError> {
    const VAR: &str = "proxy_jump";
    let hops: Vec<String> = match cx.get(VAR) {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => s.split(',').map(|h| h.trim().to_owned()).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.trim().to_owned()),
                other => Err(cx.err(
                    VAR,
                    format!("list items must be strings (got {})", json_type_name(other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(cx.err(
                VAR,
                format!(
                    "must be an inventory host name or '[user@]host[:port]' (got {})",
                    json_type_name(v)
                ),
            ));
        }
    };
    let mut out = Vec::new();
    for hop in hops {
        if hop.is_empty() {
            return Err(cx.err(VAR, "empty hop in the jump chain".to_owned()));
        }
        if let Some(jump) = cx.inv.host(&hop) {
            if chain.contains(&hop) {
                chain.push(hop.clone());
                return Err(cx.err(
                    VAR,
                    format!("jump hosts form a loop: {}", chain.join(" -> ")),
                ));
            }
            chain.push(hop.clone());
            let c = resolve(cx.inv, jump, chain)?;
            chain.pop();
            out.extend(c.proxy_jump);
            out.push(JumpHost {
                address: c.address,
                port: c.port,
                user: Some(c.user),
                key_file: c.key_file,
            });
        } else {
            out.push(parse_jump_spec(&hop).map_err(|m| {
                cx.err(
                    VAR,
                    format!("'{}' is not an inventory host, and {m}", clip(&hop)),
                )
            })?);
        }
    }
    Ok(out)
}

/// Parses one OpenSSH `-J` hop: `[ssh://][user@]host[:port]`, IPv6 in brackets.
fn parse_jump_spec(spec: &str) -> Result<JumpHost, String> {
    let rest = spec.strip_prefix("ssh://").unwrap_or(spec);
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    if let Some(u) = user {
        check_len(u, MAX_USER_LEN).map_err(|m| format!("its user: {m}"))?;
        check_word(u).map_err(|m| format!("its user has a {m}"))?;
    }
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (h, after) = inner
            .split_once(']')
            .ok_or("its '[' address has no closing ']'")?;
        match after {
            "" => (h, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Err("it has text after ']' that is not ':port'".to_owned()),
            },
        }
    } else {
        match hostport.matches(':').count() {
            0 => (hostport, None),
            1 => match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            },
            _ => (hostport, None), // bare IPv6 address
        }
    };
    check_len(host, MAX_ADDRESS_LEN).map_err(|m| format!("its host: {m}"))?;
    check_word(host).map_err(|m| {
        if m == "empty value" {
            "it names no host".to_owned()
        } else {
            format!("its host has a {m}")
        }
    })?;
    let port = match port {
        None => 22,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("its port '{}' is not a port number 1-65535", clip(p)))?,
    };
    Ok(JumpHost {
        address: host.to_owned(),
        port,
        user: user.map(str::to_owned),
        key_file: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_specs() {
        assert_eq!(
            parse_jump_spec("ops@bastion.example.com:2222"),
            Ok(JumpHost {
                address: "bastion.example.com".into(),
                port: 2222,
                user: Some("ops".into()),
                key_file: None
            })
        );
        assert_eq!(
            parse_jump_spec("ssh://[2001:db8::1]:23").map(|j| (j.address, j.port)),
            Ok(("2001:db8::1".into(), 23))
        );
        assert_eq!(
            parse_jump_spec("10.0.0.9").map(|j| (j.address, j.port, j.user)),
            Ok(("10.0.0.9".into(), 22, None))
        );
        assert!(parse_jump_spec("host:0").is_err());
        assert!(parse_jump_spec("host:99999").is_err());
        assert!(parse_jump_spec("-oProxyCommand=x").is_err());
        assert!(parse_jump_spec("u@").is_err());
    }

    #[test]
    fn booleans_like_ansible() {
        for t in ["yes", "True", "on", "1", "y", "t"] {
            assert_eq!(parse_bool(&Value::from(t)), Some(true), "{t}");
        }
        for f in ["no", "FALSE", "off", "0", "n", "f"] {
            assert_eq!(parse_bool(&Value::from(f)), Some(false), "{f}");
        }
        assert_eq!(parse_bool(&Value::from(1)), Some(true));
        assert_eq!(parse_bool(&Value::from("maybe")), None);
        assert_eq!(parse_bool(&Value::from(2)), None);
    }
}
