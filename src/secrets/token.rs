//! Tunnel token validation.
//!
//! A tunnel token is standard base64 (padding optional) of a small JSON object with string
//! keys `a` (account tag), `t` (tunnel id) and `s` (secret), e.g.
//! `eyJhIjoiRVhBTVBMRSIsInQiOiJFWEFNUExFIiwicyI6IkVYQU1QTEUifQ==`. Other keys are allowed
//! (cloudflared knows an optional endpoint key `e`).

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use zeroize::Zeroizing;

/// What a tunnel token is expected to look like, quoted in every [`TokenError`].
const EXPECTED: &str = "expected a tunnel token: one line of standard base64 of a JSON object \
     with string keys \"a\", \"t\" and \"s\" (it starts with \"eyJ\"); copy it again from the \
     Console or the Tunnels API";

/// Why a string is not a tunnel token. Messages carry the token's length and fingerprint,
/// never its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Nothing was given.
    #[error("tunnel token is empty; {EXPECTED}")]
    Empty,
    /// Whitespace inside the token (often a line break from copy and paste).
    #[error("tunnel token ({len} bytes, sha256:{fp}) contains {kind}; {EXPECTED}")]
    Whitespace {
        /// Length in bytes.
        len: usize,
        /// Fingerprint of the rejected value.
        fp: String,
        /// Which kind of whitespace: "a space", "a line break", "a tab", "whitespace".
        kind: &'static str,
    },
    /// Not standard base64 (wrong alphabet, wrong length, stray characters).
    #[error("tunnel token ({len} bytes, sha256:{fp}) is not standard base64{hint}; {EXPECTED}")]
    NotBase64 {
        /// Length in bytes.
        len: usize,
        /// Fingerprint of the rejected value.
        fp: String,
        /// Extra hint, e.g. for the URL-safe alphabet.
        hint: &'static str,
    },
    /// Base64, but the decoded bytes are not a JSON object.
    #[error(
        "tunnel token ({len} bytes, sha256:{fp}) decodes to something that is not a JSON object; {EXPECTED}"
    )]
    NotJsonObject {
        /// Length in bytes.
        len: usize,
        /// Fingerprint of the rejected value.
        fp: String,
    },
    /// A JSON object, but a required key is missing, not a string, or empty.
    #[error(
        "tunnel token ({len} bytes, sha256:{fp}) has no non-empty string key \"{key}\" ({what}); {EXPECTED}"
    )]
    MissingKey {
        /// Length in bytes.
        len: usize,
        /// Fingerprint of the rejected value.
        fp: String,
        /// The key: "a", "t" or "s".
        key: &'static str,
        /// What the key means.
        what: &'static str,
    },
}

/// Removes one trailing line break (`\n` or `\r\n`) from `s`, as left by `echo`, editors and
/// `cat file`. Only one: a token followed by a blank line is still refused.
pub fn strip_one_trailing_newline(s: &str) -> &str {
    if let Some(rest) = s.strip_suffix("\r\n") {
        rest
    } else if let Some(rest) = s.strip_suffix('\n') {
        rest
    } else {
        s
    }
}

/// Standard alphabet, padding optional.
const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// URL-safe alphabet, padding optional: only used to give a better error.
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Checks that `token` looks like a tunnel token (see the module documentation).
///
/// Does not trim: callers reading a file or stdin strip one trailing line break first
/// ([`strip_one_trailing_newline`]); any other whitespace is an error.
pub fn validate_tunnel_token(token: &str) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    let len = token.len();
    let fp = || super::fingerprint(token.as_bytes());
    if let Some(c) = token.chars().find(|c| c.is_whitespace()) {
        let kind = match c {
            ' ' => "a space",
            '\n' | '\r' => "a line break",
            '\t' => "a tab",
            _ => "whitespace",
        };
        return Err(TokenError::Whitespace {
            len,
            fp: fp(),
            kind,
        });
    }
    let decoded = match STANDARD_ANY_PADDING.decode(token) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(_) => {
            let hint = if URL_SAFE_ANY_PADDING.decode(token).is_ok() {
                " (it uses the URL-safe alphabet '-' and '_')"
            } else {
                ""
            };
            return Err(TokenError::NotBase64 {
                len,
                fp: fp(),
                hint,
            });
        }
    };
    let parsed: serde_json::Value = match serde_json::from_slice(&decoded) {
        Ok(v) => v,
        Err(_) => return Err(TokenError::NotJsonObject { len, fp: fp() }),
    };
    let Some(object) = parsed.as_object() else {
        return Err(TokenError::NotJsonObject { len, fp: fp() });
    };
    for (key, what) in [("a", "account tag"), ("t", "tunnel id"), ("s", "secret")] {
        let ok = object
            .get(key)
            .and_then(|v| v.as_str())
            .is_some_and(|v| !v.is_empty());
        if !ok {
            return Err(TokenError::MissingKey {
                len,
                fp: fp(),
                key,
                what,
            });
        }
    }
    Ok(())
}

/// Checks that `token` looks like an OIDC identity token (a JWT): three base64url parts
/// joined by dots, the first a JSON object. Errors show only the length and fingerprint.
///
/// This is the token the setup component exchanges through Workload Identity Federation; a
/// wrong value would only fail on the host, after the fleet is locked, so it is checked here.
pub fn validate_identity_token(token: &str) -> Result<(), String> {
    let len = token.len();
    let fp = super::fingerprint(token.as_bytes());
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "not a JWT (expected three dot-separated parts; {len} bytes, fingerprint {fp})"
        ));
    }
    let url = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    if parts.iter().any(|p| url.decode(p).is_err()) {
        return Err(format!(
            "not a JWT (a part is not base64url; {len} bytes, fingerprint {fp})"
        ));
    }
    let header = url.decode(parts[0]).unwrap_or_default();
    match serde_json::from_slice::<serde_json::Value>(&header) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        _ => Err(format!(
            "not a JWT (its header is not a JSON object; {len} bytes, fingerprint {fp})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "eyJhIjoiRVhBTVBMRSIsInQiOiJFWEFNUExFIiwicyI6IkVYQU1QTEUifQ==";

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn accepts_the_documented_example_with_and_without_padding() {
        assert_eq!(validate_tunnel_token(EXAMPLE), Ok(()));
        assert_eq!(validate_tunnel_token(EXAMPLE.trim_end_matches('=')), Ok(()));
        let with_e =
            b64(r#"{"a":"acc","t":"6ff42ae2-765d-4adf-8112-31c55c1551ef","s":"c2VjcmV0","e":"x"}"#);
        assert_eq!(validate_tunnel_token(&with_e), Ok(()));
    }

    #[test]
    fn refuses_empty_and_whitespace() {
        assert_eq!(validate_tunnel_token(""), Err(TokenError::Empty));
        for (bad, kind) in [
            (format!("{EXAMPLE}\n"), "a line break"),
            (format!(" {EXAMPLE}"), "a space"),
            (
                "eyJhIjoi\tRVhBTVBMRSIsInQiOiJFWEFNUExFIiwicyI6IkVYQU1QTEUifQ==".to_string(),
                "a tab",
            ),
        ] {
            match validate_tunnel_token(&bad) {
                Err(TokenError::Whitespace { kind: k, len, .. }) => {
                    assert_eq!(k, kind);
                    assert_eq!(len, bad.len());
                }
                other => panic!("expected whitespace error, got {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_non_tokens_without_echoing_them() {
        let cases = [
            "not-a-token-at-all!".to_string(),
            b64("just text"),
            b64("[1,2,3]"),
            b64(r#"{"a":"x","t":"y"}"#),
            b64(r#"{"a":"x","t":"y","s":""}"#),
            b64(r#"{"a":"x","t":"y","s":5}"#),
        ];
        for bad in &cases {
            let err = validate_tunnel_token(bad).expect_err(bad);
            let msg = err.to_string();
            assert!(!msg.contains(bad.as_str()), "{msg}");
            assert!(
                msg.contains(&super::super::fingerprint(bad.as_bytes())),
                "{msg}"
            );
            assert!(msg.contains("expected a tunnel token"), "{msg}");
        }
        assert!(matches!(
            validate_tunnel_token(&b64(r#"{"a":"x","t":"y"}"#)),
            Err(TokenError::MissingKey { key: "s", .. })
        ));
    }

    #[test]
    fn url_safe_alphabet_gets_a_hint() {
        // Bytes chosen so that the standard encoding contains '+' and '/'.
        let json = r#"{"a":"x","t":"y","s":"???>>>"}"#;
        let url = base64::engine::general_purpose::URL_SAFE.encode(json);
        assert!(url.contains('_') || url.contains('-'), "{url}");
        let msg = validate_tunnel_token(&url)
            .expect_err("url-safe")
            .to_string();
        assert!(msg.contains("URL-safe"), "{msg}");
    }

    #[test]
    fn strips_exactly_one_line_break() {
        assert_eq!(strip_one_trailing_newline("abc\n"), "abc");
        assert_eq!(strip_one_trailing_newline("abc\r\n"), "abc");
        assert_eq!(strip_one_trailing_newline("abc\n\n"), "abc\n");
        assert_eq!(strip_one_trailing_newline("abc"), "abc");
    }

    #[test]
    fn identity_tokens() {
        let jwt = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ2bSJ9.c2ln";
        assert!(validate_identity_token(jwt).is_ok());
        for bad in ["", "a.b", "a..c", "abc.def.g h", "bm90IGpzb24.eyJ9.c2ln"] {
            let e = validate_identity_token(bad).unwrap_err();
            assert!(e.contains("not a JWT"), "{bad}: {e}");
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
    }
}
