//! One parent proxy: connecting to it (TCP or TLS), the authentication legs on one
//! connection, pooled authenticated connections for forwarded requests, and what the gateway
//! learnt of it (the scheme it demands, its health, its counters), which a reload that leaves
//! its settings unchanged keeps.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{CONNECTION, PROXY_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use passerelle_auth::{
    parse_challenges, AuthError, AuthMode, Challenge, Credentials, Handshake, NegotiateError,
    Negotiator, Scheme,
};
use passerelle_config::{Flow, Host, KerberosSource, Target, Upstream};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::error::{Sent, UpstreamError};
use super::health::{Change, Health, SystemClock, Turn};
use super::request::{Leg, Outgoing};
use crate::body::Body;
use crate::connect::{connect_any, lookup, BoxedIo};
use crate::connect::{ConnectError, Hop};
use crate::pool::Pool;

/// A parent refusing credentials says so at once (it asks its domain controller and answers
/// 407); one still silent after this long is carrying the request on. The probe gate opens
/// then, so that nothing queues behind a slow answer.
const VERDICT_WINDOW: Duration = Duration::from_secs(1);

/// How long a forwarded request waits for a pooled parent connection whose previous exchange
/// is ending, rather than opening (and authenticating) another.
const RETURNING_WAIT: Duration = Duration::from_millis(50);

/// Legs before a handshake is declared endless (NTLM needs three, Negotiate one or two).
const MAX_LEGS: usize = 5;

/// The time limits of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting, TLS, authentication legs, and a CONNECT's answer.
    pub connect: Duration,
    /// A forwarded request's answer (the flow's idle timeout).
    pub response: Duration,
}

pub struct Parent {
    pub url: String,
    settings: Upstream,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    credentials: Option<Arc<Credentials>>,
    workstation: Arc<str>,
    pub learnt: Arc<Learnt>,
}

/// What a parent taught the gateway.
pub struct Learnt {
    pub health: Health,
    demand: Mutex<Demand>,
    pool: Arc<Pool<()>>,
    /// Kerberos credentials and their cached tickets.
    pub negotiator: Option<Arc<passerelle_kerberos::Initiator>>,
    /// Accepted handshakes, by scheme: Basic, NTLM, Negotiate.
    pub handshakes: [AtomicU64; 3],
    pub auth_failures: AtomicU64,
    last_handshake: Mutex<Option<std::time::SystemTime>>,
    /// When the parent last answered, or a health probe last started.
    last_checked: Mutex<Instant>,
}

/// What the parent asks of a request before forwarding it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Demand {
    Unknown,
    Nothing,
    Scheme(Scheme),
}

/// How an attempt through a pooled connection ended.
enum Pooled {
    Answered(Response<Incoming>),
    /// The connection had gone stale and the request may go again: try another.
    Stale,
    Failed(UpstreamError),
}

/// How a leg ended without an answer.
enum Failure {
    /// hyper handed the request back unsent (the connection was closing).
    Unsent(Box<Request<Body>>),
    Broke(hyper::Error),
    Timeout,
}

impl From<TrySendError<Request<Body>>> for Failure {
    fn from(mut e: TrySendError<Request<Body>>) -> Failure {
        match e.take_message() {
            Some(req) => Failure::Unsent(Box::new(req)),
            None => Failure::Broke(e.into_error()),
        }
    }
}

impl Parent {
    pub fn new(settings: &Upstream, learnt: Option<Arc<Learnt>>) -> Result<Parent, String> {
        let tls = if settings.tls {
            Some(tls_for(settings)?)
        } else {
            None
        };
        let learnt = learnt.unwrap_or_else(|| {
            Arc::new(Learnt {
                health: Health::new(
                    Arc::new(SystemClock),
                    settings.auth_backoff,
                    settings.down_cooldown,
                ),
                demand: Mutex::new(Demand::Unknown),
                pool: Pool::waiting(RETURNING_WAIT),
                negotiator: settings.kerberos.as_ref().map(|k| {
                    let source = match &k.source {
                        KerberosSource::Keytab(path) => {
                            passerelle_kerberos::Source::Keytab(path.clone())
                        }
                        KerberosSource::Password(passerelle_auth::Secret::Password(p)) => {
                            passerelle_kerberos::Source::Password(p.clone().into())
                        }
                        KerberosSource::Password(_) | KerberosSource::Cache => {
                            passerelle_kerberos::Source::Cache
                        }
                    };
                    Arc::new(passerelle_kerberos::Initiator::new(
                        k.principal.clone(),
                        source,
                        k.spn.clone(),
                    ))
                }),
                handshakes: Default::default(),
                auth_failures: AtomicU64::new(0),
                last_handshake: Mutex::new(None),
                last_checked: Mutex::new(Instant::now()),
            })
        });
        Ok(Parent {
            url: settings.url.clone(),
            settings: settings.clone(),
            tls,
            credentials: settings.credentials.clone().map(Arc::new),
            workstation: Arc::from(settings.workstation.as_str()),
            learnt,
        })
    }

    /// Same settings: what was learnt of it still holds.
    pub fn same_as(&self, settings: &Upstream) -> bool {
        &self.settings == settings
    }

    pub fn health_interval(&self) -> Duration {
        self.settings.health_interval
    }

    /// Time since the parent last answered or was probed.
    pub fn quiet_for(&self) -> Duration {
        self.learnt
            .last_checked
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    fn touch(&self) {
        if let Ok(mut t) = self.learnt.last_checked.lock() {
            *t = Instant::now();
        }
    }

    fn mode_for(&self, flow: &Flow) -> AuthMode {
        if flow.parent_auth {
            self.settings.auth
        } else {
            AuthMode::None
        }
    }

    /// The scheme the parent demands, as learnt (`none` when it needs none; `None` before
    /// the first exchange).
    pub fn scheme(&self) -> Option<String> {
        match self.demand() {
            Demand::Unknown => None,
            Demand::Nothing => Some("none".to_string()),
            Demand::Scheme(s) => Some(s.to_string()),
        }
    }

    /// When our credentials were last accepted.
    pub fn last_handshake(&self) -> Option<std::time::SystemTime> {
        self.learnt.last_handshake.lock().ok().and_then(|at| *at)
    }

    fn demand(&self) -> Demand {
        self.learnt
            .demand
            .lock()
            .map(|d| d.clone())
            .unwrap_or(Demand::Unknown)
    }

    fn learn(&self, demand: Demand) {
        if let Ok(mut d) = self.learnt.demand.lock() {
            *d = demand;
        }
    }

    /// The parent answered something: it is up.
    fn answered(&self) {
        self.touch();
        if self.learnt.health.answered() == Change::CameBack {
            tracing::info!(upstream.url = %self.url, "parent.up: answering again");
        }
    }

    /// Its transport failed: down for the cool-down (said once, not per request).
    pub fn transport_failed(&self, error: &UpstreamError) {
        if self.learnt.health.failed() == Change::WentDown {
            tracing::warn!(
                upstream.url = %self.url,
                error = %error,
                cooldown = ?self.settings.down_cooldown,
                "parent.down: trying the next parent first until it answers again"
            );
        }
    }

    fn backoff(&self, left: Duration) -> UpstreamError {
        UpstreamError::BackOff {
            parent: self.url.clone(),
            seconds: left.as_secs().max(1),
        }
    }

    pub fn check_backoff(&self) -> Result<(), UpstreamError> {
        match self.learnt.health.backoff_left() {
            Some(left) => Err(self.backoff(left)),
            None => Ok(()),
        }
    }

    fn auth_failed(&self, source: AuthError) -> UpstreamError {
        if source.backs_off() {
            self.learnt.auth_failures.fetch_add(1, Ordering::Relaxed);
            self.learnt.health.refused();
            self.learnt.pool.clear();
            // Logged once per back-off: the next attempt comes only after it.
            tracing::error!(
                upstream.url = %self.url,
                account = %self.credentials.as_ref().map(|c| c.account()).unwrap_or_default(),
                error = %source,
                backoff = ?self.settings.auth_backoff,
                "parent.auth.failed: not sending credentials again during the back-off"
            );
        }
        UpstreamError::Auth {
            parent: self.url.clone(),
            source,
        }
    }

    fn protocol(&self, what: impl Into<String>) -> UpstreamError {
        UpstreamError::Protocol {
            parent: self.url.clone(),
            what: what.into(),
        }
    }

    fn unreachable(&self, source: ConnectError) -> UpstreamError {
        UpstreamError::Unreachable {
            parent: self.url.clone(),
            source,
        }
    }

    /// Resolves, connects and (for https://) handshakes TLS: no byte of a request yet.
    async fn reach(&self, timeout: Duration) -> Result<BoxedIo, UpstreamError> {
        let addrs = lookup(&self.settings.host, self.settings.port, timeout)
            .await
            .map_err(|e| self.unreachable(e))?;
        let tcp = connect_any(&addrs, timeout, Hop::Parent)
            .await
            .map_err(|e| self.unreachable(e))?;
        let Some((connector, name)) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let addr = format!("{}:{}", self.settings.host, self.settings.port);
        match tokio::time::timeout(timeout, connector.connect(name.clone(), tcp)).await {
            Ok(Ok(tls)) => Ok(Box::new(tls)),
            Ok(Err(source)) => Err(self.unreachable(ConnectError::Tls {
                hop: Hop::Parent,
                addr,
                source,
            })),
            Err(_) => Err(self.unreachable(ConnectError::Timeout {
                hop: Hop::Parent,
                addr,
            })),
        }
    }

    async fn open(&self, timeout: Duration) -> Result<SendRequest<Body>, UpstreamError> {
        let io = self.reach(timeout).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| {
                self.unreachable(ConnectError::Http {
                    hop: Hop::Parent,
                    addr: self.url.clone(),
                    source,
                })
            })?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// The health probe: can the parent be reached (TCP, and TLS for https://)? No request,
    /// no credentials.
    pub async fn probe(&self, timeout: Duration) -> Result<(), UpstreamError> {
        self.touch();
        self.reach(timeout).await?;
        self.answered();
        Ok(())
    }

    /// A tunnel to `target`: CONNECT on a fresh connection, authenticated on the way.
    pub async fn tunnel(
        &self,
        target: &Target,
        flow: &Flow,
        via: &str,
        timeouts: &Timeouts,
    ) -> Result<BoxedIo, UpstreamError> {
        self.check_backoff()?;
        let conn = self.open(timeouts.connect).await?;
        let mut req = Outgoing::connect(target, via);
        let (resp, _conn) = self
            .exchange(conn, &mut req, self.mode_for(flow), timeouts)
            .await?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Refused {
                parent: self.url.clone(),
                status: resp.status(),
                target: target.to_string(),
            });
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|source| UpstreamError::Broken {
                parent: self.url.clone(),
                sent: Sent::No,
                source,
            })?;
        Ok(Box::new(TokioIo::new(upgraded)))
    }

    /// A forwarded request: on a pooled authenticated connection when one is idle, else on a
    /// fresh one, authenticated first.
    pub async fn forward(
        &self,
        req: &mut Outgoing,
        flow: &Flow,
        timeouts: &Timeouts,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.check_backoff()?;
        let mode = self.mode_for(flow);
        while let Some(conn) = self.learnt.pool.checkout(&()).await {
            match self.send_pooled(conn, req, mode, timeouts).await {
                Pooled::Answered(resp) => return Ok(resp),
                Pooled::Stale => continue,
                Pooled::Failed(e) => return Err(e),
            }
        }
        let conn = self.open(timeouts.connect).await?;
        let (resp, conn) = self.exchange(conn, req, mode, timeouts).await?;
        self.learnt.pool.checkin_when_ready((), conn);
        Ok(resp)
    }

    async fn send_pooled(
        &self,
        mut conn: SendRequest<Body>,
        req: &mut Outgoing,
        mode: AuthMode,
        timeouts: &Timeouts,
    ) -> Pooled {
        // Connection-bound schemes authenticated the connection; Basic goes with each request.
        let header = match (mode, self.demand()) {
            (AuthMode::None, _) => None,
            (_, Demand::Scheme(scheme @ Scheme::Basic)) => {
                let mut h = self.handshake(mode);
                h.first_header(Some(&scheme)).ok().flatten()
            }
            _ => None,
        };
        let (request, _) = req.build(header.as_deref(), Leg::Final);
        match self
            .answer(conn.try_send_request(request), timeouts.response, None)
            .await
        {
            Ok(resp) if resp.status() != StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                self.answered();
                self.learnt.pool.checkin_when_ready((), conn);
                Pooled::Answered(resp)
            }
            Ok(resp) => {
                self.answered();
                drain(resp).await;
                if !req.replayable() {
                    return Pooled::Failed(self.protocol(
                        "asked to authenticate again after the request body was sent; nothing was delivered",
                    ));
                }
                Pooled::Stale
            }
            Err(Failure::Unsent(back)) => {
                req.recover(*back);
                Pooled::Stale
            }
            Err(Failure::Broke(e)) if e.is_user() => {
                Pooled::Failed(UpstreamError::ClientBody(e.to_string()))
            }
            // A keep-alive connection the parent closed as we wrote: only a request that may
            // go twice goes again.
            Err(Failure::Broke(_)) if req.resendable() => Pooled::Stale,
            Err(Failure::Broke(source)) => Pooled::Failed(UpstreamError::Broken {
                parent: self.url.clone(),
                sent: Sent::Maybe,
                source,
            }),
            Err(Failure::Timeout) => Pooled::Failed(UpstreamError::ResponseTimeout {
                parent: self.url.clone(),
                after: timeouts.response,
            }),
        }
    }

    fn handshake(&self, mode: AuthMode) -> Handshake {
        let negotiator = self
            .learnt
            .negotiator
            .clone()
            .map(|n| n as Arc<dyn Negotiator>);
        let fallback = self
            .settings
            .kerberos
            .as_ref()
            .is_some_and(|k| k.fallback_ntlm);
        Handshake::new(mode, self.credentials.clone(), self.workstation.clone())
            .with_negotiator(negotiator, fallback)
    }

    /// The right to test unproven credentials (at once when they are proven).
    async fn turn(&self) -> Result<Option<Turn>, UpstreamError> {
        self.learnt
            .health
            .credentials_turn()
            .await
            .map_err(|left| self.backoff(left))
    }

    /// Runs a handshake step. Negotiate's may ask the KDC: those run on the blocking pool,
    /// bounded by `timeout`, never on the async runtime.
    async fn step<T: Send + 'static>(
        &self,
        handshake: &mut Handshake,
        timeout: Duration,
        f: impl FnOnce(&mut Handshake) -> Result<T, AuthError> + Send + 'static,
    ) -> Result<T, UpstreamError> {
        if !handshake.may_block() {
            return f(handshake).map_err(|e| self.auth_failed(e));
        }
        let mut owned = std::mem::replace(handshake, self.handshake(AuthMode::None));
        let task = tokio::task::spawn_blocking(move || {
            let result = f(&mut owned);
            (owned, result)
        });
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok((back, result))) => {
                *handshake = back;
                result.map_err(|e| self.auth_failed(e))
            }
            Ok(Err(_)) => Err(self.protocol("lost its Kerberos step (the library failed)")),
            Err(_) => Err(self.auth_failed(AuthError::Kerberos(NegotiateError {
                failure: passerelle_auth::KerberosFailure::KdcUnreachable,
                detail: format!(
                    "no answer from the KDC within {} (SPN {})",
                    humantime::format_duration(timeout),
                    self.learnt.negotiator.as_ref().map_or("", |n| n.spn())
                ),
            }))),
        }
    }

    /// Sends `req` on `conn`, answering 407s until the parent says something else. The
    /// body goes only on the leg that can succeed; credentials go only to a parent that asked
    /// for them, and while they are unproven, from one request at a time.
    async fn exchange(
        &self,
        mut conn: SendRequest<Body>,
        req: &mut Outgoing,
        mode: AuthMode,
        timeouts: &Timeouts,
    ) -> Result<(Response<Incoming>, SendRequest<Body>), UpstreamError> {
        let demand = self.demand();
        let mut handshake = self.handshake(mode);
        let known = match &demand {
            Demand::Scheme(scheme) => Some(scheme.clone()),
            _ => None,
        };
        // Kerberos tests the credentials when it makes a token (the KDC sees the password),
        // not when the parent reads it: such steps take the probe gate too.
        let mut turn: Option<Turn> = None;
        if handshake.may_block() && known.is_some() {
            turn = self.turn().await?;
        }
        let mut header = self
            .step(&mut handshake, timeouts.connect, move |h| {
                h.first_header(known.as_ref())
            })
            .await?;
        for _ in 0..MAX_LEGS {
            let leg = if handshake.awaits_challenge() {
                Leg::Negotiation
            } else if header.is_none()
                && mode != AuthMode::None
                && demand == Demand::Unknown
                && req.has_body()
            {
                Leg::FirstContact
            } else {
                Leg::Final
            };
            let with_credentials = header.is_some() && leg == Leg::Final;
            if with_credentials && turn.is_none() {
                turn = self.turn().await?;
            }
            let bound = if leg == Leg::Final && !req.is_connect() {
                timeouts.response
            } else {
                timeouts.connect
            };
            let (request, held) = req.build(header.as_deref(), leg);
            let verdict = with_credentials.then_some(&mut turn);
            let resp = match self
                .answer(conn.try_send_request(request), bound, verdict)
                .await
            {
                Ok(resp) => resp,
                Err(failure) => return Err(self.leg_failed(failure, req, leg, bound)),
            };
            self.answered();
            tracing::debug!(upstream.url = %self.url, ?leg, status = resp.status().as_u16(), "parent.leg");
            if resp.status() != StatusCode::PROXY_AUTHENTICATION_REQUIRED {
                if handshake.scheme() == Some(&Scheme::Negotiate) {
                    let finals = challenges_of(&resp);
                    let verified = self
                        .step(&mut handshake, timeouts.connect, move |h| h.finish(&finals))
                        .await;
                    if let Err(e) = verified {
                        tracing::warn!(upstream.url = %self.url, error = %e, "parent.auth.negotiate.final_token: the parent's final token did not verify; its answer is used all the same");
                    }
                }
                if handshake.sent_credentials() {
                    let scheme = match handshake.scheme() {
                        Some(Scheme::Basic) => 0,
                        Some(Scheme::Negotiate) => 2,
                        _ => 1,
                    };
                    self.learnt.handshakes[scheme].fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut at) = self.learnt.last_handshake.lock() {
                        *at = Some(std::time::SystemTime::now());
                    }
                }
                if mode != AuthMode::None {
                    self.learn(match handshake.scheme() {
                        Some(scheme) => Demand::Scheme(scheme.clone()),
                        None => Demand::Nothing,
                    });
                }
                // Accepted, or none asked for: no account to protect, nobody waits.
                self.learnt.health.accepted();
                return Ok((resp, conn));
            }
            let closing = resp
                .headers()
                .get_all(CONNECTION)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let challenges = challenges_of(&resp);
            drain(resp).await;
            let body_whole = match held {
                Some(held) => req.take_back(held),
                None => req.whole(),
            };
            if handshake.may_block() && turn.is_none() {
                turn = self.turn().await?;
            }
            let next = self
                .step(&mut handshake, timeouts.connect, move |h| {
                    h.on_challenge(&challenges)
                })
                .await?;
            if let Some(scheme) = handshake.scheme() {
                self.learn(Demand::Scheme(scheme.clone()));
            }
            if !body_whole {
                return Err(self.protocol(
                    "demanded authentication after the request body was sent; nothing was delivered",
                ));
            }
            // A leg that announced a body it did not send leaves the connection out of step;
            // a parent may stop reading after a 407 to a large body.
            let in_step = leg == Leg::Negotiation || !req.has_body();
            if closing || !in_step || conn.ready().await.is_err() {
                if handshake.is_connection_bound() {
                    return Err(self.protocol(format!(
                        "closed the connection in the middle of the {} handshake",
                        handshake.scheme().map_or("".to_string(), |s| s.to_string())
                    )));
                }
                conn = self.open(timeouts.connect).await?;
            }
            header = Some(next);
        }
        Err(self.auth_failed(AuthError::Rejected {
            offered: "a handshake that does not end".to_string(),
        }))
    }

    /// Waits for a leg's answer within `bound`. While this leg tests unproven credentials
    /// (`verdict`), the probe gate opens after [`VERDICT_WINDOW`] without a refusal.
    async fn answer(
        &self,
        sent: impl Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>>,
        bound: Duration,
        verdict: Option<&mut Option<Turn>>,
    ) -> Result<Response<Incoming>, Failure> {
        tokio::pin!(sent);
        let deadline = crate::limits::deadline(tokio::time::Instant::now(), bound);
        if let Some(turn @ Some(_)) = verdict {
            tokio::select! {
                result = &mut sent => return result.map_err(Failure::from),
                _ = tokio::time::sleep(VERDICT_WINDOW.min(bound)) => {
                    self.learnt.health.accepted();
                    *turn = None;
                }
            }
        }
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(result) => result.map_err(Failure::from),
            Err(_) => Err(Failure::Timeout),
        }
    }

    fn leg_failed(
        &self,
        failure: Failure,
        req: &mut Outgoing,
        leg: Leg,
        bound: Duration,
    ) -> UpstreamError {
        let parent = self.url.clone();
        // Authentication legs never go past the parent; neither does a CONNECT.
        let final_leg = leg == Leg::Final && !req.is_connect();
        match failure {
            Failure::Unsent(back) => {
                req.recover(*back);
                UpstreamError::Silent {
                    parent,
                    what: "(the connection closed before the request went)",
                    after: Duration::ZERO,
                }
            }
            Failure::Broke(e) if e.is_user() => UpstreamError::ClientBody(e.to_string()),
            Failure::Broke(source) => UpstreamError::Broken {
                parent,
                sent: if final_leg { Sent::Maybe } else { Sent::No },
                source,
            },
            Failure::Timeout if final_leg => UpstreamError::ResponseTimeout {
                parent,
                after: bound,
            },
            Failure::Timeout => UpstreamError::Silent {
                parent,
                what: if req.is_connect() {
                    "the CONNECT"
                } else {
                    "an authentication leg"
                },
                after: bound,
            },
        }
    }
}

/// The challenges a response carries in `Proxy-Authenticate`.
fn challenges_of(resp: &Response<Incoming>) -> Vec<Challenge> {
    let values: Vec<&str> = resp
        .headers()
        .get_all(PROXY_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    parse_challenges(values)
}

/// Reads a 407's body to its end (bounded) so the connection can carry the next leg.
async fn drain(resp: Response<Incoming>) {
    let mut body = resp.into_body();
    let read = async {
        let mut total = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            total += frame.data_ref().map_or(0, |d| d.len());
            if total > 1024 * 1024 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
}

fn tls_for(u: &Upstream) -> Result<(TlsConnector, ServerName<'static>), String> {
    let config = crate::connect::tls_client_config(u.ca_file.as_deref())
        .map_err(|e| format!("{}: {e}", u.url))?;
    let name = match &u.host {
        Host::Name(n) => ServerName::try_from(n.clone()).map_err(|e| format!("{}: {e}", u.url))?,
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
    };
    Ok((TlsConnector::from(config), name))
}
