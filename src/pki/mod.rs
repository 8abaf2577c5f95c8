//! The operator's CA and the tunnel's server certificate (rcgen), and reading certificates
//! back (x509-parser).
//!
//! The CA certificate is registered in the Console; the tunnel edge checks that the server
//! certificate presented by mcp-proxy chains to it. The CA private key stays on the controller
//! in the state directory (`ca.key`, 0600, directory 0700); hosts get `ca.crt`, `tls.crt` and
//! `tls.key` only.
//!
//! Keys are ECDSA P-256 with SHA-256 signatures: accepted by every TLS stack the tunnel
//! involves (Go's crypto/tls in mcp-proxy, the edge, openssl), small and fast to generate and
//! verify. Ed25519 certificates are still refused by some TLS clients; RSA works but its keys
//! are large and slow to generate for no gain here. A reused server key of another type
//! supported by rcgen (RSA, P-384) is accepted.

#![warn(missing_docs)]

mod domain;
mod files;
mod info;

pub use domain::{DomainError, validate_domain};
pub use info::{CertInfo, cert_info, key_matches};

use crate::secrets::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// File name of the CA certificate in the state directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key in the state directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the stored server certificate, beside the CA.
pub const SERVER_CERT_FILE: &str = "tls.crt";
/// File name of the stored server key (0600), beside the CA.
pub const SERVER_KEY_FILE: &str = "tls.key";
/// Validity of a new CA, in days (about ten years).
pub const CA_DAYS: u32 = 3650;
/// Server certificate validity used by the stack's guide, in days.
pub const DEFAULT_SERVER_DAYS: u32 = 90;
/// notBefore is backdated by this many seconds to tolerate clock skew between the controller,
/// the hosts and the edge.
pub const BACKDATE_SECS: i64 = 5 * 60;

/// Errors of the PKI layer: what failed, on which file, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The tunnel domain is not a valid DNS name.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The CA name (its subject CN) is unusable.
    #[error("CA name {name:?}: {reason}")]
    CaName {
        /// The name given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The state directory can be read by group or others.
    #[error(
        "state directory {dir}: mode {mode:04o} lets group or others in; run `chmod 700 {dir}` (it holds the CA private key)"
    )]
    StateDirTooOpen {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A CA already exists and `force` was not given.
    #[error(
        "a CA already exists in {dir}; refusing to overwrite it (the Console trusts that CA: replacing it breaks the tunnel until the new ca.crt is registered). Use force only if you mean it"
    )]
    CaExists {
        /// The state directory.
        dir: PathBuf,
    },
    /// No CA in the state directory.
    #[error("no CA in {dir} ({file} missing); create one first (CA init)")]
    CaMissing {
        /// The state directory.
        dir: PathBuf,
        /// Which file is missing.
        file: &'static str,
    },
    /// The CA key file can be read by group or others.
    #[error("CA key {path}: mode {mode:04o} lets group or others read it; run `chmod 600 {path}`")]
    KeyTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// An I/O error.
    #[error("{what}: {cause}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The error.
        cause: std::io::Error,
    },
    /// rcgen failed to build or sign a certificate or key.
    #[error("{what}: {cause}")]
    Rcgen {
        /// What was being done.
        what: String,
        /// The error.
        cause: rcgen::Error,
    },
    /// A private key could not be parsed.
    #[error(
        "{what}: not a usable private key ({cause}); expected a PEM PKCS#8, SEC1 or PKCS#1 key"
    )]
    BadKey {
        /// Which key.
        what: String,
        /// Why.
        cause: String,
    },
    /// A certificate could not be parsed.
    #[error("{what}: not a usable PEM certificate ({cause})")]
    BadCert {
        /// Which certificate.
        what: String,
        /// Why.
        cause: String,
    },
    /// The CA certificate is not a CA.
    #[error("{path}: is not a CA certificate (basicConstraints CA:TRUE missing)")]
    NotACa {
        /// The certificate file.
        path: PathBuf,
    },
    /// A private key does not belong to its certificate.
    #[error("{what}: the private key does not match the certificate's public key")]
    KeyMismatch {
        /// Which pair.
        what: String,
    },
    /// Unusable validity.
    #[error("validity of {days} days: {reason}")]
    Days {
        /// Days asked for.
        days: u32,
        /// Why it is refused.
        reason: String,
    },
}

/// A certificate authority kept in a state directory on the controller.
#[derive(Debug, Clone)]
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    key_pem: Secret,
}

/// A freshly issued server certificate and its private key (PEM).
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// The certificate (goes to `data/tls.crt`).
    pub cert_pem: String,
    /// The private key (goes to `data/tls.key`, only over stdin of a remote command).
    pub key_pem: Secret,
}

impl Ca {
    /// Creates a new CA in `state_dir` with subject `CN=name`: ECDSA P-256, ~10 years,
    /// basicConstraints critical CA:TRUE (pathlen 0), keyUsage critical keyCertSign+cRLSign,
    /// subjectKeyIdentifier.
    ///
    /// Writes `ca.key` (0600, created with that mode) and `ca.crt` (0644); creates the
    /// directory with mode 0700 if needed and refuses an existing one open to group or others.
    /// Refuses to replace an existing CA unless `force`.
    pub fn init(state_dir: &Path, name: &str, force: bool) -> Result<Ca, PkiError> {
        validate_ca_name(name)?;
        files::ensure_private_dir(state_dir)?;
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        if !force && (files::exists(&cert_path)? || files::exists(&key_path)?) {
            return Err(PkiError::CaExists {
                dir: state_dir.to_path_buf(),
            });
        }

        let key = Zeroizing::new(new_key("generate the CA key")?);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        let now = chrono::Utc::now().timestamp();
        params.not_before = to_offset(now - BACKDATE_SECS)?;
        params.not_after = to_offset(now + i64::from(CA_DAYS) * 86_400)?;
        let cert = params.self_signed(&*key).map_err(|cause| PkiError::Rcgen {
            what: "self-sign the CA certificate".into(),
            cause,
        })?;
        let cert_pem = cert.pem();
        let key_pem = Secret::new(key.serialize_pem());

        files::write_pair(
            &key_path,
            key_pem.expose().as_bytes(),
            0o600,
            &cert_path,
            cert_pem.as_bytes(),
            0o644,
        )?;
        Ok(Ca {
            dir: state_dir.to_path_buf(),
            cert_pem,
            key_pem,
        })
    }

    /// Loads the CA from `state_dir`: checks that `ca.key` is not readable by group or others,
    /// that `ca.crt` is a CA certificate, and that the key belongs to it.
    pub fn load(state_dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        let cert_pem = match files::read_to_string(&cert_path, None)? {
            Some(s) => s,
            None => {
                return Err(PkiError::CaMissing {
                    dir: state_dir.to_path_buf(),
                    file: CA_CERT_FILE,
                });
            }
        };
        let key_pem = match files::read_to_string(&key_path, Some(0o077))? {
            Some(s) => Secret::new(s),
            None => {
                return Err(PkiError::CaMissing {
                    dir: state_dir.to_path_buf(),
                    file: CA_KEY_FILE,
                });
            }
        };
        let info = cert_info(&cert_pem).map_err(|e| match e {
            PkiError::BadCert { cause, .. } => PkiError::BadCert {
                what: cert_path.display().to_string(),
                cause,
            },
            other => other,
        })?;
        if !info.is_ca {
            return Err(PkiError::NotACa { path: cert_path });
        }
        let what = format!("CA in {}", state_dir.display());
        if !key_matches(&cert_pem, &key_pem)? {
            return Err(PkiError::KeyMismatch { what });
        }
        Ok(Ca {
            dir: state_dir.to_path_buf(),
            cert_pem,
            key_pem,
        })
    }

    /// The state directory this CA lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (PEM): what is registered in the Console and shipped as `ca.crt`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Facts about the CA certificate.
    pub fn info(&self) -> Result<CertInfo, PkiError> {
        cert_info(&self.cert_pem)
    }

    /// The server certificate last stored beside this CA (`tls.crt`, `tls.key`), if any: the
    /// one every replica of the tunnel serves.
    pub fn stored_server(&self) -> Result<Option<ServerCert>, PkiError> {
        let cert = files::read_to_string(&self.dir.join(SERVER_CERT_FILE), None)?;
        let key = files::read_to_string(&self.dir.join(SERVER_KEY_FILE), Some(0o077))?;
        Ok(match (cert, key) {
            (Some(cert_pem), Some(key)) => Some(ServerCert {
                cert_pem,
                key_pem: Secret::new(key),
            }),
            _ => None,
        })
    }

    /// Stores `cert` beside this CA (key 0600, certificate 0644, both fsynced before either
    /// replaces the old pair).
    pub fn store_server(&self, cert: &ServerCert) -> Result<(), PkiError> {
        files::write_pair(
            &self.dir.join(SERVER_KEY_FILE),
            cert.key_pem.expose().as_bytes(),
            0o600,
            &self.dir.join(SERVER_CERT_FILE),
            cert.cert_pem.as_bytes(),
            0o644,
        )
    }

    /// Issues a server certificate for `domain` with a new key; see
    /// [`Ca::issue_server_with_key`].
    pub fn issue_server(&self, domain: &str, days: u32) -> Result<ServerCert, PkiError> {
        self.issue_server_with_key(domain, days, None)
    }

    /// Issues a server certificate for `domain`, valid from 5 minutes ago for `days` days:
    /// subject CN=domain; SAN DNS:domain, DNS:*.domain; authorityKeyIdentifier (= the CA's
    /// subjectKeyIdentifier); extendedKeyUsage serverAuth; keyUsage critical digitalSignature
    /// (plus keyEncipherment for RSA keys); basicConstraints critical CA:FALSE; a random
    /// positive 128-bit serial.
    ///
    /// With `key_pem` the existing server key is kept (renewal without rekeying); without it a
    /// new P-256 key is generated. Refuses `days` of 0 or a validity that outlives the CA.
    pub fn issue_server_with_key(
        &self,
        domain: &str,
        days: u32,
        key_pem: Option<&Secret>,
    ) -> Result<ServerCert, PkiError> {
        validate_domain(domain)?;
        if days == 0 {
            return Err(PkiError::Days {
                days,
                reason: "must be at least 1".into(),
            });
        }
        let now = chrono::Utc::now().timestamp();
        let not_after = now + i64::from(days) * 86_400;
        let ca_info = self.info()?;
        if not_after > ca_info.not_after_unix {
            return Err(PkiError::Days {
                days,
                reason: format!(
                    "the certificate would outlive the CA (CA valid until {}); issue for fewer days or create a new CA",
                    ca_info.not_after
                ),
            });
        }

        let ca_key = Zeroizing::new(KeyPair::from_pem(self.key_pem.expose()).map_err(|e| {
            PkiError::BadKey {
                what: format!("CA key in {}", self.dir.display()),
                cause: e.to_string(),
            }
        })?);
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &*ca_key).map_err(|cause| {
            PkiError::Rcgen {
                what: format!("read CA certificate in {}", self.dir.display()),
                cause,
            }
        })?;

        let key = Zeroizing::new(match key_pem {
            Some(k) => KeyPair::from_pem(k.expose()).map_err(|e| PkiError::BadKey {
                what: format!("existing server key (sha256:{})", k.fingerprint()),
                cause: e.to_string(),
            })?,
            None => new_key("generate the server key")?,
        });

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, domain);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![dns_san(domain)?, dns_san(&format!("*.{domain}"))?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if is_rsa(&key) {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = to_offset(now - BACKDATE_SECS)?;
        params.not_after = to_offset(not_after)?;

        let cert = params
            .signed_by(&*key, &issuer)
            .map_err(|cause| PkiError::Rcgen {
                what: format!("sign the server certificate for {domain}"),
                cause,
            })?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: match key_pem {
                Some(k) => k.clone(),
                None => Secret::new(key.serialize_pem()),
            },
        })
    }
}

/// A CA name becomes the subject CN: 1 to 64 printable characters.
fn validate_ca_name(name: &str) -> Result<(), PkiError> {
    let reason = if name.trim().is_empty() {
        Some("is empty; give a name such as \"acme tunnel CA\"")
    } else if name.chars().count() > 64 {
        Some("is longer than 64 characters (the X.509 limit for a common name)")
    } else if name.chars().any(char::is_control) {
        Some("contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PkiError::CaName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn new_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|cause| PkiError::Rcgen {
        what: what.to_string(),
        cause,
    })
}

fn is_rsa(key: &KeyPair) -> bool {
    [
        &rcgen::PKCS_RSA_SHA256,
        &rcgen::PKCS_RSA_SHA384,
        &rcgen::PKCS_RSA_SHA512,
    ]
    .iter()
    .any(|alg| key.algorithm() == *alg)
}

fn dns_san(name: &str) -> Result<SanType, PkiError> {
    let ia5 = name
        .to_string()
        .try_into()
        .map_err(|cause| PkiError::Rcgen {
            what: format!("encode DNS name {name}"),
            cause,
        })?;
    Ok(SanType::DnsName(ia5))
}

/// A random positive serial of 16 bytes (127 random bits): the first byte is in 0x01..=0x7f,
/// so the DER INTEGER is positive, needs no leading zero and keeps all 16 bytes.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 0x01;
    }
    SerialNumber::from_slice(&bytes)
}

fn to_offset(unix: i64) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|e| PkiError::Days {
        days: 0,
        reason: format!("date out of range: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn ca(dir: &Path) -> Ca {
        Ca::init(dir, "test CA", false).expect("init CA")
    }

    #[test]
    fn serial_is_positive_and_16_bytes() {
        for _ in 0..200 {
            let s = random_serial().to_bytes();
            assert_eq!(s.len(), 16);
            assert!(s[0] >= 1 && s[0] <= 0x7f);
        }
    }

    #[test]
    fn init_writes_files_with_modes_and_refuses_overwrite() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state");
        let ca = ca(&dir);
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(CA_CERT_FILE)), 0o644);
        let err = Ca::init(&dir, "again", false).expect_err("exists");
        assert!(matches!(err, PkiError::CaExists { .. }), "{err}");
        let forced = Ca::init(&dir, "again", true).expect("force");
        assert_ne!(forced.cert_pem(), ca.cert_pem());
        let loaded = Ca::load(&dir).expect("load");
        assert_eq!(loaded.cert_pem(), forced.cert_pem());
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn ca_info_is_a_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = ca(&tmp.path().join("state"));
        let info = ca.info().expect("info");
        assert!(info.is_ca);
        assert_eq!(info.subject_cn.as_deref(), Some("test CA"));
        let years = info.remaining(chrono::Utc::now()).num_days();
        assert!((3640..=3650).contains(&years), "{years}");
    }

    #[test]
    fn load_refuses_open_key_and_mismatched_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        ca(&a);
        ca(&b);
        let key = a.join(CA_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = Ca::load(&a).expect_err("open key");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::copy(b.join(CA_KEY_FILE), &key).expect("copy");
        let err = Ca::load(&a).expect_err("mismatch");
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
        let err = Ca::load(&tmp.path().join("none")).expect_err("missing");
        assert!(matches!(err, PkiError::CaMissing { .. }), "{err}");
    }

    #[test]
    fn init_refuses_open_state_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let err = Ca::init(tmp.path(), "x", false).expect_err("open dir");
        assert!(matches!(err, PkiError::StateDirTooOpen { .. }), "{err}");
    }

    #[test]
    fn issue_server_sets_names_and_keeps_key_on_request() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = ca(&tmp.path().join("state"));
        let first = ca.issue_server("mcp.example.com", 90).expect("issue");
        let info = cert_info(&first.cert_pem).expect("info");
        assert_eq!(info.subject_cn.as_deref(), Some("mcp.example.com"));
        assert_eq!(info.issuer_cn.as_deref(), Some("test CA"));
        assert_eq!(info.dns_names, vec!["mcp.example.com", "*.mcp.example.com"]);
        assert!(!info.is_ca);
        assert!(key_matches(&first.cert_pem, &first.key_pem).expect("match"));

        let renewed = ca
            .issue_server_with_key("mcp.example.com", 90, Some(&first.key_pem))
            .expect("renew");
        assert_eq!(renewed.key_pem.expose(), first.key_pem.expose());
        assert!(key_matches(&renewed.cert_pem, &first.key_pem).expect("match"));
        assert_ne!(
            cert_info(&renewed.cert_pem).expect("info").serial,
            info.serial
        );

        let other = ca.issue_server("mcp.example.com", 90).expect("rekey");
        assert!(!key_matches(&other.cert_pem, &first.key_pem).expect("match"));
    }

    #[test]
    fn issue_server_refuses_bad_input() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = ca(&tmp.path().join("state"));
        assert!(matches!(
            ca.issue_server("https://x.example.com", 90),
            Err(PkiError::Domain(_))
        ));
        assert!(matches!(
            ca.issue_server("x.example.com", 0),
            Err(PkiError::Days { .. })
        ));
        assert!(matches!(
            ca.issue_server("x.example.com", CA_DAYS + 1),
            Err(PkiError::Days { .. })
        ));
        let junk =
            Secret::new("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into());
        let err = ca
            .issue_server_with_key("x.example.com", 90, Some(&junk))
            .expect_err("junk key");
        assert!(matches!(err, PkiError::BadKey { .. }), "{err}");
        assert!(!err.to_string().contains("AAAA"));
    }

    #[test]
    fn ca_name_validation() {
        assert!(validate_ca_name("acme tunnel CA").is_ok());
        assert!(validate_ca_name("").is_err());
        assert!(validate_ca_name(&"x".repeat(65)).is_err());
        assert!(validate_ca_name("a\nb").is_err());
    }
}
