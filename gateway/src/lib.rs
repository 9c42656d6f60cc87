//! Passerelle's runtime: listeners and connection handling, the request path
//! ([`service`]), connectors (direct and parent), relays, and the audit writer.
//! [`Gateway::start`] runs it in-process (tests do), the `passerelle` binary around it.
#![forbid(unsafe_code)]

/// The commit this binary was built from (`PASSERELLE_COMMIT`, or git's).
pub const COMMIT: &str = env!("PASSERELLE_COMMIT");

mod admin;
pub mod audit;
mod body;
mod capacity;
mod client_stream;
mod connect;
mod direct;
pub mod doctor;
mod error;
pub mod firewall;
mod headers;
mod limits;
mod listener;
mod metrics;
mod pac;
mod pages;
mod pool;
pub mod record;
mod relay;
pub mod report;
mod request;
mod runtime;
mod service;
pub mod sni;
mod status;
mod udp_audit;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use passerelle_config::{Config, ConfigError};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{AuditLog, AuditWriter};
use crate::connect::UnlistedAnswers;
use crate::pool::Pool;
use crate::service::{Runtime, Shared};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{key}: cannot listen on {addr}")]
    Bind {
        key: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: cannot open the audit sink {what}")]
    Audit {
        key: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    AuditSetup(audit::OpenError),
    #[error("upstream: {0}")]
    Parents(String),
    #[error(transparent)]
    UdpAudit(#[from] udp_audit::UdpAuditError),
}

impl StartError {
    fn audit(settings: &passerelle_config::Audit, source: std::io::Error) -> StartError {
        use passerelle_config::{AuditSink, SyslogTarget};
        let (key, what) = match &settings.sink {
            AuditSink::Stdout => ("audit.sink", "stdout".to_string()),
            AuditSink::File(path) => ("audit.path", path.display().to_string()),
            AuditSink::Syslog(SyslogTarget::Unix(path)) => {
                ("audit.syslog", format!("unix:{}", path.display()))
            }
            AuditSink::Syslog(SyslogTarget::Udp(addr)) => ("audit.syslog", format!("udp:{addr}")),
        };
        StartError::Audit { key, what, source }
    }
}

/// What `check-config --preflight` adds to validation: each listener can be bound, the audit
/// sink can be opened (both released at once). Every failure, with its key.
pub fn preflight(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let listeners = config
        .listen
        .proxy
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("listen.proxy[{i}]"), *a))
        .chain(config.listen.admin.map(|a| ("listen.admin".to_string(), a)));
    for (key, addr) in listeners {
        if let Err(source) = std::net::TcpListener::bind(addr) {
            problems.push(format!("{key}: cannot listen on {addr}: {source}"));
        }
    }
    if let Err(source) = audit::sink::Sink::open(&config.audit.sink) {
        problems.push(format!(
            "{:#}",
            anyhow::Error::from(StartError::audit(&config.audit, source))
        ));
    }
    problems
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
    reloads: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<runtime::ReloadRequest>>,
}

impl Gateway {
    /// Binds every listener, opens the audit sink, and starts serving.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let (audit, writer) =
            AuditLog::open(&config.audit, &config.digest).map_err(|e| match e {
                audit::OpenError::Sink(e) => StartError::audit(&config.audit, e),
                other => StartError::AuditSetup(other),
            })?;
        let admin = match config.listen.admin {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            key: "listen.admin".to_string(),
                            addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
        let mut listeners = Vec::new();
        for (i, addr) in config.listen.proxy.iter().enumerate() {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    key: format!("listen.proxy[{i}]"),
                    addr: *addr,
                    source,
                })?;
            connect::tune(&listener);
            listeners.push(listener);
        }
        let bound: Vec<SocketAddr> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let loops =
            upstream::loops_to_ourselves(&config.upstreams, &bound, config.limits.connect_timeout)
                .await;
        if !loops.is_empty() {
            return Err(StartError::Parents(loops.join("\n")));
        }
        let udp_followers = if config.udp.audit {
            Some(udp_audit::Followers::open().await?)
        } else {
            None
        };
        let runtime = Runtime::new(config, None, Some(&audit)).map_err(StartError::Parents)?;
        let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            audit,
            connections: Arc::default(),
            unlisted: UnlistedAnswers::default(),
            origins: Pool::new(),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            reload: reload_tx,
            started: std::time::Instant::now(),
            proxy_addrs: bound.clone(),
        });
        let closing = CancellationToken::new();
        let proxy_addrs = bound;
        let mut accept_tasks = Vec::new();
        for listener in listeners {
            accept_tasks.push(tokio::spawn(listener::accept(
                listener,
                shared.clone(),
                closing.clone(),
            )));
        }
        let admin_addr = match admin {
            Some(listener) => {
                let addr = listener.local_addr().ok();
                accept_tasks.push(tokio::spawn(admin::serve(
                    listener,
                    shared.clone(),
                    closing.clone(),
                )));
                addr
            }
            None => None,
        };
        accept_tasks.push(tokio::spawn(prune_rate_limiter(
            shared.clone(),
            closing.clone(),
        )));
        if let Some(followers) = udp_followers {
            accept_tasks.push(tokio::spawn(followers.run(shared.clone(), closing.clone())));
        }
        accept_tasks.push(tokio::spawn(capacity::sampler(
            shared.audit.capacity().clone(),
            closing.clone(),
        )));
        let watched = shared.clone();
        accept_tasks.push(tokio::spawn(upstream::watch(
            move || {
                let runtime = watched.runtime.load();
                (
                    runtime.parents.list().to_vec(),
                    runtime.config.limits.connect_timeout,
                )
            },
            closing.clone(),
        )));
        Ok(Gateway {
            shared,
            closing,
            proxy_addrs,
            admin_addr,
            accept_tasks,
            writer,
            reloads: tokio::sync::Mutex::new(reload_rx),
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

    /// Resolves when the admin endpoint asks for a reload (`POST /reload`), with who asked;
    /// give the request [`Gateway::reload`]'s outcome, which the admin client waits for.
    pub async fn reload_requested(&self) -> runtime::ReloadRequest {
        match self.reloads.lock().await.recv().await {
            Some(request) => request,
            None => std::future::pending().await,
        }
    }

    /// The running configuration's digest.
    pub fn digest(&self) -> String {
        self.shared.runtime.load().config.digest.clone()
    }

    /// Applies a reload asked for `by` (an admin client, `signal:SIGHUP`): a valid
    /// configuration is swapped in whole (open tunnels keep running; new requests see it), an
    /// invalid one is refused and the old one stays. Either way the audit gets a record with
    /// the digests and who asked.
    pub async fn reload(
        &self,
        loaded: Result<Config, ConfigError>,
        by: &str,
    ) -> Result<String, String> {
        let before = self.digest();
        let current = self.shared.runtime.load_full();
        let loaded = match loaded {
            Ok(config) => {
                let timeout = config.limits.connect_timeout;
                let loops =
                    upstream::loops_to_ourselves(&config.upstreams, &self.proxy_addrs, timeout)
                        .await;
                if loops.is_empty() {
                    Ok(config)
                } else {
                    Err(format!("invalid configuration:\n  {}", loops.join("\n  ")))
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let audit = &self.shared.audit;
        let outcome = loaded.and_then(|config| Runtime::new(config, Some(&current), Some(audit)));
        match outcome {
            Ok(runtime) => {
                if runtime.config.listen.proxy != current.config.listen.proxy {
                    tracing::warn!("reload: listen.proxy changes take effect at the next restart");
                }
                if runtime.config.audit != current.config.audit {
                    tracing::warn!(
                        "reload: audit settings (sink, format, key, forwarders) take effect at the next restart"
                    );
                }
                if runtime.config.limits.worker_threads != current.config.limits.worker_threads {
                    tracing::warn!(
                        "reload: limits.worker_threads changes take effect at the next restart"
                    );
                }
                let after = runtime.config.digest.clone();
                self.shared.runtime.store(Arc::new(runtime));
                self.shared.origins.clear();
                self.shared.audit.reload(None, &before, Some(&after), by);
                tracing::info!(digest = %after, "reload.accepted");
                Ok(after)
            }
            Err(problems) => {
                self.shared
                    .audit
                    .reload(Some(problems.clone()), &before, None, by);
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
            shared.audit.shutting_down();
            shared.stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        }
        drop(shared);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(std::io::Error::other)?
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
