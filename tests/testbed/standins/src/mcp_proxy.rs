//! Stand-in mcp-proxy (testbed only).
//!
//! Started by the stand-in docker for images containing "mcp-proxy", with the service's
//! command as arguments (`-config /config/mcp-proxy.yaml`; the default). Container paths map
//! to host paths through the container's volumes (TESTBED_VOLUMES, set by the stand-in
//! docker: `[[host, container, mode], ...]`; unset: paths are the container's own). Listens
//! on TESTBED_PROXY_BIND (default 127.0.0.1).
//!
//! Modelled behaviour:
//! - Reads its config ONCE at start (no hot reload). Validates: routes must be a map (a list
//!   fails with "cannot unmarshal !!seq into map[string]string"), upstreams exactly
//!   scheme://host:port, tunnel_domain required when a route key is a bare subdomain,
//!   tls.cert_file / tls.key_file readable by the container user (TESTBED_USER, from compose
//!   `user:`; judged from mode bits: a non-root user needs "other" read permission, else
//!   "open /data/tls.key: permission denied"). Exits 1 on an invalid config.
//! - Terminates TLS (1.2/1.3) on 127.0.0.1:<port of listen_addr> (default 8080) with
//!   tls.cert_file / tls.key_file; a pair that does not load exits 1 at start ("tls: ...").
//!   Any SNI gets the same certificate.
//! - Polls tls.cert_file every TESTBED_CERT_POLL_MS (default 1000); on a change it loads the
//!   new pair for NEW connections and logs "reloaded TLS certificate" (a pair that does not
//!   load is logged once and retried at the next poll; the previous one stays in use).
//! - GET /testbed/info (over TLS) answers JSON {started_ms, cert_reloads, config_sha256,
//!   cert_sha256, routes, tunnel_domain} so tests see what the running proxy uses.
//! - An image whose reference (TESTBED_IMAGE) contains `bad-config` rejects every config: it
//!   logs a fatal config error and exits 1 at start.

use crate::common::{Signals, json_str, now_ms, py_repr, rfc3339_now, strerror};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::Duration;

fn log(level: &str, msg: &str) {
    let line = format!(
        "{{\"time\": {}, \"level\": {}, \"msg\": {}}}\n",
        json_str(&rfc3339_now()),
        json_str(level),
        json_str(msg)
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn fatal(msg: &str) -> ! {
    log("error", msg);
    std::process::exit(1);
}

/// The container's volumes: (host path, container path). Unset (the binary runs inside a real
/// container): every path is the container's own.
fn volumes() -> Vec<(String, String)> {
    let Ok(raw) = std::env::var("TESTBED_VOLUMES") else {
        return vec![(String::new(), "/".to_string())];
    };
    let v: Value = serde_json::from_str(&raw).unwrap_or(Value::Array(Vec::new()));
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some((
                        e.get(0)?.as_str()?.to_string(),
                        e.get(1)?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The host path of a container path: the volume with the longest container path covering it.
fn host_path(vols: &[(String, String)], cpath: &str) -> Option<String> {
    let mut best: Option<&(String, String)> = None;
    for v in vols {
        let dst = &v.1;
        let covers = cpath == dst || cpath.starts_with(&format!("{}/", dst.trim_end_matches('/')));
        if covers && best.is_none_or(|b| dst.len() > b.1.len()) {
            best = Some(v);
        }
    }
    let (src, dst) = best?;
    Some(format!(
        "{src}{}",
        &cpath[dst.trim_end_matches('/').len()..]
    ))
}

/// Would uid:gid be able to open path for reading (mode bits only)?
fn user_can_read(path: &str, uid: u32, gid: u32) -> bool {
    if uid == 0 {
        return std::path::Path::new(path).exists();
    }
    let abs = if path.starts_with('/') {
        path.to_string()
    } else {
        format!(
            "{}/{path}",
            std::env::current_dir().unwrap_or_default().display()
        )
    };
    let parts: Vec<&str> = abs.split('/').collect();
    for i in 1..=parts.len() {
        let p = parts[..i].join("/");
        let p = if p.is_empty() { "/".to_string() } else { p };
        let Ok(md) = std::fs::metadata(&p) else {
            return false;
        };
        let mut need = if i == parts.len() { 0o004 } else { 0o001 };
        if md.uid() == uid {
            need <<= 6;
        } else if md.gid() == gid {
            need <<= 3;
        }
        if md.mode() & need == 0 {
            return false;
        }
    }
    true
}

/// The container user (compose `user:`, "uid[:gid]"); root when unset or not numeric.
fn container_user() -> (u32, u32) {
    let u = std::env::var("TESTBED_USER").unwrap_or_default();
    let (uid, gid) = u.split_once(':').unwrap_or((&u, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let uid = if digits(uid) {
        uid.parse().unwrap_or(0)
    } else {
        0
    };
    let gid = if digits(gid) {
        gid.parse().unwrap_or(uid)
    } else {
        uid
    };
    (uid, gid)
}

fn read_as_user(vols: &[(String, String)], cpath: &str) -> Vec<u8> {
    let hp = host_path(vols, cpath);
    let Some(hp) = hp.filter(|p| std::path::Path::new(p).exists()) else {
        fatal(&format!("open {cpath}: no such file or directory"));
    };
    let (uid, gid) = container_user();
    if !user_can_read(&hp, uid, gid) {
        fatal(&format!("open {cpath}: permission denied"));
    }
    std::fs::read(&hp).unwrap_or_else(|e| fatal(&format!("open {cpath}: {}", strerror(&e))))
}

/// `scheme://host:port` exactly (the Python stand-in's `^(http|https)://[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$`).
fn upstream_ok(v: &str) -> bool {
    let Some(rest) = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
    else {
        return false;
    };
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-[]:".contains(&b))
    {
        return false;
    }
    // The last ':' ends the host; what follows is 1-5 digits, and the host is not empty.
    let Some((host, port)) = rest.rsplit_once(':') else {
        return false;
    };
    !host.is_empty() && (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit())
}

/// Python's truthiness of a YAML value.
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

/// A YAML scalar as Python's `str()` of it.
fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

fn load_config(
    vols: &[(String, String)],
    cpath: &str,
) -> (Vec<u8>, serde_json::Map<String, Value>) {
    let raw = read_as_user(vols, cpath);
    let text = String::from_utf8_lossy(&raw);
    let cfg: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| fatal(&format!("failed to parse config: {e}")))
    };
    let cfg = match cfg {
        Value::Null => serde_json::Map::new(),
        Value::Object(m) => m,
        Value::Bool(false) => serde_json::Map::new(),
        _ => fatal("failed to parse config: yaml: unmarshal errors: config is not a map"),
    };
    let routes = cfg.get("routes");
    if truthy(routes) {
        match routes {
            Some(Value::Array(_)) => fatal(
                "failed to parse config: yaml: unmarshal errors:\n  cannot unmarshal !!seq into map[string]string",
            ),
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let ok = v.as_str().is_some_and(upstream_ok);
                    if !ok {
                        let shown = match v {
                            Value::String(s) => py_repr(s),
                            other => py_str(other),
                        };
                        fatal(&format!(
                            "invalid upstream for route {}: {shown}: must be scheme://host:port with an explicit port and no path",
                            py_repr(k)
                        ));
                    }
                    if !k.contains('.') && !truthy(cfg.get("tunnel_domain")) {
                        fatal(&format!(
                            "route {} is a bare subdomain: tunnel_domain is required",
                            py_repr(k)
                        ));
                    }
                }
            }
            _ => fatal("failed to parse config: routes: cannot unmarshal into map[string]string"),
        }
    }
    let tls = cfg.get("tls");
    for key in ["cert_file", "key_file"] {
        if !truthy(tls.and_then(|t| t.get(key))) {
            fatal(&format!("tls.{key} is required"));
        }
    }
    (raw, cfg)
}

/// `bad-config` image: the config is rejected (a field this proxy does not know).
fn bad_config(cpath: &str, raw: &[u8]) -> ! {
    let (mut field, mut line) = ("routes".to_string(), 1);
    for (i, text) in String::from_utf8_lossy(raw).lines().enumerate() {
        let name: String = text
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let starts_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if starts_ok && text[name.len()..].starts_with(':') {
            field = name;
            line = i + 1;
            break;
        }
    }
    log(
        "fatal",
        &format!(
            "config: {cpath}: yaml: unmarshal errors: line {line}: field {field} not found in type config.Config"
        ),
    );
    std::process::exit(1);
}

/// A server configuration from the certificate (chain) and key files.
fn tls_config(cert_hp: &str, key_hp: &str) -> Result<Arc<ServerConfig>, String> {
    let cert_pem = std::fs::read(cert_hp).map_err(|e| strerror(&e))?;
    let key_pem = std::fs::read(key_hp).map_err(|e| strerror(&e))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate: {e:?}"))?;
    if certs.is_empty() {
        return Err("certificate: no certificate in the file".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("key: {e:?}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(cfg))
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// What GET /testbed/info shows.
struct Info {
    started_ms: u64,
    cert_reloads: AtomicU64,
    config_sha256: String,
    cert_sha256: Mutex<String>,
    routes: Vec<String>,
    tunnel_domain: Value,
}

impl Info {
    fn json(&self) -> String {
        let routes: Vec<String> = self.routes.iter().map(|r| json_str(r)).collect();
        let domain = match &self.tunnel_domain {
            Value::Null => "null".to_string(),
            Value::String(s) => json_str(s),
            other => other.to_string(),
        };
        format!(
            "{{\"started_ms\": {}, \"cert_reloads\": {}, \"config_sha256\": {}, \"cert_sha256\": {}, \"routes\": [{}], \"tunnel_domain\": {domain}}}",
            self.started_ms,
            self.cert_reloads.load(Ordering::SeqCst),
            json_str(&self.config_sha256),
            json_str(&self.cert_sha256.lock().unwrap_or_else(|p| p.into_inner())),
            routes.join(", ")
        )
    }
}

/// One HTTP/1.0 request over TLS, with the configuration current when the connection arrived.
fn serve_conn(cfg: Arc<ServerConfig>, info: &Info, tcp: TcpStream) {
    let peer = tcp
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(10)));
    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            log(
                "info",
                &format!("http: TLS handshake error from {peer}: {e}"),
            );
            return;
        }
    }
    let mut r = BufReader::new(&mut tls);
    let mut line = Vec::new();
    if r.by_ref()
        .take(65_537)
        .read_until(b'\n', &mut line)
        .unwrap_or(0)
        == 0
    {
        return;
    }
    loop {
        let mut h = Vec::new();
        let n = r
            .by_ref()
            .take(65_537)
            .read_until(b'\n', &mut h)
            .unwrap_or(0);
        if n == 0 || h == b"\r\n" || h == b"\n" {
            break;
        }
    }
    drop(r);
    let text = String::from_utf8_lossy(&line);
    let words: Vec<&str> = text.split_whitespace().collect();
    let (code, reason, body) = if words.len() < 2 {
        (
            400,
            "Bad Request",
            "{\"error\":\"bad request\"}".to_string(),
        )
    } else if words[0] != "GET" {
        (
            501,
            "Unsupported method",
            "{\"error\":\"unsupported method\"}".to_string(),
        )
    } else if words[1].starts_with("/testbed/info") {
        (200, "OK", info.json())
    } else {
        (
            404,
            "Not Found",
            "{\"error\":\"no route for host\"}".to_string(),
        )
    };
    let msg = format!(
        "HTTP/1.0 {code} {reason}\r\nServer: mcp-proxy-testbed\r\nDate: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        crate::common::http_date(),
        body.len()
    );
    let _ = tls.write_all(msg.as_bytes());
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
}

/// Runs the proxy; `args` are the container command's words.
pub fn main(args: &[String]) -> i32 {
    let signals = Signals::block();
    let mut cpath = "/config/mcp-proxy.yaml".to_string();
    for (i, a) in args.iter().enumerate() {
        if (a == "-config" || a == "--config") && i + 1 < args.len() {
            cpath = args[i + 1].clone();
        } else if let Some(v) = a
            .strip_prefix("-config=")
            .or_else(|| a.strip_prefix("--config="))
        {
            cpath = v.to_string();
        }
    }
    let vols = volumes();
    let started_ms = now_ms();
    let (raw, cfg) = load_config(&vols, &cpath);
    if std::env::var("TESTBED_IMAGE")
        .unwrap_or_default()
        .contains("bad-config")
    {
        bad_config(&cpath, &raw);
    }
    let tls = cfg.get("tls").cloned().unwrap_or(Value::Null);
    let cert_c = py_str(&tls["cert_file"]);
    let key_c = py_str(&tls["key_file"]);
    let cert = read_as_user(&vols, &cert_c);
    read_as_user(&vols, &key_c);
    let (Some(cert_hp), Some(key_hp)) = (host_path(&vols, &cert_c), host_path(&vols, &key_c))
    else {
        fatal(&format!("open {cert_c}: no such file or directory"));
    };
    let current = match tls_config(&cert_hp, &key_hp) {
        Ok(c) => Arc::new(RwLock::new(c)),
        Err(e) => fatal(&format!("tls: loading {cert_c} and {key_c}: {e}")),
    };
    let mut routes: Vec<String> = match cfg.get("routes") {
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    routes.sort();
    let info = Arc::new(Info {
        started_ms,
        cert_reloads: AtomicU64::new(0),
        config_sha256: sha256_hex(&raw),
        cert_sha256: Mutex::new(sha256_hex(&cert)),
        routes,
        tunnel_domain: cfg.get("tunnel_domain").cloned().unwrap_or(Value::Null),
    });
    let listen = if truthy(cfg.get("listen_addr")) {
        py_str(&cfg["listen_addr"])
    } else {
        ":8080".to_string()
    };
    let port: u16 = listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| fatal(&format!("listen tcp {listen}: invalid port")));
    // The testbed's containers share the host's loopback; in a real container
    // TESTBED_PROXY_BIND=0.0.0.0 makes the port reachable from outside it.
    // Two stacks on one testbed host listen on their project's own address (TESTBED_ADDR,
    // set by the stand-in docker from standin.json's addr_by_project).
    let bind = std::env::var("TESTBED_PROXY_BIND")
        .ok()
        .or_else(|| std::env::var("TESTBED_ADDR").ok())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into());
    let listener = TcpListener::bind((bind.as_str(), port))
        .unwrap_or_else(|e| fatal(&format!("listen tcp {listen}: {}", strerror(&e))));
    {
        let (current, info) = (Arc::clone(&current), Arc::clone(&info));
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let cfg = Arc::clone(&current.read().unwrap_or_else(|p| p.into_inner()));
                let info = Arc::clone(&info);
                thread::spawn(move || serve_conn(cfg, &info, conn));
            }
        });
    }
    let domain = match &info.tunnel_domain {
        Value::Null => "None".to_string(),
        other => py_str(other),
    };
    log(
        "info",
        &format!(
            "mcp-proxy (testbed stand-in) listening on {listen} (TLS) with {} routes, tunnel_domain={domain}",
            info.routes.len()
        ),
    );
    let poll_ms: u64 = std::env::var("TESTBED_CERT_POLL_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1000);
    let mut failed: Option<String> = None;
    while signals
        .wait(Some(Duration::from_millis(poll_ms.max(1))))
        .is_none()
    {
        let Ok(bytes) = std::fs::read(&cert_hp) else {
            continue;
        };
        let h = sha256_hex(&bytes);
        if *info.cert_sha256.lock().unwrap_or_else(|p| p.into_inner()) == h {
            continue;
        }
        match tls_config(&cert_hp, &key_hp) {
            Err(e) => {
                if failed.as_deref() != Some(h.as_str()) {
                    // once per certificate; retried at every poll
                    log(
                        "error",
                        &format!(
                            "failed to reload TLS certificate {cert_c}: {e} (the previous certificate stays in use)"
                        ),
                    );
                    failed = Some(h);
                }
            }
            Ok(c) => {
                *current.write().unwrap_or_else(|p| p.into_inner()) = c;
                *info.cert_sha256.lock().unwrap_or_else(|p| p.into_inner()) = h.clone();
                info.cert_reloads.fetch_add(1, Ordering::SeqCst);
                log(
                    "info",
                    &format!("reloaded TLS certificate {cert_c} (sha256 {})", &h[..12]),
                );
            }
        }
    }
    log("info", "shutting down");
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams() {
        assert!(upstream_ok("http://10.0.0.5:9000"));
        assert!(upstream_ok("https://hello-mcp:443"));
        assert!(upstream_ok("http://[::1]:80"));
        assert!(!upstream_ok("http://10.0.0.5"));
        assert!(!upstream_ok("http://10.0.0.5:9000/path"));
        assert!(!upstream_ok("ftp://x:1"));
        assert!(!upstream_ok("http://:80"));
        assert!(!upstream_ok("http://x:123456"));
    }

    #[test]
    fn volume_mapping() {
        let vols = vec![
            ("/srv/a/data".to_string(), "/data".to_string()),
            ("/srv/a/cfg".to_string(), "/config/".to_string()),
            ("/srv/a/deep".to_string(), "/data/deep".to_string()),
        ];
        assert_eq!(
            host_path(&vols, "/data/tls.crt").as_deref(),
            Some("/srv/a/data/tls.crt")
        );
        assert_eq!(
            host_path(&vols, "/data/deep/x").as_deref(),
            Some("/srv/a/deep/x")
        );
        assert_eq!(
            host_path(&vols, "/config/mcp-proxy.yaml").as_deref(),
            Some("/srv/a/cfg/mcp-proxy.yaml")
        );
        assert_eq!(host_path(&vols, "/database"), None);
        let own = vec![(String::new(), "/".to_string())];
        assert_eq!(
            host_path(&own, "/data/tls.crt").as_deref(),
            Some("/data/tls.crt")
        );
    }
}
