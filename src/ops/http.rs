//! A minimal HTTP/1.0 GET over an SSH direct-tcpip channel, to read endpoints that listen on
//! a host's loopback (cloudflared's metrics server) without curl on the host and without
//! opening any port.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ssh::{ErrorKind, Session, SshError};

/// An HTTP response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code (200, 503, ...).
    pub status: u16,
    /// The body as text (lossy).
    pub body: String,
}

/// The largest response read; metrics endpoints answer a few hundred bytes.
const MAX_RESPONSE: usize = 256 * 1024;

/// GETs `http://127.0.0.1:{port}{path}` on the host behind `session`.
pub async fn get(
    session: &Session,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<Response, SshError> {
    let fut = async {
        let stream = session.open_tcp("127.0.0.1", port).await?;
        get_over(stream, port, path).await
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(SshError::new(
                ErrorKind::Timeout,
                format!("127.0.0.1:{port}{path}: no answer within {timeout:?}"),
            ))
        })
}

/// GETs `path` on a connection to the host's `127.0.0.1:{port}` opened earlier
/// ([`Session::open_tcp`]): the request costs one round trip instead of two. No deadline:
/// the caller bounds it.
pub async fn get_over(
    mut stream: russh::ChannelStream<russh::client::Msg>,
    port: u16,
    path: &str,
) -> Result<Response, SshError> {
    {
        let req =
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| SshError::new(ErrorKind::Transport, format!("send request: {e}")))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| SshError::new(ErrorKind::Transport, format!("read response: {e}")))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_RESPONSE {
                break;
            }
        }
        parse(&buf).ok_or_else(|| {
            SshError::new(
                ErrorKind::Transport,
                format!("127.0.0.1:{port}{path}: not an HTTP response (nothing listening?)"),
            )
        })
    }
}

/// Parses a raw HTTP/1.x response.
pub fn parse(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))?;
    let status_line = head.lines().next()?;
    let mut parts = status_line.split_whitespace();
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    Some(Response {
        status,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let r = parse(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":1}")
            .expect("parse");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "{\"a\":1}");
        assert_eq!(parse(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse(b""), None);
    }
}
