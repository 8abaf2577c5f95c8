//! Remote scripts of staged upgrades and rollbacks: stage a release (files and images) without
//! switching to it, switch `current` to a release already on the host, read the containers'
//! health for the gate, list the releases a host keeps, prune old ones. Pure builders, no I/O;
//! no secret ever goes into these scripts or their stdin except the release files (which hold
//! none: the token lives in `shared/.env`).
//!
//! Scripts that change a host ignore SIGHUP and SIGPIPE and send Compose's output to a log file
//! on the host (`.tunnelfleet/compose.log`): once started, they complete even when the SSH
//! connection (or the controller) dies, so a host is never left between two releases with its
//! containers half-recreated.

use std::fmt::Write as _;

use super::scripts::{CHANGED_EXIT, CONNECTOR_SERVICE, PROXY_SERVICE, audit_log, lock_dir};
use super::{Action, COMPOSE_FILE, ComposeCli, Layout, PROXY_CONFIG, Release};
use crate::remote::{self, RemoteExit, ScriptError, WriteSpec, atomic_write, quote};

/// Exit code of [`stage_script`] when an image cannot be had (stderr names it).
pub const PULL_FAILED_EXIT: i32 = RemoteExit::PullFailed.code();
/// Exit code of [`switch_script`] when the target release is missing or incomplete.
pub const INCOMPLETE_EXIT: i32 = RemoteExit::Incomplete.code();
/// Exit code of the change scripts when a Compose command failed (its last lines on stderr).
pub const COMPOSE_FAILED_EXIT: i32 = RemoteExit::ComposeFailed.code();

/// Whether `s` is a release id as tunnelfleet makes them (12 lowercase hex digits).
pub fn is_release_id(s: &str) -> bool {
    s.len() == 12
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The host-side log of the change scripts' Compose output.
pub fn compose_log(layout: &Layout) -> String {
    layout.compose_log()
}

/// The preamble of a script that must complete once started: no SIGHUP/SIGPIPE death when the
/// connection goes, Compose's output to a log file (truncated), `tf_log` naming it.
pub fn detached_preamble(layout: &Layout) -> String {
    let log = quote(&compose_log(layout));
    let dir = quote(&layout.tool_dir());
    format!(
        "trap '' HUP PIPE\n\
         mkdir -p {dir} 2>/dev/null; tf_log={log}; : > \"$tf_log\" 2>/dev/null || tf_log=/dev/null\n"
    )
}

/// One Compose command run by a change script: output to the log; on failure the log's last
/// lines on stderr and exit [`COMPOSE_FAILED_EXIT`].
pub fn logged_compose(command: &str, what: &str) -> String {
    format!(
        "{command} >>\"$tf_log\" 2>&1 || {{ tail -n 8 \"$tf_log\" >&2; echo {} >&2; exit {COMPOSE_FAILED_EXIT}; }}\n",
        quote(&format!("compose: {what}: failed"))
    )
}

/// Stages `release` on the host without switching to it: its files and links under
/// `releases/<id>/` (atomically, all complete before the first rename), then every image in
/// `images` present (`docker image inspect`) or pulled (`docker pull`). Prints `image=REF
/// present|pulled` per image. Exit [`PULL_FAILED_EXIT`] naming the image that cannot be had.
pub fn stage_script(
    layout: &Layout,
    release: &Release,
    images: &[String],
) -> Result<(String, Vec<u8>), ScriptError> {
    let rel_dir = layout.release_dir(&release.id);
    let files: Vec<(WriteSpec, &[u8])> = release
        .files
        .iter()
        .map(|f| {
            (
                WriteSpec::new(format!("{rel_dir}/{}", f.path), f.mode),
                f.contents.as_slice(),
            )
        })
        .collect();
    let (write, payload) = atomic_write(&files)?;
    let mut s = String::from("# tunnelfleet: stage release\n");
    let _ = writeln!(s, "( {write} ) || exit $?");
    for link in &release.symlinks {
        let _ = writeln!(
            s,
            "ln -sfn {} {} || exit 1",
            quote(&link.target),
            quote(&format!("{rel_dir}/{}", link.path))
        );
    }
    for img in images {
        let q = quote(img);
        let _ = writeln!(
            s,
            "if docker image inspect {q} >/dev/null 2>&1; then echo \"image=\"{q}\" present\"; \
             elif tf_e=$(docker pull {q} 2>&1); then echo \"image=\"{q}\" pulled\"; \
             else printf 'image %s: cannot be pulled: %s\\n' {q} \"$(printf '%s' \"$tf_e\" | tail -n 1)\" >&2; exit {PULL_FAILED_EXIT}; fi"
        );
    }
    s.push_str("exit 0\n");
    Ok((s, payload))
}

/// Parses [`stage_script`] output: (image, pulled?) per image.
pub fn parse_stage(out: &str) -> Vec<(String, bool)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("image="))
        .filter_map(|l| {
            let (img, how) = l.rsplit_once(' ')?;
            Some((img.to_string(), how == "pulled"))
        })
        .collect()
}

/// What a [`switch_script`] does.
pub struct SwitchSpec<'a> {
    /// The host's layout.
    pub layout: &'a Layout,
    /// Which Compose to use.
    pub compose: ComposeCli,
    /// The release to switch `current` to (must be complete on the host).
    pub target: &'a str,
    /// The release `current` must point to now (None: no `current`); else exit
    /// [`CHANGED_EXIT`].
    pub expect_current: Option<&'a str>,
    /// Compose operations after the switch (empty: none, e.g. a surge host).
    pub actions: Vec<Action>,
    /// Put `shared/.env.prev` back as `shared/.env` first (undoing a deploy that changed it).
    pub restore_env: bool,
    /// Lock holder record (no secrets).
    pub holder_json: &'a str,
}

/// The test of a complete release directory: both files and both links.
fn complete_test(rel: &str) -> String {
    format!(
        "[ -f {c} ] && [ -f {p} ] && [ -L {e} ] && [ -L {d} ]",
        c = quote(&format!("{rel}/{COMPOSE_FILE}")),
        p = quote(&format!("{rel}/{PROXY_CONFIG}")),
        e = quote(&format!("{rel}/.env")),
        d = quote(&format!("{rel}/data")),
    )
}

/// Switches `current` to a release already on the host, under the fleet lock (exit 3 with the
/// holder on stdout when held): checks `current` is where the plan saw it and that the target
/// is complete, optionally restores the previous `.env`, switches atomically (rename of a
/// symlink), runs the Compose actions, releases the lock. Completes whatever happens to the
/// connection once started.
pub fn switch_script(spec: &SwitchSpec<'_>) -> Result<String, ScriptError> {
    if !is_release_id(spec.target) {
        return Err(ScriptError::BadPath {
            path: spec.target.to_string(),
            reason: "not a release id",
        });
    }
    let l = spec.layout;
    let lock = lock_dir(l);
    let take = remote::script_lock(&lock, spec.holder_json)?;
    let release = remote::unlock(&lock, spec.holder_json)?;
    let rel = l.release_dir(spec.target);
    let cur = quote(&l.current());
    let mut body = String::new();
    let _ = writeln!(
        body,
        "tf_c=$(readlink {cur} 2>/dev/null); tf_c=${{tf_c##*/}}\n\
         if [ \"$tf_c\" != {ec} ]; then echo \"the host changed since its facts were read (current is now '$tf_c'); rerun\" >&2; exit {CHANGED_EXIT}; fi",
        ec = quote(spec.expect_current.unwrap_or(""))
    );
    let _ = writeln!(
        body,
        "{} || {{ echo {} >&2; exit {INCOMPLETE_EXIT}; }}",
        complete_test(&rel),
        quote(&format!(
            "release {} is missing or incomplete on this host",
            spec.target
        ))
    );
    if spec.restore_env {
        let env = quote(&l.env_file());
        let prev = quote(&l.env_prev());
        let _ = writeln!(
            body,
            "if [ -f {prev} ]; then mv -f {prev} {env} || {{ echo 'restore .env: failed' >&2; exit 1; }}; fi"
        );
    }
    let tmp = quote(&l.current_tmp());
    let _ = writeln!(
        body,
        "ln -sfn {target} {tmp} && mv -Tf {tmp} {cur} || {{ echo 'switch current: failed' >&2; exit 1; }}",
        target = quote(&Layout::current_target(spec.target)),
    );
    for a in &spec.actions {
        body.push_str(&logged_compose(
            &spec.compose.action_command(l, *a),
            a.describe(),
        ));
    }
    Ok(format!(
        "# tunnelfleet: switch release\n{pre}( {take} ) || exit $?\n( {body} ); tf_rc=$?\n( {release} ) >/dev/null\nexit $tf_rc\n",
        pre = detached_preamble(l)
    ))
}

/// The connector containers with their state, token fingerprint and logged id (as
/// [`super::scripts::connectors_script`]) and their image, one `img=NAME IMAGE` line each: a
/// resumed run tells the old connector of an interrupted make-before-break from the new one.
pub fn connector_images_script(layout: &Layout) -> String {
    let project = quote(layout.project());
    format!(
        "{}docker ps -a --filter label=com.docker.compose.project={project} \
         --filter label=com.docker.compose.service={CONNECTOR_SERVICE} --format 'img={{{{.Names}}}} {{{{.Image}}}}' 2>/dev/null\n",
        super::scripts::connectors_script(layout)
    )
}

/// Parses the `img=` lines of [`connector_images_script`]: (container, image).
pub fn parse_connector_images(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("img="))
        .filter_map(|l| {
            let (n, i) = l.split_once(' ')?;
            Some((n.to_string(), i.trim().to_string()))
        })
        .collect()
}

/// One container of the stack as the gate sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GateContainer {
    /// Container name.
    pub name: String,
    /// Compose service.
    pub service: String,
    /// `running`, `restarting`, `exited`, `created`, ...
    pub state: String,
    /// How often Docker's restart policy restarted it.
    pub restarts: u64,
    /// When it last started (as Docker prints it).
    pub started_at: String,
}

impl GateContainer {
    /// Running (restarting, exited, created and dead are all down).
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}

/// Lists the stack's proxy and connector containers with state, restart count and start
/// time, one `gate=NAME SERVICE STATE RESTARTS STARTED_AT` line each. Read-only.
pub fn gate_state_script(layout: &Layout) -> String {
    let project = quote(layout.project());
    format!(
        "docker ps -a --filter label=com.docker.compose.project={project} --format '{{{{.Names}}}} {{{{.State}}}} {{{{.Labels}}}}' 2>/dev/null \
         | while read -r tf_n tf_st tf_l; do \
         tf_s=$(printf '%s\\n' \"$tf_l\" | tr ',' '\\n' | sed -n 's/^com.docker.compose.service=//p' | head -n 1); \
         case \"$tf_s\" in {PROXY_SERVICE}|{CONNECTOR_SERVICE}) ;; *) continue;; esac; \
         case \"$tf_l\" in *com.docker.compose.oneoff=True*) continue;; esac; \
         tf_r=$(docker inspect --format '{{{{.RestartCount}}}} {{{{.State.StartedAt}}}}' \"$tf_n\" 2>/dev/null); \
         echo \"gate=$tf_n $tf_s $tf_st ${{tf_r:-0 -}}\"; \
         if [ \"$tf_s\" = {PROXY_SERVICE} ] && [ \"$tf_st\" = running ]; then \
         tf_ip=$(docker inspect \"$tf_n\" 2>/dev/null | grep -o '\"IPAddress\": *\"[0-9a-f.:]*\"' | sed 's/.*\"\\([0-9a-f.:]*\\)\"$/\\1/' | grep -v '^$' | head -n 1); \
         echo \"proxyip=${{tf_ip:--}}\"; fi; done\n"
    )
}

/// The proxy's address as [`gate_state_script`] found it (its container's IP; `127.0.0.1`
/// for the testbed's stand-in, whose containers run on the host).
pub fn parse_proxy_ip(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("proxyip="))
        .find(|v| *v != "-" && !v.is_empty())
        .map(str::to_string)
}

/// Parses [`gate_state_script`] output.
pub fn parse_gate_state(out: &str) -> Vec<GateContainer> {
    out.lines()
        .filter_map(|l| l.strip_prefix("gate="))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(GateContainer {
                name: it.next()?.to_string(),
                service: it.next()?.to_string(),
                state: it.next()?.to_string(),
                restarts: it.next()?.parse().unwrap_or(0),
                started_at: it.next().unwrap_or("-").to_string(),
            })
        })
        .collect()
}

/// The last `lines` log lines of each named container, each block after `@log NAME`.
pub fn logs_script(names: &[String], lines: usize) -> String {
    let mut s = String::new();
    for n in names {
        let q = quote(n);
        let _ = writeln!(
            s,
            "echo \"@log \"{q}; docker logs --tail {lines} {q} 2>&1 | tail -n {lines}"
        );
    }
    s
}

/// Parses [`logs_script`] output: (container, its last lines).
pub fn parse_logs(out: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks: Vec<(String, Vec<String>)> = Vec::new();
    for line in out.lines() {
        if let Some(n) = line.strip_prefix("@log ") {
            blocks.push((n.to_string(), Vec::new()));
        } else if let Some((_, lines)) = blocks.last_mut() {
            lines.push(line.to_string());
        }
    }
    blocks
}

/// One release directory on a host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostRelease {
    /// The release id.
    pub id: String,
    /// Both files and both links present.
    pub complete: bool,
    /// The directory's modification time (seconds since the epoch).
    pub mtime: i64,
    /// First 12 hex of the proxy config's sha256 (None: missing).
    pub config_sha: Option<String>,
    /// The images its compose file names (unique, in order).
    pub images: Vec<String>,
}

/// What [`releases_script`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleasesFacts {
    /// The release `current` points to.
    pub current: Option<String>,
    /// Every release directory, newest first.
    pub releases: Vec<HostRelease>,
    /// The host's audit log lines (JSON), oldest first (the last 1000).
    pub audit: Vec<String>,
    /// Files of each release, by (id, path), when asked for (public: no secrets in them).
    pub files: std::collections::BTreeMap<(String, String), String>,
}

/// Lists the releases on the host (newest first), `current`, the audit log's last lines, and
/// with `with_files` the compose file and proxy config of every release (public: the token
/// lives in `shared/.env`, never in a release). Read-only.
pub fn releases_script(layout: &Layout, with_files: bool) -> String {
    let rels = quote(&layout.releases_dir());
    let cur = quote(&layout.current());
    let audit = quote(&audit_log(layout));
    let files = if with_files {
        format!(
            "for tf_f in {COMPOSE_FILE} {PROXY_CONFIG}; do if [ -f \"$tf_id/$tf_f\" ] && [ $(wc -c < \"$tf_id/$tf_f\") -le 262144 ]; then \
             echo \"@file $tf_id $tf_f\"; cat \"$tf_id/$tf_f\"; echo; echo '@end'; fi; done; "
        )
    } else {
        String::new()
    };
    let mut s = String::from("# tunnelfleet: releases\n");
    let _ = writeln!(
        s,
        "tf_c=$(readlink {cur} 2>/dev/null) && echo \"current=${{tf_c##*/}}\" || echo current=-"
    );
    let _ = writeln!(
        s,
        "if cd {rels} 2>/dev/null; then for tf_id in $(ls -1t); do \
         case \"$tf_id\" in *[!0-9a-f]*) continue;; esac; [ -d \"$tf_id\" ] || continue; \
         if [ -f \"$tf_id/{COMPOSE_FILE}\" ] && [ -f \"$tf_id/{PROXY_CONFIG}\" ] && [ -L \"$tf_id/.env\" ] && [ -L \"$tf_id/data\" ]; then tf_ok=yes; else tf_ok=no; fi; \
         tf_m=$(stat -c %Y \"$tf_id\" 2>/dev/null || echo 0); \
         tf_h=$(sha256sum < \"$tf_id/{PROXY_CONFIG}\" 2>/dev/null | cut -c1-12); \
         tf_i=$(sed -n \"s/^ *image: *//p\" \"$tf_id/{COMPOSE_FILE}\" 2>/dev/null | tr -d \"'\\\"\" | awk '!s[$0]++' | tr '\\n' ','); \
         echo \"rel=$tf_id $tf_ok $tf_m ${{tf_h:--}} ${{tf_i:--}}\"; {files}done; cd /; fi"
    );
    let _ = writeln!(s, "tail -n 1000 {audit} 2>/dev/null | sed 's/^/audit=/'");
    s.push_str("exit 0\n");
    s
}

/// Parses [`releases_script`] output.
pub fn parse_releases(out: &str) -> ReleasesFacts {
    let mut f = ReleasesFacts::default();
    let mut in_file: Option<(String, String, String)> = None;
    for line in out.lines() {
        if let Some((id, path, text)) = in_file.as_mut() {
            if line == "@end" {
                // `cat; echo` added one newline after the file's own.
                let mut t = std::mem::take(text);
                t.pop();
                f.files.insert((id.clone(), path.clone()), t);
                in_file = None;
            } else {
                text.push_str(line);
                text.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("@file ") {
            if let Some((id, path)) = rest.split_once(' ') {
                in_file = Some((id.to_string(), path.to_string(), String::new()));
            }
        } else if let Some(c) = line.strip_prefix("current=") {
            f.current = (c != "-" && !c.is_empty()).then(|| c.to_string());
        } else if let Some(a) = line.strip_prefix("audit=") {
            f.audit.push(a.to_string());
        } else if let Some(r) = line.strip_prefix("rel=") {
            let mut it = r.split(' ');
            let (Some(id), Some(ok), Some(m), Some(h), Some(imgs)) =
                (it.next(), it.next(), it.next(), it.next(), it.next())
            else {
                continue;
            };
            f.releases.push(HostRelease {
                id: id.to_string(),
                complete: ok == "yes",
                mtime: m.parse().unwrap_or(0),
                config_sha: (h != "-").then(|| h.to_string()),
                images: imgs
                    .split(',')
                    .filter(|s| !s.is_empty() && *s != "-")
                    .map(str::to_string)
                    .collect(),
            });
        }
    }
    f
}

impl ReleasesFacts {
    /// The release `id` if it is on the host.
    pub fn release(&self, id: &str) -> Option<&HostRelease> {
        self.releases.iter().find(|r| r.id == id)
    }

    /// A file (`docker-compose.yaml` or `config/mcp-proxy.yaml`) of release `id`, when read.
    pub fn file(&self, id: &str, path: &str) -> Option<&str> {
        self.files
            .get(&(id.to_string(), path.to_string()))
            .map(String::as_str)
    }
}

/// Removes release directories beyond the newest `keep` (by modification time), never one in
/// `protect` nor the one `current` points to (re-read on the host), under the fleet lock
/// (exit 3 when held: pruning waits for the next run). Prints `pruned=ID` per removal.
pub fn prune_script(
    layout: &Layout,
    keep: usize,
    protect: &[&str],
    holder_json: &str,
) -> Result<String, ScriptError> {
    let lock = lock_dir(layout);
    let take = remote::script_lock(&lock, holder_json)?;
    let release = remote::unlock(&lock, holder_json)?;
    let rels = quote(&layout.releases_dir());
    let cur = quote(&layout.current());
    let protect: Vec<&str> = protect
        .iter()
        .copied()
        .filter(|p| is_release_id(p))
        .collect();
    let keep_list = quote(&format!(" {} ", protect.join(" ")));
    Ok(format!(
        "# tunnelfleet: prune releases\n( {take} ) >/dev/null || exit $?\n\
         ( tf_c=$(readlink {cur} 2>/dev/null); tf_c=${{tf_c##*/}}; tf_keep={keep_list}\" $tf_c \"; tf_n=0\n\
         cd {rels} 2>/dev/null || exit 0\n\
         for tf_id in $(ls -1t); do case \"$tf_id\" in *[!0-9a-f]*) continue;; esac; [ -d \"$tf_id\" ] || continue; \
         tf_n=$((tf_n + 1)); case \"$tf_keep\" in *\" $tf_id \"*) continue;; esac; \
         [ \"$tf_n\" -le {keep} ] && continue; rm -rf -- \"$tf_id\" && echo \"pruned=$tf_id\"; done ); tf_rc=$?\n\
         ( {release} ) >/dev/null\nexit $tf_rc\n"
    ))
}

/// Parses [`prune_script`] output: the releases removed.
pub fn parse_pruned(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("pruned="))
        .map(str::to_string)
        .collect()
}

/// Whether going from compose file `from` to `to` changes only the connector's image (so the
/// host can move make-before-break: a second connector on the new image beside the old one).
/// Anything else (the proxy, volumes, the connector's command...) needs a recreate.
pub fn connector_image_only(from: &str, to: &str) -> bool {
    let parse = |s: &str| serde_saphyr::from_str::<serde_json::Value>(s).ok();
    let (Some(mut a), Some(mut b)) = (parse(from), parse(to)) else {
        return false;
    };
    let image = |v: &mut serde_json::Value| -> Option<serde_json::Value> {
        v.get_mut("services")?
            .get_mut(CONNECTOR_SERVICE)?
            .as_object_mut()?
            .remove("image")
    };
    let (ia, ib) = (image(&mut a), image(&mut b));
    ia.is_some() && ib.is_some() && ia != ib && a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::{ReleaseFile, ReleaseSymlink};

    fn run_sh(script: &str, stdin: &[u8]) -> (i32, String, String) {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin);
        }
        let out = child.wait_with_output().expect("wait");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn release(tag: &str) -> Release {
        Release::new(
            vec![
                ReleaseFile {
                    path: COMPOSE_FILE.into(),
                    contents: format!(
                        "services:\n  mcp-proxy:\n    image: 'p:{tag}'\n  cloudflared:\n    image: 'c:{tag}'\n"
                    )
                    .into_bytes(),
                    mode: 0o644,
                },
                ReleaseFile {
                    path: PROXY_CONFIG.into(),
                    contents: format!("log_level: {tag}\n").into_bytes(),
                    mode: 0o644,
                },
            ],
            vec![
                ReleaseSymlink {
                    path: ".env".into(),
                    target: "../../shared/.env".into(),
                },
                ReleaseSymlink {
                    path: "data".into(),
                    target: "../../shared/data".into(),
                },
            ],
        )
    }

    #[test]
    fn stage_writes_a_complete_release_and_fails_naming_a_missing_image() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().join("dep");
        let l = Layout::new(d.to_str().expect("utf8"), "t");
        let r = release("a");
        // A docker that has no image and cannot pull: the stage fails naming the image.
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        std::fs::write(
            bin.join("docker"),
            "#!/bin/sh\necho 'manifest unknown' >&2\nexit 1\n",
        )
        .expect("fake docker");
        assert_eq!(
            run_sh(&format!("chmod 755 {}/docker", bin.display()), b"").0,
            0
        );
        let (script, stdin) = stage_script(&l, &r, &["img:1".to_string()]).expect("script");
        let (code, _, err) = run_sh(&format!("PATH={}:$PATH; {script}", bin.display()), &stdin);
        assert_eq!(code, PULL_FAILED_EXIT, "{err}");
        assert!(
            err.contains("image img:1: cannot be pulled: manifest unknown"),
            "{err}"
        );
        let (script, stdin) = stage_script(&l, &r, &[]).expect("script");
        let (code, _, err) = run_sh(&script, &stdin);
        assert_eq!(code, 0, "{err}");
        let rel = d.join("releases").join(&r.id);
        assert!(rel.join(COMPOSE_FILE).is_file());
        assert!(rel.join(".env").is_symlink());
        // Not switched: staging never touches `current`.
        assert!(!d.join("current").exists() && !d.join("current").is_symlink());
        let facts = parse_releases(&run_sh(&releases_script(&l, true), b"").1);
        assert_eq!(facts.current, None);
        assert_eq!(facts.releases.len(), 1);
        assert!(facts.releases[0].complete);
        assert_eq!(facts.releases[0].images, vec!["p:a", "c:a"]);
        assert_eq!(
            facts.file(&r.id, COMPOSE_FILE).map(str::as_bytes),
            r.file(COMPOSE_FILE).map(|f| f.contents.as_slice())
        );
    }

    #[test]
    fn switch_refuses_an_incomplete_release_and_a_moved_current() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().join("dep");
        let l = Layout::new(d.to_str().expect("utf8"), "t");
        let (a, b) = (release("a"), release("b"));
        for r in [&a, &b] {
            let (s, i) = stage_script(&l, r, &[]).expect("stage");
            assert_eq!(run_sh(&s, &i).0, 0);
        }
        let spec = |target: &'static str, expect: Option<&'static str>| SwitchSpec {
            layout: &l,
            compose: ComposeCli::V2,
            target,
            expect_current: expect,
            actions: vec![],
            restore_env: false,
            holder_json: "{\"op\":\"t\"}",
        };
        let a_id: &'static str = Box::leak(a.id.clone().into_boxed_str());
        let b_id: &'static str = Box::leak(b.id.clone().into_boxed_str());
        let (code, _, err) = run_sh(&switch_script(&spec(a_id, None)).expect("s"), b"");
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            std::fs::read_link(d.join("current")).expect("link"),
            std::path::PathBuf::from(format!("releases/{a_id}"))
        );
        // current moved since the facts: refused, nothing switched.
        let (code, _, _) = run_sh(&switch_script(&spec(b_id, None)).expect("s"), b"");
        assert_eq!(code, CHANGED_EXIT);
        // b made incomplete: refused.
        std::fs::remove_file(d.join("releases").join(b_id).join(PROXY_CONFIG)).expect("rm");
        let (code, _, err) = run_sh(&switch_script(&spec(b_id, Some(a_id))).expect("s"), b"");
        assert_eq!(code, INCOMPLETE_EXIT, "{err}");
        assert!(err.contains("incomplete"), "{err}");
        assert_eq!(
            std::fs::read_link(d.join("current")).expect("link"),
            std::path::PathBuf::from(format!("releases/{a_id}"))
        );
        // The lock was released every time.
        assert!(!d.join(".tunnelfleet/lock").exists());
    }

    #[test]
    fn prune_keeps_the_newest_and_the_protected() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().join("dep");
        let l = Layout::new(d.to_str().expect("utf8"), "t");
        let mut ids = Vec::new();
        for (i, tag) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let r = release(tag);
            let (s, inp) = stage_script(&l, &r, &[]).expect("stage");
            assert_eq!(run_sh(&s, &inp).0, 0);
            // Distinct mtimes, oldest first.
            let t = format!("2020010100{i:02}");
            assert_eq!(
                run_sh(
                    &format!("touch -t {t} {}", d.join("releases").join(&r.id).display()),
                    b""
                )
                .0,
                0
            );
            ids.push(r.id);
        }
        // current = the oldest; protect the second oldest; keep 2 newest.
        let cur = &ids[0];
        assert_eq!(
            run_sh(
                &format!("ln -sfn releases/{cur} {}", d.join("current").display()),
                b""
            )
            .0,
            0
        );
        let s = prune_script(&l, 2, &[ids[1].as_str()], "{}").expect("prune");
        let (code, out, err) = run_sh(&s, b"");
        assert_eq!(code, 0, "{err}");
        let mut pruned = parse_pruned(&out);
        pruned.sort();
        assert_eq!(pruned, vec![ids[2].clone()]);
        for id in [&ids[0], &ids[1], &ids[3], &ids[4]] {
            assert!(d.join("releases").join(id).is_dir(), "{id} kept");
        }
    }

    #[test]
    fn gate_and_log_parsing() {
        let g = parse_gate_state(
            "gate=mcp-tunnel-cloudflared-1 cloudflared running 2 2026-01-01T00:00:00Z\nnoise\n",
        );
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].restarts, 2);
        assert!(g[0].is_running());
        let logs = parse_logs("@log a\nl1\nl2\n@log b\n");
        assert_eq!(logs[0], ("a".to_string(), vec!["l1".into(), "l2".into()]));
        assert_eq!(logs[1].1.len(), 0);
    }

    #[test]
    fn connector_image_only_changes_are_told_apart() {
        let base = "services:\n  mcp-proxy:\n    image: 'p:1'\n  cloudflared:\n    image: 'c:1'\n    command: [a]\n";
        let new_c = base.replace("c:1", "c:2");
        let new_p = base.replace("p:1", "p:2");
        let both = new_c.replace("p:1", "p:2");
        assert!(connector_image_only(base, &new_c));
        assert!(!connector_image_only(base, &new_p));
        assert!(!connector_image_only(base, &both));
        assert!(!connector_image_only(base, base));
        assert!(!connector_image_only(base, &base.replace("[a]", "[b]")));
    }
}
