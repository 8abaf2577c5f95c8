//! The SSH transport, on russh.
//!
//! One [`Connector`] per run holds what connections share: the known_hosts policy, the
//! decrypted keys, the bound on simultaneous connection starts, and the jump-host connections
//! (one connection to a bastion carries every host behind it). [`Connector::connect`] gives a
//! [`Session`]: one authenticated connection per host, reused for every command of the run.
//!
//! Secrets travel only on a command's stdin ([`Session::exec`]); the command text itself is
//! visible in `ps` on the host and must never hold one.

pub mod auth;
pub mod config;
pub mod known_hosts;
pub mod trace;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::PublicKey;
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::Algorithm;
use tokio::sync::{OnceCell, Semaphore};

pub use auth::AuthMethod;
use auth::KeyCache;
use known_hosts::{KnownHosts, Verdict};
// The one quoting function of the crate (a pure helper of the remote layer).
use crate::remote::quote;

/// What kind of failure an [`SshError`] is, so callers can tell "host down" from "refused".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP could not reach the host (refused, no route, DNS).
    Unreachable,
    /// A deadline passed (connect or command).
    Timeout,
    /// The host key was unknown, changed, revoked or not acceptable.
    HostKey,
    /// Authentication failed.
    Auth,
    /// The connection broke, or a channel or command could not be run.
    Transport,
}

impl ErrorKind {
    /// A short machine-readable name for `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::HostKey => "host_key",
            ErrorKind::Auth => "auth",
            ErrorKind::Transport => "transport",
        }
    }
}

/// An SSH-layer failure: what happened, and what the operator can do about it.
#[derive(Debug, Clone)]
pub struct SshError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// What happened (never holds a secret).
    pub message: String,
    /// What to do about it, when there is something to say.
    pub hint: Option<String>,
}

impl SshError {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SshError {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl std::fmt::Display for SshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for SshError {}

/// One jump host on the way to a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Address or name, resolved by the previous hop (or locally for the first).
    pub address: String,
    /// SSH port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Key files to try after the agent.
    pub key_files: Vec<PathBuf>,
}

impl Hop {
    fn label(&self) -> String {
        format!("{}@{}:{}", self.user, self.address, self.port)
    }
}

/// A host to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Inventory name (for messages).
    pub name: String,
    /// The final hop: address, port, user and key files of the host itself.
    pub hop: Hop,
    /// Jump hosts, in order (ProxyJump).
    pub proxy_jump: Vec<Hop>,
    /// Run commands through `sudo -n`.
    pub become_: bool,
}

/// Settings shared by every connection of a run.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// The known_hosts file to check host keys against (and to learn into).
    pub known_hosts: PathBuf,
    /// Learn keys of hosts not in known_hosts (never replaces a changed key).
    pub accept_new: bool,
    /// Deadline for one connection attempt (TCP connect + key exchange + authentication of one
    /// hop), counted from when the attempt holds a start slot.
    pub connect_timeout: Duration,
    /// Default deadline for one remote command.
    pub command_timeout: Duration,
    /// At most this many connection starts at once (sshd's MaxStartups and bastions refuse bursts).
    pub max_starts: usize,
    /// Keepalive interval; the connection is dropped after 3 unanswered keepalives.
    pub keepalive: Duration,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            known_hosts: config::expand_tilde("~/.ssh/known_hosts"),
            accept_new: false,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(120),
            max_starts: 32,
            keepalive: Duration::from_secs(15),
        }
    }
}

/// Outcome of the host key check, recorded by the handler so a refused connection can say why.
#[derive(Debug, Clone)]
enum KeyOutcome {
    Accepted { fingerprint: String },
    Refused(SshError),
}

struct Client {
    host: String,
    port: u16,
    known: Arc<std::sync::Mutex<KnownHosts>>,
    accept_new: bool,
    outcome: Arc<std::sync::Mutex<Option<KeyOutcome>>>,
}

impl Client {
    fn record(&self, o: KeyOutcome) {
        if let Ok(mut g) = self.outcome.lock() {
            *g = Some(o);
        }
    }

    async fn judge(&self, key: &PublicKey) -> KeyOutcome {
        let fingerprint = known_hosts::fingerprint(key);
        let (verdict, path) = match self.known.lock() {
            Ok(kh) => (
                kh.check(&self.host, self.port, key),
                kh.path().to_path_buf(),
            ),
            Err(_) => {
                return KeyOutcome::Refused(SshError::new(
                    ErrorKind::HostKey,
                    "known_hosts state poisoned",
                ));
            }
        };
        let name = known_hosts::host_pattern_name(&self.host, self.port);
        match verdict {
            Verdict::Known => KeyOutcome::Accepted { fingerprint },
            Verdict::Revoked { line } => KeyOutcome::Refused(SshError::new(
                ErrorKind::HostKey,
                format!(
                    "host key {fingerprint} of {name} is REVOKED in {}:{line}",
                    path.display()
                ),
            )),
            Verdict::Changed { lines } => {
                let at: Vec<String> = lines
                    .iter()
                    .map(|l| format!("{}:{l}", path.display()))
                    .collect();
                KeyOutcome::Refused(
                    SshError::new(
                        ErrorKind::HostKey,
                        format!(
                            "WARNING: HOST KEY OF {name} HAS CHANGED (now {fingerprint}; recorded \
                             at {}). Someone could be intercepting the connection \
                             (man-in-the-middle), or the host was reinstalled",
                            at.join(", ")
                        ),
                    )
                    .hint(format!(
                        "verify the new key out of band; if it is legitimate, remove the old \
                         entry with: ssh-keygen -f {} -R '{name}'",
                        path.display()
                    )),
                )
            }
            Verdict::Unknown if self.accept_new => {
                let (p, h, port, k) = (path.clone(), self.host.clone(), self.port, key.clone());
                // File I/O off the async runtime: learn, then re-read what is now recorded.
                let learned = tokio::task::spawn_blocking(move || {
                    known_hosts::learn(&p, &h, port, &k).map(|v| (v, KnownHosts::load(&p).ok()))
                })
                .await;
                match learned {
                    Ok(Ok((Verdict::Known | Verdict::Unknown, fresh))) => {
                        if let (Some(fresh), Ok(mut kh)) = (fresh, self.known.lock()) {
                            *kh = fresh;
                        }
                        KeyOutcome::Accepted { fingerprint }
                    }
                    Ok(Ok((_, _))) => KeyOutcome::Refused(SshError::new(
                        ErrorKind::HostKey,
                        format!(
                            "host key of {name} changed while learning it ({fingerprint}): \
                             refusing"
                        ),
                    )),
                    Ok(Err(e)) => KeyOutcome::Refused(SshError::new(
                        ErrorKind::HostKey,
                        format!("cannot record host key in {}: {e}", path.display()),
                    )),
                    Err(e) => KeyOutcome::Refused(SshError::new(
                        ErrorKind::HostKey,
                        format!("cannot record host key: {e}"),
                    )),
                }
            }
            Verdict::Unknown => KeyOutcome::Refused(
                SshError::new(
                    ErrorKind::HostKey,
                    format!(
                        "unknown host key for {name}: {fingerprint} (not in {})",
                        path.display()
                    ),
                )
                .hint(format!(
                    "check the fingerprint with the host's owner, then rerun with --accept-new \
                     (learns unknown hosts only), or add it: ssh-keyscan -p {} {} >> {}",
                    self.port,
                    self.host,
                    path.display()
                )),
            ),
        }
    }
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        trace::event(
            &format!("{}:{}", self.host, self.port),
            "kex: host key received <-",
        );
        let outcome = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.judge(key).await,
            PublicKeyOrCertificate::Certificate(_) => KeyOutcome::Refused(SshError::new(
                ErrorKind::HostKey,
                "the host presented an SSH host certificate; tunnelfleet checks plain host \
                 keys against known_hosts only",
            )),
        };
        let ok = matches!(outcome, KeyOutcome::Accepted { .. });
        self.record(outcome);
        Ok(ok)
    }
}

/// An authenticated SSH connection (to a host or a jump host). Holds the jump connection it
/// runs through, so the chain lives as long as the last connection that needs it.
struct Link {
    handle: Handle<Client>,
    _parent: Option<Arc<Link>>,
    auth: AuthMethod,
    host_key_fingerprint: String,
}

type JumpCell = Arc<OnceCell<Result<Arc<Link>, SshError>>>;

/// Opens and shares connections for a run.
pub struct Connector {
    opts: SshOptions,
    known: Arc<std::sync::Mutex<KnownHosts>>,
    starts: Semaphore,
    keys: KeyCache,
    jumps: tokio::sync::Mutex<HashMap<String, JumpCell>>,
}

fn host_key_algorithms(known: &[Algorithm]) -> Vec<Algorithm> {
    // Never accept an ssh-rsa (SHA-1) host key signature.
    let mut all: Vec<Algorithm> = russh::Preferred::DEFAULT
        .key
        .iter()
        .filter(|a| !matches!(a, Algorithm::Rsa { hash: None }))
        .cloned()
        .collect();
    // Prefer the algorithms known_hosts has for this host, as OpenSSH does.
    all.sort_by_key(|a| !known.iter().any(|k| same_family(k, a)));
    all
}

fn same_family(a: &Algorithm, b: &Algorithm) -> bool {
    match (a, b) {
        (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
        _ => a == b,
    }
}

fn map_connect_error(e: russh::Error, what: &str) -> SshError {
    match e {
        russh::Error::IO(io) => {
            let kind = match io.kind() {
                std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
                | std::io::ErrorKind::AddrNotAvailable
                | std::io::ErrorKind::NotFound => ErrorKind::Unreachable,
                _ => ErrorKind::Unreachable,
            };
            SshError::new(kind, format!("connect to {what}: {io}"))
                .hint("is the host up, and is sshd listening on that address and port?")
        }
        other => SshError::new(ErrorKind::Transport, format!("ssh with {what}: {other}")),
    }
}

impl Connector {
    /// A connector for one run. Reads known_hosts now.
    pub fn new(opts: SshOptions) -> Result<Self, SshError> {
        trace::start();
        let known = KnownHosts::load(&opts.known_hosts).map_err(|e| {
            SshError::new(
                ErrorKind::HostKey,
                format!("read {}: {e}", opts.known_hosts.display()),
            )
        })?;
        Ok(Connector {
            starts: Semaphore::new(opts.max_starts.max(1)),
            opts,
            known: Arc::new(std::sync::Mutex::new(known)),
            keys: KeyCache::default(),
            jumps: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The options this connector was made with.
    pub fn options(&self) -> &SshOptions {
        &self.opts
    }

    /// Connects to a target (through its jump hosts). Each connection attempt (one per hop) has
    /// the whole connect deadline once it holds a start slot: time spent waiting for a slot
    /// behind other hosts (`--max-starts`) does not count against it.
    pub async fn connect(&self, target: &Target) -> Result<Session, SshError> {
        let started = Instant::now();
        let mut parent: Option<Arc<Link>> = None;
        for i in 0..target.proxy_jump.len() {
            parent = Some(self.jump(&target.proxy_jump[..=i], parent).await?);
        }
        let link = self.open_link(&target.hop, parent).await?;
        Ok(Session {
            host: target.name.clone(),
            auth: link.auth.clone(),
            host_key_fingerprint: link.host_key_fingerprint.clone(),
            via: target.proxy_jump.iter().map(Hop::label).collect(),
            connected_in: started.elapsed(),
            link,
            become_: target.become_,
            command_timeout: self.opts.command_timeout,
        })
    }

    /// The shared connection to the jump host at the end of `chain`.
    async fn jump(&self, chain: &[Hop], parent: Option<Arc<Link>>) -> Result<Arc<Link>, SshError> {
        let key: Vec<String> = chain.iter().map(Hop::label).collect();
        let key = key.join(" -> ");
        let cell = {
            let mut jumps = self.jumps.lock().await;
            jumps.entry(key.clone()).or_default().clone()
        };
        let hop = &chain[chain.len() - 1];
        cell.get_or_init(|| async {
            self.open_link(hop, parent).await.map_err(|e| SshError {
                message: format!("jump host {}: {}", hop.label(), e.message),
                ..e
            })
        })
        .await
        .clone()
    }

    /// One authenticated connection to `hop`, directly or through `parent`.
    async fn open_link(&self, hop: &Hop, parent: Option<Arc<Link>>) -> Result<Arc<Link>, SshError> {
        let known_algs = self
            .known
            .lock()
            .map(|kh| kh.known_algorithms(&hop.address, hop.port))
            .unwrap_or_default();
        let config = Arc::new(client::Config {
            keepalive_interval: Some(self.opts.keepalive),
            keepalive_max: 3,
            inactivity_timeout: None,
            nodelay: true,
            preferred: russh::Preferred {
                key: host_key_algorithms(&known_algs).into(),
                ..Default::default()
            },
            ..Default::default()
        });
        let outcome = Arc::new(std::sync::Mutex::new(None));
        let handler = Client {
            host: hop.address.clone(),
            port: hop.port,
            known: self.known.clone(),
            accept_new: self.opts.accept_new,
            outcome: outcome.clone(),
        };
        let label = hop.label();
        let _permit = self
            .starts
            .acquire()
            .await
            .map_err(|_| SshError::new(ErrorKind::Transport, "connection limiter closed"))?;
        // The deadline starts now that this attempt holds a start slot: waiting in line behind
        // other hosts is not the host's fault (decisions: "connect deadline per attempt").
        let deadline = self.opts.connect_timeout;
        let attempt = self.attempt_link(hop, parent, config, handler, outcome, &label);
        match tokio::time::timeout(deadline, attempt).await {
            Ok(r) => r,
            Err(_) => Err(SshError::new(
                ErrorKind::Timeout,
                format!("no SSH session with {label} within the connect deadline ({deadline:?})"),
            )
            .hint(
                "the host may be down, hung or firewalled; raise --connect-timeout for slow links",
            )),
        }
    }

    /// The connection attempt proper (TCP or direct-tcpip, key exchange, host key check,
    /// authentication), run while holding a start slot.
    async fn attempt_link(
        &self,
        hop: &Hop,
        parent: Option<Arc<Link>>,
        config: Arc<client::Config>,
        handler: Client,
        outcome: Arc<std::sync::Mutex<Option<KeyOutcome>>>,
        label: &str,
    ) -> Result<Arc<Link>, SshError> {
        trace::event(label, "connect: start");
        let connected = match &parent {
            None => {
                // Our own TCP connect (as russh's would: nodelay from the config), so the
                // stream can be traced.
                match tokio::net::TcpStream::connect((hop.address.as_str(), hop.port)).await {
                    Ok(tcp) => {
                        let _ = tcp.set_nodelay(config.nodelay);
                        trace::event(label, "connect: tcp connected");
                        client::connect_stream(config, trace::Traced::new(tcp, label), handler)
                            .await
                    }
                    Err(e) => Err(russh::Error::IO(e)),
                }
            }
            Some(p) => {
                let ch = p
                    .handle
                    .channel_open_direct_tcpip(
                        hop.address.clone(),
                        u32::from(hop.port),
                        "127.0.0.1",
                        0,
                    )
                    .await
                    .map_err(|e| {
                        SshError::new(
                            ErrorKind::Unreachable,
                            format!("the jump host could not open a connection to {label}: {e}"),
                        )
                        .hint("is the host up, and does its name resolve on the jump host?")
                    })?;
                trace::event(label, "connect: direct-tcpip through the jump host open");
                client::connect_stream(config, trace::Traced::new(ch.into_stream(), label), handler)
                    .await
            }
        };
        trace::event(label, "connect: key exchange done");
        let recorded = outcome.lock().ok().and_then(|g| g.clone());
        let mut handle = match connected {
            Ok(h) => h,
            Err(e) => {
                return Err(match recorded {
                    Some(KeyOutcome::Refused(err)) => err,
                    _ => map_connect_error(e, label),
                });
            }
        };
        let host_key_fingerprint = match recorded {
            Some(KeyOutcome::Accepted { fingerprint }) => fingerprint,
            Some(KeyOutcome::Refused(err)) => return Err(err),
            None => {
                return Err(SshError::new(
                    ErrorKind::HostKey,
                    format!("{label}: the host key was never checked"),
                ));
            }
        };
        let mut key_files = hop.key_files.clone();
        for d in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            key_files.push(config::expand_tilde(&format!("~/.ssh/{d}")));
        }
        trace::event(label, "auth: start");
        let auth = auth::authenticate(&mut handle, &hop.user, &key_files, &self.keys)
            .await
            .map_err(|e| SshError {
                message: format!("{label}: {}", e.message),
                ..e
            })?;
        trace::event(label, format_args!("auth: done ({auth})"));
        Ok(Arc::new(Link {
            handle,
            _parent: parent,
            auth,
            host_key_fingerprint,
        }))
    }
}

/// What a remote command gave back.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// Exit status (None when the command died of a signal or the channel closed early).
    pub status: Option<u32>,
    /// The signal name, when the command was killed by one.
    pub signal: Option<String>,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
    /// Time from opening the channel to its close.
    pub elapsed: Duration,
}

impl ExecOutput {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy), trimmed.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

static TRACE: AtomicBool = AtomicBool::new(false);

/// Prints every remote command line on stderr from now on (`-vv`). Command lines never hold
/// a secret (secrets go on stdin, which is never printed: only its size is); values after
/// `TOKEN=` that look like a token are redacted anyway, as a last guard.
pub fn set_trace(on: bool) {
    TRACE.store(on, Ordering::Relaxed);
}

/// `command` with every value following `TOKEN=` replaced (a last guard for `-vv`).
pub fn redact_command(command: &str) -> String {
    let mut out = String::with_capacity(command.len());
    let mut rest = command;
    while let Some(at) = rest.find("TOKEN=") {
        let (head, tail) = rest.split_at(at + "TOKEN=".len());
        out.push_str(head);
        // A token-like value: 16 or more characters of base64/base64url.
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-.".contains(c)))
            .unwrap_or(tail.len());
        if end >= 16 {
            out.push_str("<redacted>");
        } else {
            out.push_str(&tail[..end]);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn trace_command(host: &str, command: &str, stdin_len: usize) {
    if TRACE.load(Ordering::Relaxed) {
        let stdin = if stdin_len > 0 {
            format!(" (+{stdin_len} bytes on stdin, not shown)")
        } else {
            String::new()
        };
        eprintln!("{host} $ {}{stdin}", redact_command(command));
    }
}

/// One authenticated connection to a host, reused for every command of the run.
pub struct Session {
    /// The host's inventory name.
    pub host: String,
    /// How the session authenticated.
    pub auth: AuthMethod,
    /// SHA-256 fingerprint of the host key that was accepted.
    pub host_key_fingerprint: String,
    /// The jump hosts the session runs through.
    pub via: Vec<String>,
    /// Time to connect and authenticate (waiting for a start slot included).
    pub connected_in: Duration,
    link: Arc<Link>,
    become_: bool,
    command_timeout: Duration,
}

impl Session {
    /// The command line sent for `script`: `sh -c 'script'`, under `sudo -n` with become.
    /// Never put a secret in `script`: it is visible in `ps` on the host.
    pub fn command_line(&self, script: &str) -> String {
        if self.become_ {
            format!("sudo -n -- sh -c {}", quote(script))
        } else {
            format!("sh -c {}", quote(script))
        }
    }

    /// Runs `script` with `stdin` streamed to it, under the run's command deadline.
    pub async fn exec(&self, script: &str, stdin: &[u8]) -> Result<ExecOutput, SshError> {
        self.exec_timeout(script, stdin, self.command_timeout).await
    }

    /// Runs `script` with `stdin` streamed to it, under `timeout`.
    pub async fn exec_timeout(
        &self,
        script: &str,
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<ExecOutput, SshError> {
        let started = Instant::now();
        let command = self.command_line(script);
        trace_command(&self.host, &command, stdin.len());
        let fut = async {
            let channel = self.open_session_channel().await?;
            run_on(&self.host, channel, command, stdin, started).await
        };
        with_deadline(timeout, fut).await
    }

    async fn open_session_channel(&self) -> Result<russh::Channel<client::Msg>, SshError> {
        trace::event(&self.host, "channel: open session ->");
        let ch = self.link.handle.channel_open_session().await.map_err(|e| {
            SshError::new(ErrorKind::Transport, format!("open a session channel: {e}"))
                .hint("the connection dropped; rerun, and check the host's sshd MaxSessions")
        })?;
        trace::event(
            &self.host,
            format_args!("channel {}: open confirmed <-", ch.id()),
        );
        Ok(ch)
    }

    /// Opens a session channel now, to run one command on it later: the command then costs
    /// one round trip (the request, its input and its end sent together) instead of two,
    /// which matters where a command must follow an event quickly (rotation's window).
    pub async fn prepare(&self) -> Result<PreparedExec, SshError> {
        let channel = self.open_session_channel().await?;
        Ok(PreparedExec {
            channel,
            command_prefix_become: self.become_,
            command_timeout: self.command_timeout,
            host: self.host.clone(),
        })
    }

    /// Opens a TCP connection from the host to `addr:port` (for example a readiness endpoint
    /// on the host's loopback) through this session.
    pub async fn open_tcp(
        &self,
        addr: &str,
        port: u16,
    ) -> Result<russh::ChannelStream<client::Msg>, SshError> {
        trace::event(
            &self.host,
            format_args!("direct-tcpip {addr}:{port}: open ->"),
        );
        let ch = self
            .link
            .handle
            .channel_open_direct_tcpip(addr, u32::from(port), "127.0.0.1", 0)
            .await
            .inspect(|ch| {
                trace::event(
                    &self.host,
                    format_args!("direct-tcpip {addr}:{port}: channel {} open <-", ch.id()),
                )
            })
            .inspect_err(|e| {
                trace::event(
                    &self.host,
                    format_args!("direct-tcpip {addr}:{port}: open failed <- ({e})"),
                )
            })
            .map_err(|e| match e {
                // sshd could not connect (on a loopback: nothing listens there).
                russh::Error::ChannelOpenFailure(russh::ChannelOpenFailure::ConnectFailed) => {
                    SshError::new(
                        ErrorKind::Unreachable,
                        format!("{addr}:{port} on the host: connection refused"),
                    )
                }
                e => SshError::new(
                    ErrorKind::Transport,
                    format!("open a connection to {addr}:{port} on the host: {e}"),
                ),
            })?;
        Ok(ch.into_stream())
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        let _ = self
            .link
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// A session channel opened ahead of its command (see [`Session::prepare`]).
pub struct PreparedExec {
    channel: russh::Channel<client::Msg>,
    command_prefix_become: bool,
    command_timeout: Duration,
    host: String,
}

impl std::fmt::Debug for PreparedExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreparedExec")
    }
}

impl PreparedExec {
    fn command(&self, script: &str) -> String {
        if self.command_prefix_become {
            format!("sudo -n -- sh -c {}", quote(script))
        } else {
            format!("sh -c {}", quote(script))
        }
    }

    /// Runs `script` on the open channel with `stdin` streamed to it, under the run's
    /// command deadline (the same command line as [`Session::exec`] would send).
    pub async fn exec(self, script: &str, stdin: &[u8]) -> Result<ExecOutput, SshError> {
        let started = Instant::now();
        let command = self.command(script);
        trace_command(&self.host, &command, stdin.len());
        with_deadline(
            self.command_timeout,
            run_on(&self.host, self.channel, command, stdin, started),
        )
        .await
    }

    /// Starts `script` now, its input to come later ([`StartedExec::finish`]).
    ///
    /// sshd opens a session channel with an input window of zero and grants one only once
    /// the command runs, so a command's stdin can never travel with its request: the input
    /// waits one round trip for the window. A command started ahead has its window by the
    /// time its input is known, and then costs one round trip (input and EOF out, exit
    /// status back). The script must treat an EOF without complete input as "cancelled"
    /// (the controller died or gave up): see [`crate::remote::atomic_write_framed`].
    pub async fn start(self, script: &str) -> Result<StartedExec, SshError> {
        let started = Instant::now();
        let command = self.command(script);
        trace_command(&self.host, &command, 0);
        let id = self.channel.id();
        trace::event(
            &self.host,
            format_args!("channel {id}: exec (input later) ->"),
        );
        with_deadline(self.command_timeout, async {
            self.channel
                .exec(true, command)
                .await
                .map_err(|e| SshError::new(ErrorKind::Transport, format!("start the command: {e}")))
        })
        .await?;
        Ok(StartedExec {
            channel: self.channel,
            command_timeout: self.command_timeout,
            host: self.host,
            started,
        })
    }
}

/// A command started ahead of its input (see [`PreparedExec::start`]).
pub struct StartedExec {
    channel: russh::Channel<client::Msg>,
    command_timeout: Duration,
    host: String,
    started: Instant,
}

impl std::fmt::Debug for StartedExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartedExec")
    }
}

impl StartedExec {
    /// Sends `stdin` then EOF, and collects the command's output, under the run's command
    /// deadline (counted from now). `stdin` is never printed, not even with `-vv`.
    pub async fn finish(self, stdin: &[u8]) -> Result<ExecOutput, SshError> {
        let host = self.host;
        let started = self.started;
        with_deadline(
            self.command_timeout,
            collect(&host, self.channel, stdin, started),
        )
        .await
    }

    /// Ends the command without input (EOF, then close) and does not wait for it: a script
    /// started ahead then exits without doing anything.
    pub async fn cancel(self) {
        trace::event(
            &self.host,
            format_args!("channel {}: cancelled (eof, close) ->", self.channel.id()),
        );
        let _ = self.channel.eof().await;
        let _ = self.channel.close().await;
    }
}

async fn with_deadline<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, SshError>>,
) -> Result<T, SshError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(SshError::new(
            ErrorKind::Timeout,
            format!("command did not finish within {timeout:?}"),
        )
        .hint("the host may be hung or overloaded; raise --command-timeout if it is just slow")),
    }
}

/// Starts `command` on `channel` without waiting for the server's reply to the request
/// (its exit status says how it went), streams `stdin` then EOF, and collects the output.
async fn run_on(
    host: &str,
    channel: russh::Channel<client::Msg>,
    command: String,
    stdin: &[u8],
    started: Instant,
) -> Result<ExecOutput, SshError> {
    let id = channel.id();
    trace::event(host, format_args!("channel {id}: exec ->"));
    channel
        .exec(true, command)
        .await
        .map_err(|e| SshError::new(ErrorKind::Transport, format!("start the command: {e}")))?;
    collect(host, channel, stdin, started).await
}

/// Streams `stdin` then EOF to the command running on `channel`, and collects its output
/// until the channel closes.
async fn collect(
    host: &str,
    channel: russh::Channel<client::Msg>,
    stdin: &[u8],
    started: Instant,
) -> Result<ExecOutput, SshError> {
    let id = channel.id();
    let (mut read, write) = channel.split();
    let writer = async move {
        if !stdin.is_empty() {
            write.data(stdin).await?;
            trace::event(
                host,
                format_args!("channel {id}: stdin -> {} bytes", stdin.len()),
            );
        }
        let r = write.eof().await;
        trace::event(host, format_args!("channel {id}: eof ->"));
        r
    };
    let reader = async move {
        let mut out = ExecOutput::default();
        while let Some(msg) = read.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    trace::event(
                        host,
                        format_args!("channel {id}: <- stdout {} bytes", data.len()),
                    );
                    out.stdout.extend_from_slice(&data)
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    trace::event(
                        host,
                        format_args!("channel {id}: <- stderr {} bytes", data.len()),
                    );
                    out.stderr.extend_from_slice(&data)
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    trace::event(
                        host,
                        format_args!("channel {id}: <- exit-status {exit_status}"),
                    );
                    out.status = Some(exit_status)
                }
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    trace::event(host, format_args!("channel {id}: <- exit-signal"));
                    out.signal = Some(format!("{signal_name:?}"))
                }
                ChannelMsg::Close => {
                    trace::event(host, format_args!("channel {id}: <- close"));
                    break;
                }
                other => trace::event(host, format_args!("channel {id}: <- {}", msg_name(&other))),
            }
        }
        out
    };
    let (w, mut out) = tokio::join!(writer, reader);
    if let Err(e) = w
        && out.status.is_none()
    {
        return Err(SshError::new(
            ErrorKind::Transport,
            format!("send the command's input: {e}"),
        ));
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

/// A short name of a channel message for the trace (never its payload).
fn msg_name(m: &ChannelMsg) -> &'static str {
    match m {
        ChannelMsg::Eof => "eof",
        ChannelMsg::Success => "success",
        ChannelMsg::Failure => "failure",
        ChannelMsg::WindowAdjusted { .. } => "window adjusted",
        ChannelMsg::ExtendedData { .. } => "extended data",
        ChannelMsg::Open { .. } => "open",
        _ => "other message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_redacts_token_values_only() {
        assert_eq!(
            redact_command("env TUNNEL_TOKEN=eyJhIjoiRVhBTVBMRSJ9abc sh"),
            "env TUNNEL_TOKEN=<redacted> sh"
        );
        let sed = "sed -n 's/^TUNNEL_TOKEN=//p' | head -n 1";
        assert_eq!(redact_command(sed), sed);
    }

    #[test]
    fn host_key_algorithms_prefer_known_and_drop_sha1() {
        let algs = host_key_algorithms(&[Algorithm::Ecdsa {
            curve: russh::keys::ssh_key::EcdsaCurve::NistP256,
        }]);
        assert!(matches!(algs[0], Algorithm::Ecdsa { .. }));
        assert!(!algs.contains(&Algorithm::Rsa { hash: None }));
    }
}
