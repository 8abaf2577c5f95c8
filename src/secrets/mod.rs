//! Secrets: the [`Secret`] type, fingerprints, redaction, tunnel token validation and the
//! places a token can be loaded from ([`TokenSource`]).
//!
//! Rules this module enforces (see docs/decisions.md and the architecture guide):
//! - a secret value is never printed by `Debug`, never serialised, and is wiped on drop;
//! - a secret is identified in logs, status and journals by its fingerprint (the first 12 hex
//!   digits of the SHA-256 of its value);
//! - error messages about a token carry at most its length and fingerprint.

#![warn(missing_docs)]

mod source;
mod token;
mod tunnels_api;

pub use source::{
    COMMAND_STDERR_CAP, COMMAND_TIMEOUT, DEFAULT_TOKEN_ENV, SecretError, TokenSource,
};
pub use token::{
    TokenError, strip_one_trailing_newline, validate_identity_token, validate_tunnel_token,
};
pub use tunnels_api::TunnelsApi;

use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroizing;

/// Values decrypted from the inventory's vault, by id (the ciphertext, or the vars file and
/// variable for a vault-encrypted file): the inventory is read once per run, before any
/// host is touched, and the token source is chosen later from the host's vars, which carry
/// only the id. Ids are not secret; values never leave as anything but a [`Secret`].
static VAULTED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Secret>>> =
    std::sync::OnceLock::new();

/// Keeps a value decrypted from the inventory's vault under `id`.
pub fn remember_vaulted(id: &str, value: Secret) {
    let map = VAULTED.get_or_init(Default::default);
    if let Ok(mut m) = map.lock() {
        m.insert(id.to_owned(), value);
    }
}

/// The value kept under `id` by [`remember_vaulted`].
pub fn recall_vaulted(id: &str) -> Option<Secret> {
    VAULTED.get()?.lock().ok()?.get(id).cloned()
}

/// Number of hex digits of SHA-256 kept in a fingerprint.
pub const FINGERPRINT_HEX_LEN: usize = 12;

/// The fingerprint of `bytes`: the first 12 lowercase hex digits of their SHA-256.
///
/// Fingerprints identify a token or key in status output, journals and error messages without
/// revealing it.
pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = hex::encode(digest);
    hex.truncate(FINGERPRINT_HEX_LEN);
    hex
}

/// A secret string (tunnel token, private key PEM).
///
/// - `Debug` prints `Secret(sha256:<fingerprint>)`, never the value; there is no `Display`
///   and no `Serialize`, so a secret cannot end up in a message or `--json` by accident.
/// - The value is wiped from memory when the `Secret` is dropped (a best effort: copies made
///   through [`Secret::expose`] are the caller's responsibility).
#[derive(Clone)]
pub struct Secret {
    value: Zeroizing<String>,
}

impl Secret {
    /// Wraps `value` as a secret. The `String` is moved, not copied.
    pub fn new(value: String) -> Self {
        Secret {
            value: Zeroizing::new(value),
        }
    }

    /// The secret value. Use it only to hand the value to the place it is meant for (the stdin
    /// of a remote command, a signing key parser), never to format a message.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The first 12 hex digits of the SHA-256 of the value.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.value.as_bytes())
    }

    /// Length of the value in bytes (safe to show).
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(sha256:{})", self.fingerprint())
    }
}

/// Minimum length of a line of a multi-line secret that [`redact`] also hides on its own.
const REDACT_MIN_LINE: usize = 16;

/// Shortest run of base64 characters that [`redact_token_shaped`] treats as a credential.
/// Tunnel tokens are a few hundred characters; 40 keeps short hashes, ids and words intact.
pub const TOKEN_SHAPED_MIN: usize = 40;

/// Replaces every token-shaped run in `text` (at least [`TOKEN_SHAPED_MIN`] characters of the
/// standard or URL-safe base64 alphabet, padding included) with `<redacted>`. For text from
/// outside tunnelfleet's control, such as a failing token command's stderr, which may print a
/// token the caller never saw.
pub fn redact_token_shaped(text: &str) -> String {
    fn b64(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '-' | '_' | '=')
    }
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() >= TOKEN_SHAPED_MIN {
            out.push_str("<redacted>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if b64(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Replaces every occurrence of the value of any of `secrets` in `text` with
/// `<redacted:FINGERPRINT>`.
///
/// A last-resort guard for messages that quote text we do not control (remote stderr, the
/// stderr of a token command). Multi-line secrets (PEM keys) are also redacted line by line
/// (lines of 16 bytes or more, except PEM armour lines), so a partial echo is hidden too.
/// Empty secrets are ignored.
pub fn redact(text: &str, secrets: &[&Secret]) -> String {
    let mut needles: Vec<(String, String)> = Vec::new();
    for secret in secrets {
        let value = secret.expose();
        if value.is_empty() {
            continue;
        }
        let marker = format!("<redacted:{}>", secret.fingerprint());
        needles.push((value.to_string(), marker.clone()));
        if value.contains('\n') {
            for line in value.lines() {
                let line = line.trim_end_matches('\r');
                if line.len() >= REDACT_MIN_LINE && !line.starts_with("-----") {
                    needles.push((line.to_string(), marker.clone()));
                }
            }
        }
    }
    // Longest first, so a whole value is replaced before any of its lines.
    needles.sort_by_key(|n| std::cmp::Reverse(n.0.len()));
    let mut out = text.to_string();
    for (needle, marker) in &needles {
        if out.contains(needle.as_str()) {
            out = out.replace(needle.as_str(), marker);
        }
    }
    for (needle, _) in &mut needles {
        zeroize::Zeroize::zeroize(needle);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_12_hex_of_sha256() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(fingerprint(b"abc"), "ba7816bf8f01");
        let s = Secret::new("abc".into());
        assert_eq!(s.fingerprint(), "ba7816bf8f01");
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn debug_hides_value() {
        let s = Secret::new("super-secret-value".into());
        let d = format!("{s:?}");
        assert_eq!(d, format!("Secret(sha256:{})", s.fingerprint()));
        assert!(!d.contains("super-secret-value"));
        let nested = format!("{:?}", Some(vec![s.clone()]));
        assert!(!nested.contains("super"));
    }

    #[test]
    fn redact_replaces_every_occurrence() {
        let a = Secret::new("tok-AAAA".into());
        let b = Secret::new("tok-AAAA-longer".into());
        let empty = Secret::new(String::new());
        let text = "x tok-AAAA-longer y tok-AAAA z";
        let out = redact(text, &[&a, &b, &empty]);
        assert_eq!(
            out,
            format!(
                "x <redacted:{}> y <redacted:{}> z",
                b.fingerprint(),
                a.fingerprint()
            )
        );
        assert_eq!(redact("nothing here", &[&a]), "nothing here");
    }

    #[test]
    fn redact_hides_lines_of_a_pem_key() {
        let key = Secret::new(
            "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\nAwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"
                .into(),
        );
        let out = redact(
            "remote said: MIGHAgEAMBMGByqGSM49AgEGCCqGSM49 oops",
            &[&key],
        );
        assert!(!out.contains("MIGHAgEAMBMGByqGSM49AgEGCCqGSM49"));
        assert!(out.contains(&format!("<redacted:{}>", key.fingerprint())));
    }

    #[test]
    fn token_shaped_runs_are_redacted_and_short_words_kept() {
        let tok = "eyJhIjoiRVhBTVBMRSIsInQiOiJFWEFNUExFIiwicyI6IkVYQU1QTEUifQ==";
        let out = redact_token_shaped(&format!("error: bad token {tok}: sha 1a2b3c4d"));
        assert_eq!(out, "error: bad token <redacted>: sha 1a2b3c4d");
        let url = "x".repeat(39);
        assert_eq!(redact_token_shaped(&url), url);
        assert_eq!(redact_token_shaped(""), "");
        assert_eq!(redact_token_shaped("ünïcödé ok"), "ünïcödé ok");
    }
}
