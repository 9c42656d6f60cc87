//! The request path, readable top to bottom: parse the target → admit → decide (allow, then
//! route) → connect (direct or through a parent) → relay (tunnel or forward) → audit. Errors from
//! every step become a response in one place ([`GatewayError::respond`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, HOST};
use http::{Request, Response, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use passerelle_config::{ClientInfo, Decision, DenyReason, Flow, Kind, Route, Target};

use crate::audit::Recorder;
use crate::body::{empty, Body, Counted, Direction};
use crate::error::GatewayError;
use crate::headers::{add_via, has_our_via, strip_hop_by_hop};
use crate::limits::Admitted;
use crate::pages::{self, Reader};
use crate::record::Reason;
use crate::relay::{self, Side};
use crate::request::{
    absolute_form, describe, host_header, origin_form, path, reframe, request_target, scheme,
};
pub use crate::runtime::{Runtime, Shared};

/// The header that carries a response's request id: the audit's `id` for that request, what
/// the workstation's user gives IT.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-passerelle-request-id");

/// A client connection as the request path sees it.
#[derive(Clone)]
pub struct Connection {
    pub client: SocketAddr,
    /// Its place in the connection limits; a tunnel keeps a share of it until it closes.
    pub slot: Arc<Admitted>,
    /// Inside a CONNECT to a plain-HTTP port: the one target its requests may have.
    pub within: Option<Target>,
    /// The QoS mark of the answers toward the client: the request's flow's.
    pub mark: Arc<crate::connect::Mark>,
}

/// One request on `conn`: its record begins, the path runs, and whatever it ends with (an
/// answer, or an error made a page) carries the request id the record has.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Connection,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let runtime = shared.runtime.load_full();
    let record = shared.audit.start(conn.client, req.method().as_str()).await;
    let body_unread = !req.body().is_end_stream();
    let (lang, html) = pages::negotiate(req.headers(), &runtime.config.pages);
    let what = format!("{} {:.300}", req.method(), req.uri());
    let mut response = match proxy(&shared, &runtime, &conn, req, &record).await {
        Ok(response) => response,
        Err(error) => {
            conn.mark.set(None);
            let (id, client, contact) =
                (record.id(), conn.client.ip(), &runtime.config.pages.contact);
            let reader = Reader {
                what: &what,
                id,
                client,
                contact,
                lang,
                html,
            };
            error.answer(&record, reader, body_unread)
        }
    };
    if let Ok(id) = HeaderValue::from_str(record.id()) {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    record.status(response.status().as_u16());
    Ok(response)
}

/// The design's decision order: target, admission, loop, allow-then-route, then the relay.
async fn proxy(
    shared: &Arc<Shared>,
    runtime: &Runtime,
    conn: &Connection,
    req: Request<Incoming>,
    record: &Recorder,
) -> Result<Response<Body>, GatewayError> {
    let client = ClientInfo { addr: conn.client };
    let target = request_target(
        &req,
        runtime.config.limits.max_uri_bytes,
        conn.within.as_ref(),
    );
    if let Ok(target) = &target {
        record.target(target, scheme(target), path(&req));
    }
    admit(runtime, &client, &req, target.as_ref().ok())?;
    let target = target?;
    if has_our_via(req.headers(), &runtime.config.listen.via) {
        return Err(GatewayError::Loop(runtime.config.listen.via.clone()));
    }
    let (flow, route) = match runtime.config.policy.decide(&client, &target) {
        Decision::Allow { flow, route } => (flow, route),
        Decision::Deny(reason) => {
            let what = describe(&req, &target);
            return Err(GatewayError::Denied { what, reason });
        }
    };
    record.allow(&flow.id, route);
    conn.mark.set(flow.dscp);
    #[rustfmt::skip]
    let allowed = Allowed { shared, runtime, conn, record, target, flow, route };
    match allowed.target.kind {
        Kind::Connect if allowed.flow.http_ports.contains(&allowed.target.port) => {
            allowed.http_inside(req)
        }
        Kind::Connect => allowed.tunnel(req).await,
        Kind::Forward => allowed.forward(req).await,
    }
}

/// Who may ask, how much, how big: the client's network, its request rate, the head size.
fn admit<B>(
    runtime: &Runtime,
    client: &ClientInfo,
    req: &Request<B>,
    target: Option<&Target>,
) -> Result<(), GatewayError> {
    let limits = &runtime.config.limits;
    if !runtime.config.policy.client_allowed(client) {
        let what = match target {
            Some(target) => describe(req, target),
            None => format!("{} {:.200}", req.method(), req.uri()),
        };
        let reason = DenyReason::ClientNotAllowed {
            client: client.addr.ip(),
        };
        return Err(GatewayError::Denied { what, reason });
    }
    let client_ip = client.addr.ip().to_canonical();
    if runtime.limiter.check_key(&client_ip).is_err() {
        return Err(GatewayError::RateLimited(client_ip));
    }
    let head_size: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if head_size > limits.max_header_bytes as usize {
        return Err(GatewayError::HeaderTooLarge(limits.max_header_bytes));
    }
    Ok(())
}

/// An allowed request on its way: what was decided of it and what reaching it needs.
struct Allowed<'a> {
    shared: &'a Arc<Shared>,
    runtime: &'a Runtime,
    conn: &'a Connection,
    record: &'a Recorder,
    target: Target,
    flow: Arc<Flow>,
    route: Route,
}

impl Allowed<'_> {
    /// CONNECT: reach the target first, answer 200 only then, and relay in a tracked task that
    /// keeps the client's connection slot until the tunnel closes.
    async fn tunnel(self, mut req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
        let (shared, runtime, flow, record) = (self.shared, self.runtime, &self.flow, self.record);
        let upstream = match self.route {
            Route::Direct => {
                let stream = crate::direct::connect(shared, runtime, &self.target, flow).await?;
                record.route("direct");
                Side::Tcp(stream)
            }
            Route::Upstream => {
                let timeouts = runtime.timeouts(flow);
                let trying = |url: &str| record.route(url);
                let parents = &runtime.parents;
                let (io, _) = parents
                    .tunnel(&self.target, flow, &timeouts, trying)
                    .await?;
                Side::Io(io)
            }
        };
        let limits = &runtime.config.limits;
        let plan = relay::Plan {
            idle: flow.idle_timeout.unwrap_or(limits.idle_timeout),
            sni: (flow.sni_check && flow.tls_ports.contains(&self.target.port)).then(|| {
                relay::SniRule {
                    target: self.target.host.clone(),
                    flow: flow.clone(),
                    timeout: limits.sni_timeout,
                }
            }),
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (record, stop, audit) = (record.clone(), shared.stop.clone(), shared.audit.clone());
        let (flow, slot) = (flow.clone(), self.conn.slot.clone());
        shared.tracker.spawn(async move {
            let client = slot.ip();
            audit.tunnel_opened(&flow, client);
            match on_upgrade.await {
                Ok(upgraded) => {
                    let (side, early) = relay::client_side(upgraded);
                    relay::tunnel(side, early, upstream, plan, record, stop).await
                }
                Err(_) => record.reason(Reason::ClientGone),
            }
            audit.tunnel_closed(&flow, client);
            drop(slot);
        });
        Ok(Response::new(empty()))
    }

    /// Absolute-form HTTP: rewrite the head for the next hop, stream the bodies both ways.
    async fn forward(self, req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
        let (runtime, record) = (self.runtime, self.record);
        let via = &runtime.config.listen.via;
        let (mut parts, body) = req.into_parts();
        reframe(&mut parts.headers)?;
        strip_hop_by_hop(&mut parts.headers);
        add_via(&mut parts.headers, parts.version, via);
        parts.headers.insert(HOST, host_header(&self.target));
        parts.version = Version::HTTP_11;
        let body = Counted::boxed(body, record.clone(), Direction::Up);
        let response = match self.route {
            Route::Direct => {
                parts.uri = origin_form(&parts.uri);
                record.route("direct");
                let (target, flow) = (&self.target, &self.flow);
                crate::direct::send(self.shared, runtime, parts, body, target, flow).await?
            }
            Route::Upstream => {
                parts.uri = absolute_form(&parts.uri, &self.target);
                let (timeouts, trying) =
                    (runtime.timeouts(&self.flow), |url: &str| record.route(url));
                let request = Request::from_parts(parts, body);
                let parents = &runtime.parents;
                let (response, _) = parents
                    .forward(request, &self.flow, &timeouts, trying)
                    .await?;
                response
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        add_via(&mut parts.headers, parts.version, via);
        let body = Counted::boxed(body, record.clone(), Direction::Down);
        Ok(Response::from_parts(parts, body))
    }

    /// CONNECT to a flow's plain-HTTP port (Node's undici sends `http://` URLs that way): the
    /// tunnel is served as HTTP, each request inside decided, rewritten (`Host` from the target)
    /// and audited as if it had been forwarded, with the CONNECT's target as its only target. An
    /// opaque tunnel there would let another `Host` reach a CDN-hosted name (domain fronting).
    fn http_inside(self, mut req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let limits = self.runtime.config.limits.clone();
        let within = Target {
            kind: Kind::Forward,
            ..self.target
        };
        let inner = Connection {
            within: Some(within),
            ..self.conn.clone()
        };
        let (shared, record) = (self.shared.clone(), self.record.clone());
        let stop = shared.stop.clone();
        self.shared.tracker.spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                record.reason(Reason::ClientGone);
                return;
            };
            record.detail("served as HTTP inside the tunnel: one record per request");
            let service =
                hyper::service::service_fn(move |req| handle(shared.clone(), inner.clone(), req));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes as usize)
                .serve_connection(upgraded, service);
            tokio::select! {
                _ = served => {}
                _ = stop.cancelled() => record.reason(Reason::Shutdown),
            }
            drop(record);
        });
        Ok(Response::new(empty()))
    }
}
