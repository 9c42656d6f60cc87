//! What the gateway runs on: one configuration and what is built from it ([`Runtime`],
//! swapped whole on reload), and what every request shares ([`Shared`]).

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use passerelle_config::{Config, Flow, Host};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditLog;
use crate::connect::UnlistedAnswers;
use crate::limits::{rate_limiter, Connections, RateLimiter};
use crate::pool::Pool;
use crate::upstream::{Parents, Timeouts};

/// One configuration and what is built from it; swapped whole on reload.
pub struct Runtime {
    pub config: Config,
    pub parents: Parents,
    pub limiter: Arc<RateLimiter>,
}

impl Runtime {
    /// What `config` runs on; parents whose settings `previous` shares keep what was learnt.
    /// The rate limiter carries its buckets over when the limits did not change: a reload
    /// must not hand every client a fresh burst.
    pub fn new(
        config: Config,
        previous: Option<&Runtime>,
        audit: Option<&AuditLog>,
    ) -> Result<Runtime, String> {
        let limits = &config.limits;
        let limiter = match previous {
            Some(p)
                if p.config.limits.requests_per_second == limits.requests_per_second
                    && p.config.limits.burst == limits.burst =>
            {
                p.limiter.clone()
            }
            _ => Arc::new(rate_limiter(limits)),
        };
        Ok(Runtime {
            parents: Parents::new(
                &config.upstreams,
                &config.listen.via,
                previous.map(|r| &r.parents),
                audit,
            )?,
            limiter,
            config,
        })
    }

    /// The time limits of an exchange for `flow`.
    pub fn timeouts(&self, flow: &Flow) -> Timeouts {
        let limits = &self.config.limits;
        Timeouts {
            connect: limits.connect_timeout,
            response: flow.idle_timeout.unwrap_or(limits.idle_timeout),
        }
    }
}

/// What every request shares.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub audit: AuditLog,
    pub connections: Arc<Connections>,
    pub unlisted: UnlistedAnswers,
    pub origins: Arc<Pool<(Host, u16)>>,
    pub tracker: TaskTracker,
    /// Cancelled when shutdown's grace period is over: tunnels end, records are written.
    pub stop: CancellationToken,
    /// The admin endpoint's `POST /reload`, with the client that asked and where the outcome
    /// goes.
    pub reload: tokio::sync::mpsc::UnboundedSender<ReloadRequest>,
    pub started: std::time::Instant,
    /// The proxy listeners' addresses, as bound.
    pub proxy_addrs: Vec<SocketAddr>,
}

/// A reload asked for through the admin endpoint: who asked, and the answer they wait for
/// (the new configuration's digest, or every problem that kept the old one).
pub struct ReloadRequest {
    pub by: SocketAddr,
    pub answer: tokio::sync::oneshot::Sender<Result<String, String>>,
}
