//! Client authentication: ssh-agent first, then key files.
//!
//! RSA keys sign with rsa-sha2-512 or rsa-sha2-256 only; a server that offers neither is not
//! offered an RSA key at all (tunnelfleet never signs with SHA-1).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client::Handle;
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::ssh_key::{Algorithm, HashAlg};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use tokio::sync::Mutex;

use super::{ErrorKind, SshError};

/// How a session authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// A key held by ssh-agent.
    Agent {
        /// SHA-256 fingerprint of the key.
        fingerprint: String,
        /// The agent's comment for the key.
        comment: String,
    },
    /// A private key file.
    KeyFile {
        /// The key file's path.
        path: PathBuf,
    },
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMethod::Agent { fingerprint, .. } => write!(f, "agent ({fingerprint})"),
            AuthMethod::KeyFile { path } => write!(f, "key {}", path.display()),
        }
    }
}

type CachedKey = Result<Arc<PrivateKey>, String>;

/// Decrypted private keys, shared by all connections of a run, so a passphrase is asked once.
/// The async mutex also serialises passphrase prompts.
#[derive(Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<PathBuf, CachedKey>>,
}

impl KeyCache {
    /// Loads (and caches) a private key, asking for its passphrase on the terminal if needed.
    pub async fn load(&self, path: &Path) -> CachedKey {
        let mut keys = self.keys.lock().await;
        if let Some(k) = keys.get(path) {
            return k.clone();
        }
        let owned = path.to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || load_key_blocking(&owned))
            .await
            .unwrap_or_else(|e| Err(format!("key loader failed: {e}")));
        keys.insert(path.to_path_buf(), loaded.clone());
        loaded
    }
}

fn load_key_blocking(path: &Path) -> CachedKey {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read key {}: {e}", path.display()))?;
    match russh::keys::decode_secret_key(&text, None) {
        Ok(k) => Ok(Arc::new(k)),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let tty = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/tty");
            if tty.is_err() || !std::io::stdin().is_terminal() {
                return Err(format!(
                    "key {} is passphrase-protected and there is no terminal to ask on \
                     (add it to ssh-agent: ssh-add {})",
                    path.display(),
                    path.display()
                ));
            }
            for _ in 0..3 {
                let pass =
                    rpassword::prompt_password(format!("Passphrase for {}: ", path.display()))
                        .map_err(|e| format!("read passphrase: {e}"))?;
                match russh::keys::decode_secret_key(&text, Some(&pass)) {
                    Ok(k) => return Ok(Arc::new(k)),
                    Err(_) => eprintln!("wrong passphrase for {}", path.display()),
                }
            }
            Err(format!(
                "key {}: wrong passphrase (3 tries)",
                path.display()
            ))
        }
        Err(e) => Err(format!("key {}: {e}", path.display())),
    }
}

fn is_rsa(alg: &Algorithm) -> bool {
    matches!(alg, Algorithm::Rsa { .. })
}

/// The hash to sign with for this key, or `None` to skip the key (RSA without rsa-sha2).
async fn sign_hash<H: russh::client::Handler>(
    handle: &Handle<H>,
    alg: &Algorithm,
) -> Option<Option<HashAlg>> {
    if !is_rsa(alg) {
        return Some(None);
    }
    match handle.best_supported_rsa_hash().await {
        Ok(Some(Some(h))) => Some(Some(h)),
        // The server offers only ssh-rsa (SHA-1), or said nothing: refuse to use SHA-1.
        _ => None,
    }
}

/// Tries the agent's keys, then each key file, until one is accepted.
pub async fn authenticate<H: russh::client::Handler>(
    handle: &mut Handle<H>,
    user: &str,
    key_files: &[PathBuf],
    cache: &KeyCache,
) -> Result<AuthMethod, SshError> {
    let mut tried: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        match AgentClient::connect_env().await {
            Ok(mut agent) => {
                let ids = agent.request_identities().await.unwrap_or_default();
                for id in ids {
                    let AgentIdentity::PublicKey { key, comment } = id else {
                        continue;
                    };
                    let Some(hash) = sign_hash(handle, &key.algorithm()).await else {
                        notes.push(format!(
                            "skipped agent RSA key {comment}: server offers no rsa-sha2"
                        ));
                        continue;
                    };
                    let fp = key.fingerprint(HashAlg::Sha256).to_string();
                    tried.push(format!("agent key {fp}"));
                    match handle
                        .authenticate_publickey_with(user, key, hash, &mut agent)
                        .await
                    {
                        Ok(r) if r.success() => {
                            return Ok(AuthMethod::Agent {
                                fingerprint: fp,
                                comment,
                            });
                        }
                        Ok(_) => {}
                        Err(e) => notes.push(format!("agent could not sign: {e}")),
                    }
                }
            }
            Err(e) => notes.push(format!("ssh-agent unavailable: {e}")),
        }
    }

    let mut seen = std::collections::HashSet::new();
    for path in key_files {
        if !seen.insert(path.clone()) || !path.exists() {
            continue;
        }
        let key = match cache.load(path).await {
            Ok(k) => k,
            Err(msg) => {
                notes.push(msg);
                continue;
            }
        };
        let Some(hash) = sign_hash(handle, &key.algorithm()).await else {
            notes.push(format!(
                "skipped RSA key {}: server offers no rsa-sha2",
                path.display()
            ));
            continue;
        };
        tried.push(format!("key {}", path.display()));
        let res = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash))
            .await
            .map_err(|e| SshError::new(ErrorKind::Auth, format!("authentication: {e}")))?;
        if res.success() {
            return Ok(AuthMethod::KeyFile { path: path.clone() });
        }
    }

    let mut msg = format!("authentication failed for user '{user}'");
    if tried.is_empty() {
        msg.push_str(": no usable key (no ssh-agent keys, no key files found)");
    } else {
        msg.push_str(&format!(": tried {}", tried.join(", ")));
    }
    if !notes.is_empty() {
        msg.push_str(&format!(" ({})", notes.join("; ")));
    }
    Err(SshError::new(ErrorKind::Auth, msg).hint(
        "check ansible_user and ansible_ssh_private_key_file, and that the key is in the \
         host's authorized_keys",
    ))
}
