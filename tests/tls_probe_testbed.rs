//! The TLS probe against a deployed host: a handshake with the proxy on the host's loopback,
//! through the SSH connection, verified against the fleet's CA only.

mod common;

use std::time::{Duration, Instant};

use common::{Testbed, describe};
use tunnelfleet::ops::tls_probe::{TlsPeer, handshake};
use tunnelfleet::ssh::Session;

const DOMAIN: &str = "testbed.example.com";
const CRT: &str = "/srv/mcp-tunnel/shared/data/tls.crt";

struct Fleet {
    tb: Testbed,
    state: String,
}

impl Fleet {
    fn deployed() -> Fleet {
        let tb = Testbed::up(1, &[]);
        let state = tb.state_with_ca();
        let token = tb.path().join("token").to_string_lossy().into_owned();
        let out = tb.tf("deploy", &["--state-dir", &state, "--token-file", &token]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        Fleet { tb, state }
    }

    fn fleet_ca(&self) -> String {
        std::fs::read_to_string(format!("{}/pki/testbed/ca.crt", self.state)).expect("ca.crt")
    }

    async fn session(&self) -> Session {
        self.tb.session("h1").await
    }

    /// What the host itself says of the certificate on disk: serial (lowercase hex) and the
    /// sha256 of its DER.
    fn on_disk(&self) -> (String, String) {
        let serial = self
            .tb
            .host_exec("h1", &format!("openssl x509 -noout -serial -in {CRT}"));
        let sha = self.tb.host_exec(
            "h1",
            &format!("openssl x509 -outform DER -in {CRT} | sha256sum | cut -d' ' -f1"),
        );
        (
            serial.trim().trim_start_matches("serial=").to_lowercase(),
            sha.trim().to_string(),
        )
    }
}

async fn probe(s: &Session, port: u16, sni: &str, ca: &str) -> Result<TlsPeer, String> {
    handshake(s, "127.0.0.1", port, sni, ca, Duration::from_secs(5)).await
}

/// Another CA, unknown to the fleet.
fn other_ca() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "not the fleet's CA");
    p.self_signed(&key).expect("self-signed").pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_answers_with_the_fleets_certificate_and_nothing_else_passes() {
    let f = Fleet::deployed();
    let s = f.session().await;
    let ca = f.fleet_ca();

    // The proxy answers with the certificate on disk, verified against the fleet's CA.
    let peer = probe(&s, 8080, DOMAIN, &ca)
        .await
        .expect("fleet CA, tunnel domain");
    let (serial, sha) = f.on_disk();
    assert_eq!(peer.serial, serial);
    assert_eq!(peer.sha256, sha);
    let end =
        f.tb.host_exec("h1", &format!("openssl x509 -noout -enddate -in {CRT}"));
    let end = chrono::NaiveDateTime::parse_from_str(
        end.trim().trim_start_matches("notAfter="),
        "%b %e %H:%M:%S %Y GMT",
    )
    .expect("openssl enddate");
    assert_eq!(
        peer.not_after,
        end.and_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert!(peer.protocol.starts_with("TLSv1_"), "{peer:?}");

    // Another CA: refused, with the address and SNI named.
    let e = probe(&s, 8080, DOMAIN, &other_ca())
        .await
        .expect_err("another CA must fail");
    assert_eq!(
        e,
        format!(
            "TLS handshake with 127.0.0.1:8080 (SNI {DOMAIN}): certificate not signed by the fleet's CA"
        )
    );

    // A name the certificate does not cover.
    let e = probe(&s, 8080, "other.example.org", &ca)
        .await
        .expect_err("wrong name must fail");
    assert!(
        e.starts_with(
            "TLS handshake with 127.0.0.1:8080 (SNI other.example.org): certificate not valid for other.example.org"
        ),
        "{e}"
    );

    // Nothing listening.
    let e = probe(&s, 8081, DOMAIN, &ca).await.expect_err("port 8081");
    assert_eq!(
        e,
        format!("TLS handshake with 127.0.0.1:8081 (SNI {DOMAIN}): connection refused")
    );

    // Something listening that is not TLS: sshd.
    let e = probe(&s, 22, DOMAIN, &ca).await.expect_err("sshd");
    assert!(
        e.starts_with(&format!(
            "TLS handshake with 127.0.0.1:22 (SNI {DOMAIN}): the server did not answer in TLS"
        )),
        "{e}"
    );
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_hung_host_times_out() {
    let f = Fleet::deployed();
    let s = f.session().await;
    let ca = f.fleet_ca();
    let before = probe(&s, 8080, DOMAIN, &ca).await.expect("first probe");

    let out = f.tb.tf(
        "renew-cert",
        &["--state-dir", &f.state, "--renew-before", "2400h"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let (serial, sha) = f.on_disk();
    assert_ne!(serial, before.serial);
    // The proxy polls its certificate: new connections get the new one (poll, with a deadline).
    let deadline = Instant::now() + Duration::from_secs(30);
    let now = loop {
        let p = probe(&s, 8080, DOMAIN, &ca)
            .await
            .expect("probe after renewal");
        if p.serial == serial || Instant::now() > deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(now.serial, serial, "the proxy still serves {before:?}");
    assert_eq!(now.sha256, sha);

    // A hung host: no answer within the deadline, said as such.
    f.tb.fault("h1", "hang");
    let e = handshake(&s, "127.0.0.1", 8080, DOMAIN, &ca, Duration::from_secs(2))
        .await
        .expect_err("hung host");
    f.tb.fault("h1", "resume");
    assert_eq!(
        e,
        format!("TLS handshake with 127.0.0.1:8080 (SNI {DOMAIN}): no TLS answer within 2s")
    );
}
