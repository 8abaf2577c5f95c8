//! The Compose project name derives from the tunnel: a second tunnel on the same machine does
//! not take over the first one's containers, facts compare the containers' working directory
//! with `<deploy_dir>/current`, and a host deployed under the old shared project name
//! (`mcp-tunnel`) is moved to the tunnel's project by deploy, once.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Testbed, describe, fp, json};

const WORKDIR: &str = "com.docker.compose.project.working_dir";

/// `name state project workdir service` of every container on `host`.
fn containers(tb: &Testbed, host: &str) -> Vec<(String, String, String, String, String)> {
    let out = tb.host_exec(
        host,
        "docker ps -a --format '{{.Names}} {{.State}} {{.Labels}}'",
    );
    out.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let (name, state, labels) = (it.next()?, it.next()?, it.next()?);
            let label = |k: &str| {
                labels
                    .split(',')
                    .find_map(|p| p.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                    .unwrap_or_default()
                    .to_string()
            };
            Some((
                name.to_string(),
                state.to_string(),
                label("com.docker.compose.project"),
                label(WORKDIR),
                label("com.docker.compose.service"),
            ))
        })
        .collect()
}

/// True when `host` runs a proxy and a connector from `dir`/current.
fn runs_from(tb: &Testbed, host: &str, dir: &str) -> bool {
    let want = format!("{dir}/current");
    let cs = containers(tb, host);
    ["mcp-proxy", "cloudflared"].iter().all(|svc| {
        cs.iter()
            .any(|(_, st, _, wd, s)| s == svc && st == "running" && *wd == want)
    })
}

fn pki_init(state: &str, tunnel: &str) {
    let out = Command::new(common::tunnelfleet_bin())
        .args(["pki", "init", "--state-dir", state, "--tunnel", tunnel])
        .output()
        .expect("pki init");
    assert!(out.status.success(), "{}", describe(&out));
}

/// The testbed inventory plus group `fleet2`: tunnel `other` in /srv/other, with one host at
/// h1's address (and `extra_vars`, group var lines).
fn second_tunnel_inventory(tb: &Testbed, extra_vars: &str) -> PathBuf {
    let base = std::fs::read_to_string(tb.inventory()).expect("read inventory");
    let h1 = base
        .lines()
        .find(|l| l.trim_start().starts_with("h1:"))
        .expect("h1 in the inventory")
        .trim()
        .trim_start_matches("h1:")
        .trim()
        .to_string();
    let text = format!(
        "{base}    fleet2:\n\
         \x20     vars:\n\
         \x20       tunnel_name: other\n\
         \x20       tunnel_domain: other.example.com\n\
         \x20       deploy_dir: /srv/other\n\
         \x20       tunnel_routes:\n\
         \x20         other: \"http://127.0.0.1:9001\"\n\
         {extra_vars}\
         \x20     hosts:\n\
         \x20       h1b: {h1}\n"
    );
    let path = tb.path().join(format!(
        "inventory-two-tunnels{}.yaml",
        if extra_vars.is_empty() { "" } else { "-vars" }
    ));
    std::fs::write(&path, text).expect("write inventory");
    path
}

/// Group var lines giving tunnel `other` its own metrics ports.
const OTHER_PORTS: &str = "        tunnel_metrics_port: 20251\n";

/// Stand-in containers share the host's network namespace; Docker gives each project's
/// network its own address. The stand-ins learn it from standin.json: tunnel `other`'s proxy
/// listens on 127.0.0.2 (its port 8080 would clash on 127.0.0.1 otherwise), as `docker
/// inspect` then says.
fn give_other_its_own_network(tb: &Testbed) {
    let path = tb.path().join("standin.json");
    let mut cfg = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(&path).expect("read standin.json"),
    )
    .expect("standin.json");
    cfg["addr_by_project"] = serde_json::json!({"mcp-tunnel-other": "127.0.0.2"});
    std::fs::write(&path, cfg.to_string()).expect("write standin.json");
}

/// Connector ids answering on `host` for the tunnel of `limit`, per `status --json`, with the
/// ports they answer on.
fn status_connectors(tb: &Testbed, inv: &Path, state: &str, limit: &str) -> Vec<(u16, String)> {
    let out = tb.tf_with(
        "status",
        inv,
        &tb.known_hosts(),
        &["--state-dir", state, "--limit", limit, "--json"],
    );
    let doc = json(&out);
    let hosts = doc["hosts"].as_array().cloned().unwrap_or_default();
    assert_eq!(hosts.len(), 1, "{}", describe(&out));
    assert_eq!(hosts[0]["connector_ready"], true, "{}", describe(&out));
    hosts[0]["connectors"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                c["port"].as_u64().unwrap_or_default() as u16,
                c["connector_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The edge's connectors on h1: id -> token fingerprint.
fn edge_on_h1(tb: &Testbed) -> BTreeMap<String, String> {
    tb.edge_stats()["current"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|c| c["host"] == "h1")
        .map(|c| {
            (
                c["connector"].as_str().unwrap_or_default().to_string(),
                c["token_fp"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn two_tunnels_on_one_machine_each_publish_their_own_ports_and_rotate_on_their_own() {
    let tb = Testbed::up(1, &[]);
    let state = tb.state_with_ca();
    pki_init(&state, "other");
    give_other_its_own_network(&tb);
    let kh = tb.known_hosts();
    let token_file = tb.path().join("token").to_string_lossy().into_owned();
    let token = std::fs::read_to_string(&token_file).expect("token");
    let tf = |verb: &str, inv: &Path, args: &[&str]| {
        let mut a = vec!["--state-dir", state.as_str()];
        a.extend(args);
        tb.tf_with(verb, inv, &kh, &a)
    };

    // Both tunnels on the default range: refused before any host is touched, with the fix.
    let clash = second_tunnel_inventory(&tb, "");
    let out = tf(
        "deploy",
        &clash,
        &["--token-file", &token_file, "--limit", "fleet2"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("h1b: tunnel_metrics_port: tunnels testbed (h1) and other (h1b)")
            && err.contains("tunnel_metrics_port: 20246"),
        "{err}"
    );
    assert!(tb.host_commands("h1").is_empty(), "a host was touched");

    // On their own ranges both deploy, one tunnel at a time (the testbed's edge knows one
    // token at a time, so both tunnels use it; their connectors are told apart by id).
    let inv = second_tunnel_inventory(&tb, OTHER_PORTS);
    for limit in ["fleet", "fleet2"] {
        let out = tf(
            "deploy",
            &inv,
            &["--token-file", &token_file, "--limit", limit, "--json"],
        );
        assert_eq!(out.status.code(), Some(0), "{limit}: {}", describe(&out));
    }
    let compose = tb.host_exec("h1", "cat /srv/other/current/docker-compose.yaml");
    assert!(
        compose.contains("\"127.0.0.1:20251-20255:20241-20245\""),
        "{compose}"
    );
    assert!(runs_from(&tb, "h1", "/srv/mcp-tunnel") && runs_from(&tb, "h1", "/srv/other"));

    // Each tunnel's status sees its own connector, on its own ports; the edge sees both.
    let check = |want_fp: &str| {
        let first = status_connectors(&tb, &inv, &state, "fleet");
        let second = status_connectors(&tb, &inv, &state, "fleet2");
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(second.len(), 1, "{second:?}");
        assert!((20241..=20245).contains(&first[0].0), "{first:?}");
        assert!((20251..=20255).contains(&second[0].0), "{second:?}");
        assert_ne!(first[0].1, second[0].1);
        let edge = edge_on_h1(&tb);
        let want: BTreeMap<String, String> = [&first[0].1, &second[0].1]
            .into_iter()
            .map(|id| (id.clone(), want_fp.to_string()))
            .collect();
        assert_eq!(edge, want, "edge vs status: {first:?} {second:?}");
        (first[0].1.clone(), second[0].1.clone())
    };
    let before = check(&fp(&token));

    // Both rotated, one tunnel after the other: each rotation moves its own connector only.
    let out = tb.testbed(&["edge-rotate"]);
    assert!(out.status.success(), "{}", describe(&out));
    let new = std::fs::read_to_string(tb.path().join("token.next")).expect("token.next");
    let new_file = tb.path().join("token.new");
    std::fs::write(&new_file, &new).expect("write token");
    let mut perm = std::fs::metadata(&new_file).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o600);
    std::fs::set_permissions(&new_file, perm).expect("chmod");
    let new_file = new_file.to_string_lossy().into_owned();

    let out = tf(
        "rotate-token",
        &inv,
        &["--token-file", &new_file, "--limit", "fleet", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let edge = edge_on_h1(&tb);
    assert_eq!(
        edge.get(&before.1),
        Some(&fp(&token)),
        "the other tunnel's connector was moved: {edge:?}"
    );
    assert!(!edge.contains_key(&before.0), "{edge:?}");

    let out = tf(
        "rotate-token",
        &inv,
        &["--token-file", &new_file, "--limit", "fleet2", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let after = check(&fp(&new));
    assert!(
        after.0 != before.0 && after.1 != before.1,
        "{before:?} {after:?}"
    );
}

#[test]
fn a_second_tunnel_on_the_same_machine_leaves_the_first_ones_containers_alone() {
    let tb = Testbed::up(2, &[]);
    let state = tb.state_with_ca();
    let token_file = tb.path().join("token").to_string_lossy().into_owned();
    let token = std::fs::read_to_string(&token_file).expect("token");
    let out = tb.tf(
        "deploy",
        &["--state-dir", &state, "--token-file", &token_file, "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        runs_from(&tb, "h1", "/srv/mcp-tunnel"),
        "{:?}",
        containers(&tb, "h1")
    );

    // The second tunnel, deployed on a host whose address is h1's, on its own ports.
    let inv2 = second_tunnel_inventory(&tb, OTHER_PORTS);
    give_other_its_own_network(&tb);
    pki_init(&state, "other");
    let out = tb.tf_with(
        "deploy",
        &inv2,
        &tb.known_hosts(),
        &[
            "--state-dir",
            &state,
            "--token-file",
            &token_file,
            "--limit",
            "fleet2",
            "--json",
        ],
    );
    let second = describe(&out);
    assert_eq!(out.status.code(), Some(0), "{second}");

    // The first tunnel's stack still runs from its own deploy dir, in its own project.
    let cs = containers(&tb, "h1");
    assert!(
        runs_from(&tb, "h1", "/srv/mcp-tunnel"),
        "the second tunnel took over the first one's containers: {cs:?}\n{second}"
    );
    for (name, _, project, wd, _) in &cs {
        if wd == "/srv/other/current" {
            assert_ne!(project, "mcp-tunnel-testbed", "{name}: {cs:?}");
        }
    }
    // The edge still sees h1's connector on the first tunnel's token.
    assert!(
        tb.edge_current()
            .get("h1")
            .is_some_and(|fps| fps.contains(&fp(&token))),
        "{:?}",
        tb.edge_current()
    );

    // status of the first tunnel agrees, and its next deploy has nothing to do.
    let out = tb.tf(
        "status",
        &["--state-dir", &state, "--token-file", &token_file, "--json"],
    );
    for h in json(&out)["hosts"].as_array().expect("hosts") {
        assert_eq!(h["drift"].as_array().map(Vec::len), Some(0), "{h}");
    }
    let out = tb.tf(
        "deploy",
        &["--state-dir", &state, "--token-file", &token_file, "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json(&out)["summary"]["changed"], 0, "{}", describe(&out));
    assert!(runs_from(&tb, "h1", "/srv/mcp-tunnel"));
}

#[test]
fn a_stack_under_the_old_project_name_is_migrated_once_and_containers_from_elsewhere_are_drift() {
    let tb = Testbed::up(1, &[]);
    let state = tb.state_with_ca();
    let token_file = tb.path().join("token").to_string_lossy().into_owned();
    let token = std::fs::read_to_string(&token_file).expect("token");
    let deploy = || {
        tb.tf(
            "deploy",
            &["--state-dir", &state, "--token-file", &token_file, "--json"],
        )
    };
    let out = deploy();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // What a host deployed by an earlier tunnelfleet looks like: the same release, run under
    // the shared project name `mcp-tunnel`.
    let compose = |project: &str, args: &str| {
        format!(
            "docker compose -p {project} --project-directory /srv/mcp-tunnel/current \
             -f /srv/mcp-tunnel/current/docker-compose.yaml {args} >/dev/null 2>&1; echo rc=$?"
        )
    };
    let out = tb.host_exec("h1", &compose("mcp-tunnel-testbed", "down"));
    assert!(out.contains("rc=0"), "{out}");
    let out = tb.host_exec("h1", &compose("mcp-tunnel", "up -d"));
    assert!(out.contains("rc=0"), "{out}");
    assert!(
        containers(&tb, "h1")
            .iter()
            .all(|(_, _, p, _, _)| p == "mcp-tunnel"),
        "{:?}",
        containers(&tb, "h1")
    );

    // status calls it drift; deploy moves the stack to the tunnel's project.
    let out = tb.tf(
        "status",
        &["--state-dir", &state, "--token-file", &token_file, "--json"],
    );
    let doc = json(&out);
    let drift = doc["hosts"][0]["drift"].to_string();
    assert!(drift.contains("old project"), "{doc}");
    let out = deploy();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json(&out)["summary"]["changed"], 1, "{}", describe(&out));
    let cs = containers(&tb, "h1");
    assert!(
        cs.iter().all(|(_, _, p, _, _)| p == "mcp-tunnel-testbed"),
        "{cs:?}"
    );
    assert!(runs_from(&tb, "h1", "/srv/mcp-tunnel"), "{cs:?}");
    tb.assert_every_host_on(&token);
    // And then nothing more to do.
    let out = deploy();
    assert_eq!(json(&out)["summary"]["changed"], 0, "{}", describe(&out));

    // The tunnel's containers, recreated by hand from another directory, are drift too.
    let out = tb.host_exec(
        "h1",
        "mkdir -p /srv/elsewhere && cp -aL /srv/mcp-tunnel/current/. /srv/elsewhere/ && \
         docker compose -p mcp-tunnel-testbed --project-directory /srv/elsewhere \
         -f /srv/elsewhere/docker-compose.yaml up -d --force-recreate >/dev/null 2>&1; echo rc=$?",
    );
    assert!(out.contains("rc=0"), "{out}");
    assert!(!runs_from(&tb, "h1", "/srv/mcp-tunnel"));
    let out = deploy();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json(&out)["summary"]["changed"], 1, "{}", describe(&out));
    assert!(
        runs_from(&tb, "h1", "/srv/mcp-tunnel"),
        "{:?}",
        containers(&tb, "h1")
    );
    let out = deploy();
    assert_eq!(json(&out)["summary"]["changed"], 0, "{}", describe(&out));
}
