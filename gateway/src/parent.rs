//! Parent proxies: connecting (TCP or TLS), failover in config order, the authentication
//! legs on one connection, the pool of authenticated connections, and the back-off that keeps
//! a rejected service account from being locked out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TRANSFER_ENCODING,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use passerelle_auth::{parse_challenges, AuthError, AuthMode, Credentials, Handshake, Scheme};
use passerelle_config::{Flow, Host, Target, Upstream};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::body::{empty, full, Body};
use crate::connect::{connect_any, BoxedIo};
use crate::error::{ConnectError, GatewayError, Hop, ParentError};
use crate::pool::Pool;

/// Request bodies up to this size are kept so they can be sent again on the next leg of
/// an authentication handshake (an OCSP POST is a few hundred bytes).
const REPLAY_LIMIT: usize = 1024 * 1024;

/// The ordered parents of the current configuration.
pub struct Parents {
    list: Vec<Arc<Parent>>,
}

/// One parent proxy and what the gateway learnt about it.
pub struct Parent {
    pub url: String,
    host: Host,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    auth: AuthMode,
    credentials: Option<Credentials>,
    workstation: String,
    auth_backoff: Duration,
    down_cooldown: Duration,
    state: Mutex<ParentState>,
    /// Held while credentials that have not been accepted yet are on the wire, so that
    /// concurrent requests cannot multiply failed attempts against the account.
    probe: tokio::sync::Mutex<()>,
    proven: AtomicBool,
    pool: Arc<Pool<()>>,
    pub handshakes: AtomicU64,
    pub auth_failures: AtomicU64,
}

#[derive(Default)]
struct ParentState {
    down_until: Option<Instant>,
    backoff_until: Option<Instant>,
    /// The scheme this parent demanded: later connections start with it.
    scheme: Option<Scheme>,
}

/// A request that may have to be sent more than once (one leg per 407).
struct Replayable {
    parts: http::request::Parts,
    body: ReplayBody,
}

enum ReplayBody {
    Buffered(Bytes),
    /// Too large to keep: sent once, on the leg expected to succeed.
    Stream(Option<Body>),
}

impl Parents {
    pub fn new(upstreams: &[Upstream]) -> Result<Parents, String> {
        let mut list = Vec::with_capacity(upstreams.len());
        for u in upstreams {
            let tls = if u.tls { Some(tls_for(u)?) } else { None };
            list.push(Arc::new(Parent {
                url: u.url.clone(),
                host: u.host.clone(),
                port: u.port,
                tls,
                auth: u.auth,
                credentials: u.credentials.clone(),
                workstation: u.workstation.clone(),
                auth_backoff: u.auth_backoff,
                down_cooldown: u.down_cooldown,
                state: Mutex::new(ParentState::default()),
                probe: tokio::sync::Mutex::new(()),
                proven: AtomicBool::new(false),
                pool: Pool::new(),
                handshakes: AtomicU64::new(0),
                auth_failures: AtomicU64::new(0),
            }));
        }
        Ok(Parents { list })
    }

    pub fn list(&self) -> &[Arc<Parent>] {
        &self.list
    }

    /// Parents that are up first, in config order, then those cooling down: when all are
    /// down, trying them beats refusing. Never a direct fallback.
    fn plan(&self) -> Vec<Arc<Parent>> {
        let (up, down): (Vec<_>, Vec<_>) = self.list.iter().cloned().partition(|p| !p.is_down());
        up.into_iter().chain(down).collect()
    }

    /// A tunnel to `target` through the first parent that can give one.
    pub async fn tunnel(
        &self,
        target: &Target,
        flow: &Flow,
        timeout: Duration,
    ) -> Result<(BoxedIo, String), GatewayError> {
        let mut last = None;
        let mut tried = 0;
        for parent in self.plan() {
            tried += 1;
            match parent.tunnel(target, flow, timeout).await {
                Ok(io) => return Ok((io, parent.url.clone())),
                Err(ParentFailure::Transport(e)) => {
                    parent.mark_down(&e);
                    last = Some(e);
                }
                Err(ParentFailure::Final(e)) => return Err(e),
            }
        }
        Err(all_down(tried, last))
    }

    /// Sends a forwarded request through the first parent that answers; the response is the
    /// origin's (relayed by the parent) or the parent's own.
    pub async fn forward(
        &self,
        req: Request<Body>,
        flow: &Flow,
        timeout: Duration,
    ) -> Result<(Response<Incoming>, String), GatewayError> {
        let mut req = Some(Replayable::new(req).await?);
        let mut last = None;
        let mut tried = 0;
        for parent in self.plan() {
            tried += 1;
            let Some(attempt) = req.take() else { break };
            match parent.forward(attempt, flow, timeout).await {
                Ok(resp) => return Ok((resp, parent.url.clone())),
                Err((ParentFailure::Transport(e), back)) => {
                    parent.mark_down(&e);
                    last = Some(e);
                    // A streamed body that went out cannot be sent to the next parent.
                    req = back;
                }
                Err((ParentFailure::Final(e), _)) => return Err(e),
            }
        }
        Err(all_down(tried, last))
    }
}

fn all_down(tried: usize, last: Option<ConnectError>) -> GatewayError {
    GatewayError::Parent(ParentError::AllDown {
        tried,
        last: Box::new(last.unwrap_or(ConnectError::NoAddress {
            host: "(no parent configured)".to_string(),
        })),
    })
}

enum ParentFailure {
    /// Reaching or talking to the parent failed: try the next one.
    Transport(ConnectError),
    /// The parent answered; another parent with the same account would answer the same.
    Final(GatewayError),
}

impl From<ConnectError> for ParentFailure {
    fn from(e: ConnectError) -> Self {
        if e.is_transport() {
            ParentFailure::Transport(e)
        } else {
            ParentFailure::Final(e.into())
        }
    }
}

impl Parent {
    fn is_down(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.down_until.is_some_and(|t| t > Instant::now())
    }

    fn mark_down(&self, error: &ConnectError) {
        tracing::warn!(upstream.url = %self.url, error = %error, cooldown = ?self.down_cooldown, "parent.down");
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.down_until = Some(Instant::now() + self.down_cooldown);
    }

    fn known_scheme(&self) -> Option<Scheme> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .scheme
            .clone()
    }

    /// `up`, `down` (cooling down after a transport failure) or `backoff` (credentials
    /// refused): for metrics and readiness.
    pub fn state(&self) -> &'static str {
        if self.backoff_left().is_some() {
            "backoff"
        } else if self.is_down() {
            "down"
        } else {
            "up"
        }
    }

    /// Up, and not in an authentication back-off: for readiness.
    pub fn is_usable(&self) -> bool {
        !self.is_down() && self.backoff_left().is_none()
    }

    fn backoff_left(&self) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .backoff_until
            .and_then(|t| t.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    fn check_backoff(&self) -> Result<(), GatewayError> {
        match self.backoff_left() {
            Some(left) => Err(ParentError::BackOff {
                parent: self.url.clone(),
                seconds: left.as_secs().max(1),
            }
            .into()),
            None => Ok(()),
        }
    }

    fn auth_failed(&self, error: &AuthError) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
        self.proven.store(false, Ordering::Release);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.backoff_until = Some(Instant::now() + self.auth_backoff);
        // Logged once per back-off: the next attempt comes only after it.
        tracing::error!(
            upstream.url = %self.url,
            account = %self.credentials.as_ref().map(Credentials::account).unwrap_or_default(),
            error = %error,
            backoff = ?self.auth_backoff,
            "parent.auth.failed: not sending credentials again during the back-off"
        );
    }

    fn handshake_done(&self, handshake: &Handshake<'_>) {
        if let Some(scheme) = handshake.scheme() {
            self.state.lock().unwrap_or_else(|p| p.into_inner()).scheme = Some(scheme.clone());
        }
        if handshake.sent_credentials() {
            self.handshakes.fetch_add(1, Ordering::Relaxed);
        }
        // Credentials accepted, or none asked for: either way there is no account to
        // protect any more, and new connections need not queue behind the probe gate.
        self.proven.store(true, Ordering::Release);
    }

    async fn open(&self, timeout: Duration) -> Result<SendRequest<Body>, ConnectError> {
        let addrs = self.resolve(timeout).await?;
        let tcp = connect_any(&addrs, timeout, Hop::Parent).await?;
        let addr = format!("{}:{}", self.host, self.port);
        let io: BoxedIo = match &self.tls {
            Some((connector, name)) => {
                let tls = tokio::time::timeout(timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| ConnectError::Timeout {
                        hop: Hop::Parent,
                        addr: addr.clone(),
                    })?
                    .map_err(|source| ConnectError::Tls {
                        hop: Hop::Parent,
                        addr: addr.clone(),
                        source,
                    })?;
                Box::new(tls)
            }
            None => Box::new(tcp),
        };
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| ConnectError::Http {
                hop: Hop::Parent,
                addr,
                source,
            })?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    async fn resolve(&self, timeout: Duration) -> Result<Vec<std::net::SocketAddr>, ConnectError> {
        match &self.host {
            Host::Ip(ip) => Ok(vec![std::net::SocketAddr::new(*ip, self.port)]),
            Host::Name(name) => {
                let host = name.clone();
                match tokio::time::timeout(
                    timeout,
                    tokio::net::lookup_host((name.as_str(), self.port)),
                )
                .await
                {
                    Ok(Ok(addrs)) => Ok(addrs.collect()),
                    Ok(Err(source)) => Err(ConnectError::Resolve { host, source }),
                    Err(_) => Err(ConnectError::Timeout {
                        hop: Hop::Parent,
                        addr: format!("{name}:{} (DNS)", self.port),
                    }),
                }
            }
        }
    }

    fn mode_for(&self, flow: &Flow) -> AuthMode {
        if flow.parent_auth {
            self.auth
        } else {
            AuthMode::None
        }
    }

    async fn tunnel(
        &self,
        target: &Target,
        flow: &Flow,
        timeout: Duration,
    ) -> Result<BoxedIo, ParentFailure> {
        self.check_backoff().map_err(ParentFailure::Final)?;
        let authority = target.to_string();
        let parts = Request::builder()
            .method(Method::CONNECT)
            .uri(authority.as_str())
            .header(HOST, authority.as_str())
            .body(())
            .map_err(|e| ParentFailure::Final(GatewayError::BadRequest(e.to_string())))?
            .into_parts()
            .0;
        let mut req = Replayable {
            parts,
            body: ReplayBody::Buffered(Bytes::new()),
        };
        let sender = self.open(timeout).await?;
        let (resp, _sender) = self.authenticate(sender, &mut req, flow, timeout).await?;
        if !resp.status().is_success() {
            return Err(ParentFailure::Final(
                ParentError::Refused {
                    parent: self.url.clone(),
                    status: resp.status(),
                    target: authority,
                }
                .into(),
            ));
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(|source| {
            ParentFailure::Transport(ConnectError::Http {
                hop: Hop::Parent,
                addr: self.url.clone(),
                source,
            })
        })?;
        Ok(Box::new(TokioIo::new(upgraded)))
    }

    async fn forward(
        &self,
        mut req: Replayable,
        flow: &Flow,
        timeout: Duration,
    ) -> Result<Response<Incoming>, (ParentFailure, Option<Replayable>)> {
        if let Err(e) = self.check_backoff() {
            return Err((ParentFailure::Final(e), None));
        }
        let mode = self.mode_for(flow);
        // A pooled connection is already authenticated (NTLM) or needs the Basic header.
        if let Some(mut sender) = self.pool.checkout(&()) {
            let header = match (mode, self.known_scheme()) {
                (AuthMode::None, _) | (_, None | Some(Scheme::Ntlm)) => None,
                (_, Some(_)) => {
                    let mut h = Handshake::new(mode, self.credentials.as_ref(), &self.workstation);
                    h.first_header(self.known_scheme().as_ref()).ok().flatten()
                }
            };
            let replayable = matches!(req.body, ReplayBody::Buffered(_));
            match sender
                .send_request(req.build(header.as_deref(), true))
                .await
            {
                Ok(resp) if resp.status() != StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                    self.pool.checkin_when_ready((), sender);
                    return Ok(resp);
                }
                Ok(resp) => {
                    drain(resp).await;
                    if !replayable {
                        let e = GatewayError::BadRequest(format!(
                            "parent {} asked to authenticate again in the middle of a request body too large to send twice",
                            self.url
                        ));
                        return Err((ParentFailure::Final(e), None));
                    }
                }
                // The pooled connection went stale: a fresh one follows.
                Err(_) if replayable => {}
                Err(source) => {
                    let e = ConnectError::Http {
                        hop: Hop::Parent,
                        addr: self.url.clone(),
                        source,
                    };
                    return Err((ParentFailure::Final(e.into()), None));
                }
            }
        }
        let sender = match self.open(timeout).await {
            Ok(s) => s,
            Err(e) => return Err((e.into(), Some(req))),
        };
        match self.authenticate(sender, &mut req, flow, timeout).await {
            Ok((resp, sender)) => {
                self.pool.checkin_when_ready((), sender);
                Ok(resp)
            }
            Err(e) => {
                let back = matches!(req.body, ReplayBody::Buffered(_)).then_some(req);
                Err((e, back))
            }
        }
    }

    /// Sends `req` on a fresh connection, answering 407s until the parent says something
    /// else. Credentials go only to a parent that asked for them (now or before).
    async fn authenticate(
        &self,
        mut sender: SendRequest<Body>,
        req: &mut Replayable,
        flow: &Flow,
        timeout: Duration,
    ) -> Result<(Response<Incoming>, SendRequest<Body>), ParentFailure> {
        let mode = self.mode_for(flow);
        let _probe = if mode != AuthMode::None && !self.proven.load(Ordering::Acquire) {
            let guard = self.probe.lock().await;
            // Another request may have failed (back-off) or succeeded while we waited.
            self.check_backoff().map_err(ParentFailure::Final)?;
            Some(guard)
        } else {
            None
        };
        let mut handshake = Handshake::new(mode, self.credentials.as_ref(), &self.workstation);
        let known = self.known_scheme();
        let mut header = handshake
            .first_header(known.as_ref())
            .map_err(|e| self.auth_error(e))?;
        for leg in 1..=4 {
            // The Type 1 leg of NTLM is always answered 407: a body that cannot be replayed
            // waits for the leg that can succeed.
            let ntlm_negotiate = header.as_deref().is_some_and(|h| h.starts_with("NTLM "))
                && !handshake.sent_credentials();
            let with_body = !ntlm_negotiate || matches!(req.body, ReplayBody::Buffered(_));
            let sent = tokio::time::timeout(
                timeout,
                sender.send_request(req.build(header.as_deref(), with_body)),
            );
            let resp = match sent.await {
                Ok(Ok(resp)) => resp,
                Ok(Err(source)) => {
                    return Err(ParentFailure::Transport(ConnectError::Http {
                        hop: Hop::Parent,
                        addr: self.url.clone(),
                        source,
                    }))
                }
                Err(_) => {
                    return Err(ParentFailure::Transport(ConnectError::Timeout {
                        hop: Hop::Parent,
                        addr: format!("{} (no answer)", self.url),
                    }))
                }
            };
            tracing::debug!(upstream.url = %self.url, leg, status = resp.status().as_u16(), "parent.auth.leg");
            if resp.status() != StatusCode::PROXY_AUTHENTICATION_REQUIRED {
                self.handshake_done(&handshake);
                return Ok((resp, sender));
            }
            let closing = resp
                .headers()
                .get_all(CONNECTION)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let values: Vec<String> = resp
                .headers()
                .get_all(PROXY_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            drain(resp).await;
            let challenges = parse_challenges(values.iter().map(String::as_str));
            let next = match handshake.on_challenge(&challenges) {
                Ok(next) => next,
                Err(e) => {
                    if e.is_rejection() {
                        self.auth_failed(&e);
                    }
                    return Err(self.auth_error(e));
                }
            };
            if closing || sender.ready().await.is_err() {
                if next.starts_with("NTLM ") && handshake.sent_credentials() {
                    let e = GatewayError::BadRequest(format!(
                        "parent {} closed the connection in the middle of the NTLM handshake",
                        self.url
                    ));
                    return Err(ParentFailure::Final(e));
                }
                sender = self.open(timeout).await?;
            }
            header = Some(next);
        }
        let e = AuthError::Rejected {
            offered: "a handshake that does not end".to_string(),
        };
        self.auth_failed(&e);
        Err(self.auth_error(e))
    }

    fn auth_error(&self, source: AuthError) -> ParentFailure {
        ParentFailure::Final(
            ParentError::Auth {
                parent: self.url.clone(),
                source,
            }
            .into(),
        )
    }
}

impl Replayable {
    async fn new(req: Request<Body>) -> Result<Replayable, GatewayError> {
        let (parts, body) = req.into_parts();
        let known_small = http_body::Body::size_hint(&body)
            .upper()
            .is_some_and(|n| n as usize <= REPLAY_LIMIT);
        let body = if known_small {
            let bytes = body
                .collect()
                .await
                .map_err(|e| {
                    GatewayError::BadRequest(format!("cannot read the request body: {e}"))
                })?
                .to_bytes();
            ReplayBody::Buffered(bytes)
        } else {
            ReplayBody::Stream(Some(body))
        };
        Ok(Replayable { parts, body })
    }

    /// This leg's request. `with_body = false` sends the head with an empty body.
    fn build(&mut self, proxy_authorization: Option<&str>, with_body: bool) -> Request<Body> {
        let mut parts = self.parts.clone();
        parts.headers.remove(PROXY_AUTHORIZATION);
        if let Some(value) = proxy_authorization.and_then(|v| HeaderValue::from_str(v).ok()) {
            let mut value = value;
            value.set_sensitive(true);
            parts.headers.insert(PROXY_AUTHORIZATION, value);
        }
        let body = match (&mut self.body, with_body) {
            (ReplayBody::Buffered(bytes), true) => full(bytes.clone()),
            (ReplayBody::Stream(body), true) => body.take().unwrap_or_else(empty),
            (_, false) => {
                parts.headers.remove(TRANSFER_ENCODING);
                if parts.method != Method::CONNECT {
                    parts
                        .headers
                        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
                }
                empty()
            }
        };
        Request::from_parts(parts, body)
    }
}

/// Reads a 407's body to its end so the connection can carry the next leg.
async fn drain(resp: Response<Incoming>) {
    let mut body = resp.into_body();
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    let mut total = 0usize;
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(f)) => {
                    total += f.data_ref().map_or(0, |d| d.len());
                    if total > 1024 * 1024 { return; }
                }
                _ => return,
            },
            _ = &mut deadline => return,
        }
    }
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
