//! The stack's remote scripts, built from the remote layer's pure builders: the facts script
//! (one round trip: what the host has) and the apply script (one round trip: lock, verify,
//! write, switch, compose, audit, unlock). No I/O here; secrets only ever go to stdin.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{
    Action, CertFile, ComposeCli, ContainerState, HostFacts, LEGACY_PROJECT_NAME, Layout,
    PROXY_GID, PermFix, Release,
};
use crate::remote::{
    self, AuditEntry, FileHash, ScriptError, WriteSpec, atomic_write, quote, sha256_facts,
};

/// Compose service names of the stack.
pub const PROXY_SERVICE: &str = "mcp-proxy";
/// The connector's service name.
pub const CONNECTOR_SERVICE: &str = "cloudflared";

/// The lock directory of a deploy dir ([`Layout::lock_dir`]).
pub fn lock_dir(layout: &Layout) -> String {
    layout.lock_dir()
}

/// The Compose label holding a container's project directory.
const WORKDIR_LABEL: &str = "com.docker.compose.project.working_dir";

/// The audit log of a deploy dir ([`Layout::audit_log`]).
pub fn audit_log(layout: &Layout) -> String {
    layout.audit_log()
}

fn cert_path(layout: &Layout, c: CertFile) -> String {
    format!("{}/{}", layout.data_dir(), c.file_name())
}

/// Prints `compose=v2|v1|none`: which Compose the host has (v2 preferred).
fn compose_detect() -> &'static str {
    "if docker compose version >/dev/null 2>&1; then echo compose=v2; \
     elif command -v docker-compose >/dev/null 2>&1; then echo compose=v1; \
     else echo compose=none; fi\n"
}

/// Prints the 12-hex fingerprint of the TUNNEL_TOKEN value read from stdin lines `KEY=VALUE`
/// (the token itself never leaves the host).
const TOKEN_FP: &str =
    "sed -n 's/^TUNNEL_TOKEN=//p' | head -n 1 | tr -d '\\n' | sha256sum | cut -c1-12";

/// The facts script: what the host has, in one round trip. Read-only.
pub fn facts_script(layout: &Layout, release: &Release) -> Result<String, ScriptError> {
    let cur = layout.current();
    let mut paths: Vec<String> = release
        .files
        .iter()
        .map(|f| format!("{cur}/{}", f.path))
        .collect();
    paths.push(layout.env_file());
    for c in CertFile::ALL {
        paths.push(cert_path(layout, c));
    }
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let hashes = sha256_facts(&refs)?;
    let env = quote(&layout.env_file());
    let project = quote(layout.project());
    let legacy = quote(LEGACY_PROJECT_NAME);
    let mut s = String::from("# tunnelfleet: facts\n");
    s.push_str(compose_detect());
    let _ = writeln!(
        s,
        "tf_c=$(readlink {} 2>/dev/null) && echo \"current=${{tf_c##*/}}\" || echo current=-",
        quote(&cur)
    );
    let _ = writeln!(s, "( {hashes} )");
    let _ = writeln!(
        s,
        "if [ -r {env} ]; then echo \"env_token_fp=$(cat {env} | {TOKEN_FP})\"; else echo env_token_fp=-; fi"
    );
    // Container states of this tunnel's project (`ctr=`) and of the old shared project name
    // (`lctr=`), with their labels: the parser keeps only those whose working directory is
    // this deploy dir's `current` (one `docker ps` each, the same for Compose v1 and v2: both
    // label their containers). And the token the running connector of this project and
    // directory was created with, hashed on the host: only its fingerprint comes back.
    let here = quote(&format!("{WORKDIR_LABEL}={cur},"));
    // An engine that does not answer is not "no containers": `engine=down` with Docker's own
    // words (asked again only then, so the common path costs nothing more).
    let _ = writeln!(
        s,
        "if ! tf_ps=$(docker ps -a --filter label=com.docker.compose.project={project} \
         --format '{{{{.Names}}}} {{{{.State}}}} {{{{.Labels}}}}' 2>/dev/null); then \
         echo \"engine=down $(docker ps -q 2>&1 >/dev/null | grep -v '^$' | head -n 1 | tr -d '\\r' | cut -c1-200)\"; fi\n\
         tf_lps=$(docker ps -a --filter label=com.docker.compose.project={legacy} \
         --format '{{{{.Names}}}} {{{{.State}}}} {{{{.Labels}}}}' 2>/dev/null)\n\
         printf '%s\\n' \"$tf_ps\" | sed -n 's/^./ctr=&/p'\n\
         printf '%s\\n' \"$tf_lps\" | sed -n 's/^./lctr=&/p'\n\
         tf_n=$(printf '%s\\n' \"$tf_ps\" | sed 's/$/,/' | grep ' running ' | grep -F 'com.docker.compose.service={CONNECTOR_SERVICE},' \
         | grep -F -e {here} | head -n 1 | cut -d' ' -f1)\n\
         if [ -n \"$tf_n\" ]; then echo \"connector_token_fp=$(docker inspect \"$tf_n\" 2>/dev/null \
         | grep -o '\"TUNNEL_TOKEN=[^\"]*\"' | head -n 1 | sed 's/^\"TUNNEL_TOKEN=//; s/\"$//' | tr -d '\\n' \
         | sha256sum | cut -c1-12)\"; fi"
    );
    // For this tunnel's containers that are not running: restart count and last log line
    // (status shows them; the controller redacts anything token-shaped).
    let _ = writeln!(
        s,
        "printf '%s\\n' \"$tf_ps\" | sed 's/$/,/' | grep -F -e {here} | grep -v '^[^ ]* running ' \
         | while read -r tf_a tf_b tf_l; do \
         tf_r=$(docker inspect --format '{{{{.RestartCount}}}}' \"$tf_a\" 2>/dev/null); \
         tf_g=$(docker logs --tail 1 \"$tf_a\" 2>&1 | tail -n 1 | tr -d '\\r' | cut -c1-300); \
         echo \"ctrdiag=$tf_a $tf_b ${{tf_r:--}} $tf_g\"; done"
    );
    // The network namespace of this tunnel's running proxy and connectors (one `docker
    // inspect` for all): Docker's restart policy gives a restarted proxy a new namespace and
    // leaves the connector in the old one, where localhost:8080 is nobody. The namespace
    // inode (`/proc/PID/ns/net`, readable when the session may look at the containers'
    // processes) and the container a connector joined (`NetworkMode` `container:ID`) tell.
    let _ = writeln!(
        s,
        "tf_run=$(printf '%s\\n' \"$tf_ps\" | sed 's/$/,/' | grep -F -e {here} | grep '^[^ ]* running ' \
         | grep -e 'com.docker.compose.service={PROXY_SERVICE},' -e 'com.docker.compose.service={CONNECTOR_SERVICE},' | cut -d' ' -f1)\n\
         if [ -n \"$tf_run\" ]; then docker inspect --format '{{{{.Name}}}} {{{{.Id}}}} {{{{.State.Pid}}}} {{{{.HostConfig.NetworkMode}}}} {{{{.State.StartedAt}}}} {{{{index .Config.Labels \"com.docker.compose.service\"}}}}' $tf_run 2>/dev/null \
         | while read -r tf_a tf_i tf_p tf_m tf_t tf_s; do \
         tf_ns=$(readlink \"/proc/$tf_p/ns/net\" 2>/dev/null | tr -cd 0-9); \
         echo \"netns=$tf_s ${{tf_a#/}} $tf_i ${{tf_ns:--}} $tf_m $tf_t\"; done; fi"
    );
    // Modes and owners of the secret-bearing paths, and the uid this session writes as.
    let _ = writeln!(s, "echo \"uid=$(id -u)\"");
    let release_files = release.files.iter().map(|f| format!("current/{}", f.path));
    for rel in PERM_PATHS
        .iter()
        .map(|p| p.to_string())
        .chain(release_files)
    {
        let _ = writeln!(
            s,
            "tf_s=$(stat -c '%a %u %g' -- {} 2>/dev/null) && echo \"perm={rel} $tf_s\"",
            quote(&layout.path(&rel))
        );
    }
    // Whose the deploy dir is: tunnelfleet's, empty, absent, or someone else's.
    let d = quote(layout.deploy_dir());
    let _ = writeln!(
        s,
        "if [ ! -e {d} ]; then echo dir=absent; elif [ -d {d}/.tunnelfleet ] || [ -L {d}/current ]; then echo dir=managed; \
         elif [ -d {d} ] && [ -z \"$(ls -A {d} 2>/dev/null)\" ]; then echo dir=empty; else echo dir=foreign; fi"
    );
    // The release the last successful deploy recorded in the host's audit log.
    let _ = writeln!(
        s,
        "tf_r=$(grep '\"outcome\":\"succeeded\"' {} 2>/dev/null | grep -o '\"release\":\"[^\"]*\"' | tail -n 1 | cut -d'\"' -f4); \
         [ -n \"$tf_r\" ] && echo \"deployed=$tf_r\"",
        quote(&audit_log(layout))
    );
    // The fleet lock, when held: its holder record (no secrets) on one line.
    let lock = lock_dir(layout);
    let _ = writeln!(
        s,
        "if [ -d {l} ]; then echo \"lock=$(tr -d '\\n' < {h} 2>/dev/null)\"; fi",
        l = quote(&lock),
        h = quote(&format!("{lock}/{}", remote::HOLDER_FILE))
    );
    // The served certificate (public) so status can show its serial and expiry.
    let _ = writeln!(
        s,
        "echo {CERT_BEGIN}; cat {} 2>/dev/null; echo {CERT_END}",
        quote(&cert_path(layout, CertFile::TlsCrt))
    );
    s.push_str("exit 0\n");
    Ok(s)
}

/// The paths whose modes and owners are facts, relative to the deploy dir.
const PERM_PATHS: [&str; 4] = [
    "shared",
    "shared/.env",
    "shared/data",
    "shared/data/tls.key",
];

const CERT_BEGIN: &str = "@tunnelfleet-cert-begin";
const CERT_END: &str = "@tunnelfleet-cert-end";

/// What the facts script reported, beyond [`HostFacts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedFacts {
    /// The plan-relevant facts.
    pub facts: HostFacts,
    /// Which Compose the host has.
    pub compose: Option<ComposeCli>,
    /// Fingerprint of the token in `.env`, if any.
    pub env_token_fp: Option<String>,
    /// Container name by service.
    pub containers: BTreeMap<String, (String, ContainerState)>,
    /// The served certificate (PEM), if any.
    pub tls_crt: Option<String>,
    /// For this tunnel's containers that are not running, by container name: Docker's state
    /// (`restarting`, `exited`, `created`, ...), restart count, and the last log line (raw:
    /// redact before showing).
    pub diagnostics: BTreeMap<String, ContainerDiag>,
    /// The fleet lock's holder record, when the lock is held (`""` when it has none yet).
    pub lock_holder: Option<String>,
    /// The release the host's audit log says the last successful operation installed.
    pub last_deployed: Option<String>,
    /// The deploy dir: `absent`, `empty`, `managed` (tunnelfleet's: `.tunnelfleet/` or
    /// `current`), or `foreign` (holds other things).
    pub dir_state: Option<String>,
    /// The Docker engine did not answer (`docker ps` failed): Docker's error line. The
    /// container facts then say nothing (no containers were seen, none were absent).
    pub engine_down: Option<String>,
    /// The network namespace facts of this tunnel's running proxy and connectors.
    pub netns: Vec<NetnsFact>,
}

/// What to do when the Docker engine does not answer: the hint every verb gives.
pub const ENGINE_DOWN_HINT: &str = "start the Docker engine on the host (e.g. `sudo systemctl \
     start docker`), then run this again; `tunnelfleet status` shows when it answers";

/// What to do when a connector lost the proxy's network namespace: the repairing command.
pub const NETNS_LOST_HINT: &str = "run `tunnelfleet deploy` (it recreates the connector in \
     the proxy's network namespace), then run this again";

/// The cause `status` names for [`HostFacts::connector_netns_lost`].
pub const NETNS_LOST_CAUSE: &str = "connector lost the proxy's network after the proxy restarted";

impl ParsedFacts {
    /// `Docker engine down: ...` when the engine did not answer: no container fact holds, so
    /// no verb may plan from them.
    pub fn engine_refusal(&self) -> Option<String> {
        self.engine_down
            .as_ref()
            .map(|why| format!("Docker engine down: {why}"))
    }
}

/// The network namespace of one running container of the stack, as the engine and the
/// host's `/proc` tell it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetnsFact {
    /// Compose service.
    pub service: String,
    /// Container name.
    pub name: String,
    /// Container id.
    pub id: String,
    /// Inode of `/proc/PID/ns/net` of the container's process, when readable.
    pub inode: Option<u64>,
    /// Docker's `HostConfig.NetworkMode` (`container:ID` for a connector sharing the proxy's
    /// namespace on a real engine).
    pub network_mode: String,
    /// Docker's `State.StartedAt` (RFC 3339), when given: every start of a container gives it
    /// a new network namespace, so a connector that started before the proxy it joined last
    /// started is in a namespace the proxy left.
    pub started_at: Option<String>,
}

/// Why a running connector is not in the running proxy's network namespace, if one is not:
/// its namespace inode differs from the proxy's, or it joined another container than the
/// proxy that runs now. Unknown facts (an inode the session may not read, another engine's
/// `NetworkMode` spelling) never count as lost.
pub fn connector_netns_lost(netns: &[NetnsFact]) -> Option<String> {
    let proxy = netns.iter().find(|n| n.service == PROXY_SERVICE)?;
    for c in netns.iter().filter(|n| n.service == CONNECTOR_SERVICE) {
        if let (Some(a), Some(b)) = (proxy.inode, c.inode)
            && a != b
        {
            return Some(format!(
                "{} is in network namespace {b}, the proxy {} in {a}",
                c.name, proxy.name
            ));
        }
        let joined = c
            .network_mode
            .strip_prefix("container:")
            .unwrap_or_default();
        if joined == proxy.id
            && let (Some(p), Some(t)) = (started(&proxy.started_at), started(&c.started_at))
            && t < p
        {
            return Some(format!(
                "{} joined the proxy {} before the proxy's last start, which gave it a new \
                 network namespace",
                c.name, proxy.name
            ));
        }
        if !joined.is_empty() && joined != proxy.id {
            return Some(format!(
                "{} joined container {}, not the proxy {} that runs now",
                c.name,
                &joined[..joined.len().min(12)],
                proxy.name
            ));
        }
    }
    None
}

/// A `State.StartedAt` as a time; Docker's zero time ("never started") and anything
/// unreadable are unknown.
fn started(t: &Option<String>) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    let t = chrono::DateTime::parse_from_rfc3339(t.as_deref()?).ok()?;
    (chrono::Datelike::year(&t) > 1).then_some(t)
}

/// Why a container is not running, as far as the host can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ContainerDiag {
    /// Docker's state word.
    pub state: String,
    /// `RestartCount`, when known.
    pub restarts: Option<u64>,
    /// The container's last log line (raw).
    pub last_log: String,
}

/// Docker's container state as the plan sees it: only `running` serves. `restarting` is a
/// crash loop between two failed starts; `created`, `exited`, `paused`, `dead` serve nothing.
fn state_of(s: &str) -> ContainerState {
    match s {
        "running" => ContainerState::Running,
        _ => ContainerState::Exited,
    }
}

/// The value of label `key` in Docker's `{{.Labels}}` (`k=v,k=v,...`, in any order).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels
        .split(',')
        .find_map(|p| p.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// The sha256 of an empty input, truncated: what [`TOKEN_FP`] prints when there is no token.
const EMPTY_FP: &str = "e3b0c44298fc";

/// Parses the facts script's output.
pub fn parse_facts(layout: &Layout, release: &Release, out: &str) -> ParsedFacts {
    let mut p = ParsedFacts::default();
    let cur = layout.current();
    let mut hash_lines = String::new();
    let mut in_cert = false;
    let mut cert = String::new();
    for line in out.lines() {
        if line == CERT_BEGIN {
            in_cert = true;
            continue;
        }
        if line == CERT_END {
            in_cert = false;
            continue;
        }
        if in_cert {
            cert.push_str(line);
            cert.push('\n');
            continue;
        }
        if line.contains('\t') {
            hash_lines.push_str(line);
            hash_lines.push('\n');
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "compose" => {
                p.compose = match v {
                    "v2" => Some(ComposeCli::V2),
                    "v1" => Some(ComposeCli::V1),
                    _ => None,
                }
            }
            "current" if v != "-" && !v.is_empty() => p.facts.current_release = Some(v.to_string()),
            "env_token_fp" if v != "-" && v != EMPTY_FP => p.env_token_fp = Some(v.to_string()),
            "connector_token_fp" if v.len() == 12 && v != EMPTY_FP => {
                p.facts.connector_token_fingerprint = Some(v.to_string())
            }
            "uid" => p.facts.remote_uid = v.trim().parse().ok(),
            "lock" => p.lock_holder = Some(v.to_string()),
            "dir" => p.dir_state = Some(v.to_string()),
            "engine" => {
                let why = v.strip_prefix("down").unwrap_or(v).trim();
                p.engine_down = Some(if why.is_empty() {
                    "the Docker engine did not answer".to_string()
                } else {
                    why.to_string()
                });
            }
            "netns" => {
                let mut it = v.split(' ');
                if let (Some(svc), Some(name), Some(id), Some(ino), Some(mode)) =
                    (it.next(), it.next(), it.next(), it.next(), it.next())
                {
                    p.netns.push(NetnsFact {
                        service: svc.to_string(),
                        name: name.to_string(),
                        id: id.to_string(),
                        inode: ino.parse().ok(),
                        network_mode: mode.to_string(),
                        started_at: it.next().filter(|t| !t.is_empty()).map(str::to_string),
                    });
                }
            }
            "deployed" if !v.is_empty() => p.last_deployed = Some(v.to_string()),
            "ctrdiag" => {
                let mut it = v.splitn(4, ' ');
                if let (Some(name), Some(state)) = (it.next(), it.next()) {
                    p.diagnostics.insert(
                        name.to_string(),
                        ContainerDiag {
                            state: state.to_string(),
                            restarts: it.next().and_then(|r| r.parse().ok()),
                            last_log: it.next().unwrap_or_default().to_string(),
                        },
                    );
                }
            }
            "perm" => {
                let mut it = v.split_whitespace();
                if let (Some(path), Some(m), Some(u), Some(g)) =
                    (it.next(), it.next(), it.next(), it.next())
                    && let (Ok(m), Ok(u), Ok(g)) = (u32::from_str_radix(m, 8), u.parse(), g.parse())
                {
                    p.facts.perms.insert(path.to_string(), (m, u, g));
                }
            }
            "ctr" | "lctr" => {
                let mut it = v.splitn(3, ' ');
                if let (Some(name), Some(st), Some(labels)) = (it.next(), it.next(), it.next()) {
                    let here = label(labels, WORKDIR_LABEL) == Some(cur.as_str());
                    if k == "lctr" {
                        // The old shared project: ours only when run from this deploy dir
                        // (another tunnel's stack may still run under that name).
                        p.facts.legacy_project |= here;
                        continue;
                    }
                    if !here {
                        p.facts.runs_elsewhere = true;
                        continue;
                    }
                    if let Some(svc) = label(labels, "com.docker.compose.service") {
                        // Keep the running one when several containers serve a service.
                        let state = state_of(st);
                        let keep =
                            !matches!(p.containers.get(svc), Some((_, ContainerState::Running)));
                        if keep {
                            p.containers
                                .insert(svc.to_string(), (name.to_string(), state));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if cert.contains("BEGIN CERTIFICATE") {
        p.tls_crt = Some(cert);
    }
    p.facts.connector_netns_lost = connector_netns_lost(&p.netns);
    p.facts.proxy = p
        .containers
        .get(PROXY_SERVICE)
        .map(|(_, s)| *s)
        .unwrap_or_default();
    p.facts.connector = p
        .containers
        .get(CONNECTOR_SERVICE)
        .map(|(_, s)| *s)
        .unwrap_or_default();
    let hashes = remote::parse_sha256_facts(&hash_lines).unwrap_or_default();
    let mut by_path: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (path, h) in hashes {
        by_path.insert(
            path,
            match h {
                FileHash::Sha256(x) => Some(x),
                _ => None,
            },
        );
    }
    for f in &release.files {
        let v = by_path.get(&format!("{cur}/{}", f.path)).cloned().flatten();
        p.facts.files.insert(f.path.clone(), v);
    }
    p.facts.env_sha256 = by_path.get(&layout.env_file()).cloned().flatten();
    for c in CertFile::ALL {
        p.facts
            .certs
            .insert(c, by_path.get(&cert_path(layout, c)).cloned().flatten());
    }
    p
}

/// Everything one apply round trip does on a host.
pub struct ApplySpec<'a> {
    /// The host's layout.
    pub layout: &'a Layout,
    /// The release to install (written only when `write_release`).
    pub release: &'a Release,
    /// Write the release's files.
    pub write_release: bool,
    /// Point `current` at the release.
    pub switch_current: bool,
    /// New `.env` content (secret: goes to stdin).
    pub env: Option<&'a [u8]>,
    /// Certificates to write (`tls.key` is secret: goes to stdin).
    pub certs: Vec<(CertFile, &'a [u8])>,
    /// Compose operations, in order.
    pub actions: Vec<Action>,
    /// Which Compose to use.
    pub compose: ComposeCli,
    /// Lock holder record (who, when, what; no secrets).
    pub holder_json: &'a str,
    /// The `current` release the plan was computed against (None: no `current`).
    pub expect_current: Option<&'a str>,
    /// The `.env` hash the plan was computed against (None: no `.env`).
    pub expect_env_sha256: Option<&'a str>,
    /// The audit record written on success (None: the caller records the outcome itself,
    /// after its health gate).
    pub audit: Option<&'a AuditEntry>,
    /// Modes and owners to repair after the writes.
    pub fix_perms: Vec<PermFix>,
}

/// Exit code of the apply script when the host changed between facts and apply.
pub const CHANGED_EXIT: i32 = crate::remote::RemoteExit::Changed.code();

/// Builds the apply script and its stdin. The script takes the fleet lock (exit 3 with the
/// holder on stdout when held), checks the host still is as the plan saw it, writes every file
/// atomically (all temp files complete before the first rename: a full disk keeps every old
/// file), links and switches `current`, runs the compose actions, appends the audit line, and
/// always releases the lock.
pub fn apply_script(spec: &ApplySpec<'_>) -> Result<(String, Vec<u8>), ScriptError> {
    let l = spec.layout;
    let rel_dir = l.release_dir(&spec.release.id);
    let mut files: Vec<(WriteSpec, &[u8])> = Vec::new();
    // Certificates first, tls.crt last (the proxy polls it: the key must be in place first).
    let mut certs = spec.certs.clone();
    certs.sort_by_key(|(c, _)| *c);
    for (c, bytes) in &certs {
        // tls.key: readable by the proxy's group only (decisions: "tls.key 0640").
        let spec = match c {
            CertFile::TlsKey => {
                WriteSpec::new(cert_path(l, *c), 0o640).owner(format!(":{PROXY_GID}"))
            }
            _ => WriteSpec::new(cert_path(l, *c), 0o644),
        };
        files.push((spec, bytes));
    }
    if let Some(env) = spec.env {
        files.push((WriteSpec::new(l.env_file(), 0o600).dir_mode(0o700), env));
    }
    if spec.write_release {
        for f in &spec.release.files {
            files.push((
                WriteSpec::new(format!("{rel_dir}/{}", f.path), f.mode),
                &f.contents,
            ));
        }
    }
    let (write, payload) = if files.is_empty() {
        (String::new(), Vec::new())
    } else {
        atomic_write(&files)?
    };
    let lock = lock_dir(l);
    let take = remote::script_lock(&lock, spec.holder_json)?;
    let release = remote::unlock(&lock, spec.holder_json)?;
    let audit = match spec.audit {
        Some(a) => Some(remote::audit_line(&audit_log(l), a)?),
        None => None,
    };

    let mut body = String::new();
    let cur = quote(&l.current());
    let expect_cur = spec.expect_current.unwrap_or("");
    let _ = writeln!(
        body,
        "tf_c=$(readlink {cur} 2>/dev/null); tf_c=${{tf_c##*/}}\n\
         if [ \"$tf_c\" != {ec} ]; then echo \"the host changed since its facts were read (current is now '$tf_c'); rerun\" >&2; exit {CHANGED_EXIT}; fi",
        ec = quote(expect_cur)
    );
    let env = quote(&l.env_file());
    let _ = writeln!(
        body,
        "tf_e=-; if [ -f {env} ]; then tf_e=$(sha256sum < {env}); tf_e=${{tf_e%% *}}; fi\n\
         if [ \"$tf_e\" != {ee} ]; then echo \"the host's .env changed since its facts were read; rerun\" >&2; exit {CHANGED_EXIT}; fi",
        ee = quote(spec.expect_env_sha256.unwrap_or("-"))
    );
    let _ = writeln!(
        body,
        "mkdir -p -m 0700 {shared} && mkdir -p -m 0755 {data} || exit 1",
        shared = quote(&l.shared_dir()),
        data = quote(&l.data_dir())
    );
    if spec.env.is_some() {
        // The previous .env stays beside it (0600), so a deploy whose new token the edge
        // refuses can be undone on the hosts it reached.
        let prev = quote(&l.env_prev());
        let _ = writeln!(
            body,
            "if [ -f {env} ]; then cp -p {env} {prev}.tmp && mv -f {prev}.tmp {prev} || echo 'keep the previous .env: failed' >&2; fi"
        );
    }
    if !write.is_empty() {
        let _ = writeln!(body, "( {write} ) || exit $?");
    }
    if spec.write_release {
        for link in &spec.release.symlinks {
            let _ = writeln!(
                body,
                "ln -sfn {} {} || exit 1",
                quote(&link.target),
                quote(&format!("{rel_dir}/{}", link.path))
            );
        }
    }
    if spec.switch_current {
        let tmp = quote(&l.current_tmp());
        let _ = writeln!(
            body,
            "ln -sfn {target} {tmp} && mv -Tf {tmp} {cur} || {{ echo 'switch current: failed' >&2; exit 1; }}",
            target = quote(&Layout::current_target(&spec.release.id)),
        );
    }
    for f in &spec.fix_perms {
        let path = quote(&l.path(&f.path));
        let chown = match &f.owner {
            Some(o) => format!("chown -- {} {path} && ", quote(o)),
            None => String::new(),
        };
        let _ = writeln!(
            body,
            "{chown}chmod -- {mode:04o} {path} || {{ echo {msg} >&2; exit 1; }}",
            mode = f.mode,
            msg = quote(&format!("fix permissions of {}: failed", f.path))
        );
    }
    for a in &spec.actions {
        body.push_str(&super::release_scripts::logged_compose(
            &spec.compose.action_command(l, *a),
            a.describe(),
        ));
    }
    if let Some(audit) = audit {
        let _ = writeln!(body, "( {audit} ) || echo 'audit log: not written' >&2");
    }

    // Once the files are in (stdin consumed), the script completes whatever happens to the
    // connection: SIGHUP/SIGPIPE ignored, Compose's output to a log on the host.
    let script = format!(
        "# tunnelfleet: apply\n{pre}( {take} ) || exit $?\n( {body} ); tf_rc=$?\n( {release} ) >/dev/null\nexit $tf_rc\n",
        pre = super::release_scripts::detached_preamble(l)
    );
    Ok((script, payload))
}

/// A script that runs one compose operation in the stack's project.
pub fn compose_script(layout: &Layout, compose: ComposeCli, args: &[&str]) -> String {
    format!("{} >&2\n", compose.command(layout, args))
}

/// One cloudflared container of the stack, as [`connectors_script`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectorContainer {
    /// Container name.
    pub name: String,
    /// `running`, `exited`, ...
    pub state: String,
    /// Fingerprint of the TUNNEL_TOKEN it was created with (hashed on the host).
    pub token_fp: Option<String>,
    /// The connector id it logged at start (`Generated Connector ID: ...`), if yet.
    pub connector_id: Option<String>,
}

/// Lists the stack's cloudflared containers with their state, token fingerprint and
/// connector id, one `conn=NAME STATE FP ID` line each (`-` for unknown). Read-only.
pub fn connectors_script(layout: &Layout) -> String {
    describe_connectors(layout, &[])
}

/// Like [`connectors_script`], but describes only the connectors whose names are not in
/// `known` (one `docker ps -a`, then `inspect` and `logs` of the new ones only).
pub fn new_connectors_script(layout: &Layout, known: &[String]) -> String {
    describe_connectors(layout, known)
}

fn describe_connectors(layout: &Layout, known: &[String]) -> String {
    let project = quote(layout.project());
    let known = quote(&format!(" {} ", known.join(" ")));
    format!(
        "tf_known={known}\n\
         docker ps -a --filter label=com.docker.compose.project={project} \
         --filter label=com.docker.compose.service={CONNECTOR_SERVICE} --format '{{{{.Names}}}} {{{{.State}}}}' 2>/dev/null \
         | while read -r tf_n tf_st; do \
         case \"$tf_known\" in *\" $tf_n \"*) continue;; esac; \
         tf_fp=$(docker inspect \"$tf_n\" 2>/dev/null | grep -o '\"TUNNEL_TOKEN=[^\"]*\"' | head -n 1 \
         | sed 's/^\"TUNNEL_TOKEN=//; s/\"$//' | tr -d '\\n' | sha256sum | cut -c1-12); \
         tf_id=$(docker logs \"$tf_n\" 2>&1 | sed -n 's/.*Generated Connector ID: *\\([0-9a-fA-F-]*\\).*/\\1/p' | tail -n 1); \
         echo \"conn=$tf_n $tf_st $tf_fp ${{tf_id:--}}\"; done\n"
    )
}

/// Parses [`connectors_script`] output.
pub fn parse_connectors(out: &str) -> Vec<ConnectorContainer> {
    out.lines()
        .filter_map(|l| l.strip_prefix("conn="))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (name, state, fp, id) = (it.next()?, it.next()?, it.next()?, it.next()?);
            Some(ConnectorContainer {
                name: name.to_string(),
                state: state.to_string(),
                token_fp: (fp.len() == 12 && fp != EMPTY_FP).then(|| fp.to_string()),
                connector_id: (id != "-").then(|| id.to_string()),
            })
        })
        .collect()
}

/// Starts one more connector beside those running (make-before-break): Compose scales the
/// service up without recreating the running ones; the new container reads `.env` now.
pub fn scale_connectors_script(layout: &Layout, compose: ComposeCli, count: usize) -> String {
    let scale = format!("{CONNECTOR_SERVICE}={count}");
    compose_script(
        layout,
        compose,
        &[
            "up",
            "-d",
            "--no-deps",
            "--no-recreate",
            "--scale",
            &scale,
            CONNECTOR_SERVICE,
        ],
    )
}

/// Stops (letting it drain for `grace_s` seconds) and removes the named old connector
/// containers, then sets the service's scale back to 1 (the new connector stays).
pub fn stop_connectors_script(
    layout: &Layout,
    compose: ComposeCli,
    names: &[String],
    grace_s: u64,
) -> String {
    let mut s = String::new();
    for n in names {
        let q = quote(n);
        let _ = writeln!(
            s,
            "docker stop -t {grace_s} {q} >/dev/null 2>&1; docker rm -f {q} >/dev/null 2>&1 || {{ echo \"remove old connector {n}: failed\" >&2; exit 1; }}"
        );
    }
    s.push_str(&scale_connectors_script(layout, compose, 1));
    s
}

/// The setup component's service name in the compose file.
pub const SETUP_SERVICE: &str = "setup";

/// Where tunnelfleet records, on a host, the last `--token-version` the setup component ran
/// with (the component refuses to rotate when the value has not changed).
pub fn setup_version_file(layout: &Layout) -> String {
    layout.setup_version_file()
}

/// The file the setup component writes the tunnel token to (root-only).
pub fn setup_token_file(layout: &Layout) -> String {
    format!("{}/tunnel-token", layout.data_dir())
}

/// Exit code of the setup scripts when the component itself failed (its message on stderr).
pub const SETUP_FAILED_EXIT: i32 = crate::remote::RemoteExit::ComposeFailed.code();

/// Rotates the token through the setup component on this host, as the guide does by hand:
/// `docker compose run --rm setup` with `--token-version` one above both `floor` and the
/// version this host last recorded. The OIDC identity token comes on stdin (one line) and
/// reaches the component through the environment, never a command line. On success the
/// version is recorded on the host and stdout carries `setup_version=N` and
/// `token=<data/tunnel-token>`; the component's own output goes to stderr.
pub fn setup_token_script(layout: &Layout, compose: ComposeCli, floor: u32) -> String {
    let vf = quote(&setup_version_file(layout));
    let tf = quote(&setup_token_file(layout));
    let run = compose.command(layout, &["run", "--rm", "-T", SETUP_SERVICE]);
    format!(
        "# tunnelfleet: setup token\n\
         IFS= read -r ANTHROPIC_IDENTITY_TOKEN || true\n\
         if [ -z \"$ANTHROPIC_IDENTITY_TOKEN\" ]; then echo 'no identity token on stdin' >&2; exit {no_input}; fi\n\
         export ANTHROPIC_IDENTITY_TOKEN\n\
         tf_last=$(cat {vf} 2>/dev/null | tr -dc 0-9)\n\
         tf_v={floor}\n\
         if [ -n \"$tf_last\" ] && [ \"$tf_last\" -gt \"$tf_v\" ]; then tf_v=$tf_last; fi\n\
         tf_v=$((tf_v + 1))\n\
         {run} \"--token-version=$tf_v\" --output=dir:/data >&2 || {{ tf_rc=$?; echo \"setup (--token-version=$tf_v) failed with exit $tf_rc\" >&2; exit {SETUP_FAILED_EXIT}; }}\n\
         unset ANTHROPIC_IDENTITY_TOKEN\n\
         mkdir -p \"$(dirname {vf})\" && printf '%s\\n' \"$tf_v\" > {vf}.tmp && mv -f {vf}.tmp {vf} \
         || echo 'record the token version: failed' >&2\n\
         {read}",
        read = setup_read_token_body(&tf, "$tf_v"),
        no_input = crate::remote::RemoteExit::NoInput.code(),
    )
}

/// Reads back the token the setup component wrote earlier (a resumed rotation: the component
/// is not run again). Same output as [`setup_token_script`].
pub fn setup_read_token_script(layout: &Layout) -> String {
    let vf = quote(&setup_version_file(layout));
    let tf = quote(&setup_token_file(layout));
    format!(
        "# tunnelfleet: setup token (read back)\n\
         tf_v=$(cat {vf} 2>/dev/null | tr -dc 0-9)\n{}",
        setup_read_token_body(&tf, "${tf_v:--}")
    )
}

fn setup_read_token_body(token_file: &str, version: &str) -> String {
    format!(
        "if [ ! -s {token_file} ]; then echo 'the setup component left no token in data/tunnel-token' >&2; exit {incomplete}; fi\n\
         echo \"setup_version={version}\"\n\
         printf 'token='; cat {token_file}; echo\n",
        incomplete = crate::remote::RemoteExit::Incomplete.code(),
    )
}

/// What a setup token script printed: the version used and the token (secret).
pub struct SetupTokenOutput {
    /// The `--token-version` the component ran with (None when the host never recorded one).
    pub version: Option<u32>,
    /// The token as read from `data/tunnel-token`, trimmed.
    pub token: String,
}

/// Parses [`setup_token_script`] / [`setup_read_token_script`] output.
pub fn parse_setup_token(out: &str) -> Option<SetupTokenOutput> {
    let mut version = None;
    let mut token = None;
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("setup_version=") {
            version = v.trim().parse().ok();
        } else if let Some(t) = line.strip_prefix("token=") {
            token = Some(t.trim().to_string());
        }
    }
    token.map(|token| SetupTokenOutput { version, token })
}

/// A Go-style duration (`720h`, `90m`, `45s`), as the setup component's flags take.
pub fn go_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Renews the server certificate through the setup component on this host
/// (`docker compose run --rm setup renew-cert --output=dir:/data [--renew-before=D]`) under
/// the fleet lock (exit 3 with the holder on stdout when held), then prints the served
/// certificate between markers, as the facts script does. Nothing is restarted: the proxy
/// polls its certificate file.
pub fn setup_renew_cert_script(
    layout: &Layout,
    compose: ComposeCli,
    renew_before: Option<std::time::Duration>,
    holder_json: &str,
) -> Result<String, ScriptError> {
    let lock = lock_dir(layout);
    let take = remote::script_lock(&lock, holder_json)?;
    let release = remote::unlock(&lock, holder_json)?;
    let mut args = vec![
        "run".to_string(),
        "--rm".into(),
        "-T".into(),
        SETUP_SERVICE.into(),
        "renew-cert".into(),
        "--output=dir:/data".into(),
    ];
    if let Some(d) = renew_before {
        args.push(format!("--renew-before={}", go_duration(d)));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = compose.command(layout, &refs);
    Ok(format!(
        "# tunnelfleet: setup renew-cert\n\
         ( {take} ) || exit $?\n\
         {run} >&2; tf_rc=$?\n\
         ( {release} ) >/dev/null\n\
         if [ $tf_rc -ne 0 ]; then echo \"setup renew-cert failed with exit $tf_rc\" >&2; exit {SETUP_FAILED_EXIT}; fi\n\
         echo {CERT_BEGIN}; cat {crt} 2>/dev/null; echo {CERT_END}\n",
        crt = quote(&cert_path(layout, CertFile::TlsCrt)),
    ))
}

/// The certificate printed between the facts markers, if any.
pub fn parse_cert_block(out: &str) -> Option<String> {
    let start = out.find(CERT_BEGIN)? + CERT_BEGIN.len();
    let end = out[start..].find(CERT_END)? + start;
    let pem = out[start..end].trim();
    (!pem.is_empty()).then(|| format!("{pem}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(720 * 3600)), "720h");
        assert_eq!(go_duration(Duration::from_secs(90 * 60)), "90m");
        assert_eq!(go_duration(Duration::from_secs(45)), "45s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn setup_renew_script_locks_runs_and_prints_the_certificate() {
        let l = Layout::new("/srv/mcp-tunnel", "testbed");
        let s = setup_renew_cert_script(
            &l,
            ComposeCli::V1,
            Some(Duration::from_secs(720 * 3600)),
            "{}",
        )
        .expect("script");
        let lock = s.find("mkdir").expect("takes the lock");
        let run = s
            .find("docker-compose -p mcp-tunnel-testbed --project-directory /srv/mcp-tunnel/current -f /srv/mcp-tunnel/current/docker-compose.yaml run --rm -T setup renew-cert '--output=dir:/data' '--renew-before=720h'")
            .expect("runs the component");
        assert!(lock < run);
        assert!(s.contains(CERT_BEGIN) && s.contains("/srv/mcp-tunnel/shared/data/tls.crt"));
        let out = format!(
            "{CERT_BEGIN}\n-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n{CERT_END}\n"
        );
        assert_eq!(
            parse_cert_block(&out).as_deref(),
            Some("-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n")
        );
        assert_eq!(
            parse_cert_block(&format!("{CERT_BEGIN}\n{CERT_END}\n")),
            None
        );
    }

    #[test]
    fn engine_down_and_lost_namespaces_are_parsed() {
        let l = Layout::new("/srv/a", "t");
        let r = Release::new(Vec::new(), Vec::new());
        let p = parse_facts(&l, &r, "engine=down Cannot connect to the Docker daemon\n");
        assert_eq!(
            p.engine_down.as_deref(),
            Some("Cannot connect to the Docker daemon")
        );
        assert_eq!(
            parse_facts(&l, &r, "engine=down \n").engine_down.as_deref(),
            Some("the Docker engine did not answer")
        );
        assert_eq!(parse_facts(&l, &r, "compose=v2\n").engine_down, None);

        let fact = |svc: &str, name: &str, id: &str, ino: Option<u64>, mode: &str| NetnsFact {
            service: svc.into(),
            name: name.into(),
            id: id.into(),
            inode: ino,
            network_mode: mode.into(),
            started_at: None,
        };
        let proxy = fact(PROXY_SERVICE, "p", "pid1", Some(10), "mcp-tunnel-t_default");
        // Inodes decide when both are known.
        let lost = connector_netns_lost(&[
            proxy.clone(),
            fact(CONNECTOR_SERVICE, "c", "cid", Some(9), "container:pid1"),
        ]);
        assert_eq!(
            lost.as_deref(),
            Some("c is in network namespace 9, the proxy p in 10")
        );
        assert_eq!(
            connector_netns_lost(&[
                proxy.clone(),
                fact(CONNECTOR_SERVICE, "c", "cid", Some(10), "container:pid1"),
            ]),
            None
        );
        // Unknown inodes: the container the connector joined decides.
        let unread = fact(PROXY_SERVICE, "p", "pid1", None, "default");
        assert!(
            connector_netns_lost(&[
                unread.clone(),
                fact(
                    CONNECTOR_SERVICE,
                    "c",
                    "cid",
                    None,
                    "container:old0123456789abcdef"
                ),
            ])
            .is_some_and(|w| w.contains("joined container old012345678"))
        );
        // The model's spelling (`service:X`) and a missing proxy say nothing.
        assert_eq!(
            connector_netns_lost(&[
                unread,
                fact(CONNECTOR_SERVICE, "c", "cid", None, "service:mcp-proxy"),
            ]),
            None
        );
        assert_eq!(
            connector_netns_lost(&[fact(CONNECTOR_SERVICE, "c", "cid", Some(9), "x")]),
            None
        );

        let out = "netns=mcp-proxy p pid1 10 default\nnetns=cloudflared c cid 9 container:pid1\n";
        let p = parse_facts(&l, &r, out);
        assert_eq!(p.netns.len(), 2);
        assert!(p.facts.connector_netns_lost.is_some());
        let out = "netns=mcp-proxy p pid1 - default\nnetns=cloudflared c cid - container:pid1\n";
        assert_eq!(parse_facts(&l, &r, out).facts.connector_netns_lost, None);

        // Same inode (or none readable), joined the proxy that runs: the start times decide.
        // A connector started before the proxy's last start is in the namespace it left.
        let at = |t: &str| {
            parse_facts(
                &l,
                &r,
                &format!(
                    "netns=mcp-proxy p pid1 10 default 2026-12-03T21:00:05.000000001Z\n\
                     netns=cloudflared c cid 10 container:pid1 {t}\n"
                ),
            )
            .facts
            .connector_netns_lost
        };
        assert!(
            at("2026-12-03T21:00:05Z").is_some_and(|w| w.contains("before the proxy's last start"))
        );
        assert!(at("2026-12-03T20:59:59.999999999Z").is_some());
        assert_eq!(at("2026-12-03T21:00:05.000000002Z"), None);
        assert_eq!(at("2026-12-03T21:00:06+00:00"), None);
        // Docker's zero time and an unreadable time say nothing.
        assert_eq!(at("0001-01-01T00:00:00Z"), None);
        assert_eq!(at("soon"), None);
    }

    #[test]
    fn facts_keep_only_containers_of_this_project_and_directory() {
        let l = Layout::new("/srv/a", "t");
        let r = Release::new(Vec::new(), Vec::new());
        let wd = |d: &str| format!("com.docker.compose.project.working_dir={d}");
        let out = format!(
            "ctr=p1 running com.docker.compose.project=mcp-tunnel-t,{},com.docker.compose.service=mcp-proxy\n\
             ctr=c1 restarting com.docker.compose.service=cloudflared,{}\n",
            wd("/srv/a/current"),
            wd("/srv/a/current")
        );
        let p = parse_facts(&l, &r, &out);
        assert_eq!(p.facts.proxy, ContainerState::Running);
        // A crash loop is not running.
        assert_eq!(p.facts.connector, ContainerState::Exited);
        assert!(!p.facts.runs_elsewhere && !p.facts.legacy_project);

        let out = format!(
            "ctr=p1 running com.docker.compose.service=mcp-proxy,{}\n\
             lctr=x running com.docker.compose.service=mcp-proxy,{}\n",
            wd("/srv/b/current"),
            wd("/srv/b/current")
        );
        let p = parse_facts(&l, &r, &out);
        assert!(p.facts.runs_elsewhere);
        assert!(
            !p.facts.legacy_project,
            "another deploy dir's old project is not ours"
        );
        assert_eq!(p.facts.proxy, ContainerState::Missing);

        let out = format!(
            "lctr=x running com.docker.compose.service=mcp-proxy,{}\n",
            wd("/srv/a/current")
        );
        assert!(parse_facts(&l, &r, &out).facts.legacy_project);
    }
}
