//! What the MCP tunnel stack is: the settings a host's inventory vars describe, the files a
//! release consists of (compose file, `mcp-proxy.yaml`, `.env`), which change needs which
//! restart, and the Docker Compose command lines that perform it.
//!
//! Pure functions over data: no I/O, no clock, no randomness. The same input renders the same
//! bytes, so tunnelfleet can hash them to detect drift.

mod compose;
pub mod diff;
mod error;
mod plan;
pub mod release_scripts;
mod render;
pub mod scripts;
mod settings;
mod yaml;

pub use compose::{ComposeCli, LEGACY_PROJECT_NAME, project_name};
pub use error::StackError;
pub use plan::{
    Action, CertFile, ContainerState, DesiredState, FileChange, HostFacts, PROXY_GID, PermFix,
    Plan, compute_plan, wanted_perms,
};
pub use render::{
    COMPOSE_FILE, EnvFile, Layout, PROXY_CONFIG, Release, ReleaseFile, ReleaseSymlink,
    SAMPLE_SERVER_FILE, render_compose, render_env, render_proxy_config, render_release,
    sha256_hex,
};
pub use settings::{
    CONNECTOR_METRICS_PORTS, DEFAULT_CLOUDFLARED_IMAGE, DEFAULT_DEPLOY_DIR,
    DEFAULT_MCP_PROXY_IMAGE, DEFAULT_METRICS_PORT, METRICS_PORT_COUNT, SAMPLE_ROUTE,
    SAMPLE_UPSTREAM, SetupSettings, StackSettings, TunnelGroup, check_shared_machines,
    deploy_dir_refusal, group_by_tunnel,
};
