//! One parent proxy: connecting to it (TCP or TLS), the authentication legs on one
//! connection, pooled authenticated connections for forwarded requests, and what the gateway
//! learnt of it (the scheme it demands, its health, its counters), which a reload that leaves
//! its settings unchanged keeps.

use std::collections::HashMap;
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
    parse_challenges, AuthError, AuthMode, Challenge, Handshake, NegotiateError, Negotiator, Scheme,
};
use passerelle_config::{Flow, Host, KerberosSource, Target, Upstream};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::account::{Account, Accounts, Backoff, Fingerprint, Held, Refusal};
use super::clock::SystemClock;
use super::error::{Sent, UpstreamError};
use super::exchange::{self, Demand, KerberosStanding, Next, Rejection};
use super::health::{Change, Health, ParentHealth, Trial};
use super::request::{Leg, Outgoing};
use super::secret::{Current, Secret};
use crate::audit::AuditLog;
use crate::body::Body;
use crate::connect::{connect_any, lookup, BoxedIo};
use crate::connect::{ConnectError, Hop};
use crate::pool::Pool;
use crate::record::{AuditEvent, Decision, EventKind, Reason};

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
    secret: Secret,
    /// The account it presents, shared with every parent presenting it (none: no credentials).
    account: Option<Arc<Account>>,
    workstation: Arc<str>,
    /// Where the refusals of the account are recorded (none: `doctor`, which writes no audit).
    audit: Option<AuditLog>,
    pub state: Arc<ParentState>,
}

/// What the gateway keeps of a parent across reloads that leave its settings unchanged.
pub struct ParentState {
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
    /// The secret this parent accepted since its last refusal: a 407 to it then refuses a
    /// destination, not the account.
    proven: Mutex<Option<Fingerprint>>,
    /// Destinations the parent refused after accepting the account, until they may go again.
    refused: Mutex<HashMap<String, DestinationHold>>,
    /// Kerberos steps on the blocking pool at once: a slow KDC queues requests here, not
    /// threads in the pool.
    kerberos_steps: Arc<tokio::sync::Semaphore>,
}

/// Kerberos steps of one parent that may wait on the KDC at once.
const KERBEROS_STEPS: usize = 4;

/// A destination a parent refused, and when it may be asked again.
struct DestinationHold {
    until: Instant,
    delay: Duration,
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

/// The Kerberos initiator of a parent's settings, if it speaks Negotiate.
pub fn initiator(settings: &Upstream) -> Option<Arc<passerelle_kerberos::Initiator>> {
    let k = settings.kerberos.as_ref()?;
    let source = match &k.source {
        KerberosSource::Keytab(path) => passerelle_kerberos::Source::Keytab(path.clone()),
        KerberosSource::Password(passerelle_auth::Secret::Password(p)) => {
            passerelle_kerberos::Source::Password(p.clone().into())
        }
        KerberosSource::Password(_) | KerberosSource::Cache => passerelle_kerberos::Source::Cache,
    };
    Some(Arc::new(passerelle_kerberos::Initiator::new(
        k.principal.clone(),
        source,
        k.spn.clone(),
    )))
}

/// The name the domain knows the account by: `DOMAIN\user`, or the Kerberos principal (or,
/// without one, where the credentials come from).
pub fn account_name(settings: &Upstream) -> Option<String> {
    match (&settings.credentials, &settings.kerberos) {
        (_, Some(k)) if k.principal.is_some() => k.principal.clone(),
        (Some(c), _) => Some(c.account()),
        (None, Some(k)) => Some(match &k.source {
            KerberosSource::Keytab(path) => format!("the principal of {}", path.display()),
            _ => "the default principal".to_string(),
        }),
        (None, None) => None,
    }
}

impl Parent {
    /// A parent of `settings`: its account (shared through `accounts`), and what `kept` from
    /// before a reload knew of it (else a new state with `negotiator`).
    pub fn new(
        settings: &Upstream,
        kept: Option<Arc<ParentState>>,
        negotiator: Option<Arc<passerelle_kerberos::Initiator>>,
        accounts: &Accounts,
        audit: Option<AuditLog>,
    ) -> Result<Parent, String> {
        let tls = if settings.tls {
            Some(tls_for(settings)?)
        } else {
            None
        };
        let state = kept.unwrap_or_else(|| {
            Arc::new(ParentState {
                health: Health::new(
                    Arc::new(SystemClock),
                    settings.auth_backoff,
                    settings.down_cooldown,
                ),
                demand: Mutex::new(Demand::Unknown),
                pool: Pool::waiting(RETURNING_WAIT),
                negotiator,
                handshakes: Default::default(),
                auth_failures: AtomicU64::new(0),
                last_handshake: Mutex::new(None),
                last_checked: Mutex::new(Instant::now()),
                proven: Mutex::new(None),
                refused: Mutex::new(HashMap::new()),
                kerberos_steps: Arc::new(tokio::sync::Semaphore::new(KERBEROS_STEPS)),
            })
        });
        let backoff = Backoff {
            first: settings.auth_backoff,
            max: settings.auth_backoff_max,
        };
        let name = account_name(settings);
        let account = name
            .as_deref()
            .map(|name| accounts.get(name, backoff, Arc::new(SystemClock)));
        let user = settings.kerberos.as_ref().and_then(|k| k.principal.clone());
        Ok(Parent {
            url: settings.url.clone(),
            settings: settings.clone(),
            tls,
            secret: Secret::new(settings, user),
            account,
            workstation: Arc::from(settings.workstation.as_str()),
            audit,
            state,
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
        self.state
            .last_checked
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    fn touch(&self) {
        if let Ok(mut t) = self.state.last_checked.lock() {
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
        self.state.last_handshake.lock().ok().and_then(|at| *at)
    }

    /// The account's name and what the domain holds against it now, if it holds anything.
    pub fn account_held(&self) -> Option<(String, Held)> {
        let account = self.account.as_ref()?;
        let held = account
            .may_present(&self.secret.current().fingerprint)
            .err()?;
        Some((account.name.clone(), held))
    }

    /// The parent's state for metrics and readiness: a parent whose account is held is in
    /// back-off like one that refused our credentials.
    pub fn status(&self) -> ParentHealth {
        match self.state.health.state() {
            ParentHealth::Up if self.account_held().is_some() => ParentHealth::Backoff,
            state => state,
        }
    }

    /// The state in words for people (status page, readiness, doctor).
    pub fn status_words(&self) -> String {
        if let Some((account, held)) = self.account_held() {
            return describe_held(&account, &held, &self.secret.current().source);
        }
        match (self.state.health.state(), self.state.health.backoff_left()) {
            (ParentHealth::Backoff, Some(left)) => format!(
                "in back-off for {}s: it refused the gateway's credentials or offers nothing usable",
                left.as_secs().max(1)
            ),
            (state, _) => state.as_str().to_string(),
        }
    }

    fn demand(&self) -> Demand {
        self.state
            .demand
            .lock()
            .map(|d| d.clone())
            .unwrap_or(Demand::Unknown)
    }

    fn learn(&self, demand: Demand) {
        if let Ok(mut d) = self.state.demand.lock() {
            *d = demand;
        }
    }

    /// The parent answered something: it is up.
    fn answered(&self) {
        self.touch();
        if self.state.health.answered() == Change::CameBack {
            tracing::info!(upstream.url = %self.url, "parent.up: answering again");
        }
    }

    /// Its transport failed: down for the cool-down (said once, not per request).
    pub fn transport_failed(&self, error: &UpstreamError) {
        if self.state.health.failed() == Change::WentDown {
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
        match self.state.health.backoff_left() {
            Some(left) => Err(self.backoff(left)),
            None => Ok(()),
        }
    }

    /// A destination this parent refused after accepting the account: refused again at once,
    /// without a handshake, until its hold ends.
    fn check_destination(&self, destination: &str) -> Result<(), UpstreamError> {
        let refused = self.state.refused.lock().unwrap_or_else(|p| p.into_inner());
        match refused.get(destination) {
            Some(hold) if hold.until > Instant::now() => Err(UpstreamError::DestinationRefused {
                parent: self.url.clone(),
                destination: destination.to_string(),
                seconds: (hold.until - Instant::now()).as_secs().max(1),
            }),
            _ => Ok(()),
        }
    }

    /// The parent refused `destination` although it accepted the account: it waits (the
    /// account's back-off, doubling per refusal of the same destination), and the account is
    /// in doubt until its next success.
    fn destination_refused(
        &self,
        destination: &str,
        may_have_counted: bool,
        secret: &Current,
    ) -> UpstreamError {
        let first = self.settings.auth_backoff;
        let max = self.settings.auth_backoff_max;
        let seconds = {
            let mut refused = self.state.refused.lock().unwrap_or_else(|p| p.into_inner());
            refused.retain(|_, hold| hold.until + hold.delay > Instant::now());
            if refused.len() > 1024 {
                refused.clear();
            }
            let hold = refused
                .entry(destination.to_string())
                .or_insert(DestinationHold {
                    until: Instant::now(),
                    delay: first,
                });
            hold.until = Instant::now() + hold.delay;
            let seconds = hold.delay.as_secs().max(1);
            hold.delay = (hold.delay * 2).min(max);
            seconds
        };
        *self.state.proven.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if may_have_counted {
            if let Some(account) = &self.account {
                account.may_have_counted(&secret.fingerprint);
            }
        }
        tracing::warn!(
            upstream.url = %self.url,
            destination,
            wait = seconds,
            "parent.refused_destination: 407 to an account it accepted; this destination waits, the account does not"
        );
        UpstreamError::DestinationRefused {
            parent: self.url.clone(),
            destination: destination.to_string(),
            seconds,
        }
    }

    /// The domain (or the parent, for it) refused the account's `secret`: held for the
    /// back-off or until the secret changes; the first refusal of a secret is said once in the
    /// log and the audit.
    fn account_refused(&self, secret: &Current, counts: bool, source: &AuthError) {
        self.state.auth_failures.fetch_add(1, Ordering::Relaxed);
        self.state.health.unproven();
        self.state.pool.clear();
        *self.state.proven.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let Some(account) = &self.account else {
            return;
        };
        let why = source.to_string();
        if account.refused(&secret.fingerprint, counts, &why) == Refusal::Again {
            return;
        }
        let held = account.may_present(&secret.fingerprint).err();
        let until = held
            .as_ref()
            .map(|h| humantime::format_rfc3339_seconds(h.until()).to_string())
            .unwrap_or_default();
        tracing::error!(
            upstream.url = %self.url,
            account = %account.name,
            secret = %secret.source,
            error = %why,
            next_attempt = %until,
            "parent.auth.refused: not presented again until its secret changes or the next attempt"
        );
        if let Some(audit) = &self.audit {
            let detail = format!(
                "the account {} was refused ({why}); nothing is presented until {} changes, or at {until}",
                account.name, secret.source
            );
            audit.event(AuditEvent {
                event: EventKind::Account,
                decision: Some(Decision::Deny),
                reason: Some(Reason::from(source)),
                detail: Some(detail),
                route: Some(self.url.clone()),
                account: Some(account.name.clone()),
                ..AuditEvent::default()
            });
        }
    }

    /// A refusal of the handshake, classified: the destination, the account (held), the parent
    /// (a back-off: it refuses our tickets, or offers nothing we can use), or neither (a failure
    /// on our side that the next request may not meet).
    fn auth_failed(
        &self,
        source: AuthError,
        scheme: Option<&Scheme>,
        secret: &Current,
        destination: &str,
    ) -> UpstreamError {
        let parent_backoff = match &source {
            AuthError::Rejected { .. } => {
                let proven_here = self
                    .state
                    .proven
                    .lock()
                    .map(|p| p.as_ref() == Some(&secret.fingerprint))
                    .unwrap_or(false);
                match exchange::rejection(scheme.unwrap_or(&Scheme::Ntlm), proven_here) {
                    Rejection::Destination { may_have_counted } => {
                        return self.destination_refused(destination, may_have_counted, secret)
                    }
                    Rejection::Credentials { counts } => {
                        self.account_refused(secret, counts, &source);
                        false
                    }
                    Rejection::Tickets => true,
                }
            }
            AuthError::Kerberos(e) => match exchange::kerberos_standing(e.failure) {
                KerberosStanding::Hold { counts } => {
                    self.account_refused(secret, counts, &source);
                    false
                }
                KerberosStanding::Pass => false,
            },
            AuthError::NotConfigured { .. }
            | AuthError::Unsupported { .. }
            | AuthError::SchemeNotOffered { .. } => true,
            AuthError::NoChallenge | AuthError::Ntlm(_) => false,
        };
        if parent_backoff {
            self.state.auth_failures.fetch_add(1, Ordering::Relaxed);
            self.state.health.refused();
            self.state.pool.clear();
            // Logged once per back-off: the next attempt comes only after it.
            tracing::error!(
                upstream.url = %self.url,
                error = %source,
                backoff = ?self.settings.auth_backoff,
                "parent.auth.failed: not asking this parent again during the back-off"
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
        let mut req = Outgoing::connect(target, via);
        self.check_destination(&req.destination())?;
        let conn = self.open(timeouts.connect).await?;
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
        self.check_destination(&req.destination())?;
        let mode = self.mode_for(flow);
        while let Some(conn) = self.state.pool.checkout(&()).await {
            match self.send_pooled(conn, req, mode, timeouts).await {
                Pooled::Answered(resp) => return Ok(resp),
                Pooled::Stale => continue,
                Pooled::Failed(e) => return Err(e),
            }
        }
        let conn = self.open(timeouts.connect).await?;
        let (resp, conn) = self.exchange(conn, req, mode, timeouts).await?;
        self.state.pool.checkin_when_ready((), conn);
        Ok(resp)
    }

    /// On a pooled connection, which NTLM and Negotiate authenticated once: no credentials go
    /// (Basic's go with each request, so a pooled Basic request is a new presentation: it goes
    /// the handshake's way instead).
    async fn send_pooled(
        &self,
        mut conn: SendRequest<Body>,
        req: &mut Outgoing,
        mode: AuthMode,
        timeouts: &Timeouts,
    ) -> Pooled {
        if mode != AuthMode::None && self.demand() == Demand::Scheme(Scheme::Basic) {
            return match self.exchange(conn, req, mode, timeouts).await {
                Ok((resp, conn)) => {
                    self.state.pool.checkin_when_ready((), conn);
                    Pooled::Answered(resp)
                }
                Err(e) => Pooled::Failed(e),
            };
        }
        let (request, _) = req.build(None, Leg::Final);
        match self
            .answer(conn.try_send_request(request), timeouts.response, None)
            .await
        {
            Ok(resp) if resp.status() != StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                self.answered();
                self.state.pool.checkin_when_ready((), conn);
                Pooled::Answered(resp)
            }
            Ok(resp) => {
                self.answered();
                drain(resp).await;
                if !exchange::pooled_407(req.replayable()) {
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

    /// The secret as it is now; a Kerberos password rewritten in its file reaches the
    /// initiator, and a rewritten keytab makes it acquire its tickets again.
    fn current_secret(&self) -> Current {
        let current = self.secret.current();
        if let Some(initiator) = &self.state.negotiator {
            let known = self.state.proven.lock().map(|p| p.clone()).ok().flatten();
            if let Some(password) = &current.kerberos_password {
                initiator.set_password(password.clone());
            } else if known.is_some_and(|k| k != current.fingerprint) {
                initiator.forget();
            }
        }
        current
    }

    fn handshake(&self, mode: AuthMode, secret: &Current) -> Handshake {
        let negotiator = self
            .state
            .negotiator
            .clone()
            .map(|n| n as Arc<dyn Negotiator>);
        let fallback = self
            .settings
            .kerberos
            .as_ref()
            .is_some_and(|k| k.fallback_ntlm);
        Handshake::new(mode, secret.credentials.clone(), self.workstation.clone())
            .with_negotiator(negotiator, fallback)
    }

    /// The right to present the account: not while the parent is in back-off or the account
    /// is held (a 502 at once, no wait), and while unproven, one request at a time.
    async fn trial(&self, secret: &Current) -> Result<Option<Trial>, UpstreamError> {
        let check = || -> Result<(), UpstreamError> {
            self.check_backoff()?;
            if let Some(account) = &self.account {
                if let Err(held) = account.may_present(&secret.fingerprint) {
                    return Err(UpstreamError::AccountHeld {
                        parent: self.url.clone(),
                        detail: describe_held(&account.name, &held, &secret.source),
                    });
                }
            }
            Ok(())
        };
        check()?;
        let proven = self.state.proven.lock().map(|p| p.clone()).ok().flatten();
        if proven.is_some_and(|p| p != secret.fingerprint) {
            // A new secret: tested like any unproven one.
            self.state.health.unproven();
        }
        let trial = self
            .state
            .health
            .credentials_trial()
            .await
            .map_err(|left| self.backoff(left))?;
        // While it waited, the request ahead may have been refused.
        check()?;
        Ok(trial)
    }

    /// The account was accepted with `secret`: proven here, and the domain's count reset.
    fn accepted(&self, secret: &Current, scheme: Option<&Scheme>) {
        let slot = match scheme {
            Some(Scheme::Basic) => 0,
            Some(Scheme::Negotiate) => 2,
            _ => 1,
        };
        self.state.handshakes[slot].fetch_add(1, Ordering::Relaxed);
        if let Ok(mut at) = self.state.last_handshake.lock() {
            *at = Some(std::time::SystemTime::now());
        }
        *self.state.proven.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(secret.fingerprint.clone());
        if let Some(account) = &self.account {
            account.accepted();
        }
    }

    /// Runs a handshake step. Negotiate's may ask the KDC: those run on the blocking pool,
    /// bounded by `timeout`, never on the async runtime.
    async fn step<T: Send + 'static>(
        &self,
        handshake: &mut Handshake,
        timeout: Duration,
        f: impl FnOnce(&mut Handshake) -> Result<T, AuthError> + Send + 'static,
    ) -> Result<T, AuthError> {
        if !handshake.may_block() {
            return f(handshake);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let queued = self.state.kerberos_steps.clone().acquire_owned();
        let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, queued).await else {
            return Err(AuthError::Kerberos(NegotiateError {
                failure: passerelle_auth::KerberosFailure::KdcUnreachable,
                detail: format!(
                    "{KERBEROS_STEPS} Kerberos steps already wait on the KDC for this parent; none ended within {}",
                    humantime::format_duration(timeout)
                ),
            }));
        };
        let placeholder = Handshake::new(AuthMode::None, None, self.workstation.clone());
        let mut owned = std::mem::replace(handshake, placeholder);
        let task = tokio::task::spawn_blocking(move || {
            // Held until the step ends, even when its caller gave up waiting.
            let _permit = permit;
            let result = f(&mut owned);
            (owned, result)
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok((back, result))) => {
                *handshake = back;
                result
            }
            Ok(Err(_)) => Err(AuthError::Kerberos(NegotiateError {
                failure: passerelle_auth::KerberosFailure::Other,
                detail: "the Kerberos step failed in the library".to_string(),
            })),
            Err(_) => Err(AuthError::Kerberos(NegotiateError {
                failure: passerelle_auth::KerberosFailure::KdcUnreachable,
                detail: format!(
                    "no answer from the KDC within {} (SPN {})",
                    humantime::format_duration(timeout),
                    self.state.negotiator.as_ref().map_or("", |n| n.spn())
                ),
            })),
        }
    }

    /// Sends `req` on `conn`, answering 407s until the parent says something else. The
    /// body goes only on the leg that can succeed; credentials go only to a parent that asked
    /// for them, and while they are unproven, from one request at a time; each decision is
    /// [`exchange`]'s.
    async fn exchange(
        &self,
        mut conn: SendRequest<Body>,
        req: &mut Outgoing,
        mode: AuthMode,
        timeouts: &Timeouts,
    ) -> Result<(Response<Incoming>, SendRequest<Body>), UpstreamError> {
        let destination = req.destination();
        let secret = self.current_secret();
        let demand = self.demand();
        let mut handshake = self.handshake(mode, &secret);
        let known = match &demand {
            Demand::Scheme(scheme) => Some(scheme.clone()),
            _ => None,
        };
        let failed =
            |e: AuthError, h: &Handshake| self.auth_failed(e, h.scheme(), &secret, &destination);
        let mut trial: Option<Trial> = None;
        if exchange::kdc_before_first_leg(handshake.may_block(), known.is_some()) {
            trial = self.trial(&secret).await?;
        }
        let first = self
            .step(&mut handshake, timeouts.connect, move |h| {
                h.first_header(known.as_ref())
            })
            .await;
        let mut header = first.map_err(|e| failed(e, &handshake))?;
        for _ in 0..MAX_LEGS {
            let leg = exchange::leg(
                handshake.awaits_challenge(),
                header.is_some(),
                mode,
                &demand,
                req.has_body(),
            );
            let presenting = exchange::presents_credentials(header.is_some(), leg);
            if presenting && trial.is_none() {
                trial = self.trial(&secret).await?;
            }
            let bound = if leg == Leg::Final && !req.is_connect() {
                timeouts.response
            } else {
                timeouts.connect
            };
            let (request, held) = req.build(header.as_deref(), leg);
            let verdict = presenting.then_some(&mut trial);
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
                    // Mutual authentication: a parent whose final token does not verify has
                    // not proven it is the parent; its answer is not passed on.
                    if let Err(e) = verified {
                        tracing::error!(upstream.url = %self.url, error = %e, "parent.auth.negotiate.final_token: the parent's final token did not verify: not the parent it claims to be, or a token changed on the way");
                        return Err(failed(e, &handshake));
                    }
                }
                if handshake.sent_credentials() {
                    self.accepted(&secret, handshake.scheme());
                }
                if let Some(demand) = exchange::learnt(mode, handshake.scheme()) {
                    self.learn(demand);
                }
                // Accepted, or none asked for: no account to protect, nobody waits.
                self.state.health.accepted();
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
            if handshake.may_block() && trial.is_none() {
                trial = self.trial(&secret).await?;
            }
            let next = self
                .step(&mut handshake, timeouts.connect, move |h| {
                    h.on_challenge(&challenges)
                })
                .await
                .map_err(|e| failed(e, &handshake))?;
            if let Some(scheme) = handshake.scheme() {
                self.learn(Demand::Scheme(scheme.clone()));
            }
            let ready = conn.ready().await.is_ok();
            match exchange::after_407(
                leg,
                req.has_body(),
                body_whole,
                closing,
                ready,
                handshake.is_connection_bound(),
            ) {
                Next::SameConnection => {}
                Next::NewConnection => conn = self.open(timeouts.connect).await?,
                Next::BodyLost => {
                    return Err(self.protocol(
                        "demanded authentication after the request body was sent; nothing was delivered",
                    ))
                }
                Next::HandshakeCut => {
                    return Err(self.protocol(format!(
                        "closed the connection in the middle of the {} handshake",
                        handshake.scheme().map_or("".to_string(), |s| s.to_string())
                    )))
                }
            }
            header = Some(next);
        }
        Err(failed(
            AuthError::Rejected {
                offered: "a handshake that does not end".to_string(),
            },
            &handshake,
        ))
    }

    /// Waits for a leg's answer within `bound`. While this leg tests unproven credentials
    /// (`verdict`), the probe gate opens after [`VERDICT_WINDOW`] without a refusal.
    async fn answer(
        &self,
        sent: impl Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>>,
        bound: Duration,
        verdict: Option<&mut Option<Trial>>,
    ) -> Result<Response<Incoming>, Failure> {
        tokio::pin!(sent);
        let deadline = crate::limits::deadline(tokio::time::Instant::now(), bound);
        if let Some(trial @ Some(_)) = verdict {
            tokio::select! {
                result = &mut sent => return result.map_err(Failure::from),
                _ = tokio::time::sleep(VERDICT_WINDOW.min(bound)) => {
                    self.state.health.accepted();
                    *trial = None;
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

/// An account held, in words: since when, why, until when, and what changes it.
pub fn describe_held(account: &str, held: &Held, source: &str) -> String {
    let at = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    match held {
        Held::Refused { since, until, why } => format!(
            "the gateway's account {account} was refused at {} ({why}); waiting for a new secret in {source} (or the next attempt at {})",
            at(*since),
            at(*until)
        ),
        Held::Budget { until } => format!(
            "the gateway's account {account} was refused {} times in 30 minutes; nothing is presented before {} (the domain's lockout counts them)",
            super::account::BUDGET,
            at(*until)
        ),
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
