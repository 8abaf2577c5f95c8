//! A TLS handshake with the proxy on a host's loopback, through the SSH connection: proof that
//! the proxy actually serves, with the certificate the fleet's CA signed for the tunnel's
//! domain. Nothing listens on the controller and no port is opened on the host: the bytes
//! travel in an SSH direct-tcpip channel.
//!
//! The chain is verified against the fleet's CA only (no system or bundled roots), and the
//! name against the SNI sent, so a proxy serving a certificate from elsewhere, or for another
//! name, fails the probe.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, CertificateError, ClientConfig, RootCertStore};

use crate::ssh::{ErrorKind, Session};

/// What the handshake showed of the server: its leaf certificate and the protocol spoken.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsPeer {
    /// The leaf's serial number, lowercase hex without leading zero bytes (as
    /// `openssl x509 -serial` prints it, lowercased).
    pub serial: String,
    /// The leaf's notAfter, RFC 3339 UTC.
    pub not_after: String,
    /// SHA-256 of the leaf's DER encoding, lowercase hex.
    pub sha256: String,
    /// The protocol version negotiated (`TLSv1_3` or `TLSv1_2`).
    pub protocol: String,
}

/// Does a TLS 1.2/1.3 handshake with `addr:port` as seen from the host behind `session`, with
/// SNI `server_name`, trusting only the certificates of `ca_pem`, within `timeout` (channel
/// opening included). The error is one readable line naming the address and the SNI.
pub async fn handshake(
    session: &Session,
    addr: &str,
    port: u16,
    server_name: &str,
    ca_pem: &str,
    timeout: Duration,
) -> Result<TlsPeer, String> {
    let what = format!("TLS handshake with {addr}:{port} (SNI {server_name})");
    let config = client_config(ca_pem).map_err(|e| format!("{what}: {e}"))?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| format!("{what}: {server_name:?} is not a valid DNS name for SNI"))?;
    let fut = async {
        let stream = session.open_tcp(addr, port).await.map_err(|e| {
            if e.kind == ErrorKind::Unreachable {
                "connection refused".to_string()
            } else {
                e.to_string()
            }
        })?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| describe_io(&e, server_name))?;
        let (_, conn) = tls.get_ref();
        let protocol = conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("the server sent no certificate")?;
        peer_of(leaf.as_ref(), protocol)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no TLS answer within {}", human(timeout))),
    }
}

/// A client configuration trusting exactly the certificates of `ca_pem`, TLS 1.2 and 1.3,
/// with the crypto provider the rest of the program's TLS uses (ring).
pub fn client_config(ca_pem: &str) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for pem in x509_parser::pem::Pem::iter_from_buffer(ca_pem.as_bytes()) {
        let pem = pem.map_err(|e| format!("the fleet's CA certificate does not parse: {e}"))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        roots
            .add(CertificateDer::from(pem.contents))
            .map_err(|e| format!("the fleet's CA certificate is not usable: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the fleet's CA PEM holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The facts of a leaf certificate given as DER.
fn peer_of(der: &[u8], protocol: String) -> Result<TlsPeer, String> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let info = crate::pki::cert_info(&pem)
        .map_err(|e| format!("the server's certificate does not parse: {e}"))?;
    Ok(TlsPeer {
        serial: info.serial,
        not_after: info.not_after,
        sha256: info.sha256,
        protocol,
    })
}

/// One line for a failed handshake.
fn describe_io(e: &std::io::Error, server_name: &str) -> String {
    if let Some(err) = e.get_ref().and_then(|x| x.downcast_ref::<rustls::Error>()) {
        return describe_tls(err, server_name);
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            "the connection closed during the handshake (not a TLS server?)".into()
        }
        _ => format!("{e}"),
    }
}

fn describe_tls(e: &rustls::Error, server_name: &str) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "certificate not signed by the fleet's CA".into(),
            CertificateError::NotValidForName => {
                format!("certificate not valid for {server_name}")
            }
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "certificate not valid for {server_name} (it names {})",
                presented.join(", ")
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet".into()
            }
            CertificateError::BadSignature => "certificate signature does not verify".into(),
            other => format!("certificate rejected: {other:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the server did not answer in TLS ({e})")
        }
        rustls::Error::AlertReceived(alert) => {
            format!("the server ended the handshake (alert {alert:?})")
        }
        other => other.to_string(),
    }
}

/// `5s`, `1500ms`.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::PrivateKeyDer;

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).expect("CA cert");
        Ca { cert, key }
    }

    /// A leaf for `names` signed by `ca`: (cert DER, key DER, serial hex).
    fn leaf(ca: &Ca, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>, String) {
        let key = KeyPair::generate().expect("leaf key");
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc, 0xde, 0xf1]));
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.cert.der(), &ca.key).expect("issuer");
        let cert = p.signed_by(&key, &issuer).expect("leaf cert");
        (
            cert.der().clone(),
            PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
            "0abcdef1".into(),
        )
    }

    /// A TLS server on 127.0.0.1 answering one handshake per connection; returns its port.
    async fn tls_server(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> u16 {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut s) = acceptor.accept(sock).await {
                        let _ = s.write_all(b"hello").await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        port
    }

    /// The probe's client side over a plain local TCP connection (the SSH channel is the
    /// only other difference, covered by the testbed test).
    async fn probe(port: u16, sni: &str, ca_pem: &str) -> Result<TlsPeer, String> {
        let config = client_config(ca_pem)?;
        let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| describe_io(&e, sni))?;
        let mut buf = Vec::new();
        let _ = tls.read_to_end(&mut buf).await;
        assert_eq!(buf, b"hello");
        let (_, conn) = tls.get_ref();
        let der = conn.peer_certificates().expect("peer certs")[0].to_vec();
        peer_of(
            &der,
            format!("{:?}", conn.protocol_version().expect("version")),
        )
    }

    #[tokio::test]
    async fn verifies_chain_and_name_against_the_given_ca_only() {
        let fleet = ca("fleet CA");
        let other = ca("other CA");
        let (cert, key, serial) = leaf(&fleet, &["t.example.com", "*.t.example.com"]);
        let der_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(cert.as_ref()));
        let port = tls_server(cert, key).await;

        let ok = probe(port, "t.example.com", &fleet.cert.pem())
            .await
            .expect("fleet CA and the right name");
        assert_eq!(ok.serial, serial);
        assert_eq!(ok.sha256, der_sha);
        assert_eq!(ok.protocol, "TLSv1_3");
        assert!(ok.not_after.ends_with('Z'), "{ok:?}");
        // A wildcard name of the domain is valid too.
        probe(port, "echo.t.example.com", &fleet.cert.pem())
            .await
            .expect("wildcard");

        let e = probe(port, "t.example.com", &other.cert.pem())
            .await
            .expect_err("another CA");
        assert_eq!(e, "certificate not signed by the fleet's CA");
        let e = probe(port, "other.example.com", &fleet.cert.pem())
            .await
            .expect_err("wrong name");
        assert!(
            e.starts_with("certificate not valid for other.example.com"),
            "{e}"
        );
        // Two CAs in the PEM: either may sign.
        let both = format!("{}{}", other.cert.pem(), fleet.cert.pem());
        probe(port, "t.example.com", &both).await.expect("bundle");
    }

    #[tokio::test]
    async fn a_plain_tcp_server_is_not_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let _ = s
                    .write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nplain http\n")
                    .await;
            }
        });
        let fleet = ca("fleet CA");
        let e = probe(port, "t.example.com", &fleet.cert.pem())
            .await
            .expect_err("plain HTTP");
        assert!(e.starts_with("the server did not answer in TLS"), "{e}");
    }

    #[test]
    fn a_ca_pem_without_a_certificate_is_refused() {
        assert_eq!(
            client_config("").err().as_deref(),
            Some("the fleet's CA PEM holds no certificate")
        );
        let e =
            client_config("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
                .err()
                .unwrap_or_default();
        assert!(e.starts_with("the fleet's CA certificate"), "{e}");
        assert_eq!(human(Duration::from_secs(5)), "5s");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }
}
