//! `tunnelfleet deploy` and `status` against the testbed: real sshd hosts, the stand-in
//! Compose and cloudflared on each, and the stand-in edge as the independent witness.

mod common;

use common::{Testbed, describe, fp, json};
use serde_json::Value;

struct Fleet {
    tb: Testbed,
    state: String,
}

impl Fleet {
    fn up(n: usize) -> Fleet {
        let tb = Testbed::up(n, &[]);
        let state = tb.path().join("state").to_string_lossy().into_owned();
        let f = Fleet { tb, state };
        let tunnel = f.tunnel_name();
        let out = std::process::Command::new(common::tunnelfleet_bin())
            .args(["pki", "init", "--state-dir", &f.state, "--tunnel", &tunnel])
            .output()
            .expect("pki init");
        assert!(out.status.success(), "{}", describe(&out));
        f
    }

    fn tunnel_name(&self) -> String {
        let out = std::process::Command::new(common::tunnelfleet_bin())
            .args(["inventory", "--list", "-i"])
            .arg(self.tb.inventory())
            .output()
            .expect("inventory --list");
        let v: Value = serde_json::from_slice(&out.stdout).expect("inventory json");
        let hv = &v["_meta"]["hostvars"]["h1"];
        hv["tunnel_name"]
            .as_str()
            .or(hv["tunnel_domain"].as_str())
            .expect("testbed inventory names a tunnel")
            .to_string()
    }

    fn token(&self, file: &str) -> String {
        std::fs::read_to_string(self.tb.path().join(file)).expect("read token")
    }

    fn deploy(&self, extra: &[&str]) -> std::process::Output {
        let mut args = vec!["--state-dir", &self.state];
        args.extend(extra);
        self.tb.tf("deploy", &args)
    }

    fn deploy_token(&self, file: &str, extra: &[&str]) -> std::process::Output {
        let path = self.tb.path().join(file).to_string_lossy().into_owned();
        let mut args = vec!["--token-file", path.as_str(), "--json"];
        args.extend(extra);
        self.deploy(&args)
    }

    fn edge(&self) -> Value {
        let out = self.tb.testbed(&["edge-stats"]);
        assert!(out.status.success(), "{}", describe(&out));
        serde_json::from_slice(&out.stdout).expect("edge-stats json")
    }

    /// Hosts with a connector the edge sees up, and the token fingerprint each uses.
    fn edge_current(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self.edge()["current"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            c["host"].as_str().unwrap_or_default().to_string(),
                            c["token_fp"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn timeline_len(&self) -> usize {
        self.edge()["timeline"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0)
    }

    /// `stat` of the managed files on a host: path, mode, mtime.
    fn stat(&self, host: &str) -> String {
        self.tb.host_exec(
            host,
            "cd /srv/mcp-tunnel && find . -path ./.tunnelfleet -prune -o -print0 | sort -z | xargs -0 stat -c '%n %a %Y %s'",
        )
    }
}

#[test]
fn deploy_from_nothing_then_noop_then_check_touches_nothing() {
    let f = Fleet::up(5);
    let token = f.token("token");
    // The first --check lists every write the deploy will do, certificates included (no
    // server certificate exists yet: one would be issued).
    let out = f.deploy_token("token", &["--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = json(&out);
    for h in doc["hosts"].as_array().expect("hosts") {
        assert_eq!(
            h["plan"]["write_certs"],
            serde_json::json!(["ca.crt", "tls.key", "tls.crt"]),
            "{h}"
        );
        assert_eq!(h["plan"]["write_env"], true, "{h}");
        assert_eq!(h["plan"]["switch_current"], true, "{h}");
    }
    let out = f.deploy_token("token", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = json(&out);
    assert_eq!(doc["summary"]["ok"], 5, "{doc}");

    // Every host has a connector up on the token, per the edge.
    let want: Vec<(String, String)> =
        f.tb.host_names()
            .into_iter()
            .map(|h| (h, fp(&token)))
            .collect();
    let cur = f.edge_current();
    for w in &want {
        assert!(cur.contains(w), "edge does not see {w:?}: {cur:?}");
    }

    // Files and modes on each host; no CA key anywhere on any host.
    for h in f.tb.host_names() {
        let env_mode = f.tb.host_exec(&h, "stat -c %a /srv/mcp-tunnel/shared/.env");
        assert_eq!(env_mode.trim(), "600", "{h}");
        let env = f.tb.host_exec(&h, "cat /srv/mcp-tunnel/current/.env");
        assert!(env.contains("TUNNEL_TOKEN="), "{h}: .env through current/");
        let keys = f.tb.host_exec(
            &h,
            // The host's own storage: its /srv, home, container state and /run.
            "find /srv /root /var/lib/standin-docker /run -name '*ca.key*' 2>/dev/null; true",
        );
        assert_eq!(keys.trim(), "", "{h}: a CA key on the host");
        let key =
            f.tb.host_exec(&h, "head -c 30 /srv/mcp-tunnel/current/data/tls.key");
        assert!(key.contains("PRIVATE KEY"), "{h}");
    }

    // A second deploy writes nothing and restarts nothing.
    let before: Vec<String> = f.tb.host_names().iter().map(|h| f.stat(h)).collect();
    let events = f.timeline_len();
    let out = f.deploy_token("token", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = json(&out);
    assert_eq!(doc["summary"]["changed"], 0, "{doc}");
    let after: Vec<String> = f.tb.host_names().iter().map(|h| f.stat(h)).collect();
    assert_eq!(before, after, "a no-op deploy changed files");
    assert_eq!(
        f.timeline_len(),
        events,
        "a no-op deploy bounced a connector"
    );

    // --check with a new token plans a connector recreation but touches nothing.
    let out = f.tb.testbed(&["edge-rotate"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = f.deploy_token("token.next", &["--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = json(&out);
    for h in doc["hosts"].as_array().expect("hosts") {
        assert_eq!(h["plan"]["write_env"], true, "{h}");
        assert!(
            h["plan"]["actions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "recreate_connector")),
            "{h}"
        );
    }
    let after_check: Vec<String> = f.tb.host_names().iter().map(|h| f.stat(h)).collect();
    assert_eq!(before, after_check, "--check changed files");
    assert_eq!(f.timeline_len(), events, "--check bounced a connector");

    // Secrets: not on any recorded remote command line, not in any output.
    let next = f.token("token.next");
    let log = f.tb.recorded_commands();
    assert!(!log.is_empty());
    for t in [token.trim(), next.trim()] {
        assert!(!log.contains(t), "token on a remote command line");
        let out = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.contains(t), "token in tunnelfleet's output");
    }
}

#[test]
fn token_change_recreates_the_connector_on_the_new_token() {
    let f = Fleet::up(5);
    let out = f.deploy_token("token", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = f.tb.testbed(&["edge-rotate"]);
    assert!(out.status.success(), "{}", describe(&out));
    let next = f.token("token.next");
    let out = f.deploy_token("token.next", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let cur = f.edge_current();
    for h in f.tb.host_names() {
        assert!(
            cur.contains(&(h.clone(), fp(&next))),
            "{h} not on the new token per the edge: {cur:?}"
        );
    }
    assert!(
        !cur.iter().any(|(_, t)| *t == fp(&f.token("token"))),
        "a connector still on the old token: {cur:?}"
    );
    // status agrees: every host's token matches the fleet's, no drift.
    let path =
        f.tb.path()
            .join("token.next")
            .to_string_lossy()
            .into_owned();
    let out = f.tb.tf(
        "status",
        &["--state-dir", &f.state, "--token-file", &path, "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for h in json(&out)["hosts"].as_array().expect("hosts") {
        assert_eq!(h["token_fingerprint"], fp(&next), "{h}");
        assert_eq!(h["token_matches_fleet"], true, "{h}");
        assert_eq!(h["drift"].as_array().map(Vec::len), Some(0), "{h}");
        assert_eq!(h["connector_ready"], true, "{h}");
    }
    // Every secret stays off the command lines.
    let log = f.tb.recorded_commands();
    assert!(!log.contains(next.trim()));
}

#[test]
fn a_down_host_fails_alone_and_the_next_deploy_completes_it() {
    let f = Fleet::up(5);
    f.tb.fault("h2", "down");
    let out = f.deploy_token("token", &["--connect-timeout", "3s"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let doc = json(&out);
    for h in doc["hosts"].as_array().expect("hosts") {
        if h["name"] == "h2" {
            assert_eq!(h["ok"], false);
            assert_eq!(h["stage"], "connect");
        } else {
            assert_eq!(h["ok"], true, "{h}");
        }
    }
    let cur = f.edge_current();
    assert!(!cur.iter().any(|(h, _)| h == "h2"));
    assert_eq!(cur.len(), 4, "{cur:?}");
    f.tb.fault("h2", "resume");
    let others = ["h1", "h3", "h4", "h5"];
    let before: Vec<usize> = others
        .iter()
        .map(|h| f.tb.host_commands(h).lines().count())
        .collect();
    let out = f.deploy_token("token", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = json(&out);
    assert_eq!(doc["summary"]["changed"], 1, "only h2 changes: {doc}");
    // On the hosts that were done, the second deploy only read facts: one command each
    // (`settle` reads the lock from the facts and costs nothing when none is held).
    let after: Vec<usize> = others
        .iter()
        .map(|h| f.tb.host_commands(h).lines().count())
        .collect();
    for ((h, b), a) in others.iter().zip(&before).zip(&after) {
        assert_eq!(a - b, 1, "{h} got more than the facts command");
    }
    assert!(f.edge_current().iter().any(|(h, _)| h == "h2"));
}

#[test]
fn a_full_disk_keeps_the_old_env() {
    let f = Fleet::up(3);
    let out = f.deploy_token("token", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let old =
        f.tb.host_exec("h3", "sha256sum < /srv/mcp-tunnel/shared/.env");
    // h3's shared/ becomes a tiny, full tmpfs holding the current files.
    f.tb.host_exec(
        "h3",
        "set -e; cd /srv/mcp-tunnel; b=$(mktemp -d); cp -a shared/. \"$b\"/; \
         mount -t tmpfs -o size=64k,mode=0700 tmpfs shared; cp -a \"$b\"/. shared/; rm -rf \"$b\"; \
         dd if=/dev/zero of=shared/filler bs=1k count=1000 2>/dev/null || true",
    );
    let out = f.tb.testbed(&["edge-rotate"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = f.deploy_token("token.next", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let doc = json(&out);
    let h3 = doc["hosts"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["name"] == "h3"))
        .expect("h3");
    assert_eq!(h3["ok"], false);
    let err = h3["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("No space left on device") && err.contains("old file kept"),
        "{err}"
    );
    let now =
        f.tb.host_exec("h3", "sha256sum < /srv/mcp-tunnel/shared/.env");
    assert_eq!(old, now, "the old .env changed");
    for h in doc["hosts"].as_array().expect("hosts") {
        if h["name"] != "h3" {
            assert_eq!(h["ok"], true, "{h}");
        }
    }
}

#[test]
fn after_a_reboot_a_fresh_login_finds_the_token() {
    let f = Fleet::up(2);
    let token = f.token("token");
    let out = f.deploy_token("token", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    f.tb.fault("h1", "reboot");
    // A fresh ssh session (a new login shell, nothing exported) runs the guide's command.
    let out = std::process::Command::new("ssh")
        .arg("-F")
        .arg(f.tb.path().join("ssh_config"))
        .args(["h1", "cd /srv/mcp-tunnel/current && docker compose -p mcp-tunnel up -d && docker compose -p mcp-tunnel ps"])
        .output()
        .expect("ssh");
    assert!(out.status.success(), "{}", describe(&out));
    // The edge sees h1 back, on the token.
    let mut seen = false;
    for _ in 0..100 {
        if f.edge_current().contains(&("h1".to_string(), fp(&token))) {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(seen, "edge never saw h1 back: {:?}", f.edge_current());
}

#[test]
fn config_change_restarts_the_proxy_and_a_cert_change_restarts_nothing() {
    let f = Fleet::up(3);
    let token = f.token("token");
    let out = f.deploy_token("token", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let proxy_id = |h: &str| {
        f.tb.host_exec(
            h,
            "docker ps -q --filter label=com.docker.compose.service=mcp-proxy",
        )
    };
    let before: Vec<String> = f.tb.host_names().iter().map(|h| proxy_id(h)).collect();

    // A new route: the proxy (which does not reload its config) restarts on every host, and
    // the connector, which shares its network namespace, comes back with it.
    let inv = std::fs::read_to_string(f.tb.inventory()).expect("inventory");
    let changed = inv.replacen(
        "        tunnel_routes:\n",
        "        tunnel_routes:\n          docs: \"http://10.0.0.7:8000\"\n",
        1,
    );
    assert_ne!(inv, changed);
    std::fs::write(f.tb.inventory(), changed).expect("write inventory");
    let out = f.deploy_token("token", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for h in json(&out)["hosts"].as_array().expect("hosts") {
        assert_eq!(
            h["plan"]["actions"],
            serde_json::json!(["restart_proxy"]),
            "{h}"
        );
        assert_eq!(h["plan"]["write_env"], false, "{h}");
    }
    for (h, b) in f.tb.host_names().iter().zip(&before) {
        assert_ne!(&proxy_id(h), b, "{h}: the proxy was not restarted");
        let cfg =
            f.tb.host_exec(h, "cat /srv/mcp-tunnel/current/config/mcp-proxy.yaml");
        assert!(cfg.contains("docs"), "{h}: {cfg}");
    }
    let cur = f.edge_current();
    for h in f.tb.host_names() {
        assert!(
            cur.contains(&(h.clone(), fp(&token))),
            "{h} not back: {cur:?}"
        );
    }

    // A new server certificate (the stored one removed, so deploy issues another): written
    // on every host, nothing restarted.
    let events = f.timeline_len();
    let ids: Vec<String> = f.tb.host_names().iter().map(|h| proxy_id(h)).collect();
    for n in ["tls.crt", "tls.key"] {
        std::fs::remove_file(std::path::Path::new(&f.state).join("pki/testbed").join(n))
            .expect("remove stored cert");
    }
    let out = f.deploy_token("token", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for h in json(&out)["hosts"].as_array().expect("hosts") {
        assert_eq!(h["plan"]["actions"], serde_json::json!([]), "{h}");
        assert!(
            h["plan"]["write_certs"]
                .as_array()
                .is_some_and(|c| !c.is_empty()),
            "{h}"
        );
    }
    assert_eq!(
        f.timeline_len(),
        events,
        "a connector restarted for a certificate"
    );
    let after: Vec<String> = f.tb.host_names().iter().map(|h| proxy_id(h)).collect();
    assert_eq!(ids, after, "a proxy restarted for a certificate");
}

#[test]
fn a_host_with_only_docker_compose_v1_is_deployed_with_it() {
    let f = Fleet::up(2);
    // On h2 only (its own mount namespace), `docker compose` is not there: as on a host with
    // the docker CLI and the old docker-compose 1.x, but no Compose v2 plugin.
    let dir = f.tb.path().display().to_string();
    let wrapper = f.tb.path().join("docker-without-compose");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = compose ]; then echo \"docker: 'compose' is not a docker command.\" >&2; exit 1; fi\nexec /usr/bin/python3 {dir}/lib/standin_docker.py docker \"$@\"\n"
        ),
    )
    .expect("write wrapper");
    let mut perm = std::fs::metadata(&wrapper).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&wrapper, perm).expect("chmod");
    f.tb.host_exec(
        "h2",
        &format!("mount --bind {} {dir}/bin/docker", wrapper.display()),
    );
    assert!(
        f.tb.host_exec("h2", "docker compose version 2>&1 || true")
            .contains("not a docker command")
    );

    let out = f.tb.tf("check", &["--json"]);
    let doc = json(&out);
    let kinds: Vec<&str> = doc["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["compose"]["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["v2", "v1"], "{doc}");

    let token = f.token("token");
    let out = f.deploy_token("token", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let cur = f.edge_current();
    for h in f.tb.host_names() {
        assert!(cur.contains(&(h.clone(), fp(&token))), "{h}: {cur:?}");
    }
    // h2's stack was started by docker-compose (v1 names its containers project_service_N).
    let names = f.tb.host_exec("h2", "docker ps --format '{{.Names}}'");
    assert!(
        names.contains("mcp-tunnel-testbed_cloudflared_1"),
        "{names}"
    );
    // And a second deploy is a no-op there too.
    let out = f.deploy_token("token", &[]);
    assert_eq!(json(&out)["summary"]["changed"], 0, "{}", describe(&out));
}
