//! Stand-in cloudflared connector (testbed only; never talks to the real edge).
//!
//! Started by the stand-in docker for images containing "cloudflared", with the service's
//! command as arguments (e.g. `tunnel --no-autoupdate run --url http://localhost:8080`).
//! Behaviour modelled on the real connector:
//! - TUNNEL_TOKEN from the environment (base64 JSON {"a","t","s"}); a malformed token exits 1
//!   ("Provided Tunnel token is not valid.").
//! - Connects to the stand-in edge at TESTBED_EDGE (host:port, set by the testbed);
//!   registration takes TESTBED_REGISTER_MS (default 300 ms), then logs four "Registered
//!   tunnel connection connIndex=N ..." lines.
//! - Metrics server on the first free port of 127.0.0.1:20241-20245 (of TESTBED_METRICS_BIND's
//!   address when set, e.g. 0.0.0.0 in a real container, as cloudflared does there), each bound
//!   as the host port its network namespace publishes it on (TESTBED_PUBLISHED), or --metrics
//!   ADDR:PORT:
//!   /ready answers 200 {"status":200,"readyConnections":4,"connectorId":...} once
//!   registered, 503 with readyConnections 0 otherwise; /metrics, /healthcheck.
//! - The edge refusing the token: logs the error and exits 1 (a restart policy then restarts
//!   it). A lost edge connection is retried with back-off, and the retry re-registers with the
//!   same token (refused after a rotation -> exit 1).
//! - SIGTERM/SIGINT: "Initiating graceful shutdown", keeps the connection and /ready for the
//!   grace period (--grace-period, else TESTBED_GRACE_MS, default 2000 ms; the real default is
//!   30 s), then unregisters and exits 0. A second signal exits at once.
//!
//! The token is never printed or logged.
//!
//! Failure modes, selected by the image reference (TESTBED_IMAGE, set by the stand-in docker):
//! - `never-ready`: starts, logs its start lines and connector id, serves metrics, but never
//!   registers: /ready answers 503 forever; it keeps running and logs failed dials.
//! - `crash-after-Ns` (e.g. `crash-after-5s`): registers normally, then exits 1 N seconds
//!   after registering (a restart policy restarts it; every run re-registers).

use crate::common::{Signals, http_date, rfc3339_now, uuid4};
use base64::Engine as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const VERSION: &str = "2024.6.1-testbed";

fn log(level: &str, msg: &str) {
    let line = format!("{} {level} {msg}\n", rfc3339_now());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Shared state of the connector's threads.
struct State {
    connector_id: String,
    ready: AtomicU32,
    shutting_down: AtomicBool,
    /// The live edge connection (for the unregister at shutdown); writes go through the lock.
    sock: Mutex<Option<TcpStream>>,
    registered: (Mutex<bool>, Condvar),
}

impl State {
    fn send(&self, stream: &TcpStream, msg: &serde_json::Value) -> std::io::Result<()> {
        let mut line = msg.to_string();
        line.push('\n');
        // One writer at a time (heartbeat and shutdown both send).
        let _g = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        (&*stream).write_all(line.as_bytes())
    }
}

/// A Go-style duration (`2s`, `500ms`, `1m30s`, a bare number is seconds) in milliseconds.
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let mut total = 0.0f64;
    let mut num = String::new();
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            rest = &rest[1..];
            continue;
        }
        let (unit, len) = if rest.starts_with("ms") {
            (1.0, 2)
        } else if rest.starts_with('s') {
            (1000.0, 1)
        } else if rest.starts_with('m') {
            (60_000.0, 1)
        } else if rest.starts_with('h') {
            (3_600_000.0, 1)
        } else {
            return Err(format!("bad duration {s:?}"));
        };
        total += num.parse::<f64>().unwrap_or(0.0) * unit;
        num.clear();
        rest = &rest[len..];
    }
    if !num.is_empty() {
        total += num
            .parse::<f64>()
            .map_err(|_| format!("bad duration {s:?}"))?
            * 1000.0;
    }
    Ok(total as u64)
}

struct Opts {
    metrics: Option<String>,
    grace_ms: Option<u64>,
    url: Option<String>,
}

fn parse_args(argv: &[String]) -> Opts {
    let mut o = Opts {
        metrics: None,
        grace_ms: None,
        url: None,
    };
    let mut i = 0;
    while i < argv.len() {
        let a = &argv[i];
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if a.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || -> String {
            if let Some(v) = &inline {
                return v.clone();
            }
            i += 1;
            argv.get(i).cloned().unwrap_or_default()
        };
        match key.as_str() {
            "--metrics" => o.metrics = Some(value()),
            "--grace-period" => match parse_duration_ms(&value()) {
                Ok(ms) => o.grace_ms = Some(ms),
                Err(e) => {
                    log("ERR", &format!("invalid --grace-period: {e}"));
                    std::process::exit(2);
                }
            },
            "--url" => o.url = Some(value()),
            "--token" => {
                log(
                    "ERR",
                    "testbed stand-in: pass the token in TUNNEL_TOKEN, not on the command line",
                );
                std::process::exit(2);
            }
            "--loglevel" | "--protocol" | "--edge-ip-version" | "--region" | "--logfile"
            | "--origincert" => {
                value();
            }
            _ => {}
        }
        i += 1;
    }
    o
}

fn reply(stream: &mut TcpStream, code: u16, body: &str, ctype: &str) {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        501 => "Not Implemented",
        _ => "Service Unavailable",
    };
    let msg = format!(
        "HTTP/1.0 {code} {reason}\r\nDate: {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
        http_date(),
        body.len()
    );
    let _ = stream.write_all(msg.as_bytes());
}

/// One HTTP/1.0 request per connection, as the Python stand-in answered.
fn handle_metrics(st: &State, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut r = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = Vec::new();
    if r.by_ref()
        .take(65_537)
        .read_until(b'\n', &mut line)
        .unwrap_or(0)
        == 0
    {
        return; // connected and closed without a request
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
    let text = String::from_utf8_lossy(&line);
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 2 {
        return reply(&mut stream, 400, "Bad Request\n", "text/plain");
    }
    if words[0] != "GET" {
        return reply(&mut stream, 501, "Unsupported method\n", "text/plain");
    }
    let path = words[1];
    let ready = st.ready.load(Ordering::SeqCst);
    if path.starts_with("/ready") {
        let code = if ready > 0 { 200 } else { 503 };
        let body = format!(
            "{{\"status\":{code},\"readyConnections\":{ready},\"connectorId\":\"{}\"}}",
            st.connector_id
        );
        reply(&mut stream, code, &body, "application/json");
    } else if path.starts_with("/healthcheck") {
        reply(&mut stream, 200, "OK\n", "text/plain");
    } else if path.starts_with("/metrics") {
        let body = format!(
            "# HELP cloudflared_tunnel_ha_connections Number of active ha connections\n\
             # TYPE cloudflared_tunnel_ha_connections gauge\n\
             cloudflared_tunnel_ha_connections {ready}\n\
             build_info{{version=\"{VERSION}\"}} 1\n"
        );
        reply(&mut stream, 200, &body, "text/plain; version=0.0.4");
    } else {
        reply(&mut stream, 404, "404 page not found\n", "text/plain");
    }
}

fn start_metrics(st: &Arc<State>, spec: Option<&str>) {
    let candidates: Vec<String> = match spec {
        Some(s) => {
            let (host, port) = s.rsplit_once(':').unwrap_or(("", s));
            vec![format!(
                "{}:{port}",
                if host.is_empty() { "0.0.0.0" } else { host }
            )]
        }
        // In a real container: 0.0.0.0. Testbed containers share the host's network
        // namespace, so the loopback keeps them off the bridge, and a port the proxy's
        // namespace publishes (TESTBED_PUBLISHED, container port -> host port) is bound as
        // the host port it is published on, so two tunnels on one host do not collide.
        // TESTBED_METRICS_BIND (e.g. 0.0.0.0 in a real engine's container) replaces the
        // loopback.
        None => {
            let bind = std::env::var("TESTBED_METRICS_BIND")
                .ok()
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| "127.0.0.1".to_string());
            let published: serde_json::Map<String, serde_json::Value> =
                std::env::var("TESTBED_PUBLISHED")
                    .ok()
                    .and_then(|raw| serde_json::from_str(&raw).ok())
                    .unwrap_or_default();
            (20241u16..20246)
                .map(|p| {
                    let host_port = published
                        .get(&p.to_string())
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(u64::from(p));
                    format!("{bind}:{host_port}")
                })
                .collect()
        }
    };
    for addr in &candidates {
        // std sets SO_REUSEADDR on listeners, as Python's server did.
        let Ok(listener) = TcpListener::bind(addr.as_str()) else {
            continue;
        };
        let st = Arc::clone(st);
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = Arc::clone(&st);
                thread::spawn(move || handle_metrics(&st, conn));
            }
        });
        log("INF", &format!("Starting metrics server on {addr}/metrics"));
        return;
    }
    log(
        "ERR",
        &format!(
            "failed to start the metrics server: no free port in {}",
            candidates.join(", ")
        ),
    );
    std::process::exit(1);
}

fn connect_edge(edge: &str) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the edge");
    for a in edge.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn read_msg(r: &mut BufReader<TcpStream>) -> std::io::Result<serde_json::Value> {
    let mut line = Vec::new();
    let n = r.by_ref().take(65_536).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(std::io::Error::other("connection closed by edge"));
    }
    serde_json::from_slice(&line).map_err(|e| std::io::Error::other(format!("bad message: {e}")))
}

/// Connect, register, heartbeat; returns on connection loss; exits on refusal.
fn run_connection(st: &State, token: &str, edge: &str, register_ms: u64) -> std::io::Result<()> {
    let ip = edge.rsplit_once(':').map(|(h, _)| h).unwrap_or(edge);
    let stream = connect_edge(edge)?;
    *st.sock.lock().unwrap_or_else(|p| p.into_inner()) = stream.try_clone().ok();
    thread::sleep(Duration::from_millis(register_ms)); // handshake + registration time
    let host = std::env::var("TESTBED_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default()
        });
    st.send(
        &stream,
        &serde_json::json!({"type": "register", "token": token,
                            "connector_id": st.connector_id, "host": host}),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(stream.try_clone()?);
    let reply = read_msg(&mut r)?;
    if reply.get("type").and_then(|t| t.as_str()) != Some("registered") {
        let err = reply
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("unknown");
        log(
            "ERR",
            &format!(
                "Register tunnel error from server side error=\"{err}\" connIndex=0 event=0 ip={ip}"
            ),
        );
        log("ERR", &format!("Couldn't start tunnel error=\"{err}\""));
        std::process::exit(1);
    }
    let location = reply
        .get("location")
        .and_then(|l| l.as_str())
        .unwrap_or("tb-edge");
    for i in 0..4 {
        log(
            "INF",
            &format!(
                "Registered tunnel connection connIndex={i} connection={} event=0 ip={ip} \
                 location={location}{i:02} protocol=quic",
                uuid4()
            ),
        );
    }
    st.ready.store(4, Ordering::SeqCst);
    {
        let (m, cv) = &st.registered;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
    stream.set_read_timeout(Some(Duration::from_millis(3500)))?;
    loop {
        st.send(&stream, &serde_json::json!({"type": "ping"}))?;
        let m = read_msg(&mut r)?;
        if m.get("type").and_then(|t| t.as_str()) != Some("pong") {
            return Err(std::io::Error::other("unexpected message from edge"));
        }
        thread::sleep(Duration::from_secs(1));
    }
}

fn connection_loop(st: &State, token: &str, edge: &str, register_ms: u64) {
    let mut backoff = 1u64;
    loop {
        let e = match run_connection(st, token, edge, register_ms) {
            Ok(()) => std::io::Error::other("connection closed"),
            Err(e) => e,
        };
        st.ready.store(0, Ordering::SeqCst);
        *st.sock.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if st.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        for i in 0..4 {
            log(
                "ERR",
                &format!("Connection terminated error=\"{e}\" connIndex={i}"),
            );
        }
        log(
            "INF",
            &format!("Retrying connection in up to {backoff}s connIndex=0 event=0 ip={edge}"),
        );
        thread::sleep(Duration::from_secs(backoff));
        backoff = (backoff * 2).min(8);
    }
}

/// `never-ready` image: every connection attempt fails, as for a connector that cannot reach
/// the edge; it keeps trying (and running).
fn never_ready_loop(st: &State, edge: &str) {
    let mut backoff = 1u64;
    while !st.shutting_down.load(Ordering::SeqCst) {
        for i in 0..4 {
            log(
                "ERR",
                &format!(
                    "Failed to dial a quic connection error=\"failed to dial to edge with quic: \
                     timeout: no recent network activity\" connIndex={i} event=0 ip={edge}"
                ),
            );
        }
        log(
            "INF",
            &format!("Retrying connection in up to {backoff}s connIndex=0 event=0 ip={edge}"),
        );
        thread::sleep(Duration::from_secs(backoff));
        backoff = (backoff * 2).min(8);
    }
}

/// `crash-after-Ns` image: exit 1 N seconds after the first registration.
fn crash_after(st: &State, seconds: f64, label: &str) {
    {
        let (m, cv) = &st.registered;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        while !*g {
            g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
    thread::sleep(Duration::from_secs_f64(seconds.max(0.0)));
    if st.shutting_down.load(Ordering::SeqCst) {
        return;
    }
    log(
        "ERR",
        &format!(
            "Serve tunnel error error=\"datagram manager encountered a failure while serving: \
             testbed crash-after-{label}s image\" connIndex=0 event=0"
        ),
    );
    log("ERR", "Tunnel server stopped with error: exit status 1");
    std::process::exit(1);
}

/// `crash-after-Ns` in an image reference: (N as seconds, N as written).
fn crash_spec(image: &str) -> Option<(f64, String)> {
    let mut rest = image;
    while let Some(i) = rest.find("crash-after-") {
        let tail = &rest[i + "crash-after-".len()..];
        let num: String = tail
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let valid = !num.is_empty()
            && num.starts_with(|c: char| c.is_ascii_digit())
            && tail[num.len()..].starts_with('s');
        if valid {
            // Python's regex `(\d+(?:\.\d+)?)s`: a trailing dot is not part of the number.
            let num = num.trim_end_matches('.').to_string();
            if let Ok(v) = num.parse::<f64>() {
                // `{:g}` of the float, as the Python printed it.
                let label = if v.fract() == 0.0 {
                    format!("{}", v as i64)
                } else {
                    format!("{v}")
                };
                return Some((v, label));
            }
        }
        rest = &rest[i + 1..];
    }
    None
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "terminated",
        libc::SIGINT => "interrupt",
        _ => "signal",
    }
}

/// Runs the connector; `args` are the container command's words.
pub fn main(args: &[String]) -> i32 {
    let signals = Signals::block();
    let opts = parse_args(args);
    let raw = std::env::var("TUNNEL_TOKEN").unwrap_or_default();
    if raw.is_empty() {
        log(
            "ERR",
            "\"cloudflared tunnel run\" requires the ID or name of the tunnel to run as the last \
             command line argument or in the configuration file.",
        );
        return 1;
    }
    let tunnel_id = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(|v| ["a", "t", "s"].iter().all(|k| v.get(k).is_some()))
        .map(|v| match &v["t"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    let Some(tunnel_id) = tunnel_id else {
        log("ERR", "Provided Tunnel token is not valid.");
        return 1;
    };
    let Some(edge) = std::env::var("TESTBED_EDGE").ok().filter(|e| !e.is_empty()) else {
        log(
            "ERR",
            "testbed stand-in: TESTBED_EDGE is not set (no stand-in edge address)",
        );
        return 1;
    };
    let env_ms = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(d)
    };
    let register_ms = env_ms("TESTBED_REGISTER_MS", 300);
    let grace_ms = opts
        .grace_ms
        .unwrap_or_else(|| env_ms("TESTBED_GRACE_MS", 2000));
    let st = Arc::new(State {
        connector_id: uuid4(),
        ready: AtomicU32::new(0),
        shutting_down: AtomicBool::new(false),
        sock: Mutex::new(None),
        registered: (Mutex::new(false), Condvar::new()),
    });
    log("INF", &format!("Starting tunnel tunnelID={tunnel_id}"));
    log("INF", &format!("Version {VERSION} (testbed stand-in)"));
    log(
        "INF",
        &format!("Generated Connector ID: {}", st.connector_id),
    );
    start_metrics(&st, opts.metrics.as_deref());
    if let Some(url) = &opts.url {
        log(
            "INF",
            &format!("Settings: map[no-autoupdate:true url:{url}]"),
        );
    }
    let image = std::env::var("TESTBED_IMAGE").unwrap_or_default();
    if image.contains("never-ready") {
        let (st, edge) = (Arc::clone(&st), edge.clone());
        thread::spawn(move || never_ready_loop(&st, &edge));
    } else {
        if let Some((secs, label)) = crash_spec(&image) {
            let st = Arc::clone(&st);
            thread::spawn(move || crash_after(&st, secs, &label));
        }
        let (st, edge) = (Arc::clone(&st), edge.clone());
        thread::spawn(move || connection_loop(&st, &raw, &edge, register_ms));
    }
    let Some(sig) = signals.wait(None) else {
        return 1;
    };
    st.shutting_down.store(true, Ordering::SeqCst);
    log(
        "INF",
        &format!(
            "Initiating graceful shutdown due to signal {} ...",
            signal_name(sig)
        ),
    );
    // Drain: keep serving (and answering /ready) for the grace period; a second signal exits.
    let deadline = Instant::now() + Duration::from_millis(grace_ms);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if signals.wait(Some(left)).is_some() {
            log("INF", "second signal received, exiting now");
            std::process::exit(0);
        }
    }
    st.ready.store(0, Ordering::SeqCst);
    {
        // Under the lock: no heartbeat interleaves with the unregister.
        let sock = st.sock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sock.as_ref() {
            let _ = (&*s).write_all(b"{\"type\": \"unregister\"}\n");
            let _ = s.shutdown(Shutdown::Both);
        }
    }
    log("INF", "Tunnel server stopped");
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("2s"), Ok(2000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("3"), Ok(3000));
        assert!(parse_duration_ms("3x").is_err());
    }

    #[test]
    fn crash_specs() {
        assert_eq!(
            crash_spec("cloudflare/cloudflared:crash-after-5s"),
            Some((5.0, "5".into()))
        );
        assert_eq!(
            crash_spec("x:crash-after-1.5s-b"),
            Some((1.5, "1.5".into()))
        );
        assert_eq!(crash_spec("x:crash-after-s"), None);
        assert_eq!(crash_spec("cloudflare/cloudflared:2024.7"), None);
    }
}
