//! The stack layer end to end on inventory-shaped YAML: vars -> settings -> rendered release,
//! parsed back with a YAML parser to check the structure Compose and mcp-proxy will see.

use indexmap::IndexMap;
use serde_json::Value;
use tunnelfleet::stack::{
    COMPOSE_FILE, ComposeCli, DesiredState, HostFacts, Layout, PROXY_CONFIG, StackSettings,
    compute_plan, render_env, render_release,
};

const TOKEN: &str = "eyJhIjoiRVhBTVBMRSIsInQiOiJFWEFNUExFIiwicyI6IkVYQU1QTEUifQ==";

fn vars(yaml: &str) -> IndexMap<String, Value> {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("fixture: {e}"))
}

fn settings() -> StackSettings {
    let v = vars(include_str!("fixtures/stack/group_vars.yaml"));
    StackSettings::from_vars("web1", &v).unwrap_or_else(|e| panic!("{e}"))
}

fn file_text(release: &tunnelfleet::stack::Release, path: &str) -> String {
    let file = release
        .file(path)
        .unwrap_or_else(|| panic!("{path} missing"));
    String::from_utf8(file.contents.clone()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn compose_file_matches_fixture() {
    let release = render_release(&settings());
    assert_eq!(
        file_text(&release, COMPOSE_FILE),
        include_str!("fixtures/stack/docker-compose.yaml")
    );
    assert_eq!(
        file_text(&release, PROXY_CONFIG),
        include_str!("fixtures/stack/mcp-proxy.yaml")
    );
}

#[test]
fn compose_file_structure() {
    let release = render_release(&settings());
    let doc: Value = serde_saphyr::from_str(&file_text(&release, COMPOSE_FILE))
        .unwrap_or_else(|e| panic!("compose file does not parse: {e}"));
    let services = &doc["services"];
    let names: Vec<&String> = services
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    // serde_json maps are sorted by key.
    assert_eq!(names, ["cloudflared", "hello-mcp", "mcp-proxy"]);

    let proxy = &services["mcp-proxy"];
    let cf = &services["cloudflared"];
    for svc in [proxy, cf] {
        let image = svc["image"].as_str().unwrap_or_default();
        assert!(image.contains("@sha256:"), "{image}");
        assert_eq!(svc["restart"], "unless-stopped");
        assert_eq!(svc["read_only"], true);
        assert_eq!(svc["user"], "65532:65532");
        assert_eq!(svc["cap_drop"], serde_json::json!(["ALL"]));
    }
    assert_eq!(
        proxy["command"],
        serde_json::json!(["-config", "/config/mcp-proxy.yaml"])
    );
    assert_eq!(
        proxy["volumes"],
        serde_json::json!(["./config:/config:ro", "./data:/data:ro"])
    );
    assert_eq!(
        proxy["ports"],
        serde_json::json!(["127.0.0.1:20241-20245:20241-20245"])
    );

    assert_eq!(cf["network_mode"], "service:mcp-proxy");
    assert_eq!(cf["environment"], serde_json::json!(["TUNNEL_TOKEN"]));
    assert_eq!(cf["depends_on"], serde_json::json!(["mcp-proxy"]));
    assert_eq!(
        cf["command"],
        serde_json::json!([
            "tunnel",
            "--no-autoupdate",
            "run",
            "--url",
            "http://localhost:8080"
        ])
    );
    assert_eq!(cf["stop_grace_period"], "30s");
    assert!(cf.get("ports").is_none());
}

#[test]
fn proxy_config_structure() {
    let release = render_release(&settings());
    let doc: Value = serde_saphyr::from_str(&file_text(&release, PROXY_CONFIG))
        .unwrap_or_else(|e| panic!("proxy config does not parse: {e}"));
    assert_eq!(doc["listen_addr"], ":8080");
    assert_eq!(doc["log_level"], "info");
    assert_eq!(doc["tunnel_domain"], "t-7f3a.tunnels.example.com");
    assert_eq!(doc["tls"]["cert_file"], "/data/tls.crt");
    assert_eq!(doc["tls"]["key_file"], "/data/tls.key");
    // routes must be a map of strings: what the proxy unmarshals into map[string]string.
    let routes: IndexMap<String, String> = serde_json::from_value(doc["routes"].clone())
        .unwrap_or_else(|e| panic!("routes is not a map of strings: {e}"));
    let keys: Vec<&str> = routes.keys().map(String::as_str).collect();
    assert_eq!(keys, ["docs", "echo", "wiki"]);
    assert_eq!(routes["echo"], "http://hello-mcp:9000");
    assert_eq!(
        doc["upstream"]["allowed_ips"],
        serde_json::json!(["10.0.0.0/8", "172.16.0.0/12"])
    );
}

#[test]
fn routes_as_list_refused_like_the_proxy() {
    let v = vars(include_str!("fixtures/stack/routes_as_list.yaml"));
    let err = StackSettings::from_vars("web1", &v)
        .expect_err("a list of routes")
        .to_string();
    assert!(err.starts_with("web1: tunnel_routes: "), "{err}");
    assert!(
        err.contains("cannot unmarshal !!seq into map[string]string"),
        "{err}"
    );
}

#[test]
fn deploy_then_redeploy() {
    let s = settings();
    let release = render_release(&s);
    let env = render_env(&s, TOKEN).unwrap_or_else(|e| panic!("{e}"));
    let desired = DesiredState::new(&release, env.sha256());

    let first = compute_plan(&desired, &HostFacts::default());
    assert_eq!(first.actions, [tunnelfleet::stack::Action::UpAll]);

    // The host after the first deploy: same hashes, containers running.
    let facts = HostFacts {
        current_release: Some(release.id.clone()),
        files: release
            .file_hashes()
            .into_iter()
            .map(|(p, h)| (p, Some(h)))
            .collect(),
        env_sha256: Some(env.sha256()),
        proxy: tunnelfleet::stack::ContainerState::Running,
        connector: tunnelfleet::stack::ContainerState::Running,
        ..HostFacts::default()
    };
    let again = compute_plan(&desired, &facts);
    assert!(again.is_empty(), "{again:?}");

    // --json output carries no secret.
    let json = serde_json::to_string(&first).unwrap_or_default();
    assert!(!json.contains(TOKEN));
    assert!(!format!("{env:?}").contains(TOKEN));

    let cmd = ComposeCli::V2.action_command(
        &Layout::new(&s.deploy_dir, &s.tunnel_name),
        first.actions[0],
    );
    assert_eq!(
        cmd,
        "docker compose -p mcp-tunnel-prod --project-directory /srv/mcp-tunnel/current -f \
         /srv/mcp-tunnel/current/docker-compose.yaml up -d --remove-orphans"
    );
}
