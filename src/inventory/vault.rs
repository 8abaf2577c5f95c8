//! Ansible Vault decryption (format 1.1, and 1.2 with a vault id), for inline `!vault`
//! values and vault-encrypted var files.
//!
//! The format: a header `$ANSIBLE_VAULT;1.1;AES256` (or `;1.2;AES256;LABEL`), then the hex
//! of `hex(salt) "\n" hex(hmac) "\n" hex(ciphertext)` in lines. Keys: PBKDF2-HMAC-SHA256 of
//! the password with the salt, 10000 rounds, 80 bytes: the AES-256 key, the HMAC-SHA256 key,
//! the CTR initial counter block. The HMAC of the ciphertext is checked (constant time)
//! before anything is decrypted; the plaintext is PKCS#7 padded.

use crate::secrets::Secret;
use aes::Aes256;
use ctr::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, KeyInit, Mac};
use std::path::Path;
use zeroize::Zeroizing;

/// The header every vault text starts with.
pub const VAULT_HEADER: &str = "$ANSIBLE_VAULT;";

/// Vault passwords, each with its vault id label (`default` when none was given).
#[derive(Clone, Default)]
pub struct VaultKeys {
    keys: Vec<(String, Secret)>,
}

impl std::fmt::Debug for VaultKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self.keys.iter().map(|(l, _)| l.as_str()).collect();
        write!(f, "VaultKeys({labels:?})")
    }
}

impl VaultKeys {
    /// No passwords: a vaulted value is an error.
    pub fn none() -> VaultKeys {
        VaultKeys::default()
    }

    /// Whether no password was given.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Adds a `--vault-id` password: `LABEL@FILE` (a bare `FILE` is the `default` id).
    pub fn add_vault_id(&mut self, spec: &str) -> Result<(), String> {
        match spec.split_once('@') {
            Some((l, p)) if !l.is_empty() && !l.contains('/') => self.add_labelled(l, p),
            _ => self.add_labelled("default", spec),
        }
    }

    /// Adds the password in `path` (`--vault-password-file`, vault id `default`).
    pub fn add_file(&mut self, path: &str) -> Result<(), String> {
        self.add_labelled("default", path)
    }

    /// The file's content, surrounding whitespace removed, is the password; an executable
    /// file (a password script Ansible would run) is refused.
    fn add_labelled(&mut self, label: &str, path: &str) -> Result<(), String> {
        let label = label.to_owned();
        let path = crate::ssh::config::expand_tilde(path);
        if path.as_os_str().is_empty() {
            return Err("vault password file: empty path".into());
        }
        if path == Path::new("prompt") {
            return Err(
                "vault id 'prompt': tunnelfleet does not prompt for vault passwords; \
                 give a password file"
                    .into(),
            );
        }
        let meta = std::fs::metadata(&path)
            .map_err(|e| format!("{}: cannot read vault password file: {e}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            return Err(format!(
                "{}: the vault password file is executable: Ansible would run it as a \
                 password script, which tunnelfleet does not; chmod -x it if it holds the \
                 password, or write the password to a file",
                path.display()
            ));
        }
        let text = crate::fsread::read_text(&path, 64 * 1024)
            .map_err(|e| format!("{}: cannot read vault password file: {e}", path.display()))?;
        let text = Zeroizing::new(text);
        let password = text.trim();
        if password.is_empty() {
            return Err(format!(
                "{}: the vault password file is empty",
                path.display()
            ));
        }
        self.keys.push((label, Secret::new(password.to_owned())));
        Ok(())
    }

    /// Adds a password directly (tests, embedding).
    pub fn add(&mut self, label: &str, password: Secret) {
        self.keys.push((label.to_owned(), password));
    }
}

/// Whether `text` is a vault text (starts with the vault header).
pub fn is_vaulted(text: &str) -> bool {
    text.trim_start().starts_with(VAULT_HEADER)
}

/// Decrypts a vault text with the first of `keys` that fits (the key labelled as the
/// text's vault id first). Errors never contain plaintext.
pub fn decrypt(text: &str, keys: &VaultKeys) -> Result<Zeroizing<Vec<u8>>, String> {
    let text = text.trim();
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let fields: Vec<&str> = header.trim().split(';').collect();
    let label = match fields.as_slice() {
        ["$ANSIBLE_VAULT", "1.1", cipher] => {
            check_cipher(cipher)?;
            None
        }
        ["$ANSIBLE_VAULT", "1.2", cipher, label] => {
            check_cipher(cipher)?;
            Some(*label)
        }
        ["$ANSIBLE_VAULT", version, ..] => {
            return Err(format!(
                "vault format {} is not supported (1.1 and 1.2 are)",
                super::clip(version)
            ));
        }
        _ => return Err("not a vault text (bad header)".into()),
    };
    let body: String = lines.flat_map(|l| l.trim().chars()).collect();
    let inner = hex::decode(&body).map_err(|_| "vault text is not valid hex".to_owned())?;
    let inner = String::from_utf8(inner).map_err(|_| "vault text is malformed".to_owned())?;
    let mut parts = inner.split('\n');
    let (Some(salt), Some(mac), Some(ct), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("vault text is malformed (expected salt, HMAC and ciphertext)".into());
    };
    let malformed = |_| "vault text is malformed (bad hex inside)".to_owned();
    let salt = hex::decode(salt).map_err(malformed)?;
    let mac = hex::decode(mac).map_err(malformed)?;
    let ct = hex::decode(ct).map_err(malformed)?;
    if keys.is_empty() {
        return Err(no_password(label));
    }
    let mut order: Vec<&(String, Secret)> = keys
        .keys
        .iter()
        .filter(|(l, _)| Some(l.as_str()) == label)
        .collect();
    order.extend(keys.keys.iter().filter(|(l, _)| Some(l.as_str()) != label));
    for (_, password) in order {
        let mut derived = Zeroizing::new([0u8; 80]);
        pbkdf2::pbkdf2_hmac::<pbkdf2::sha2::Sha256>(
            password.expose().as_bytes(),
            &salt,
            10_000,
            derived.as_mut_slice(),
        );
        let Ok(mut check) = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&derived[32..64])
        else {
            continue;
        };
        check.update(&ct);
        if check.verify_slice(&mac).is_err() {
            continue;
        }
        let Ok(mut cipher) =
            ctr::Ctr128BE::<Aes256>::new_from_slices(&derived[..32], &derived[64..80])
        else {
            continue;
        };
        let mut plain = Zeroizing::new(ct.clone());
        cipher.apply_keystream(plain.as_mut_slice());
        let pad = plain.last().copied().unwrap_or(0) as usize;
        if pad == 0 || pad > 16 || pad > plain.len() {
            return Err("vault text decrypts to malformed padding".into());
        }
        let n = plain.len() - pad;
        plain.truncate(n);
        return Ok(plain);
    }
    Err(match label {
        Some(l) => format!(
            "no vault password given fits (vault id '{}'): check --vault-password-file / \
             --vault-id",
            super::clip(l)
        ),
        None => "no vault password given fits: check --vault-password-file / --vault-id".into(),
    })
}

fn check_cipher(cipher: &str) -> Result<(), String> {
    if cipher == "AES256" {
        Ok(())
    } else {
        Err(format!(
            "vault cipher {} is not supported (AES256 is)",
            super::clip(cipher)
        ))
    }
}

fn no_password(label: Option<&str>) -> String {
    let id = label
        .map(|l| format!(" (vault id '{}')", super::clip(l)))
        .unwrap_or_default();
    format!(
        "vault-encrypted{id}, and no vault password was given: use --vault-password-file FILE, \
         --vault-id LABEL@FILE or ANSIBLE_VAULT_PASSWORD_FILE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `echo -n 'tok-secret' | ansible-vault encrypt_string --vault-password-file pw`
    /// with `pw` = "pw" (ansible-core 2.19).
    const SAMPLE: &str = "$ANSIBLE_VAULT;1.1;AES256
33323066366532373864363261666139303934616339326537343534363632383331363562353836
3034323938313133353365383038306161666233633936620a323964646666333134643366393137
39313261386663313235646564653538653765636364616432393031363437386164346636396138
6634336163313739650a343437356131316536383463383530336536363735343536313031623734
6333
";

    #[test]
    fn decrypts_what_ansible_vault_wrote() {
        let mut keys = VaultKeys::none();
        assert!(decrypt(SAMPLE, &keys).is_err_and(|e| e.contains("no vault password")));
        keys.add("default", Secret::new("wrong".into()));
        assert!(decrypt(SAMPLE, &keys).is_err_and(|e| e.contains("fits")));
        keys.add("default", Secret::new("pw".into()));
        let plain = decrypt(SAMPLE, &keys).ok().map(|p| p.to_vec());
        assert_eq!(plain.as_deref(), Some(b"tok-secret".as_slice()));
    }
}
