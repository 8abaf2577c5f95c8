//! Round-trip tracing: with `TUNNELFLEET_TRACE_RTT=1`, every SSH event of every host is
//! printed on stderr with its time since the first connection of the run: bytes written to
//! and read from each host's transport (one line per write or read, so the wire's turns are
//! visible even inside the encrypted stream), and the protocol steps tunnelfleet takes
//! (key exchange done, authentication, channel opens and their confirmations, exec, stdin,
//! EOF, exit status, close, direct-tcpip).
//!
//! It exists to count sequential request/response pairs per phase against a testbed with
//! latency (`tests/testbed/testbed up --latency-ms 50`): at 50 ms one-way, every gap of about
//! 100 ms between a write and the read that answers it is one round trip. Nothing secret is
//! printed: sizes, channel ids, step names and exit statuses only.

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The environment variable that turns tracing on (`1`).
pub const ENV: &str = "TUNNELFLEET_TRACE_RTT";

fn origin() -> Option<Instant> {
    static ORIGIN: OnceLock<Option<Instant>> = OnceLock::new();
    *ORIGIN.get_or_init(|| {
        std::env::var_os(ENV)
            .is_some_and(|v| v == "1")
            .then(Instant::now)
    })
}

/// True when round-trip tracing is on (`TUNNELFLEET_TRACE_RTT=1`).
pub fn enabled() -> bool {
    origin().is_some()
}

/// Starts the trace clock (the first call decides the origin); a no-op when tracing is off.
pub fn start() {
    let _ = origin();
}

/// Prints one event for `host` (when tracing is on). `what` must never hold a secret.
pub fn event(host: &str, what: impl std::fmt::Display) {
    if let Some(t0) = origin() {
        eprintln!(
            "rtt {:>9.1} ms {host} {what}",
            t0.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// A transport stream that reports every write and read (sizes only) to the trace.
pub struct Traced<S> {
    inner: S,
    host: String,
}

impl<S> Traced<S> {
    /// Wraps `inner`, naming its events after `host`.
    pub fn new(inner: S, host: impl Into<String>) -> Self {
        Traced {
            inner,
            host: host.into(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Traced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let n = buf.filled().len() - before;
            event(&self.host, format_args!("wire <- {n} bytes"));
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Traced<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            event(&self.host, format_args!("wire -> {n} bytes"));
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
