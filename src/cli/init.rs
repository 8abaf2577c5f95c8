//! `tunnelfleet init DIR`: scaffolds an operator's project: an inventory (one group = one
//! tunnel), the rendered stack to review, and a .gitignore that keeps secrets out of git.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, EXIT_OK};
use crate::stack::{self, StackSettings};

/// Flags of `init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// The project directory to create (must not exist or be empty).
    dir: PathBuf,
    /// The tunnel domain (from the Console).
    #[arg(long, default_value = "tunnel.example.com")]
    domain: String,
    /// The tunnel's name (its inventory group).
    #[arg(long, default_value = "tunnel_main")]
    tunnel: String,
    /// A route, `SUBDOMAIN=scheme://host:port` (repeatable).
    #[arg(long = "route", value_name = "SUB=URL")]
    routes: Vec<String>,
    /// Add the guide's sample MCP server (route `echo`).
    #[arg(long)]
    sample_server: bool,
}

const GITIGNORE: &str = "# Secrets never go to git: tokens, private keys, the controller's state.
*.key
*token*
.env
state/
";

fn write(path: &Path, text: &str) -> Result<(), CliError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| CliError::input(format!("create {}: {e}", d.display())))?;
    }
    std::fs::write(path, text)
        .map_err(|e| CliError::input(format!("write {}: {e}", path.display())))
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Runs `init`.
pub async fn run(args: InitArgs) -> Result<i32, CliError> {
    if let Ok(mut it) = std::fs::read_dir(&args.dir)
        && it.next().is_some()
    {
        return Err(CliError::input(format!(
            "{} exists and is not empty; choose a new directory",
            args.dir.display()
        )));
    }
    let mut routes = indexmap::IndexMap::new();
    for r in &args.routes {
        let (k, v) = r.split_once('=').ok_or_else(|| {
            CliError::input(format!(
                "--route '{r}': expected SUBDOMAIN=scheme://host:port"
            ))
        })?;
        routes.insert(k.to_string(), serde_json::Value::String(v.to_string()));
    }
    let mut vars = indexmap::IndexMap::new();
    vars.insert("tunnel_name".into(), serde_json::json!(args.tunnel));
    vars.insert("tunnel_domain".into(), serde_json::json!(args.domain));
    vars.insert(
        "tunnel_routes".into(),
        serde_json::Value::Object(routes.clone().into_iter().collect()),
    );
    vars.insert(
        "sample_server".into(),
        serde_json::json!(args.sample_server),
    );
    // Validate exactly as deploy will, before writing anything.
    let settings =
        StackSettings::from_vars("init", &vars).map_err(|e| CliError::input(e.to_string()))?;
    let release = stack::render_release(&settings);

    let mut inv = format!(
        "# tunnelfleet inventory (Ansible YAML). One group = one tunnel: the same token and\n\
         # certificates serve every host of the group.\n\
         all:\n  vars:\n    ansible_user: root\n    deploy_dir: /srv/mcp-tunnel\n  children:\n    {}:\n      vars:\n        tunnel_name: {}\n        tunnel_domain: {}\n        sample_server: {}\n        tunnel_routes:\n",
        args.tunnel,
        args.tunnel,
        yaml_str(&args.domain),
        args.sample_server
    );
    if routes.is_empty() {
        inv.push_str("          {}\n");
    }
    for (k, v) in &routes {
        inv.push_str(&format!(
            "          {}: {}\n",
            yaml_str(k),
            yaml_str(v.as_str().unwrap_or_default())
        ));
    }
    inv.push_str(
        "        # tunnel_token_command: \"pass show tunnels/main\"   # or --token-file / TUNNEL_TOKEN\n      hosts:\n        vm1: {ansible_host: 192.0.2.10}\n        vm2: {ansible_host: 192.0.2.11}\n",
    );
    write(&args.dir.join("inventory.yaml"), &inv)?;
    for f in &release.files {
        let text = String::from_utf8_lossy(&f.contents);
        write(&args.dir.join("stack").join(&f.path), &text)?;
    }
    write(&args.dir.join(".gitignore"), GITIGNORE)?;
    write(
        &args.dir.join(super::config::PROJECT_FILE),
        "# tunnelfleet reads this file in the current directory: `-i` and `--state-dir` need\n\
         # not be repeated (a flag or TUNNELFLEET_INVENTORY / TUNNELFLEET_STATE_DIR wins).\n\
         inventory = \"inventory.yaml\"\n\
         # state_dir = \"~/.local/state/tunnelfleet\"\n",
    )?;
    let d = args.dir.display();
    write(
        &args.dir.join("README.md"),
        &format!(
            "# MCP tunnel fleet\n\n\
             Run these in this directory: `tunnelfleet.toml` names the inventory.\n\n\
             1. Edit `inventory.yaml`: hosts, domain, routes.\n\
             2. `tunnelfleet pki init` (the CA of tunnel {t}) and register the printed ca.crt in the Console.\n\
             3. `tunnelfleet check`\n\
             4. `tunnelfleet deploy --token-file TOKEN_FILE --check`, then without `--check`.\n\
             5. `tunnelfleet status`\n\n\
             `stack/` shows what deploy writes to each host (release {id}); deploy renders it\n\
             from the inventory, so edit the inventory, not these files.\n",
            t = args.tunnel,
            id = release.id
        ),
    )?;
    println!(
        "created {d}: inventory.yaml, tunnelfleet.toml, stack/ (release {}), .gitignore, README.md",
        release.id
    );
    println!(
        "next: cd {d} && tunnelfleet pki init   (the CA of tunnel {})",
        args.tunnel
    );
    Ok(EXIT_OK)
}
