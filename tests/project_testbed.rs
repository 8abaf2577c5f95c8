//! The Compose project name derives from the tunnel: a second tunnel on the same machine does
//! not take over the first one's containers, facts compare the containers' working directory
//! with `<deploy_dir>/current`, and a host deployed under the old shared project name
//! (`mcp-tunnel`) is moved to the tunnel's project by deploy, once.

mod common;

use std::path::PathBuf;
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
/// h1's address.
fn second_tunnel_inventory(tb: &Testbed) -> PathBuf {
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
         \x20     hosts:\n\
         \x20       h1b: {h1}\n"
    );
    let path = tb.path().join("inventory-two-tunnels.yaml");
    std::fs::write(&path, text).expect("write inventory");
    path
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

    // The second tunnel, deployed on a host whose address is h1's.
    let inv2 = second_tunnel_inventory(&tb);
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
