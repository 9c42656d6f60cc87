//! Passerelle's runtime: listeners and connection handling, the request path
//! ([`service`]), connectors (direct and parent), relays, and the audit writer.
//! [`Gateway::start`] runs it in-process (tests do), the `passerelle` binary around it.

pub mod admin;
pub mod audit;
pub mod body;
pub mod connect;
pub mod doctor;
pub mod error;
pub mod headers;
pub mod limits;
pub mod metrics;
pub mod pac;
pub mod parent;
pub mod pool;
pub mod relay;
pub mod report;
pub mod service;
pub mod sink;
pub mod sni;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use passerelle_config::{Config, ConfigError};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::io::AsyncWriteExt;

use crate::audit::{AuditEvent, AuditLog, AuditWriter};
use crate::connect::{tune, Drift};
use crate::limits::Refusal;
use crate::pool::Pool;
use crate::service::{Runtime, Shared};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the audit sink: {0}")]
    Audit(std::io::Error),
    #[error("upstream: {0}")]
    Parents(String),
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    /// Cancelled at shutdown: listeners stop accepting, connections finish their exchange.
    closing: CancellationToken,
    proxy_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    accept_tasks: Vec<JoinHandle<()>>,
    writer: AuditWriter,
}

impl Gateway {
    /// Binds every listener, opens the audit sink, and starts serving.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let (audit, writer) = AuditLog::open(&config.audit).map_err(StartError::Audit)?;
        let admin = match config.listen.admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let mut listeners = Vec::new();
        for addr in &config.listen.proxy {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: *addr,
                    source,
                })?;
            listeners.push(listener);
        }
        let runtime = Runtime::new(config).map_err(StartError::Parents)?;
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            audit,
            connections: Arc::default(),
            drift: Drift::default(),
            origins: Pool::new(),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            reload: tokio::sync::Notify::new(),
        });
        let closing = CancellationToken::new();
        let mut proxy_addrs = Vec::new();
        let mut accept_tasks = Vec::new();
        for listener in listeners {
            proxy_addrs.push(listener.local_addr().map_err(StartError::Audit)?);
            accept_tasks.push(tokio::spawn(accept(
                listener,
                shared.clone(),
                closing.clone(),
            )));
        }
        let admin_addr = match admin {
            Some(listener) => {
                let addr = listener.local_addr().map_err(StartError::Audit)?;
                accept_tasks.push(tokio::spawn(admin::serve(
                    listener,
                    shared.clone(),
                    closing.clone(),
                )));
                Some(addr)
            }
            None => None,
        };
        accept_tasks.push(tokio::spawn(prune_rate_limiter(
            shared.clone(),
            closing.clone(),
        )));
        Ok(Gateway {
            shared,
            closing,
            proxy_addrs,
            admin_addr,
            accept_tasks,
            writer,
        })
    }

    /// The proxy listeners' actual addresses (port 0 resolved).
    pub fn proxy_addrs(&self) -> &[SocketAddr] {
        &self.proxy_addrs
    }

    /// Reopens a file audit sink (SIGUSR1, for logrotate).
    pub fn reopen_audit(&self) {
        self.shared.audit.reopen();
    }

    /// The admin listener's actual address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Resolves when the admin endpoint asks for a reload (`POST /reload`).
    pub async fn reload_requested(&self) {
        self.shared.reload.notified().await
    }

    /// The running configuration's digest.
    pub fn digest(&self) -> String {
        self.shared.runtime.load().config.digest.clone()
    }

    /// Applies a reload: a valid configuration is swapped in whole (open tunnels keep
    /// running; new requests see it), an invalid one is refused and the old one stays.
    /// Either way the audit gets a record with the digests.
    pub fn reload(&self, loaded: Result<Config, ConfigError>) -> Result<(), String> {
        let before = self.digest();
        let outcome = loaded.map_err(|e| e.to_string()).and_then(Runtime::new);
        match outcome {
            Ok(runtime) => {
                let current = self.shared.runtime.load();
                if runtime.config.listen.proxy != current.config.listen.proxy {
                    tracing::warn!("reload: listen.proxy changes take effect at the next restart");
                }
                let after = runtime.config.digest.clone();
                self.shared.runtime.store(Arc::new(runtime));
                self.shared.origins.clear();
                self.shared.audit.reload(true, None, &before, Some(&after));
                tracing::info!(digest = %after, "reload.accepted");
                Ok(())
            }
            Err(problems) => {
                self.shared
                    .audit
                    .reload(false, Some(problems.clone()), &before, None);
                tracing::error!("reload.refused: the running configuration stays\n{problems}");
                Err(problems)
            }
        }
    }

    /// Graceful shutdown: stop accepting, let requests and tunnels finish within the grace
    /// period, end what is left, and write every audit record.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let Gateway {
            shared,
            closing,
            accept_tasks,
            writer,
            ..
        } = self;
        closing.cancel();
        for task in accept_tasks {
            let _ = task.await;
        }
        let grace = shared.runtime.load().config.limits.shutdown_grace;
        let tracker = shared.tracker.clone();
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(grace = ?grace, "shutdown: grace period over, closing what is left");
            shared.stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        }
        drop(shared);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(std::io::Error::other)?
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, closing: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = closing.cancelled() => return,
        };
        match accepted {
            Ok((stream, client)) => {
                let limits = shared.runtime.load().config.limits.clone();
                match shared
                    .connections
                    .admit(client.ip().to_canonical(), &limits)
                {
                    Ok(admitted) => {
                        tune(&stream);
                        let task = serve(stream, client, shared.clone(), closing.clone());
                        shared.tracker.spawn(async move {
                            task.await;
                            drop(admitted);
                        });
                    }
                    Err(refusal) => refuse(stream, client, refusal, &shared),
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "accept.failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Over the total: closed before reading. Over the client's share: a short 503. Audited.
fn refuse(stream: TcpStream, client: SocketAddr, refusal: Refusal, shared: &Shared) {
    shared.audit.event(AuditEvent {
        event: "request",
        client: Some(client.to_string()),
        decision: Some("deny"),
        reason: Some(refusal.code().to_string()),
        status: (refusal == Refusal::PerClient).then_some(503),
        ..AuditEvent::default()
    });
    if refusal == Refusal::PerClient {
        tokio::spawn(async move {
            let mut stream = stream;
            let body = "passerelle: too many connections from this client\n";
            let response = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{body}",
                body.len()
            );
            let write = stream.write_all(response.as_bytes());
            let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
        });
    }
}

/// The rate limiter's key table grows with every client seen: prune it.
async fn prune_rate_limiter(shared: Arc<Shared>, closing: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let runtime = shared.runtime.load();
                runtime.limiter.retain_recent();
                runtime.limiter.shrink_to_fit();
            }
            _ = closing.cancelled() => return,
        }
    }
}

/// One client connection: HTTP/1.1 with keep-alive and CONNECT upgrades.
async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    shared: Arc<Shared>,
    closing: CancellationToken,
) {
    let limits = shared.runtime.load().config.limits.clone();
    let stop = shared.stop.clone();
    let service = {
        let shared = shared.clone();
        service_fn(move |req| service::handle(shared.clone(), client, req))
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes as usize)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stop.cancelled() => Ok(()),
            }
        }
    };
    if let Err(error) = ended {
        audit_connection_error(&shared, client, &error);
    }
}

/// Requests hyper refused before they reached the request path (it answered 400 or 431
/// itself, or cut a slow head) still get their record.
fn audit_connection_error(shared: &Shared, client: SocketAddr, error: &hyper::Error) {
    let (reason, status) = if error.is_parse_too_large() {
        ("header_too_large", Some(431))
    } else if error.is_parse() {
        ("malformed_request", Some(400))
    } else if error.is_timeout() {
        ("header_timeout", None)
    } else {
        return;
    };
    shared.audit.event(AuditEvent {
        event: "request",
        client: Some(client.to_string()),
        decision: Some("deny"),
        reason: Some(reason.to_string()),
        detail: Some(error.to_string()),
        status,
        ..AuditEvent::default()
    });
}
