//! Docker Compose command lines for the stack, in both spellings.

use super::{Action, COMPOSE_FILE, Layout};
use crate::remote::quote;

/// Compose project name, fixed so container names do not change between releases.
pub const PROJECT_NAME: &str = "mcp-tunnel";

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
    /// `docker compose -p mcp-tunnel --project-directory /srv/mcp-tunnel/current -f /srv/mcp-tunnel/current/docker-compose.yaml`.
    ///
    /// The project directory is `current`, so `.env` and relative mounts resolve in the live
    /// release; every value is shell-quoted.
    pub fn base(self, layout: &Layout) -> String {
        let dir = layout.current();
        let file = format!("{dir}/{COMPOSE_FILE}");
        format!(
            "{} -p {} --project-directory {} -f {}",
            self.program(),
            quote(PROJECT_NAME),
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
        self.command(layout, action.compose_args())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings() {
        let l = Layout::new("/srv/mcp-tunnel");
        assert_eq!(
            ComposeCli::V2.action_command(&l, Action::RecreateConnector),
            "docker compose -p mcp-tunnel --project-directory /srv/mcp-tunnel/current -f \
             /srv/mcp-tunnel/current/docker-compose.yaml up -d --no-deps --force-recreate cloudflared"
        );
        assert_eq!(
            ComposeCli::V1.action_command(&l, Action::UpAll),
            "docker-compose -p mcp-tunnel --project-directory /srv/mcp-tunnel/current -f \
             /srv/mcp-tunnel/current/docker-compose.yaml up -d --remove-orphans"
        );
        assert_eq!(
            ComposeCli::V2.command(&Layout::new("/srv/it's"), &["ps", "-a"]),
            r"docker compose -p mcp-tunnel --project-directory '/srv/it'\''s/current' -f '/srv/it'\''s/current/docker-compose.yaml' ps -a"
        );
    }
}
