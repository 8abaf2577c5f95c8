//! The Tunnels API as a token source: `POST /v1/organizations/tunnels/{id}/reveal_token`
//! with a credential read from a private file. The token comes back as a [`Secret`]; errors
//! name the URL and the API's message, never the credential or the token.

use std::path::PathBuf;
use std::time::Duration;

use super::{Secret, TokenSource, validate_tunnel_token};

/// Where a tunnel's token is revealed: the API's base URL, the tunnel id, and the file that
/// holds the API credential (refused when group or others can read it).
#[derive(Debug, Clone)]
pub struct TunnelsApi {
    /// Base URL, e.g. `https://api.anthropic.com` (a trailing `/` is ignored).
    pub base: String,
    /// The tunnel id (`tnl_...`).
    pub tunnel_id: Option<String>,
    /// The credential file (`--api-credential-file` / `TUNNELFLEET_API_CREDENTIAL_FILE`).
    pub credential_file: Option<PathBuf>,
}

impl TunnelsApi {
    /// Asks the API for the tunnel's current token and checks its shape. Every error is a
    /// message for the operator (bad input: exit 2 in the callers).
    pub async fn reveal_token(&self) -> Result<Secret, String> {
        let Some(id) = &self.tunnel_id else {
            return Err("--api-base needs --tunnel-id".into());
        };
        let cred_file = self.credential_file.clone().ok_or_else(|| {
            "--api-base needs --api-credential-file (or TUNNELFLEET_API_CREDENTIAL_FILE)"
                .to_string()
        })?;
        let cred = TokenSource::File(cred_file)
            .load_raw()
            .await
            .map_err(|e| format!("API credential: {e}"))?;
        let url = format!(
            "{}/v1/organizations/tunnels/{}/reveal_token",
            self.base.trim_end_matches('/'),
            id
        );
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("Tunnels API client: {e}"))?;
        let resp = client
            .post(&url)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "mcp-tunnels-2026-05-19")
            .bearer_auth(cred.expose())
            .send()
            .await
            .map_err(|e| format!("Tunnels API {url}: {}", e.without_url()))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("Tunnels API {url}: not JSON ({})", e.without_url()))?;
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or("no message");
            return Err(format!("Tunnels API {url}: HTTP {status}: {msg}"));
        }
        let token = body["tunnel_token"]
            .as_str()
            .ok_or_else(|| format!("Tunnels API {url}: the answer has no tunnel_token"))?;
        validate_tunnel_token(token).map_err(|e| format!("Tunnels API token: {e}"))?;
        Ok(Secret::new(token.to_string()))
    }
}
