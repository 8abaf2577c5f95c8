//! Docker Compose command lines for the stack, in both spellings.

use super::{Action, COMPOSE_FILE, Layout};
use crate::remote::quote;

/// The Compose project name every tunnel used before project names derived from the tunnel:
/// hosts deployed then still run containers of this project, which deploy finds (when their
/// working directory is this deploy dir) and moves to the tunnel's own project.
pub const LEGACY_PROJECT_NAME: &str = "mcp-tunnel";

/// The Compose project name of a tunnel's stack: `mcp-tunnel-<tunnel>`, sanitised to Compose's
/// rules (lowercase letters, digits, `-`, `_`, starting with a letter or digit). The name is
/// the same for every release (container names do not change between releases) and differs
/// between tunnels, so several tunnels can share a host. When sanitising changed the tunnel
/// name (uppercase, `.`), a short hash of the original is appended so that `A.b` and `a-b`
/// still get different projects.
pub fn project_name(tunnel: &str) -> String {
    let clean: String = tunnel
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let mut name = format!("{LEGACY_PROJECT_NAME}-{clean}");
    if clean != tunnel {
        let h = super::sha256_hex(tunnel.as_bytes());
        name.push('-');
        name.push_str(&h[..8]);
    }
    name
}

/// Which Compose the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeCli {
    /// The plugin: `docker compose`.
    V2,
    /// The standalone 1.x tool: `docker-compose` (1.29 knows `--project-directory` and reads
    /// `.env` from the project directory).
    V1,
}

impl ComposeCli {
    /// The program words: `docker compose` or `docker-compose`.
    pub fn program(self) -> &'static str {
        match self {
            ComposeCli::V2 => "docker compose",
            ComposeCli::V1 => "docker-compose",
        }
    }

    /// The command prefix every stack operation uses, e.g.
    /// `docker compose -p mcp-tunnel-testbed --project-directory /srv/mcp-tunnel/current -f /srv/mcp-tunnel/current/docker-compose.yaml`.
    ///
    /// The project directory is `current`, so `.env` and relative mounts resolve in the live
    /// release; every value is shell-quoted.
    pub fn base(self, layout: &Layout) -> String {
        self.base_with_project(layout, layout.project())
    }

    fn base_with_project(self, layout: &Layout, project: &str) -> String {
        let dir = layout.current();
        let file = format!("{dir}/{COMPOSE_FILE}");
        format!(
            "{} -p {} --project-directory {} -f {}",
            self.program(),
            quote(project),
            quote(&dir),
            quote(&file)
        )
    }

    /// [`ComposeCli::base`] followed by `args`, each shell-quoted.
    pub fn command(self, layout: &Layout, args: &[&str]) -> String {
        let mut line = self.base(layout);
        for arg in args {
            line.push(' ');
            line.push_str(&quote(arg));
        }
        line
    }

    /// The shell command performing `action` on the host's stack.
    pub fn action_command(self, layout: &Layout, action: Action) -> String {
        let mut line = match action {
            // The old project's containers go first: they publish the same loopback ports.
            Action::MigrateProject => self.base_with_project(layout, LEGACY_PROJECT_NAME),
            _ => self.base(layout),
        };
        for arg in action.compose_args() {
            line.push(' ');
            line.push_str(&quote(arg));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings() {
        let l = Layout::new("/srv/mcp-tunnel", "testbed");
        assert_eq!(
            ComposeCli::V2.action_command(&l, Action::RecreateConnector),
            "docker compose -p mcp-tunnel-testbed --project-directory /srv/mcp-tunnel/current -f \
             /srv/mcp-tunnel/current/docker-compose.yaml up -d --no-deps --force-recreate cloudflared"
        );
        assert_eq!(
            ComposeCli::V1.action_command(&l, Action::UpAll),
            "docker-compose -p mcp-tunnel-testbed --project-directory /srv/mcp-tunnel/current -f \
             /srv/mcp-tunnel/current/docker-compose.yaml up -d --remove-orphans"
        );
        assert_eq!(
            ComposeCli::V2.command(&Layout::new("/srv/it's", "testbed"), &["ps", "-a"]),
            r"docker compose -p mcp-tunnel-testbed --project-directory '/srv/it'\''s/current' -f '/srv/it'\''s/current/docker-compose.yaml' ps -a"
        );
    }

    #[test]
    fn project_names_follow_composes_rules_and_differ_per_tunnel() {
        assert_eq!(project_name("testbed"), "mcp-tunnel-testbed");
        assert_eq!(project_name("other_1-x"), "mcp-tunnel-other_1-x");
        let a = project_name("Prod.EU");
        assert!(a.starts_with("mcp-tunnel-prod-eu-"), "{a}");
        assert_ne!(a, project_name("prod-eu"));
        assert_ne!(a, project_name("prod.eu"));
        for t in ["x", "A.b", "tunnel_main", "9lives", "a.b.c"] {
            let p = project_name(t);
            assert!(
                p.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'_')
            );
            assert_ne!(p, LEGACY_PROJECT_NAME);
        }
        let l = Layout::new("/srv/a", "t");
        assert_eq!(
            ComposeCli::V2.action_command(&l, Action::MigrateProject),
            "docker compose -p mcp-tunnel --project-directory /srv/a/current -f \
             /srv/a/current/docker-compose.yaml down --remove-orphans"
        );
    }
}
