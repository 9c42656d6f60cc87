//! Tunnels: bytes copied both ways until both sides close (half-close passed on), the idle
//! timeout passes, or shutdown's grace ends. Byte counts feed the audit as they flow.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use passerelle_config::{Flow, Host};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::Recorder;
use crate::body::Direction;
use crate::sni::{self, Hello};

/// How a tunnel runs: its idle timeout, and the SNI check on a flow's TLS port.
pub struct Plan {
    pub idle: Duration,
    pub sni: Option<SniRule>,
}

pub struct SniRule {
    pub target: Host,
    pub flow: Arc<Flow>,
    pub timeout: Duration,
}

/// Checks the ClientHello when the plan says so, relays until the end, and records how it
/// ended.
pub async fn tunnel<A, B>(
    mut client: A,
    mut upstream: B,
    plan: Plan,
    record: Recorder,
    stop: CancellationToken,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(rule) = &plan.sni {
        let mut first = Vec::new();
        let hello = tokio::select! {
            hello = sni::read_client_hello(&mut client, rule.timeout, &mut first) => hello,
            _ = stop.cancelled() => Hello::Closed,
        };
        if let Hello::Name(name) = &hello {
            record.sni(Some(name.clone()));
        }
        if let Err(reason) = sni::verdict(&hello, &rule.target, &rule.flow) {
            let detail = match &hello {
                Hello::Name(name) => format!(
                    "the TLS ClientHello names {name}, not a host of flow {}",
                    rule.flow.id
                ),
                other => format!("TLS check on flow {}: {other:?}", rule.flow.id),
            };
            record.deny(reason, detail, Some(&rule.flow.id));
            return;
        }
        record.add_up(first.len() as u64);
        if upstream.write_all(&first).await.is_err() {
            record.reason("relay_error");
            return;
        }
    }
    let idle = plan.idle;
    let epoch = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let mut client = Metered::new(
        client,
        record.clone(),
        Direction::Up,
        epoch,
        activity.clone(),
    );
    let mut upstream = Metered::new(
        upstream,
        record.clone(),
        Direction::Down,
        epoch,
        activity.clone(),
    );
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    let reason = loop {
        let last = epoch + Duration::from_millis(activity.load(Ordering::Relaxed));
        tokio::select! {
            result = &mut copy => break match result {
                // TLS clients often reset rather than close once done: an ordinary end.
                Ok(_) => None,
                Err(e) if is_reset(&e) => None,
                Err(_) => Some("relay_error"),
            },
            _ = tokio::time::sleep_until(last + idle) => {
                let last = epoch + Duration::from_millis(activity.load(Ordering::Relaxed));
                if last + idle <= Instant::now() {
                    break Some("idle_timeout");
                }
            }
            _ = stop.cancelled() => break Some("shutdown"),
        }
    };
    if let Some(reason) = reason {
        record.reason(reason);
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted
    )
}

/// A stream that counts what it reads into the record and stamps the last activity.
struct Metered<S> {
    inner: S,
    record: Recorder,
    direction: Direction,
    epoch: Instant,
    activity: Arc<AtomicU64>,
}

impl<S> Metered<S> {
    fn new(
        inner: S,
        record: Recorder,
        direction: Direction,
        epoch: Instant,
        activity: Arc<AtomicU64>,
    ) -> Self {
        Metered {
            inner,
            record,
            direction,
            epoch,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            match this.direction {
                Direction::Up => this.record.add_up(n),
                Direction::Down => this.record.add_down(n),
            }
            this.activity
                .store(this.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
