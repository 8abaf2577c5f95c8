//! OpenSSH `known_hosts` reading, checking and learning.
//!
//! Understands plain host patterns (with `*`, `?` and `!` negation), comma-separated lists,
//! `[host]:port` entries for non-standard ports, hashed entries (`|1|salt|hmac-sha1`), and the
//! `@revoked` marker. `@cert-authority` lines are read and ignored (tunnelfleet does not accept
//! host certificates yet). Writes are serialised within the process (a mutex) and across
//! processes (`flock` on the file), and always append whole lines.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::{self, HashAlg, PublicKey};
use sha1::Sha1;

/// The name a host is recorded under in known_hosts: `host` for port 22, `[host]:port` otherwise.
pub fn host_pattern_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The SHA-256 fingerprint of a key, as OpenSSH prints it (`SHA256:...`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// One usable line of a known_hosts file.
#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    revoked: bool,
    hosts: HostSpec,
    key: PublicKey,
}

#[derive(Debug, Clone)]
enum HostSpec {
    Patterns(Vec<String>),
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

impl HostSpec {
    fn matches(&self, name: &str) -> bool {
        match self {
            HostSpec::Hashed { salt, hash } => {
                let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            HostSpec::Patterns(pats) => {
                let mut matched = false;
                for p in pats {
                    if let Some(neg) = p.strip_prefix('!') {
                        if glob_match(neg, name) {
                            return false;
                        }
                    } else if glob_match(p, name) {
                        matched = true;
                    }
                }
                matched
            }
        }
    }
}

/// OpenSSH-style wildcard match (`*` any run, `?` one character), case-insensitive.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// What known_hosts says about a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A matching, non-revoked entry exists.
    Known,
    /// The host has no entry.
    Unknown,
    /// The host has entries, none of them for this key: possible man-in-the-middle.
    Changed {
        /// Line numbers of the entries recorded for the host.
        lines: Vec<usize>,
    },
    /// This key is marked `@revoked`.
    Revoked {
        /// Line of the `@revoked` marker.
        line: usize,
    },
}

/// A parsed known_hosts file.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl KnownHosts {
    /// Reads a known_hosts file. A missing file is an empty one; malformed lines are skipped
    /// (as OpenSSH does).
    pub fn load(path: &Path) -> std::io::Result<KnownHosts> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        Ok(Self::parse(&text, path))
    }

    /// Parses known_hosts text.
    pub fn parse(text: &str, path: &Path) -> KnownHosts {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let mut revoked = false;
            if first.starts_with('@') {
                match first {
                    "@revoked" => revoked = true,
                    _ => continue, // @cert-authority and unknown markers
                }
                first = match fields.next() {
                    Some(f) => f,
                    None => continue,
                };
            }
            let (Some(kind), Some(b64)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Ok(key) = PublicKey::from_openssh(&format!("{kind} {b64}")) else {
                continue;
            };
            let hosts = if let Some(rest) = first.strip_prefix("|1|") {
                let mut parts = rest.splitn(2, '|');
                let (Some(s), Some(h)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let (Ok(salt), Ok(hash)) = (B64.decode(s), B64.decode(h)) else {
                    continue;
                };
                HostSpec::Hashed { salt, hash }
            } else {
                HostSpec::Patterns(first.split(',').map(str::to_string).collect())
            };
            entries.push(Entry {
                line: i + 1,
                revoked,
                hosts,
                key,
            });
        }
        KnownHosts {
            path: path.to_path_buf(),
            entries,
        }
    }

    /// True when the file holds hashed host names (written with OpenSSH's HashKnownHosts):
    /// new entries are then hashed too.
    pub fn is_hashed(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.hosts, HostSpec::Hashed { .. }))
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Algorithms of the keys recorded for a host, so the key exchange can prefer them (as
    /// OpenSSH does) and a host with, say, only an ECDSA entry is not mistaken for a changed one.
    pub fn known_algorithms(&self, host: &str, port: u16) -> Vec<ssh_key::Algorithm> {
        let name = host_pattern_name(host, port);
        let mut algs = Vec::new();
        for e in self.entries.iter().filter(|e| !e.revoked) {
            if e.hosts.matches(&name) && !algs.contains(&e.key.algorithm()) {
                algs.push(e.key.algorithm());
            }
        }
        algs
    }

    /// Checks a server key for `host:port`.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        let name = host_pattern_name(host, port);
        for e in &self.entries {
            if e.revoked && e.key.key_data() == key.key_data() {
                return Verdict::Revoked { line: e.line };
            }
        }
        let mut lines = Vec::new();
        for e in self.entries.iter().filter(|e| !e.revoked) {
            if e.hosts.matches(&name) {
                if e.key.key_data() == key.key_data() {
                    return Verdict::Known;
                }
                lines.push(e.line);
            }
        }
        if lines.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Changed { lines }
        }
    }
}

/// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`: OpenSSH's hashed host name.
pub fn hash_host_name(name: &str, salt: &[u8]) -> String {
    // HMAC takes a key of any length: new_from_slice cannot fail for HMAC-SHA1.
    let h = match Hmac::<Sha1>::new_from_slice(salt) {
        Ok(mut mac) => {
            mac.update(name.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    };
    format!("|1|{}|{}", B64.encode(salt), B64.encode(h))
}

static WRITE_LOCK: Mutex<()> = Mutex::new(());

/// Appends `host key` to a known_hosts file. Serialised in the process and with `flock`
/// across processes; re-reads the file under the lock so two controllers learning the same
/// host do not both append, and so a key learned meanwhile by someone else is honoured.
pub fn learn(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<Verdict> {
    let _guard = WRITE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    // SAFETY: flock on a valid, owned file descriptor; released when the file is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let current = KnownHosts::load(path)?;
    match current.check(host, port, key) {
        Verdict::Unknown => {}
        other => return Ok(other),
    }
    let key_text = key
        .to_openssh()
        .map_err(|e| std::io::Error::other(format!("encode host key: {e}")))?;
    // Drop any comment part: "type base64 [comment]".
    let key_text: Vec<&str> = key_text.split_whitespace().take(2).collect();
    let needs_newline = {
        let text = std::fs::read(path)?;
        !text.is_empty() && !text.ends_with(b"\n")
    };
    let mut line = String::new();
    if needs_newline {
        line.push('\n');
    }
    // A file that already holds hashed entries (OpenSSH's HashKnownHosts) gets a hashed one:
    // a plaintext name would undo what hashing protects (the list of hosts this user reaches).
    let name = host_pattern_name(host, port);
    let shown = if current.is_hashed() {
        hash_host_name(&name, &rand::random::<[u8; 20]>())
    } else {
        name
    };
    line.push_str(&format!("{shown} {}\n", key_text.join(" ")));
    file.write_all(line.as_bytes())?;
    file.sync_all()?;
    Ok(Verdict::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB8Z2CDvcvHVkK3fBzh33nDNzVHbZdA6SNNCFK3sEeQU";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).expect("test key parses")
    }

    fn hashed(name: &str, key: &str) -> String {
        let salt = b"0123456789abcdefghij";
        let mut mac = Hmac::<Sha1>::new_from_slice(salt).expect("hmac key");
        mac.update(name.as_bytes());
        let h = mac.finalize().into_bytes();
        format!("|1|{}|{} {key}", B64.encode(salt), B64.encode(h))
    }

    #[test]
    fn plain_port_and_hashed_entries() {
        let text = format!(
            "# comment\n10.0.0.2 {KEY_A}\n[10.0.0.3]:2222 {KEY_A}\n{}\nweb*,!web9 {KEY_B}\n",
            hashed("[h5]:2200", KEY_B)
        );
        let kh = KnownHosts::parse(&text, Path::new("kh"));
        assert_eq!(kh.check("10.0.0.2", 22, &key(KEY_A)), Verdict::Known);
        assert_eq!(kh.check("10.0.0.3", 2222, &key(KEY_A)), Verdict::Known);
        assert_eq!(kh.check("10.0.0.3", 22, &key(KEY_A)), Verdict::Unknown);
        assert_eq!(kh.check("h5", 2200, &key(KEY_B)), Verdict::Known);
        assert_eq!(
            kh.check("h5", 2200, &key(KEY_A)),
            Verdict::Changed { lines: vec![4] }
        );
        assert_eq!(kh.check("web1", 22, &key(KEY_B)), Verdict::Known);
        assert_eq!(kh.check("web9", 22, &key(KEY_B)), Verdict::Unknown);
        assert_eq!(
            kh.check("10.0.0.2", 22, &key(KEY_B)),
            Verdict::Changed { lines: vec![2] }
        );
    }

    #[test]
    fn revoked_key_is_refused_everywhere() {
        let text = format!("@revoked * {KEY_A}\n10.0.0.2 {KEY_A}\n");
        let kh = KnownHosts::parse(&text, Path::new("kh"));
        assert_eq!(
            kh.check("10.0.0.2", 22, &key(KEY_A)),
            Verdict::Revoked { line: 1 }
        );
    }

    #[test]
    fn learn_appends_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, format!("10.0.0.9 {KEY_B}")).expect("write");
        assert_eq!(
            learn(&path, "10.0.0.2", 2222, &key(KEY_A)).expect("learn"),
            Verdict::Unknown
        );
        assert_eq!(
            learn(&path, "10.0.0.2", 2222, &key(KEY_A)).expect("learn"),
            Verdict::Known
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2, "{text}");
        let kh = KnownHosts::load(&path).expect("load");
        assert_eq!(kh.check("10.0.0.2", 2222, &key(KEY_A)), Verdict::Known);
        assert_eq!(kh.check("10.0.0.9", 22, &key(KEY_B)), Verdict::Known);
    }

    #[test]
    fn learn_hashes_new_entries_in_a_hashed_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, format!("{}\n", hashed("10.0.0.9", KEY_B))).expect("write");
        assert_eq!(
            learn(&path, "10.0.0.2", 2222, &key(KEY_A)).expect("learn"),
            Verdict::Unknown
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("10.0.0.2"), "a plaintext name: {text}");
        let last = text.lines().last().unwrap_or_default();
        assert!(last.starts_with("|1|"), "{text}");
        let kh = KnownHosts::load(&path).expect("load");
        assert_eq!(kh.check("10.0.0.2", 2222, &key(KEY_A)), Verdict::Known);
        assert_eq!(kh.check("10.0.0.2", 22, &key(KEY_A)), Verdict::Unknown);
        // Each entry has its own salt, as OpenSSH writes them.
        learn(&path, "10.0.0.3", 22, &key(KEY_A)).expect("learn");
        let text = std::fs::read_to_string(&path).expect("read");
        let salts: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("|1|")?.split('|').next())
            .collect();
        assert_eq!(salts.len(), 3);
        assert!(salts[1] != salts[2]);
        // ssh-keygen -F finds what we wrote, when OpenSSH is installed.
        if let Ok(out) = std::process::Command::new("ssh-keygen")
            .args(["-F", "[10.0.0.2]:2222", "-f"])
            .arg(&path)
            .output()
        {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.example.com", "a.example.com"));
        assert!(glob_match("h?", "h1"));
        assert!(!glob_match("h?", "h10"));
        assert!(glob_match("*", ""));
    }
}
