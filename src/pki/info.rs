//! Reading certificates back: expiry, serial, names, fingerprint; key/certificate matching.

use super::PkiError;
use crate::secrets::Secret;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Facts about a certificate, as shown by status and used by renewal decisions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// Serial number, lowercase hex without separators or leading zero bytes (as
    /// `openssl x509 -serial` prints it, lowercased).
    pub serial: String,
    /// Subject common name, if any.
    pub subject_cn: Option<String>,
    /// Issuer common name, if any.
    pub issuer_cn: Option<String>,
    /// DNS names of the subjectAltName extension, in certificate order.
    pub dns_names: Vec<String>,
    /// Whether basicConstraints says CA:TRUE.
    pub is_ca: bool,
    /// notBefore, RFC 3339 UTC (`2026-01-01T00:00:00Z`).
    pub not_before: String,
    /// notBefore, seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// notAfter, RFC 3339 UTC.
    pub not_after: String,
    /// notAfter, seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// SHA-256 of the DER encoding, lowercase hex (64 digits).
    pub sha256: String,
}

impl CertInfo {
    /// Time left until notAfter at `now`; negative once expired.
    pub fn remaining(&self, now: chrono::DateTime<chrono::Utc>) -> chrono::TimeDelta {
        chrono::TimeDelta::seconds(self.not_after_unix - now.timestamp())
    }

    /// Whether the certificate is valid at `now` (notBefore <= now <= notAfter).
    pub fn is_valid_at(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        let t = now.timestamp();
        self.not_before_unix <= t && t <= self.not_after_unix
    }
}

fn rfc3339(unix: i64) -> String {
    match chrono::DateTime::from_timestamp(unix, 0) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => format!("@{unix}"),
    }
}

fn bad(cause: impl std::fmt::Display) -> PkiError {
    PkiError::BadCert {
        what: "certificate".into(),
        cause: cause.to_string(),
    }
}

/// Parses the first certificate of `pem` and calls `f` with it and its DER.
fn with_cert<T>(
    pem: &str,
    f: impl FnOnce(&X509Certificate<'_>, &[u8]) -> Result<T, PkiError>,
) -> Result<T, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(bad)?;
    if pem.label != "CERTIFICATE" {
        return Err(bad(format!(
            "PEM block is {:?}, not CERTIFICATE",
            pem.label
        )));
    }
    let cert = pem.parse_x509().map_err(bad)?;
    f(&cert, &pem.contents)
}

/// Reads the first certificate of a PEM text.
pub fn cert_info(pem: &str) -> Result<CertInfo, PkiError> {
    with_cert(pem, |cert, der| {
        let raw = cert.raw_serial();
        let first = raw
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(raw.len().saturating_sub(1));
        let serial = hex::encode(&raw[first.min(raw.len())..]);
        let cn = |name: &x509_parser::x509::X509Name<'_>| {
            name.iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok())
                .map(str::to_string)
        };
        let dns_names = match cert.subject_alternative_name().map_err(bad)? {
            Some(ext) => ext
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        let not_before_unix = cert.validity().not_before.timestamp();
        let not_after_unix = cert.validity().not_after.timestamp();
        Ok(CertInfo {
            serial,
            subject_cn: cn(cert.subject()),
            issuer_cn: cn(cert.issuer()),
            dns_names,
            is_ca: cert.is_ca(),
            not_before: rfc3339(not_before_unix),
            not_before_unix,
            not_after: rfc3339(not_after_unix),
            not_after_unix,
            sha256: hex::encode(Sha256::digest(der)),
        })
    })
}

/// Whether the private key `key_pem` belongs to the certificate `cert_pem` (same public key).
pub fn key_matches(cert_pem: &str, key_pem: &Secret) -> Result<bool, PkiError> {
    let key = rcgen::KeyPair::from_pem(key_pem.expose()).map_err(|e| PkiError::BadKey {
        what: format!("private key (sha256:{})", key_pem.fingerprint()),
        cause: e.to_string(),
    })?;
    with_cert(cert_pem, |cert, _| {
        Ok(cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
    })
}
