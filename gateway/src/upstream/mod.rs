//! Parent proxies: the ordered list of the configuration, one failover loop for tunnels and
//! forwarded requests, and a watcher that probes idle parents so that readiness tells the
//! truth before traffic finds out. Never a direct fallback.

mod account;
mod clock;
mod error;
mod exchange;
mod health;
mod parent;
mod request;
mod secret;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use passerelle_config::{Flow, Target, Upstream};
use tokio_util::sync::CancellationToken;

pub use account::Accounts;
pub use error::{Sent, UpstreamError};
pub use health::ParentHealth;
pub use parent::{Parent, Timeouts};
use request::Outgoing;

use crate::body::Body;
use crate::connect::BoxedIo;

/// The parents of the current configuration, in order.
pub struct Parents {
    list: Vec<Arc<Parent>>,
    /// Our `Via` token, sent on CONNECT too so that a parent that is ourselves is caught.
    via: String,
    /// The accounts the parents present, with what the domain said of them: kept across
    /// reloads.
    accounts: Arc<Accounts>,
}

/// The parents to try for one request, in order, and what the failures so far say.
struct Failover {
    plan: std::vec::IntoIter<Arc<Parent>>,
    tried: usize,
    last: Option<UpstreamError>,
}

impl Failover {
    fn next(&mut self) -> Option<Arc<Parent>> {
        let parent = self.plan.next()?;
        self.tried += 1;
        Some(parent)
    }

    /// `parent` failed with `error`: `Ok` to try the next one (when `next` says so), else the
    /// error to give the client.
    fn failed(
        &mut self,
        parent: &Parent,
        error: UpstreamError,
        next: bool,
    ) -> Result<(), UpstreamError> {
        if error.is_transport() {
            parent.transport_failed(&error);
        }
        if next {
            self.last = Some(error);
            Ok(())
        } else {
            Err(error)
        }
    }

    fn exhausted(self) -> UpstreamError {
        match self.last {
            Some(last) => UpstreamError::AllDown {
                tried: self.tried,
                last: Box::new(last),
            },
            None => UpstreamError::Protocol {
                parent: "(none)".to_string(),
                what: "is not configured".to_string(),
            },
        }
    }
}

impl Parents {
    /// Builds the parents; those whose settings did not change keep what `previous` learnt
    /// (their scheme, health, pooled connections and counters), and every account keeps what
    /// the domain said of it. `audit` records the account's refusals (none for `doctor`).
    pub fn new(
        upstreams: &[Upstream],
        via: &str,
        previous: Option<&Parents>,
        audit: Option<&crate::audit::AuditLog>,
    ) -> Result<Parents, String> {
        let accounts = previous.map_or_else(Arc::default, |p| p.accounts.clone());
        let mut list = Vec::with_capacity(upstreams.len());
        for u in upstreams {
            let kept = previous
                .and_then(|p| p.list.iter().find(|old| old.same_as(u)))
                .map(|old| old.state.clone());
            let negotiator = match &kept {
                Some(_) => None,
                None => parent::initiator(u),
            };
            let parent = Parent::new(u, kept, negotiator, &accounts, audit.cloned())?;
            list.push(Arc::new(parent));
        }
        Ok(Parents {
            list,
            via: via.to_string(),
            accounts,
        })
    }

    pub fn list(&self) -> &[Arc<Parent>] {
        &self.list
    }

    /// Parents that are up first, in config order, then those cooling down: when all are
    /// down, trying them beats refusing.
    fn plan(&self) -> Vec<Arc<Parent>> {
        let (up, down): (Vec<_>, Vec<_>) = self
            .list
            .iter()
            .cloned()
            .partition(|p| !p.state.health.is_down());
        up.into_iter().chain(down).collect()
    }

    fn failover(&self) -> Failover {
        Failover {
            plan: self.plan().into_iter(),
            tried: 0,
            last: None,
        }
    }

    /// A tunnel to `target` through the first parent that can give one. `trying` hears each
    /// parent's URL as it is tried (for the audit's route).
    pub async fn tunnel(
        &self,
        target: &Target,
        flow: &Flow,
        timeouts: &Timeouts,
        trying: impl Fn(&str),
    ) -> Result<(BoxedIo, String), UpstreamError> {
        let mut failover = self.failover();
        while let Some(parent) = failover.next() {
            trying(&parent.url);
            match parent.tunnel(target, flow, &self.via, timeouts).await {
                Ok(io) => return Ok((io, parent.url.clone())),
                Err(e) => {
                    let next = e.is_transport();
                    failover.failed(&parent, e, next)?;
                }
            }
        }
        Err(failover.exhausted())
    }

    /// A forwarded request through the first parent that answers; the response is the
    /// origin's (relayed by the parent) or the parent's own.
    pub async fn forward(
        &self,
        req: Request<Body>,
        flow: &Flow,
        timeouts: &Timeouts,
        trying: impl Fn(&str),
    ) -> Result<(Response<Incoming>, String), UpstreamError> {
        let mut req = Outgoing::new(req).await?;
        let mut failover = self.failover();
        while let Some(parent) = failover.next() {
            trying(&parent.url);
            match parent.forward(&mut req, flow, timeouts).await {
                Ok(resp) => return Ok((resp, parent.url.clone())),
                Err(e) => {
                    // Only what cannot have reached the origin goes to the next parent,
                    // unless it may go twice.
                    let next = e.is_transport()
                        && match e.sent() {
                            Sent::No => req.whole(),
                            Sent::Maybe => req.resendable(),
                        };
                    failover.failed(&parent, e, next)?;
                }
            }
        }
        Err(failover.exhausted())
    }
}

/// Parents that are this gateway: their name (or address) resolves to one of `listeners`
/// (a listener on every address counts for each local address). Each is a proxy loop; the
/// `Via` sent on CONNECT catches the others at the first hop. A name that does not resolve
/// now is not reported here: failover deals with it.
pub async fn loops_to_ourselves(
    upstreams: &[Upstream],
    listeners: &[std::net::SocketAddr],
    timeout: Duration,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, u) in upstreams.iter().enumerate() {
        let Ok(addrs) = crate::connect::lookup(&u.host, u.port, timeout).await else {
            continue;
        };
        let ours = addrs.iter().find(|a| {
            let ip = a.ip().to_canonical();
            listeners.iter().any(|l| {
                l.port() == a.port()
                    && (l.ip().to_canonical() == ip || (l.ip().is_unspecified() && is_local(ip)))
            })
        });
        if let Some(addr) = ours {
            problems.push(format!(
                "upstream[{i}].url: {} resolves to {addr}, one of Passerelle's own listeners (a proxy loop)",
                u.url
            ));
        }
    }
    problems
}

/// An address of this host: one a socket can be bound to.
fn is_local(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Probes every parent that has been quiet for its `health_interval` (TCP, and TLS for
/// https://; no request, no credentials), and says every five minutes which are still down.
/// `current` gives the running configuration's parents and the time a probe may take.
pub async fn watch(current: impl Fn() -> (Vec<Arc<Parent>>, Duration), closing: CancellationToken) {
    const SUMMARY_EVERY: Duration = Duration::from_secs(300);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_summary = Instant::now();
    let mut probing: Vec<(String, tokio::task::JoinHandle<()>)> = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closing.cancelled() => return,
        }
        let (parents, timeout) = current();
        probing.retain(|(_, task)| !task.is_finished());
        for parent in &parents {
            let busy = probing.iter().any(|(url, _)| url == &parent.url);
            if busy || parent.quiet_for() < parent.health_interval() {
                continue;
            }
            let parent = parent.clone();
            let url = parent.url.clone();
            probing.push((
                url,
                tokio::spawn(async move {
                    if let Err(e) = parent.probe(timeout).await {
                        parent.transport_failed(&e);
                    }
                }),
            ));
        }
        if last_summary.elapsed() >= SUMMARY_EVERY {
            last_summary = Instant::now();
            let down: Vec<String> = parents
                .iter()
                .filter_map(|p| {
                    p.state
                        .health
                        .down_for()
                        .map(|d| format!("{} (for {}s)", p.url, d.as_secs()))
                })
                .collect();
            if !down.is_empty() {
                tracing::warn!(parents = %down.join(", "), "parent.still_down");
            }
        }
    }
}
