//! The CA and server certificates checked by an independent implementation: the `openssl`
//! CLI (verify, x509 -text, key matching) and x509-parser (extensions and criticality).
//!
//! These tests need `openssl` on PATH; without it they fail with a message saying so.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use tunnelfleet::pki::{CA_CERT_FILE, CA_KEY_FILE, Ca, ServerCert, cert_info};
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS,
    OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
    OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};

const DOMAIN: &str = "mcp.example.com";

/// Runs openssl; returns (success, stdout + stderr).
fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let out = match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "the `openssl` CLI is not installed; these tests check certificates with it (apt-get install openssl)"
        ),
        Err(e) => panic!("cannot run openssl {args:?}: {e}"),
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn openssl_ok(args: &[&str], dir: &Path) -> String {
    let (ok, text) = openssl(args, dir);
    assert!(ok, "openssl {args:?} failed:\n{text}");
    text
}

struct Fixture {
    _tmp: tempfile::TempDir,
    state: std::path::PathBuf,
    ca: Ca,
    server: ServerCert,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let ca = Ca::init(&state, "tunnelfleet test CA", false).expect("init CA");
    let server = ca.issue_server(DOMAIN, 90).expect("issue");
    std::fs::write(state.join("tls.crt"), &server.cert_pem).expect("write tls.crt");
    std::fs::write(state.join("tls.key"), server.key_pem.expose()).expect("write tls.key");
    Fixture {
        _tmp: tmp,
        state,
        ca,
        server,
    }
}

/// The line after the one containing `header` in `openssl x509 -text` output.
fn value_after(text: &str, header: &str) -> String {
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.contains(header) {
            return lines.next().unwrap_or("").trim().to_string();
        }
    }
    panic!("{header:?} not found in:\n{text}");
}

#[test]
fn chain_verifies_with_openssl() {
    let f = fixture();
    let out = openssl_ok(&["verify", "-CAfile", CA_CERT_FILE, "tls.crt"], &f.state);
    assert!(out.contains("tls.crt: OK"), "{out}");
    let out = openssl_ok(
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslserver",
            "-CAfile",
            CA_CERT_FILE,
            "tls.crt",
        ],
        &f.state,
    );
    assert!(out.contains("tls.crt: OK"), "{out}");
    // The host name check openssl does for TLS clients, on the domain and a subdomain.
    for name in [DOMAIN, "files.mcp.example.com"] {
        let out = openssl_ok(
            &[
                "verify",
                "-verify_hostname",
                name,
                "-CAfile",
                CA_CERT_FILE,
                "tls.crt",
            ],
            &f.state,
        );
        assert!(out.contains("tls.crt: OK"), "{name}: {out}");
    }
    let (ok, out) = openssl(
        &[
            "verify",
            "-verify_hostname",
            "other.example.com",
            "-CAfile",
            CA_CERT_FILE,
            "tls.crt",
        ],
        &f.state,
    );
    assert!(!ok, "a foreign host name must not verify: {out}");
    // The CA must not be usable as a server certificate, and a server cert not as a CA.
    let (ok, _) = openssl(
        &[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            "tls.crt",
            "tls.crt",
        ],
        &f.state,
    );
    assert!(!ok);
}

#[test]
fn chain_verifies_after_reloading_the_ca() {
    let f = fixture();
    let loaded = Ca::load(&f.state).expect("load");
    assert_eq!(loaded.cert_pem(), f.ca.cert_pem());
    let again = loaded.issue_server(DOMAIN, 30).expect("issue after load");
    std::fs::write(f.state.join("tls2.crt"), &again.cert_pem).expect("write");
    let out = openssl_ok(
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslserver",
            "-CAfile",
            CA_CERT_FILE,
            "tls2.crt",
        ],
        &f.state,
    );
    assert!(out.contains("tls2.crt: OK"), "{out}");
}

#[test]
fn openssl_text_shows_required_extensions() {
    let f = fixture();
    let ca = openssl_ok(&["x509", "-in", CA_CERT_FILE, "-noout", "-text"], &f.state);
    assert!(ca.contains("X509v3 Basic Constraints: critical"), "{ca}");
    assert!(
        value_after(&ca, "X509v3 Basic Constraints").starts_with("CA:TRUE"),
        "{ca}"
    );
    assert!(ca.contains("X509v3 Key Usage: critical"), "{ca}");
    assert_eq!(
        value_after(&ca, "X509v3 Key Usage"),
        "Certificate Sign, CRL Sign"
    );
    assert!(ca.contains("X509v3 Subject Key Identifier"), "{ca}");
    assert!(ca.contains("ecdsa-with-SHA256"), "{ca}");
    assert!(ca.contains("NIST CURVE: P-256"), "{ca}");

    let srv = openssl_ok(&["x509", "-in", "tls.crt", "-noout", "-text"], &f.state);
    assert!(srv.contains(&format!("Subject: CN = {DOMAIN}")), "{srv}");
    assert!(srv.contains("Issuer: CN = tunnelfleet test CA"), "{srv}");
    assert_eq!(
        value_after(&srv, "X509v3 Subject Alternative Name"),
        format!("DNS:{DOMAIN}, DNS:*.{DOMAIN}")
    );
    assert!(srv.contains("X509v3 Authority Key Identifier"), "{srv}");
    assert_eq!(
        value_after(&srv, "X509v3 Extended Key Usage"),
        "TLS Web Server Authentication"
    );
    assert!(srv.contains("X509v3 Key Usage: critical"), "{srv}");
    assert_eq!(value_after(&srv, "X509v3 Key Usage"), "Digital Signature");
    assert!(srv.contains("X509v3 Basic Constraints: critical"), "{srv}");
    assert_eq!(value_after(&srv, "X509v3 Basic Constraints"), "CA:FALSE");
    // AKI of the server = SKI of the CA.
    let ski = value_after(&ca, "X509v3 Subject Key Identifier");
    let aki = value_after(&srv, "X509v3 Authority Key Identifier");
    assert_eq!(aki.trim_start_matches("keyid:"), ski, "{aki} vs {ski}");
}

fn ext<'a>(
    c: &x509_parser::certificate::X509Certificate<'a>,
    oid: x509_parser::der_parser::oid::Oid<'static>,
) -> x509_parser::extensions::X509Extension<'a> {
    c.extensions()
        .iter()
        .find(|e| e.oid == oid)
        .cloned()
        .unwrap_or_else(|| panic!("extension {oid} missing"))
}

#[test]
fn x509_parser_sees_extensions_and_criticality() {
    let f = fixture();
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(f.ca.cert_pem().as_bytes()).expect("pem");
    let ca = ca_pem.parse_x509().expect("ca");
    let (_, srv_pem) = x509_parser::pem::parse_x509_pem(f.server.cert_pem.as_bytes()).expect("pem");
    let srv = srv_pem.parse_x509().expect("server");

    // CA
    let bc = ext(&ca, OID_X509_EXT_BASIC_CONSTRAINTS);
    assert!(bc.critical);
    match bc.parsed_extension() {
        ParsedExtension::BasicConstraints(b) => assert!(b.ca),
        other => panic!("{other:?}"),
    }
    let ku = ext(&ca, OID_X509_EXT_KEY_USAGE);
    assert!(ku.critical);
    match ku.parsed_extension() {
        ParsedExtension::KeyUsage(k) => {
            assert!(k.key_cert_sign() && k.crl_sign());
            assert!(!k.digital_signature());
        }
        other => panic!("{other:?}"),
    }
    let ski = match ext(&ca, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER).parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(k) => k.0.to_vec(),
        other => panic!("{other:?}"),
    };
    assert!(!ski.is_empty());

    // Server
    let bc = ext(&srv, OID_X509_EXT_BASIC_CONSTRAINTS);
    assert!(bc.critical);
    match bc.parsed_extension() {
        ParsedExtension::BasicConstraints(b) => assert!(!b.ca),
        other => panic!("{other:?}"),
    }
    let ku = ext(&srv, OID_X509_EXT_KEY_USAGE);
    assert!(ku.critical);
    match ku.parsed_extension() {
        ParsedExtension::KeyUsage(k) => {
            assert!(k.digital_signature());
            assert!(!k.key_cert_sign());
        }
        other => panic!("{other:?}"),
    }
    let eku = ext(&srv, OID_X509_EXT_EXTENDED_KEY_USAGE);
    assert!(!eku.critical);
    match eku.parsed_extension() {
        ParsedExtension::ExtendedKeyUsage(e) => assert!(e.server_auth),
        other => panic!("{other:?}"),
    }
    let san = ext(&srv, OID_X509_EXT_SUBJECT_ALT_NAME);
    assert!(
        !san.critical,
        "subject is not empty, so SAN is not critical"
    );
    match ext(&srv, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER).parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(a) => {
            assert_eq!(a.key_identifier.as_ref().map(|k| k.0.to_vec()), Some(ski));
        }
        other => panic!("{other:?}"),
    }
    // Positive serial, at least 64 bits, no leading zero byte in the DER INTEGER.
    let raw = srv.raw_serial();
    assert!(raw.len() * 8 >= 64, "{raw:?}");
    assert!(raw[0] != 0 && raw[0] < 0x80, "{raw:?}");
}

#[test]
fn validity_serial_and_fingerprint_agree_with_openssl() {
    let f = fixture();
    let info = cert_info(&f.server.cert_pem).expect("info");
    let now = chrono::Utc::now().timestamp();
    assert!((now - 5 * 60 - info.not_before_unix).abs() < 60, "{info:?}");
    assert!(
        (now + 90 * 86_400 - info.not_after_unix).abs() < 60,
        "{info:?}"
    );
    assert!(info.not_after.ends_with('Z'));
    assert_eq!(
        info.dns_names,
        vec![DOMAIN.to_string(), format!("*.{DOMAIN}")]
    );

    let serial = openssl_ok(&["x509", "-in", "tls.crt", "-noout", "-serial"], &f.state);
    assert_eq!(
        serial.trim().trim_start_matches("serial=").to_lowercase(),
        info.serial
    );
    let fp = openssl_ok(
        &[
            "x509",
            "-in",
            "tls.crt",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
        &f.state,
    );
    let fp = fp
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or("")
        .replace(':', "")
        .to_lowercase();
    assert_eq!(fp, info.sha256);
    let end = openssl_ok(&["x509", "-in", "tls.crt", "-noout", "-enddate"], &f.state);
    let end = end.trim().trim_start_matches("notAfter=");
    let parsed =
        chrono::NaiveDateTime::parse_from_str(end, "%b %e %H:%M:%S %Y GMT").expect("openssl date");
    assert_eq!(parsed.and_utc().timestamp(), info.not_after_unix);
}

#[test]
fn serials_differ_between_issuances() {
    let f = fixture();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let c = f.ca.issue_server(DOMAIN, 90).expect("issue");
        assert!(seen.insert(cert_info(&c.cert_pem).expect("info").serial));
    }
    assert!(seen.insert(cert_info(&f.server.cert_pem).expect("info").serial));
}

#[test]
fn server_key_matches_certificate() {
    let f = fixture();
    let from_cert = openssl_ok(&["x509", "-in", "tls.crt", "-noout", "-pubkey"], &f.state);
    let from_key = openssl_ok(&["pkey", "-in", "tls.key", "-pubout"], &f.state);
    assert_eq!(from_cert, from_key);
    assert!(from_cert.contains("BEGIN PUBLIC KEY"));

    // Renewal keeping the key: openssl still sees the same public key.
    let renewed =
        f.ca.issue_server_with_key(DOMAIN, 90, Some(&f.server.key_pem))
            .expect("renew");
    std::fs::write(f.state.join("renewed.crt"), &renewed.cert_pem).expect("write");
    let from_renewed = openssl_ok(
        &["x509", "-in", "renewed.crt", "-noout", "-pubkey"],
        &f.state,
    );
    assert_eq!(from_renewed, from_key);
}

#[test]
fn ca_key_is_private_from_the_start() {
    let f = fixture();
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode(&f.state), 0o700);
    assert_eq!(mode(&f.state.join(CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&f.state.join(CA_CERT_FILE)), 0o644);
    // The key file is a P-256 key openssl can read.
    let out = openssl_ok(&["pkey", "-in", CA_KEY_FILE, "-noout", "-text"], &f.state);
    assert!(out.contains("P-256") || out.contains("prime256v1"), "{out}");
}
