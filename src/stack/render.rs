//! Rendering: the files of a release (compose file, proxy config, optional sample server),
//! the `.env` file, and the remote layout they live in. Deterministic byte for byte.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest, Sha256};

use super::yaml::quote;
use super::{StackError, StackSettings};

/// Path of the compose file inside a release.
pub const COMPOSE_FILE: &str = "docker-compose.yaml";
/// Path of the mcp-proxy config inside a release (mounted at `/config` in the container).
pub const PROXY_CONFIG: &str = "config/mcp-proxy.yaml";
/// Path of the sample MCP server inside a release (only with `sample_server: true`).
pub const SAMPLE_SERVER_FILE: &str = "hello_server.py";

/// Mode of every file of a release: the proxy runs as a non-root user and must read them.
const RELEASE_FILE_MODE: u32 = 0o644;

/// Image of the guide's sample server. A test aid, deliberately not pinned (see decisions.md).
const SAMPLE_SERVER_IMAGE: &str = "python:3.13-slim";

/// Lowercase hex SHA-256 of `bytes` (how tunnelfleet compares desired and actual files).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where things live under a host's `deploy_dir` (see ARCHITECTURE.md, remote layout).
///
/// ```text
/// <deploy_dir>/releases/<id>/        docker-compose.yaml, config/, links .env and data
/// <deploy_dir>/current -> releases/<id>
/// <deploy_dir>/shared/.env           TUNNEL_TOKEN, TUNNEL_DOMAIN (0600)
/// <deploy_dir>/shared/data/          tls.crt, tls.key, ca.crt
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    deploy_dir: String,
    project: String,
}

impl Layout {
    /// The layout of tunnel `tunnel` under `deploy_dir` (as validated by [`StackSettings`]:
    /// absolute, no trailing slash). The Compose project name derives from the tunnel
    /// ([`super::compose::project_name`]).
    pub fn new(deploy_dir: &str, tunnel: &str) -> Layout {
        Layout {
            deploy_dir: deploy_dir.to_string(),
            project: super::compose::project_name(tunnel),
        }
    }

    /// The Compose project name of this tunnel's stack.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The deploy directory itself.
    pub fn deploy_dir(&self) -> &str {
        &self.deploy_dir
    }

    /// `<deploy_dir>/releases`.
    pub fn releases_dir(&self) -> String {
        format!("{}/releases", self.deploy_dir)
    }

    /// `<deploy_dir>/releases/<id>`.
    pub fn release_dir(&self, id: &str) -> String {
        format!("{}/releases/{id}", self.deploy_dir)
    }

    /// `<deploy_dir>/current`: the symlink to the live release, and Compose's project directory.
    pub fn current(&self) -> String {
        format!("{}/current", self.deploy_dir)
    }

    /// The target `current` gets for release `id` (relative, so the tree can be moved).
    pub fn current_target(id: &str) -> String {
        format!("releases/{id}")
    }

    /// `<deploy_dir>/shared/.env`.
    pub fn env_file(&self) -> String {
        format!("{}/shared/.env", self.deploy_dir)
    }

    /// `<deploy_dir>/shared/data`, holding the certificates.
    pub fn data_dir(&self) -> String {
        format!("{}/shared/data", self.deploy_dir)
    }

    /// The layout of a deploy dir whose tunnel is not known (paths only: the lock, the
    /// audit log), for operations that read any host's deploy dir.
    pub fn of_dir(deploy_dir: &str) -> Layout {
        Layout {
            deploy_dir: deploy_dir.to_string(),
            project: String::new(),
        }
    }

    /// `<deploy_dir>/shared`: what every release links to (`.env`, `data/`).
    pub fn shared_dir(&self) -> String {
        format!("{}/shared", self.deploy_dir)
    }

    /// `<deploy_dir>/.tunnelfleet`: tunnelfleet's own files on the host.
    pub fn tool_dir(&self) -> String {
        format!("{}/.tunnelfleet", self.deploy_dir)
    }

    /// `<deploy_dir>/.tunnelfleet/lock`: the fleet lock (a directory).
    pub fn lock_dir(&self) -> String {
        format!("{}/lock", self.tool_dir())
    }

    /// `<deploy_dir>/.tunnelfleet/audit.log`: one line per operation.
    pub fn audit_log(&self) -> String {
        format!("{}/audit.log", self.tool_dir())
    }

    /// `<deploy_dir>/.tunnelfleet/compose.log`: the change scripts' Compose output.
    pub fn compose_log(&self) -> String {
        format!("{}/compose.log", self.tool_dir())
    }

    /// `<deploy_dir>/.tunnelfleet/setup-token-version`: the setup component's last
    /// `--token-version` on this host.
    pub fn setup_version_file(&self) -> String {
        format!("{}/setup-token-version", self.tool_dir())
    }

    /// `<deploy_dir>/shared/.env.prev`: the `.env` before the last write that replaced it.
    pub fn env_prev(&self) -> String {
        format!("{}.prev", self.env_file())
    }

    /// `<deploy_dir>/.current.tmp`: the symlink renamed over `current` to switch it.
    pub fn current_tmp(&self) -> String {
        format!("{}/.current.tmp", self.deploy_dir)
    }

    /// `<deploy_dir>/<rel>`: a path of the deploy dir given relative to it (as plans and
    /// facts name files: `shared/.env`, `releases/<id>/...`).
    pub fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.deploy_dir)
    }
}

/// One regular file of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseFile {
    /// Path relative to the release directory, `/`-separated.
    pub path: String,
    /// Exact contents.
    pub contents: Vec<u8>,
    /// Unix permission bits.
    pub mode: u32,
}

impl ReleaseFile {
    /// Lowercase hex SHA-256 of the contents.
    pub fn sha256(&self) -> String {
        sha256_hex(&self.contents)
    }
}

/// One symbolic link of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseSymlink {
    /// Path of the link relative to the release directory.
    pub path: String,
    /// What the link points to, relative to the link's directory.
    pub target: String,
}

/// The content of one release directory, identified by a hash of that content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// First 12 hex digits of the SHA-256 over the sorted files and links: identical content
    /// gives the identical id on every host and every run.
    pub id: String,
    /// Regular files, sorted by path.
    pub files: Vec<ReleaseFile>,
    /// Symbolic links, sorted by path: `.env -> ../../shared/.env`, `data -> ../../shared/data`.
    pub symlinks: Vec<ReleaseSymlink>,
}

impl Release {
    /// Builds a release from its files and links, sorting them and computing the id.
    pub fn new(mut files: Vec<ReleaseFile>, mut symlinks: Vec<ReleaseSymlink>) -> Release {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        symlinks.sort_by(|a, b| a.path.cmp(&b.path));
        let mut hasher = Sha256::new();
        for f in &files {
            hasher.update(format!(
                "file\0{}\0{:o}\0{}\0",
                f.path,
                f.mode,
                f.contents.len()
            ));
            hasher.update(&f.contents);
        }
        for l in &symlinks {
            hasher.update(format!("link\0{}\0{}\0", l.path, l.target));
        }
        let digest = hex::encode(hasher.finalize());
        Release {
            id: digest[..12].to_string(),
            files,
            symlinks,
        }
    }

    /// The file at `path` (relative to the release directory), if the release has it.
    pub fn file(&self, path: &str) -> Option<&ReleaseFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// SHA-256 of every file, by path.
    pub fn file_hashes(&self) -> BTreeMap<String, String> {
        self.files
            .iter()
            .map(|f| (f.path.clone(), f.sha256()))
            .collect()
    }
}

/// Renders the release for `settings`: compose file, proxy config, the sample server when
/// enabled, and the links to `shared/.env` and `shared/data`.
///
/// Nothing host-specific goes in (not even `deploy_dir`), so every replica of a tunnel with the
/// same `log_level` gets the same release id.
pub fn render_release(settings: &StackSettings) -> Release {
    let mut files = vec![
        ReleaseFile {
            path: COMPOSE_FILE.to_string(),
            contents: render_compose(settings).into_bytes(),
            mode: RELEASE_FILE_MODE,
        },
        ReleaseFile {
            path: PROXY_CONFIG.to_string(),
            contents: render_proxy_config(settings).into_bytes(),
            mode: RELEASE_FILE_MODE,
        },
    ];
    if settings.sample_server {
        files.push(ReleaseFile {
            path: SAMPLE_SERVER_FILE.to_string(),
            contents: SAMPLE_SERVER_PY.as_bytes().to_vec(),
            mode: RELEASE_FILE_MODE,
        });
    }
    let symlinks = vec![
        ReleaseSymlink {
            path: ".env".to_string(),
            target: "../../shared/.env".to_string(),
        },
        ReleaseSymlink {
            path: "data".to_string(),
            target: "../../shared/data".to_string(),
        },
    ];
    Release::new(files, symlinks)
}

const HARDENING: &str = r#"    restart: unless-stopped
    user: "65532:65532"
    read_only: true
    security_opt:
      - "no-new-privileges:true"
    cap_drop:
      - ALL
    stop_grace_period: 30s
    logging:
      options:
        max-size: "10m"
        max-file: "3"
"#;

fn flow_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// Renders `docker-compose.yaml`.
///
/// The guide's hardened services (non-root, read-only root filesystem, no capabilities,
/// 30 s stop grace matching cloudflared's drain period) with three additions: the proxy
/// config is mounted as a directory, the connector's metrics/readiness ports are published on
/// the host's loopback, and `hello-mcp` when `sample_server` is on.
pub fn render_compose(settings: &StackSettings) -> String {
    let mut out = String::new();
    out.push_str(
        "# Managed by tunnelfleet; do not edit: the next deploy replaces this release.\n\
         # Compose runs with project directory <deploy_dir>/current and project name mcp-tunnel-<tunnel>.\n\
         # .env links to ../../shared/.env (TUNNEL_TOKEN), data/ to ../../shared/data (certificates).\n\
         services:\n",
    );
    out.push_str("  mcp-proxy:\n");
    out.push_str(&format!(
        "    image: {}\n",
        quote(&settings.mcp_proxy_image)
    ));
    out.push_str(&format!(
        "    command: {}\n",
        flow_list(&["-config", "/config/mcp-proxy.yaml"])
    ));
    out.push_str(
        "    volumes:\n\
         \x20     # Directories, not single files: a file renamed over data/tls.crt is seen by the\n\
         \x20     # proxy, which polls tls.cert_file.\n\
         \x20     - \"./config:/config:ro\"\n\
         \x20     - \"./data:/data:ro\"\n\
         \x20   ports:\n\
         \x20     # cloudflared shares this service's network namespace; its metrics server (/ready)\n\
         \x20     # takes the first free port of 20241-20245. Published on the host's loopback only.\n",
    );
    let (host, inside) = (settings.metrics_ports(), super::CONNECTOR_METRICS_PORTS);
    out.push_str(&format!(
        "      - \"127.0.0.1:{}-{}:{}-{}\"\n",
        host.start(),
        host.end(),
        inside.start(),
        inside.end()
    ));
    out.push_str(HARDENING);
    out.push('\n');

    out.push_str("  cloudflared:\n");
    out.push_str(&format!(
        "    image: {}\n",
        quote(&settings.cloudflared_image)
    ));
    out.push_str(&format!(
        "    command: {}\n",
        flow_list(&[
            "tunnel",
            "--no-autoupdate",
            "run",
            "--url",
            "http://localhost:8080"
        ])
    ));
    out.push_str(
        "    environment:\n\
         \x20     # No value: taken from .env at container creation.\n\
         \x20     - TUNNEL_TOKEN\n\
         \x20   # Share the proxy's network namespace so localhost:8080 reaches it.\n\
         \x20   network_mode: \"service:mcp-proxy\"\n\
         \x20   depends_on:\n\
         \x20     - mcp-proxy\n",
    );
    out.push_str(HARDENING);

    if let Some(setup) = &settings.setup {
        out.push('\n');
        out.push_str(&render_setup_service(settings, setup));
    }

    if settings.sample_server {
        out.push('\n');
        out.push_str(
            "  # The guide's sample MCP server, routed as echo -> http://hello-mcp:9000.\n",
        );
        out.push_str("  hello-mcp:\n");
        out.push_str(&format!("    image: {}\n", quote(SAMPLE_SERVER_IMAGE)));
        out.push_str("    working_dir: /app\n");
        out.push_str("    volumes:\n      - \"./hello_server.py:/app/hello_server.py:ro\"\n");
        out.push_str(&format!(
            "    command: {}\n",
            flow_list(&[
                "sh",
                "-c",
                "pip install --quiet mcp && python hello_server.py"
            ])
        ));
        out.push_str("    restart: unless-stopped\n");
    }
    out
}

/// The setup component's service: only `docker compose run --rm setup ...` starts it (its
/// profile keeps `up` away from it). Its ids are plain values; the OIDC identity token has no
/// value here, so it is taken from the environment of whoever runs it (tunnelfleet exports it
/// from stdin, never on a command line). tunnelfleet passes `--token-version` on each rotating
/// run and records the version used in `.tunnelfleet/setup-token-version`.
fn render_setup_service(settings: &StackSettings, setup: &super::SetupSettings) -> String {
    let mut out = String::from(
        "  # The setup component (programmatic access): run by `docker compose run --rm setup`.\n\
         \x20 setup:\n",
    );
    out.push_str(&format!(
        "    image: {}\n",
        quote(&settings.mcp_proxy_image)
    ));
    out.push_str(&format!("    entrypoint: {}\n", flow_list(&["setup"])));
    out.push_str(&format!(
        "    command: {}\n",
        flow_list(&["--output=dir:/data"])
    ));
    out.push_str("    environment:\n");
    let mut env = vec![
        format!("TUNNEL_ID={}", setup.tunnel_id),
        format!("ANTHROPIC_FEDERATION_RULE_ID={}", setup.federation_rule_id),
        format!("ANTHROPIC_ORGANIZATION_ID={}", setup.organization_id),
    ];
    if let Some(w) = &setup.workspace_id {
        env.push(format!("ANTHROPIC_WORKSPACE_ID={w}"));
    }
    for e in &env {
        out.push_str(&format!("      - {}\n", quote(e)));
    }
    out.push_str(
        "      # No value: a fresh OIDC token from the environment of the run.\n\
         \x20     - ANTHROPIC_IDENTITY_TOKEN\n\
         \x20   volumes:\n\
         \x20     - \"./data:/data\"\n\
         \x20   profiles: [\"setup\"]\n\
         \x20   restart: \"no\"\n",
    );
    out
}

/// Renders `config/mcp-proxy.yaml`: listen address, log level, domain, TLS files, routes
/// (sorted by subdomain) and `upstream.allowed_ips` when given. Every string is quoted.
pub fn render_proxy_config(settings: &StackSettings) -> String {
    let mut out = String::new();
    out.push_str(
        "# Managed by tunnelfleet; do not edit: the next deploy replaces this release.\n\
         # mcp-proxy reads this file only at start: a change takes a restart of mcp-proxy.\n",
    );
    out.push_str(&format!("listen_addr: {}\n", quote(":8080")));
    out.push_str(&format!("log_level: {}\n", quote(&settings.log_level)));
    out.push_str(&format!(
        "tunnel_domain: {}\n",
        quote(&settings.tunnel_domain)
    ));
    out.push_str("tls:\n");
    out.push_str(&format!("  cert_file: {}\n", quote("/data/tls.crt")));
    out.push_str(&format!("  key_file: {}\n", quote("/data/tls.key")));
    out.push_str("routes:\n");
    for (subdomain, upstream) in &settings.routes {
        out.push_str(&format!("  {}: {}\n", quote(subdomain), quote(upstream)));
    }
    if let Some(cidrs) = &settings.upstream_allowed_ips {
        out.push_str("upstream:\n  allowed_ips:\n");
        for cidr in cidrs {
            out.push_str(&format!("    - {}\n", quote(cidr)));
        }
    }
    out
}

/// The bytes of `shared/.env`, which hold the tunnel token.
///
/// No `Display`, and `Debug` shows only a short hash prefix, so the token cannot reach a log
/// line by accident. Write it with umask 077 (mode 0600).
#[derive(Clone, PartialEq, Eq)]
pub struct EnvFile {
    bytes: Vec<u8>,
}

impl EnvFile {
    /// The file's exact bytes (secret: send them on a remote command's stdin only).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the bytes, to compare with the host's `.env` without revealing it.
    pub fn sha256(&self) -> String {
        sha256_hex(&self.bytes)
    }
}

impl fmt::Debug for EnvFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hash = self.sha256();
        write!(f, "EnvFile(<redacted>, sha256 {}…)", &hash[..12])
    }
}

/// Renders `.env`: `TUNNEL_TOKEN=<token>\nTUNNEL_DOMAIN=<domain>\n`.
///
/// The token comes from a caller that holds it in a secret type; it is validated by that
/// caller. This refuses, defensively and without showing the value, anything `.env` could not
/// carry verbatim: an empty token, whitespace or control characters (a newline would inject a
/// variable), quotes, backslashes, `$` (Compose interpolates it) and `#` (a comment).
pub fn render_env(settings: &StackSettings, token: &str) -> Result<EnvFile, StackError> {
    if token.is_empty() {
        return Err(StackError::Token("is empty"));
    }
    if token.contains(['\n', '\r']) {
        return Err(StackError::Token("contains a line break"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StackError::Token(
            "contains whitespace or a control character",
        ));
    }
    if token.contains(['"', '\'', '`', '\\', '$', '#']) {
        return Err(StackError::Token(
            "contains a quote, backslash, '$' or '#', which .env cannot carry verbatim",
        ));
    }
    let text = format!(
        "TUNNEL_TOKEN={token}\nTUNNEL_DOMAIN={}\n",
        settings.tunnel_domain
    );
    Ok(EnvFile {
        bytes: text.into_bytes(),
    })
}

/// The guide's sample MCP server.
const SAMPLE_SERVER_PY: &str = r#"from mcp.server.fastmcp import FastMCP

mcp = FastMCP("hello-server", host="0.0.0.0", port=9000)


@mcp.tool()
def hello(name: str = "world") -> str:
    """Say hello to someone."""
    return f"Hello, {name}!"


if __name__ == "__main__":
    mcp.run(transport="streamable-http")
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use indexmap::IndexMap;
    use serde_json::{Value, json};

    fn settings(extra: Value) -> StackSettings {
        let mut vars: IndexMap<String, Value> = IndexMap::new();
        vars.insert("tunnel_domain".into(), json!("t1.tunnels.example.com"));
        vars.insert(
            "tunnel_routes".into(),
            json!({"wiki": "http://wiki-mcp.internal:8080", "docs": "https://10.1.2.3:8443"}),
        );
        if let Value::Object(m) = extra {
            vars.extend(m);
        }
        StackSettings::from_vars("h1", &vars).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_metrics_ports_are_published_from_the_tunnels_range() {
        let compose = |extra: Value| -> serde_json::Value {
            let text = render_compose(&settings(extra));
            let doc: serde_json::Value =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
            doc["services"]["mcp-proxy"]["ports"].clone()
        };
        assert_eq!(
            compose(json!({})),
            json!(["127.0.0.1:20241-20245:20241-20245"])
        );
        assert_eq!(
            compose(json!({"tunnel_metrics_port": 20251})),
            json!(["127.0.0.1:20251-20255:20241-20245"])
        );
        assert_ne!(
            render_release(&settings(json!({}))).id,
            render_release(&settings(json!({"tunnel_metrics_port": 20251}))).id
        );
    }

    #[test]
    fn rendering_is_deterministic() {
        let a = render_release(&settings(json!({})));
        let b = render_release(&settings(json!({})));
        assert_eq!(a, b);
        assert_eq!(a.id.len(), 12);
        assert!(a.id.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn release_id_ignores_host_and_deploy_dir() {
        let a = render_release(&settings(json!({})));
        let mut other = settings(json!({"deploy_dir": "/opt/elsewhere"}));
        other.host = "h2".into();
        assert_eq!(a.id, render_release(&other).id);
    }

    #[test]
    fn release_id_is_content_sensitive() {
        let base = render_release(&settings(json!({}))).id;
        let changed = [
            settings(json!({"log_level": "debug"})),
            settings(json!({"tunnel_routes": {"wiki": "http://wiki-mcp.internal:8081"}})),
            settings(json!({"sample_server": true})),
            settings(json!({"upstream_allowed_ips": ["10.0.0.0/8"]})),
            settings(
                json!({"cloudflared_image": "cloudflare/cloudflared@sha256:0000000000000000000000000000000000000000000000000000000000000000"}),
            ),
        ];
        for s in &changed {
            assert_ne!(render_release(s).id, base, "{s:?}");
        }
        let r = render_release(&settings(json!({})));
        let mut files = r.files.clone();
        files[0].mode = 0o600;
        assert_ne!(Release::new(files, r.symlinks.clone()).id, r.id);
        let mut links = r.symlinks.clone();
        links[0].target = "../shared/.env".into();
        assert_ne!(Release::new(r.files.clone(), links).id, r.id);
    }

    #[test]
    fn release_layout() {
        let r = render_release(&settings(json!({})));
        let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, [PROXY_CONFIG, COMPOSE_FILE]);
        let links: Vec<(&str, &str)> = r
            .symlinks
            .iter()
            .map(|l| (l.path.as_str(), l.target.as_str()))
            .collect();
        assert_eq!(
            links,
            [(".env", "../../shared/.env"), ("data", "../../shared/data")]
        );
        let with_sample = render_release(&settings(json!({"sample_server": true})));
        assert!(with_sample.file(SAMPLE_SERVER_FILE).is_some());
        assert!(
            render_compose(&settings(json!({"sample_server": true}))).contains("  hello-mcp:\n")
        );
        assert!(!render_compose(&settings(json!({}))).contains("hello-mcp"));
        let l = Layout::new("/srv/mcp-tunnel", "testbed");
        assert_eq!(
            l.release_dir(&r.id),
            format!("/srv/mcp-tunnel/releases/{}", r.id)
        );
        assert_eq!(l.current(), "/srv/mcp-tunnel/current");
        assert_eq!(Layout::current_target("abc"), "releases/abc");
        assert_eq!(l.env_file(), "/srv/mcp-tunnel/shared/.env");
        assert_eq!(l.data_dir(), "/srv/mcp-tunnel/shared/data");
    }

    #[test]
    fn setup_service_only_with_setup_vars() {
        assert!(!render_compose(&settings(json!({}))).contains("  setup:\n"));
        let text = render_compose(&settings(json!({
            "setup_tunnel_id": "tnl_01ab",
            "setup_federation_rule_id": "fdrl_02cd",
            "setup_organization_id": "00000000-0000-4000-8000-000000000000",
        })));
        let setup = &text[text.find("  setup:\n").expect("setup service")..];
        for line in [
            "    entrypoint: [\"setup\"]\n",
            "    command: [\"--output=dir:/data\"]\n",
            "      - \"TUNNEL_ID=tnl_01ab\"\n",
            "      - \"ANTHROPIC_FEDERATION_RULE_ID=fdrl_02cd\"\n",
            "      - ANTHROPIC_IDENTITY_TOKEN\n",
            "      - \"./data:/data\"\n",
            "    profiles: [\"setup\"]\n",
        ] {
            assert!(setup.contains(line), "{line:?} missing in:\n{setup}");
        }
        assert!(!setup.contains("WORKSPACE"));
    }

    #[test]
    fn proxy_config_text() {
        let s = settings(json!({"upstream_allowed_ips": ["10.0.0.0/8", "fd00::/8"]}));
        assert_eq!(
            render_proxy_config(&s),
            "# Managed by tunnelfleet; do not edit: the next deploy replaces this release.\n\
             # mcp-proxy reads this file only at start: a change takes a restart of mcp-proxy.\n\
             listen_addr: \":8080\"\n\
             log_level: \"info\"\n\
             tunnel_domain: \"t1.tunnels.example.com\"\n\
             tls:\n\
             \x20 cert_file: \"/data/tls.crt\"\n\
             \x20 key_file: \"/data/tls.key\"\n\
             routes:\n\
             \x20 \"docs\": \"https://10.1.2.3:8443\"\n\
             \x20 \"wiki\": \"http://wiki-mcp.internal:8080\"\n\
             upstream:\n\
             \x20 allowed_ips:\n\
             \x20   - \"10.0.0.0/8\"\n\
             \x20   - \"fd00::/8\"\n"
        );
    }

    #[test]
    fn env_file() {
        let s = settings(json!({}));
        let token = "eyJhIjoiRVhBTVBMRSIsInQiOiJFWEFNUExFIiwicyI6IkVYQU1QTEUifQ==";
        let env = render_env(&s, token).expect("valid token");
        assert_eq!(
            env.as_bytes(),
            format!("TUNNEL_TOKEN={token}\nTUNNEL_DOMAIN=t1.tunnels.example.com\n").as_bytes()
        );
        let shown = format!("{env:?}");
        assert!(!shown.contains("eyJ"), "{shown}");
        assert!(shown.starts_with("EnvFile(<redacted>, sha256 "));
        for bad in [
            "",
            "eyJ\nTUNNEL_DOMAIN=evil",
            "eyJ\r",
            "ey J",
            "\"eyJ\"",
            "ey'J",
            "ey$J",
            "ey#J",
            "ey\\J",
        ] {
            let e = render_env(&s, bad).expect_err(bad).to_string();
            assert!(e.starts_with("TUNNEL_TOKEN for .env: "), "{e}");
            assert!(e.ends_with("(value not shown)"), "{e}");
            if !bad.is_empty() {
                assert!(!e.contains(bad), "{e}");
            }
        }
    }
}
